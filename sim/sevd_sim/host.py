"""A simulated host directory: simulated physical memory, PSP and Xen, and a sevd.toml pointing at them.

HOST/memory.img      sparse file, the system-physical memory both the PSP and Xen see
HOST/psp/            the simulated PSP's state, chip identity, mailbox lock
HOST/xen/            the simulated Xen's domains, frames and ASIDs
HOST/sevd.toml       a daemon configuration for this host
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sevd.abi.certs import AmdCert
from sevd.psp.device import PspClient
from sevd_sim.cpu import cpu_model
from sevd_sim.psp.device import SimulatedPsp, create_psp
from sevd_sim.psp.memory import PAGE, PhysicalMemory
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
        max_asid: int | None = None,
        min_sev_asid: int | None = None,
        es: bool | None = None,
        cpu: str | None = None,
        pv_dom0: bool = True,
    ) -> SimulatedHost:
        """`cpu`: the EPYC generation (sevd_sim.cpu.CPUS; None: a small coherent default), which sets the ASID
        counts, SEV-ES and SME_COHERENT; `max_asid`, `min_sev_asid` and `es` override it.  `pv_dom0`: Dom0 is
        a PV guest (Debian's default), so the kernel's WBINVD after INIT reaches one CPU and every ASID stays
        dirty until sevd has Xen WBINVD every CPU and issues DF_FLUSH."""
        model = cpu_model(cpu)
        max_asid = model.max_asid if max_asid is None else max_asid
        min_sev_asid = model.min_sev_asid if min_sev_asid is None else min_sev_asid
        es = model.es if es is None else es
        host = cls(Path(root))
        if host.exists:
            return host
        host.root.mkdir(parents=True, exist_ok=True)
        PhysicalMemory.create(host.root / "memory.img", memory_size).close()
        # On an SEV-ES capable CPU (Rome and later) the kernel INITs the firmware with ES.
        create_psp(
            host.root,
            max_asid=max_asid,
            min_sev_asid=min_sev_asid,
            es=es,
            pv_dom0=pv_dom0,
            topology=(model.ccxs, model.cores_per_ccx),
        )
        SimulatedXen.create(host.root, memory_size // PAGE, max_asid, min_sev_asid, coherent=model.coherent)
        (host.root / "cpu.json").write_text(json.dumps(dataclasses.asdict(model) | {"pv_dom0": pv_dom0}) + "\n")
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
