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
    """Xen refused an SEV operation; the message says which and why, `hint` what to do about it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


@dataclasses.dataclass(frozen=True)
class SevDomain:
    domid: DomId
    asid: Asid
    cbit: int  # the C-bit's position in a guest page-table entry (CPUID 0x8000001F EBX[5:0])


@dataclasses.dataclass(frozen=True)
class SevCapabilities:
    """What the hypervisor says of SEV on this host: the ASID split, the C-bit, what it launches.

    ASIDs 1..min_sev_asid-1 are SEV-ES ASIDs, min_sev_asid..max_asid plain SEV ones.
    """

    source: str  # who answers, as the host checks name it: "Xen", "simulated"
    available: bool  # SEV guests can be launched (the CPU has SEV and the hypervisor enabled it)
    min_sev_asid: int
    max_asid: int
    cbit: int
    es: bool  # the CPU reports SEV-ES
    launches_es: bool  # this hypervisor runs SEV-ES guests (their VMSAs, #VC)
    test_mode: bool = False  # Xen's sev=test: nothing is encrypted
    awaiting_flush: int = 0  # ASIDs of dead SEV domains waiting for WBINVD + DF_FLUSH
    why_unavailable: str = ""  # where to read why SEV is not available, when it is not
    snp_cpu: bool = False  # the CPU reports SEV-SNP (CPUID 0x8000001F EAX bit 4)
    snp: bool = False  # the hypervisor set the RMP up at boot: SNP_INIT can run (docs/snp.md)

    @property
    def es_asids(self) -> range:
        return range(1, self.min_sev_asid)


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

    def pages_owned(self, domid: DomId, asid: Asid, spa_ranges: list[tuple[Spa, int]]) -> bool:
        """Whether the domain still lives, holds `asid`, and owns every page of these system-physical ranges
        (RAM of its own, or its VMSA pages): asked right before each PSP command on guest memory, since the
        addresses were learnt earlier and the frames of a domain that died may belong to another by now.
        False on Xen's refusal; HypervisorError only when it cannot say."""
        ...

    def enable_sev(self, domid: DomId) -> None: ...

    def dirty_asids(self) -> list[Asid]:
        """ASIDs of dead SEV domains that await WBINVD + DF_FLUSH before Xen may reuse them."""
        ...

    def wbinvd_all_cpus(self) -> None:
        """WBINVD on every physical CPU; the firmware requires it between DEACTIVATE and DF_FLUSH."""
        ...

    def flush_guest_pages(self, domid: DomId, spa_ranges: list[tuple[Spa, int]] | None = None) -> None:
        """Write back and invalidate the CPUs' cache lines of these system-physical ranges of the domain
        (None: all its memory).  Needed before the PSP encrypts or writes them in place, and when the guest's
        memory is released, on CPUs without SME_COHERENT (CPUID 0x8000001F EAX bit 10: Naples, Rome), where a
        line written through one key is invisible to, and later overwrites, what the PSP does under another."""
        ...

    def release_pages(self, domid: DomId) -> None:
        """After DECOMMISSION: Xen drops the references it took on the pages named to the PSP (GET_RANGES,
        CHECK_SPA); until then a dead SEV domain's pages stay its own.  Idempotent."""
        ...

    def asids_flushed(self, asids: list[Asid]) -> None:
        """The daemon's DF_FLUSH made these ASIDs clean: Xen may hand them out again."""
        ...

    def domain_exists(self, domid: DomId) -> bool: ...

    def sev_capabilities(self) -> SevCapabilities:
        """The host's SEV as this hypervisor runs it (`xl-sev ok`); HypervisorError when it cannot say."""
        ...

    def close(self) -> None: ...
