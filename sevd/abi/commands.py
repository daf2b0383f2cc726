"""Command ids: the SEV firmware's (AMD SEV API 0.24) and the Linux /dev/sev user ioctl's."""

import enum


class FirmwareCommand(enum.IntEnum):
    """Firmware command ids as the PSP mailbox takes them (SEV API 0.24, table of commands)."""

    INIT = 0x01
    SHUTDOWN = 0x02
    PLATFORM_RESET = 0x03
    PLATFORM_STATUS = 0x04
    PEK_GEN = 0x05
    PEK_CSR = 0x06
    PEK_CERT_IMPORT = 0x07
    PDH_CERT_EXPORT = 0x08
    PDH_GEN = 0x09
    DF_FLUSH = 0x0A
    DOWNLOAD_FIRMWARE = 0x0B
    GET_ID = 0x0C
    DECOMMISSION = 0x20
    ACTIVATE = 0x21
    DEACTIVATE = 0x22
    GUEST_STATUS = 0x23
    LAUNCH_START = 0x30
    LAUNCH_UPDATE_DATA = 0x31
    LAUNCH_UPDATE_VMSA = 0x32
    LAUNCH_MEASURE = 0x33
    LAUNCH_UPDATE_SECRET = 0x34
    LAUNCH_FINISH = 0x35
    SEND_START = 0x40
    SEND_UPDATE_DATA = 0x41
    SEND_UPDATE_VMSA = 0x42
    SEND_FINISH = 0x43
    SEND_CANCEL = 0x44
    RECEIVE_START = 0x50
    RECEIVE_UPDATE_DATA = 0x51
    RECEIVE_UPDATE_VMSA = 0x52
    RECEIVE_FINISH = 0x53
    DBG_DECRYPT = 0x60
    DBG_ENCRYPT = 0x61


# Commands the Dom0 kernel passes through SEV_ISSUE_GUEST_CMD (xen-patches/linux, sev_guest_cmd_allowed):
# launch and teardown, GUEST_STATUS, DBG_*, plus DF_FLUSH, which the daemon issues after Xen's WBINVD to
# make ASIDs reusable.  No SEND_*/RECEIVE_*: the patch answers EINVAL (sevd does not migrate).
GUEST_COMMANDS = frozenset(
    {
        FirmwareCommand.DF_FLUSH,
        FirmwareCommand.DECOMMISSION,
        FirmwareCommand.ACTIVATE,
        FirmwareCommand.DEACTIVATE,
        FirmwareCommand.GUEST_STATUS,
        FirmwareCommand.LAUNCH_START,
        FirmwareCommand.LAUNCH_UPDATE_DATA,
        FirmwareCommand.LAUNCH_UPDATE_VMSA,
        FirmwareCommand.LAUNCH_MEASURE,
        FirmwareCommand.LAUNCH_UPDATE_SECRET,
        FirmwareCommand.LAUNCH_FINISH,
        FirmwareCommand.DBG_DECRYPT,
        FirmwareCommand.DBG_ENCRYPT,
    }
)


class UserCommand(enum.IntEnum):
    """`cmd` values of SEV_ISSUE_CMD, from the kernel's linux/psp-sev.h enum."""

    FACTORY_RESET = 0
    PLATFORM_STATUS = 1
    PEK_GEN = 2
    PEK_CSR = 3
    PDH_GEN = 4
    PDH_CERT_EXPORT = 5
    PEK_CERT_IMPORT = 6
    GET_ID = 7
    GET_ID2 = 8


# User commands that change platform state: the kernel refuses them on a read-only fd (EPERM).
WRITE_COMMANDS = frozenset(
    {
        UserCommand.FACTORY_RESET,
        UserCommand.PEK_GEN,
        UserCommand.PEK_CSR,
        UserCommand.PDH_GEN,
        UserCommand.PEK_CERT_IMPORT,
    }
)


class PlatformState(enum.IntEnum):
    UNINIT = 0
    INIT = 1
    WORKING = 2


class FirmwareGuestState(enum.IntEnum):
    """The firmware's guest context states, as GUEST_STATUS reports them (0 = no such guest).

    Not the daemon's view of a launch (`sevd.launch.GuestState`).
    """

    INVALID = 0
    LUPDATE = 1
    LSECRET = 2
    RUNNING = 3
    SUPDATE = 4
    RUPDATE = 5
    SENT = 6


# Fixed sizes of the SEV API's blobs.
CERT_SIZE = 0x824
PDH_CHAIN_SIZE = 3 * CERT_SIZE  # PEK ‖ OCA ‖ CEK
SESSION_SIZE = 0x80
PACKET_HEADER_SIZE = 0x34
MEASUREMENT_SIZE = 0x30
GET_ID_SIZE = 64
VMSA_SIZE = 4096
SECRET_MAX_LEN = 0x5000
# The kernel caps every user blob at 16 KiB (sev-dev.c, SEV_FW_BLOB_MAX_SIZE).
USER_BLOB_MAX = 16 * 1024
