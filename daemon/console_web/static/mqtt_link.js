// The page's one broker connection: MQTT 5 over WebSockets, clean start,
// a unique client id per tab, reconnect with back-off, and nothing queued
// while offline (a command is published now or not at all).
import mqtt from "/vendor/mqtt.esm.js";
import { randomId } from "./signing.js";

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 8000;

// MQTT 5 CONNACK reason codes a person can act on.
const CONNACK_WORDS = {
  128: "the broker refused the connection",
  133: "client id refused",
  134: "wrong user name or password",
  135: "not authorised (wrong user name or password, or no access to this broker)",
  136: "broker unavailable",
  137: "broker busy",
  138: "banned",
  140: "bad authentication method",
};

export class LinkError extends Error {}

export class Link extends EventTarget {
  constructor() {
    super();
    this.client = null;
    this.connected = false;
    this.since = null; // Date the connection state last changed
    this.topics = new Set();
    this.user = null;
    this.url = null;
    this.delay = FIRST_DELAY_MS;
    this.lastError = null;
    this.retryTimer = null;
  }

  // Resolves on the first CONNACK; rejects with a one-line reason otherwise.
  // keepalive: seconds (the control link: 5, so a silent broker is noticed in 7.5 s);
  // role: part of the client id ("web", "review").
  connect({ url, user, password, keepalive = 5, role = "web" }) {
    this._end();
    this.url = url;
    this.user = user;
    this.delay = FIRST_DELAY_MS;
    const clientId = `${user}-${role}-${randomId(9)}`.slice(0, 64);
    return new Promise((resolve, reject) => {
      let settled = false;
      let client;
      try {
        client = mqtt.connect(url, {
          protocolVersion: 5,
          clean: true,
          clientId,
          username: user,
          password,
          keepalive,
          connectTimeout: 5000,
          reconnectPeriod: 0, // reconnects are ours, with back-off (below)
          resubscribe: false,
          queueQoSZero: false,
          timerVariant: "native",
          properties: { sessionExpiryInterval: 0 },
        });
      } catch (err) {
        reject(new LinkError(`cannot connect to ${url}: ${err.message || err}`));
        return;
      }
      this.client = client;
      const fail = (why) => {
        if (settled) return;
        settled = true;
        try { client.end(true); } catch { /* already gone */ }
        if (this.client === client) this.client = null;
        reject(new LinkError(why));
      };
      client.on("connect", () => {
        if (this.client !== client) return;
        this.delay = FIRST_DELAY_MS;
        this.connected = true;
        this.since = new Date();
        this.lastError = null;
        for (const t of this.topics) client.subscribe(t, { qos: 1 });
        if (!settled) {
          settled = true;
          resolve();
        }
        this.dispatchEvent(new CustomEvent("link", { detail: { connected: true } }));
      });
      client.on("error", (err) => {
        const code = err && (err.code ?? err.reasonCode);
        const why = CONNACK_WORDS[code] || (err && err.message) || String(err);
        this.lastError = why;
        if (!settled) fail(`broker ${url}: ${why}`);
        else console.warn(`igrt console: broker connection error: ${why}`);
      });
      client.on("close", () => {
        if (this.client !== client && settled) return;
        if (!settled) {
          fail(`cannot reach the broker at ${url}${this.lastError ? ": " + this.lastError : ""}`);
          return;
        }
        if (this.connected) console.warn(`igrt console: broker connection closed${this.lastError ? ` (${this.lastError})` : ""}`);
        if (this.connected) {
          this.connected = false;
          this.since = new Date();
          this.dispatchEvent(new CustomEvent("link", { detail: { connected: false } }));
        }
        // Back-off: 0.5, 1, 2, 4, 8, 8 ... s between attempts.
        if (!this.retryTimer) {
          const wait = this.delay;
          this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
          this.retryTimer = setTimeout(() => {
            this.retryTimer = null;
            if (this.client === client && !client.connected) client.reconnect();
          }, wait);
        }
      });
      client.on("offline", () => {
        if (this.client !== client) return;
        if (this.connected) {
          this.connected = false;
          this.since = new Date();
          this.dispatchEvent(new CustomEvent("link", { detail: { connected: false } }));
        }
      });
      client.on("message", (topic, payload, packet) => {
        if (this.client !== client) return;
        let text;
        try {
          text = new TextDecoder("utf-8", { fatal: true }).decode(payload);
        } catch {
          return; // not UTF-8: not one of igrtd's messages
        }
        this.dispatchEvent(new CustomEvent("message", {
          detail: { topic, text, retain: !!(packet && packet.retain) },
        }));
      });
    });
  }

  subscribe(topic) {
    if (this.topics.has(topic)) return;
    this.topics.add(topic);
    if (this.client && this.connected) this.client.subscribe(topic, { qos: 1 });
  }

  unsubscribe(topic) {
    if (!this.topics.delete(topic)) return;
    if (this.client && this.connected) this.client.unsubscribe(topic);
  }

  // Publish now (QoS 1, never retained) or throw: nothing is queued for later.
  publish(topic, text) {
    if (!this.client || !this.connected) {
      return Promise.reject(new LinkError("not connected to the broker"));
    }
    return new Promise((resolve, reject) => {
      this.client.publish(topic, text, { qos: 1, retain: false }, (err) => {
        if (err) reject(new LinkError(`publish failed: ${err.message || err}`));
        else resolve();
      });
    });
  }

  // End the connection; the subscriptions are kept for the next connect.
  _end() {
    const c = this.client;
    this.client = null;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (c) {
      try { c.end(true); } catch { /* already closed */ }
    }
    if (this.connected) {
      this.connected = false;
      this.since = new Date();
    }
  }

  // Sign out: end the connection and forget the subscriptions.
  close() {
    this._end();
    this.topics.clear();
  }
}
