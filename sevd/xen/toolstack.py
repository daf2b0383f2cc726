"""Toolstack actions as `xl-sev` drives them: create paused, request the SEV launch, unpause, destroy.

On a real host these are the stock toolstack's `xl create -p`, `xl unpause` and `xl destroy` (no
toolstack patch): `XlToolstack`.  The SEV request itself is written, and sevd's summary read, the
same way on every host, through the protocol module.
"""

from __future__ import annotations

import subprocess
from typing import Protocol

from sevd.errors import InputError, SevdError
from sevd.xen import protocol as proto
from sevd.xen import xlcfg
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


class Toolstack(Protocol):
    """What `xl-sev` asks of the host's toolstack: the stock `xl` on Xen, or a simulated host's stand-in."""

    def create(self, guest: xlcfg.GuestConfig, image: bytes) -> int:
        """The domain created paused with its boot image loaded (`xl create -p`); its domid."""
        ...

    def image_location(self, domid: int, image_size: int) -> list[tuple[int, int]]:
        """(gpa, size) pieces holding the boot image, in the order they are measured."""
        ...

    def unpause(self, domid: int) -> None: ...

    def destroy(self, domid: int) -> None: ...


FOUR_GIB = 1 << 32
OVMF_ALIGN = 1 << 20  # hvmloader places OVMF at 4 GiB minus its size rounded up to 1 MiB


class XlToolstack:
    """A real Xen host: the stock `xl` does what it always does; sevd adds SEV to the paused domain."""

    def __init__(self, xl: str = "xl"):
        self.xl = xl
        # PVH: where libxenguest put the kernel and ramdisk, from its own log of `xl -vvv create`.
        self.pvh_ranges: dict[int, list[tuple[int, int]]] = {}

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run([self.xl, *args], capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise SevdError(f"`{self.xl}` not found: xl-sev needs Xen's xl (package xen-utils) on a Xen host") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise SevdError(f"xl {' '.join(args)} failed (exit {proc.returncode}): {' / '.join(detail[-3:])}")
        return proc

    def _xl(self, *args: str) -> str:
        return self._run(*args).stdout

    def create(self, guest: xlcfg.GuestConfig, image: bytes) -> int:
        if guest.sev and guest.pvh:
            # -vvv makes libxenguest log each segment it allocates: the only account of where it
            # loaded the kernel and ramdisk (their place depends on the kernel's ELF headers).
            proc = self._run("-vvv", "create", "-p", guest.path)
            log = proc.stderr + proc.stdout
        else:
            self._xl("create", "-p", guest.path)
        out = self._xl("domid", guest.name).strip()
        if not out.isdigit():
            raise SevdError(f"xl domid {guest.name}: unexpected answer {out[:40]!r}")
        domid = int(out)
        if guest.sev and guest.pvh:
            from sevd.owner.pvh import measured_ranges, parse_domain_builder_log

            try:
                self.pvh_ranges[domid] = measured_ranges(parse_domain_builder_log(log))
            except InputError as exc:
                self.destroy(domid)
                raise SevdError(f"xl create {guest.path}: cannot tell where the kernel was loaded: {exc}") from None
        return domid

    def image_location(self, domid: int, image_size: int) -> list[tuple[int, int]]:
        """(gpa, size) pieces holding the image, in the order they are measured."""
        if domid in self.pvh_ranges:
            pieces = self.pvh_ranges[domid]
            loaded = sum(size for _, size in pieces)
            if loaded != image_size:
                where = ", ".join(f"{size} at {gpa:#x}" for gpa, size in pieces)
                raise SevdError(
                    f"domain {domid}: the toolstack loaded the kernel and ramdisk as {where} ({loaded} bytes), "
                    f"but the owner's image of the same files is {image_size} bytes: refusing to measure"
                )
            return pieces
        # hvmloader's OVMF_BEGIN: the image ends at 4 GiB, its start rounded down to 1 MiB.
        span = -(-image_size // OVMF_ALIGN) * OVMF_ALIGN
        return [(FOUR_GIB - span, image_size)]

    def unpause(self, domid: int) -> None:
        self._xl("unpause", str(domid))

    def destroy(self, domid: int) -> None:
        self._xl("destroy", str(domid))
