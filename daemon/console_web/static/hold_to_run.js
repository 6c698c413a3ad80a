// Hold-to-run: signed `hold` heartbeats at 20 Hz only while the button is held
// down (pointer, or Space / Enter while it has focus). Letting go in any way
// (pointerup, pointercancel, pointerleave, keyup, window blur, tab hidden,
// connection loss, the move ending, a refusal, igrtd silent) stops the
// heartbeats at once and sends `release`.

const RATE_HZ = 20;
const SILENCE_MS = 2000; // no answer to heartbeats for this long: let go
// Heartbeats for these states keep a move going or wait for its confirmation.
const HOLDABLE = new Set(["PROPOSED", "AWAITING_APPROVAL", "CONFIRMED", "MOVING", "VERIFYING"]);

export class HoldToRun {
  // button: the hold button; sendHold(): Promise<reply> of one signed heartbeat;
  // sendRelease(): Promise; onChange({held, text, why}): status for the page.
  constructor({ button, sendHold, sendRelease, onChange, onRefused }) {
    this.button = button;
    this.sendHold = sendHold;
    this.sendRelease = sendRelease;
    this.onChange = onChange || (() => {});
    this.onRefused = onRefused || (() => {});
    this.held = false;
    this.by = null; // "pointer" | "key"
    this.pointerId = null;
    this.timer = null;
    this.sent = 0;
    this.lastAnswer = 0;
    this.outstanding = 0;
    this.lastState = null;
    this.generation = 0;
    this._wire();
  }

  _wire() {
    const b = this.button;
    b.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 || b.disabled) return;
      e.preventDefault(); // no text selection, no focus-steal scroll, no emulated mouse
      b.focus({ preventScroll: true });
      this.pointerId = e.pointerId;
      this.start("pointer");
    });
    const pointerEnd = (why) => (e) => {
      if (this.held && this.by === "pointer"
          && (this.pointerId === null || e.pointerId === this.pointerId)) {
        this.stop(why);
      }
    };
    b.addEventListener("pointerup", pointerEnd("button let go"));
    b.addEventListener("pointercancel", pointerEnd("pointer cancelled"));
    b.addEventListener("pointerleave", pointerEnd("pointer left the button"));
    // A pointer let go elsewhere (the button disabled meanwhile gets no events).
    window.addEventListener("pointerup", pointerEnd("button let go"), true);
    window.addEventListener("pointercancel", pointerEnd("pointer cancelled"), true);
    b.addEventListener("contextmenu", (e) => e.preventDefault());
    b.addEventListener("click", (e) => e.preventDefault());
    b.addEventListener("keydown", (e) => {
      if (e.key !== " " && e.key !== "Enter" && e.code !== "Space") return;
      e.preventDefault();
      if (e.repeat || this.held || b.disabled) return;
      this.start("key");
    });
    b.addEventListener("keyup", (e) => {
      if (e.key !== " " && e.key !== "Enter" && e.code !== "Space") return;
      e.preventDefault();
      if (this.held && this.by === "key") this.stop("key let go");
    });
    b.addEventListener("blur", () => {
      if (this.held && this.by === "key") this.stop("focus left the button");
    });
    window.addEventListener("blur", () => {
      if (this.held) this.stop("window lost focus");
    });
    document.addEventListener("visibilitychange", () => {
      if (document.hidden && this.held) this.stop("page hidden");
    });
  }

  start(by) {
    if (this.held) return;
    this.held = true;
    this.by = by;
    this.generation += 1;
    this.sent = 0;
    this.outstanding = 0;
    this.lastAnswer = performance.now();
    this.button.setAttribute("aria-pressed", "true");
    this.button.dataset.held = "true";
    this.onChange({ held: true, text: "held: sending hold-to-run (20 Hz); hold the PLC pendant too" });
    this._beat(this.generation, performance.now());
  }

  _beat(gen, dueAt) {
    if (!this.held || gen !== this.generation) return;
    const now = performance.now();
    if (this.outstanding > 0 && now - this.lastAnswer > SILENCE_MS) {
      this.stop("igrtd stopped answering hold-to-run", "error");
      return;
    }
    this.sent += 1;
    this.outstanding += 1;
    this.sendHold().then((reply) => {
      if (gen !== this.generation) return;
      this.outstanding = Math.max(0, this.outstanding - 1);
      this.lastAnswer = performance.now();
      if (!this.held) return;
      if (!reply.ok) {
        this.onRefused(reply);
        this.stop(`hold refused (${reply.code}): ${reply.reason}`, "error");
        return;
      }
      const r = reply.result || {};
      this.lastState = r.state || this.lastState;
      if (r.done || (r.state && !HOLDABLE.has(r.state))) {
        this.stop(`move over: room is ${r.state || "DONE"}; let go of the button`, "done");
        return;
      }
      const what = r.running === false ? `held, waiting (room ${r.state})`
        : `held: couch ${r.state === "MOVING" ? "moving" : (r.state || "").toLowerCase()}`;
      this.onChange({ held: true, text: `${what}; hold the PLC pendant too` });
    }, (err) => {
      if (gen !== this.generation) return;
      this.outstanding = Math.max(0, this.outstanding - 1);
      if (this.held) this.stop(`hold not sent: ${err.message || err}`, "error");
    });
    // Self-correcting 50 ms cadence.
    const next = dueAt + 1000 / RATE_HZ;
    this.timer = setTimeout(() => this._beat(gen, next), Math.max(0, next - performance.now()));
  }

  // Let go: stop heartbeats now, then say so (release).
  stop(why, kind = "released") {
    if (!this.held) return;
    this.held = false;
    this.generation += 1;
    clearTimeout(this.timer);
    this.timer = null;
    this.pointerId = null;
    this.button.setAttribute("aria-pressed", "false");
    this.button.dataset.held = "false";
    this.onChange({ held: false, text: `not held (${why})`, why, kind });
    this.sendRelease().catch(() => {
      // Not connected: igrtd stops the move itself (no heartbeats, broker link lost).
    });
  }
}
