"""Firmware status codes (SEV API 0.24, and the later codes up to INVALID_KEY 0x27).

Each non-success status is an exception class named after the spec (INVALID_GUEST_STATE →
`InvalidGuestState`), carrying the code, the spec name and a meaning an operator can act on.
The real device client and the simulated PSP both raise and map through this one table.
"""

import enum

from sevd.errors import SevdError


class FirmwareStatus(enum.IntEnum):
    NO_FW_CALL = -1
    SUCCESS = 0x00
    INVALID_PLATFORM_STATE = 0x01
    INVALID_GUEST_STATE = 0x02
    INVALID_CONFIG = 0x03
    INVALID_LEN = 0x04
    ALREADY_OWNED = 0x05
    INVALID_CERTIFICATE = 0x06
    POLICY_FAILURE = 0x07
    INACTIVE = 0x08
    INVALID_ADDRESS = 0x09
    BAD_SIGNATURE = 0x0A
    BAD_MEASUREMENT = 0x0B
    ASID_OWNED = 0x0C
    INVALID_ASID = 0x0D
    WBINVD_REQUIRED = 0x0E
    DFFLUSH_REQUIRED = 0x0F
    INVALID_GUEST = 0x10
    INVALID_COMMAND = 0x11
    ACTIVE = 0x12
    HWERROR_PLATFORM = 0x13
    HWERROR_UNSAFE = 0x14
    UNSUPPORTED = 0x15
    INVALID_PARAM = 0x16
    RESOURCE_LIMIT = 0x17
    SECURE_DATA_INVALID = 0x18
    INVALID_PAGE_SIZE = 0x19
    INVALID_PAGE_STATE = 0x1A
    INVALID_MDATA_ENTRY = 0x1B
    INVALID_PAGE_OWNER = 0x1C
    AEAD_OFLOW = 0x1D
    RING_BUFFER_EXIT = 0x1F
    RMP_INIT_REQUIRED = 0x20
    BAD_SVN = 0x21
    BAD_VERSION = 0x22
    SHUTDOWN_REQUIRED = 0x23
    UPDATE_FAILED = 0x24
    RESTORE_REQUIRED = 0x25
    RMP_INITIALIZATION_FAILED = 0x26
    INVALID_KEY = 0x27


class FirmwareError(SevdError):
    """A firmware command ended with a status other than SUCCESS."""

    status: FirmwareStatus | None = None
    meaning = "the firmware returned an unknown status"

    def __init__(self, command: str, code: int | None = None, detail: str = ""):
        self.command = command
        if code is None:
            if self.status is None:
                raise TypeError(f"{type(self).__name__} names no status: give the code the firmware answered")
            code = int(self.status)
        self.code = code
        self.detail = detail
        super().__init__(str(self))

    @property
    def name(self) -> str:
        """The spec name of the status, e.g. INVALID_GUEST_STATE."""
        return self.status.name if self.status is not None else f"UNKNOWN_STATUS_0x{self.code:X}"

    def __str__(self) -> str:
        code_text = f"0x{self.code:02X}" if self.code >= 0 else str(self.code)
        text = f"{self.command}: {self.name} ({code_text}): {self.meaning}"
        return f"{text} [{self.detail}]" if self.detail else text


class NoFwCall(FirmwareError):
    status = FirmwareStatus.NO_FW_CALL
    meaning = "the driver failed before the firmware ran; see the errno of the ioctl"


class InvalidPlatformState(FirmwareError):
    status = FirmwareStatus.INVALID_PLATFORM_STATE
    meaning = "the platform is in the wrong state for this command (check `platform status`; INIT or SHUTDOWN first)"


class InvalidGuestState(FirmwareError):
    status = FirmwareStatus.INVALID_GUEST_STATE
    meaning = "the guest is in the wrong state for this command (check `guest-status`)"


class InvalidConfig(FirmwareError):
    status = FirmwareStatus.INVALID_CONFIG
    meaning = "the platform configuration is invalid (INIT flags or reserved bytes)"


class InvalidLen(FirmwareError):
    status = FirmwareStatus.INVALID_LEN
    meaning = "a buffer length is wrong; the firmware wrote back the length it needs"


class AlreadyOwned(FirmwareError):
    status = FirmwareStatus.ALREADY_OWNED
    meaning = "the platform is already owned; FACTORY_RESET before importing another PEK certificate"


class InvalidCertificate(FirmwareError):
    status = FirmwareStatus.INVALID_CERTIFICATE
    meaning = "a certificate is malformed or of the wrong kind (usage, algorithm, curve or key)"


class PolicyFailure(FirmwareError):
    status = FirmwareStatus.POLICY_FAILURE
    meaning = "the guest policy forbids this command or is not acceptable to this firmware"


class Inactive(FirmwareError):
    status = FirmwareStatus.INACTIVE
    meaning = "the guest has no ASID; ACTIVATE it first"


class InvalidAddress(FirmwareError):
    status = FirmwareStatus.INVALID_ADDRESS
    meaning = "an address is misaligned or outside memory the firmware may touch"


class BadSignature(FirmwareError):
    status = FirmwareStatus.BAD_SIGNATURE
    meaning = "a signature did not verify"


class BadMeasurement(FirmwareError):
    status = FirmwareStatus.BAD_MEASUREMENT
    meaning = "a MAC did not verify (launch session or secret packet): wrong keys or tampered data"


class AsidOwned(FirmwareError):
    status = FirmwareStatus.ASID_OWNED
    meaning = "the ASID is already bound to another guest"


class InvalidAsid(FirmwareError):
    status = FirmwareStatus.INVALID_ASID
    meaning = "the ASID is 0, out of range, or in the wrong range for this guest (SEV-ES vs SEV)"


class WbinvdRequired(FirmwareError):
    status = FirmwareStatus.WBINVD_REQUIRED
    meaning = "WBINVD must run on all CPUs before DF_FLUSH"


class DfflushRequired(FirmwareError):
    status = FirmwareStatus.DFFLUSH_REQUIRED
    meaning = "the ASID was released and is dirty; DF_FLUSH before reusing it"


class InvalidGuest(FirmwareError):
    status = FirmwareStatus.INVALID_GUEST
    meaning = "no guest has this handle"


class InvalidCommand(FirmwareError):
    status = FirmwareStatus.INVALID_COMMAND
    meaning = "the firmware does not know this command"


class Active(FirmwareError):
    status = FirmwareStatus.ACTIVE
    meaning = "the guest is still bound to an ASID; DEACTIVATE it first"


class HwerrorPlatform(FirmwareError):
    status = FirmwareStatus.HWERROR_PLATFORM
    meaning = "a hardware error in the platform; the platform may need a reset"


class HwerrorUnsafe(FirmwareError):
    status = FirmwareStatus.HWERROR_UNSAFE
    meaning = "a hardware error left the platform unsafe; reboot the host"


class Unsupported(FirmwareError):
    status = FirmwareStatus.UNSUPPORTED
    meaning = "this firmware or configuration does not support the feature"


class InvalidParam(FirmwareError):
    status = FirmwareStatus.INVALID_PARAM
    meaning = "a command parameter is invalid"


class ResourceLimit(FirmwareError):
    status = FirmwareStatus.RESOURCE_LIMIT
    meaning = "the firmware ran out of a resource (guest slots or VCPU pool)"


class SecureDataInvalid(FirmwareError):
    status = FirmwareStatus.SECURE_DATA_INVALID
    meaning = "the firmware's persistent data failed its integrity check and was erased"


class InvalidPageSize(FirmwareError):
    status = FirmwareStatus.INVALID_PAGE_SIZE
    meaning = "the page size is invalid for this command"


class InvalidPageState(FirmwareError):
    status = FirmwareStatus.INVALID_PAGE_STATE
    meaning = "the page is in the wrong RMP state"


class InvalidMdataEntry(FirmwareError):
    status = FirmwareStatus.INVALID_MDATA_ENTRY
    meaning = "a metadata entry is invalid"


class InvalidPageOwner(FirmwareError):
    status = FirmwareStatus.INVALID_PAGE_OWNER
    meaning = "the page is owned by another guest"


class AeadOflow(FirmwareError):
    status = FirmwareStatus.AEAD_OFLOW
    meaning = "the AEAD counter would overflow; the guest must be rekeyed"


class RingBufferExit(FirmwareError):
    status = FirmwareStatus.RING_BUFFER_EXIT
    meaning = "the command ring buffer was exited"


class RmpInitRequired(FirmwareError):
    status = FirmwareStatus.RMP_INIT_REQUIRED
    meaning = "the RMP must be initialised first"


class BadSvn(FirmwareError):
    status = FirmwareStatus.BAD_SVN
    meaning = "the security version number is not acceptable"


class BadVersion(FirmwareError):
    status = FirmwareStatus.BAD_VERSION
    meaning = "the firmware version is not acceptable"


class ShutdownRequired(FirmwareError):
    status = FirmwareStatus.SHUTDOWN_REQUIRED
    meaning = "the platform must be shut down first"


class UpdateFailed(FirmwareError):
    status = FirmwareStatus.UPDATE_FAILED
    meaning = "the firmware update failed"


class RestoreRequired(FirmwareError):
    status = FirmwareStatus.RESTORE_REQUIRED
    meaning = "the firmware must be restored first"


class RmpInitializationFailed(FirmwareError):
    status = FirmwareStatus.RMP_INITIALIZATION_FAILED
    meaning = "the RMP initialisation failed"


class InvalidKey(FirmwareError):
    status = FirmwareStatus.INVALID_KEY
    meaning = "the key is invalid"


_BY_CODE: dict[int, type[FirmwareError]] = {
    int(cls.status): cls for cls in FirmwareError.__subclasses__() if cls.status is not None
}


def error_class(code: int) -> type[FirmwareError]:
    """The exception class for a status code; FirmwareError itself for codes the spec does not name."""
    return _BY_CODE.get(code, FirmwareError)


def raise_for_status(command: str, code: int, detail: str = "") -> None:
    """Raise the spec-named exception for a non-zero status; return on SUCCESS."""
    if code == FirmwareStatus.SUCCESS:
        return
    raise error_class(code)(command, code, detail)
