"""The driver layer in front of the SNP firmware model: which ioctl carries which SNP command, and the buffers.

- SEV_ISSUE_CMD with the user ids of Linux 6.11+ (uapi psp-sev.h): SNP_PLATFORM_STATUS (9; the 32-byte status
  written to the caller's buffer), SNP_COMMIT (10), SNP_SET_CONFIG (11; the 64-byte config read from it),
  SNP_VLEK_LOAD (12; len must be 16, the 432-byte hashstick copied from vlek_wrapped_address).
- SEV_ISSUE_GUEST_CMD with the SNP firmware ids (0x81…0xCD) and the firmware's own buffers (`cffi_build.py`).
  Guest memory (context pages, launch pages, reclaimed pages) is named by system-physical address; the blobs
  a kernel would bounce through its own pages (ID block, ID auth, guest request and response, the status
  pages) are caller addresses, as for the SEV guest commands.  Only on a host whose BIOS enables SNP; the
  Dom0 kernel patch that would carry these on real hardware is part 2's (docs/snp.md).

Bad buffer lengths are EINVAL, as the kernel answers; every firmware failure is EIO with the status.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sevd._psp import ffi
from sevd.abi import snp
from sevd.abi.snp import Product, SnpCommand, SnpUserCommand
from sevd_sim import kds
from sevd_sim.psp.snp import SnpFirmware
from sevd_sim.rmp import PAGE, RmpFile

if TYPE_CHECKING:
    from sevd_sim.psp.device import CallerMemory, SimulatedPsp
    from sevd_sim.psp.firmware import Firmware

S = SnpCommand

# The family, model and stepping each product reports (CPUID Fn0000_0001 EAX, decoded).
CPUID_FMS: dict[Product, tuple[int, int, int]] = {
    Product.MILAN: (0x19, 0x01, 0x1),
    Product.GENOA: (0x19, 0x11, 0x1),
    Product.TURIN: (0x1A, 0x02, 0x1),
}


class SnpErrno(Exception):
    def __init__(self, value: int):
        self.value = value


def pinned_cpuid(fw: Firmware) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """The CPUID leaves whose values the simulated chip pins: the vendor and the memory-encryption leaf."""
    ebx, ecx, edx = (int.from_bytes(word, "little") for word in (b"Auth", b"cAMD", b"enti"))
    vendor = (0x10, ebx, ecx, edx)
    encryption = (0x0001_781F, 0x16F, fw.state["max_asid"], fw.state["min_sev_asid"])
    return {(0x0, 0): vendor, (0x8000_001F, 0): encryption}


@contextlib.contextmanager
def snp_firmware(psp: SimulatedPsp, fw: Firmware, product: Product) -> Iterator[SnpFirmware]:
    """The SNP model over this PSP's state, with the host's RMP held for the command."""
    with RmpFile(psp.host).open() as rmp:
        yield SnpFirmware(
            fw.state["snp"],
            rmp,
            psp.memory,
            chip_id=bytes.fromhex(fw.state["chip_id"]),
            product=product,
            cpuid=pinned_cpuid(fw),
            cpuid_fms=CPUID_FMS[product],
            min_sev_asid=fw.state["min_sev_asid"],
            sev_platform=fw.state["platform"],
        )


def _read(caller: CallerMemory, ctype: str) -> Any:
    req = ffi.new(ctype + " *")
    size = ffi.sizeof(ctype)
    ffi.memmove(req, caller.read_buffer(size), size)
    return req


def _off(req: Any, field: str) -> int:
    return int(ffi.offsetof(ffi.typeof(req).item, field))


def _status_struct(st: dict[str, Any]) -> bytes:
    out = ffi.new("struct sevd_snp_platform_status *")
    out.api_major, out.api_minor = st["api_major"], st["api_minor"]
    out.state, out.build_id = st["state"], st["build_id"]
    out.rmp_flags = snp.STATUS_RMP_INITIALIZED if st["rmp_initialized"] else 0
    out.flags = (
        (snp.STATUS_MASK_CHIP_ID if st["mask_chip_id"] else 0)
        | (snp.STATUS_MASK_CHIP_KEY if st["mask_chip_key"] else 0)
        | (snp.STATUS_VLEK_EN if st["vlek_en"] else 0)
    )
    out.guest_count = st["guest_count"]
    out.current_tcb_version, out.reported_tcb_version = st["current_tcb"], st["reported_tcb"]
    return bytes(ffi.buffer(out))


def publish_vcek(psp: SimulatedPsp, fw: Firmware, product: Product) -> None:
    """The simulated AMD serves a VCEK for every TCB; the host's tree gets the one its chip now reports."""
    state = fw.state["snp"]
    kds.publish_vcek(
        psp.host,
        product,
        bytes.fromhex(fw.state["chip_id"]),
        bytes.fromhex(state["chip_secret"]),
        snp.TcbVersion.from_int(state["reported_tcb"], product.tcb_layout),
    )


def user_command(psp: SimulatedPsp, fw: Firmware, product: Product, cmd: SnpUserCommand, caller: CallerMemory) -> None:
    with snp_firmware(psp, fw, product) as model:
        if cmd == SnpUserCommand.SNP_PLATFORM_STATUS:
            caller.write_buffer(_status_struct(model.platform_status()))
        elif cmd == SnpUserCommand.SNP_COMMIT:
            model.commit()
        elif cmd == SnpUserCommand.SNP_SET_CONFIG:
            req = _read(caller, "struct sevd_snp_config")
            flags = int(req.flags)
            if flags & ~(snp.CONFIG_MASK_CHIP_ID | snp.CONFIG_MASK_CHIP_KEY):
                raise SnpErrno(errno.EINVAL)
            model.set_config(
                int(req.reported_tcb),
                bool(flags & snp.CONFIG_MASK_CHIP_ID),
                bool(flags & snp.CONFIG_MASK_CHIP_KEY),
                bytes(ffi.buffer(req.rsvd)),
            )
        elif cmd == SnpUserCommand.SNP_VLEK_LOAD:
            req = _read(caller, "struct sevd_snp_vlek_load")
            if req.len != ffi.sizeof("struct sevd_snp_vlek_load") or not req.vlek_wrapped_address:
                raise SnpErrno(errno.EINVAL)
            hashstick = caller.read_at(_off(req, "vlek_wrapped_address"), snp.WRAPPED_VLEK_HASHSTICK_SIZE)
            model.vlek_load(int(req.vlek_wrapped_version), hashstick)
    if cmd == SnpUserCommand.SNP_SET_CONFIG:
        publish_vcek(psp, fw, product)


def guest_command(psp: SimulatedPsp, fw: Firmware, product: Product, cmd: SnpCommand, caller: CallerMemory) -> None:
    with snp_firmware(psp, fw, product) as model:
        if cmd == S.SNP_INIT:
            model.init(S.SNP_INIT)
        elif cmd == S.SNP_INIT_EX:
            req = _read(caller, "struct sev_data_snp_init_ex")
            model.init(S.SNP_INIT_EX, init_rmp=bool(req.flags & snp.INIT_EX_INIT_RMP))
        elif cmd == S.SNP_SHUTDOWN_EX:
            _read(caller, "struct sev_data_snp_shutdown_ex")
            model.shutdown()
        elif cmd == S.SNP_DF_FLUSH:
            model.df_flush()
        elif cmd == S.SNP_PLATFORM_STATUS:
            req = _read(caller, "struct sev_data_snp_addr")
            caller.write_at(_off(req, "address"), _status_struct(model.platform_status()))
        elif cmd == S.SNP_GCTX_CREATE:
            model.gctx_create(int(_read(caller, "struct sev_data_snp_addr").address))
        elif cmd == S.SNP_DECOMMISSION:
            model.decommission(int(_read(caller, "struct sev_data_snp_addr").address))
        elif cmd == S.SNP_LAUNCH_START:
            req = _read(caller, "struct sev_data_snp_launch_start")
            model.launch_start(
                int(req.gctx_paddr),
                int(req.policy),
                bytes(ffi.buffer(req.gosvw)),
                ma_en=bool(req.flags & snp.LAUNCH_START_MA_EN),
            )
        elif cmd == S.SNP_ACTIVATE:
            req = _read(caller, "struct sev_data_snp_activate")
            model.activate(int(req.gctx_paddr), int(req.asid))
        elif cmd == S.SNP_LAUNCH_UPDATE:
            req = _read(caller, "struct sev_data_snp_launch_update")
            flags = int(req.flags)
            model.launch_update(
                int(req.gctx_paddr),
                int(req.address),
                (flags & snp.LAUNCH_UPDATE_PAGE_TYPE_MASK) >> snp.LAUNCH_UPDATE_PAGE_TYPE_SHIFT,
                page_size=flags & snp.LAUNCH_UPDATE_PAGE_SIZE,
                imi_page=bool(flags & snp.LAUNCH_UPDATE_IMI_PAGE),
                vmpl_perms=(int(req.vmpl1_perms), int(req.vmpl2_perms), int(req.vmpl3_perms)),
            )
        elif cmd == S.SNP_LAUNCH_FINISH:
            req = _read(caller, "struct sev_data_snp_launch_finish")
            flags = int(req.flags)
            id_block = id_auth = None
            if flags & snp.LAUNCH_FINISH_ID_BLOCK_EN:
                if not req.id_block_paddr or not req.id_auth_paddr:
                    raise SnpErrno(errno.EINVAL)
                id_block = caller.read_at(_off(req, "id_block_paddr"), snp.ID_BLOCK_SIZE)
                id_auth = caller.read_at(_off(req, "id_auth_paddr"), snp.ID_AUTH_SIZE)
            model.launch_finish(
                int(req.gctx_paddr),
                id_block=id_block,
                id_auth=id_auth,
                auth_key_en=bool(flags & snp.LAUNCH_FINISH_AUTH_KEY_EN),
                vcek_disabled=bool(flags & snp.LAUNCH_FINISH_VCEK_DISABLED),
                host_data=bytes(ffi.buffer(req.host_data)),
            )
        elif cmd == S.SNP_GUEST_STATUS:
            req = _read(caller, "struct sev_data_snp_guest_status")
            policy, asid, state, vcek_dis = model.guest_status(int(req.gctx_paddr))
            out = ffi.new("struct sev_data_snp_guest_status_page *")
            out.policy, out.asid, out.state = policy, asid, state
            out.flags = snp.GUEST_STATUS_VCEK_DIS if vcek_dis else 0
            caller.write_at(_off(req, "address"), bytes(ffi.buffer(out)))
        elif cmd == S.SNP_PAGE_RECLAIM:
            paddr = int(_read(caller, "struct sev_data_snp_page_reclaim").paddr)
            model.page_reclaim(paddr & ~(PAGE - 1), paddr & snp.PAGE_RECLAIM_2M)
        elif cmd == S.SNP_GUEST_REQUEST:
            req = _read(caller, "struct sev_data_snp_guest_request")
            if not req.req_paddr or not req.res_paddr:
                raise SnpErrno(errno.EINVAL)
            response = model.guest_request(int(req.gctx_paddr), caller.read_at(_off(req, "req_paddr"), PAGE))
            caller.write_at(_off(req, "res_paddr"), response + bytes(PAGE - len(response)))
        else:
            raise SnpErrno(errno.EINVAL)


# The SNP firmware commands the simulated driver carries through SEV_ISSUE_GUEST_CMD.
GUEST_IOCTL_COMMANDS = frozenset(
    {
        S.SNP_INIT, S.SNP_INIT_EX, S.SNP_SHUTDOWN_EX, S.SNP_DF_FLUSH, S.SNP_PLATFORM_STATUS, S.SNP_GCTX_CREATE,
        S.SNP_DECOMMISSION, S.SNP_LAUNCH_START, S.SNP_ACTIVATE, S.SNP_LAUNCH_UPDATE, S.SNP_LAUNCH_FINISH,
        S.SNP_GUEST_STATUS, S.SNP_PAGE_RECLAIM, S.SNP_GUEST_REQUEST,
    }
)  # fmt: skip
