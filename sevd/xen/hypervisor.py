"""The hypervisor seam: what sevd needs from Xen.

On a real host these operations are the one domctl our Xen patches add (xen-patches/xen), reached
through libxencall (`sevd.xen.domctl.DomctlXen`); `sevd.backends.open_hypervisor` picks the backend
a configuration names.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from sevd.errors import SevdError


class HypervisorError(SevdError):
    """Xen refused an SEV operation; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class SevDomain:
    domid: int
    asid: int
    cbit: int


class Hypervisor(Protocol):
    def make_sev_domain(self, domid: int, es: bool) -> SevDomain: ...

    def boot_image_ranges(self, domid: int) -> list[tuple[int, int]]:
        """System-physical (start, length) ranges of the boot image, in guest-frame order, coalesced."""
        ...

    def guest_ranges(self, domid: int, gpa: int, length: int) -> list[tuple[int, int]]:
        """System-physical (start, length) ranges backing [gpa, gpa+length) of the domain, coalesced."""
        ...

    def vmsa_pages(self, domid: int) -> list[int]:
        """SEV-ES: system-physical addresses of each vCPU's VMSA page (vCPU 0 first), reset state written."""
        ...

    def enable_sev(self, domid: int) -> None: ...

    def dirty_asids(self) -> list[int]:
        """ASIDs of dead SEV domains that await WBINVD + DF_FLUSH before Xen may reuse them."""
        ...

    def wbinvd_all_cpus(self) -> None:
        """WBINVD on every physical CPU; the firmware requires it between DEACTIVATE and DF_FLUSH."""
        ...

    def flush_guest_pages(self, domid: int, spa_ranges: list[tuple[int, int]] | None = None) -> None:
        """Write back and invalidate the CPUs' cache lines of these system-physical ranges of the domain
        (None: all its memory).  Needed before the PSP encrypts or writes them in place, and when the guest's
        memory is released, on CPUs without SME_COHERENT (CPUID 0x8000001F EAX bit 10: Naples, Rome), where a
        line written through one key is invisible to, and later overwrites, what the PSP does under another."""
        ...

    def asids_flushed(self, asids: list[int]) -> None:
        """The daemon's DF_FLUSH made these ASIDs clean: Xen may hand them out again."""
        ...

    def domain_exists(self, domid: int) -> bool: ...
