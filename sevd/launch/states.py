"""The names the launch core speaks: the daemon's guest states, its steps and the toolstack's commands.

Steps are named after what they issue: the firmware command (SEV API 55766) or the Xen domctl sub-op
(`XEN_DOMCTL_SEV_MAKE_SEV`, `XEN_DOMCTL_SEV_ENABLE`).  Each is a `StrEnum`, so the journal (JSON) and the
summary node (text) hold the plain name.
"""

from __future__ import annotations

import enum


class GuestState(enum.StrEnum):
    """Where a launch is, as the daemon sees it: journaled (records.py) and published (the summary's `state`).

    Not the firmware's guest state (`sevd.abi.commands.FirmwareGuestState`, what GUEST_STATUS reports).
    """

    QUEUED = "queued"  # request accepted, not started (journals of older sevd versions)
    LAUNCHING = "launching"  # PSP and Xen steps in flight (see the record's `step`)
    MEASURED = "measured"  # measurement published, waiting for the owner's secret / finish
    RUNNING = "running"  # LAUNCH_FINISH done; the toolstack may unpause
    DESTROYING = "destroying"  # reserved in the protocol; never written
    DESTROYED = "destroyed"  # the context released; journaled until the domain dies
    ERROR = "error"  # see the record's `error`; the PSP context was decommissioned


# Names the journal and the summary held before the steps were named after the firmware commands:
# a record written by an older sevd must still recover.
LEGACY_STEP_NAMES = {
    "SEV_DOMAIN": "MAKE_SEV",
    "SEV_ENABLED": "SEV_ENABLE",
    "UPDATE_DATA": "LAUNCH_UPDATE_DATA",
    "UPDATE_VMSA": "LAUNCH_UPDATE_VMSA",
    "MEASURE": "LAUNCH_MEASURE",
    "SECRET": "LAUNCH_UPDATE_SECRET",
    "FINISH": "LAUNCH_FINISH",
}


class Step(enum.StrEnum):
    """One journaled command: what the daemon issues, named as the firmware or Xen names it."""

    MAKE_SEV = "MAKE_SEV"  # Xen domctl: make the paused domain an SEV domain; Xen picks its fixed ASID
    LAUNCH_START = "LAUNCH_START"
    ACTIVATE = "ACTIVATE"
    SEV_ENABLE = "SEV_ENABLE"  # Xen domctl: SEV on in the domain's VMCBs (after ACTIVATE)
    LAUNCH_UPDATE_DATA = "LAUNCH_UPDATE_DATA"  # once per physically contiguous range of the image
    LAUNCH_UPDATE_VMSA = "LAUNCH_UPDATE_VMSA"  # SEV-ES: once per vCPU
    LAUNCH_MEASURE = "LAUNCH_MEASURE"
    LAUNCH_UPDATE_SECRET = "LAUNCH_UPDATE_SECRET"
    LAUNCH_FINISH = "LAUNCH_FINISH"
    DEACTIVATE = "DEACTIVATE"
    DECOMMISSION = "DECOMMISSION"

    @classmethod
    def _missing_(cls, value: object) -> Step | None:
        new = LEGACY_STEP_NAMES.get(value) if isinstance(value, str) else None
        return cls(new) if new is not None else None


class Command(enum.StrEnum):
    """The toolstack's `command` node."""

    INJECT_SECRET = "inject-secret"
    FINISH = "finish"
    DESTROY = "destroy"


# The launch proper, in order: what `launching` covers.  LAUNCH_UPDATE_DATA repeats per range and
# LAUNCH_UPDATE_VMSA per vCPU (SEV-ES only).
LAUNCH_SEQUENCE = (
    Step.MAKE_SEV,
    Step.LAUNCH_START,
    Step.ACTIVATE,
    Step.SEV_ENABLE,
    Step.LAUNCH_UPDATE_DATA,
    Step.LAUNCH_UPDATE_VMSA,
    Step.LAUNCH_MEASURE,
)
# The steps the summary's `step` may name: the last one of the launch done (teardown steps are not shown).
PUBLISHED_STEPS = (*LAUNCH_SEQUENCE, Step.LAUNCH_UPDATE_SECRET, Step.LAUNCH_FINISH)
TEARDOWN_STEPS = (Step.DEACTIVATE, Step.DECOMMISSION)
# Steps Xen performs (a domctl, not a PSP command): they do not go through the PSP queue.
XEN_STEPS = frozenset({Step.MAKE_SEV, Step.SEV_ENABLE})
