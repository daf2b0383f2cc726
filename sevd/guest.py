"""Guest commands over the ioctl client: the launch sequence as the daemon issues it.

Buffers are the firmware's own (sevd._psp, declared once).  Guest-memory fields carry system
physical addresses; blob fields (certificates, session, measurement out, packet header,
transport buffer) carry caller addresses the kernel copies, as KVM does.
"""

from __future__ import annotations

import dataclasses

from sevd._psp import ffi
from sevd.abi.commands import (
    CERT_SIZE,
    MEASUREMENT_SIZE,
    PACKET_HEADER_SIZE,
    SESSION_SIZE,
    VMSA_SIZE,
    FirmwareCommand,
    FirmwareGuestState,
)
from sevd.abi.policy import Policy
from sevd.abi.units import NO_HANDLE, Asid, Handle, Spa
from sevd.errors import InputError
from sevd.psp.device import PspClient


def _addr(buf: object) -> int:
    return int(ffi.cast("uintptr_t", buf))


@dataclasses.dataclass(frozen=True)
class GuestStatus:
    handle: Handle
    policy: int
    asid: Asid
    state: FirmwareGuestState


class GuestCommands:
    """One method per firmware guest command; each returns what the firmware wrote back."""

    def __init__(self, client: PspClient):
        self.client = client

    def launch_start(
        self,
        policy: Policy,
        *,
        godh_cert: bytes | None = None,
        session: bytes | None = None,
        handle: Handle = NO_HANDLE,
    ) -> Handle:
        """LAUNCH_START; with an owner session (GODH certificate + launch blob) or without. Returns the handle."""
        req = ffi.new("struct sev_data_launch_start *")
        req.handle = handle
        req.policy = int(policy)
        keep = []  # the blobs' cffi buffers must outlive the ioctl
        if godh_cert is not None or session is not None:
            if godh_cert is None or session is None:
                raise InputError("an owner session needs both the GODH certificate and the launch blob")
            if len(godh_cert) != CERT_SIZE:
                raise InputError(f"GODH certificate is {len(godh_cert)} bytes, expected {CERT_SIZE}")
            if len(session) != SESSION_SIZE:
                raise InputError(f"launch blob is {len(session)} bytes, expected {SESSION_SIZE}")
            cert_buf, session_buf = ffi.from_buffer(godh_cert), ffi.from_buffer(session)
            keep += [cert_buf, session_buf]
            req.dh_cert_address, req.dh_cert_len = _addr(cert_buf), len(godh_cert)
            req.session_address, req.session_len = _addr(session_buf), len(session)
        self.client.guest_command(FirmwareCommand.LAUNCH_START, req)
        return Handle(int(req.handle))

    def activate(self, handle: Handle, asid: Asid) -> None:
        req = ffi.new("struct sev_data_activate *")
        req.handle, req.asid = handle, asid
        self.client.guest_command(FirmwareCommand.ACTIVATE, req)

    def launch_update_data(self, handle: Handle, spa: Spa, length: int) -> None:
        """Encrypt `length` bytes in place at system physical address `spa` and add them to the digest."""
        req = ffi.new("struct sev_data_launch_update_data *")
        req.handle, req.address, req.len = handle, spa, length
        self.client.guest_command(FirmwareCommand.LAUNCH_UPDATE_DATA, req)

    def launch_update_vmsa(self, handle: Handle, spa: Spa, length: int = VMSA_SIZE) -> None:
        req = ffi.new("struct sev_data_launch_update_vmsa *")
        req.handle, req.address, req.len = handle, spa, length
        self.client.guest_command(FirmwareCommand.LAUNCH_UPDATE_VMSA, req)

    def launch_measure(self, handle: Handle) -> bytes:
        """The 0x30-byte measurement blob: measure(32) ‖ mnonce(16)."""
        out = ffi.new("uint8_t[]", MEASUREMENT_SIZE)
        req = ffi.new("struct sev_data_launch_measure *")
        req.handle, req.address, req.len = handle, _addr(out), MEASUREMENT_SIZE
        self.client.guest_command(FirmwareCommand.LAUNCH_MEASURE, req)
        return bytes(ffi.buffer(out, MEASUREMENT_SIZE))

    def launch_update_secret(self, handle: Handle, header: bytes, guest_spa: Spa, ciphertext: bytes) -> None:
        """Inject an owner's secret packet at `guest_spa` (the header MAC is checked by the firmware)."""
        if len(header) != PACKET_HEADER_SIZE:
            raise InputError(f"secret packet header is {len(header)} bytes, expected {PACKET_HEADER_SIZE}")
        hdr_buf, trans_buf = ffi.from_buffer(header), ffi.from_buffer(ciphertext)
        req = ffi.new("struct sev_data_launch_secret *")
        req.handle = handle
        req.hdr_address, req.hdr_len = _addr(hdr_buf), len(header)
        req.guest_address, req.guest_len = guest_spa, len(ciphertext)
        req.trans_address, req.trans_len = _addr(trans_buf), len(ciphertext)
        self.client.guest_command(FirmwareCommand.LAUNCH_UPDATE_SECRET, req)

    def launch_finish(self, handle: Handle) -> None:
        req = ffi.new("struct sev_data_launch_finish *")
        req.handle = handle
        self.client.guest_command(FirmwareCommand.LAUNCH_FINISH, req)

    def deactivate(self, handle: Handle) -> None:
        req = ffi.new("struct sev_data_deactivate *")
        req.handle = handle
        self.client.guest_command(FirmwareCommand.DEACTIVATE, req)

    def decommission(self, handle: Handle) -> None:
        req = ffi.new("struct sev_data_decommission *")
        req.handle = handle
        self.client.guest_command(FirmwareCommand.DECOMMISSION, req)

    def guest_status(self, handle: Handle) -> GuestStatus:
        req = ffi.new("struct sev_data_guest_status *")
        req.handle = handle
        self.client.guest_command(FirmwareCommand.GUEST_STATUS, req)
        return GuestStatus(
            handle=handle, policy=int(req.policy), asid=Asid(int(req.asid)), state=FirmwareGuestState(req.state)
        )

    def df_flush(self) -> None:
        self.client.guest_command(FirmwareCommand.DF_FLUSH)

    def dbg_decrypt(self, handle: Handle, spa: Spa, length: int) -> bytes:
        """Plaintext of guest memory at `spa` (only for guests whose policy allows debugging)."""
        out = ffi.new("uint8_t[]", length)
        req = ffi.new("struct sev_data_dbg *")
        req.handle, req.src_addr, req.dst_addr, req.len = handle, spa, _addr(out), length
        self.client.guest_command(FirmwareCommand.DBG_DECRYPT, req)
        return bytes(ffi.buffer(out, length))

    def dbg_encrypt(self, handle: Handle, spa: Spa, plaintext: bytes) -> None:
        src = ffi.from_buffer(plaintext)
        req = ffi.new("struct sev_data_dbg *")
        req.handle, req.src_addr, req.dst_addr, req.len = handle, _addr(src), spa, len(plaintext)
        self.client.guest_command(FirmwareCommand.DBG_ENCRYPT, req)
