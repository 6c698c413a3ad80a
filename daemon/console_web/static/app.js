// The igrt treatment console: login, signing key, department view, room view.
// State comes only from the broker (retained state/status, telemetry, events,
// review images); commands are signed here and answered on our reply topic.
import { Link } from "./mqtt_link.js";
import * as signing from "./signing.js";
import { Department } from "./department.js";
import { HoldToRun } from "./hold_to_run.js";
import { PLANES, ReviewStore, blank, draw, sameMatrix } from "./review.js";
import * as view from "./room_view.js";
import { clock, isNum, parseTriple, stamp, words } from "./format.js";

const $ = (id) => document.getElementById(id);
const STALE_MS = 3000;
const DEFAULT_TIMEOUT_MS = 8000;
const REGISTER_TIMEOUT_MS = 180000;
const LOG_MAX = 300;
const USER_RE = /^[A-Za-z0-9_.-]{1,64}$/;

const app = {
  config: { broker_url: null, rooms: null, review_url: null },
  link: new Link(),
  // Review images come over a connection of their own: Mosquitto's websockets
  // deliver ~42 KB/s, a review (~1.2 MB) takes tens of seconds, and nothing on the
  // control connection (replies, state, keepalive) may wait behind it.
  reviewLink: new Link(),
  user: null,
  key: null,
  room: null,
  rooms: new Map(), // id -> {status, statusAt, snap, stateAt, lastLive, telemetry}
  pending: new Map(), // jti -> {resolve, timer, cmd}
  review: new ReviewStore(),
  // What this page learned in the open room.
  inputs: new Map(), // interlock input -> closed
  plc: null, // last `interlocks` answer
  openKey: null,
  registration: null, // last register result (with the moving/fixed paths)
  imaging: null, // {uid, acquired_at} latest imaging record of the session
  sessionKey: null,
  matrices: new Map(), // proposal id -> matrix it was proposed from (this page)
  holding: false,
  lastState: null,
  live: { pose: null, poseTs: -1, interlocks: null, ilTs: -1 },
  refreshTimer: null,
  refreshing: false,
};

const department = new Department({ list: $("rooms"), onOpen: (id) => openRoom(id) });

// ================================================================= helpers

function roomCache(id) {
  if (!app.rooms.has(id)) {
    app.rooms.set(id, { status: null, statusAt: null, snap: null, stateAt: null, lastLive: null,
      telemetry: null });
  }
  return app.rooms.get(id);
}

function parseJson(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function logEntry(text, kind = "info", at = null) {
  const list = $("event-log");
  const li = document.createElement("li");
  li.dataset.kind = kind;
  const time = document.createElement("time");
  time.textContent = clock(at ?? undefined);
  li.append(time, document.createTextNode(` ${text}`));
  list.prepend(li);
  while (list.children.length > LOG_MAX) list.lastChild.remove();
}

function showRefusal(cmd, code, reason) {
  const el = $("last-refusal");
  el.textContent = `refused (${code}): ${reason}`;
  el.dataset.code = code;
  el.dataset.cmd = cmd;
  el.dataset.at = clock();
  el.title = `${el.textContent} (${cmd} at ${clock()})`;
}

function notSent(cmd, reason) {
  const el = $("last-refusal");
  el.textContent = `not sent (${cmd}): ${reason}`;
  el.dataset.code = "not_sent";
  el.dataset.cmd = cmd;
  logEntry(`${cmd} not sent: ${reason}`, "refusal");
}

// ================================================================= commands

// Sign and publish one command; resolves with the reply (never rejects):
// {ok, result, code, reason}. Local failures carry codes of their own
// (no_key, not_connected, timeout, disconnected, sign_failed).
async function command(cmd, args = {}, { timeoutMs = DEFAULT_TIMEOUT_MS, quiet = false } = {}) {
  const room = app.room;
  const fail = (code, reason) => {
    const r = { ok: false, code, reason, cmd, local: true };
    if (!quiet || cmd === "hold") report(r, quiet === "auto");
    return r;
  };
  if (!room) return fail("no_room", "no room is open");
  if (!app.key) return fail("no_key", "no signing key loaded: import or generate one");
  if (!app.link.connected) return fail("not_connected", "not connected to the broker");
  let token;
  let body;
  try {
    body = signing.claims({ cmd, args, user: app.user, room, replyTo: app.user });
    token = await signing.signClaims(app.key.privateKey, body);
  } catch (err) {
    return fail("sign_failed", err.message || String(err));
  }
  const reply = new Promise((resolve) => {
    const timer = setTimeout(() => {
      app.pending.delete(body.jti);
      resolve({ ok: false, code: "timeout", reason: `no reply from igrtd within ${Math.round(timeoutMs / 1000)} s`, cmd, local: true });
    }, timeoutMs);
    app.pending.set(body.jti, { resolve, timer, cmd });
  });
  try {
    await app.link.publish(`igrt/${room}/cmd`, token);
  } catch (err) {
    const p = app.pending.get(body.jti);
    if (p) {
      clearTimeout(p.timer);
      app.pending.delete(body.jti);
    }
    return fail("not_connected", err.message || String(err));
  }
  if (!quiet) logEntry(`you: ${cmd} sent`, "sent");
  const r = await reply;
  if (!quiet || !r.ok) report(r, quiet === "auto");
  return r;
}

// A reply in the event log; a refusal also in last-refusal, except for the page's
// own automatic reads (`interlocks`), which no person asked for.
function report(r, automatic = false) {
  if (r.ok) {
    logEntry(`${r.cmd}: ok`, "ok");
    return;
  }
  if (r.local) {
    // Not igrtd's refusal: the command did not get there or no answer came back.
    const text = `${r.cmd || "command"} not done (${r.code}): ${r.reason}`;
    logEntry(text, "refusal");
    if (!automatic && r.cmd !== "hold" && r.cmd !== "release") {
      const el = $("last-refusal");
      el.textContent = text;
      el.dataset.code = r.code;
      el.dataset.cmd = r.cmd || "";
      el.title = `${text} (${clock()})`;
    }
    return;
  }
  if (!automatic) showRefusal(r.cmd || "command", r.code || "error", r.reason || "no reason given");
  logEntry(`${r.cmd || "command"} refused (${r.code}): ${r.reason}${automatic ? " (automatic read)" : ""}`, "refusal");
}

function onReply(text) {
  const msg = parseJson(text);
  if (!msg || typeof msg !== "object" || typeof msg.jti !== "string") return;
  const p = app.pending.get(msg.jti);
  if (!p) return;
  clearTimeout(p.timer);
  app.pending.delete(msg.jti);
  p.resolve({
    ok: msg.ok === true, result: msg.result || null, code: msg.code || null,
    reason: msg.reason || null, cmd: msg.cmd || p.cmd, ts: isNum(msg.ts) ? msg.ts : null,
  });
}

function failPending(code, reason) {
  for (const [jti, p] of app.pending) {
    clearTimeout(p.timer);
    p.resolve({ ok: false, code, reason, cmd: p.cmd, local: true });
    app.pending.delete(jti);
  }
}

// ================================================================= messages

function onMessage({ topic, text }) {
  const parts = topic.split("/");
  if (parts[0] !== "igrt" || parts.length < 3) return;
  const room = parts[1];
  const kind = parts[2];
  if (kind === "status") {
    const msg = parseJson(text);
    if (msg === undefined) return;
    const c = roomCache(room);
    const status = msg && (msg.status === "online" || msg.status === "offline") ? msg.status : null;
    if (status !== c.status) {
      c.status = status;
      c.statusAt = new Date();
      if (room === app.room && status) logEntry(`igrtd ${status}`, status === "online" ? "ok" : "refusal");
    }
    if (status === "online" && room === app.room) {
      // A fresh igrtd (or a reconnect): the stale clock restarts, the interlock names may differ.
      c.lastLive = c.lastLive ?? Date.now();
      scheduleRefresh();
    }
    department.onStatus(room, status);
    if (room === app.room) renderRoom();
    updateBanner();
    return;
  }
  if (kind === "state") {
    const msg = parseJson(text);
    if (!msg || typeof msg !== "object" || !msg.state || typeof msg.state !== "object") return;
    const c = roomCache(room);
    c.snap = msg.state;
    c.stateTs = msg.ts;
    c.stateAt = new Date();
    c.lastLive = Date.now();
    department.onState(room, msg.state);
    if (room === app.room) onRoomState(msg.state, msg.ts);
    return;
  }
  if (room !== app.room) return;
  if (kind === "telemetry") {
    const msg = parseJson(text);
    if (!msg || typeof msg !== "object") return;
    const c = roomCache(room);
    c.telemetry = msg;
    const now = Date.now();
    noteTelemetryRhythm(c, now);
    noteClock(c, msg.ts, now);
    c.lastLive = now;
    onTelemetry(msg);
    return;
  }
  if (kind === "events") {
    const msg = parseJson(text);
    if (msg && typeof msg === "object" && typeof msg.event === "string") onEvent(msg);
    return;
  }
  if (kind === "reply" && parts[3] === app.user) {
    onReply(text);
    return;
  }
  if (kind === "review") {
    const msg = parseJson(text);
    if (msg === undefined) return;
    if (msg && (msg.room !== undefined && msg.room !== room)) return;
    if (app.review.accept(parts.slice(3).join("/"), msg)) scheduleReviewDraw();
  }
}

function onRoomState(snap, ts) {
  const prev = app.lastState;
  app.lastState = snap;
  // The session changed: what this page remembered of the last one is void.
  const sessionKey = snap.session ? `${snap.session.patient_id}|${snap.session.plan_uid}|${snap.session.opened_at}` : null;
  if (sessionKey !== app.sessionKey) {
    app.sessionKey = sessionKey;
    app.imaging = null;
  }
  mergeLive(ts, snap.couch ? snap.couch.pose : null, snap.interlocks);
  if (prev === null) scheduleRefresh();
  renderRoom();
}

// Pose and interlocks: the newest by igrtd's own clock (`ts`) of the retained
// state, telemetry and `interlocks` replies. The retained state keeps the
// interlocks of its time; PLC changes after it go out only as telemetry.
function mergeLive(ts, pose, interlocks) {
  const live = app.live;
  const t = isNum(ts) ? ts : 0;
  if (pose && typeof pose === "object" && t >= live.poseTs) {
    live.pose = pose;
    live.poseTs = t;
  }
  if (interlocks && typeof interlocks === "object" && t >= live.ilTs) {
    const key = JSON.stringify([interlocks.monitored, interlocks.open, interlocks.motion_enable_pressed]);
    live.interlocks = interlocks;
    live.ilTs = t;
    // Interlock names, arm positions and outputs come from `interlocks`: asked
    // again when the picture of the room changed (never on a timer).
    if (key !== app.openKey) {
      app.openKey = key;
      scheduleRefresh();
    }
  }
}

// Whether igrtd is known to publish often enough now for 3 s of silence to mean
// something: during a move (every 40 ms), or once it has been seen publishing
// telemetry regularly at rest (an idle heartbeat, /tmp/console/h3-requests.md).
function noteTelemetryRhythm(c, now) {
  const moving = app.lastState && ["MOVING", "VERIFYING"].includes(app.lastState.state);
  if (!moving && c.lastTelemetry) {
    const gap = now - c.lastTelemetry;
    c.regular = gap >= 300 && gap <= 1500 ? (c.regular || 0) + 1 : 0;
    if (c.regular >= 5) c.heartbeat = true;
  }
  c.lastTelemetry = now;
}

// igrtd's clock against this computer's, from the telemetry igrtd stamps (at least
// once a second): igrtd's ts minus the arrival time is the offset less the transit
// time, so the largest of the recent samples is the best estimate. Commands are
// dated by this computer's clock and igrtd refuses those more than 2 s ahead or
// expired (a STOP it accepts whatever its date): say so while the clocks disagree.
const CLOCK_SAMPLES = 30;
const CLOCK_WARN_S = 1.5;

function noteClock(c, ts, nowMs) {
  if (!isNum(ts)) return;
  c.clockSamples = (c.clockSamples || []).concat([ts - nowMs / 1000]).slice(-CLOCK_SAMPLES);
  c.clockOffset = Math.max(...c.clockSamples);
  const w = $("clock-warning");
  const off = c.clockOffset;
  const show = Math.abs(off) > CLOCK_WARN_S;
  w.hidden = !show;
  if (show) {
    const text = `This computer's clock is ${Math.abs(off).toFixed(1)} s ${off > 0 ? "behind" : "ahead of"} `
      + "igrtd's: commands other than STOP may be refused until the clock is set right (NTP).";
    if (w.textContent !== text) w.textContent = text;
  }
}

function expectsLive(c) {
  return c.heartbeat || (c.snap && ["MOVING", "VERIFYING"].includes(c.snap.state));
}

function onTelemetry(msg) {
  mergeLive(msg.ts, msg.couch, msg.interlocks);
  const snap = app.lastState;
  const target = (msg.motion && msg.motion.target) || (snap && snap.proposal
    && ["CONFIRMED", "MOVING", "VERIFYING"].includes(snap.state) ? snap.proposal.target : null);
  view.renderPose(app.live.pose, target);
  view.renderInterlocks(app.inputs, app.live.interlocks);
  renderInterlocksAge();
  if (msg.motion && typeof msg.motion === "object") {
    view.renderCouchState({ state: msg.motion.couch_state, moving: msg.motion.moving,
      link_ok: msg.motion.link_ok });
  }
  updateBanner();
}

function summary(details) {
  if (!details || typeof details !== "object") return "";
  const skip = new Set(["at", "via", "ts"]);
  const parts = [];
  for (const [k, v] of Object.entries(details)) {
    if (skip.has(k) || v === null || v === undefined) continue;
    let s;
    if (typeof v === "object") {
      s = JSON.stringify(v);
      if (s.length > 120) s = `${s.slice(0, 117)}…`;
    } else {
      s = String(v);
    }
    parts.push(`${words(k)} ${s}`);
  }
  return parts.join("; ");
}

function onEvent(ev) {
  const d = ev.details || {};
  const at = isNum(ev.ts) ? ev.ts : isNum(d.at) ? d.at : undefined;
  let text;
  if (ev.event === "console.command_verified") {
    // igrtd's word that a signed command passed; the page's own reads are noise.
    if (["status", "interlocks", "monitor_status"].includes(d.cmd)) return;
    text = `${d.cmd} by ${ev.actor || "?"} verified by igrtd (console ${d.console || "?"})`;
    logEntry(text, "event", at);
    return;
  }
  if (ev.event === "state") {
    text = `state ${d.old} → ${d.new}${d.reason ? ` (${d.reason})` : ""}`;
  } else {
    text = `${ev.event}${ev.actor ? ` by ${ev.actor}` : ""}${Object.keys(d).length ? ": " + summary(d) : ""}`;
  }
  logEntry(text, ev.event === "fault" || ev.event === "reject" || ev.event === "stop" ? "refusal" : "event", at);
  if (ev.event === "interlock" && d.changed && typeof d.changed === "object") {
    for (const [k, v] of Object.entries(d.changed)) {
      if (typeof v === "boolean" && k !== "link_ok" && k !== "arms_moving") app.inputs.set(k, v);
    }
    if (app.plc && typeof d.changed.arms_moving === "boolean") app.plc.anyMoving = d.changed.arms_moving;
    renderRoom();
    scheduleRefresh();
  }
  if (ev.event === "imaging" && typeof d.imaging_session_uid === "string") {
    app.imaging = { uid: d.imaging_session_uid, acquired_at: isNum(d.at) ? d.at : ev.ts };
    renderRoom();
  }
}

// `interlocks` (a read command): input names and states, arm positions, outputs.
function scheduleRefresh() {
  if (!app.room || !app.key) return;
  clearTimeout(app.refreshTimer);
  app.refreshTimer = setTimeout(refreshInterlocks, 150);
}

async function refreshInterlocks() {
  if (!app.room || !app.key || !app.link.connected) return;
  if (app.refreshing) {
    scheduleRefresh();
    return;
  }
  app.refreshing = true;
  try {
    const r = await command("interlocks", {}, { quiet: "auto", timeoutMs: 5000 });
    if (r.ok && r.result) {
      app.plc = r.result;
      mergeLive(r.ts, null, { monitored: r.result.monitored !== false, open: r.result.open || [],
        motion_enable_pressed: r.result.motion_enable_pressed });
      if (Array.isArray(r.result.inputs)) {
        app.inputs = new Map(r.result.inputs.filter((i) => i && typeof i.name === "string")
          .map((i) => [i.name, !!i.closed]));
      }
      renderRoom();
    }
  } finally {
    app.refreshing = false;
  }
}

// ================================================================= rendering

function ctxFor(snap) {
  const c = app.room ? roomCache(app.room) : null;
  return {
    user: app.user,
    connected: app.link.connected,
    online: c ? c.status !== "offline" : false,
    status: c ? c.status : null,
    holding: app.holding,
    sessionInputsOk: !!($("session-patient-input").value.trim() && $("session-plan-input").value.trim()),
    dailyGiven: !!$("daily-image").value.trim(),
    planningGiven: !!$("planning-image").value.trim(),
    registration: app.registration,
    imaging: app.imaging,
    markersOk: !!parseMarkers($("monitor-markers").value),
  };
}

function renderRoom() {
  if (!app.room) return;
  const snap = roomCache(app.room).snap;
  view.renderHeader(snap);
  view.renderSession(snap);
  const target = snap && snap.proposal && ["CONFIRMED", "MOVING", "VERIFYING"].includes(snap.state)
    ? snap.proposal.target : null;
  view.renderPose(app.live.pose, target);
  view.renderCouchState(snap ? snap.couch : null);
  view.renderInterlocks(app.inputs, app.live.interlocks);
  renderInterlocksAge();
  view.renderArms(app.inputs, app.plc);
  view.renderBeamHold(snap, app.plc);
  view.renderHoldOwner(snap);
  const ctx = ctxFor(snap);
  view.renderHealth(view.healthItems(snap, ctx, app.plc));
  view.renderProposal(snap ? snap.proposal : null, app.user);
  const mr = $("move-result");
  const text = view.moveResultText(snap ? snap.last_result : null);
  if (mr.textContent !== text) mr.textContent = text;
  mr.dataset.outcome = snap && snap.last_result ? snap.last_result.outcome || "" : "";
  view.applyPermissions(view.permissions(snap, ctx));
  renderProposeNote(snap, ctx);
  scheduleReviewDraw();
}

// How old the interlock picture is (igrtd's clock): the retained state keeps the
// interlocks of its own time, and changes after it arrive only as telemetry.
function renderInterlocksAge() {
  const el = $("interlocks-as-of");
  const ts = app.live.ilTs;
  const text = ts > 0 ? `as igrtd reported them at ${stamp(ts)}` : "";
  if (el.textContent !== text) el.textContent = text;
}

function renderProposeNote(snap, ctx) {
  const b = $("btn-propose");
  const note = $("propose-note");
  let text = b.disabled ? (b.title || "") : "";
  if (!b.disabled && app.imaging) {
    text = `binds imaging session ${app.imaging.uid} (${stamp(app.imaging.acquired_at)})`;
  }
  if (note.textContent !== text) note.textContent = text;
  void snap; void ctx;
}

// ================================================================= review

let reviewQueued = false;
function scheduleReviewDraw() {
  if (reviewQueued) return;
  reviewQueued = true;
  requestAnimationFrame(() => {
    reviewQueued = false;
    drawReview();
  });
}

function proposalMatrix(p) {
  if (!p) return null;
  if (Array.isArray(p.matrix)) return p.matrix;
  return app.matrices.get(p.id) || null;
}

function drawReview() {
  const store = app.review;
  const snap = app.room ? roomCache(app.room).snap : null;
  const p = snap ? snap.proposal : null;
  const meta = store.meta;
  const status = $("review-status");
  const canvases = [];
  for (const plane of PLANES) for (const kind of ["fusion", "checker"]) {
    canvases.push([plane, kind, $(`review-${plane}-${kind}`)]);
  }
  let show = false;
  let text;
  let belongs = "none";
  const arriving = store.arriving();
  if (arriving) {
    text = `receiving the review images of a new registration: ${arriving} of 9 (the broker delivers them slowly)`;
  } else if (!meta) {
    text = p ? "no review images for this proposal" : "no review images yet (they follow a registration)";
  } else if (p) {
    const m = proposalMatrix(p);
    if (m && sameMatrix(m, meta.matrix)) {
      show = true;
      belongs = "proposal";
      text = `review images for proposal ${p.id} (registration ${meta.registration_id}, ${stamp(meta.ts)})`;
    } else {
      text = "no review images for this proposal";
    }
  } else {
    show = true;
    belongs = "registration";
    text = `review images of registration ${meta.registration_id} (${stamp(meta.ts)}); not proposed yet`;
  }
  if (show && !store.complete()) {
    text += ` — ${store.count()} of 9 images received`;
  }
  if (show && meta && (meta.fixed || meta.moving)) {
    text += `; planning: ${meta.fixed ?? "?"}, daily: ${meta.moving ?? "?"}`;
  }
  if (status.textContent !== text) status.textContent = text;
  status.dataset.belongs = belongs;
  $("review").dataset.shown = String(show);
  const phase = $("review-before").checked ? "before" : "after";
  const centre = Number($("window-centre").value);
  const width = Number($("window-width").value);
  for (const [plane, kind, canvas] of canvases) {
    if (!show) blank(canvas);
    else draw(canvas, store, plane, kind, phase, Number.isFinite(centre) ? centre : 0,
      Number.isFinite(width) && width > 0 ? width : 1);
  }
}

let reviewRegistration = null;
function applySuggestedWindow(force = false) {
  const meta = app.review.meta;
  if (!meta || !meta.window) return;
  if (!force && reviewRegistration === meta.registration_id) return;
  reviewRegistration = meta.registration_id;
  if (isNum(meta.window.centre)) $("window-centre").value = String(meta.window.centre);
  if (isNum(meta.window.width)) $("window-width").value = String(meta.window.width);
}

// ================================================================= banner

function updateBanner() {
  const b = $("banner");
  let state;
  let text;
  const link = app.link;
  if (!app.user) {
    state = "disconnected";
    text = "Not signed in: not connected to the broker";
  } else if (!link.connected) {
    state = "disconnected";
    text = `Disconnected from the broker since ${clock(link.since || new Date())}; reconnecting…`;
  } else if (!app.room) {
    state = "ok";
    text = `Connected to the broker ${app.link.url} as ${app.user}`;
  } else {
    const c = roomCache(app.room);
    if (c.status === "offline") {
      state = "offline";
      text = `igrtd offline since ${clock(c.statusAt || new Date())} (room ${app.room})`;
    } else if (c.status === "online" && expectsLive(c)
        && (c.lastLive === null || Date.now() - c.lastLive > STALE_MS)) {
      state = "stale";
      const since = c.lastLive ? clock(new Date(c.lastLive)) : clock(c.statusAt || new Date());
      text = `Stale since ${since}: no state or telemetry from igrtd for more than 3 s`;
    } else if (!c.status) {
      state = c.snap ? "ok" : "stale";
      text = c.snap ? `Connected; igrtd presence unknown (room ${app.room})`
        : `No word from igrtd in room ${app.room} yet`;
    } else {
      state = "ok";
      text = `Connected; igrtd online; last update ${clock(new Date(c.lastLive))}`;
    }
  }
  if (b.dataset.state !== state) {
    b.dataset.state = state;
    // What the room view shows is live only while the banner is ok.
    document.body.dataset.live = String(state === "ok");
    const label = $("workflow-state-label");
    if (label) label.textContent = state === "ok" ? "Workflow state" : "Workflow state (last known, not live)";
    if (app.room) renderRoom();
  }
  if (b.textContent !== text) b.textContent = text;
}

// ================================================================= views

function showView(name) {
  $("login-view").hidden = name !== "login";
  $("department-view").hidden = name !== "department";
  $("room-view").hidden = name !== "room";
  $("btn-rooms").hidden = name !== "room";
  $("btn-logout").hidden = name === "login";
  document.body.dataset.view = name;
}

function subscribeRoom(id) {
  const l = app.link;
  l.subscribe(`igrt/${id}/telemetry`);
  l.subscribe(`igrt/${id}/events`);
  l.subscribe(`igrt/${id}/reply/${app.user}`);
  app.reviewLink.subscribe(`igrt/${id}/review/#`);
}

function unsubscribeRoom(id) {
  const l = app.link;
  l.unsubscribe(`igrt/${id}/telemetry`);
  l.unsubscribe(`igrt/${id}/events`);
  l.unsubscribe(`igrt/${id}/reply/${app.user}`);
  app.reviewLink.unsubscribe(`igrt/${id}/review/#`);
}

function resetRoomModel() {
  app.review.clear();
  app.inputs = new Map();
  app.plc = null;
  app.openKey = null;
  app.registration = null;
  app.imaging = null;
  app.sessionKey = null;
  app.matrices = new Map();
  app.lastState = null;
  app.live = { pose: null, poseTs: -1, interlocks: null, ilTs: -1 };
  reviewRegistration = null;
  $("event-log").replaceChildren();
  $("last-refusal").textContent = "none";
  $("last-refusal").dataset.code = "";
  $("register-result").textContent = "—";
  $("imaging-result").textContent = "";
}

function openRoom(id) {
  if (app.room === id) {
    showView("room");
    return;
  }
  if (app.room) closeRoom();
  app.room = id;
  resetRoomModel();
  $("room-name").textContent = id;
  subscribeRoom(id);
  connectReviewLink();
  const c = roomCache(id);
  // A retained state already here counts as live from now (the stale clock starts).
  if (c.snap) c.lastLive = Date.now();
  c.heartbeat = false;
  c.regular = 0;
  c.lastTelemetry = null;
  showView("room");
  if (location.hash !== `#room=${encodeURIComponent(id)}`) history.replaceState(null, "", `#room=${encodeURIComponent(id)}`);
  logEntry(`room ${id} opened by ${app.user}`);
  if (c.snap) onRoomState(c.snap, c.stateTs);
  renderRoom();
  updateBanner();
  scheduleRefresh();
  $("btn-stop").focus({ preventScroll: true });
}

function closeRoom() {
  if (!app.room) return;
  holder.stop("room closed");
  unsubscribeRoom(app.room);
  failPending("room_closed", "room view closed");
  app.room = null;
  $("room-name").textContent = "—";
}

function backToRooms() {
  closeRoom();
  history.replaceState(null, "", "#");
  showView("department");
  updateBanner();
}

// ================================================================= login

async function loadConfig() {
  try {
    const r = await fetch("/config.json", { cache: "no-store" });
    if (r.ok) {
      const cfg = await r.json();
      if (cfg && typeof cfg === "object") {
        app.config.broker_url = typeof cfg.broker_url === "string" ? cfg.broker_url : null;
        app.config.rooms = Array.isArray(cfg.rooms) ? cfg.rooms : null;
        app.config.review_url = typeof cfg.review_url === "string" ? cfg.review_url : null;
      }
    }
  } catch {
    // no config: the user types the broker URL
  }
  if (app.config.broker_url && !$("login-broker").value) $("login-broker").value = app.config.broker_url;
  if (!$("login-broker").value && location.host) {
    // No broker named: igrt-console's own MQTT-over-WebSocket bridge (same origin, /mqtt).
    $("login-broker").value = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/mqtt`;
  }
  department.setConfigured(app.config.rooms);
}

async function login(ev) {
  ev.preventDefault();
  const url = $("login-broker").value.trim();
  const user = $("login-user").value.trim();
  const password = $("login-password").value;
  const err = $("login-error");
  err.textContent = "";
  if (!USER_RE.test(user)) {
    err.textContent = "user name: 1-64 of A-Z a-z 0-9 _ . -";
    return;
  }
  if (!/^wss?:\/\//.test(url)) {
    err.textContent = "broker URL must start with ws:// or wss://";
    return;
  }
  $("login-submit").disabled = true;
  err.textContent = "";
  try {
    await app.link.connect({ url, user, password });
  } catch (e) {
    err.textContent = e.message || String(e);
    $("login-submit").disabled = false;
    return;
  }
  $("login-submit").disabled = false;
  $("login-password").value = "";
  app.user = user;
  app.credentials = { url, user, password };
  connectReviewLink();
  $("whoami").textContent = `Signed in as ${user}`;
  $("whoami").dataset.user = user;
  await loadKeyFor(user);
  app.link.subscribe("igrt/+/status");
  app.link.subscribe("igrt/+/state");
  if (Array.isArray(app.config.rooms)) {
    for (const r of app.config.rooms) {
      if (typeof r === "string") {
        app.link.subscribe(`igrt/${r}/status`);
        app.link.subscribe(`igrt/${r}/state`);
      }
    }
  }
  showView("department");
  updateBanner();
  const m = /^#room=(.+)$/.exec(location.hash);
  if (m) openRoom(decodeURIComponent(m[1]));
}

// The review images' own connection. igrt-console's /mqtt bridge (config.json
// review_url) when it has one: Mosquitto 2.0's WebSockets listener delivers large
// messages at ~40 KB/s (docs/console.md). Commands, state and hold-to-run stay on
// the login's broker URL either way, so nothing that moves or stops waits on them.
function reviewUrl(loginUrl) {
  const r = app.config.review_url;
  if (!r) return loginUrl;
  if (/^wss?:\/\//.test(r)) return r;
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${r}`;
}

function connectReviewLink() {
  const c = app.credentials;
  if (!c || app.reviewLink.client) return;
  app.reviewLink.connect({ ...c, url: reviewUrl(c.url), keepalive: 60, role: "review" }).catch((e) => {
    logEntry(`review images unavailable: ${e.message || e}`, "refusal");
  });
}

function logout() {
  closeRoom();
  app.link.close();
  app.reviewLink.close();
  app.credentials = null;
  app.user = null;
  app.key = null;
  app.rooms.clear();
  department.rooms.clear();
  department.render();
  $("whoami").textContent = "not signed in";
  delete $("whoami").dataset.user;
  showView("login");
  renderKey();
  updateBanner();
}

// ================================================================= key

function keyUser() {
  return app.user || $("login-user").value.trim();
}

async function loadKeyFor(user) {
  try {
    app.key = USER_RE.test(user || "") ? await signing.loadKey(user) : null;
  } catch (e) {
    app.key = null;
    $("key-status").textContent = `no signing key (key store unavailable: ${e.message || e})`;
    return;
  }
  renderKey();
}

function renderKey(message) {
  const status = $("key-status");
  const user = keyUser();
  if (app.key) {
    status.textContent = `signing key loaded for ${app.key.user} (${app.key.source} ${stamp(app.key.created)})`
      + (message ? ` — ${message}` : "");
    status.dataset.loaded = "true";
    $("key-public").value = signing.publicJwkText(app.key);
    $("key-download").disabled = false;
  } else {
    status.textContent = `no signing key${user ? ` for ${user}` : ""}${message ? `: ${message}` : ": import your USER.key or generate one"}`;
    status.dataset.loaded = "false";
    $("key-public").value = "";
    $("key-download").disabled = true;
  }
  if (app.room) renderRoom();
}

async function importKey() {
  const input = $("key-import");
  const file = input.files && input.files[0];
  input.value = "";
  if (!file) return;
  const user = keyUser();
  if (!USER_RE.test(user)) {
    renderKey("type your user name first");
    return;
  }
  if (file.size > 16384) {
    renderKey("the file is too large for a key");
    return;
  }
  try {
    const text = await file.text();
    app.key = await signing.importPrivateJwk(user, text);
    renderKey(`imported from ${file.name}`);
    if (app.room) logEntry(`signing key imported for ${user}`);
    scheduleRefresh();
  } catch (e) {
    app.key = null;
    renderKey(`import failed: ${e.message || e}`);
  }
}

async function generateKey() {
  const user = keyUser();
  if (!USER_RE.test(user)) {
    renderKey("type your user name first");
    return;
  }
  if (app.key && !window.confirm(`Replace the signing key of ${user} in this browser? The old one cannot be recovered.`)) {
    return;
  }
  try {
    app.key = await signing.generateKey(user);
    renderKey("generated here: give the public key to an administrator for igrtctl users add");
  } catch (e) {
    renderKey(`could not generate a key: ${e.message || e}`);
  }
}

function downloadPublic() {
  if (!app.key) return;
  const blob = new Blob([signing.publicJwkText(app.key)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `${app.key.user}.pub.jwk`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// ================================================================= actions

function currentSnap() {
  return app.room ? roomCache(app.room).snap : null;
}

function parseMarkers(text) {
  const groups = String(text || "").split(";").map((s) => s.trim()).filter(Boolean);
  if (!groups.length || groups.length > 10) return null;
  const out = groups.map(parseTriple);
  return out.every(Boolean) ? out : null;
}

async function act(button, fn) {
  const b = typeof button === "string" ? $(button) : button;
  if (b.dataset.busy === "true") return;
  b.dataset.busy = "true";
  b.setAttribute("aria-busy", "true");
  try {
    await fn();
  } finally {
    b.dataset.busy = "false";
    b.removeAttribute("aria-busy");
    renderRoom();
  }
}

async function openSession() {
  const args = {
    patient_id: $("session-patient-input").value.trim(),
    plan_uid: $("session-plan-input").value.trim(),
  };
  const beam = $("session-beam-input").value.trim();
  const forUid = $("session-for-input").value.trim();
  const isoText = $("session-iso-input").value.trim();
  const pos = $("session-position-input").value.trim();
  const override = $("session-override-input").value.trim();
  if (beam) args.beam = beam;
  if (forUid) args.frame_of_reference_uid = forUid;
  if (isoText) {
    const iso = parseTriple(isoText);
    if (!iso) return notSent("open_session", "isocentre must be x,y,z in mm");
    args.iso = iso;
  }
  if (pos) args.patient_position = pos.toUpperCase();
  if (override) {
    if (override.length < 8) return notSent("open_session", "a manual override reason needs at least 8 characters");
    args.manual_override = override;
  }
  await command("open_session", args);
}

function newImagingUid() {
  const d = new Date();
  const two = (n) => String(n).padStart(2, "0");
  return `web-${d.getFullYear()}${two(d.getMonth() + 1)}${two(d.getDate())}-${two(d.getHours())}${two(d.getMinutes())}${two(d.getSeconds())}-${signing.randomId(4)}`;
}

async function recordImaging() {
  const uid = $("imaging-uid-input").value.trim() || newImagingUid();
  const r = await command("record_imaging", { imaging_session_uid: uid, modality: "CBCT" });
  if (r.ok && r.result) {
    app.imaging = { uid: r.result.imaging_session_uid, acquired_at: r.result.acquired_at };
    const pose = r.result.couch || {};
    $("imaging-result").textContent = `imaging ${app.imaging.uid} recorded at ${stamp(app.imaging.acquired_at)}; couch `
      + ["lat", "long", "vert", "yaw", "pitch", "roll"].map((a) => `${a} ${isNum(pose[a]) ? pose[a].toFixed(2) : "—"} ${["yaw", "pitch", "roll"].includes(a) ? "deg" : "mm"}`).join(", ");
    $("imaging-uid-input").value = "";
  }
}

async function register() {
  const moving = $("daily-image").value.trim();
  const fixed = $("planning-image").value.trim();
  const args = { moving };
  if (fixed) args.fixed = fixed;
  $("register-result").textContent = `registering ${moving} … (igrtd's registration worker; this takes a while)`;
  const r = await command("register", args, { timeoutMs: REGISTER_TIMEOUT_MS });
  if (r.ok && r.result) {
    app.registration = { ...r.result, moving, fixed: fixed || null, at: Date.now() / 1000 };
    $("register-result").textContent = view.registrationText(r.result);
    $("register-result").dataset.converged = String(!!r.result.converged);
  } else {
    $("register-result").textContent = `registration failed (${r.code}): ${r.reason}`;
    $("register-result").dataset.converged = "false";
  }
}

async function propose() {
  const snap = currentSnap();
  const s = snap && snap.session;
  const reg = app.registration;
  if (!s || !reg || !app.imaging) return notSent("propose", "needs an open session, a registration and an imaging record");
  const args = {
    matrix: reg.matrix,
    iso: s.iso,
    patient_position: s.patient_position,
    binding: {
      patient_id: s.patient_id,
      plan_uid: s.plan_uid,
      frame_of_reference_uid: s.frame_of_reference_uid,
      imaging_session_uid: app.imaging.uid,
      acquired_at: app.imaging.acquired_at,
    },
    source: `console registration of ${reg.moving}`.slice(0, 200),
  };
  const r = await command("propose", args);
  if (r.ok && r.result && r.result.id) {
    app.matrices.set(r.result.id, reg.matrix);
    logEntry(`proposal ${r.result.id}: ${words(r.result.verdict)}`, r.result.verdict === "refused" ? "refusal" : "ok");
  }
}

async function confirmProposal() {
  const p = currentSnap() && currentSnap().proposal;
  if (!p) return;
  const r = await command("confirm", { proposal_id: p.id });
  if (r.ok && r.result && r.result.move === "not started") {
    showRefusal("confirm", "move_not_started", r.result.move_refused || "the move did not start");
  }
}

async function approveProposal() {
  const p = currentSnap() && currentSnap().proposal;
  if (!p) return;
  if (p.confirmation && p.confirmation.user === app.user) {
    // The page knows who confirmed: refused here, not sent (igrtd refuses it too).
    const reason = `second approval must come from another person than ${app.user}, who confirmed (refused by this console, not sent)`;
    showRefusal("approve", "refused", reason);
    logEntry(`approve refused by this console (refused): ${reason}`, "refusal");
    return;
  }
  const r = await command("approve", { proposal_id: p.id });
  if (r.ok && r.result && r.result.move === "not started") {
    showRefusal("approve", "move_not_started", r.result.move_refused || "the move did not start");
  }
}

async function stopNow() {
  holder.stop("STOP pressed");
  const reason = $("stop-reason").value.trim() || `console STOP by ${app.user}`;
  const r = await command("stop", { reason: reason.slice(0, 256) }, { timeoutMs: 5000 });
  if (!r.ok && r.local) {
    const el = $("last-refusal");
    el.textContent = r.code === "timeout" || r.code === "disconnected"
      ? `STOP SENT BUT NOT CONFIRMED (${r.code}): ${r.reason}. If anything still moves, use the room E-stop.`
      : `STOP NOT SENT (${r.code}): ${r.reason}. Use the room E-stop.`;
    el.dataset.code = r.code;
    el.title = el.textContent;
  } else if (r.ok) {
    logEntry(`STOP acknowledged by igrtd (room ${r.result && r.result.state ? r.result.state : "?"})`, "refusal");
  }
}

async function monitorStart() {
  const markers = parseMarkers($("monitor-markers").value);
  if (!markers) return notSent("monitor_start", "markers must be x,y,z (mm), several separated by ;");
  const args = { markers_mm: markers };
  const target = $("monitor-target").value.trim();
  if (target) {
    const t = parseTriple(target);
    if (!t) return notSent("monitor_start", "target must be x,y,z in mm");
    args.target_mm = t;
  }
  const tol = $("monitor-tolerance").value.trim();
  if (tol) {
    const v = Number(tol);
    if (!Number.isFinite(v) || v <= 0) return notSent("monitor_start", "tolerance must be a positive number of mm");
    args.tolerance_mm = v;
  }
  await command("monitor_start", args);
}

// ================================================================= hold-to-run

const holder = new HoldToRun({
  button: $("btn-hold"),
  sendHold: () => {
    const p = currentSnap() && currentSnap().proposal;
    if (!p) return Promise.resolve({ ok: false, code: "no_proposal", reason: "no proposal to hold for", cmd: "hold" });
    return command("hold", { proposal_id: holder.proposalId || p.id }, { quiet: true, timeoutMs: 3000 });
  },
  sendRelease: () => command("release", {}, { quiet: true, timeoutMs: 3000 }),
  onChange: ({ held, text, kind }) => {
    app.holding = held;
    const s = $("hold-status");
    s.textContent = text;
    s.dataset.held = String(held);
    if (held && holder.sent === 0) {
      const p = currentSnap() && currentSnap().proposal;
      holder.proposalId = p ? p.id : null;
      logEntry(`you: hold-to-run pressed${p ? ` for ${p.id}` : ""}`, "sent");
    }
    if (!held) {
      holder.proposalId = null;
      logEntry(`hold-to-run released: ${text.replace(/^not held \((.*)\)$/, "$1")}`, kind === "error" ? "refusal" : "info");
    }
    renderRoom();
  },
});

// ================================================================= wiring

function wire() {
  $("login-form").addEventListener("submit", login);
  $("btn-logout").addEventListener("click", logout);
  $("btn-rooms").addEventListener("click", backToRooms);
  $("login-user").addEventListener("change", () => { if (!app.user) loadKeyFor($("login-user").value.trim()); });
  $("login-user").addEventListener("input", () => { if (!app.user) loadKeyFor($("login-user").value.trim()); });
  $("key-import").addEventListener("change", importKey);
  $("key-generate").addEventListener("click", generateKey);
  $("key-download").addEventListener("click", downloadPublic);

  $("btn-stop").addEventListener("click", stopNow);
  $("btn-open-session").addEventListener("click", () => act("btn-open-session", openSession));
  $("btn-close-session").addEventListener("click", () => act("btn-close-session", () => command("close_session")));
  $("btn-record-imaging").addEventListener("click", () => act("btn-record-imaging", recordImaging));
  $("btn-register").addEventListener("click", () => act("btn-register", register));
  $("btn-propose").addEventListener("click", () => act("btn-propose", propose));
  $("btn-confirm").addEventListener("click", () => act("btn-confirm", confirmProposal));
  $("btn-approve").addEventListener("click", () => act("btn-approve", approveProposal));
  $("btn-reset").addEventListener("click", () => act("btn-reset", () => command("reset")));
  $("btn-monitor-start").addEventListener("click", () => act("btn-monitor-start", monitorStart));
  $("btn-monitor-stop").addEventListener("click", () => act("btn-monitor-stop",
    () => command("monitor_stop", { release_hold: $("monitor-release-hold").checked })));
  $("btn-arms-extend").addEventListener("click", () => act("btn-arms-extend", async () => {
    await command("arms", { extend: true }, { timeoutMs: 60000 });
    scheduleRefresh();
  }));
  $("btn-arms-retract").addEventListener("click", () => act("btn-arms-retract", async () => {
    await command("arms", { extend: false }, { timeoutMs: 60000 });
    scheduleRefresh();
  }));

  for (const id of ["session-patient-input", "session-plan-input", "daily-image", "planning-image",
    "monitor-markers"]) {
    $(id).addEventListener("input", () => renderRoom());
  }
  for (const id of ["review-before", "review-after", "window-centre", "window-width"]) {
    $(id).addEventListener("input", scheduleReviewDraw);
    $(id).addEventListener("change", scheduleReviewDraw);
  }
  $("window-reset").addEventListener("click", () => {
    applySuggestedWindow(true);
    scheduleReviewDraw();
  });

  app.link.addEventListener("message", (e) => {
    if (!e.detail.topic.includes("/review/")) onMessage(e.detail);
  });
  app.reviewLink.addEventListener("message", (e) => {
    const { topic } = e.detail;
    if (!topic.includes("/review/")) return;
    onMessage(e.detail);
    if (topic.endsWith("/review/meta")) applySuggestedWindow();
  });
  app.link.addEventListener("link", (e) => {
    if (!e.detail.connected) {
      // Let go at once: heartbeats cannot arrive any more.
      holder.stop("connection to the broker lost");
      failPending("disconnected", "connection to the broker lost before igrtd answered");
      if (app.user) logEntry("connection to the broker lost", "refusal");
    } else if (app.user) {
      logEntry("connected to the broker", "ok");
      if (app.room) {
        const c = roomCache(app.room);
        c.lastLive = null;
        scheduleRefresh();
      }
    }
    updateBanner();
    renderRoom();
  });

  // Keyboard: Escape anywhere in the room view focuses STOP (never presses it).
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && app.room) $("btn-stop").focus();
  });
  setInterval(updateBanner, 500);
}

wire();
showView("login");
updateBanner();
loadConfig();
renderKey();
