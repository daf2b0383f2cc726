"""The hypervisor seam: what sevd needs from Xen.

On a real host these operations are the one domctl our Xen patches add (xen-patches/xen), reached
through libxencall (`sevd.xen.domctl.DomctlXen`); `sevd.backends.open_hypervisor` picks the backend
a configuration names.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from sevd.abi.units import Asid, DomId, Gpa, Spa
from sevd.errors import SevdError


class HypervisorError(SevdError):
    """Xen refused an SEV operation; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class SevDomain:
    domid: DomId
    asid: Asid
    cbit: int  # the C-bit's position in a guest page-table entry (CPUID 0x8000001F EBX[5:0])


class Hypervisor(Protocol):
    def make_sev_domain(self, domid: DomId, es: bool) -> SevDomain: ...

    def boot_image_ranges(self, domid: DomId) -> list[tuple[Spa, int]]:
        """System-physical (start, length) ranges of the boot image, in guest-frame order, coalesced."""
        ...

    def guest_ranges(self, domid: DomId, gpa: Gpa, length: int) -> list[tuple[Spa, int]]:
        """System-physical (start, length) ranges backing [gpa, gpa+length) of the domain, coalesced."""
        ...

    def vmsa_pages(self, domid: DomId) -> list[Spa]:
        """SEV-ES: system-physical addresses of each vCPU's VMSA page (vCPU 0 first), reset state written."""
        ...

    def enable_sev(self, domid: DomId) -> None: ...

    def dirty_asids(self) -> list[Asid]:
        """ASIDs of dead SEV domains that await WBINVD + DF_FLUSH before Xen may reuse them."""
        ...

    def wbinvd_all_cpus(self) -> None:
        """WBINVD on every physical CPU; the firmware requires it between DEACTIVATE and DF_FLUSH."""
        ...

    def asids_flushed(self, asids: list[Asid]) -> None:
        """The daemon's DF_FLUSH made these ASIDs clean: Xen may hand them out again."""
        ...

    def domain_exists(self, domid: DomId) -> bool: ...
