// The department view: every room (one igrtd each) on this broker, from
// /config.json `rooms` or discovered from retained igrt/+/status and
// igrt/+/state, with igrtd online/offline and the workflow state.
import { clock } from "./format.js";

const ROOM_ID = /^[A-Za-z0-9_.-]{1,64}$/;

export class Department {
  constructor({ list, onOpen }) {
    this.list = list;
    this.onOpen = onOpen;
    this.configured = null; // list of room ids from /config.json, or null: discover
    this.rooms = new Map(); // id -> {status, state, patient, seen}
  }

  setConfigured(rooms) {
    this.configured = Array.isArray(rooms)
      ? rooms.filter((r) => typeof r === "string" && ROOM_ID.test(r)) : null;
    this.render();
  }

  room(id) {
    if (!this.rooms.has(id)) this.rooms.set(id, { status: null, state: null, patient: null });
    return this.rooms.get(id);
  }

  onStatus(id, status) {
    if (!ROOM_ID.test(id)) return;
    const r = this.room(id);
    r.status = status;
    r.statusAt = new Date();
    this.render();
  }

  onState(id, snapshot) {
    if (!ROOM_ID.test(id)) return;
    const r = this.room(id);
    r.state = snapshot ? snapshot.state : null;
    r.patient = snapshot && snapshot.session ? snapshot.session.patient_id : null;
    r.stateAt = new Date();
    this.render();
  }

  ids() {
    if (this.configured) return [...this.configured];
    return [...this.rooms.keys()].filter((id) => {
      const r = this.rooms.get(id);
      return r.status || r.state;
    }).sort();
  }

  statusWords(id) {
    const r = this.rooms.get(id);
    if (!r || (!r.status && !r.state)) return "unknown: nothing heard from this room's igrtd";
    const presence = r.status === "online" ? "online"
      : r.status === "offline" ? "offline" : "presence unknown";
    const state = r.state ? `state ${r.state}` : "state unknown";
    const patient = r.patient ? `, patient ${r.patient}` : "";
    const since = r.status === "offline" && r.statusAt ? ` (offline since ${clock(r.statusAt)})` : "";
    return `${presence}, ${state}${patient}${since}`;
  }

  render() {
    const ids = this.ids();
    const list = this.list;
    // Keep the elements (and the keyboard focus on them) across updates.
    const existing = new Map([...list.children].map((li) => [li.dataset.room, li]));
    for (const [id, li] of existing) if (!ids.includes(id)) li.remove();
    ids.forEach((id, index) => {
      let li = existing.get(id);
      if (!li) {
        li = document.createElement("li");
        li.className = "roomcard";
        li.dataset.room = id;
        li.setAttribute("data-testid", `room-card-${id}`);
        const name = document.createElement("h2");
        name.className = "roomname";
        name.textContent = id;
        const status = document.createElement("p");
        status.className = "roomstatus";
        status.setAttribute("data-testid", `room-status-${id}`);
        const open = document.createElement("button");
        open.type = "button";
        open.className = "primary";
        open.textContent = `Open ${id}`;
        open.setAttribute("data-testid", `room-open-${id}`);
        open.addEventListener("click", () => this.onOpen(id));
        li.append(name, status, open);
      }
      if (list.children[index] !== li) list.insertBefore(li, list.children[index] || null);
      const r = this.rooms.get(id);
      const status = li.querySelector(".roomstatus");
      status.textContent = this.statusWords(id);
      li.dataset.status = r && r.status ? r.status : "unknown";
      status.dataset.status = li.dataset.status;
    });
    if (!ids.length) {
      const hint = document.getElementById("rooms-hint");
      if (hint) hint.textContent = this.configured
        ? "No rooms configured." : "No rooms found yet on this broker (waiting for igrtd's retained status).";
    } else {
      const hint = document.getElementById("rooms-hint");
      if (hint) hint.textContent = "Rooms this broker carries: igrtd online or offline and its workflow state.";
    }
  }
}
