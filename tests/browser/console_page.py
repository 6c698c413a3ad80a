"""One person at the treatment console in a real browser, through the DOM contract
(data-testid attributes, /tmp/console/contract.md): nothing here reaches into the
page's scripts; a test reads and clicks what a person sees.

    tess = ConsolePage(context.new_page(), url, broker_url=ws_url)
    tess.login("tess", password)
    tess.import_key(key_dir / "tess.key")
    tess.open_room("tr1")
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

TIMEOUT_MS = 10_000
# The screenshots a reviewer looks at: out/console/ under the repository.
SHOTS = Path(__file__).resolve().parents[2] / "out" / "console"


def words(text: str) -> re.Pattern[str]:
    """Text containing `text` as words, any case (`AWAITING_APPROVAL` or `awaiting approval`)."""
    parts = [re.escape(p) for p in re.split(r"[\s_]+", text.strip()) if p]
    return re.compile(r"[\s_]*".join(parts), re.IGNORECASE)


class ConsolePage:
    def __init__(self, page: Page, url: str, broker_url: str, shots: Path = SHOTS,
                 who: str = "") -> None:
        self.page, self.url, self.broker_url, self.shots, self.who = (
            page, url, broker_url, shots, who)
        self.page.set_default_timeout(TIMEOUT_MS)
        self.console_errors: list[str] = []
        page.on("pageerror", lambda exc: self.console_errors.append(f"pageerror: {exc}"))
        page.on("console", lambda m: self.console_errors.append(f"{m.type}: {m.text}")
                if m.type == "error" else None)

    # ------------------------------------------------------------ basics
    def tid(self, name: str) -> Locator:
        return self.page.get_by_test_id(name)

    def text(self, name: str) -> str:
        return self.tid(name).inner_text().strip()

    def click(self, name: str) -> None:
        self.tid(name).click()

    def fill(self, name: str, value: str) -> None:
        self.tid(name).fill(value)

    def shot(self, name: str, full_page: bool = True) -> Path:
        """A screenshot out/console/NAME.png for the reviewer: the full page, or (while a
        pointer holds the hold-to-run button) the viewport only, because a full-page
        capture lays the page out again and the button moves from under the pointer."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def expect_text(self, name: str, text: str, timeout_ms: int = TIMEOUT_MS) -> None:
        expect(self.tid(name)).to_contain_text(words(text), timeout=timeout_ms)

    def expect_state(self, state: str, timeout_ms: int = TIMEOUT_MS) -> None:
        self.expect_text("workflow-state", state, timeout_ms)

    # ------------------------------------------------------------ login and key
    def login(self, user: str, password: str) -> None:
        self.page.goto(self.url)
        expect(self.tid("login-submit")).to_be_visible()
        broker = self.tid("login-broker")
        if broker.is_editable():
            broker.fill(self.broker_url)
        self.fill("login-user", user)
        self.fill("login-password", password)
        self.click("login-submit")

    def expect_logged_in(self) -> None:
        expect(self.tid("key-status")).to_be_visible()

    def import_key(self, key_file: Path) -> None:
        self.tid("key-import").set_input_files(str(key_file))
        expect(self.tid("key-status")).to_have_text(
            re.compile(r"^\s*signing key loaded", re.IGNORECASE))

    def generate_key(self) -> dict[str, Any]:
        """A key made in the browser; its public JWK as the page shows it."""
        self.click("key-generate")
        public = self.tid("key-public")
        expect(public).to_have_value(re.compile(r"\S"))
        expect(self.tid("key-status")).to_have_text(
            re.compile(r"^\s*signing key loaded", re.IGNORECASE))
        jwk: dict[str, Any] = json.loads(public.input_value())
        return jwk

    # ------------------------------------------------------------ rooms
    def open_room(self, room: str) -> None:
        if self.tid("btn-rooms").is_visible():  # in a room: back to the department view
            self.click("btn-rooms")
        self.click(f"room-open-{room}")  # waits until the room is discovered
        expect(self.tid("room-name")).to_contain_text(room)

    def back_to_rooms(self) -> None:
        self.click("btn-rooms")
        expect(self.tid("rooms")).to_be_visible()

    # ------------------------------------------------------------ results
    def expect_refusal(self, code: str, timeout_ms: int = TIMEOUT_MS) -> str:
        refusal = self.tid("last-refusal")
        expect(refusal).to_have_attribute("data-code", code, timeout=timeout_ms)
        expect(refusal).to_contain_text(f"refused ({code})", timeout=timeout_ms)
        return refusal.inner_text()

    def refusal_code(self) -> str | None:
        loc = self.tid("last-refusal")
        if loc.count() == 0:
            return None
        return loc.get_attribute("data-code")

    def expect_enabled(self, name: str, timeout_ms: int = TIMEOUT_MS) -> None:
        expect(self.tid(name)).to_be_enabled(timeout=timeout_ms)

    # ------------------------------------------------------------ hold-to-run
    def press_hold(self) -> None:
        """Press and keep pressing btn-hold with the mouse (pointer held)."""
        self.expect_enabled("btn-hold")
        self.tid("btn-hold").hover()
        self.page.mouse.down()

    def release_hold(self) -> None:
        self.page.mouse.up()

    def press_hold_key(self) -> None:
        """Hold btn-hold by the keyboard: focused, Space held down."""
        self.expect_enabled("btn-hold")
        self.tid("btn-hold").focus()
        self.page.keyboard.down("Space")

    def release_hold_key(self) -> None:
        self.page.keyboard.up("Space")

    # ------------------------------------------------------------ canvases
    def canvas_painted(self, name: str) -> int:
        """How many pixels of a canvas are not fully transparent or black."""
        count: int = self.tid(name).evaluate(
            """c => { const g = c.getContext('2d'); if (!g || !c.width || !c.height) return 0;
                 const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
                 for (let i = 0; i < d.length; i += 4)
                   if (d[i+3] && (d[i] || d[i+1] || d[i+2])) n++;
                 return n; }""")
        return count
