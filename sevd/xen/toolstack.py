"""Toolstack actions as `xl-sev` drives them: create paused, request the SEV launch, unpause, destroy.

On a real host these are the stock toolstack's `xl create -p`, `xl unpause` and `xl destroy` (no
toolstack patch); on a simulated host `SimulatedToolstack` does the same to the simulated Xen and
writes the standard /local/domain/<domid> nodes, INTRODUCE and RELEASE (so @introduceDomain and
@releaseDomain fire) as xl and xenstored do.  The SEV request itself is written the same way on
both, through the protocol module.
"""

from __future__ import annotations

from pathlib import Path

from sevd.xen import protocol as proto
from sevd.xen.hypervisor import SimulatedXen
from sevd.xen.xsclient import Xenstore


def request_launch(xs: Xenstore, request: proto.LaunchRequest) -> None:
    """Write the launch request; `generation` goes last in the same transaction, submitting it."""
    xs.write_many(proto.guest_path(request.domid, "request"), request.to_nodes())


def send_secret(xs: Xenstore, domid: int, packet: proto.SecretPacket) -> None:
    base = proto.guest_path(domid)
    values = {f"secret/{key}": value for key, value in packet.to_nodes().items()}
    values["command"] = proto.Command.INJECT_SECRET.value
    xs.write_many(base, values)


def send_command(xs: Xenstore, domid: int, command: proto.Command) -> None:
    xs.write(proto.guest_path(domid, "command"), command.value)


class SimulatedToolstack:
    def __init__(self, host: Path | str, xs: Xenstore):
        from sevd.psp.simulated.device import SimulatedPsp

        self.host = Path(host)
        self.xs = xs
        self.xen = SimulatedXen(self.host, psp_wbinvd=SimulatedPsp(self.host).wbinvd_all_cpus)

    def create(self, name: str, memory_mb: int, image: bytes, vcpus: int = 1) -> int:
        """`xl create -p`: the domain exists, paused, with its boot image in memory."""
        domid = self.xen.create_domain(name, memory_mb, image, vcpus)
        home = f"/local/domain/{domid}"
        self.xs.write_many(home, {"name": name, "domid": str(domid), "memory/target": str(memory_mb * 1024)})
        self.xs.set_perms(home, (f"n{domid}", "r0"))
        self.xs.introduce(domid, 0xFEFFF, 1)  # as xl does; mfn and event channel are placeholders here
        return domid

    def image_location(self, domid: int) -> tuple[int, int]:
        dom = self.xen.domains()[domid]
        return dom["image_gpa"], dom["image_size"]

    def unpause(self, domid: int) -> None:
        self.xen.unpause(domid)

    def destroy(self, domid: int) -> None:
        """`xl destroy`: the domain dies (Xen WBINVDs), its nodes go, xenstored fires @releaseDomain."""
        self.xen.destroy(domid)
        self.xs.rm(f"/local/domain/{domid}")
        self.xs.release(domid)
