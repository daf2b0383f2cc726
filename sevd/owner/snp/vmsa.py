"""The initial VMSA pages an SNP launch measures (LAUNCH_UPDATE page type VMSA), per VMM.

The page is the SEV-ES save area of `sevd.abi.vmsa` (the architectural reset state) with what SNP and each VMM
add: SEV_FEATURES (the guest features, bit 0 SNPActive), the CPUID signature in RDX, x87/SSE reset values, and
the VMM's own segment attribute choices.  The values per VMM are those QEMU/KVM and AWS EC2 use, as virtee's
sev-snp-measure records them (the tests compare digests with it byte for byte):

| | CS attrib | SS attrib | TR attrib | RDX | MXCSR | x87 FCW |
|---|---|---|---|---|---|---|
| QEMU | 0x9b | 0x93 | 0x8b | vCPU signature | 0x1f80 | 0x37f |
| EC2 | 0x9a for the BSP, else 0x9b | 0x92 | 0x83 | 0x600 | 0 | 0 |

Xen PVH (the convention sevd's SNP launch uses, docs/snp.md): the BSP starts at the kernel's PVH entry
(XEN_ELFNOTE_PHYS32_ENTRY) in the state of Xen's PVH boot ABI (docs/misc/pvh.pandoc), with the attribute values
Xen's own HVM vCPU setup gives: flat 32-bit segments (CS 0xc9b, DS/ES/SS/FS/GS 0xc93, base 0, limit 4 GiB - 1),
TR a busy 32-bit TSS (0x8b, limit 0x67), CR0 = PE|ET, RBX = the hvm_start_info GPA, RDX = the vCPU signature,
EFER.SVME, SEV_FEATURES, the reset PAT, XCR0 = 1, MXCSR 0x1f80, FCW 0x37f.  Only the BSP's VMSA is measured:
an SNP guest's APs are created by the guest itself (SNP AP creation, GHCB protocol version 2).
"""

from __future__ import annotations

import enum
import struct

from sevd.abi import vmsa as es_vmsa
from sevd.errors import InputError

# Offsets in the save area beyond those sevd.abi.vmsa names (APM vol. 2 table B-4; Linux struct sev_es_save_area).
RDX, RBX = 0x310, 0x318
SEV_FEATURES = 0x3B0
MXCSR, X87_FCW = 0x408, 0x410
_SEG = struct.Struct("<HHIQ")
_SEG_INDEX = {name: i for i, name in enumerate(("es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr"))}
EC2_RDX = 0x600


class VmmType(enum.Enum):
    QEMU = "QEMU"
    EC2 = "EC2"
    XEN_PVH = "xen-pvh"

    @classmethod
    def parse(cls, text: str) -> VmmType:
        for vmm in cls:
            if text.lower() == vmm.value.lower():
                return vmm
        raise InputError(f"--vmm-type {text!r}: expected one of {', '.join(v.value for v in cls)}")


def _put(page: bytearray, offset: int, value: int, size: int = 8) -> None:
    page[offset : offset + size] = value.to_bytes(size, "little")


def _set_attrib(page: bytearray, segment: str, attrib: int) -> None:
    _put(page, _SEG_INDEX[segment] * _SEG.size + 2, attrib, 2)


def _set_segment(page: bytearray, segment: str, selector: int, attrib: int, limit: int, base: int) -> None:
    _SEG.pack_into(page, _SEG_INDEX[segment] * _SEG.size, selector, attrib, limit, base)


def snp_vmsa(eip: int, vcpu_sig: int, guest_features: int, vmm: VmmType) -> bytes:
    """The VMSA of an OVMF guest's vCPU starting at `eip` (the BSP: 0xFFFFFFF0; APs: the SEV-ES reset block)."""
    if vmm is VmmType.XEN_PVH:
        raise InputError("a Xen PVH VMSA starts at the kernel's entry: use pvh_vmsa")
    page = bytearray(es_vmsa.reset_vmsa(eip))
    if vmm is VmmType.QEMU:
        _set_attrib(page, "tr", 0x8B)
        _put(page, RDX, vcpu_sig)
        _put(page, MXCSR, 0x1F80, 4)
        _put(page, X87_FCW, 0x37F, 2)
    else:  # EC2
        if eip == es_vmsa.BSP_RESET_EIP:
            _set_attrib(page, "cs", 0x9A)
        _set_attrib(page, "ss", 0x92)
        _put(page, RDX, EC2_RDX)
    _put(page, SEV_FEATURES, guest_features)
    return bytes(page)


def ovmf_vmsas(vcpus: int, ap_eip: int, vcpu_sig: int, guest_features: int, vmm: VmmType) -> list[bytes]:
    """One VMSA per vCPU, the BSP first, the APs starting at OVMF's SEV-ES reset block."""
    if vcpus < 1:
        raise InputError(f"--vcpus {vcpus}: a guest has at least one vCPU")
    bsp = snp_vmsa(es_vmsa.BSP_RESET_EIP, vcpu_sig, guest_features, vmm)
    ap = snp_vmsa(ap_eip, vcpu_sig, guest_features, vmm)
    return [bsp] + [ap] * (vcpus - 1)


CR0_PE_ET = 0x11
FLAT_LIMIT = 0xFFFFFFFF
PVH_CODE, PVH_DATA, PVH_TSS = 0xC9B, 0xC93, 0x8B
PVH_TSS_LIMIT = 0x67


def pvh_vmsa(entry: int, start_info_gpa: int, vcpu_sig: int, guest_features: int) -> bytes:
    """The BSP of a Xen PVH guest at its PHYS32 entry (see the module doc for the convention)."""
    page = bytearray(es_vmsa.reset_vmsa())
    _set_segment(page, "cs", 0, PVH_CODE, FLAT_LIMIT, 0)
    for seg in ("ds", "es", "ss", "fs", "gs"):
        _set_segment(page, seg, 0, PVH_DATA, FLAT_LIMIT, 0)
    _set_segment(page, "tr", 0, PVH_TSS, PVH_TSS_LIMIT, 0)
    _put(page, es_vmsa.CR0, CR0_PE_ET)
    _put(page, es_vmsa.CR4, 0)
    _put(page, es_vmsa.RIP, entry)
    _put(page, RBX, start_info_gpa)
    _put(page, RDX, vcpu_sig)
    _put(page, MXCSR, 0x1F80, 4)
    _put(page, X87_FCW, 0x37F, 2)
    _put(page, SEV_FEATURES, guest_features)
    return bytes(page)


def cpu_sig(family: int, model: int, stepping: int) -> int:
    """CPUID Fn0000_0001_EAX from family, model and stepping (AMD CPUID specification #25481)."""
    family_low, family_high = (0xF, (family - 0xF) & 0xFF) if family > 0xF else (family, 0)
    return (family_high << 20) | ((model >> 4 & 0xF) << 16) | (family_low << 8) | ((model & 0xF) << 4) | stepping & 0xF


# QEMU's built-in x86 CPU models (target/i386/cpu.c builtin_x86_defs) and their family/model/stepping.
_EPYC = cpu_sig(23, 1, 2)
_ROME = cpu_sig(23, 49, 0)
_MILAN = cpu_sig(25, 1, 1)
_GENOA = cpu_sig(25, 17, 0)
VCPU_TYPES = {
    "EPYC": _EPYC,
    "EPYC-v1": _EPYC,
    "EPYC-v2": _EPYC,
    "EPYC-IBPB": _EPYC,
    "EPYC-v3": _EPYC,
    "EPYC-v4": _EPYC,
    "EPYC-Rome": _ROME,
    "EPYC-Rome-v1": _ROME,
    "EPYC-Rome-v2": _ROME,
    "EPYC-Rome-v3": _ROME,
    "EPYC-Milan": _MILAN,
    "EPYC-Milan-v1": _MILAN,
    "EPYC-Milan-v2": _MILAN,
    "EPYC-Genoa": _GENOA,
    "EPYC-Genoa-v1": _GENOA,
    "EPYC-Turin": cpu_sig(26, 0, 0),
}
