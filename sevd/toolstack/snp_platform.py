"""`xl-sev platform snp-*`: the SEV-SNP platform through Linux's SNP user ioctls (SNP_PLATFORM_STATUS,
SNP_COMMIT, SNP_SET_CONFIG, SNP_VLEK_LOAD; sevd.snp_firmware issues them).

The commands other than the status need the SNP platform INIT: sevd issues SNP_INIT at start-up where SEV-SNP is
enabled (`SnpCommands.ensure_initialised`).  A TCB_VERSION is shown and taken as 16 hex digits, the 64-bit value
the firmware holds: which byte is which SVN depends on the chip (`sevd.abi.snp.TcbLayout`).
"""

from __future__ import annotations

import errno
from pathlib import Path

from sevd.backends import open_psp
from sevd.config import Config
from sevd.errors import DeviceError, InputError, SevdError
from sevd.snp_firmware import SnpCommands, SnpPlatformStatus


def _commands(config: Config, *, write: bool) -> SnpCommands:
    return SnpCommands(open_psp(config, write=write))


NO_SNP = (
    "this host has no SEV-SNP: the PSP does not answer SNP_PLATFORM_STATUS "
    "(SEV-SNP off in the BIOS, or a Dom0 kernel before Linux 6.11)"
)


def _with_status(config: Config, *, write: bool) -> tuple[SnpCommands, SnpPlatformStatus]:
    cmds = _commands(config, write=write)
    try:
        return cmds, cmds.platform_status()
    except DeviceError as exc:
        cmds.client.close()
        if exc.errno in (errno.EINVAL, errno.ENOTTY):
            raise SevdError(NO_SNP) from None
        raise
    except BaseException:
        cmds.client.close()
        raise


def status(config: Config) -> SnpPlatformStatus:
    cmds, st = _with_status(config, write=False)
    cmds.client.close()
    return st


def status_text(st: SnpPlatformStatus) -> str:
    masks = [name for name, on in (("chip-id", st.mask_chip_id), ("chip-key", st.mask_chip_key)) if on]
    return (
        f"api {st.api_major}.{st.api_minor} build {st.build_id}\nstate {st.state.name}\n"
        f"rmp {'initialised' if st.rmp_initialized else 'not initialised'}\nguests {st.guest_count}\n"
        f"current-tcb {st.current_tcb:016x}\nreported-tcb {st.reported_tcb:016x}\n"
        f"mask {' '.join(masks) or 'none'}\nvlek {'loaded' if st.vlek_en else 'none'}"
    )


def parse_tcb(text: str) -> int:
    """A TCB_VERSION as 16 hex digits (an optional 0x)."""
    digits = text.lower().removeprefix("0x")
    try:
        value = int(digits, 16)
    except ValueError:
        raise InputError(f"TCB {text!r}: 16 hex digits, as `snp-status` shows it") from None
    if len(digits) > 16:
        raise InputError(f"TCB {text!r}: a TCB_VERSION is 64 bits")
    return value


def commit(config: Config) -> SnpPlatformStatus:
    """SNP_COMMIT: the running firmware and its TCB become the minimum the chip accepts (no rollback below)."""
    cmds, _ = _with_status(config, write=True)
    try:
        cmds.commit()
        return cmds.platform_status()
    finally:
        cmds.client.close()


def configure(
    config: Config, *, reported_tcb: int | None, mask_chip_id: bool | None, mask_chip_key: bool | None
) -> SnpPlatformStatus:
    """SNP_SET_CONFIG; what is not given stays as the platform has it now (SET_CONFIG sets every field)."""
    cmds, st = _with_status(config, write=True)
    try:
        cmds.set_config(
            st.reported_tcb if reported_tcb is None else reported_tcb,
            mask_chip_id=st.mask_chip_id if mask_chip_id is None else mask_chip_id,
            mask_chip_key=st.mask_chip_key if mask_chip_key is None else mask_chip_key,
        )
        return cmds.platform_status()
    finally:
        cmds.client.close()


def vlek_load(config: Config, path: Path) -> SnpPlatformStatus:
    """SNP_VLEK_LOAD of a wrapped VLEK hashstick file (as AMD's key server wraps it for this chip)."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    cmds, _ = _with_status(config, write=True)
    try:
        cmds.vlek_load(blob)
        return cmds.platform_status()
    finally:
        cmds.client.close()
