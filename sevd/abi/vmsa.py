"""The initial VMSA of an SEV-ES vCPU: the register state at reset, as the guest owner recomputes it.

For SEV-ES the launch digest covers each vCPU's VMSA page (LAUNCH_UPDATE_VMSA), so the owner must
know its exact bytes.  They are the architectural reset state (AMD APM vol. 2, "Processor
Initialization State") laid out as the SEV-ES save area (APM vol. 2, table "VMSA Layout, State Save
Area for SEV-ES"; Linux's struct sev_es_save_area).  Only the fields a reset sets are non-zero.
The hypervisor (Xen) writes this same page, and the owner computes it with `reset_vmsa`.
"""

from __future__ import annotations

import struct

from sevd.abi.commands import VMSA_SIZE

# Offsets in the SEV-ES save area.
_SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr")  # 16 bytes each from 0x000
EFER, CR4, CR3, CR0, DR7, DR6, RFLAGS, RIP = 0xD0, 0x148, 0x150, 0x158, 0x160, 0x168, 0x170, 0x178
G_PAT, XCR0 = 0x268, 0x3E8

_SEG = struct.Struct("<HHIQ")  # selector, attrib, limit, base

EFER_SVME = 1 << 12
RESET_PAT = 0x0007040600070406
BSP_RESET_EIP = 0xFFFFFFF0


def reset_vmsa(reset_eip: int = BSP_RESET_EIP) -> bytes:
    """The 4 KiB VMSA of a vCPU at reset, starting at `reset_eip` (the BSP: 0xFFFFFFF0).

    An AP of an SEV-ES guest starts where the firmware's SEV-ES reset block says; CS base and IP
    are split from that address as the reset state splits 0xFFFFFFF0.
    """
    page = bytearray(VMSA_SIZE)
    segments = {name: (0, 0x93, 0xFFFF, 0) for name in ("es", "ss", "ds", "fs", "gs")}
    segments["cs"] = (0xF000, 0x9B, 0xFFFF, reset_eip & 0xFFFF0000)
    segments["gdtr"] = (0, 0, 0xFFFF, 0)
    segments["idtr"] = (0, 0, 0xFFFF, 0)
    segments["ldtr"] = (0, 0x82, 0xFFFF, 0)
    segments["tr"] = (0, 0x83, 0xFFFF, 0)
    for index, name in enumerate(_SEGMENTS):
        _SEG.pack_into(page, index * _SEG.size, *segments[name])
    for offset, value in (
        (EFER, EFER_SVME),
        (CR4, 0x40),  # MCE
        (CR0, 0x10),  # ET
        (DR7, 0x400),
        (DR6, 0xFFFF0FF0),
        (RFLAGS, 0x2),
        (RIP, reset_eip & 0xFFFF),
        (G_PAT, RESET_PAT),
        (XCR0, 0x1),
    ):
        struct.pack_into("<Q", page, offset, value)
    return bytes(page)


def reset_vmsas(vcpus: int, ap_reset_eip: int | None = None) -> list[bytes]:
    """The VMSA pages of a guest with `vcpus` vCPUs, in the order they are measured (vCPU 0 first)."""
    if vcpus < 1:
        raise ValueError("a guest has at least one vCPU")
    ap_eip = BSP_RESET_EIP if ap_reset_eip is None else ap_reset_eip
    return [reset_vmsa(BSP_RESET_EIP)] + [reset_vmsa(ap_eip) for _ in range(vcpus - 1)]
