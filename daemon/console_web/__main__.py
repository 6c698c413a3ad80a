"""igrt-console --config FILE [--quiet]: serve the browser console.

Prints `igrt-console listening on http://HOST:PORT/` (https:// with `tls` in
the config; flushed) once it has
bound; a port of 0 in the config picks a free one and the line tells which.
A bad config, or an address it cannot bind, is one line on stderr and exit
status 2 (config) or 1 (bind); never a traceback. SIGTERM and SIGINT stop it
(exit 0).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import NoReturn

from daemon.console_web.config import ConsoleConfigError, load_config
from daemon.console_web.server import STATIC_DIR, VENDOR_FILE, ConsoleHTTPServer, tls_context

PROG = "igrt-console"


class _Args(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        print(f"{PROG}: {message}", file=sys.stderr)
        raise SystemExit(2)


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)


def main(argv: list[str] | None = None) -> int:
    ap = _Args(prog=PROG, description="serve the igrt browser treatment console")
    ap.add_argument("--config", type=Path, required=True, help="console config JSON")
    ap.add_argument("--quiet", action="store_true", help="no line per request on stderr")
    ap.add_argument("--static-dir", type=Path, default=STATIC_DIR,
                    help="the page's directory (development, tests; default: the installed one)")
    ap.add_argument("--vendor-file", type=Path, default=VENDOR_FILE,
                    help="mqtt.esm.js to serve (development, tests; default: from node_modules")
    a = ap.parse_args(argv)
    try:
        config = load_config(a.config)
        tls = tls_context(config.tls) if config.tls is not None else None
    except ConsoleConfigError as exc:
        print(f"{PROG}: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    try:
        server = ConsoleHTTPServer(config, static_dir=a.static_dir, vendor_file=a.vendor_file,
                                   quiet=a.quiet, tls=tls)
    except ConsoleConfigError as exc:
        print(f"{PROG}: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except (OSError, OverflowError) as exc:
        where = f"{config.listen.host}:{config.listen.port}"
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"{PROG}: cannot listen on {where}: {_one_line(reason)}", file=sys.stderr)
        return 1
    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, which runs in this (the main)
        # thread: ask from another one. Nothing is raised into a request in progress.
        threading.Thread(target=server.shutdown, name="igrt-console stop").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{PROG} listening on {server.url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
