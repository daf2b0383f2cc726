"""The launch core in-process: every cell of TRANSITIONS and RECOVERY, the refused pairs, and crash replay.

The expected outcomes are written here again, from the AMD SEV API's guest state machine
(reference: sev-api-facts.md, "Guests") and from the recovery table in docs/operations.md, not read
back from the core's tables.
"""

import dataclasses

import pytest

from sevd.abi.commands import FirmwareGuestState as FW
from sevd.launch import (
    FAILED,
    NOT_ASKED,
    RECOVERY,
    TRANSITIONS,
    Amend,
    Answer,
    BadCommand,
    Command,
    Discard,
    FirmwareStatus,
    Forget,
    GuestRecord,
    GuestState,
    IllegalTransition,
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
    TearDown,
    complete,
    decide,
    next_step,
    resolve,
    teardown,
    transition,
)
from sevd.launch.tables import Resolution

Q, L, M, R, E, D = "queued", "launching", "measured", "running", "error", "destroyed"

# -- TRANSITIONS ---------------------------------------------------------------------------------------------

# The daemon's launch, cell by cell: (state, what happened) → state after.  Steps are events once done.
EXPECTED_TRANSITIONS = {
    (Q, "MAKE_SEV"): L,
    (Q, "DEACTIVATE"): Q,
    (Q, "DECOMMISSION"): Q,
    (Q, "destroy"): D,
    (L, "MAKE_SEV"): L,
    (L, "LAUNCH_START"): L,
    (L, "ACTIVATE"): L,
    (L, "SEV_ENABLE"): L,
    (L, "LAUNCH_UPDATE_DATA"): L,
    (L, "LAUNCH_UPDATE_VMSA"): L,
    (L, "LAUNCH_MEASURE"): M,  # the measurement is what `measured` publishes
    (L, "DEACTIVATE"): L,
    (L, "DECOMMISSION"): L,
    (L, "failed"): E,
    (L, "destroy"): D,
    (M, "inject-secret"): M,
    (M, "LAUNCH_UPDATE_SECRET"): M,
    (M, "finish"): M,
    (M, "LAUNCH_FINISH"): R,
    (M, "DEACTIVATE"): M,
    (M, "DECOMMISSION"): M,
    (M, "failed"): E,
    (M, "destroy"): D,
    (R, "DEACTIVATE"): R,
    (R, "DECOMMISSION"): R,
    (R, "destroy"): D,
    (E, "DEACTIVATE"): E,
    (E, "DECOMMISSION"): E,
    (E, "destroy"): D,
    (D, "destroy"): D,  # the record stays until the domain dies: its image may be encrypted
}

# The firmware's guest state machine (SEV API 55766; sev-api-facts.md §2) for the firmware commands the
# daemon issues: the guest states it may be issued in → the state it leaves (None: unchanged).
SPEC = {
    "LAUNCH_START": ({FW.INVALID}, FW.LUPDATE),
    "ACTIVATE": ({FW.LUPDATE, FW.LSECRET, FW.RUNNING, FW.SUPDATE, FW.RUPDATE}, None),  # all but SENT
    "LAUNCH_UPDATE_DATA": ({FW.LUPDATE}, None),
    "LAUNCH_UPDATE_VMSA": ({FW.LUPDATE}, None),
    "LAUNCH_MEASURE": ({FW.LUPDATE}, FW.LSECRET),
    "LAUNCH_UPDATE_SECRET": ({FW.LSECRET}, None),
    "LAUNCH_FINISH": ({FW.LSECRET}, FW.RUNNING),
    "DEACTIVATE": ({FW.LUPDATE, FW.LSECRET, FW.RUNNING, FW.SUPDATE, FW.RUPDATE, FW.SENT}, None),
    "DECOMMISSION": ({FW.LUPDATE, FW.LSECRET, FW.RUNNING, FW.SUPDATE, FW.RUPDATE, FW.SENT}, FW.INVALID),
}
# The firmware state a guest is in while the daemon says launching (once LAUNCH_START is done), measured, running.
FIRMWARE_STATE_OF = {L: FW.LUPDATE, M: FW.LSECRET, R: FW.RUNNING}

ALL_EVENTS = [*Step, *Command, FAILED]


def event_name(event):
    return event.value


def test_the_table_has_exactly_the_expected_cells():
    cells = {(str(state), event_name(event)) for state, row in TRANSITIONS.items() for event in row}
    assert cells == set(EXPECTED_TRANSITIONS)


@pytest.mark.parametrize("state,event", sorted(EXPECTED_TRANSITIONS))
def test_transition(state, event):
    found = next(e for e in ALL_EVENTS if event_name(e) == event)
    assert transition(GuestState(state), found) == GuestState(EXPECTED_TRANSITIONS[state, event])


ILLEGAL = sorted(
    (str(state), event_name(event))
    for state in GuestState
    for event in ALL_EVENTS
    if (str(state), event_name(event)) not in EXPECTED_TRANSITIONS
)


@pytest.mark.parametrize("state,event", ILLEGAL)
def test_illegal_pairs_are_refused(state, event):
    found = next(e for e in ALL_EVENTS if event_name(e) == event)
    with pytest.raises(IllegalTransition):
        transition(GuestState(state), found)


@pytest.mark.parametrize("step", sorted(SPEC))
def test_daemon_steps_agree_with_the_firmware_state_machine(step):
    """Where the daemon issues a firmware command, the firmware is in a state the spec allows it in, and
    the daemon's state after it stands for the state the spec says it leaves."""
    needs, leaves = SPEC[step]
    for (state, event), after in EXPECTED_TRANSITIONS.items():
        if event != step or state not in FIRMWARE_STATE_OF:
            continue
        before = FW.INVALID if step == "LAUNCH_START" else FIRMWARE_STATE_OF[state]
        assert before in needs, (state, step)
        if step not in ("DEACTIVATE", "DECOMMISSION"):  # teardown: the failure or destroy sets the state after
            assert FIRMWARE_STATE_OF[after] == (leaves if leaves is not None else before), (state, step)


def record(**changes):
    base = GuestRecord(domid=3, generation=1, policy=1, es=False, attest=True, image_gpa=0x1000, image_size=8192)
    return dataclasses.replace(base, **changes)


# (A launch in progress runs on first: a command is answered once it stops, in one of these states.)
@pytest.mark.parametrize("state", [GuestState.MEASURED, GuestState.RUNNING, GuestState.ERROR])
@pytest.mark.parametrize("command", [Command.INJECT_SECRET, Command.FINISH])
def test_a_command_in_a_state_that_does_not_take_it_is_refused(state, command):
    rec = record(state=state, step=Step.LAUNCH_MEASURE, attest=True)
    actions = decide(rec, None, command, True, published=Published(state, 1))
    if state == GuestState.MEASURED:
        assert not any(isinstance(a, Answer) and a.error for a in actions)
    else:
        assert actions == [Answer(error=f"INVALID_REQUEST: {command} needs state measured, the guest is {state}")]


def test_a_command_that_is_not_one_is_refused():
    assert decide(record(state=GuestState.RUNNING), None, BadCommand("no such"), True) == [
        Answer(error="INVALID_REQUEST: no such")
    ]


@pytest.mark.parametrize("state", [GuestState.LAUNCHING, GuestState.MEASURED, GuestState.RUNNING, GuestState.ERROR])
def test_destroy_tears_down_in_any_state(state):
    actions = decide(record(state=state, handle=1), None, Command.DESTROY, True)
    assert actions == [TearDown(), Discard(), PublishPlatform(), Answer(state=GuestState.DESTROYED)]


def test_a_dead_domain_is_torn_down_and_forgotten():
    assert decide(record(state=GuestState.RUNNING), None, None, False) == [TearDown(), Forget(), PublishPlatform()]
    assert decide(None, None, None, False) == [Forget()]


def test_a_step_done_in_a_state_that_does_not_allow_it_is_a_bug():
    with pytest.raises(IllegalTransition):
        complete(record(state=GuestState.RUNNING), Step.LAUNCH_MEASURE, bytes(48))


# -- requests --------------------------------------------------------------------------------------------------

LAUNCH = Launch(3, 1, 1, False, True, 0x1000, 8192, name="web")


def test_a_valid_request_starts_a_launch_journaled_with_its_first_step_in_flight():
    (start,) = decide(None, Request(1, launch=LAUNCH), None, True)
    assert isinstance(start, Start) and start.name == "web"
    assert (start.record.state, start.record.step, start.record.pending) == (GuestState.LAUNCHING, None, Step.MAKE_SEV)


def test_an_invalid_request_is_refused_once():
    assert decide(None, Request(4, problem="bad"), None, True) == [Refuse(error="INVALID_REQUEST: bad", ack=4)]
    assert decide(None, Request(4, problem="bad"), None, True, published=Published(GuestState.ERROR, 4)) == []


def test_a_second_generation_is_refused_while_a_launch_exists():
    rec = record(state=GuestState.RUNNING, step=Step.LAUNCH_FINISH)
    actions = decide(rec, Request(2, launch=LAUNCH), None, True, published=Published(GuestState.RUNNING, 1))
    assert actions[0].ack == 2 and "already has a launch" in actions[0].error


# -- RECOVERY --------------------------------------------------------------------------------------------------

# docs/operations.md, "State and recovery": the step in flight × what GUEST_STATUS shows → settled how.
EXPECTED_RECOVERY = {
    ("MAKE_SEV", "anything else"): "redo",
    ("LAUNCH_START", "anything else"): "redo",
    ("ACTIVATE", "the record's ASID"): "done",
    ("ACTIVATE", "anything else"): "redo",
    ("SEV_ENABLE", "anything else"): "redo",
    ("LAUNCH_UPDATE_DATA", "anything else"): "interrupted",
    ("LAUNCH_UPDATE_VMSA", "anything else"): "interrupted",
    ("LAUNCH_MEASURE", "LSECRET"): "interrupted",
    ("LAUNCH_MEASURE", "anything else"): "redo",
    ("LAUNCH_UPDATE_SECRET", "anything else"): "redo",
    ("LAUNCH_FINISH", "RUNNING"): "done",
    ("LAUNCH_FINISH", "anything else"): "redo",
    ("DEACTIVATE", "ASID 0"): "done",
    ("DEACTIVATE", "anything else"): "redo",
    ("DECOMMISSION", "no guest"): "done",
    ("DECOMMISSION", "anything else"): "redo",
}
ASID = 5
# What GUEST_STATUS can show, by what it shows.
SHOWING = {
    "the record's ASID": [FirmwareStatus(FW.LUPDATE, ASID), FirmwareStatus(FW.RUNNING, ASID)],
    "ASID 0": [FirmwareStatus(FW.LUPDATE, 0), FirmwareStatus(FW.RUNNING, 0)],
    "LSECRET": [FirmwareStatus(FW.LSECRET, ASID), FirmwareStatus(FW.LSECRET, 0)],
    "RUNNING": [FirmwareStatus(FW.RUNNING, ASID)],
    "no guest": [NOT_ASKED, FirmwareStatus(FW.INVALID, 0)],
}
EVERY_STATUS = [
    NOT_ASKED,
    FirmwareStatus(FW.INVALID, 0),
    *(FirmwareStatus(state, asid) for state in FW if state != FW.INVALID for asid in (0, ASID, ASID + 1)),
]


def shows(status, what):
    """What each column of the table means, for a record holding ASID 5 (and a handle unless NOT_ASKED)."""
    asked = status is not NOT_ASKED
    return {
        "the record's ASID": asked and status.asid == ASID,
        "ASID 0": asked and status.asid == 0,
        "LSECRET": status.state == FW.LSECRET,
        "RUNNING": status.state == FW.RUNNING,
        "no guest": not asked or status.state == FW.INVALID,
    }[what]


def test_the_recovery_table_has_exactly_the_expected_cells():
    cells = {(str(step), shown.value) for step, row in RECOVERY.items() for shown in row}
    assert cells == set(EXPECTED_RECOVERY)


@pytest.mark.parametrize("step,shown", sorted(EXPECTED_RECOVERY))
def test_recovery(step, shown):
    """Every status that shows the cell's evidence (and, for "anything else", none of the row's others) settles
    the step as operations.md says."""
    others = [s for (st, s) in EXPECTED_RECOVERY if st == step and s != "anything else"]
    if shown == "anything else":
        statuses = [s for s in EVERY_STATUS if not any(shows(s, other) for other in others)]
    else:
        statuses = SHOWING[shown]
        assert all(shows(s, shown) for s in statuses)
    assert statuses
    for status in statuses:
        rec = record(pending=Step(step), handle=0 if status is NOT_ASKED else 1, asid=ASID)
        assert resolve(Step(step), status, rec) == Resolution(EXPECTED_RECOVERY[step, shown]), status


def test_done_journals_what_the_live_path_journals():
    before = record(state=GuestState.MEASURED, step=Step.LAUNCH_MEASURE, pending=Step.LAUNCH_FINISH, handle=1)
    (save,) = decide(before, None, None, True, FirmwareStatus(FW.RUNNING, ASID))
    assert save == Save(complete(before, Step.LAUNCH_FINISH))
    assert (save.record.state, save.record.step, save.record.pending) == (GuestState.RUNNING, Step.LAUNCH_FINISH, None)


def test_a_decommission_found_done_drops_the_handle():
    before = record(state=GuestState.ERROR, step=Step.DEACTIVATE, pending=Step.DECOMMISSION, handle=1)
    (save,) = decide(before, None, None, True, FirmwareStatus(FW.INVALID, 0))
    assert save.record.handle == 0 and save.record.pending is None


@pytest.mark.parametrize("alive", [True, False])
def test_a_journal_behind_a_command_is_settled_before_anything_else(alive):
    """A journal write failed after LAUNCH_UPDATE_DATA: the record on disk names it in flight.  Whatever else
    the pass sees (a command, a dead domain), it is settled first, never issued again."""
    before = record(
        state=GuestState.LAUNCHING, step=Step.LAUNCH_UPDATE_DATA, pending=Step.LAUNCH_UPDATE_DATA, handle=1, asid=ASID
    )
    actions = decide(before, None, Command.FINISH, alive, FirmwareStatus(FW.LUPDATE, ASID))
    assert Issue(Step.LAUNCH_UPDATE_DATA) not in actions
    assert actions[0] == Save(dataclasses.replace(before, pending=None))
    assert any(isinstance(a, MarkFailed) and a.name == "INTERRUPTED" for a in actions)


# -- replay after a crash: the same actions as the live path ---------------------------------------------------


class Firmware:
    """The firmware and Xen as far as the launch sees them: guest state, handle and ASID."""

    def __init__(self):
        self.state, self.handle, self.asid, self.xen_asid = FW.INVALID, 0, 0, 0

    def status(self, rec):
        return FirmwareStatus(self.state, self.asid) if rec.handle else NOT_ASKED

    def run(self, step):
        if step == Step.MAKE_SEV:
            self.xen_asid = ASID
            return ASID
        if step == Step.LAUNCH_START:
            self.state, self.handle = FW.LUPDATE, 1
            return 1
        if step == Step.ACTIVATE:
            self.asid = self.xen_asid
        elif step == Step.LAUNCH_MEASURE:
            self.state = FW.LSECRET
            return bytes(48)
        elif step == Step.LAUNCH_FINISH:
            self.state = FW.RUNNING
        elif step == Step.DEACTIVATE:
            self.asid = 0
        elif step == Step.DECOMMISSION:
            self.state = FW.INVALID
        return None


@dataclasses.dataclass
class Point:
    """One command issued on the live path: the inputs of the decide that issued it, the record on disk
    while it was in flight, GUEST_STATUS before and after, and the live decide right after it."""

    inputs: dict
    actions: list
    disk: GuestRecord
    status_before: FirmwareStatus
    status_after: FirmwareStatus
    next_inputs: dict = None
    next_actions: list = None


def live_launch(es, attest, layout):
    """Drive a launch (secret and finish sent by the owner when attesting), then a destroy, through decide
    alone; return every point where a command was issued."""
    fw, rec, points = Firmware(), None, []
    launch = dataclasses.replace(LAUNCH, es=es, attest=attest, policy=5 if es else 1)
    request, published = Request(1, launch=launch), None
    commands = [Command.INJECT_SECRET, Command.FINISH, Command.DESTROY] if attest else [Command.DESTROY]
    command = None
    given_layout = None
    last = None
    for _ in range(100):
        inputs = dict(record=rec, request=request, command=command, published=published, layout=given_layout)
        actions = decide(rec, request, command, True, published=published, layout=given_layout)
        if last is not None:
            last.next_inputs, last.next_actions, last = inputs, actions, None
        if not actions:
            if not commands:
                return points
            command = commands.pop(0)
            continue
        for action in actions:
            if isinstance(action, Start):
                rec, request = action.record, Request(1, seen=True)
            elif isinstance(action, Save):
                rec = action.record
            elif isinstance(action, NeedLayout):
                given_layout = layout
            elif isinstance(action, Publish):
                published = Published(rec.state, 1)
            elif isinstance(action, Answer):
                command = None
            elif isinstance(action, (Issue, TearDown)):
                issues = [action] if isinstance(action, Issue) else teardown(rec, fw.status(rec))
                for issue in issues:
                    disk = dataclasses.replace(rec, pending=issue.step)
                    before = fw.status(disk)
                    result = fw.run(issue.step)
                    rec = complete(disk, issue.step, result, layout)
                    last = Point(inputs, actions, disk, before, fw.status(disk))
                    points.append(last)
                if issue.step == Step.LAUNCH_UPDATE_SECRET:
                    command = None
            elif isinstance(action, Discard):
                return points
    raise AssertionError("the launch did not end")


def replay(point, status):
    """Restart with the record on disk: settle by GUEST_STATUS, then decide with the pass's other inputs."""
    settled = decide(point.disk, None, None, True, status)
    assert len(settled) >= 1 and isinstance(settled[0], Save)
    return settled


SHAPES = {"sev, owner": (False, True), "sev, no owner": (False, False), "sev-es, owner": (True, True)}
LAYOUT = Layout(ranges=3, vmsas=2)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_live_path_issues_every_step_in_order(shape):
    es, attest = SHAPES[shape]
    steps = [p.disk.pending for p in live_launch(es, attest, LAYOUT)]
    expected = ["MAKE_SEV", "LAUNCH_START", "ACTIVATE", "SEV_ENABLE", *["LAUNCH_UPDATE_DATA"] * 3]
    expected += ["LAUNCH_UPDATE_VMSA"] * 2 if es else []
    expected += ["LAUNCH_MEASURE", *(["LAUNCH_UPDATE_SECRET"] if attest else []), "LAUNCH_FINISH"]
    assert steps == [*expected, "DEACTIVATE", "DECOMMISSION"]


def crash_cases():
    for shape, (es, attest) in SHAPES.items():
        for index, point in enumerate(live_launch(es, attest, LAYOUT)):
            for when in ("before", "after"):
                yield pytest.param(shape, index, when, id=f"{shape}-{index}-{point.disk.pending}-{when}")


@pytest.mark.parametrize("shape,index,when", list(crash_cases()))
def test_replay_after_a_crash_gives_the_live_actions(shape, index, when):
    es, attest = SHAPES[shape]
    point = live_launch(es, attest, LAYOUT)[index]
    step = point.disk.pending
    status = point.status_before if when == "before" else point.status_after
    settled = replay(point, status)
    resolution = resolve(step, status, point.disk)
    record_after = settled[0].record
    if resolution == Resolution.INTERRUPTED:
        assert step in (Step.LAUNCH_UPDATE_DATA, Step.LAUNCH_UPDATE_VMSA, Step.LAUNCH_MEASURE)
        assert settled[1:] == [
            TearDown(best_effort=True),
            MarkFailed("INTERRUPTED", settled[2].message),
            Publish(step=point.disk.step),
            PublishPlatform(),
        ]
        return
    assert len(settled) == 1
    inputs = {**point.inputs, "record": record_after}
    if step in (Step.DEACTIVATE, Step.DECOMMISSION):
        # The destroy is still asked for: the same decide as the one that began the teardown, and what is
        # left of the teardown (by GUEST_STATUS after the restart) is what was left of it live.
        assert decide(record_after, inputs["request"], inputs["command"], True, **_rest(inputs)) == point.actions
        live = [Issue(Step.DEACTIVATE), Issue(Step.DECOMMISSION)]
        left = live[live.index(Issue(step)) + (0 if when == "before" else 1) :]
        assert teardown(record_after, status) == left
        return
    if resolution == Resolution.REDO:
        # Nothing happened as far as the journal knows: the very decide that issued the step, again.
        assert record_after == dataclasses.replace(point.disk, pending=None)
        assert decide(record_after, inputs["request"], inputs["command"], True, **_rest(inputs)) == point.actions
        assert point.actions[-1] == Issue(step)
    else:
        # Done: journaled as the live path journaled it, and what follows is what followed live.
        assert resolution == Resolution.DONE and when == "after"
        assert record_after == point.next_inputs["record"]
        inputs = {**point.next_inputs, "record": record_after}
        assert decide(record_after, inputs["request"], inputs["command"], True, **_rest(inputs)) == point.next_actions


def _rest(inputs):
    return {"published": inputs["published"], "layout": inputs["layout"]}


def test_next_step_asks_for_the_layout_only_when_it_matters():
    assert next_step(record(step=Step.SEV_ENABLE), None) == Step.LAUNCH_UPDATE_DATA
    assert isinstance(next_step(record(step=Step.LAUNCH_UPDATE_DATA, ranges_done=1), None), NeedLayout)
    assert next_step(record(step=Step.LAUNCH_UPDATE_DATA, ranges_done=3), Layout(3, 2)) == Step.LAUNCH_MEASURE
    es = record(step=Step.LAUNCH_UPDATE_DATA, ranges_done=3, es=True)
    assert next_step(es, Layout(3, 2)) == Step.LAUNCH_UPDATE_VMSA


# -- what follows a launch: destroyed, failed, unanswered ---------------------------------------------------


def test_a_new_request_for_a_domain_whose_image_was_encrypted_is_refused():
    rec = record(state=GuestState.DESTROYED, ranges_done=3)
    actions = decide(rec, Request(2, launch=LAUNCH), None, True, published=Published(GuestState.DESTROYED, 1))
    assert [type(a) for a in actions] == [Amend] and actions[0].ack == 2
    assert "encrypted by an earlier launch" in actions[0].error
    assert decide(rec, Request(2, launch=LAUNCH), None, True, published=Published(GuestState.DESTROYED, 2)) == []


def test_a_new_request_for_a_domain_destroyed_before_its_image_was_touched_launches():
    rec = record(state=GuestState.DESTROYED, step=Step.ACTIVATE)
    (start,) = decide(rec, Request(2, launch=LAUNCH), None, True, published=Published(GuestState.DESTROYED, 1))
    assert isinstance(start, Start) and start.record.generation == 1 and start.record.pending == Step.MAKE_SEV


def test_the_image_counts_as_encrypted_from_the_record_naming_launch_update_data_in_flight():
    rec = record(state=GuestState.LAUNCHING, step=Step.ACTIVATE, asid=ASID, handle=1)
    done = complete(rec, Step.SEV_ENABLE)
    assert done.pending == Step.LAUNCH_UPDATE_DATA and done.encrypted
    assert not rec.encrypted


def test_a_command_without_a_launch_is_answered():
    assert decide(None, None, Command.FINISH, True) == [
        Answer(error="INVALID_REQUEST: finish needs a launch, and sevd has taken no request")
    ]
    refused = decide(None, Request(None, problem="bad"), Command.INJECT_SECRET, True)
    assert [type(a) for a in refused] == [Refuse, Answer]


def test_a_request_refused_before_is_not_refused_again():
    assert decide(None, Request(None, problem="bad", seen=True), None, True) == []
