"""Platform management over the ioctl client: what `sevctl` and `xl-sev platform` do.

Lengths are probed the kernel's way (a zero address answers INVALID_LEN with the needed size),
and blobs are refused above the driver's 16 KiB limit before the ioctl.

The platform at rest depends on the Dom0 kernel: Linux 6.1 INITs it at probe; from 6.12 (Debian 13)
nothing does without KVM, so it rests in UNINIT and each platform ioctl that needs INIT does INIT,
the command, SHUTDOWN.  sevd, which owns /dev/sev for writing, INITs it at start-up
(`ensure_initialised`, through the guest-command ioctl's implicit INIT) so that it stays INIT
while sevd runs; a read-only export of an UNINIT platform is refused (EPERM) with that explained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from pathlib import Path

from sevd._psp import ffi
from sevd.abi.certs import AmdCert, PlatformChain, SevCert
from sevd.abi.commands import (
    CERT_SIZE,
    GET_ID_SIZE,
    PDH_CHAIN_SIZE,
    USER_BLOB_MAX,
    FirmwareCommand,
    PlatformState,
    UserCommand,
)
from sevd.abi.platform_status import StatusFlag
from sevd.abi.status import FirmwareError, InvalidLen
from sevd.errors import DeviceError, InputError
from sevd.owner.keyserver import KeyServer, complete_chain_dir
from sevd.psp.device import PspClient
from sevd.snp_firmware import SnpCommands


@dataclasses.dataclass(frozen=True)
class PlatformStatus:
    api_major: int
    api_minor: int
    build: int
    state: PlatformState
    owner: bool  # externally owned (a PEK certificate was imported)
    es: bool  # SEV-ES enabled at INIT
    guests: int

    def as_dict(self) -> dict[str, object]:
        return {
            "api_major": self.api_major,
            "api_minor": self.api_minor,
            "build": self.build,
            "state": self.state.name,
            "owner": self.owner,
            "es": self.es,
            "guests": self.guests,
        }


@dataclasses.dataclass(frozen=True)
class PdhExport:
    """PDH_CERT_EXPORT's answer, split as sev-tool names the files."""

    pdh: bytes
    pek: bytes
    oca: bytes
    cek: bytes

    FILES = ("pdh.cert", "pek.cert", "oca.cert", "cek.cert")

    def chain(self, ark: AmdCert, ask: AmdCert) -> PlatformChain:
        """The exported certificates parsed, with the AMD root (ARK, ASK) the CEK should chain to."""
        return PlatformChain(
            pdh=SevCert.parse(self.pdh, "pdh.cert"),
            pek=SevCert.parse(self.pek, "pek.cert"),
            oca=SevCert.parse(self.oca, "oca.cert"),
            cek=SevCert.parse(self.cek, "cek.cert"),
            ask=ask,
            ark=ark,
        )

    def write(self, directory: str | os.PathLike[str]) -> list[Path]:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, blob in zip(self.FILES, (self.pdh, self.pek, self.oca, self.cek), strict=True):
            path = out / name
            path.write_bytes(blob)
            paths.append(path)
        return paths


def _check_blob(name: str, data: bytes) -> None:
    if len(data) > USER_BLOB_MAX:
        raise InputError(f"{name}: {len(data)} bytes is over the driver's {USER_BLOB_MAX}-byte blob limit")


class Platform:
    def __init__(self, client: PspClient):
        self.client = client

    def _probe_lengths(self, cmd: UserCommand, req: object) -> None:
        """Issue `cmd` with zero lengths: the firmware answers INVALID_LEN and writes back the sizes it needs."""
        with contextlib.suppress(InvalidLen):
            self.client.platform_command(cmd, req)

    def status(self) -> PlatformStatus:
        buf = ffi.new("struct sev_user_data_status *")
        self.client.platform_command(UserCommand.PLATFORM_STATUS, buf)
        return PlatformStatus(
            api_major=buf.api_major,
            api_minor=buf.api_minor,
            build=buf.build,
            state=PlatformState(buf.state),
            owner=StatusFlag.OWNER in StatusFlag(buf.flags),
            es=StatusFlag.CONFIG_ES in StatusFlag(buf.flags),
            guests=buf.guest_count,
        )

    def ensure_initialised(self) -> PlatformStatus:
        """INIT an UNINIT platform and leave it INIT; the status after (UNINIT still if INIT failed or could not run).

        There is no INIT among /dev/sev's platform ioctls; the guest-command ioctl of our Dom0 patch
        INITs an UNINIT platform before any guest command (sev_ioctl_do_guest_cmd), so a GUEST_STATUS of
        handle 0 (no guest: SUCCESS, state 0) does it.  Needs a writable fd; a failed INIT is left for the
        first launch to report.
        """
        st = self.status()
        if st.state != PlatformState.UNINIT or not self.client.writable:
            return st
        SnpCommands(self.client).ensure_initialised()  # SNP_INIT first where SEV-SNP is enabled
        req = ffi.new("struct sev_data_guest_status *")
        with contextlib.suppress(FirmwareError, DeviceError):
            self.client.guest_command(FirmwareCommand.GUEST_STATUS, req)
        return self.status()

    def pek_gen(self) -> None:
        self.client.platform_command(UserCommand.PEK_GEN)

    def pdh_gen(self) -> None:
        self.client.platform_command(UserCommand.PDH_GEN)

    def factory_reset(self) -> None:
        self.client.platform_command(UserCommand.FACTORY_RESET)

    def pek_csr(self) -> bytes:
        """The PEK certificate body to be signed by the owner's OCA."""
        req = ffi.new("struct sev_user_data_pek_csr *")
        self._probe_lengths(UserCommand.PEK_CSR, req)
        length = req.length or CERT_SIZE
        out = ffi.new("uint8_t[]", length)
        req.address = int(ffi.cast("uintptr_t", out))
        req.length = length
        self.client.platform_command(UserCommand.PEK_CSR, req)
        return bytes(ffi.buffer(out, req.length))

    def pek_cert_import(self, pek: bytes, oca: bytes) -> None:
        _check_blob("PEK certificate", pek)
        _check_blob("OCA certificate", oca)
        pek_buf = ffi.from_buffer(pek)
        oca_buf = ffi.from_buffer(oca)
        req = ffi.new("struct sev_user_data_pek_cert_import *")
        req.pek_cert_address = int(ffi.cast("uintptr_t", pek_buf))
        req.pek_cert_len = len(pek)
        req.oca_cert_address = int(ffi.cast("uintptr_t", oca_buf))
        req.oca_cert_len = len(oca)
        self.client.platform_command(UserCommand.PEK_CERT_IMPORT, req)

    def pdh_cert_export(self) -> PdhExport:
        try:
            return self._pdh_cert_export()
        except DeviceError as exc:
            if exc.errno != errno.EPERM or self.client.writable:
                raise
            raise DeviceError(
                errno.EPERM,
                "PDH_CERT_EXPORT: EPERM: the platform is UNINIT and this /dev/sev is read-only; only a writable "
                "fd may INIT it (Linux 6.12 and later leave it UNINIT without KVM): start sevd, which "
                "initialises it, or run as root",
            ) from None

    def _pdh_cert_export(self) -> PdhExport:
        req = ffi.new("struct sev_user_data_pdh_cert_export *")
        self._probe_lengths(UserCommand.PDH_CERT_EXPORT, req)
        pdh_len = req.pdh_cert_len or CERT_SIZE
        chain_len = req.cert_chain_len or PDH_CHAIN_SIZE
        pdh = ffi.new("uint8_t[]", pdh_len)
        chain = ffi.new("uint8_t[]", chain_len)
        req.pdh_cert_address = int(ffi.cast("uintptr_t", pdh))
        req.pdh_cert_len = pdh_len
        req.cert_chain_address = int(ffi.cast("uintptr_t", chain))
        req.cert_chain_len = chain_len
        self.client.platform_command(UserCommand.PDH_CERT_EXPORT, req)
        chain_bytes = bytes(ffi.buffer(chain, req.cert_chain_len))
        if len(chain_bytes) < PDH_CHAIN_SIZE:
            raise InputError(f"PDH_CERT_EXPORT returned a {len(chain_bytes)}-byte chain, expected {PDH_CHAIN_SIZE}")
        return PdhExport(
            pdh=bytes(ffi.buffer(pdh, CERT_SIZE)),
            pek=chain_bytes[0:CERT_SIZE],
            oca=chain_bytes[CERT_SIZE : 2 * CERT_SIZE],
            cek=chain_bytes[2 * CERT_SIZE : 3 * CERT_SIZE],
        )

    def get_id(self) -> bytes:
        """The chip id (GET_ID2), used to fetch the CEK from AMD's key server."""
        req = ffi.new("struct sev_user_data_get_id2 *")
        self._probe_lengths(UserCommand.GET_ID2, req)
        length = req.length or GET_ID_SIZE
        out = ffi.new("uint8_t[]", length)
        req.address = int(ffi.cast("uintptr_t", out))
        req.length = length
        self.client.platform_command(UserCommand.GET_ID2, req)
        return bytes(ffi.buffer(out, req.length))

    def export_full_chain(self, directory: str | os.PathLike[str], server: KeyServer) -> list[Path]:
        """The full chain, as `sevctl export --full` and sev-tool's `export_cert_chain` give it: PDH_CERT_EXPORT's
        pdh, pek and oca, the CEK AMD signed (the key server's, by GET_ID's chip id), and the ARK and ASK."""
        paths = self.pdh_cert_export().write(directory)[:3]
        return paths + complete_chain_dir(directory, self.get_id(), server).paths
