"""The simulated host's backends, found by sevd through the `sevd.backends` entry point `simulated`.

A configuration with `[psp] backend = "simulated"` and/or `[hypervisor] backend = "simulated"` names
these; sevd itself never imports this package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sevd.abi.units import DomId
from sevd.backends import Presence
from sevd.config import Config
from sevd.errors import InputError
from sevd.psp.device import PspClient
from sevd.toolstack.interface import Toolstack
from sevd.xen.hypervisor import Hypervisor
from sevd.xen.xsclient import Xenstore
from sevd_sim.psp.device import SimulatedPsp
from sevd_sim.toolstack import SimulatedHostToolstack
from sevd_sim.xen import SimulatedXen


class XenWithSimulatedPsp:
    """The real Xen in front of a simulated PSP (the sev=test whole-system test under emulation).

    A real PSP learns of WBINVD from the CPUs; the simulated one must be told, after each WBINVD the daemon
    asks Xen for (between DEACTIVATE and DF_FLUSH).  The WBINVD Xen runs by itself when an SEV domain dies
    is not relayed: the DEACTIVATE that follows it clears the record anyway, and every DF_FLUSH the daemon
    issues comes after its own WBINVD, so the simulated firmware never refuses one the real one would accept.
    """

    def __init__(self, xen: Hypervisor, psp_wbinvd: Callable[[], None]):
        self.xen = xen
        self.psp_wbinvd = psp_wbinvd

    def __getattr__(self, name: str) -> Any:
        return getattr(self.xen, name)

    def wbinvd_all_cpus(self) -> None:
        self.xen.wbinvd_all_cpus()
        self.psp_wbinvd()  # only once Xen has done it: a refused WBINVD must leave DF_FLUSH refused


class SimulatedBackend:
    """The simulated PSP, the simulated Xen and its toolstack, in the host directory the config names."""

    def open_psp(self, config: Config, *, write: bool) -> PspClient:
        try:
            return PspClient(SimulatedPsp(Path(config.psp_path), writable=write))
        except FileNotFoundError as exc:
            raise InputError(f"{config.source}: [psp] path: {exc}") from None

    def psp_presence(self, config: Config) -> Presence:
        return Presence(True, f"simulated PSP at {config.psp_path}")

    def hypervisor_presence(self, config: Config) -> Presence:
        return Presence(True, f"simulated Xen at {config.hypervisor_path}")

    def open_hypervisor(self, config: Config, exists: Callable[[DomId], bool]) -> Hypervisor:
        host = Path(config.hypervisor_path)
        try:
            return SimulatedXen(host, psp_wbinvd=SimulatedPsp(host).wbinvd_all_cpus)
        except FileNotFoundError as exc:
            raise InputError(f"{config.source}: [hypervisor] path: {exc}") from None

    def bind_hypervisor(self, hypervisor: Hypervisor, config: Config) -> Hypervisor:
        if isinstance(hypervisor, SimulatedXen):  # the simulated Xen already tells the simulated PSP
            return hypervisor
        return XenWithSimulatedPsp(hypervisor, SimulatedPsp(Path(config.psp_path)).wbinvd_all_cpus)

    def open_toolstack(self, config: Config, xs: Xenstore) -> Toolstack:
        try:
            return SimulatedHostToolstack(config.hypervisor_path, xs)
        except FileNotFoundError as exc:
            raise InputError(f"{config.source}: [hypervisor] path: {exc}") from None


backend = SimulatedBackend()
