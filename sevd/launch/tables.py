"""The launch as tables: every rule of the daemon's state machine and of its crash recovery lives here.

Read TRANSITIONS next to the guest state machine of the AMD SEV API (55766): each step's comment gives
the firmware guest state it needs and the one it leaves.  Read RECOVERY next to the recovery table in
docs/operations.md: it is that table.
"""

from __future__ import annotations

import enum

from sevd.launch.states import Command, GuestState, Step

L, M, R = GuestState.LAUNCHING, GuestState.MEASURED, GuestState.RUNNING


class Failed(enum.Enum):
    """A step failed (firmware status, Xen error, device error) or recovery found the launch interrupted."""

    FAILED = "failed"


FAILED = Failed.FAILED
Event = Step | Command | Failed

# The daemon's guest state × what happens → the state after.  A step is an event once it is done; a
# command is an event once accepted.  A pair missing from the table is refused (a command: INVALID_REQUEST;
# a step: a bug, `IllegalTransition`).  DEACTIVATE and DECOMMISSION (teardown) leave the state as it is:
# the failure or destroy that asked for them sets it.
TRANSITIONS: dict[GuestState, dict[Event, GuestState]] = {
    GuestState.QUEUED: {  # only in journals of older sevd versions: the launch has not begun
        Step.MAKE_SEV: L,
        Step.DEACTIVATE: GuestState.QUEUED,
        Step.DECOMMISSION: GuestState.QUEUED,
        Command.DESTROY: GuestState.DESTROYED,
    },
    GuestState.LAUNCHING: {
        Step.MAKE_SEV: L,  # Xen; firmware: no guest yet
        Step.LAUNCH_START: L,  # firmware: (none) → LUPDATE
        Step.ACTIVATE: L,  # firmware: LUPDATE, activation pending until LAUNCH_FINISH
        Step.SEV_ENABLE: L,  # Xen; firmware: LUPDATE
        Step.LAUNCH_UPDATE_DATA: L,  # firmware: LUPDATE → LUPDATE
        Step.LAUNCH_UPDATE_VMSA: L,  # firmware: LUPDATE → LUPDATE (SEV-ES)
        Step.LAUNCH_MEASURE: M,  # firmware: LUPDATE → LSECRET
        Step.DEACTIVATE: L,
        Step.DECOMMISSION: L,
        FAILED: GuestState.ERROR,
        Command.DESTROY: GuestState.DESTROYED,
    },
    GuestState.MEASURED: {
        Command.INJECT_SECRET: M,  # issues LAUNCH_UPDATE_SECRET
        Step.LAUNCH_UPDATE_SECRET: M,  # firmware: LSECRET → LSECRET (repeatable)
        Command.FINISH: M,  # issues LAUNCH_FINISH
        Step.LAUNCH_FINISH: R,  # firmware: LSECRET → RUNNING (completes the activation)
        Step.DEACTIVATE: M,
        Step.DECOMMISSION: M,
        FAILED: GuestState.ERROR,
        Command.DESTROY: GuestState.DESTROYED,
    },
    GuestState.RUNNING: {
        Step.DEACTIVATE: R,  # firmware: any state, activated → deactivated
        Step.DECOMMISSION: R,  # firmware: any state, deactivated → (none)
        Command.DESTROY: GuestState.DESTROYED,
    },
    GuestState.ERROR: {
        Step.DEACTIVATE: GuestState.ERROR,
        Step.DECOMMISSION: GuestState.ERROR,
        Command.DESTROY: GuestState.DESTROYED,
    },
    GuestState.DESTROYED: {  # its context released, kept until the domain dies: its image may be encrypted
        Command.DESTROY: GuestState.DESTROYED,
    },
}

# What a command issues when TRANSITIONS accepts it (DESTROY tears down: DEACTIVATE if bound, DECOMMISSION).
COMMAND_STEPS: dict[Command, Step] = {
    Command.INJECT_SECRET: Step.LAUNCH_UPDATE_SECRET,
    Command.FINISH: Step.LAUNCH_FINISH,
    Command.DESTROY: Step.DECOMMISSION,
}


class Evidence(enum.Enum):
    """What GUEST_STATUS, asked after a restart about the record's handle, shows."""

    ASID_BOUND = "the record's ASID"  # activated with the ASID the record holds
    NO_ASID = "ASID 0"  # the handle is valid and bound to no ASID
    LSECRET = "LSECRET"
    RUNNING = "RUNNING"
    GONE = "no guest"  # the record holds no handle, or the firmware has no guest under it
    ANYTHING = "anything else"


class Resolution(enum.Enum):
    DONE = "done"  # the step happened: journal it as the live path would have after the command
    REDO = "redo"  # clear it; the next pass issues it again (idempotent, or it never happened)
    INTERRUPTED = "interrupted"  # cannot be told apart or redone: the launch fails with INTERRUPTED


# The step in flight when the daemon died × what GUEST_STATUS shows → how it is settled.  The first
# evidence of a row that holds wins; ANYTHING always holds.
RECOVERY: dict[Step, dict[Evidence, Resolution]] = {
    Step.MAKE_SEV: {Evidence.ANYTHING: Resolution.REDO},  # Xen: idempotent
    Step.LAUNCH_START: {Evidence.ANYTHING: Resolution.REDO},  # no handle came back; the orphan sweep frees it
    Step.ACTIVATE: {Evidence.ASID_BOUND: Resolution.DONE, Evidence.ANYTHING: Resolution.REDO},  # never twice
    Step.SEV_ENABLE: {Evidence.ANYTHING: Resolution.REDO},  # Xen: idempotent
    Step.LAUNCH_UPDATE_DATA: {Evidence.ANYTHING: Resolution.INTERRUPTED},  # the range may be encrypted already
    Step.LAUNCH_UPDATE_VMSA: {Evidence.ANYTHING: Resolution.INTERRUPTED},  # the VMSA may be encrypted already
    Step.LAUNCH_MEASURE: {Evidence.LSECRET: Resolution.INTERRUPTED, Evidence.ANYTHING: Resolution.REDO},
    Step.LAUNCH_UPDATE_SECRET: {Evidence.ANYTHING: Resolution.REDO},  # repeatable, while the packet is there
    Step.LAUNCH_FINISH: {Evidence.RUNNING: Resolution.DONE, Evidence.ANYTHING: Resolution.REDO},
    Step.DEACTIVATE: {Evidence.NO_ASID: Resolution.DONE, Evidence.ANYTHING: Resolution.REDO},
    Step.DECOMMISSION: {Evidence.GONE: Resolution.DONE, Evidence.ANYTHING: Resolution.REDO},
}

# Why a launch is INTERRUPTED, by the step in flight (the summary's error message).
INTERRUPTED_BECAUSE: dict[Step, str] = {
    Step.LAUNCH_UPDATE_DATA: "the image may be partly encrypted: destroy and recreate the domain",
    Step.LAUNCH_UPDATE_VMSA: "the VMSA may be partly encrypted: destroy and recreate the domain",
    Step.LAUNCH_MEASURE: "the measurement was lost",
}
