"""A simulated host directory: simulated physical memory, PSP and Xen, and a sevd.toml pointing at them.

HOST/memory.img      sparse file, the system-physical memory both the PSP and Xen see
HOST/psp/            the simulated PSP's state, chip identity, mailbox lock
HOST/xen/            the simulated Xen's domains, frames and ASIDs
HOST/sevd.toml       a daemon configuration for this host
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sevd.abi.certs import AmdCert
from sevd.abi.units import PAGE_SIZE
from sevd.psp.device import PspClient
from sevd_sim.psp.device import DEFAULT_MAX_ASID, DEFAULT_MIN_SEV_ASID, SimulatedPsp, create_psp
from sevd_sim.psp.linux import DEFAULT_LINUX
from sevd_sim.psp.memory import PhysicalMemory
from sevd_sim.xen import SimulatedXen

DEFAULT_MEMORY = 1 << 30  # 1 GiB of sparse simulated memory


def simulated_roots(root: Path) -> tuple[AmdCert, AmdCert]:
    ident = Path(root) / "psp" / "identity"
    return (
        AmdCert.parse((ident / "ark.cert").read_bytes(), "simulated ark.cert"),
        AmdCert.parse((ident / "ask.cert").read_bytes(), "simulated ask.cert"),
    )


@dataclasses.dataclass
class SimulatedHost:
    root: Path

    @property
    def exists(self) -> bool:
        return (self.root / "psp" / "state.json").exists() and (self.root / "xen" / "domains.json").exists()

    @classmethod
    def create(
        cls,
        root: Path | str,
        *,
        memory_size: int = DEFAULT_MEMORY,
        max_asid: int = DEFAULT_MAX_ASID,
        min_sev_asid: int = DEFAULT_MIN_SEV_ASID,
        es: bool = True,
        linux: str = DEFAULT_LINUX,
    ) -> SimulatedHost:
        host = cls(Path(root))
        if host.exists:
            return host
        host.root.mkdir(parents=True, exist_ok=True)
        PhysicalMemory.create(host.root / "memory.img", memory_size).close()
        # An SEV-ES capable CPU (Rome and later): the kernel INITs the firmware with ES.
        create_psp(host.root, max_asid=max_asid, min_sev_asid=min_sev_asid, es=es, linux=linux)
        SimulatedXen.create(host.root, memory_size // PAGE_SIZE, max_asid, min_sev_asid)
        (host.root / "sevd.toml").write_text(host.config_text())
        return host

    def config_text(self) -> str:
        return (
            "# sevd configuration for the simulated host in this directory (generated).\n"
            "[psp]\n"
            'backend = "simulated"\n'
            f'path = "{self.root}"\n\n'
            "[xenstore]\n"
            f'socket = "{self.root / "xenstored.sock"}"\n\n'
            "[hypervisor]\n"
            'backend = "simulated"\n'
            f'path = "{self.root}"\n\n'
            "[daemon]\n"
            f'state_dir = "{self.root / "sevd-state"}"\n'
            'log_level = "info"\n'
        )

    def psp(self, *, writable: bool = True) -> SimulatedPsp:
        return SimulatedPsp(self.root, writable=writable)

    def client(self) -> PspClient:
        return PspClient(self.psp())

    def simulated_roots(self) -> tuple[AmdCert, AmdCert]:
        """(ark, ask) of the simulated chip's simulated AMD root (real platforms chain to AMD's own)."""
        return simulated_roots(self.root)

    def xen(self) -> SimulatedXen:
        psp = self.psp()
        return SimulatedXen(self.root, psp_wbinvd=psp.wbinvd_all_cpus)
