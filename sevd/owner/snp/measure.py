"""The SNP launch digest a guest owner expects: what `sev-snp-measure --mode snp` computes for an OVMF guest, and
what sevd measures for a Xen PVH guest (the convention in docs/snp.md, "The owner's tools").

Every page extends the digest by the rule of `sevd.abi.snp.extend` (PAGE_INFO, SHA-384), starting from 48 zero
bytes.  OVMF guest (QEMU, EC2): the whole image as NORMAL pages at its GPAs (ending at 4 GiB); then each SEV
metadata section in order: SNP_SEC_MEM as ZERO pages, SNP_SECRETS as the SECRETS page, CPUID as the CPUID page
(on EC2 the CPUID pages come after all other sections), SNP_KERNEL_HASHES as the NORMAL page holding the SEV
hashes table when a kernel is given (else ZERO pages), SVSM_CAA as ZERO pages; then one VMSA page per vCPU.
Xen PVH guest: the kernel and module0 segments as libxenguest fills them (`sevd.owner.pvh`) as NORMAL pages at
their GPAs; then the BSP's VMSA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sevd.abi import snp
from sevd.abi.snp import PageType
from sevd.errors import InputError
from sevd.owner.pvh import PvhImage
from sevd.owner.snp import hashes
from sevd.owner.snp.ovmf import OvmfImage, SectionType
from sevd.owner.snp.vmsa import VmmType, ovmf_vmsas, pvh_vmsa

PAGE = 4096


@dataclass
class LaunchDigest:
    """The running digest of an SNP launch; `pages` counts the SNP_LAUNCH_UPDATE pages."""

    digest: bytes = snp.ZERO_DIGEST
    pages: int = 0
    vmsas: list[bytes] = field(default_factory=list)

    def update(self, page_type: PageType, gpa: int, data: bytes | None = None, length: int = PAGE) -> None:
        """Measure [gpa, gpa + length) as `page_type` pages (NORMAL pages from `data`)."""
        if gpa % PAGE or length % PAGE:
            raise InputError(f"SNP pages are measured 4 KiB at a time: [{gpa:#x}, +{length:#x}) is not aligned")
        for off in range(0, length, PAGE):
            page = data[off : off + PAGE] if data is not None else None
            self.digest = snp.extend(self.digest, page_type, gpa + off, page)
            self.pages += 1

    def vmsa(self, page: bytes) -> None:
        self.digest = snp.extend(self.digest, PageType.VMSA, snp.VMSA_GPA, page)
        self.pages += 1
        self.vmsas.append(page)


@dataclass(frozen=True)
class KernelHashes:
    """QEMU's -kernel/-initrd/-append, measured through OVMF's SEV hashes table."""

    kernel: bytes = field(repr=False)
    initrd: bytes | None = field(default=None, repr=False)
    cmdline: str | None = None


def ovmf_digest(
    ovmf: OvmfImage,
    vcpus: int,
    vcpu_sig: int,
    guest_features: int,
    vmm: VmmType = VmmType.QEMU,
    kernel: KernelHashes | None = None,
) -> LaunchDigest:
    if vmm is VmmType.XEN_PVH:
        raise InputError("--vmm-type xen-pvh measures a PVH kernel (--pvh-kernel), not OVMF")
    if not ovmf.sections:
        raise InputError(f"{ovmf.name}: has no SEV metadata (OvmfSevMetadata): not an SNP-capable OVMF build")
    if kernel is not None and not ovmf.has_section(SectionType.SNP_KERNEL_HASHES):
        raise InputError(f"{ovmf.name}: a kernel was given but this OVMF has no SNP_KERNEL_HASHES section")
    ld = LaunchDigest()
    ld.update(PageType.NORMAL, ovmf.gpa, ovmf.data, len(ovmf.data))

    def kernel_hashes(gpa: int, size: int) -> None:
        if kernel is None:
            ld.update(PageType.ZERO, gpa, length=size)
            return
        page = hashes.hashes_page(kernel.kernel, kernel.initrd, kernel.cmdline, ovmf.sev_hashes_table_gpa() % PAGE)
        if size != PAGE:
            raise InputError(f"{ovmf.name}: the SNP_KERNEL_HASHES section is {size:#x} bytes, expected one page")
        ld.update(PageType.NORMAL, gpa, page)

    measure: dict[SectionType, Callable[[int, int], None]] = {
        SectionType.SNP_SEC_MEM: lambda gpa, size: ld.update(PageType.ZERO, gpa, length=size),
        SectionType.SNP_SECRETS: lambda gpa, size: ld.update(PageType.SECRETS, gpa),
        SectionType.CPUID: lambda gpa, size: None if vmm is VmmType.EC2 else ld.update(PageType.CPUID, gpa),
        SectionType.SNP_KERNEL_HASHES: kernel_hashes,
        SectionType.SVSM_CAA: lambda gpa, size: ld.update(PageType.ZERO, gpa, length=size),
    }
    for section in ovmf.sections:
        measure[section.type](section.gpa, section.size)
    if vmm is VmmType.EC2:  # EC2 measures the CPUID pages last
        for section in ovmf.sections:
            if section.type == SectionType.CPUID:
                ld.update(PageType.CPUID, section.gpa)
    for page in ovmf_vmsas(vcpus, ovmf.sev_es_reset_eip(), vcpu_sig, guest_features, vmm):
        ld.vmsa(page)
    return ld


@dataclass(frozen=True)
class PvhLayout:
    """Where the PVH segments sit in guest-physical memory."""

    kernel_gpa: int
    module_gpa: int | None
    start_info_gpa: int


def pvh_layout(image: PvhImage, module_gpa: int | None = None, start_info_gpa: int | None = None) -> PvhLayout:
    """libxenguest's placement: kernel at its lowest p_paddr; module0 right after it; the hvm_start_info segment
    after both.  A kernel asking for an unmapped initrd (XEN_ELFNOTE_MOD_START_PFN) has the start info right after
    the kernel and module0 after that, at an address that depends on the command line: give it (`module_gpa`)."""
    kernel_end = image.kernel_start + image.kernel_pages * PAGE
    if image.module_size is None:
        return PvhLayout(image.kernel_start, None, kernel_end if start_info_gpa is None else start_info_gpa)
    if image.module_after_start_info:
        if module_gpa is None:
            raise InputError(
                "this kernel asks for an unmapped initrd (XEN_ELFNOTE_MOD_START_PFN): the ramdisk follows the "
                "hvm_start_info segment, whose size depends on the command line; give --pvh-module-gpa"
            )
        return PvhLayout(image.kernel_start, module_gpa, kernel_end if start_info_gpa is None else start_info_gpa)
    module = kernel_end if module_gpa is None else module_gpa
    after = module + image.module_pages * PAGE
    return PvhLayout(image.kernel_start, module, after if start_info_gpa is None else start_info_gpa)


def pvh_digest(image: PvhImage, layout: PvhLayout, vcpu_sig: int, guest_features: int) -> LaunchDigest:
    ld = LaunchDigest()
    kernel_bytes = image.kernel_pages * PAGE
    ld.update(PageType.NORMAL, layout.kernel_gpa, image.data[:kernel_bytes], kernel_bytes)
    if layout.module_gpa is not None:
        module = image.data[kernel_bytes:]
        ld.update(PageType.NORMAL, layout.module_gpa, module, len(module))
    ld.vmsa(pvh_vmsa(image.entry, layout.start_info_gpa, vcpu_sig, guest_features))
    return ld
