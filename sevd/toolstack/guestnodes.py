"""A guest's SEV nodes as the toolstack side writes and reads them: the launch request, commands, the
secret packet, sevd's summary.

The same on every host (the stock `xl` or a simulated one), through the protocol module's codecs
(sevd.xen.protocol); docs/xenstore-protocol.md says who writes which node.
"""

from __future__ import annotations

from sevd.abi.units import DomId
from sevd.errors import InputError, SevdError
from sevd.xen import protocol as proto
from sevd.xen.xsclient import Xenstore


def request_launch(xs: Xenstore, request: proto.LaunchRequest) -> None:
    """Write the launch request: one node, so the one write submits all of it."""
    xs.write(proto.guest_path(request.domid, "request"), request.format())


def send_secret(xs: Xenstore, domid: DomId, packet: proto.SecretPacket) -> None:
    """The packet and its `inject-secret` command in one transaction, over whatever an earlier packet left."""
    base = proto.guest_path(domid)

    def body() -> None:
        xs.rm(f"{base}/secret")
        for key, value in packet.to_nodes().items():
            xs.write(f"{base}/secret/{key}", value)
        xs.write(f"{base}/command", proto.Command.INJECT_SECRET.value)

    xs.transact(body)


def send_command(xs: Xenstore, domid: DomId, command: proto.Command) -> None:
    xs.write(proto.guest_path(domid, "command"), command.value)


def parse_summary(domid: DomId, text: str | None) -> proto.GuestSummary | None:
    """A guest's summary node as read (None: sevd has published nothing for it yet)."""
    if text is None:
        return None
    try:
        return proto.GuestSummary.parse(text)
    except InputError as exc:  # sevd wrote it, so this is no usage error: a version mismatch or a bug
        raise SevdError(f"{proto.guest_path(domid, 'summary')}: {exc}") from None


def read_summary(xs: Xenstore, domid: DomId) -> proto.GuestSummary | None:
    return parse_summary(domid, xs.read(proto.guest_path(domid, "summary")))


def read_request(xs: Xenstore, domid: DomId) -> proto.LaunchRequest | None:
    text = xs.read(proto.guest_path(domid, "request"))
    return None if text is None else proto.LaunchRequest.parse_text(domid, text)


def read_guest(xs: Xenstore, domid: DomId) -> dict[str, str]:
    """What a reader sees of one guest, in two reads: its nodes' names (valued "") overlaid with the
    summary's keys and values.  Empty once the guest's nodes are gone."""
    names = xs.list(proto.guest_path(domid))
    view = dict.fromkeys(names, "")
    if "summary" in view:
        summary = read_summary(xs, domid)
        if summary is not None:  # removed between the two reads: the guest is going away
            view.update(summary.to_fields())
    return view
