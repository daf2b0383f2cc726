"""Toolstack actions as `xl-sev` drives them: create paused, request the SEV launch, unpause, destroy.

On a real host these are the stock toolstack's `xl create -p`, `xl unpause` and `xl destroy` (no
toolstack patch); on a simulated host `SimulatedToolstack` does the same to the simulated Xen and
writes the standard /local/domain/<domid> nodes, INTRODUCE and RELEASE (so @introduceDomain and
@releaseDomain fire) as xl and xenstored do.  The SEV request itself is written, and sevd's summary
read, the same way on both, through the protocol module.
"""

from __future__ import annotations

from pathlib import Path

from sevd.errors import InputError, SevdError
from sevd.xen import protocol as proto
from sevd.xen.hypervisor import SimulatedXen
from sevd.xen.xsclient import Xenstore


def request_launch(xs: Xenstore, request: proto.LaunchRequest) -> None:
    """Write the launch request: one node, so the one write submits all of it."""
    xs.write(proto.guest_path(request.domid, "request"), request.format())


def send_secret(xs: Xenstore, domid: int, packet: proto.SecretPacket) -> None:
    base = proto.guest_path(domid)
    values = {f"secret/{key}": value for key, value in packet.to_nodes().items()}
    values["command"] = proto.Command.INJECT_SECRET.value
    xs.write_many(base, values)


def send_command(xs: Xenstore, domid: int, command: proto.Command) -> None:
    xs.write(proto.guest_path(domid, "command"), command.value)


def parse_summary(domid: int, text: str | None) -> proto.GuestSummary | None:
    """A guest's summary node as read (None: sevd has published nothing for it yet)."""
    if text is None:
        return None
    try:
        return proto.GuestSummary.parse(text)
    except InputError as exc:  # sevd wrote it, so this is no usage error: a version mismatch or a bug
        raise SevdError(f"{proto.guest_path(domid, 'summary')}: {exc}") from None


def read_summary(xs: Xenstore, domid: int) -> proto.GuestSummary | None:
    return parse_summary(domid, xs.read(proto.guest_path(domid, "summary")))


def read_request(xs: Xenstore, domid: int) -> proto.LaunchRequest | None:
    text = xs.read(proto.guest_path(domid, "request"))
    return None if text is None else proto.LaunchRequest.parse_text(domid, text)


def read_guest(xs: Xenstore, domid: int) -> dict[str, str]:
    """What a reader sees of one guest, in two reads: its nodes' names (valued "") overlaid with the
    summary's keys and values.  Empty once the guest's nodes are gone."""
    names = xs.list(proto.guest_path(domid))
    view = dict.fromkeys(names, "")
    if "summary" in view:
        summary = read_summary(xs, domid)
        if summary is not None:  # removed between the two reads: the guest is going away
            view.update(summary.to_fields())
    return view


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
