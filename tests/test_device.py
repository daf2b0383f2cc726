"""The ioctl client: request numbers, and how driver and firmware failures reach the caller."""

import errno

import pytest

from sevd._psp import ffi, lib
from sevd.abi import status
from sevd.abi.commands import CERT_SIZE, PDH_CHAIN_SIZE, FirmwareCommand, UserCommand
from sevd.errors import DeviceError
from sevd.platform import Platform
from sevd.psp import device
from sevd.psp.device import PspClient


def test_request_numbers_match_the_kernel_header():
    assert device.SEV_ISSUE_CMD == lib.SEV_ISSUE_CMD == 0xC0105300
    assert device.SEV_ISSUE_GUEST_CMD == lib.SEV_ISSUE_GUEST_CMD == 0xC0105301


class ScriptedTarget:
    """Answers like the kernel would: a return code, and an `error` for firmware failures."""

    writable = True

    def __init__(self, rc=0, fw_error=0, fill=None):
        self.rc, self.fw_error, self.fill = rc, fw_error, fill
        self.calls = []

    def ioctl(self, request, arg):
        self.calls.append((request, arg.cmd, arg.data))
        if self.fill:
            self.fill(arg)
        arg.error = self.fw_error
        return self.rc

    def close(self):
        pass


@pytest.mark.parametrize(
    "err,text",
    [
        (errno.EPERM, "opened for writing"),
        (errno.EBUSY, "disabled after a command timed out"),
        (errno.ENOTTY, "does not answer SEV ioctls"),
        (errno.EINVAL, "unknown command id"),
        (errno.EFAULT, "16 KiB"),
    ],
)
def test_driver_errno_is_explained(err, text):
    client = PspClient(ScriptedTarget(rc=-err))
    with pytest.raises(DeviceError) as info:
        client.platform_command(UserCommand.PEK_GEN)
    assert info.value.errno == err
    assert text in str(info.value)
    assert "PEK_GEN" in str(info.value)


def test_einval_on_a_guest_command_points_at_the_kernel_patch():
    client = PspClient(ScriptedTarget(rc=-errno.EINVAL))
    with pytest.raises(DeviceError, match="xen-patches/linux"):
        client.guest_command(FirmwareCommand.GUEST_STATUS)
    with pytest.raises(DeviceError) as info:
        client.platform_command(UserCommand.PEK_GEN)
    assert "xen-patches" not in str(info.value)


def test_firmware_status_wins_over_eio():
    client = PspClient(ScriptedTarget(rc=-errno.EIO, fw_error=0x12))
    with pytest.raises(status.Active):
        client.platform_command(UserCommand.PEK_GEN)


def test_no_fw_call_reports_the_errno():
    client = PspClient(ScriptedTarget(rc=-errno.EBUSY, fw_error=0xFFFFFFFF))
    with pytest.raises(DeviceError) as info:
        client.platform_command(UserCommand.PDH_GEN)
    assert info.value.errno == errno.EBUSY


def test_request_and_buffer_address_reach_the_target():
    target = ScriptedTarget()
    client = PspClient(target)
    buf = ffi.new("struct sev_user_data_status *")
    client.platform_command(UserCommand.PLATFORM_STATUS, buf)
    assert target.calls == [(device.SEV_ISSUE_CMD, UserCommand.PLATFORM_STATUS, int(ffi.cast("uintptr_t", buf)))]


def test_pdh_export_probes_lengths_then_splits_chain():
    def fill(arg):
        req = ffi.cast("struct sev_user_data_pdh_cert_export *", arg.data)
        if not req.pdh_cert_address:
            req.pdh_cert_len, req.cert_chain_len = CERT_SIZE, PDH_CHAIN_SIZE
            arg.error = 0x04
            return
        ffi.memmove(ffi.cast("uint8_t *", req.pdh_cert_address), b"D" * CERT_SIZE, CERT_SIZE)
        chain = b"P" * CERT_SIZE + b"O" * CERT_SIZE + b"C" * CERT_SIZE
        ffi.memmove(ffi.cast("uint8_t *", req.cert_chain_address), chain, len(chain))

    class ProbeTarget(ScriptedTarget):
        def ioctl(self, request, arg):
            self.calls.append(arg.cmd)
            arg.error = 0
            fill(arg)
            return -errno.EIO if arg.error else 0

    export = Platform(PspClient(ProbeTarget())).pdh_cert_export()
    assert (export.pdh[:1], export.pek[:1], export.oca[:1], export.cek[:1]) == (b"D", b"P", b"O", b"C")
    assert all(len(c) == CERT_SIZE for c in (export.pdh, export.pek, export.oca, export.cek))


def test_missing_device_says_sev_is_not_available(tmp_path):
    with pytest.raises(DeviceError, match="SEV is not available"):
        device.open_device(str(tmp_path / "sev"))
