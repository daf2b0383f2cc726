"""The ABI layer: status codes as spec-named exceptions, policy bits, buffer layouts from the compiler."""

import pytest

from sevd._psp import ffi, lib
from sevd.abi import status
from sevd.abi.commands import FirmwareCommand, UserCommand
from sevd.abi.policy import Policy, PolicyFlag
from sevd.errors import InputError

SPEC_STATUS_NAMES = {
    0x01: "INVALID_PLATFORM_STATE",
    0x02: "INVALID_GUEST_STATE",
    0x03: "INVALID_CONFIG",
    0x04: "INVALID_LEN",
    0x05: "ALREADY_OWNED",
    0x06: "INVALID_CERTIFICATE",
    0x07: "POLICY_FAILURE",
    0x08: "INACTIVE",
    0x09: "INVALID_ADDRESS",
    0x0A: "BAD_SIGNATURE",
    0x0B: "BAD_MEASUREMENT",
    0x0C: "ASID_OWNED",
    0x0D: "INVALID_ASID",
    0x0E: "WBINVD_REQUIRED",
    0x0F: "DFFLUSH_REQUIRED",
    0x10: "INVALID_GUEST",
    0x11: "INVALID_COMMAND",
    0x12: "ACTIVE",
    0x13: "HWERROR_PLATFORM",
    0x14: "HWERROR_UNSAFE",
    0x15: "UNSUPPORTED",
    0x16: "INVALID_PARAM",
    0x17: "RESOURCE_LIMIT",
    0x18: "SECURE_DATA_INVALID",
    0x1D: "AEAD_OFLOW",
    0x27: "INVALID_KEY",
}


@pytest.mark.parametrize("code,name", sorted(SPEC_STATUS_NAMES.items()))
def test_status_code_raises_exception_named_after_spec(code, name):
    with pytest.raises(status.FirmwareError) as info:
        status.raise_for_status("LAUNCH_START", code)
    err = info.value
    assert err.name == name
    assert err.code == code
    assert type(err).__name__ == "".join(part.capitalize() for part in name.split("_"))
    assert name in str(err) and "LAUNCH_START" in str(err)
    assert err.meaning and err.meaning != status.FirmwareError.meaning


def test_success_raises_nothing():
    status.raise_for_status("INIT", 0)


def test_unknown_status_still_raises_with_its_code():
    with pytest.raises(status.FirmwareError) as info:
        status.raise_for_status("ACTIVATE", 0x1E)
    assert type(info.value) is status.FirmwareError
    assert "UNKNOWN_STATUS_0x1E" in str(info.value)


def test_no_fw_call_is_named():
    assert status.error_class(-1) is status.NoFwCall
    assert lib_ret_no_fw_call() == status.FirmwareStatus.NO_FW_CALL


def lib_ret_no_fw_call():
    return -1  # SEV_RET_NO_FW_CALL in linux/psp-sev.h


def test_status_values_match_kernel_enum_order():
    # linux/psp-sev.h numbers the statuses SUCCESS..SECURE_DATA_INVALID consecutively from 0.
    assert [s for s in status.FirmwareStatus if 0 <= s <= 0x18] == list(range(0x19))


def test_command_ids_from_spec():
    assert FirmwareCommand.LAUNCH_START == 0x30
    assert FirmwareCommand.DF_FLUSH == 0x0A
    assert FirmwareCommand.DBG_ENCRYPT == 0x61
    assert UserCommand.GET_ID2 == 8


def test_policy_parse_flags_and_api():
    policy = Policy.parse("NODBG|NOKS|0x00170000")
    assert policy.flags == PolicyFlag.NODBG | PolicyFlag.NOKS
    assert (policy.api_major, policy.api_minor) == (0x17, 0)
    assert not policy.allows_debug()
    assert policy.describe() == "NODBG|NOKS api>=23.0"
    assert str(policy) == "0x00170003"


@pytest.mark.parametrize("bit", range(6, 16))
def test_policy_reserved_bit_refused(bit):
    with pytest.raises(InputError, match="reserved bits"):
        Policy(1 << bit)


def test_policy_unknown_flag_named():
    with pytest.raises(InputError, match="unknown flag 'NOPE'"):
        Policy.parse("NODBG|NOPE")


def test_policy_api_minimum_compare():
    assert Policy.parse("0x18000000").requires_api_newer_than(0, 17)
    assert not Policy.parse("0x11000000").requires_api_newer_than(0, 17)


# Offsets of the firmware command buffers as the SEV API lays them out (packed, little-endian).
FIRMWARE_LAYOUT = {
    "struct sev_data_launch_start": (0x24, {"policy": 4, "dh_cert_address": 8, "session_address": 0x18}),
    "struct sev_data_launch_update_data": (0x14, {"address": 8, "len": 0x10}),
    "struct sev_data_launch_measure": (0x14, {"address": 8, "len": 0x10}),
    "struct sev_data_launch_secret": (0x34, {"hdr_address": 8, "guest_address": 0x18, "trans_address": 0x28}),
    "struct sev_data_guest_status": (0x0D, {"policy": 4, "asid": 8, "state": 0x0C}),
    "struct sev_data_activate": (8, {"asid": 4}),
    "struct sev_data_dbg": (0x1C, {"src_addr": 8, "dst_addr": 0x10, "len": 0x18}),
}


@pytest.mark.parametrize("ctype", sorted(FIRMWARE_LAYOUT))
def test_firmware_buffer_layout(ctype):
    size, offsets = FIRMWARE_LAYOUT[ctype]
    assert ffi.sizeof(ctype) == size
    for field, offset in offsets.items():
        assert ffi.offsetof(ctype, field) == offset


def test_kernel_structs_come_from_the_header():
    # Packed in linux/psp-sev.h: a layout typed by hand with natural alignment would differ.
    assert ffi.sizeof("struct sev_issue_cmd") == 16
    assert ffi.offsetof("struct sev_issue_cmd", "error") == 12
    assert ffi.sizeof("struct sev_user_data_status") == 12
    assert ffi.offsetof("struct sev_user_data_status", "guest_count") == 8
    assert lib.SEV_STATUS_FLAGS_CONFIG_ES == 0x100
