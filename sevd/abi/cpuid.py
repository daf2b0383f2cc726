"""CPUID leaf 0x8000001F, AMD memory encryption (AMD APM vol. 3, "Function 8000_001Fh"): the one decoding of it.

EAX  bit 0 SME, bit 1 SEV, bit 3 SEV-ES, bit 4 SEV-SNP
EBX  bits 5:0 the C-bit's position in a page-table entry; bits 11:6 physical-address bits lost to it
ECX  how many ASIDs the CPU can hold encrypted guests in (the highest SEV ASID)
EDX  the lowest ASID for a plain SEV guest: ASIDs 1..EDX-1 are SEV-ES (and SNP) ones
"""

from __future__ import annotations

import dataclasses
import enum

LEAF = 0x8000001F


class Feature(enum.IntFlag):
    """EAX of leaf 0x8000001F."""

    SME = 1 << 0
    SEV = 1 << 1
    PAGE_FLUSH_MSR = 1 << 2
    SEV_ES = 1 << 3
    SEV_SNP = 1 << 4


CBIT_MASK = 0x3F  # EBX[5:0]
PHYS_REDUCTION_SHIFT, PHYS_REDUCTION_MASK = 6, 0x3F  # EBX[11:6]


@dataclasses.dataclass(frozen=True)
class MemoryEncryption:
    """Leaf 0x8000001F decoded."""

    features: Feature
    cbit: int
    phys_reduction: int
    max_asid: int  # ECX
    min_sev_asid: int  # EDX

    @property
    def sev(self) -> bool:
        return Feature.SEV in self.features

    @property
    def es(self) -> bool:
        return Feature.SEV_ES in self.features

    @property
    def snp(self) -> bool:
        return Feature.SEV_SNP in self.features

    @classmethod
    def decode(cls, eax: int, ebx: int, ecx: int, edx: int) -> MemoryEncryption:
        return cls(
            features=Feature(eax & sum(Feature)),
            cbit=ebx & CBIT_MASK,
            phys_reduction=(ebx >> PHYS_REDUCTION_SHIFT) & PHYS_REDUCTION_MASK,
            max_asid=ecx,
            min_sev_asid=edx,
        )

    def encode(self) -> tuple[int, int, int, int]:
        """(EAX, EBX, ECX, EDX) as the CPU reports them."""
        ebx = (self.cbit & CBIT_MASK) | (self.phys_reduction & PHYS_REDUCTION_MASK) << PHYS_REDUCTION_SHIFT
        return int(self.features), ebx, self.max_asid, self.min_sev_asid

    @classmethod
    def from_bytes(cls, raw: bytes) -> MemoryEncryption:
        """The 16 bytes the Linux cpuid driver answers for the leaf (EAX, EBX, ECX, EDX, little-endian)."""
        if len(raw) != 16:
            raise ValueError(f"CPUID {LEAF:#x}: expected 16 bytes, got {len(raw)}")
        eax, ebx, ecx, edx = (int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4))
        return cls.decode(eax, ebx, ecx, edx)
