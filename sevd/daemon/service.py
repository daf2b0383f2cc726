"""sevd's service: xenstore requests in, PSP and Xen commands out, every step journaled.

The main loop only waits for watch events and hands each affected domain to `reconcile`, which
compares what the toolstack asked (xenstore), what sevd did (the journal in records.py) and what is
true (GUEST_STATUS, Xen), and takes the next step.  Reconcile is idempotent, so duplicate events,
restarts and reconnects all reduce to "reconcile every domain again".
"""

from __future__ import annotations

import base64
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

from sevd.abi.commands import GuestState as FwGuestState
from sevd.abi.policy import Policy
from sevd.abi.status import FirmwareError
from sevd.backends import open_hypervisor, open_psp
from sevd.config import Config
from sevd.daemon.notify import listening, notify, setup_logging, watchdog_interval
from sevd.daemon.pspqueue import PspQueue
from sevd.daemon.records import GuestRecord, RecordStore
from sevd.errors import DeviceError, InputError, SevdError
from sevd.guest import GuestCommands
from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd.xen import protocol as proto
from sevd.xen.hypervisor import Hypervisor, HypervisorError
from sevd.xen.xsclient import Xenstore, XenstoreError, XenstoreLost

LAUNCH_STEPS = proto.LAUNCH_STEPS
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
        self._active: set[int] = set()
        self._again: set[int] = set()
        self._asid_lock = threading.Lock()
        self._published: dict[str, str] = {}  # platform values last written, to write only changes
        self._platform_status: Any = None  # the last PLATFORM_STATUS: api and build for the summaries
        # Requests taken (the node's text and its parse), until the guest is gone: a pass that reads
        # the same text again knows the request without parsing it.
        self._requests: dict[int, tuple[str, proto.LaunchRequest]] = {}
        # Each guest's summary as published on this connection (or read after connecting), so a pass
        # neither re-reads it nor rewrites it unchanged.  Reset on reconnect: xenstored may have lost it.
        self._summaries: dict[int, proto.GuestSummary] = {}
        self._summaries_lock = threading.Lock()
        self._layout: dict[tuple[int, str], list[Any]] = {}  # image ranges and VMSA pages, during a launch

    # -- plumbing ------------------------------------------------------------------------------------------

    def psp(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.queue.call(fn, *args)

    def _fields(self, rec: GuestRecord, status: str = "") -> dict[str, Any]:
        fields = {"SEV_DOMID": rec.domid, "SEV_HANDLE": rec.handle, "SEV_ASID": rec.asid}
        if status:
            fields["SEV_STATUS"] = status
        return fields

    # -- the summary node ----------------------------------------------------------------------------------

    def _remember(self, xs: Xenstore, domid: int, summary: proto.GuestSummary) -> None:
        with self._summaries_lock:
            if self.xs is xs:  # not if a reconnect came in between: the new connection reads it afresh
                self._summaries[domid] = summary

    def _current(self, domid: int, names: set[str]) -> proto.GuestSummary | None:
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

    def _publish(self, domid: int, summary: proto.GuestSummary) -> None:
        """Write the summary node: one write, skipped when it says what the node already says."""
        xs = self.xs
        assert xs is not None
        if self._summaries.get(domid) == summary:
            return
        xs.write(proto.guest_path(domid, "summary"), summary.format())
        self._remember(xs, domid, summary)

    def _amend(self, domid: int, rec: GuestRecord | None = None, **changes: Any) -> proto.GuestSummary:
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
        name = (previous.name if previous else None) or (taken[1].name if taken else None)
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

    def _answer(self, domid: int, command_text: str, summary: proto.GuestSummary | None = None) -> None:
        """Remove the command node if it still holds the command acted on (a newer one must survive) and
        publish the outcome, in one transaction: a reader sees the command gone and its result together."""
        xs = self.xs
        assert xs is not None
        path = proto.guest_path(domid, "command")
        write = summary is not None and summary != self._summaries.get(domid)

        def body() -> None:
            if xs.read(path) == command_text:
                xs.rm(path)
            if write:
                assert summary is not None
                xs.write(proto.guest_path(domid, "summary"), summary.format())

        xs.transact(body)
        if write:
            assert summary is not None
            self._remember(xs, domid, summary)

    def _domain_in_xenstore(self, domid: int) -> bool:
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
        for path in (proto.ROOT, proto.GUESTS):
            if self.xs.read(path) is None:
                self.xs.write(path, "")
        self.xs.set_perms(proto.ROOT, proto.PERMS)
        if recover:
            self.psp(self.platform.ensure_initialised)  # Linux 6.12+ leaves it UNINIT (sevd/platform.py)
            self.recover()
        self.xs.watch([proto.GUESTS, proto.RELEASE_DOMAIN])
        self.publish_platform()
        for domid in self._known_domids():
            self.poke(domid)
        self.xs.write_many(f"{proto.ROOT}/daemon", {"ready": "1", "pid": str(os.getpid())})
        notify(READY="1", STATUS=self._status_line())
        self.log.info("ready: xenstore %s, PSP %s", self.config.xenstore_socket, self.config.psp_backend)

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
        if path == proto.RELEASE_DOMAIN:
            for domid in self._known_domids():
                if not self.hv.domain_exists(domid):
                    self.poke(domid)
            return
        parts = path[len(proto.GUESTS) + 1 :].split("/") if path.startswith(proto.GUESTS + "/") else []
        if not parts or not parts[0].isdigit():
            return
        if len(parts) == 2 and parts[1] in DAEMON_NODES:
            return
        self.poke(int(parts[0]))

    def _known_domids(self) -> set[int]:
        assert self.xs is not None
        listed = {int(d) for d in self.xs.list(proto.GUESTS) if d.isdigit()}
        return listed | {r.domid for r in self.records.load_all()}

    def _shutdown(self) -> None:
        self.log.info("stopping")
        notify(STOPPING="1")
        self.pool.shutdown(wait=True)
        if self.xs is not None:
            self.xs.close()

    # -- per-guest work ------------------------------------------------------------------------------------

    def poke(self, domid: int) -> None:
        """Reconcile `domid` soon; pokes that arrive while it runs coalesce into one more pass."""
        with self._poke_lock:
            if domid in self._active:
                self._again.add(domid)
                return
            self._active.add(domid)
        self.pool.submit(self._reconcile_loop, domid)

    def _reconcile_loop(self, domid: int) -> None:
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

    def reconcile(self, domid: int) -> None:
        assert self.xs is not None
        rec = self.records.load(domid)
        base = proto.guest_path(domid)
        if not self.hv.domain_exists(domid):
            if rec is not None:
                self.teardown(rec)
                self.records.delete(domid)
                self.log.info("domain %d gone: decommissioned", domid, extra=self._fields(rec))
                self.publish_platform()
            self.xs.rm(base)
            self._requests.pop(domid, None)
            self._summaries.pop(domid, None)
            return
        names = set(self.xs.list(base))  # one read says whether there is a request, a command, a summary
        self._current(domid, names)
        command_text = self.xs.read(f"{base}/command") if "command" in names else None
        command = None
        if command_text is not None:
            try:
                command = proto.parse_command(command_text)
            except InputError as exc:
                self._answer(domid, command_text, self._amend(domid, rec, error=self._invalid(exc)))
                return
        if command == proto.Command.DESTROY:
            assert command_text is not None
            if rec is not None:
                self.teardown(rec)
                self.records.delete(domid)
                self.publish_platform()
            self._requests.pop(domid, None)
            self._answer(domid, command_text, self._amend(domid, rec, state=proto.GuestState.DESTROYED))
            return
        rec = self._take_request(domid, rec, names)
        if rec is None:
            return
        if rec.state in ("queued", "launching"):
            self.launch(rec)
        else:
            published = self._summaries.get(domid)
            if published is None or published.state != proto.GuestState(rec.state):
                # The journal is ahead of xenstore (a crash or a lost connection between the two): publish it.
                self._publish(domid, self._summary_of(rec))
        if rec.state == "measured" and not rec.attest:
            self.finish(rec)  # the pass that measured it did not get that far
        if command is None:
            return
        assert command_text is not None
        if rec.state == "measured" and command == proto.Command.INJECT_SECRET:
            self.inject_secret(rec, command_text)
        elif rec.state == "measured" and command == proto.Command.FINISH:
            self._answer(domid, command_text)  # taken before the work: xl-sev then waits for `running`
            self.finish(rec)
        else:
            msg = f"{command.value} needs state measured, the guest is {rec.state}"
            self._answer(domid, command_text, self._amend(domid, rec, error=self._invalid(msg)))

    @staticmethod
    def _invalid(problem: object) -> str:
        return proto.error_text("INVALID_REQUEST", str(problem))

    def _take_request(self, domid: int, rec: GuestRecord | None, names: set[str]) -> GuestRecord | None:
        """Accept a new request generation (validated) or return the current record."""
        assert self.xs is not None
        if "request" not in names:
            return rec
        text = self.xs.read(proto.guest_path(domid, "request"))
        if text is None:
            return rec
        taken = self._requests.get(domid)
        if rec is not None and taken is not None and taken[0] == text:
            return rec
        generation = proto.request_generation(text)
        if rec is not None and generation == rec.generation:
            return rec
        published = self._summaries.get(domid)
        if generation is not None and published is not None and published.ack == generation:
            return rec  # taken before (refused, or launched and destroyed): never again
        if rec is not None:
            msg = f"domain {domid} already has a launch (generation {rec.generation}); destroy it first"
            changes: dict[str, Any] = {"error": self._invalid(msg)}
            if generation is not None:
                changes["ack"] = generation
            self._publish(domid, self._amend(domid, rec, **changes))
            return rec
        try:
            req = proto.LaunchRequest.parse_text(domid, text)
        except InputError as exc:
            self.log.warning("domain %d: request refused: %s", domid, exc, extra={"SEV_DOMID": domid})
            refused = proto.GuestSummary(state=proto.GuestState.ERROR, ack=generation, error=self._invalid(exc))
            self._publish(domid, refused)
            return None
        self._requests[domid] = (text, req)
        rec = GuestRecord(
            domid=domid,
            generation=req.generation,
            policy=int(req.policy),
            es=req.es,
            attest=req.attest,
            image_gpa=req.image_gpa,
            image_size=req.image_size,
            image_more=[list(piece) for piece in req.image_more],
            state="launching",
            pending=LAUNCH_STEPS[0],  # the launch starts with it at once: this record is its "before" too
        )
        self.records.save(rec)  # before the ack: a request acked is one the journal knows
        launching = proto.GuestSummary(
            state=proto.GuestState.LAUNCHING, ack=req.generation, name=req.name, policy=req.policy
        )
        self._publish(domid, launching)
        return rec

    # -- the launch ----------------------------------------------------------------------------------------

    def _journal(
        self,
        rec: GuestRecord,
        step: str,
        action: Callable[[], Any],
        apply: Callable[[Any], None] | None = None,
        *,
        psp: bool = True,
        then: Callable[[GuestRecord], str | None] | None = None,
    ):
        """Persist `pending` before the command and the result after it: a crash between is recoverable.

        A PSP command and its "after" record form one item on the PSP queue, so no other command
        runs between them: a handle the firmware frees (DECOMMISSION) or hands out (LAUNCH_START)
        is on disk before any other guest's command could reuse it.

        `then` names the step that comes right after this one: the "after" record names it in flight,
        so it is that step's "before" record too (one data sync, not two, and the very record a crash
        between the two would have left).
        """
        if rec.pending != step:  # else the record on disk names it already (pending is saved whenever set)
            rec.pending = step
            self.records.save(rec)
        fault_point("before", step)

        def run() -> Any:
            result = action()
            fault_point("after", step)
            if apply is not None:
                apply(result)
            rec.step = step
            rec.pending = then(rec) if then is not None else None
            self.records.save(rec)
            return result

        return self.psp(run) if psp else run()

    def _next_launch_step(self, rec: GuestRecord) -> str | None:
        if rec.step == "NEW":
            return LAUNCH_STEPS[0]
        if rec.step not in LAUNCH_STEPS:
            return None
        index = LAUNCH_STEPS.index(rec.step)
        if rec.step == "UPDATE_DATA" and rec.ranges_done < len(self._ranges(rec)):
            return "UPDATE_DATA"
        if rec.step in ("UPDATE_DATA", "UPDATE_VMSA") and rec.es and rec.vmsas_done < len(self._vmsa_pages(rec)):
            return "UPDATE_VMSA"  # SEV-ES: each vCPU's VMSA, after the image, as the owner measures them
        if rec.step == "UPDATE_DATA":
            index += 1  # no VMSA step for plain SEV
        return LAUNCH_STEPS[index + 1] if index + 1 < len(LAUNCH_STEPS) else None

    def _following(self, rec: GuestRecord) -> str | None:
        """The step right after the one just done: the next launch step, or FINISH when nobody attests."""
        step = self._next_launch_step(rec)
        if step is None and rec.state == "measured" and not rec.attest:
            return "FINISH"
        return step

    def _ranges(self, rec: GuestRecord) -> list[tuple[int, int]]:
        """The image's system-physical ranges, piece after piece (the order the owner measures in), asked
        of Xen once per launch pass (the paused domain's memory does not move meanwhile; GET_RANGES pins
        every frame it reports until the domain dies, so it is not asked per step)."""
        key = (rec.domid, "image")
        if key not in self._layout:
            ranges = []
            for gpa, size in [(rec.image_gpa, rec.image_size), *rec.image_more]:
                ranges += self.hv.guest_ranges(rec.domid, gpa, size)
            self._layout[key] = ranges
        return self._layout[key]

    def _vmsa_pages(self, rec: GuestRecord) -> list[int]:
        key = (rec.domid, "vmsa")
        if key not in self._layout:
            self._layout[key] = self.hv.vmsa_pages(rec.domid)
        return self._layout[key]

    def launch(self, rec: GuestRecord) -> None:
        domid = rec.domid
        if rec.state != "launching":
            rec.state = "launching"
            self._publish(domid, self._summary_of(rec))
        try:
            # The summary is published per state, not per step: a launch is three writes, not ten.
            while (step := self._next_launch_step(rec)) is not None:
                self._launch_step(rec, step)
        except FirmwareError as err:
            self.fail(rec, err.name, str(err))
            return
        except (HypervisorError, LaunchFailed) as err:
            self.fail(rec, getattr(err, "name", "XEN_ERROR"), getattr(err, "message", str(err)))
            return
        except DeviceError as err:
            self.fail(rec, f"DEVICE_{errno.errorcode.get(err.errno, err.errno)}", str(err))
            return
        finally:
            self._layout.pop((domid, "image"), None)
            self._layout.pop((domid, "vmsa"), None)
        if rec.state != "measured":  # a journal written before MEASURE's record carried the state
            rec.state = "measured"
            self.records.save(rec)
        self.log.info("domain %d measured", domid, extra=self._fields(rec))
        if rec.attest:
            self._publish(domid, self._summary_of(rec))  # the owner checks it, then sends its secret
        else:
            self.finish(rec)  # published once, as running, with the measurement

    def _launch_step(self, rec: GuestRecord, step: str) -> None:
        g = self.guest
        if step == "SEV_DOMAIN":
            # The result is applied before the journal's "after" record: nothing learnt may live only in memory.
            self._journal(
                rec,
                step,
                lambda: self.make_sev_domain(rec.domid, rec.es),
                lambda sev: setattr(rec, "asid", sev.asid),
                psp=False,
                then=self._following,
            )
        elif step == "LAUNCH_START":
            godh, session = self._owner_session(rec.domid)
            kwargs = {"godh_cert": godh, "session": session} if godh else {}
            self._journal(
                rec,
                step,
                lambda: g.launch_start(Policy(rec.policy), **kwargs),
                lambda handle: setattr(rec, "handle", handle),
                then=self._following,
            )
        elif step == "ACTIVATE":
            self._journal(rec, step, lambda: g.activate(rec.handle, rec.asid), then=self._following)
        elif step == "SEV_ENABLED":
            self._journal(rec, step, lambda: self.hv.enable_sev(rec.domid), psp=False, then=self._following)
        elif step == "UPDATE_DATA":
            ranges = self._ranges(rec)
            spa, length = ranges[rec.ranges_done]
            self._journal(
                rec,
                step,
                lambda: g.launch_update_data(rec.handle, spa, length),
                lambda _: setattr(rec, "ranges_done", rec.ranges_done + 1),
                then=self._following,
            )
        elif step == "UPDATE_VMSA":
            spa = self._vmsa_pages(rec)[rec.vmsas_done]
            self._journal(
                rec,
                step,
                lambda: g.launch_update_vmsa(rec.handle, spa),
                lambda _: setattr(rec, "vmsas_done", rec.vmsas_done + 1),
                then=self._following,
            )
        elif step == "MEASURE":

            def measured(blob: bytes) -> None:  # the state goes with the measurement, in the same record
                rec.measurement = base64.b64encode(blob).decode()
                rec.state = "measured"

            self._journal(rec, step, lambda: g.launch_measure(rec.handle), measured, then=self._following)

    def _owner_session(self, domid: int) -> tuple[bytes | None, bytes | None]:
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

    def make_sev_domain(self, domid: int, es: bool):
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

    def flush_asids(self, dirty: list[int]) -> None:
        self.hv.wbinvd_all_cpus()
        fault_point("before", "DF_FLUSH")
        self.psp(self.guest.df_flush)
        fault_point("after", "DF_FLUSH")
        self.hv.asids_flushed(dirty)
        self.log.info("WBINVD + DF_FLUSH: ASIDs %s clean", dirty)

    def inject_secret(self, rec: GuestRecord, command_text: str) -> None:
        """LAUNCH_SECRET with the packet in secret/*, which is removed whatever the outcome; the outcome
        is published as the command is answered."""
        assert self.xs is not None
        base = proto.guest_path(rec.domid)
        error = None
        try:
            packet = proto.SecretPacket.parse(self.xs.read_dir(f"{base}/secret"))
            ranges = self.hv.guest_ranges(rec.domid, packet.gpa, len(packet.data))
            if len(ranges) != 1:
                raise InputError("secret/gpa: the secret must not cross a physically discontiguous page boundary")
            spa = ranges[0][0]
            self._journal(
                rec,
                "SECRET",
                lambda: self.guest.launch_update_secret(rec.handle, packet.header, spa, packet.data),
            )
            self.log.info("domain %d: secret injected (%d bytes)", rec.domid, len(packet.data), extra=self._fields(rec))
        except InputError as exc:
            error = self._invalid(exc)
        except FirmwareError as err:
            rec.pending = None
            self.records.save(rec)
            error = proto.error_text(err.name, str(err))
            self.log.warning("domain %d: %s", rec.domid, err, extra=self._fields(rec, err.name))
        finally:
            self.xs.rm(f"{base}/secret")  # secrets are transient: never left behind
        step = rec.step if rec.step in proto.STEPS else None
        self._answer(rec.domid, command_text, self._amend(rec.domid, rec, step=step, error=error))

    def finish(self, rec: GuestRecord) -> None:
        def finished(_: Any) -> None:  # the state goes with the step, in the same record
            rec.state = "running"

        try:
            self._journal(rec, "FINISH", lambda: self.guest.launch_finish(rec.handle), finished)
        except FirmwareError as err:
            self.fail(rec, err.name, str(err))
            return
        self._publish(rec.domid, self._summary_of(rec))
        self.log.info("domain %d running", rec.domid, extra=self._fields(rec))
        self.publish_platform()

    def fail(self, rec: GuestRecord, name: str, message: str) -> None:
        self.log.error("domain %d: launch failed: %s: %s", rec.domid, name, message, extra=self._fields(rec, name))
        last_step = rec.step if rec.step in proto.STEPS else None  # before the teardown's steps replace it
        try:
            self.teardown(rec)
        except (FirmwareError, SevdError) as exc:
            self.log.error("domain %d: teardown failed: %s", rec.domid, exc, extra=self._fields(rec))
        rec.state, rec.error = "error", proto.error_text(name, message)
        self.records.save(rec)
        self._publish(rec.domid, self._summary_of(rec, step=last_step))
        self.publish_platform()

    def teardown(self, rec: GuestRecord) -> None:
        """DEACTIVATE (if bound) and DECOMMISSION the guest's PSP context; idempotent."""
        if not rec.handle:
            return
        status = self.psp(self.guest.guest_status, rec.handle)
        if status.state != FwGuestState.INVALID:
            if status.asid:
                self._journal(rec, "DEACTIVATE", lambda: self.guest.deactivate(rec.handle))
            self._journal(
                rec, "DECOMMISSION", lambda: self.guest.decommission(rec.handle), lambda _: setattr(rec, "handle", 0)
            )
        elif rec.handle:  # already gone from the firmware (e.g. settled by recovery)
            rec.handle = 0
            self.records.save(rec)

    # -- recovery ------------------------------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: settle every journaled step in flight by asking GUEST_STATUS, then sweep orphans."""
        for rec in self.records.load_all():
            if rec.pending:
                self._settle(rec)
        self._sweep_orphans()

    def _settle(self, rec: GuestRecord) -> None:
        pending = rec.pending
        status = self.psp(self.guest.guest_status, rec.handle) if rec.handle else None
        done: bool
        if pending in ("SEV_DOMAIN", "SEV_ENABLED", "SECRET"):
            done = False  # idempotent (Xen) or repeatable (LAUNCH_SECRET): simply redo
        elif pending == "LAUNCH_START":
            done = False  # no handle came back to us; a context it created is swept as an orphan
        elif pending == "ACTIVATE":
            done = status is not None and status.asid == rec.asid  # never ACTIVATE twice
        elif pending in ("UPDATE_DATA", "UPDATE_VMSA"):
            rec.pending = None
            self.records.save(rec)
            self.fail(
                rec,
                "INTERRUPTED",
                f"sevd stopped during LAUNCH_{pending}; the image or VMSA may be partly encrypted: "
                "destroy and recreate the domain",
            )
            return
        elif pending == "MEASURE":
            if status is not None and status.state == FwGuestState.LSECRET:
                rec.pending = None
                self.fail(rec, "INTERRUPTED", "sevd stopped during LAUNCH_MEASURE and the measurement was lost")
                return
            done = False
        elif pending == "FINISH":
            done = status is not None and status.state == FwGuestState.RUNNING
        elif pending == "DEACTIVATE":
            done = status is not None and status.asid == 0
        elif pending == "DECOMMISSION":
            done = status is None or status.state == FwGuestState.INVALID
        else:
            done = False
        if done:
            rec.step = pending or rec.step
            if pending == "FINISH":
                rec.state = "running"
            if pending == "DECOMMISSION":
                rec.handle = 0
        rec.pending = None
        self.records.save(rec)
        self.log.info("domain %d: recovered step %s (%s)", rec.domid, pending, "done" if done else "redo")

    def _sweep_orphans(self) -> None:
        """Decommission PSP contexts no journal knows (e.g. a LAUNCH_START whose handle was never saved)."""
        known = {r.handle for r in self.records.load_all() if r.handle}
        live = self.psp(self.platform.status).guests
        found = 0
        for handle in range(1, 1025):
            if found >= live:
                break
            status = self.psp(self.guest.guest_status, handle)
            if status.state == FwGuestState.INVALID:
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
        running = sum(r.state == "running" for r in records)
        launching = sum(r.state in ("queued", "launching", "measured") for r in records)
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


def run(config_path: str | None) -> int:
    config = Config.load(config_path)
    logging.getLogger("sevd").debug("config %s", config.source)
    return Daemon(config).run()
