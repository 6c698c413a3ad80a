"""igrtd: the treatment-room positioning daemon.

    igrtd --config room.json            run
    igrtd --check-config room.json      validate, print every problem, exit 0/2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from daemon.config import ConfigError, RoomConfig, load_config
from daemon.memory_lock import lock_memory
from drivers.event_loop import precise_event_loop

if TYPE_CHECKING:
    from daemon.config import CouchLinkConfig
    from daemon.room import Room
    from drivers.couch import CouchClient

log = logging.getLogger("igrt.daemon")


class _Args(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        print(f"igrtd: {message}", file=sys.stderr)
        raise SystemExit(2)


async def serve(config: RoomConfig, stop_event: asyncio.Event | None = None) -> None:
    from daemon import diagnostics, sdnotify
    from daemon.audit import AuditLog
    from daemon.claim_recovery import recover_from_audit
    from daemon.commands import CommandListeners
    from daemon.console.users import room_registry
    from daemon.control import ControlServer
    from daemon.group_commit import group_commit_for
    from daemon.recording import attach_recorder, attach_room
    from daemon.service import RoomService
    from daemon.store import CorrectionStore
    from drivers.couch import CouchClient

    config.state_dir.mkdir(parents=True, exist_ok=True)
    stop_event = stop_event or asyncio.Event()
    # Both sync in the group commit thread, off the event loop; a motion command
    # waits for that sync (daemon/group_commit.py).
    audit = AuditLog(config.state_dir / "audit", deferred_sync=True)
    audit.open()
    store = CorrectionStore(config.state_dir / "igrt.sqlite", deferred_sync=True)
    commit = group_commit_for(audit, [store])
    commit.journal_written()  # what opening the audit log recovered
    # Claims and token ids a power loss took from the store but not from the audit log,
    # which is all a GO waits for (daemon/claim_recovery.py).
    recover_from_audit(audit.directory, store, audit)
    c = config.couch
    couch = CouchClient(c.port, baudrate=c.baudrate, heartbeat_interval_s=c.heartbeat_interval_s,
                        reply_timeout_s=c.reply_timeout_s, link_timeout_s=c.link_timeout_s)
    recorder = attach_recorder(config, couch)  # None unless the config has `record`
    try:
        await couch.connect()
        async with contextlib.AsyncExitStack() as stack:
            plc = arms = None
            if config.plc is not None:
                from daemon.plc_link import open_plc

                plc, arms = await stack.enter_async_context(open_plc(config.plc))
            service = RoomService(config, couch, audit, store, plc=plc, arms=arms,
                                  barrier=commit.barrier, go_barrier=commit.journal_barrier,
                                  hold_syncs=commit.hold)
            stack.callback(service.close_workers)
            follow_heartbeat_rate(service.room, couch, c)
            listeners = CommandListeners()
            attach_room(recorder, plc.client if plc is not None else None, service, listeners)
            await service.start()
            if config.monitoring is not None:
                from daemon.imager_link import ImagerLink

                imager = ImagerLink(config.imager_socket)
                service.attach_imager(imager)
                await imager.start()
                stack.push_async_callback(imager.close)
            diagnostics.install(service)
            # One user registry for both front ends: an enrolment or a revocation in
            # the users file reaches the local socket and MQTT at the same moment.
            users = room_registry(config.users, config.users_file, service)
            control = ControlServer(service, config, listeners=listeners, users=users)
            await control.start()
            stack.push_async_callback(control.close)
            console = None
            if config.mqtt is not None:
                from daemon.console_link import open_console

                console = await stack.enter_async_context(open_console(config, service, store,
                                                                         listeners, users))
            # What is alive now (modules, configuration, models, the drivers) lives as
            # long as igrtd: out of the collector's way, a full collection during a
            # move scans only what igrtd made since, and pauses the loop (and the
            # PLC read, and the STOP it calls for) that much less.
            gc.collect()
            gc.freeze()
            # Resident from now on: no disk read on the way to a STOP (memory_lock.py).
            not_locked = lock_memory()
            if not_locked is not None:
                log.warning("%s; a page read back from the disk can delay supervision",
                            not_locked)
            sdnotify.ready()
            sdnotify.status(f"room {config.room}: {service.workflow.state}")
            log.info("igrtd ready (room %s)", config.room)
            fault: str | None = None
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(service.run())
                    wd = sdnotify.watchdog_interval_s()
                    if wd:
                        tg.create_task(_feed_watchdog(wd / 2))
                    if console is not None:
                        tg.create_task(console.run())
                    tg.create_task(_until(stop_event))
            except* _Shutdown:
                sdnotify.stopping()
                log.info("igrtd stopping")
                if recorder is not None:
                    recorder.igrtd_stopping()
                service.stop_couch_now()
                # Beam-on monitoring ends with the beam held, while the PLC link is still open.
                await service.shutdown_monitoring()
            except* Exception as group:
                # Last line of defence: every outside input is guarded where it is
                # handled, so reaching here is a bug. Supervision is gone with the
                # task group, so the couch is stopped first (stop always wins),
                # then the fault is audited, then igrtd exits non-zero and systemd
                # restarts it (Restart=on-failure): it comes back stopped, with
                # interrupted moves marked and never re-sent. Carrying on without
                # supervision would be worse than a restart.
                service.stop_couch_now()
                fault = "; ".join(_one_line(e) for e in group.exceptions)
                log.critical("igrtd task failed unexpectedly: %s", fault, exc_info=group)
                sdnotify.stopping()
                try:
                    service.audit("fault", "system", what="igrtd task failed unexpectedly",
                                  reason=fault, action="couch stopped; igrtd exits and restarts")
                except Exception:  # e.g. audit disk full: the exit below must still happen
                    log.exception("could not audit the fault")
                with contextlib.suppress(Exception):
                    await service.shutdown_monitoring()
            if fault is not None:
                raise DaemonFault(fault)
    finally:
        with contextlib.suppress(Exception):
            await couch.close()
        if recorder is not None:
            await asyncio.to_thread(recorder.close)
        commit.close()
        store.close()
        audit.close()


IGRTD_SWITCH_INTERVAL_S = 0.0005


class _Shutdown(Exception):
    pass


class DaemonFault(RuntimeError):
    """A task of igrtd failed unexpectedly; the couch was stopped and it was audited."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


def follow_heartbeat_rate(room: Room, couch: CouchClient, c: CouchLinkConfig) -> None:
    """Heartbeat the couch every standby_heartbeat_interval_s in STANDBY (no
    session, nothing can move), every heartbeat_interval_s otherwise."""
    from daemon.workflow import STANDBY_STATES

    def apply(state: str) -> None:
        couch.set_heartbeat_interval(c.standby_heartbeat_interval_s if state in STANDBY_STATES
                                     else c.heartbeat_interval_s)

    room.transition_listeners.append(apply)
    apply(str(room.workflow.state))


async def _until(event: asyncio.Event) -> None:
    await event.wait()
    raise _Shutdown()


async def _feed_watchdog(period: float) -> None:
    from daemon import sdnotify

    # Fed from the main loop: if the loop stalls, systemd restarts the daemon.
    while True:
        sdnotify.watchdog()
        await asyncio.sleep(period)


def main(argv: list[str] | None = None) -> int:
    ap = _Args(prog="igrtd", description="igrt treatment-room positioning daemon")
    ap.add_argument("--config", type=Path, help="room configuration (JSON)")
    ap.add_argument("--check-config", type=Path, metavar="FILE",
                    help="validate a configuration file and report every problem")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    if args.check_config is not None:
        try:
            load_config(args.check_config)
        except ConfigError as exc:
            for p in exc.problems:
                print(f"{exc.path}: {p}", file=sys.stderr)
            return 2
        print(f"{args.check_config}: configuration is valid")
        return 0
    if args.config is None:
        ap.error("--config FILE is required")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"igrtd: {exc.path}: {p}", file=sys.stderr)
        return 2
    # igrtd's other threads (group commit, registration results, to_thread work) give
    # the interpreter back to the event loop within 0.5 ms instead of Python's 5 ms.
    sys.setswitchinterval(IGRTD_SWITCH_INTERVAL_S)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from daemon import diagnostics

    diagnostics.install()  # keeps recent log lines for `igrtctl diag --bundle`

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    from daemon.audit.errors import AuditError
    from daemon.store import StoreError

    try:
        # Sub-millisecond timers: the PLC poll keeps its 1-3 ms cadence (drivers/event_loop.py).
        with asyncio.Runner(loop_factory=precise_event_loop) as runner:
            runner.run(_run())
    except (OSError, AuditError, StoreError) as exc:  # e.g. an unreadable audit log at start
        print(f"igrtd: {exc}", file=sys.stderr)
        return 1
    except DaemonFault as exc:  # already logged with its traceback, stopped and audited
        print(f"igrtd: stopped the couch and exited after an internal fault: {exc}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
