"""The browser treatment console, measured in a real browser (issue 15 item 9).

    python -m bench.console_browser_bench

Headless Debian chromium (Playwright, /usr/bin/chromium) on the console web
server, a real Mosquitto with its websockets listener, and a simulated room
(igrtd, couch, PLC) in a child process (tests/browser/stack.py). Page times are
the page's own performance.now() (CLOCK_MONOTONIC in chromium on Linux), mapped
onto this machine's time.monotonic() by the best of 30 round trips
(`performance.now()` read between two time.monotonic(); the mapping is good to
half the shortest round trip, reported as console_clock_map_uncertainty_ms).

- console_stop_click_to_stop_frame_*_ms: a click on btn-stop (the `click` event the
  page acts on, its event.timeStamp) to the STOP frame executed by the simulated
  couch (its device-side receive time, sim control `record`): the page signs
  `stop` (WebCrypto Ed25519), publishes it over MQTT/WebSockets, igrtd verifies it
  and writes STOP. console_stop_click_to_ws_send_*_ms is its first part: the click
  to the first WebSocket frame the page sends after it (DevTools
  Network.webSocketFrameSent, whose timestamps are CLOCK_MONOTONIC seconds). The room is idle (STANDBY): igrtd writes STOP to the
  couch in every state (docs/state-machine.md) and latches only during a move, so
  no reset is needed between samples; the path from the click to the frame is the
  one of a STOP mid-move.
- console_state_to_screen_*_ms: a state snapshot published on igrt/{room}/state
  (time.monotonic() just before the publish) to the page's DOM showing it
  (a MutationObserver on workflow-state, in the page). Published by this bench as
  the `igrtd` account for a room of its own (`benchview`, retained status online,
  the snapshot of the real room with the workflow state alternating STANDBY/READY),
  so that each sample is one known message.
- console_first_paint_ms: navigation start to first contentful paint of the
  console (Performance API `first-contentful-paint`), a fresh browser context each
  load (no cache); p50, with _max_ and _samples.

Sample counts: 200 STOP clicks and 200 state messages under `make bench` (p90),
1,000 each under `make bench-long` (p99); 20 page loads (100 long).
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from browser.stack import (
    CHROMIUM,
    THERAPIST,
    ConsoleServer,
    RoomsProcess,
    browser_missing,
    description,
)

from bench.stats import samples, tail_figures

ROOM = "bench1"
VIEW_ROOM = "benchview"  # no igrtd: this bench publishes its state
N_STOP = 200
N_STATE = 200
N_PAINT = 20
CALIBRATION_ROUNDS = 30

_WATCH_STOP = """() => {
  window.__igrtBench = window.__igrtBench || {};
  const b = window.__igrtBench;
  b.stopClick = [];
  const el = document.querySelector('[data-testid="btn-stop"]');
  el.addEventListener('click', e => b.stopClick.push(e.timeStamp), {capture: true});
}"""
_WATCH_STATE = """() => {
  window.__igrtBench = window.__igrtBench || {};
  const b = window.__igrtBench;
  b.state = [];
  const el = document.querySelector('[data-testid="workflow-state"]');
  new MutationObserver(() => b.state.push([performance.now(), el.textContent]))
    .observe(el, {childList: true, characterData: true, subtree: true});
}"""
_FCP = """() => new Promise(resolve => {
  const e = performance.getEntriesByName('first-contentful-paint');
  if (e.length) { resolve(e[0].startTime); return; }
  new PerformanceObserver(list => {
    for (const x of list.getEntries())
      if (x.name === 'first-contentful-paint') resolve(x.startTime);
  }).observe({type: 'paint', buffered: true});
})"""


class ClockMap:
    """Page performance.now() (ms) -> this process's time.monotonic() (s)."""

    def __init__(self, page: Any) -> None:
        best: tuple[float, float] | None = None
        for _ in range(CALIBRATION_ROUNDS):
            a = time.monotonic()
            p = float(page.evaluate("performance.now()"))
            b = time.monotonic()
            if best is None or b - a < best[0]:
                best = (b - a, p / 1e3 - (a + b) / 2)
        assert best is not None
        self.uncertainty_s, self.offset_s = best[0] / 2, best[1]

    def mono(self, page_ms: float) -> float:
        return page_ms / 1e3 - self.offset_s


def first_paint(browser: Any, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        ctx = browser.new_context()
        try:
            page = ctx.new_page()
            page.goto(url)
            out.append(float(page.evaluate(_FCP)))
        finally:
            ctx.close()
    return out


def login(page: Any, server: ConsoleServer, stack: RoomsProcess, key: Path) -> None:
    from playwright.sync_api import expect

    b = stack.info["broker"]
    page.goto(server.url)
    tid = page.get_by_test_id
    if tid("login-broker").is_editable():
        tid("login-broker").fill(server.broker_url)
    tid("login-user").fill(THERAPIST)
    tid("login-password").fill(b["creds"][THERAPIST])
    tid("login-submit").click()
    expect(tid("rooms")).to_be_visible()
    tid("key-import").set_input_files(str(key))


def open_room(page: Any, room: str) -> None:
    from playwright.sync_api import expect

    tid = page.get_by_test_id
    if tid("btn-rooms").is_visible():
        tid("btn-rooms").click()
    tid(f"room-open-{room}").click()
    expect(tid("room-name")).to_contain_text(room)


def stop_clicks(page: Any, stack: RoomsProcess, clock: ClockMap,
                n: int) -> tuple[list[float], list[float]]:
    """Click -> STOP frame at the couch, and click -> the page's first WebSocket frame
    sent after it (the signed `stop` leaving the browser; DevTools' monotonic time)."""
    page.evaluate(_WATCH_STOP)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    sent: list[float] = []
    cdp.on("Network.webSocketFrameSent", lambda e: sent.append(float(e["timestamp"])))
    button = page.get_by_test_id("btn-stop")
    button.scroll_into_view_if_needed()
    to_frame: list[float] = []
    to_send: list[float] = []
    for i in range(n):
        since = time.monotonic()
        button.click()
        deadline = since + 5.0
        while True:
            stops = stack.couch_commands(ROOM, since=since, kind="STOP")
            if stops:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"click {i}: no STOP reached the couch within 5 s")
            time.sleep(0.01)
        clicks = page.evaluate("window.__igrtBench.stopClick")
        if len(clicks) != i + 1:
            raise RuntimeError(f"click {i}: {len(clicks)} clicks seen on btn-stop")
        t_click = clock.mono(clicks[-1])
        to_frame.append((stops[0]["t_monotonic"] - t_click) * 1e3)
        after = [t for t in sent if t >= t_click]
        if after:
            to_send.append((min(after) - t_click) * 1e3)
        time.sleep(0.02)  # the reply lands; the next click is a fresh one
    cdp.detach()
    return to_frame, to_send


class StatePublisher:
    """The `igrtd` account publishing the benchview room's status and state."""

    def __init__(self, stack: RoomsProcess) -> None:
        import paho.mqtt.client as mqtt

        b = stack.info["broker"]
        self.snapshot: dict[str, Any] | None = None
        self._got = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-state-publisher",
                        protocol=mqtt.MQTTv5)
        c.username_pw_set("igrtd", b["creds"]["igrtd"])
        c.on_message = self._on_message
        c.connect(b["host"], b["port"])
        sock = c.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.loop_start()
        c.subscribe(f"igrt/{ROOM}/state", qos=1)
        self.client = c
        if not self._got.wait(10):
            raise RuntimeError(f"no retained state of {ROOM}")
        self.seq = 0

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if msg.payload and self.snapshot is None:
            self.snapshot = json.loads(msg.payload)["state"]
            self._got.set()

    def online(self) -> None:
        self.client.publish(f"igrt/{VIEW_ROOM}/status",
                            json.dumps({"v": 1, "room": VIEW_ROOM, "status": "online"}),
                            qos=1, retain=True).wait_for_publish(5)
        self.publish("STANDBY")

    def publish(self, state: str) -> float:
        assert self.snapshot is not None
        self.seq += 1
        snap = {**self.snapshot, "room": VIEW_ROOM, "state": state, "since": time.time()}
        payload = json.dumps({"v": 1, "room": VIEW_ROOM, "seq": self.seq, "ts": time.time(),
                              "state": snap})
        t = time.monotonic()
        self.client.publish(f"igrt/{VIEW_ROOM}/state", payload, qos=1, retain=True)
        return t

    def close(self) -> None:
        for leaf in ("state", "status"):  # clear the retained messages of the fake room
            self.client.publish(f"igrt/{VIEW_ROOM}/{leaf}", b"", qos=1,
                                retain=True).wait_for_publish(5)
        self.client.loop_stop()
        self.client.disconnect()


def state_to_screen(page: Any, pub: StatePublisher, clock: ClockMap, n: int) -> list[float]:
    from playwright.sync_api import expect

    expect(page.get_by_test_id("workflow-state")).to_contain_text("STANDBY")
    page.evaluate(_WATCH_STATE)
    out: list[float] = []
    for i in range(n):
        want = "READY" if i % 2 == 0 else "STANDBY"
        seen = len(page.evaluate("window.__igrtBench.state"))
        t_pub = pub.publish(want)
        deadline = t_pub + 5.0
        while True:
            changes = page.evaluate("window.__igrtBench.state")[seen:]
            hit = [t for t, text in changes if want in text.upper()]
            if hit:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"state {i} ({want}) not on the page within 5 s")
            time.sleep(0.005)
        out.append((clock.mono(hit[0]) - t_pub) * 1e3)
    return out


def run() -> dict[str, float]:
    why = browser_missing()
    if why:
        raise RuntimeError(why)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="igrt-console-bench-") as tmp:
        stack = RoomsProcess(Path(tmp) / "rooms", [description(ROOM, consoles=[THERAPIST])],
                             [THERAPIST])
        stack.start()
        b = stack.info["broker"]
        server = ConsoleServer(stack.run_dir, b["ws_url"], None,
                               bridge=(b["host"], b["port"]))
        pub: StatePublisher | None = None
        try:
            url = server.start()
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
                paint = first_paint(browser, url, samples(N_PAINT, 100))
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = ctx.new_page()
                page.set_default_timeout(15_000)
                login(page, server, stack, Path(stack.room(ROOM)["key_dir"]) / f"{THERAPIST}.key")
                open_room(page, ROOM)
                clock = ClockMap(page)
                stop, send = stop_clicks(page, stack, clock, samples(N_STOP))
                pub = StatePublisher(stack)
                pub.online()
                open_room(page, VIEW_ROOM)
                clock = ClockMap(page)
                shown = state_to_screen(page, pub, clock, samples(N_STATE))
                ctx.close()
                browser.close()
        finally:
            if pub is not None:
                pub.close()
            server.stop()
            stack.stop()
    paint_figures = tail_figures("console_first_paint", "ms", paint)
    return {
        **tail_figures("console_stop_click_to_stop_frame", "ms", stop),
        **tail_figures("console_stop_click_to_ws_send", "ms", send),
        **tail_figures("console_state_to_screen", "ms", shown),
        "console_first_paint_ms": paint_figures["console_first_paint_p50_ms"],
        **paint_figures,
        "console_clock_map_uncertainty_ms": clock.uncertainty_s * 1e3,
    }


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k} {v:.3f}")
