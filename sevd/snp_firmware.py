"""SEV-SNP firmware commands over the ioctl client: one method per command, buffers from sevd._psp.

Platform commands the kernel offers as user ioctls (Linux 6.11+: SNP_PLATFORM_STATUS, SNP_COMMIT, SNP_SET_CONFIG,
SNP_VLEK_LOAD) go through SEV_ISSUE_CMD; the rest (SNP_INIT, the guest commands) through SEV_ISSUE_GUEST_CMD with
the firmware's own buffers.  Guest memory is named by system-physical address; the ID block, ID auth and guest
request/response are caller buffers the driver copies.  The host-side SNP launch (which pages, in which order,
with Xen's RMPUPDATEs between) is part 2's; this layer only issues what it is told.
"""

from __future__ import annotations

import contextlib
import dataclasses

from sevd._psp import ffi
from sevd.abi import snp
from sevd.abi.snp import PageType, SnpCommand, SnpGuestState, SnpPlatformState, SnpPolicy, SnpUserCommand, TcbVersion
from sevd.abi.status import FirmwareError
from sevd.abi.units import PAGE_SIZE, Asid, Spa
from sevd.errors import DeviceError, InputError
from sevd.psp.device import PspClient


def _addr(buf: object) -> int:
    return int(ffi.cast("uintptr_t", buf))


@dataclasses.dataclass(frozen=True)
class SnpPlatformStatus:
    api_major: int
    api_minor: int
    state: SnpPlatformState
    rmp_initialized: bool
    build_id: int
    mask_chip_id: bool
    mask_chip_key: bool
    vlek_en: bool
    guest_count: int
    current_tcb: int
    reported_tcb: int

    def as_dict(self) -> dict[str, object]:
        """For `--json`: names for the enums, TCB_VERSIONs as 16 hex digits (their layout is the chip's)."""
        out = dataclasses.asdict(self) | {"state": self.state.name}
        return out | {k: f"{out[k]:016x}" for k in ("current_tcb", "reported_tcb")}


@dataclasses.dataclass(frozen=True)
class SnpGuestStatus:
    policy: int
    asid: Asid
    state: SnpGuestState
    vcek_disabled: bool


class SnpCommands:
    def __init__(self, client: PspClient):
        self.client = client

    def ensure_initialised(self) -> SnpPlatformStatus | None:
        """SNP_INIT when SEV-SNP is enabled (the PSP answers SNP_PLATFORM_STATUS with the RMP set up) and the SNP
        platform is UNINIT; the status after, or None when this PSP or kernel has no SNP.  On such a host the
        legacy SEV INIT fails until SNP_INIT has run (docs/snp.md), so sevd does this first at start-up.  A failed
        SNP_INIT is left for the status to show."""
        try:
            st = self.platform_status()
        except (FirmwareError, DeviceError):
            return None
        if st.state != SnpPlatformState.UNINIT or not st.rmp_initialized or not self.client.writable:
            return st
        with contextlib.suppress(FirmwareError, DeviceError):
            self.init()
        return self.platform_status()

    # -- platform ----------------------------------------------------------------------------------------------

    def init(self) -> None:
        self.client.guest_command(SnpCommand.SNP_INIT)

    def init_ex(self, *, init_rmp: bool = True) -> None:
        req = ffi.new("struct sev_data_snp_init_ex *")
        req.flags = snp.INIT_EX_INIT_RMP if init_rmp else 0
        self.client.guest_command(SnpCommand.SNP_INIT_EX, req)

    def shutdown_ex(self) -> None:
        req = ffi.new("struct sev_data_snp_shutdown_ex *")
        req.len = ffi.sizeof("struct sev_data_snp_shutdown_ex")
        self.client.guest_command(SnpCommand.SNP_SHUTDOWN_EX, req)

    def df_flush(self) -> None:
        self.client.guest_command(SnpCommand.SNP_DF_FLUSH)

    def platform_status(self) -> SnpPlatformStatus:
        out = ffi.new("struct sevd_snp_platform_status *")
        self.client.platform_command(SnpUserCommand.SNP_PLATFORM_STATUS, out)
        return SnpPlatformStatus(
            api_major=out.api_major,
            api_minor=out.api_minor,
            state=SnpPlatformState(out.state),
            rmp_initialized=bool(out.rmp_flags & snp.STATUS_RMP_INITIALIZED),
            build_id=out.build_id,
            mask_chip_id=bool(out.flags & snp.STATUS_MASK_CHIP_ID),
            mask_chip_key=bool(out.flags & snp.STATUS_MASK_CHIP_KEY),
            vlek_en=bool(out.flags & snp.STATUS_VLEK_EN),
            guest_count=out.guest_count,
            current_tcb=out.current_tcb_version,
            reported_tcb=out.reported_tcb_version,
        )

    def set_config(
        self, reported_tcb: TcbVersion | int, *, mask_chip_id: bool = False, mask_chip_key: bool = False
    ) -> None:
        req = ffi.new("struct sevd_snp_config *")
        req.reported_tcb = int(reported_tcb)
        req.flags = snp.CONFIG_MASK_CHIP_ID if mask_chip_id else 0
        req.flags |= snp.CONFIG_MASK_CHIP_KEY if mask_chip_key else 0
        self.client.platform_command(SnpUserCommand.SNP_SET_CONFIG, req)

    def commit(self) -> None:
        self.client.platform_command(SnpUserCommand.SNP_COMMIT)

    def vlek_load(self, wrapped_hashstick: bytes) -> None:
        if len(wrapped_hashstick) != snp.WRAPPED_VLEK_HASHSTICK_SIZE:
            raise InputError(
                f"a wrapped VLEK hashstick is {snp.WRAPPED_VLEK_HASHSTICK_SIZE} bytes, not {len(wrapped_hashstick)}"
            )
        blob = ffi.new("uint8_t[]", wrapped_hashstick)
        req = ffi.new("struct sevd_snp_vlek_load *")
        req.len = ffi.sizeof("struct sevd_snp_vlek_load")
        req.vlek_wrapped_address = _addr(blob)
        self.client.platform_command(SnpUserCommand.SNP_VLEK_LOAD, req)

    # -- guests ------------------------------------------------------------------------------------------------

    def gctx_create(self, gctx: Spa) -> None:
        req = ffi.new("struct sev_data_snp_addr *")
        req.address = gctx
        self.client.guest_command(SnpCommand.SNP_GCTX_CREATE, req)

    def launch_start(self, gctx: Spa, policy: SnpPolicy, *, gosvw: bytes = bytes(16)) -> None:
        req = ffi.new("struct sev_data_snp_launch_start *")
        req.gctx_paddr = gctx
        req.policy = int(policy)
        ffi.memmove(req.gosvw, gosvw, 16)
        self.client.guest_command(SnpCommand.SNP_LAUNCH_START, req)

    def activate(self, gctx: Spa, asid: Asid) -> None:
        req = ffi.new("struct sev_data_snp_activate *")
        req.gctx_paddr, req.asid = gctx, asid
        self.client.guest_command(SnpCommand.SNP_ACTIVATE, req)

    def launch_update(
        self, gctx: Spa, page: Spa, page_type: PageType, *, vmpl_perms: tuple[int, int, int] = (0, 0, 0)
    ) -> None:
        """One 4 KiB page (Xen has made it Pre-Guest with RMPUPDATE: assigned to the guest's ASID at its GPA)."""
        req = ffi.new("struct sev_data_snp_launch_update *")
        req.gctx_paddr, req.address = gctx, page
        req.flags = snp.launch_update_flags(page_type)
        req.vmpl1_perms, req.vmpl2_perms, req.vmpl3_perms = vmpl_perms
        self.client.guest_command(SnpCommand.SNP_LAUNCH_UPDATE, req)

    def launch_finish(
        self,
        gctx: Spa,
        *,
        id_block: bytes | None = None,
        id_auth: bytes | None = None,
        auth_key_en: bool = False,
        host_data: bytes = bytes(snp.HOST_DATA_SIZE),
        vcek_disabled: bool = False,
    ) -> None:
        req = ffi.new("struct sev_data_snp_launch_finish *")
        req.gctx_paddr = gctx
        keep = []
        flags = snp.LAUNCH_FINISH_VCEK_DISABLED if vcek_disabled else 0
        if id_block is not None and id_auth is not None:
            block, auth = ffi.new("uint8_t[]", id_block), ffi.new("uint8_t[]", id_auth)
            keep += [block, auth]
            req.id_block_paddr, req.id_auth_paddr = _addr(block), _addr(auth)
            flags |= snp.LAUNCH_FINISH_ID_BLOCK_EN | (snp.LAUNCH_FINISH_AUTH_KEY_EN if auth_key_en else 0)
        req.flags = flags
        ffi.memmove(req.host_data, host_data, snp.HOST_DATA_SIZE)
        self.client.guest_command(SnpCommand.SNP_LAUNCH_FINISH, req)
        del keep

    def guest_status(self, gctx: Spa) -> SnpGuestStatus:
        out = ffi.new("struct sev_data_snp_guest_status_page *")
        req = ffi.new("struct sev_data_snp_guest_status *")
        req.gctx_paddr, req.address = gctx, _addr(out)
        self.client.guest_command(SnpCommand.SNP_GUEST_STATUS, req)
        return SnpGuestStatus(
            out.policy, Asid(out.asid), SnpGuestState(out.state), bool(out.flags & snp.GUEST_STATUS_VCEK_DIS)
        )

    def guest_request(self, gctx: Spa, message: bytes) -> bytes:
        """A guest's SNP_GUEST_REQUEST (the message as the guest wrote it); returns the response page."""
        request = ffi.new("uint8_t[]", message + bytes(PAGE_SIZE - len(message)))
        response = ffi.new("uint8_t[]", PAGE_SIZE)
        req = ffi.new("struct sev_data_snp_guest_request *")
        req.gctx_paddr, req.req_paddr, req.res_paddr = gctx, _addr(request), _addr(response)
        self.client.guest_command(SnpCommand.SNP_GUEST_REQUEST, req)
        return bytes(ffi.buffer(response))

    def decommission(self, gctx: Spa) -> None:
        req = ffi.new("struct sev_data_snp_addr *")
        req.address = gctx
        self.client.guest_command(SnpCommand.SNP_DECOMMISSION, req)

    def page_reclaim(self, page: Spa) -> None:
        req = ffi.new("struct sev_data_snp_page_reclaim *")
        req.paddr = page
        self.client.guest_command(SnpCommand.SNP_PAGE_RECLAIM, req)
