"""The launch core: what the daemon does next for one guest, decided from values, with no I/O.

The shell (sevd/daemon/service.py) reads xenstore, the journal and, after a restart, GUEST_STATUS;
calls `decide`; and performs the actions it returns in order.  When the last one is an `Issue`, a
`Start` or a `NeedLayout`, the shell calls `decide` again with what changed.  Crash recovery is the
same function given the GUEST_STATUS observation: the step in flight is settled by RECOVERY, and a
step found done is journaled by `complete`, exactly as the live path journals it.
"""

from __future__ import annotations

import base64
import dataclasses

from sevd.abi.commands import FirmwareGuestState
from sevd.abi.units import NO_HANDLE, Asid, Handle
from sevd.launch.record import GuestRecord, Launch, Layout
from sevd.launch.states import LAUNCH_SEQUENCE, PUBLISHED_STEPS, Command, GuestState, Step
from sevd.launch.tables import (
    FAILED,
    INTERRUPTED_BECAUSE,
    RECOVERY,
    TRANSITIONS,
    Event,
    Evidence,
    Resolution,
)

# -- what the shell observes -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FirmwareStatus:
    """What GUEST_STATUS reported for the record's handle; `state` None when the record holds no handle."""

    state: FirmwareGuestState | None
    asid: int = 0


NOT_ASKED = FirmwareStatus(None)  # no GUEST_STATUS asked: the record holds no handle


@dataclasses.dataclass(frozen=True)
class Request:
    """The request node as the shell read it: its generation (when one can be found at all) and either
    what a valid request asks for (`launch`) or why it is refused (`problem`)."""

    generation: int | None
    launch: Launch | None = None
    problem: str | None = None
    seen: bool = False  # the very text this daemon took already


@dataclasses.dataclass(frozen=True)
class BadCommand:
    """A command node that is not a command."""

    problem: str


@dataclasses.dataclass(frozen=True)
class Published:
    """The summary node as the shell last wrote or read it."""

    state: GuestState | None
    ack: int | None


# -- what the shell performs -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Issue:
    """Journal `step` in flight, issue its command, journal `complete(record, step, result)`."""

    step: Step


@dataclasses.dataclass(frozen=True)
class NeedLayout:
    """Ask Xen for the image's physical ranges (and the VMSA pages of an SEV-ES guest), then decide again."""


@dataclasses.dataclass(frozen=True)
class Start:
    """Take a request: journal `record`, then publish `launching` with its ack (the journal knows it first)."""

    record: GuestRecord
    name: str | None


@dataclasses.dataclass(frozen=True)
class Save:
    """Journal `record` as the guest's record."""

    record: GuestRecord


@dataclasses.dataclass(frozen=True)
class TearDown:
    """Ask GUEST_STATUS and perform `teardown(record, status)`; `best_effort`: a failure is logged, not raised."""

    best_effort: bool = False


@dataclasses.dataclass(frozen=True)
class MarkFailed:
    """Journal the record as `error` with `name: message` (name: the firmware status, XEN_ERROR, ...) and no step
    in flight: a failed launch is never settled or redone again."""

    name: str
    message: str


@dataclasses.dataclass(frozen=True)
class Publish:
    """Publish the record's summary; `step` is the step to show when the record's own is not one to show."""

    step: Step | None = None


@dataclasses.dataclass(frozen=True)
class Amend:
    """Publish the current summary with an error (and the ack of the request it is about)."""

    error: str
    ack: int | None


@dataclasses.dataclass(frozen=True)
class Refuse:
    """Publish a summary of only the refusal of a request: state error, its ack, the error."""

    error: str
    ack: int | None


@dataclasses.dataclass(frozen=True)
class Answer:
    """Consume the command node and publish its outcome (the current summary with `error` and/or `state`)
    in one transaction; `publish=False` consumes it only (the work that follows publishes)."""

    error: str | None = None
    state: GuestState | None = None
    publish: bool = True


@dataclasses.dataclass(frozen=True)
class Discard:
    """Destroy: journal the record as `destroyed` (kept until the domain dies, so that no later request measures
    an image already encrypted) and forget the request taken (the summary says destroyed)."""


@dataclasses.dataclass(frozen=True)
class Forget:
    """The domain is gone: delete the journal record and the guest's xenstore directory."""


@dataclasses.dataclass(frozen=True)
class PublishPlatform:
    """Refresh the platform nodes (PLATFORM_STATUS: the guest count changed)."""


Action = (
    Issue | NeedLayout | Start | Save | TearDown | MarkFailed | Publish | Amend | Refuse | Answer | Discard | Forget
) | PublishPlatform
# After one of these, last in a list, the shell decides again: its outcome changes what comes next.
DECIDE_AGAIN = (Issue, NeedLayout, Start, Save)


class IllegalTransition(Exception):
    def __init__(self, state: GuestState, event: Event):
        super().__init__(f"{event} is not allowed in state {state}")
        self.state, self.event = state, event


def invalid(problem: object) -> str:
    """The summary's error for a request or command the daemon refuses."""
    return f"INVALID_REQUEST: {problem}"


# -- the tables, applied -----------------------------------------------------------------------------------


def transition(state: GuestState, event: Event) -> GuestState:
    """TRANSITIONS[state][event], or IllegalTransition."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None


def accepted_in(command: Command) -> list[GuestState]:
    return [state for state, row in TRANSITIONS.items() if command in row]


def evidence(record: GuestRecord, status: FirmwareStatus) -> set[Evidence]:
    found = {Evidence.ANYTHING}
    if status.state is None or status.state == FirmwareGuestState.INVALID:
        found.add(Evidence.GONE)
    if status.state is not None:
        if status.asid == record.asid:
            found.add(Evidence.ASID_BOUND)
        if status.asid == 0:
            found.add(Evidence.NO_ASID)
        if status.state == FirmwareGuestState.LSECRET:
            found.add(Evidence.LSECRET)
        if status.state == FirmwareGuestState.RUNNING:
            found.add(Evidence.RUNNING)
    return found


def resolve(step: Step, status: FirmwareStatus, record: GuestRecord) -> Resolution:
    """RECOVERY's answer for `step` in flight, given what GUEST_STATUS shows."""
    seen = evidence(record, status)
    return next(resolution for shown, resolution in RECOVERY[step].items() if shown in seen)


def next_step(record: GuestRecord, layout: Layout | None) -> Step | NeedLayout | None:
    """The launch step after the record's last one; None once LAUNCH_MEASURE is done (or none is a launch step)."""
    done = record.step
    if done is None:
        return LAUNCH_SEQUENCE[0]
    if done not in LAUNCH_SEQUENCE:
        return None
    if done in (Step.LAUNCH_UPDATE_DATA, Step.LAUNCH_UPDATE_VMSA):
        if layout is None:
            return NeedLayout()
        if done == Step.LAUNCH_UPDATE_DATA and record.ranges_done < layout.ranges:
            return Step.LAUNCH_UPDATE_DATA
        if record.es and record.vmsas_done < layout.vmsas:
            return Step.LAUNCH_UPDATE_VMSA  # SEV-ES: each vCPU's VMSA, after the image, as the owner measures
        return Step.LAUNCH_MEASURE  # plain SEV has no VMSA step
    return LAUNCH_SEQUENCE[LAUNCH_SEQUENCE.index(done) + 1] if done != Step.LAUNCH_MEASURE else None


def following(record: GuestRecord, layout: Layout | None) -> Step | None:
    """The step to name in flight in the record that journals a launch step done: the next launch step,
    or LAUNCH_FINISH once measured when nobody attests."""
    step = next_step(record, layout)
    if isinstance(step, NeedLayout):
        raise ValueError(f"domain {record.domid}: the step after {record.step} needs the image layout")
    if step is None and record.state == GuestState.MEASURED and not record.attest:
        return Step.LAUNCH_FINISH
    return step


StepResult = int | bytes | None


def complete(record: GuestRecord, step: Step, result: StepResult = None, layout: Layout | None = None) -> GuestRecord:
    """The record once `step` is done: what the live path journals when the command returns (with its
    `result`), and what recovery journals when GUEST_STATUS shows the step happened (no result).

    A launch step's record names the next step in flight, so it is that step's "before" record too.
    """
    changes: dict[str, object] = {"step": step, "state": transition(record.state, step)}
    if step == Step.MAKE_SEV:
        changes["asid"] = Asid(_number(step, result))
    elif step == Step.LAUNCH_START:
        changes["handle"] = Handle(_number(step, result))
    elif step == Step.LAUNCH_UPDATE_DATA:
        changes["ranges_done"] = record.ranges_done + 1
    elif step == Step.LAUNCH_UPDATE_VMSA:
        changes["vmsas_done"] = record.vmsas_done + 1
    elif step == Step.LAUNCH_MEASURE and result is not None:
        if not isinstance(result, bytes):
            raise TypeError("LAUNCH_MEASURE returns the measurement blob")
        changes["measurement"] = base64.b64encode(result).decode()
    elif step == Step.DECOMMISSION:
        changes["handle"] = 0
    done = dataclasses.replace(record, pending=None, **changes)  # type: ignore[arg-type]
    if step in LAUNCH_SEQUENCE:
        done.pending = following(done, layout)
        if done.pending == Step.LAUNCH_UPDATE_DATA:
            done.image_encrypted = True  # from this record on, the image may be encrypted in place
    return done


def _number(step: Step, result: StepResult) -> int:
    if not isinstance(result, int):
        raise TypeError(f"{step} returns a number (the ASID or handle)")
    return result


def teardown(record: GuestRecord, status: FirmwareStatus) -> list[Action]:
    """DEACTIVATE (if bound) and DECOMMISSION the guest's PSP context; nothing when the firmware has none."""
    if not record.handle:
        return []
    if status.state is not None and status.state != FirmwareGuestState.INVALID:
        return [*([Issue(Step.DEACTIVATE)] if status.asid else []), Issue(Step.DECOMMISSION)]
    return [Save(dataclasses.replace(record, handle=NO_HANDLE))]  # already gone from the firmware


def fail(record: GuestRecord, name: str, message: str) -> list[Action]:
    """A launch fails: tear the context down (best effort), journal the error, publish it."""
    transition(record.state, FAILED)
    shown = record.step if record.step in PUBLISHED_STEPS else None  # before the teardown's steps replace it
    return [TearDown(best_effort=True), MarkFailed(name, message), Publish(step=shown), PublishPlatform()]


def settle(record: GuestRecord, status: FirmwareStatus) -> list[Action]:
    """After a restart: the step in flight, settled by RECOVERY from what GUEST_STATUS shows."""
    step = record.pending
    if step is None:
        return []
    resolution = resolve(step, status, record)
    if resolution == Resolution.DONE:
        return [Save(complete(record, step))]
    cleared = dataclasses.replace(record, pending=None)
    if resolution == Resolution.REDO:
        return [Save(cleared)]
    return [Save(cleared), *fail(cleared, "INTERRUPTED", f"sevd stopped during {step}: {INTERRUPTED_BECAUSE[step]}")]


# -- the decision ------------------------------------------------------------------------------------------


def decide(
    record: GuestRecord | None,
    request: Request | None,
    command: Command | BadCommand | None,
    domain_alive: bool,
    guest_status: FirmwareStatus | None = None,
    *,
    published: Published | None = None,
    layout: Layout | None = None,
) -> list[Action]:
    """What to do next for one guest.

    `record` is the journal's; `request` and `command` the toolstack's nodes (None: absent); `guest_status`
    is given only when the journal may be behind the firmware — after a restart, or after a journal write
    failed following a command — for a record with a step in flight (NOT_ASKED when it holds no handle);
    `published` is the summary as last written; `layout` the launch's range and VMSA counts, once asked.
    """
    if record is not None and record.pending is not None and guest_status is not None:
        return settle(record, guest_status)
    if not domain_alive:
        return [TearDown(), Forget(), PublishPlatform()] if record is not None else [Forget()]
    if isinstance(command, BadCommand):
        return [Answer(error=invalid(command.problem))]
    if command == Command.DESTROY:
        if record is None:
            return [Discard(), Answer(state=GuestState.DESTROYED)]
        return [TearDown(), Discard(), PublishPlatform(), Answer(state=transition(record.state, command))]
    actions: list[Action] = []
    if request is not None:
        taken = _take(record, request, published)
        if taken and isinstance(taken[-1], Start):
            return taken
        actions += taken or []
    if record is None:
        if command is not None:  # nothing to act on: answered, never left waiting
            actions.append(Answer(error=invalid(f"{command} needs a launch, and sevd has taken no request")))
        return actions
    return actions + _proceed(record, command, published, layout)


def _take(record: GuestRecord | None, request: Request, published: Published | None) -> list[Action] | None:
    """A request seen for the first time: taken, or refused; None when there is nothing to do about it."""
    if request.seen or (record is not None and request.generation == record.generation):
        return None  # the very text taken or refused before
    if request.generation is not None and published is not None and published.ack == request.generation:
        return None  # taken before (refused, or launched and destroyed): never again
    if record is not None and record.state == GuestState.DESTROYED and record.encrypted:
        msg = (
            f"domain {record.domid}'s image was encrypted by an earlier launch (generation {record.generation}), "
            "so it cannot be measured again; destroy the domain and create it again"
        )
        return [Amend(error=invalid(msg), ack=request.generation)]
    if record is not None and record.state != GuestState.DESTROYED:
        msg = f"domain {record.domid} already has a launch (generation {record.generation}); destroy it first"
        return [Amend(error=invalid(msg), ack=request.generation)]
    if request.launch is None:
        return [Refuse(error=invalid(request.problem), ack=request.generation)]
    return [Start(request.launch.record(), request.launch.name)]


def _proceed(
    record: GuestRecord, command: Command | None, published: Published | None, layout: Layout | None
) -> list[Action]:
    state = record.state
    if state == GuestState.QUEUED:  # an older sevd's record: the launch begins now
        launching = dataclasses.replace(record, state=GuestState.LAUNCHING)
        return [Save(launching), Publish(), *_proceed(launching, command, published, layout)]
    if state == GuestState.LAUNCHING:
        step = next_step(record, layout)
        if isinstance(step, NeedLayout):
            return [step]
        if step is not None:
            return [Issue(step)]
        # Every launch step done (a journal written before LAUNCH_MEASURE's record carried the state).
        return [Save(dataclasses.replace(record, state=GuestState.MEASURED))]
    if state == GuestState.MEASURED and not record.attest:
        return [Issue(Step.LAUNCH_FINISH)]  # nobody attests: straight on to running
    actions: list[Action] = []
    if published is None or published.state != state:
        # The journal is ahead of xenstore (just now, or a crash or a lost connection between the two).
        actions.append(Publish())
        if state == GuestState.RUNNING:
            actions.append(PublishPlatform())
    if command is None:
        return actions
    try:
        transition(state, command)
    except IllegalTransition:
        needs = " or ".join(accepted_in(command))
        return [*actions, Answer(error=invalid(f"{command} needs state {needs}, the guest is {state}"))]
    if command == Command.INJECT_SECRET:
        return [*actions, Issue(Step.LAUNCH_UPDATE_SECRET)]  # the secret's outcome answers the command
    return [*actions, Answer(publish=False), Issue(Step.LAUNCH_FINISH)]  # taken first: xl-sev waits for running
