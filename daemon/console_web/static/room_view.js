// Rendering of one room: the live state, the proposal, and which actions the
// workflow state allows (docs/state-machine.md). Pure functions of the model
// app.js keeps; no network here.
import {
  AXES, AXIS_LABEL, axisValue, clock, isNum, plain, signed, stamp, triple, unitOf, words,
} from "./format.js";

const $ = (id) => document.getElementById(id);

export const DEFAULT_INPUTS = [
  "door_closed", "estop_chain_ok", "collision_pads_clear", "motion_enable_pressed",
  "imager_kv_source_parked", "imager_detector_parked",
];
// What igrtd says when one of these is open (safety/interlocks.py _OPEN_TEXT).
const OPEN_TEXT = {
  door_closed: "door open",
  estop_chain_ok: "emergency stop chain broken",
  collision_pads_clear: "collision pad pressed",
  motion_enable_pressed: "motion enable not pressed",
};
const DESCRIPTION = {
  door_closed: "treatment room door",
  estop_chain_ok: "emergency stop chain",
  collision_pads_clear: "couch collision pads",
  motion_enable_pressed: "PLC motion-enable pendant (pressed = closed)",
  imager_kv_source_parked: "kV source arm parked switch",
  imager_detector_parked: "kV detector arm parked switch",
};

// ------------------------------------------------------------ permissions

const OPENABLE = new Set(["STANDBY", "READY", "DONE", "PROPOSED"]);
const CLOSABLE = new Set(["READY", "PROPOSED", "AWAITING_APPROVAL", "CONFIRMED", "DONE"]);
const PROPOSABLE = new Set(["READY", "PROPOSED", "AWAITING_APPROVAL", "CONFIRMED", "DONE"]);
const ARMS_STATES = new Set(["STANDBY", "READY", "PROPOSED", "AWAITING_APPROVAL", "CONFIRMED",
  "DONE", "SERVICE"]);
const HOLD_STATES = new Set(["PROPOSED", "AWAITING_APPROVAL", "CONFIRMED", "MOVING"]);
const CONFIRMABLE_VERDICTS = new Set(["needs_confirmation", "needs_second_approval"]);
const LIVE_PROPOSAL = new Set(["proposed", "interrupted", "awaiting_approval", "confirmed",
  "moving"]);

// {buttonId: {enabled, why}} for the room's state; `ctx` carries what the page knows.
export function permissions(snap, ctx) {
  const state = snap ? snap.state : null;
  const session = snap ? snap.session : null;
  const p = snap ? snap.proposal : null;
  const me = ctx.user;
  const out = {};
  const set = (id, enabled, why) => { out[id] = { enabled: !!enabled, why: enabled ? "" : why }; };
  const usable = ctx.connected && ctx.online && !!snap;
  const noLink = !ctx.connected ? "not connected to the broker"
    : !ctx.online ? "igrtd is offline" : "no state from igrtd yet";
  if (!usable) {
    for (const id of ["btn-open-session", "btn-close-session", "btn-record-imaging", "btn-register",
      "btn-propose", "btn-confirm", "btn-approve", "btn-hold", "btn-reset", "btn-monitor-start",
      "btn-monitor-stop", "btn-arms-extend", "btn-arms-retract"]) set(id, false, noLink);
    return out;
  }
  set("btn-open-session", OPENABLE.has(state) && ctx.sessionInputsOk,
    !OPENABLE.has(state) ? `no session can be opened in state ${state}`
      : "patient ID and plan UID are needed");
  set("btn-close-session", session && CLOSABLE.has(state),
    !session ? "no session is open" : `the session cannot be closed in state ${state}`);
  const imagingOk = session && !["MOVING", "VERIFYING", "SERVICE", "OFFLINE"].includes(state);
  set("btn-record-imaging", imagingOk,
    !session ? "no session is open" : `no imaging record in state ${state}`);
  set("btn-register", ctx.dailyGiven && (session || ctx.planningGiven)
    && !["SERVICE", "OFFLINE"].includes(state),
  !ctx.dailyGiven ? "give the daily image's path" : "no session: give the planning image");
  let proposeWhy = "";
  if (!session) proposeWhy = "no session is open";
  else if (!PROPOSABLE.has(state)) proposeWhy = `no proposal in state ${state}`;
  else if (!ctx.registration) proposeWhy = "register a daily image first";
  else if (!ctx.registration.converged) proposeWhy = "the registration did not converge";
  else if (!ctx.imaging) proposeWhy = "record imaging first (binds the couch pose and time)";
  set("btn-propose", !proposeWhy, proposeWhy);

  const live = p && LIVE_PROPOSAL.has(p.status);
  set("btn-confirm", p && state === "PROPOSED" && ["proposed", "interrupted"].includes(p.status)
    && CONFIRMABLE_VERDICTS.has(p.verdict),
  !p ? "no proposal" : !CONFIRMABLE_VERDICTS.has(p.verdict)
    ? `verdict ${words(p.verdict)}: nothing to confirm` : `nothing to confirm in state ${state}`);
  const c = p ? p.confirmation : null;
  // Left enabled for the person who confirmed: pressing it is refused by this page
  // (not sent) with the reason, as igrtd would refuse it; the note says so beforehand.
  set("btn-approve", p && state === "AWAITING_APPROVAL" && c,
    state !== "AWAITING_APPROVAL" ? "no proposal awaits a second approval" : "no confirmation");
  if (p && c && c.user === me && state === "AWAITING_APPROVAL") {
    out["btn-approve"].why = `you (${me}) confirmed it: the second approval must come from another person`;
  }
  set("btn-hold", (live && HOLD_STATES.has(state)) || ctx.holding,
    !p ? "no proposal" : `no move to hold in state ${state}`);
  set("btn-reset", state === "STOPPED" || state === "FAULT", `nothing to reset in state ${state}`);
  const mon = snap.monitoring;
  set("btn-monitor-start", mon && (state === "READY" || state === "DONE") && ctx.markersOk,
    !mon ? "no beam-on monitoring configured in this room"
      : !(state === "READY" || state === "DONE") ? `monitoring starts from READY or DONE, not ${state}`
        : "give the markers (x,y,z in mm; several separated by ;)");
  set("btn-monitor-stop", state === "MONITORING", "monitoring is not running");
  set("btn-arms-extend", ARMS_STATES.has(state), `imager arms cannot move in state ${state}`);
  set("btn-arms-retract", ARMS_STATES.has(state), `imager arms cannot move in state ${state}`);
  return out;
}

export function applyPermissions(perms) {
  for (const [id, { enabled, why }] of Object.entries(perms)) {
    const b = $(id);
    if (!b) continue;
    b.disabled = !enabled;
    b.dataset.why = why || "";
    if (why) b.title = why;
    else b.removeAttribute("title");
  }
}

// ------------------------------------------------------------ live view

function setText(id, text) {
  const el = $(id);
  if (el && el.textContent !== text) el.textContent = text;
  return el;
}

export function renderHeader(snap) {
  const el = setText("workflow-state", snap ? snap.state : "—");
  el.dataset.state = snap ? snap.state : "";
  const reason = setText("workflow-reason", snap
    ? `${snap.reason || ""}${isNum(snap.since) ? ` (since ${stamp(snap.since)})` : ""}` : "");
  reason.title = reason.textContent;
}

export function renderSession(snap) {
  const s = snap ? snap.session : null;
  setText("session-patient", s ? s.patient_id : "no session");
  setText("session-plan", s ? s.plan_uid : "—");
  setText("session-iso", s ? triple(s.iso, "mm") : "—");
  setText("session-position", s ? (s.patient_position || "—") : "—");
}

export function renderPose(pose, target) {
  for (const a of AXES) {
    setText(`couch-${a}`, pose ? axisValue(a, pose[a]) : `— ${unitOf(a)}`);
    setText(`target-${a}`, target && isNum(target[a]) ? axisValue(a, target[a]) : "");
  }
}

export function renderCouchState(couch) {
  if (!couch) {
    setText("couch-state", "couch: no status yet");
    return;
  }
  const moving = Array.isArray(couch.moving) && couch.moving.some(Boolean);
  setText("couch-state", `couch controller ${couch.state || "?"}${moving ? ", moving" : ", at rest"}`
    + `; link ${couch.link_ok === false ? "LOST" : "ok"}`);
}

// inputs: Map name -> closed; interlocks: {monitored, open, motion_enable_pressed}.
export function interlockView(inputs, interlocks) {
  const monitored = interlocks ? interlocks.monitored !== false : true;
  const open = interlocks && Array.isArray(interlocks.open) ? interlocks.open.map(String) : [];
  const plcDown = open.some((t) => t.startsWith("room PLC:") || t.includes("not vouched"));
  const names = inputs && inputs.size ? [...inputs.keys()] : DEFAULT_INPUTS;
  return {
    monitored,
    open,
    items: names.map((name) => {
      let closed = inputs && inputs.has(name) ? inputs.get(name) : null;
      const text = OPEN_TEXT[name];
      if (name === "motion_enable_pressed" && interlocks
          && typeof interlocks.motion_enable_pressed === "boolean") {
        closed = interlocks.motion_enable_pressed;
      } else if (text && open.some((t) => t.startsWith(text))) {
        closed = false;
      } else if (text && closed === null && interlocks) {
        closed = true; // not in the open list: closed as igrtd judges it
      }
      if (plcDown) closed = false;
      return { name, closed };
    }),
  };
}

export function renderInterlocks(inputs, interlocks) {
  const list = $("interlocks");
  const openList = $("interlocks-open");
  const v = interlockView(inputs, interlocks);
  if (!v.monitored) {
    list.replaceChildren(Object.assign(document.createElement("li"), {
      textContent: "no room PLC: interlocks not monitored by igrtd",
    }));
    openList.replaceChildren();
    return;
  }
  const wanted = v.items.map((i) => i.name).join("|");
  if (list.dataset.names !== wanted) {
    list.replaceChildren(...v.items.map((i) => {
      const li = document.createElement("li");
      const main = document.createElement("span");
      main.className = "il";
      main.setAttribute("data-testid", `interlock-${i.name}`);
      const desc = document.createElement("span");
      desc.className = "ildesc";
      desc.textContent = DESCRIPTION[i.name] || words(i.name);
      li.append(main, desc);
      return li;
    }));
    list.dataset.names = wanted;
  }
  v.items.forEach((i, k) => {
    const span = list.children[k].firstChild;
    const text = i.closed === null ? `${i.name}: unknown` : `${i.name}: ${i.closed ? "closed" : "OPEN"}`;
    if (span.textContent !== text) span.textContent = text;
    const ok = i.closed === null ? "unknown" : String(i.closed);
    span.dataset.ok = ok;
    list.children[k].dataset.ok = ok;
  });
  const openText = v.open.join("\n");
  if (openList.dataset.text !== openText) {
    openList.replaceChildren(...v.open.map((t) => Object.assign(document.createElement("li"), {
      textContent: `STOP CONDITION: ${t}`,
    })));
    openList.dataset.text = openText;
  }
}

export function armsWords(inputs, plc) {
  const src = inputs ? inputs.get("imager_kv_source_parked") : undefined;
  const det = inputs ? inputs.get("imager_detector_parked") : undefined;
  const moving = plc && plc.arms_moving
    ? Object.entries(plc.arms_moving).filter(([, m]) => m).map(([a]) => words(a)) : [];
  const pct = plc && plc.arm_position_pct ? plc.arm_position_pct : null;
  const pos = pct ? ` (${Object.entries(pct).map(([a, v]) => `${words(a)} ${isNum(v) ? v.toFixed(0) : "?"} %`).join(", ")} of travel)` : "";
  if (moving.length || (plc && plc.anyMoving)) return `MOVING${moving.length ? ": " + moving.join(", ") : ""}${pos}`;
  if (src === undefined && det === undefined) return "unknown (no PLC reading yet)";
  if (src && det) return `parked${pos}`;
  const out = [];
  if (!src) out.push("kV source not parked");
  if (!det) out.push("detector not parked");
  return `OUT: ${out.join(", ")}${pos}`;
}

export function renderArms(inputs, plc) {
  const el = setText("arms-state", armsWords(inputs, plc));
  el.dataset.parked = String(/^parked/.test(el.textContent));
}

export function renderBeamHold(snap, plc) {
  const mon = snap ? snap.monitoring : null;
  const coil = plc && plc.outputs && typeof plc.outputs.beam_hold === "boolean"
    ? plc.outputs.beam_hold : null;
  let held = mon && typeof mon.beam_held === "boolean" ? mon.beam_held : coil;
  let text;
  if (!snap) text = "—";
  else if (!mon) {
    text = coil === null ? "no beam-on monitoring in this room"
      : `beam hold output ${coil ? "ON (beam held)" : "off"}; no monitoring configured`;
  } else {
    const state = held === true ? "BEAM HELD" : held === false ? "beam not held" : "beam hold unknown";
    text = `${state}; monitoring ${mon.active ? "ACTIVE (beam on)" : "off"}; kV imager `
      + `${mon.imager_connected ? "connected" : "not connected"}`;
  }
  const el = setText("beam-hold", text);
  el.dataset.held = held === null || held === undefined ? "unknown" : String(held);
}

export function renderHoldOwner(snap) {
  const h = snap ? snap.hold : null;
  const i = snap ? snap.interlocks : null;
  const pendant = i && typeof i.motion_enable_pressed === "boolean"
    ? `; PLC pendant ${i.motion_enable_pressed ? "pressed" : "not pressed"}` : "";
  setText("hold-owner", !h ? "—"
    : `${h.fresh ? `held by ${h.user}` : h.user ? `not held (last by ${h.user})` : "not held"}${pendant}`);
}

export function renderHealth(items) {
  const list = $("health");
  const key = items.map((i) => `${i.ok}|${i.text}`).join("\n");
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren(...items.map((i) => {
    const li = document.createElement("li");
    li.textContent = i.text;
    li.dataset.ok = String(i.ok);
    return li;
  }));
}

export function healthItems(snap, ctx, plc) {
  const items = [];
  items.push({ text: `broker: ${ctx.connected ? "connected" : "DISCONNECTED"}`, ok: ctx.connected });
  items.push({ text: `igrtd: ${ctx.status || "unknown"}`, ok: ctx.status === "online" });
  if (snap && snap.health && typeof snap.health === "object") {
    for (const [name, v] of Object.entries(snap.health)) {
      if (v && typeof v === "object") {
        const ok = v.ok !== undefined ? !!v.ok : v.link_ok !== undefined ? !!v.link_ok : null;
        const detail = v.text || v.reason || v.state
          || Object.entries(v).filter(([k]) => k !== "ok").map(([k, x]) => `${words(k)} ${x}`).join(", ");
        items.push({ text: `${words(name)}: ${ok === null ? "" : ok ? "ok" : "PROBLEM"}${detail ? ` (${detail})` : ""}`, ok });
      } else {
        items.push({ text: `${words(name)}: ${v}`, ok: v === true || v === "ok" });
      }
    }
    return items;
  }
  if (!snap) return items;
  const couch = snap.couch;
  items.push({ text: `couch link: ${!couch ? "no status" : couch.link_ok ? `ok (${couch.state})` : "LOST"}`,
    ok: !!(couch && couch.link_ok) });
  const il = snap.interlocks || {};
  if (il.monitored === false) items.push({ text: "room PLC: not monitored", ok: null });
  else {
    const linkOk = plc && typeof plc.link_ok === "boolean" ? plc.link_ok
      : !(il.open || []).some((t) => String(t).startsWith("room PLC:"));
    items.push({ text: `room PLC: ${linkOk ? "link ok" : "LINK PROBLEM"}${plc && plc.link_reason && !linkOk ? ` (${plc.link_reason})` : ""}`, ok: linkOk });
  }
  if (snap.monitoring) {
    items.push({ text: `kV imager: ${snap.monitoring.imager_connected ? "connected" : "not connected"}`,
      ok: !!snap.monitoring.imager_connected });
  }
  return items;
}

// ------------------------------------------------------------ proposal

const VERDICT_WORDS = {
  within_tolerance: "within tolerance: no move needed",
  needs_confirmation: "needs confirmation",
  needs_second_approval: "needs confirmation and a second approval (large correction)",
  refused: "REFUSED: this correction will not be applied",
};

export function renderProposal(p, me) {
  setText("proposal-id", p ? p.id : "none");
  const v = setText("proposal-verdict", p ? (VERDICT_WORDS[p.verdict] || words(p.verdict)) : "—");
  v.dataset.verdict = p ? p.verdict : "";
  // A correction between beams is igrtd's own, from the tracked markers, with the beam
  // held (docs/intrafraction-monitoring.md); people still confirm it.
  const by = p && p.source === "between_beams"
    ? "proposed between beams by igrtd from the tracked markers, beam held,"
    : p ? `proposed by ${p.user}` : "";
  setText("proposal-status", p ? `${words(p.status)}; ${by} at ${stamp(p.created_at)}` : "—");
  // The collision model's check of the whole path at the proposal (docs/collision.md).
  const k = p ? p.collision : null;
  setText("proposal-clearance", !k ? "—"
    : `${Number(k.min_clearance_mm).toFixed(1)} mm, ${k.objects.join(" and ")} (margin `
      + `${k.margin_mm} mm; gantry ${Number(k.gantry_deg).toFixed(1)} deg)`
      + (k.allowed ? "" : " BELOW THE MARGIN"));
  const c = p ? p.confirmation : null;
  setText("proposal-confirmed-by", !c ? "—"
    : `${c.user} at ${stamp(c.at)}${c.approver ? `; second approval by ${c.approver} at ${stamp(c.approved_at)}` : ""}`);
  const reasons = $("proposal-reasons");
  const list = p && Array.isArray(p.reasons) ? p.reasons.map(String) : [];
  const key = (p ? p.id : "") + "\n" + list.join("\n");
  if (reasons.dataset.key !== key) {
    reasons.dataset.key = key;
    reasons.replaceChildren(...(list.length ? list : [p ? "no reasons given" : "no proposal"]).map(
      (t) => Object.assign(document.createElement("li"), { textContent: t })));
  }
  for (const a of AXES) {
    setText(`correction-${a}`, p && p.delta ? axisValue(a, p.delta[a]) : `— ${unitOf(a)}`);
  }
  const res = $("residuals");
  if (!p) {
    res.textContent = "—";
  } else {
    const iso = p.residual_iso_mm || {};
    const rot = p.residual_rotation_deg || {};
    const rotName = { x: "x (pitch)", y: "y (roll)", z: "z (yaw)" };
    const isoText = Object.keys(iso).length
      ? Object.entries(iso).map(([k, v]) => `${k} ${signed(v, "mm")}`).join(", ") : "none";
    const rotText = Object.keys(rot).length
      ? Object.entries(rot).map(([k, v]) => `${rotName[k] || k} ${signed(v, "deg")}`).join(", ") : "none";
    res.replaceChildren(
      Object.assign(document.createElement("p"), { textContent: `isocentre after the move: ${isoText}` }),
      Object.assign(document.createElement("p"), { textContent: `rotation left uncorrected: ${rotText}` }));
  }
  const note = $("approve-note");
  let text = "";
  if (p && c && p.status === "awaiting_approval") {
    text = c.user === me
      ? `You (${me}) confirmed this proposal: the second approval must come from another person.`
      : `Confirmed by ${c.user}; a second approval by another person (approver) is needed.`;
  }
  if (note.textContent !== text) note.textContent = text;
}

export function moveResultText(r) {
  if (!r) return "—";
  if (r.outcome === "within_tolerance") {
    const d = r.delta || {};
    return `proposal ${r.proposal_id}: within tolerance, no move (correction ${AXES.map((a) => `${AXIS_LABEL[a]} ${axisValue(a, d[a])}`).join(", ")})`;
  }
  const e = r.error || {};
  const head = r.outcome === "reached" ? "reached the target" : r.outcome === "missed_target"
    ? "MISSED the target" : words(r.outcome || "result");
  return `proposal ${r.proposal_id}: ${head}; residual ${AXES.map((a) => `${AXIS_LABEL[a]} ${axisValue(a, e[a], 2)}`).join(", ")}`;
}

export function registrationText(r) {
  if (!r) return "—";
  const t = r.translation_mm || [];
  const rot = r.rotation_deg || [];
  const tx = ["x", "y", "z"].map((k, i) => `${k} ${signed(t[i], "mm")}`).join(", ");
  const rx = ["x", "y", "z"].map((k, i) => `${k} ${signed(rot[i], "deg")}`).join(", ");
  return `${r.converged ? "converged" : `NOT CONVERGED: ${r.reason || "no reason given"}`}; `
    + `translation at iso ${tx}; rotation ${rx}; metric ${isNum(r.metric) ? r.metric.toFixed(4) : "—"}; `
    + `quality ${r.quality ?? "—"}; ${plain(r.seconds, "s", 1)}`;
}

export { clock };
