"""The /dev/sev ioctl client: the one code path that talks to a PSP, real or simulated.

`PspClient` lays out `struct sev_issue_cmd` and the command buffers with cffi (sevd._psp) and
hands them to an `IoctlTarget`.  Two targets exist and the client never asks which it has:
`DeviceFile`, which calls ioctl(2) on an open /dev/sev, and the simulated PSP
(sevd_sim.psp), which parses the very same bytes.  Errors come back as the driver reports
them: a negative errno, and for firmware failures EIO with the status in `error`.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any, Protocol

from ioctl_opt import IOWR

from sevd._psp import ffi, lib
from sevd.abi.commands import FirmwareCommand, UserCommand
from sevd.abi.snp import SnpCommand, SnpUserCommand
from sevd.abi.status import FirmwareStatus, raise_for_status
from sevd.errors import DeviceError

_ISSUE_CMD_SIZE = ffi.sizeof("struct sev_issue_cmd")
# Computed from first principles and checked against the compiler's value of the kernel macro
# (tests/test_device.py), so a header with a different struct layout is caught.
SEV_ISSUE_CMD = IOWR(ord("S"), 0, ctypes.c_uint8 * _ISSUE_CMD_SIZE)
SEV_ISSUE_GUEST_CMD = IOWR(ord("S"), 1, ctypes.c_uint8 * _ISSUE_CMD_SIZE)

DEFAULT_DEVICE = "/dev/sev"
# SEV_RET_NO_FW_CALL (-1) as the u32 `error` field holds it: the driver failed before the firmware ran.
_NO_FW_CALL = FirmwareStatus.NO_FW_CALL & 0xFFFFFFFF


class IoctlTarget(Protocol):
    """Whatever answers SEV ioctls: `ioctl` returns 0 or -errno and may fill `arg.error`."""

    writable: bool

    def ioctl(self, request: int, arg: Any) -> int: ...

    def close(self) -> None: ...


class DeviceFile:
    """A real /dev/sev (or any node that answers its ioctls, such as a umockdev one)."""

    def __init__(self, path: str = DEFAULT_DEVICE, *, write: bool = True):
        self.path = path
        self.writable = False
        try:
            if write:
                try:
                    self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                    self.writable = True
                except PermissionError:
                    # Status, export and GET_ID work on a read-only fd; the driver
                    # answers EPERM for the rest and we explain that there.
                    self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            else:
                self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeviceError(
                errno.ENOENT,
                f"{path}: no such device: SEV is not available (is the ccp driver loaded, "
                "psp.sev enabled and SEV on in the firmware setup?)",
            ) from None
        except PermissionError:
            raise DeviceError(errno.EACCES, f"{path}: permission denied (the device is root's: run as root)") from None

    def ioctl(self, request: int, arg: Any) -> int:
        return lib.sevd_ioctl(self.fd, request, arg)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _errno_message(err: int, what: str, guest_command: bool) -> str:
    if err == errno.EPERM and guest_command:
        return (
            f"{what}: EPERM: /dev/sev is not open for writing (run as root), or Xen did not confirm that the "
            "guest-memory address belongs to the guest this handle was activated for (see Xen's log)"
        )
    if err == errno.EPERM:
        return f"{what}: EPERM: this command needs /dev/sev opened for writing (run as root)"
    if err == errno.EBUSY and "FACTORY_RESET" in what:
        # sev_ioctl_do_reset: EBUSY while the platform is WORKING, i.e. while it has guests
        return f"{what}: EBUSY: SEV guests are running (platform WORKING): destroy them first (xl-sev list)"
    if err == errno.EBUSY:
        return (
            f"{what}: EBUSY: the PSP is busy or disabled after a command timed out "
            "(the driver stops issuing commands; reload ccp or reboot)"
        )
    if err == errno.EINVAL and guest_command:
        # A stock driver answers EINVAL to any ioctl but SEV_ISSUE_CMD (sev-dev.c, sev_ioctl).
        return (
            f"{what}: EINVAL: the driver refused SEV_ISSUE_GUEST_CMD: a Dom0 kernel without the "
            "xen-patches/linux patch does not know it (or the command id or parameters are bad: a blob over "
            "16 KiB, a guest not yet activated)"
        )
    if err == errno.EINVAL:
        return (
            f"{what}: EINVAL: the driver refused the request (unknown command id, or a certificate blob that is "
            "missing, empty or over 16 KiB)"
        )
    if err == errno.ENOTTY:
        return f"{what}: ENOTTY: this device does not answer SEV ioctls (is it /dev/sev?)"
    if err == errno.EFAULT:
        return f"{what}: EFAULT: a buffer address is bad or a blob exceeds the driver's 16 KiB limit"
    if err == errno.ENODEV:
        return f"{what}: ENODEV: SEV is not initialised in the driver"
    return f"{what}: {errno.errorcode.get(err, str(err))}: {os.strerror(err)}"


class PspClient:
    """Issues SEV commands through an IoctlTarget and turns failures into spec-named errors."""

    def __init__(self, target: IoctlTarget):
        self.target = target

    @property
    def writable(self) -> bool:
        return self.target.writable

    def close(self) -> None:
        self.target.close()

    def _issue(self, request: int, cmd: int, data: Any, what: str) -> None:
        arg = ffi.new("struct sev_issue_cmd *")
        arg.cmd = cmd
        arg.data = 0 if data is None else int(ffi.cast("uintptr_t", data))
        arg.error = 0
        rc = self.target.ioctl(request, arg)
        if rc == 0:
            return
        if arg.error not in (FirmwareStatus.SUCCESS, _NO_FW_CALL):
            # The firmware ran and failed: the driver answers EIO and leaves the status in error.
            raise_for_status(what, arg.error)
        raise DeviceError(-rc, _errno_message(-rc, what, request == SEV_ISSUE_GUEST_CMD))

    def platform_command(self, cmd: UserCommand | SnpUserCommand, data: Any = None) -> None:
        """SEV_ISSUE_CMD with a sev_user_data_* buffer (or none)."""
        self._issue(SEV_ISSUE_CMD, int(cmd), data, cmd.name)

    def guest_command(self, cmd: FirmwareCommand | SnpCommand, data: Any = None) -> None:
        """SEV_ISSUE_GUEST_CMD with a firmware command buffer (or none, for DF_FLUSH)."""
        self._issue(SEV_ISSUE_GUEST_CMD, int(cmd), data, cmd.name)


def open_device(path: str = DEFAULT_DEVICE, *, write: bool = True) -> PspClient:
    return PspClient(DeviceFile(path, write=write))
