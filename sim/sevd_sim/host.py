"""A simulated host directory: simulated physical memory, PSP and Xen, and a sevd.toml pointing at them.

HOST/memory.img      sparse file, the system-physical memory both the PSP and Xen see
HOST/psp/            the simulated PSP's state, chip identity, mailbox lock
HOST/kds/            the key server for the simulated chip: its AMD-signed CEK and the simulated ASK+ARK, laid
                     out as AMD's URL paths (sevd_sim.kds); HOST/simulated-amd-roots/ holds that ARK and ASK
HOST/cache/kds/      sevd's key-server cache on this host
HOST/xen/            the simulated Xen's domains, frames and ASIDs
HOST/sevd.toml       a daemon configuration for this host
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sevd.abi.certs import AmdCert, PlatformChain
from sevd.abi.units import PAGE_SIZE
from sevd.platform import PdhExport, Platform
from sevd.psp.device import PspClient
from sevd_sim import kds
from sevd_sim.cpu import cpu_model
from sevd_sim.psp.device import SimulatedPsp, create_psp
from sevd_sim.psp.linux import DEFAULT_LINUX
from sevd_sim.psp.memory import PhysicalMemory
from sevd_sim.xen import SimulatedXen

DEFAULT_MEMORY = 1 << 30  # 1 GiB of sparse simulated memory


# The KDS product of each EPYC generation with SEV-SNP.
SNP_PRODUCTS = {"milan": "Milan", "genoa": "Genoa", "turin": "Turin"}


def simulated_roots(root: Path) -> tuple[AmdCert, AmdCert]:
    roots = kds.roots_dir(root)
    return (
        AmdCert.parse((roots / "ark.cert").read_bytes(), "simulated ark.cert"),
        AmdCert.parse((roots / "ask.cert").read_bytes(), "simulated ask.cert"),
    )


def owner_chain(root: Path, export: PdhExport, chip_id: bytes) -> PlatformChain:
    """The chain an owner verifies for this host: PDH_CERT_EXPORT's certificates with the CEK the host's key
    server signed in place of the firmware's unsigned one, under the simulated AMD root."""
    chain = export.chain(*simulated_roots(root))
    return dataclasses.replace(chain, cek=kds.signed_cek(root, chip_id))


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
        linux: str = DEFAULT_LINUX,
        snp: bool = False,
    ) -> SimulatedHost:
        """`cpu`: the EPYC generation (sevd_sim.cpu.CPUS; None: a small coherent default), which sets the ASID
        counts, SEV-ES and SME_COHERENT; `max_asid`, `min_sev_asid` and `es` override it.  `pv_dom0`: Dom0 is
        a PV guest (Debian's default), so the kernel's WBINVD after INIT reaches one CPU and every ASID stays
        dirty until sevd has Xen WBINVD every CPU and issues DF_FLUSH.  `snp`: the BIOS enables SEV-SNP (Milan and
        later; docs/snp.md): Xen sets the RMP up at boot, and legacy INIT fails until SNP_INIT has run."""
        snp_product = SNP_PRODUCTS.get(cpu or "milan") if snp else None
        if snp and snp_product is None:
            raise ValueError(f"{cpu} has no SEV-SNP: SNP needs Milan or later")
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
            linux=linux,
            topology=(model.ccxs, model.cores_per_ccx),
            snp=snp_product,
        )
        xen = SimulatedXen.create(
            host.root, memory_size // PAGE_SIZE, max_asid, min_sev_asid, coherent=model.coherent, snp_cpu=model.snp
        )
        if snp:
            xen.setup_rmp()  # Xen's boot: RMP base/end, SNPEn, MSR_VM_HSAVE_PA cleared, WBINVD, before Dom0
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
            'log_level = "info"\n\n'
            "# The simulated chip's key server (AMD's KDS paths, as files), offline; the simulated AMD root is not\n"
            "# one of AMD's generations, so its ask_ark file is named here.\n"
            "[keyserver]\n"
            f'url = "{kds.kds_url(self.root)}"\n'
            f'generation = "{kds.GENERATION}"\n'
            f'cache = "{self.root / "cache" / "kds"}"\n\n'
            "# xl-sev create --attest: the local owner trusts the simulated AMD root, named explicitly (never on a\n"
            "# real host: there the owner trusts AMD's bundled roots only).\n"
            "[owner]\n"
            f'roots = "{kds.roots_dir(self.root)}"\n'
        )

    def psp(self, *, writable: bool = True) -> SimulatedPsp:
        return SimulatedPsp(self.root, writable=writable)

    def client(self) -> PspClient:
        return PspClient(self.psp())

    def simulated_roots(self) -> tuple[AmdCert, AmdCert]:
        """(ark, ask) of the simulated chip's simulated AMD root (real platforms chain to AMD's own)."""
        return simulated_roots(self.root)

    def owner_chain(self) -> PlatformChain:
        """The full chain of this host's chip, as an owner verifies it (see `owner_chain`)."""
        platform = Platform(self.client())
        return owner_chain(self.root, platform.pdh_cert_export(), platform.get_id())

    def xen(self) -> SimulatedXen:
        psp = self.psp()
        return SimulatedXen(self.root, psp_wbinvd=psp.wbinvd_all_cpus)
