"""The simulated host's CPU: which EPYC generation, and what follows from it for SEV.

CPUID 0x8000001F tells a hypervisor what SEV it may use: EAX bit 3 SEV-ES, bit 10 SME_COHERENT
(hardware keeps caches coherent across encryption keys), ECX the number of ASIDs, EDX the first ASID
for plain SEV (below it: SEV-ES, and SEV-SNP where there is one).  The ES/SEV split is a BIOS setting,
not a property of the silicon; the values here are a sensible configuration per generation, chosen in
docs/simulated-psp.md ("CPU generations").
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CpuModel:
    name: str
    max_asid: int  # CPUID 0x8000001F ECX
    min_sev_asid: int  # CPUID 0x8000001F EDX; 1 = no SEV-ES ASIDs
    es: bool  # EAX bit 3: SEV-ES
    coherent: bool  # EAX bit 10: SME_COHERENT
    ccxs: int  # core complexes the firmware tracks ASIDs and WBINVD_DONE over
    cores_per_ccx: int
    snp: bool = False  # EAX bit 4: SEV-SNP (Milan and later; whether the BIOS enables it is the host's --snp)


CPUS: dict[str, CpuModel] = {
    # Naples (EPYC 7001, Zen 1): 15 ASIDs, no SEV-ES, no coherency; 8 CCXs of 4 cores.
    "naples": CpuModel("naples", 15, 1, es=False, coherent=False, ccxs=8, cores_per_ccx=4),
    # Rome (7002, Zen 2): 509 ASIDs, SEV-ES, still no coherency; 16 CCXs of 4 cores.
    "rome": CpuModel("rome", 509, 100, es=True, coherent=False, ccxs=16, cores_per_ccx=4),
    # Milan (7003, Zen 3): the first with SME_COHERENT; 8 CCXs of 8 cores.
    "milan": CpuModel("milan", 509, 100, es=True, coherent=True, ccxs=8, cores_per_ccx=8, snp=True),
    # Genoa (9004, Zen 4) and Turin (9005, Zen 5): 1006 ASIDs; ES and SNP guests share the low range.
    "genoa": CpuModel("genoa", 1006, 500, es=True, coherent=True, ccxs=12, cores_per_ccx=8, snp=True),
    "turin": CpuModel("turin", 1006, 500, es=True, coherent=True, ccxs=16, cores_per_ccx=8, snp=True),
}

# The simulated host without --cpu: a small, coherent, ES-capable CPU (few ASIDs keep tests quick).
DEFAULT = CpuModel("default", 64, 5, es=True, coherent=True, ccxs=2, cores_per_ccx=4, snp=True)


def cpu_model(name: str | None) -> CpuModel:
    if name is None:
        return DEFAULT
    try:
        return CPUS[name]
    except KeyError:
        raise ValueError(f"unknown CPU {name!r}: one of {', '.join(CPUS)}") from None
