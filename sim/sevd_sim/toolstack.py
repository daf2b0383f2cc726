"""The simulated host's toolstack: what `xl create -p`, `xl unpause` and `xl destroy` do, on the simulated Xen.

It writes the standard /local/domain/<domid> nodes, INTRODUCE and RELEASE (so @introduceDomain and
@releaseDomain fire) as xl and xenstored do.
"""

from __future__ import annotations

from pathlib import Path

from sevd.abi.units import DomId, Gpa
from sevd.errors import SevdError
from sevd.xen import xlcfg
from sevd.xen.hypervisor import HypervisorError
from sevd.xen.xsclient import Xenstore
from sevd_sim.xen import SimulatedXen


class SimulatedToolstack:
    def __init__(self, host: Path | str, xs: Xenstore):
        from sevd_sim.psp.device import SimulatedPsp

        self.host = Path(host)
        self.xs = xs
        self.xen = SimulatedXen(self.host, psp_wbinvd=SimulatedPsp(self.host).wbinvd_all_cpus)

    def create(self, name: str, memory_mb: int, image: bytes, vcpus: int = 1) -> DomId:
        """`xl create -p`: the domain exists, paused, with its boot image in memory."""
        domid = self.xen.create_domain(name, memory_mb, image, vcpus)
        home = f"/local/domain/{domid}"
        self.xs.write_many(home, {"name": name, "domid": str(domid), "memory/target": str(memory_mb * 1024)})
        self.xs.set_perms(home, (f"n{domid}", "r0"))
        self.xs.introduce(domid, 0xFEFFF, 1)  # as xl does; mfn and event channel are placeholders here
        return domid

    def image_location(self, domid: DomId) -> tuple[Gpa, int]:
        dom = self.xen.domains()[domid]
        return dom["image_gpa"], dom["image_size"]

    def unpause(self, domid: DomId) -> None:
        self.xen.unpause(domid)

    def destroy(self, domid: DomId) -> None:
        """`xl destroy`: the domain dies (Xen WBINVDs), its nodes go, xenstored fires @releaseDomain."""
        self.xen.destroy(domid)
        self.xs.rm(f"/local/domain/{domid}")
        self.xs.release(domid)


class SimulatedHostToolstack:
    """The `Toolstack` xl-sev uses on a simulated host."""

    def __init__(self, host: Path | str, xs: Xenstore):
        self.sim = SimulatedToolstack(host, xs)

    def create(self, guest: xlcfg.GuestConfig, image: bytes | None) -> DomId:
        if image is None:  # a plain guest's image: loaded as xl would, though nothing measures it
            xlcfg.check_image(guest.image, guest.memory_mb)
            image = guest.read_image()
        try:
            return self.sim.create(guest.name, guest.memory_mb, image, guest.vcpus)
        except HypervisorError as exc:
            raise SevdError(f"XEN_ERROR: {exc}") from None

    def image_location(self, domid: DomId, image_size: int) -> list[tuple[Gpa, int]]:
        return [self.sim.image_location(domid)]

    def unpause(self, domid: DomId) -> None:
        self.sim.unpause(domid)

    def destroy(self, domid: DomId) -> None:
        if self.sim.xen.domain_exists(
            DomId(domid)
        ):  # a simulated domain can die under xl-sev's feet, as with `xl destroy`
            self.sim.destroy(domid)
