"""The journal record: everything the daemon knows of one guest's launch, as a plain value.

`sevd.daemon.records` makes it durable; the launch core reads it and returns the next one.  No secret is
ever held here (the launch session blob is wrapped for the firmware; TEK/TIK never reach the host).
"""

from __future__ import annotations

import dataclasses

from sevd.abi.units import NO_HANDLE, Asid, DomId, Gpa, Handle
from sevd.launch.states import GuestState, Step


@dataclasses.dataclass
class GuestRecord:
    domid: DomId
    generation: int
    policy: int
    es: bool
    attest: bool
    image_gpa: Gpa
    image_size: int
    state: GuestState = GuestState.QUEUED
    image_more: list[list[int]] = dataclasses.field(default_factory=list)  # further [gpa, size] pieces
    step: Step | None = None  # last step completed; None before the first
    pending: Step | None = None  # step in flight: it may or may not have reached the firmware
    handle: Handle = NO_HANDLE
    asid: Asid = Asid(0)  # none bound yet
    ranges_done: int = 0
    vmsas_done: int = 0
    measurement: str | None = None  # base64 of measure(32) || mnonce(16)
    error: str | None = None
    name: str | None = None  # the request's, for the summaries written from the journal (after a restart too)
    # LAUNCH_UPDATE_DATA was named in flight: the image may be encrypted in place, so it is never measured again
    image_encrypted: bool = False

    @property
    def encrypted(self) -> bool:
        """Whether the domain's image may be encrypted already (older journals: a range was done)."""
        return self.image_encrypted or self.ranges_done > 0

    def __post_init__(self) -> None:
        # Records are read back from JSON (plain strings), and older sevd versions wrote other step names
        # and "NEW" for no step yet.
        self.state = GuestState(self.state)
        self.step = None if self.step in (None, "NEW") else Step(self.step)
        self.pending = None if self.pending is None else Step(self.pending)


@dataclasses.dataclass(frozen=True)
class Launch:
    """What a valid request node asks for (the shell parses the node; the core never sees xenstore)."""

    domid: DomId
    generation: int
    policy: int
    es: bool
    attest: bool
    image_gpa: Gpa
    image_size: int
    image_more: tuple[tuple[int, int], ...] = ()
    name: str | None = None

    def record(self) -> GuestRecord:
        """The record a launch of this request starts with: launching, its first step already in flight
        (the launch starts with it at once, so this record is that step's "before" record too)."""
        return GuestRecord(
            domid=self.domid,
            generation=self.generation,
            policy=self.policy,
            es=self.es,
            attest=self.attest,
            image_gpa=self.image_gpa,
            image_size=self.image_size,
            image_more=[list(piece) for piece in self.image_more],
            state=GuestState.LAUNCHING,
            pending=Step.MAKE_SEV,
            name=self.name,
        )


@dataclasses.dataclass(frozen=True)
class Layout:
    """How many LAUNCH_UPDATE_DATA ranges and LAUNCH_UPDATE_VMSA pages the launch has (asked of Xen)."""

    ranges: int
    vmsas: int = 0
