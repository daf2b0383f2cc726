"""sevd's service: xenstore requests in, PSP and Xen commands out, every step journaled.

This is the shell around the launch core (sevd/launch): the main loop only waits for watch events
and hands each affected domain to `reconcile`, which reads what the toolstack asked (xenstore), what
sevd did (the journal in records.py) and whether the domain lives, asks `decide` what to do, and
performs the actions it returns.  Deciding is idempotent, so duplicate events, restarts and
reconnects all reduce to "reconcile every domain again"; after a restart, `recover` feeds each
journaled step in flight through the same `decide` with what GUEST_STATUS shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import faulthandler
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyxs

from sevd.abi.commands import FirmwareGuestState
from sevd.abi.policy import Policy
from sevd.abi.status import DfflushRequired, FirmwareError
from sevd.abi.units import MAX_VCPUS, PAGE_SIZE, Asid, DomId, Gpa, Handle, Spa
from sevd.backends import open_hypervisor, open_psp
from sevd.config import Config
from sevd.daemon.notify import listening, notify, setup_logging, watchdog_interval
from sevd.daemon.pspqueue import PspQueue
from sevd.daemon.records import GuestRecord, JournalError, RecordStore
from sevd.durable import LockHeld, hold_lock, private_dir
from sevd.errors import DeviceError, InputError, SevdError
from sevd.guest import GuestCommands
from sevd.launch import (
    DECIDE_AGAIN,
    NOT_ASKED,
    PUBLISHED_STEPS,
    XEN_STEPS,
    Action,
    Amend,
    Answer,
    BadCommand,
    Command,
    Discard,
    FirmwareStatus,
    Forget,
    GuestState,
    Issue,
    Launch,
    Layout,
    MarkFailed,
    NeedLayout,
    Publish,
    Published,
    PublishPlatform,
    Refuse,
    Request,
    Save,
    Start,
    Step,
    StepResult,
    TearDown,
    complete,
    decide,
    fail,
    resolve,
    teardown,
)
from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd.xen import protocol as proto
from sevd.xen.hypervisor import Hypervisor, HypervisorError
from sevd.xen.xsclient import Xenstore, XenstoreError, XenstoreLost

# The node the daemon writes itself: its watch events need no reconcile.
DAEMON_NODES = {"summary"}


# Fault injection for the crash tests: SEVD_FAULT="before:ACTIVATE" kills the daemon (SIGKILL, no
# cleanup) right before that command reaches the PSP; "after:…" right after it, before the journal
# records it.  Off unless the variable is set.
_FAULT = os.environ.get("SEVD_FAULT", "")


def fault_point(when: str, step: str) -> None:
    if _FAULT and f"{when}:{step}" == _FAULT:
        os.kill(os.getpid(), signal.SIGKILL)


class LaunchFailed(SevdError):
    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


class TeardownFailed(SevdError):
    """DEACTIVATE, DECOMMISSION or the GUEST_STATUS before them failed where the teardown must happen (the
    domain died, or was destroyed): published, and tried again with backoff."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


class PagesNotOwned(SevdError):
    """Right before a PSP command on guest memory, Xen no longer vouches that the pages are the domain's."""


@dataclasses.dataclass
class _Pass:
    """One reconcile pass over one guest: what it observed, updated as the actions are performed."""

    domid: DomId
    record: GuestRecord | None
    alive: bool = True
    command: Command | BadCommand | None = None
    command_text: str | None = None
    request: Request | None = None
    parsed: tuple[str, proto.LaunchRequest] | None = None  # the request as taken, for the next passes
    request_text: str | None = None  # the request node as read, when it was parsed in this pass
    layout: Layout | None = None


_LAUNCH_ERRORS = (FirmwareError, HypervisorError, LaunchFailed, DeviceError)


def _failure(err: Exception) -> tuple[str, str]:
    """The summary error's name and message for a failed step."""
    if isinstance(err, FirmwareError):
        return err.name, str(err)
    if isinstance(err, (HypervisorError, LaunchFailed)):
        return getattr(err, "name", "XEN_ERROR"), getattr(err, "message", str(err))
    assert isinstance(err, DeviceError)
    code = err.errno or 0
    return f"DEVICE_{errno.errorcode.get(code, code)}", str(err)


def _unprefixed(domid: DomId, message: str) -> str:
    """A message for the guest's own summary and log line, which name the domain already."""
    return message.removeprefix(f"domain {domid}: ")


def _clean(error: str) -> str:
    """The core's "NAME: message" as the summary may hold it (one line of printable ASCII)."""
    name, _, message = error.partition(": ")
    return proto.error_text(name, message)


class Daemon:
    def __init__(self, config: Config, *, client: PspClient | None = None, hypervisor: Hypervisor | None = None):
        self.config = config
        self.log = setup_logging(config.log_level)
        self.client = client or open_psp(config)
        self.guest = GuestCommands(self.client)
        self.platform = Platform(self.client)
        self.hv = hypervisor or open_hypervisor(config, self._domain_in_xenstore)
        self.records = RecordStore(Path(config.state_dir))
        self.queue = PspQueue()
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="guest")
        self.stopping = threading.Event()
        self.xs: Xenstore | None = None
        self._poke_lock = threading.Lock()
        self._active: set[DomId] = set()
        self._again: set[DomId] = set()
        self._asid_lock = threading.Lock()
        self._published: dict[str, str] = {}  # platform values last written, to write only changes
        self._platform_status: Any = None  # the last PLATFORM_STATUS: api and build for the summaries
        # Requests taken (the node's text and its parse), until the guest is gone: a pass that reads
        # the same text again knows the request without parsing it.
        self._requests: dict[DomId, tuple[str, proto.LaunchRequest]] = {}
        self._refused: dict[DomId, str] = {}  # the request text last refused, per guest: refused (and logged) once
        # Each guest's summary as published on this connection (or read after connecting), so a pass
        # neither re-reads it nor rewrites it unchanged.  Reset on reconnect: xenstored may have lost it.
        self._summaries: dict[DomId, proto.GuestSummary] = {}
        self._summaries_lock = threading.Lock()
        self._layout: dict[tuple[int, str], list[Any]] = {}  # image ranges and VMSA pages, during a launch
        # Guests whose journal fell behind a command (a write failed after it): settled first by the next pass.
        self._unsettled: set[DomId] = set()
        # Domains seen dead (@releaseDomain, or Xen refusing their pages): their launch stops at its next step.
        self._gone: set[DomId] = set()
        # Guests to try again later (a journal write or a teardown failed): the last backoff, the pending timer.
        self._retries: dict[DomId, float] = {}
        self._timers: dict[DomId, threading.Timer] = {}

    # -- plumbing ------------------------------------------------------------------------------------------

    def psp(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.queue.call(fn, *args)

    def _fields(self, rec: GuestRecord | None, status: str = "") -> dict[str, Any]:
        if rec is None:
            return {}
        fields: dict[str, Any] = {"SEV_DOMID": rec.domid, "SEV_HANDLE": rec.handle, "SEV_ASID": rec.asid}
        if status:
            fields["SEV_STATUS"] = status
        return fields

    # -- the summary node ----------------------------------------------------------------------------------

    def _remember(self, xs: Xenstore, domid: DomId, summary: proto.GuestSummary) -> None:
        with self._summaries_lock:
            if self.xs is xs:  # not if a reconnect came in between: the new connection reads it afresh
                self._summaries[domid] = summary

    def _current(self, domid: DomId, names: set[str]) -> proto.GuestSummary | None:
        """The guest's published summary: known, or read once (after a restart or reconnect)."""
        xs = self.xs
        assert xs is not None
        known = self._summaries.get(domid)
        if known is not None or "summary" not in names:
            return known
        text = xs.read(proto.guest_path(domid, "summary"))
        if text is None:
            return None
        try:
            summary = proto.GuestSummary.parse(text)
        except InputError as exc:  # not ours (or an older sevd's): rewritten at the next transition
            self.log.warning("domain %d: ignoring the summary in xenstore: %s", domid, exc)
            return None
        self._remember(xs, domid, summary)
        return summary

    def _publish(self, domid: DomId, summary: proto.GuestSummary) -> None:
        """Write the summary node: one write, skipped when it says what the node already says."""
        xs = self.xs
        assert xs is not None
        if self._summaries.get(domid) == summary:
            return
        xs.write(proto.guest_path(domid, "summary"), summary.format())
        self._remember(xs, domid, summary)

    def _amend(self, domid: DomId, rec: GuestRecord | None = None, **changes: Any) -> proto.GuestSummary:
        """The published summary (or, if none is known, `rec`'s) with `changes`."""
        base = self._summaries.get(domid)
        if base is None:
            base = self._summary_of(rec) if rec is not None else proto.GuestSummary()
        return dataclasses.replace(base, **changes)

    def _summary_of(self, rec: GuestRecord, step: str | None = None) -> proto.GuestSummary:
        """What the journal says of the launch; ack and a standing error are kept from the published summary."""
        previous = self._summaries.get(rec.domid)
        api = build = None
        if rec.measurement:  # what the owner needs to recompute it, with it
            st = self._platform_status or self.platform_status()
            api, build = f"{st.api_major}.{st.api_minor}", st.build
        if step is None:
            step = rec.step if rec.step in proto.STEPS else previous.step if previous else None
        error = rec.error if rec.state == "error" else previous.error if previous else None
        taken = self._requests.get(rec.domid)
        name = (previous.name if previous else None) or (taken[1].name if taken else None) or rec.name
        return proto.GuestSummary(
            state=proto.GuestState(rec.state),
            ack=max(rec.generation, previous.ack or 0) if previous else rec.generation,
            name=name,
            step=step,
            handle=rec.handle or None,
            asid=rec.asid or None,
            api=api,
            build=build,
            policy=Policy(rec.policy),
            measurement=rec.measurement,
            error=error,
        )

    def _answer(self, domid: DomId, command_text: str, summary: proto.GuestSummary | None = None) -> None:
        """Remove the command node if it still holds the command acted on (a newer one must survive) and
        publish the outcome, in one transaction: a reader sees the command gone and its result together.

        A secret packet goes with the command, whatever it was: one refused, or one whose inject-secret a
        later command overwrote before sevd read it (a packet is only ever written with its command)."""
        xs = self.xs
        assert xs is not None
        path = proto.guest_path(domid, "command")
        write = summary is not None and summary != self._summaries.get(domid)

        def body() -> None:
            if xs.read(path) == command_text:
                xs.rm(path)
                xs.rm(proto.guest_path(domid, "secret"))
            if write:
                assert summary is not None
                xs.write(proto.guest_path(domid, "summary"), summary.format())

        xs.transact(body)
        if write:
            assert summary is not None
            self._remember(xs, domid, summary)

    def _domain_in_xenstore(self, domid: DomId) -> bool:
        """On a real host a domain exists while xl's /local/domain/<domid> does (removed when it dies)."""
        assert self.xs is not None
        return self.xs.read(f"/local/domain/{domid}") is not None

    # -- the main loop -------------------------------------------------------------------------------------

    def run(self) -> int:
        faulthandler.register(signal.SIGUSR1)  # `kill -USR1` dumps every thread's stack to the log
        threading.excepthook = self._thread_died
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        backoff = 0.1
        first = True
        while not self.stopping.is_set():
            try:
                self._connect(recover=first)
                first = False
                backoff = 0.1
                self._serve()
            except (XenstoreLost, XenstoreError, OSError) as exc:
                if self.stopping.is_set():
                    break
                # DeviceError is an OSError too: start-up recovery needs the PSP as much as xenstore.
                what, action = ("PSP", "retrying") if isinstance(exc, DeviceError) else ("xenstore", "reconnecting")
                self.log.warning("%s: %s; %s in %.1f s", what, exc, action, backoff)
                notify(STATUS=f"{what} unavailable; {action} ({exc})")
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self._shutdown()
        return 0

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name.startswith("Thread") and isinstance(args.exc_value, OSError):
            # pyxs' router thread ends this way when xenstored goes away; the main loop reconnects.
            self.log.debug("xenstore connection thread ended: %s", args.exc_value)
            return
        self.log.error("thread %s died", args.thread.name if args.thread else "?", exc_info=args.exc_value)

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stopping.set()
        if self.xs is not None:
            self.xs.wake()

    def _connect(self, recover: bool) -> None:
        if self.xs is not None:
            self.xs.close()
        with self._summaries_lock:
            self.xs = Xenstore(self.config.xenstore_socket)
            self._summaries = {}
        self._published = {}
        self._make_root()
        if recover:
            self.psp(self.platform.ensure_initialised)  # Linux 6.12+ leaves it UNINIT (sevd/platform.py)
            self.recover()
            self.startup_flush()
        self.xs.watch([proto.GUESTS, proto.RELEASE_DOMAIN])
        self.publish_platform()
        for domid in self._known_domids():
            self.poke(domid)
        self._announce()
        notify(READY="1", STATUS=self._status_line())
        self.log.info("ready: xenstore %s, PSP %s", self.config.xenstore_socket, self.config.psp_backend)

    def _make_root(self) -> None:
        """/sevd and /sevd/guest, Dom0's alone."""
        assert self.xs is not None
        for path in (proto.ROOT, proto.GUESTS):
            if self.xs.read(path) is None:
                self.xs.write(path, "")
        self.xs.set_perms(proto.ROOT, proto.PERMS)

    def _announce(self) -> None:
        assert self.xs is not None
        self.xs.write_many(f"{proto.ROOT}/daemon", {"ready": "1", "pid": str(os.getpid())})

    def _restore_root(self) -> None:
        """Someone removed /sevd: make it again, Dom0's alone, and publish everything again (the platform, the
        daemon's nodes, each guest's summary from its journal)."""
        assert self.xs is not None
        self.log.warning("%s was removed: recreating it and publishing again", proto.ROOT)
        with self._summaries_lock:
            self._summaries = {}
        self._published = {}
        self._make_root()
        self.publish_platform()
        self._announce()
        for domid in self._known_domids():
            self.poke(domid)

    def _serve(self) -> None:
        assert self.xs is not None
        interval = watchdog_interval()
        while not self.stopping.is_set():
            path = self.xs.next_event(interval)  # blocks: idle means no wake-ups without a watchdog
            if interval:
                notify(WATCHDOG="1")
            if path:
                self._dispatch(path)

    def _dispatch(self, path: str) -> None:
        self.log.debug("watch event %s", path)
        if path in (proto.ROOT, proto.GUESTS) and self.xs is not None and self.xs.read(proto.GUESTS) is None:
            self._restore_root()
            return
        if path == proto.RELEASE_DOMAIN:
            for domid in self._known_domids():
                if not self.hv.domain_exists(domid):
                    self._gone.add(domid)  # a pass running on it stops before its next step
                    self.poke(domid)
            return
        parts = path[len(proto.GUESTS) + 1 :].split("/") if path.startswith(proto.GUESTS + "/") else []
        if not parts or not parts[0].isdigit():
            return
        if len(parts) == 2 and parts[1] in DAEMON_NODES:
            return
        self.poke(DomId(int(parts[0])))

    def _known_domids(self) -> set[DomId]:
        assert self.xs is not None
        listed = {DomId(int(d)) for d in self.xs.list(proto.GUESTS) if d.isdigit()}
        return listed | {r.domid for r in self.records.load_all()}

    def _shutdown(self) -> None:
        self.log.info("stopping")
        notify(STOPPING="1")
        with self._poke_lock:
            timers, self._timers = list(self._timers.values()), {}
        for timer in timers:
            timer.cancel()
        self.pool.shutdown(wait=True)
        if self.xs is not None:
            with contextlib.suppress(XenstoreLost, XenstoreError, pyxs.PyXSError, OSError):  # xenstored may be gone
                self.xs.rm(f"{proto.ROOT}/daemon")  # ready and pid: nothing says "ready" once stopped
            self.xs.close()

    # -- per-guest work ------------------------------------------------------------------------------------

    def poke(self, domid: DomId) -> None:
        """Reconcile `domid` soon; pokes that arrive while it runs coalesce into one more pass."""
        with self._poke_lock:
            if domid in self._active:
                self._again.add(domid)
                return
            self._active.add(domid)
        self.pool.submit(self._reconcile_loop, domid)

    def _reconcile_loop(self, domid: DomId) -> None:
        while True:
            try:
                self.reconcile(domid)
            except (XenstoreError, pyxs.PyXSError, OSError) as exc:
                # xenstored went away mid-pass; the main loop reconnects and reconciles every domain again.
                self.log.warning("domain %d: xenstore failed mid-reconcile (%s); retried after reconnect", domid, exc)
            except Exception:  # noqa: BLE001 - one guest's bug must not stop the others
                self.log.exception("domain %d: reconcile failed", domid, extra={"SEV_DOMID": domid})
            with self._poke_lock:
                if domid in self._again:
                    self._again.discard(domid)
                    continue
                self._active.discard(domid)
                return

    def reconcile(self, domid: DomId) -> None:
        """One pass: observe the guest, then perform what the launch core decides until it needs nothing more.

        A journal write that fails is published in the summary and the pass ends; when the record that
        failed was the one after a command, the journal still names that step in flight, and the next pass
        settles it from GUEST_STATUS first, as start-up recovery does (never issuing it again blind)."""
        assert self.xs is not None
        p = _Pass(domid, self.records.load(domid), alive=self.hv.domain_exists(domid))
        try:
            if domid in self._unsettled:
                self._settle(p)
            if p.alive:
                self._observe(p)
            self._decide_loop(p)
        except JournalError as exc:
            self._journal_failed(p, exc)
            return
        except TeardownFailed as exc:
            self._teardown_failed(p, exc)
            return
        finally:
            for kind in ("image", "vmsa", "flushed-image", "flushed-vmsa"):
                self._layout.pop((domid, kind), None)
        self._retries.pop(domid, None)

    def _decide_loop(self, p: _Pass) -> None:
        domid = p.domid
        while True:
            if self.stopping.is_set():
                self._stop_between_steps(p)
                return
            if domid in self._gone:
                p.alive = False  # the first sign the domain is dying ends its launch
            summary = self._summaries.get(domid)
            published = Published(summary.state, summary.ack) if summary is not None else None
            actions = decide(p.record, p.request, p.command, p.alive, published=published, layout=p.layout)
            for action in actions:
                self._perform(p, action)
            if not actions or not isinstance(actions[-1], DECIDE_AGAIN):
                return

    def _stop_between_steps(self, p: _Pass) -> None:
        """SIGTERM: the pass ends before its next step.  A launch step's record names the next step in flight;
        that step was not issued, so the record says so and the next start issues it rather than settling it."""
        rec = p.record
        if rec is not None and rec.pending in PUBLISHED_STEPS:
            self.records.save(dataclasses.replace(rec, pending=None))
        self.log.info("domain %d: stopping between two steps", p.domid)

    def _seen(self, rec: GuestRecord) -> FirmwareStatus:
        """GUEST_STATUS of the record's handle, as the recovery table reads it."""
        if not rec.handle:
            return NOT_ASKED
        status = self.psp(self.guest.guest_status, rec.handle)
        return FirmwareStatus(status.state, status.asid)

    def _settle(self, p: _Pass) -> None:
        """The journal fell behind a command: settle the step it names in flight with GUEST_STATUS, through
        the same `decide` as start-up recovery; then drop the journal error from the summary."""
        rec = p.record
        if rec is not None and rec.pending is not None:
            seen = self._seen(rec)
            resolution = resolve(rec.pending, seen, rec)
            self.log.info("domain %d: settling step %s (%s)", p.domid, rec.pending, resolution.value)
            for action in decide(rec, None, None, True, seen):
                self._perform(p, action)
        self._unsettled.discard(p.domid)
        shown = self._summaries.get(p.domid)
        if shown is not None and shown.error and shown.error.startswith("JOURNAL_"):
            self._publish(p.domid, self._amend(p.domid, p.record, error=p.record.error if p.record else None))

    def _journal_failed(self, p: _Pass, exc: JournalError) -> None:
        """Publish the journal failure in the summary and try the guest again later, with backoff."""
        domid = p.domid
        if exc.issued is not None:
            step, result = exc.issued
            self._unsettled.add(domid)
            if step == Step.LAUNCH_START and isinstance(result, int) and result:
                # A handle no journal knows: free it now rather than at the next start's orphan sweep.
                self._release_unjournaled(domid, Handle(result))
        delay = self._retry_later(domid)
        message = f"{exc}; sevd tries again in {delay:.1f} s"
        self.log.error("domain %d: %s: %s", domid, exc.name, message, extra=self._fields(p.record, exc.name))
        try:
            self._publish(domid, self._amend(domid, p.record, error=proto.error_text(exc.name, message)))
        except (XenstoreError, pyxs.PyXSError, OSError) as err:
            self.log.warning("domain %d: cannot publish the journal error: %s", domid, err)

    def _teardown_failed(self, p: _Pass, exc: TeardownFailed) -> None:
        """Publish why the guest's PSP context could not be released, and try again with backoff; the guest's
        nodes stay until it is released (`xl-sev destroy` prints the error)."""
        delay = self._retry_later(p.domid)
        message = f"teardown failed: {exc.message}; sevd tries again in {delay:.1f} s"
        self.log.error("domain %d: %s: %s", p.domid, exc.name, message, extra=self._fields(p.record, exc.name))
        try:
            self._publish(p.domid, self._amend(p.domid, p.record, error=proto.error_text(exc.name, message)))
        except (XenstoreError, pyxs.PyXSError, OSError) as err:
            self.log.warning("domain %d: cannot publish the teardown error: %s", p.domid, err)

    def _release_unjournaled(self, domid: DomId, handle: Handle) -> None:
        try:
            self.psp(self.guest.decommission, handle)
            self.log.warning("domain %d: decommissioned handle %d, which the journal could not record", domid, handle)
        except (FirmwareError, DeviceError) as err:
            self.log.error("domain %d: handle %d is known to no journal: %s", domid, handle, err)

    def _retry_later(self, domid: DomId) -> float:
        """Poke `domid` again after a backoff (0.5 s doubling to 30 s); the delay chosen."""
        with self._poke_lock:
            delay = self._retries.get(domid, 0.25) * 2
            delay = min(delay, 30.0)
            self._retries[domid] = delay
            timer = threading.Timer(delay, self._retry_fire, (domid,))
            timer.daemon = True
            old = self._timers.pop(domid, None)
            self._timers[domid] = timer
        if old is not None:
            old.cancel()
        timer.start()
        return delay

    def _retry_fire(self, domid: DomId) -> None:
        with self._poke_lock:
            self._timers.pop(domid, None)
        if not self.stopping.is_set():
            self.poke(domid)

    def _observe(self, p: _Pass) -> None:
        """The guest's nodes: one list says whether there is a request, a command, a summary."""
        assert self.xs is not None
        base = proto.guest_path(p.domid)
        names = set(self.xs.list(base))
        self._current(p.domid, names)
        if "command" in names:
            p.command_text = self.xs.read(f"{base}/command")
            if p.command_text is not None:
                try:
                    p.command = proto.parse_command(p.command_text)
                except InputError as exc:
                    p.command = BadCommand(str(exc))
        if "request" not in names:
            return
        text = self.xs.read(f"{base}/request")
        if text is None:
            return
        taken = self._requests.get(p.domid)
        if taken is not None and taken[0] == text:
            p.request = Request(taken[1].generation, seen=True)
            return
        generation = proto.request_generation(text)
        if self._refused.get(p.domid) == text:  # refused before: logged and published once
            p.request = Request(generation, problem="refused before", seen=True)
            return
        p.request_text = text
        try:
            req = proto.LaunchRequest.parse_text(p.domid, text)
        except InputError as exc:
            p.request = Request(generation, problem=str(exc))
            return
        p.parsed = (text, req)
        launch = Launch(
            p.domid,
            req.generation,
            int(req.policy),
            req.es,
            req.attest,
            req.image_gpa,
            req.image_size,
            req.image_more,
            req.name,
        )
        p.request = Request(req.generation, launch=launch)

    def _perform(self, p: _Pass, action: Action) -> None:
        domid = p.domid
        assert self.xs is not None
        match action:
            case Issue(step=step):
                self._issue(p, step)
            case NeedLayout():
                assert p.record is not None
                try:
                    p.layout = self._layout_of(p.record)
                except (HypervisorError, LaunchFailed) as err:
                    for then in fail(p.record, *_failure(err)):
                        self._perform(p, then)
            case Start(record=rec, name=name):
                assert p.parsed is not None
                self.records.save(rec)  # before the ack: a request acked is one the journal knows
                self._requests[domid] = p.parsed
                p.record = rec
                launching = proto.GuestSummary(
                    state=rec.state, ack=rec.generation, name=name, policy=Policy(rec.policy)
                )
                self._publish(domid, launching)
            case Save(record=rec):
                self.records.save(rec)
                p.record = rec
            case TearDown(best_effort=best_effort):
                try:
                    self._tear_down(p)
                except JournalError:
                    raise
                except (FirmwareError, SevdError) as exc:
                    if not best_effort:
                        name, message = _failure(exc) if isinstance(exc, _LAUNCH_ERRORS) else ("XEN_ERROR", str(exc))
                        raise TeardownFailed(name, message) from exc
                    self.log.error("domain %d: teardown failed: %s", domid, exc, extra=self._fields(p.record))
            case MarkFailed(name=name, message=message):
                assert p.record is not None
                message = _unprefixed(domid, message)
                self.log.error(
                    "domain %d: launch failed: %s: %s", domid, name, message, extra=self._fields(p.record, name)
                )
                error = proto.error_text(name, message)
                failed = dataclasses.replace(p.record, state=GuestState.ERROR, error=error, pending=None)
                self.records.save(failed)
                p.record = failed
            case Publish(step=step):
                assert p.record is not None
                self._publish(domid, self._summary_of(p.record, step=step))
            case Amend(error=error, ack=ack):
                changes: dict[str, Any] = {"error": _clean(error)}
                if ack is not None:
                    changes["ack"] = ack
                self._publish(domid, self._amend(domid, p.record, **changes))
            case Refuse(error=error, ack=ack):
                self.log.warning("domain %d: request refused: %s", domid, error, extra={"SEV_DOMID": domid})
                if p.request_text is not None:
                    self._refused[domid] = p.request_text
                self._publish(domid, proto.GuestSummary(state=GuestState.ERROR, ack=ack, error=_clean(error)))
            case Answer(error=error, state=state, publish=publish):
                assert p.command_text is not None
                changes = {"error": _clean(error)} if error is not None else {}
                if state is not None:
                    changes["state"] = state
                self._answer(domid, p.command_text, self._amend(domid, p.record, **changes) if publish else None)
                p.command = None
            case Discard():
                if p.record is not None:
                    p.record = dataclasses.replace(p.record, state=GuestState.DESTROYED, pending=None)
                    self.records.save(p.record)
                self._requests.pop(domid, None)
            case Forget():
                if p.record is not None:
                    if p.record.asid:  # an SEV domain: its PSP context is gone, so Xen may free its pages
                        self._release_pages(p)
                    self.records.delete(domid)
                    self.log.info("domain %d gone: decommissioned", domid, extra=self._fields(p.record))
                self.xs.rm(proto.guest_path(domid))
                self._requests.pop(domid, None)
                self._refused.pop(domid, None)
                self._summaries.pop(domid, None)
                self._gone.discard(domid)
            case PublishPlatform():
                self.publish_platform()

    # -- the steps -----------------------------------------------------------------------------------------

    def _issue(self, p: _Pass, step: Step) -> None:
        """Issue one step, journaled; a failure fails the launch as the core says."""
        if step == Step.LAUNCH_UPDATE_SECRET:
            self._inject_secret(p)
            return
        # LAUNCH_FINISH fails the launch only on a firmware status; a device error is retried by the next pass.
        errors = (FirmwareError,) if step == Step.LAUNCH_FINISH else _LAUNCH_ERRORS
        try:
            try:
                self._journal(p, step)
            except DfflushRequired:
                if step != Step.ACTIVATE:
                    raise
                self._flush_and_retry(p, step)
        except PagesNotOwned as err:
            self._pages_gone(p, err)
            return
        except errors as err:
            assert p.record is not None
            for action in fail(p.record, *_failure(err)):
                self._perform(p, action)
            return
        if step == Step.LAUNCH_MEASURE:
            self.log.info("domain %d measured", p.domid, extra=self._fields(p.record))
        elif step == Step.LAUNCH_FINISH:
            self.log.info("domain %d running", p.domid, extra=self._fields(p.record))

    def _pages_gone(self, p: _Pass, err: PagesNotOwned) -> None:
        """The command was not issued: a dying domain ends the launch (the core tears it down and forgets it);
        a live one whose pages moved fails it."""
        assert p.record is not None
        if p.domid in self._gone or not self.hv.domain_exists(p.domid):
            self.log.warning("%s: the domain is dying, the launch stops", err, extra=self._fields(p.record))
            self._gone.add(p.domid)
            p.alive = False
            return
        for action in fail(p.record, "XEN_ERROR", str(err)):
            self._perform(p, action)

    def _flush_and_retry(self, p: _Pass, step: Step) -> None:
        """ACTIVATE answered DFFLUSH_REQUIRED: the firmware holds the ASID dirty while Xen thought it free (the
        kernel's DF_FLUSH after INIT failed, a PV Dom0's WBINVD reaching one CPU).  WBINVD on every CPU through
        Xen, DF_FLUSH, then ACTIVATE once more; a second refusal fails the launch."""
        assert p.record is not None
        self.log.warning(
            "domain %d: %s answered DFFLUSH_REQUIRED for ASID %d: WBINVD on every CPU through Xen, DF_FLUSH, "
            "then %s once more",
            p.domid,
            step,
            p.record.asid,
            step,
            extra=self._fields(p.record, "DFFLUSH_REQUIRED"),
        )
        with self._asid_lock:
            self.flush_asids(self.hv.dirty_asids(), why=f"{step} of domain {p.domid}", faults=False)
        self._journal(p, step)
        self.log.info("domain %d: %s succeeded after the flush", p.domid, step, extra=self._fields(p.record))

    def _flush_once(self, rec: GuestRecord, kind: str, ranges: list[tuple[Spa, int]]) -> None:
        """Flush the CPUs' caches over the guest's `ranges` before the PSP encrypts them in place (on a CPU
        without SME_COHERENT a line the toolstack wrote may not have reached DRAM, or may be written back over
        the ciphertext later); once per pass and kind, so each later step of the pass finds them flushed."""
        key = (rec.domid, f"flushed-{kind}")
        if key in self._layout or not ranges:
            return
        self.hv.flush_guest_pages(rec.domid, ranges)
        self._layout[key] = ranges

    def _owned(self, rec: GuestRecord, ranges: list[tuple[Spa, int]]) -> None:
        """The check right before a PSP command on guest memory (in its turn on the PSP queue): the addresses
        were learnt earlier, and the frames of a domain that died may already be another's."""
        if rec.domid in self._gone or not self.hv.pages_owned(rec.domid, rec.asid, ranges):
            raise PagesNotOwned(f"domain {rec.domid}: Xen no longer vouches for its pages; nothing issued")

    def _command(self, rec: GuestRecord, step: Step) -> Callable[[], StepResult]:
        """What issuing `step` calls, with its arguments from the record (asked before the step is journaled)."""
        g = self.guest
        if step == Step.MAKE_SEV:
            return lambda: self.make_sev_domain(rec.domid, rec.es).asid
        if step == Step.LAUNCH_START:
            godh, session = self._owner_session(rec.domid)
            if godh:
                return lambda: g.launch_start(Policy(rec.policy), godh_cert=godh, session=session)
            return lambda: g.launch_start(Policy(rec.policy))
        if step == Step.ACTIVATE:
            return lambda: g.activate(rec.handle, rec.asid)
        if step == Step.SEV_ENABLE:
            return lambda: self.hv.enable_sev(rec.domid)
        if step == Step.LAUNCH_UPDATE_DATA:
            ranges = self._ranges(rec)[rec.ranges_done :]
            spa, length = ranges[0]

            def update_data() -> None:
                self._owned(rec, [(spa, length)])
                self._flush_once(rec, "image", ranges)
                g.launch_update_data(rec.handle, spa, length)

            return update_data
        if step == Step.LAUNCH_UPDATE_VMSA:
            pages = self._vmsa_pages(rec)[rec.vmsas_done :]

            def update_vmsa() -> None:
                self._owned(rec, [(pages[0], PAGE_SIZE)])
                self._flush_once(rec, "vmsa", [(page, PAGE_SIZE) for page in pages])
                g.launch_update_vmsa(rec.handle, pages[0])

            return update_vmsa
        if step == Step.LAUNCH_MEASURE:
            return lambda: g.launch_measure(rec.handle)
        if step == Step.LAUNCH_FINISH:
            return lambda: g.launch_finish(rec.handle)
        if step == Step.DEACTIVATE:
            return lambda: g.deactivate(rec.handle)
        if step == Step.DECOMMISSION:
            return lambda: g.decommission(rec.handle)
        raise ValueError(f"{step} is not issued on its own")

    def _journal(self, p: _Pass, step: Step, command: Callable[[], StepResult] | None = None) -> StepResult:
        """Persist `pending` before the command and `complete(record, step, result)` after it: a crash
        between is settled by RECOVERY.

        A PSP command and its "after" record form one item on the PSP queue, so no other command
        runs between them: a handle the firmware frees (DECOMMISSION) or hands out (LAUNCH_START)
        is on disk before any other guest's command could reuse it.  A launch step's "after" record
        names the next step in flight, so it is that step's "before" record too (one data sync, not
        two, and the very record a crash between the two would have left).
        """
        rec = p.record
        assert rec is not None
        if command is None:
            command = self._command(rec, step)
        layout = self._layout_of(rec) if step in (Step.LAUNCH_UPDATE_DATA, Step.LAUNCH_UPDATE_VMSA) else None
        if rec.pending != step:  # else the record on disk names it already (pending is saved whenever set)
            p.record = dataclasses.replace(rec, pending=step)
            self.records.save(p.record)
        fault_point("before", step)

        def run() -> StepResult:
            result = command()
            fault_point("after", step)
            assert p.record is not None
            # The result is in the "after" record: nothing learnt may live only in memory.
            done = complete(p.record, step, result, layout)
            try:
                self.records.save(done)
            except JournalError as exc:
                exc.issued = (step, result)  # the journal still names the step in flight: settle it, never redo it
                raise
            p.record = done
            return result

        return run() if step in XEN_STEPS else self.psp(run)

    def _tear_down(self, p: _Pass) -> None:
        """DEACTIVATE (if bound) and DECOMMISSION the guest's PSP context, as GUEST_STATUS shows it; idempotent."""
        if p.record is None or not p.record.handle:
            return
        if p.alive and p.record.asid:
            self._release_flush(p)
        status = self.psp(self.guest.guest_status, p.record.handle)
        for action in teardown(p.record, FirmwareStatus(status.state, status.asid)):
            if isinstance(action, Issue):
                self._journal(p, action.step)
            else:
                self._perform(p, action)

    def _release_pages(self, p: _Pass) -> None:
        """RELEASE after DECOMMISSION: the dead domain's pages were pinned so the PSP never wrote a page with a
        new owner; now Xen may free them.  A refusal is logged: the pages stay pinned (no harm, only memory)."""
        try:
            self.hv.release_pages(p.domid)
        except HypervisorError as exc:
            self.log.warning("domain %d: Xen refused to release its pages: %s", p.domid, exc)

    def _release_flush(self, p: _Pass) -> None:
        """The guest's memory is released while the domain lives (a failed launch, a destroy command): flush the
        CPUs' caches over all of it first, so no line of its key is written back over a page with a new owner.
        A domain already dead had Xen's own WBINVD on every CPU before its memory was freed."""
        try:
            self.hv.flush_guest_pages(p.domid, None)
        except HypervisorError as exc:
            self.log.warning("domain %d: cache flush before release refused: %s", p.domid, exc)

    def _layout_of(self, rec: GuestRecord) -> Layout:
        return Layout(len(self._ranges(rec)), len(self._vmsa_pages(rec)) if rec.es else 0)

    @staticmethod
    def _invalid(problem: object) -> str:
        return proto.error_text("INVALID_REQUEST", str(problem))

    def _ranges(self, rec: GuestRecord) -> list[tuple[Spa, int]]:
        """The image's system-physical ranges, piece after piece (the order the owner measures in), asked
        of Xen once per launch pass (the paused domain's memory does not move meanwhile; GET_RANGES pins
        every frame it reports until the domain dies, so it is not asked per step)."""
        key = (rec.domid, "image")
        if key not in self._layout:
            ranges = []
            for gpa, size in [(rec.image_gpa, rec.image_size), *rec.image_more]:
                ranges += self.hv.guest_ranges(rec.domid, Gpa(gpa), size)
            self._layout[key] = ranges
        return self._layout[key]

    def _vmsa_pages(self, rec: GuestRecord) -> list[Spa]:
        key = (rec.domid, "vmsa")
        if key not in self._layout:
            pages = self.hv.vmsa_pages(rec.domid)
            if len(pages) > MAX_VCPUS:
                raise LaunchFailed("XEN_ERROR", f"{len(pages)} VMSA pages: a guest has at most {MAX_VCPUS} vCPUs")
            self._layout[key] = pages
        return self._layout[key]

    def _owner_session(self, domid: DomId) -> tuple[bytes | None, bytes | None]:
        """The owner's session, as parsed when the request was taken (re-read after a restart)."""
        taken = self._requests.get(domid)
        if taken is not None:
            req = taken[1]
        else:
            assert self.xs is not None
            text = self.xs.read(proto.guest_path(domid, "request"))
            if text is None:
                raise LaunchFailed("INVALID_REQUEST", "the request node is gone")
            try:
                req = proto.LaunchRequest.parse_text(domid, text)
            except InputError as exc:
                raise LaunchFailed("INVALID_REQUEST", str(exc)) from None
        return req.godh, req.session

    def make_sev_domain(self, domid: DomId, es: bool):
        """Xen's fixed ASID for the domain; when none is free, flush dirty ones first (batched, as KVM does)."""
        with self._asid_lock:
            try:
                return self.hv.make_sev_domain(domid, es)
            except HypervisorError:
                dirty = self.hv.dirty_asids()
                if not dirty:
                    raise
                self.flush_asids(dirty)
                return self.hv.make_sev_domain(domid, es)

    def flush_asids(self, dirty: list[Asid], why: str = "no clean ASID left", faults: bool = True) -> None:
        """WBINVD on every CPU through Xen, DF_FLUSH, then tell Xen that `dirty` (its list, read before the
        DF_FLUSH) is clean: afterwards Xen and the firmware agree on which ASIDs are dirty.  Hold _asid_lock."""
        self.hv.wbinvd_all_cpus()
        if faults:
            fault_point("before", "DF_FLUSH")
        self.psp(self.guest.df_flush)
        if faults:
            fault_point("after", "DF_FLUSH")
        self.hv.asids_flushed(dirty)
        self.log.info("WBINVD + DF_FLUSH: ASIDs %s clean (%s)", dirty, why)

    def startup_flush(self) -> None:
        """At start-up: WBINVD on every CPU through Xen, then DF_FLUSH.  INIT left every ASID dirty and the
        kernel's own DF_FLUSH after it fails in a PV Dom0 (its WBINVD reaches one physical CPU), while Xen
        thinks every ASID it has not seen die is free.  A failure is logged: ACTIVATE flushes when it must."""
        try:
            with self._asid_lock:
                self.flush_asids(self.hv.dirty_asids(), why="start-up", faults=False)
        except (FirmwareError, HypervisorError, DeviceError) as exc:
            self.log.warning("start-up WBINVD + DF_FLUSH failed: %s; ACTIVATE will flush and retry if it must", exc)

    def _inject_secret(self, p: _Pass) -> None:
        """LAUNCH_UPDATE_SECRET with the packet in secret/*, which is removed whatever the outcome; the
        outcome is published as the command is answered."""
        assert self.xs is not None and p.record is not None and p.command_text is not None
        rec = p.record
        base = proto.guest_path(rec.domid)
        error = None
        try:
            xs = self.xs
            packet = proto.SecretPacket.parse(xs.transact(lambda: xs.read_dir(f"{base}/secret")))
            ranges = self.hv.guest_ranges(rec.domid, packet.gpa, len(packet.data))
            if len(ranges) != 1:
                raise InputError("secret/gpa: the secret must not cross a physically discontiguous page boundary")
            spa = ranges[0][0]

            def inject() -> None:
                self._owned(rec, ranges)
                # The PSP writes the secret in place: no stale line of the page may be written back over it.
                self.hv.flush_guest_pages(rec.domid, ranges)
                self.guest.launch_update_secret(rec.handle, packet.header, spa, packet.data)

            self._journal(p, Step.LAUNCH_UPDATE_SECRET, inject)
            self.log.info("domain %d: secret injected (%d bytes)", rec.domid, len(packet.data), extra=self._fields(rec))
        except InputError as exc:
            error = self._invalid(exc)
        except (FirmwareError, HypervisorError, PagesNotOwned) as err:
            name = err.name if isinstance(err, FirmwareError) else "XEN_ERROR"
            p.record = dataclasses.replace(p.record, pending=None)
            self.records.save(p.record)
            message = _unprefixed(rec.domid, str(err))
            error = proto.error_text(name, message)
            self.log.warning("domain %d: %s", rec.domid, message, extra=self._fields(rec, name))
        finally:
            self.xs.rm(f"{base}/secret")  # secrets are transient: never left behind
        step = p.record.step if p.record.step in PUBLISHED_STEPS else None
        self._answer(rec.domid, p.command_text, self._amend(rec.domid, p.record, step=step, error=error))
        p.command = None

    # -- recovery ------------------------------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: settle every journaled step in flight with GUEST_STATUS (the launch core's
        RECOVERY table), then sweep orphans."""
        for rec in self.records.load_all():
            if rec.pending is None:
                continue
            seen = self._seen(rec)
            resolution = resolve(rec.pending, seen, rec)
            self.log.info("domain %d: recovering step %s (%s)", rec.domid, rec.pending, resolution.value)
            p = _Pass(rec.domid, rec)
            for action in decide(rec, None, None, True, seen):
                self._perform(p, action)
        self._sweep_orphans()

    def _sweep_orphans(self) -> None:
        """Decommission PSP contexts no journal knows (e.g. a LAUNCH_START whose handle was never saved)."""
        known = {r.handle for r in self.records.load_all() if r.handle}
        live = self.psp(self.platform.status).guests
        found = 0
        for handle in range(1, 1025):
            if found >= live:
                break
            status = self.psp(self.guest.guest_status, handle)
            if status.state == FirmwareGuestState.INVALID:
                continue
            found += 1
            if handle in known:
                continue
            self.log.warning("orphan PSP context handle %d (ASID %d): decommissioning", handle, status.asid)
            if status.asid:
                self.psp(self.guest.deactivate, handle)
            self.psp(self.guest.decommission, handle)

    # -- platform ------------------------------------------------------------------------------------------

    def platform_status(self):
        return self.psp(self.platform.status)

    def _status_line(self) -> str:
        records = self.records.load_all()
        running = sum(r.state == GuestState.RUNNING for r in records)
        launching = sum(r.state in (GuestState.QUEUED, GuestState.LAUNCHING, GuestState.MEASURED) for r in records)
        return f"{running} running, {launching} launching"

    def publish_platform(self) -> None:
        st = self._platform_status = self.platform_status()
        if self.xs is None:
            return
        values = {
            "api": f"{st.api_major}.{st.api_minor}",
            "build": str(st.build),
            "state": st.state.name,
            "owner": "1" if st.owner else "0",
            "es": "1" if st.es else "0",
            "guests": str(st.guests),
        }
        changed = {k: v for k, v in values.items() if self._published.get(k) != v}
        if len(changed) == 1:
            ((key, value),) = changed.items()
            self.xs.write(f"{proto.PLATFORM}/{key}", value)
        elif changed:
            self.xs.write_many(proto.PLATFORM, changed)
        self._published.update(changed)
        if listening():  # the status line reads every journal: only worth it when systemd listens
            notify(STATUS=self._status_line())


class AlreadyRunning(SevdError):
    """Another sevd holds the state directory's lock: two daemons would destroy each other's launches."""


EXIT_ALREADY_RUNNING = 3


def instance_lock(state_dir: Path) -> int:
    """One sevd per state directory (so per host): the lock file `state_dir/sevd.lock`, held until exit."""
    private_dir(state_dir)
    try:
        return hold_lock(state_dir / "sevd.lock")
    except LockHeld as held:
        who = f" (pid {held.pid})" if held.pid else ""
        raise AlreadyRunning(f"another sevd{who} is running with state directory {state_dir}") from None


def run(config_path: str | None) -> int:
    config = Config.load(config_path)
    logging.getLogger("sevd").debug("config %s", config.source)
    lock = instance_lock(Path(config.state_dir))
    try:
        return Daemon(config).run()
    finally:
        os.close(lock)
