"""The one exception hierarchy of sevd.

Every error says what was wrong and, where it helps, what to do next.  Messages never carry
secret material (TEK, TIK, launch secrets, private keys): callers pass names and sizes, not bytes.
"""


class SevdError(Exception):
    """Base of every error sevd raises on purpose."""


class InputError(SevdError, ValueError):
    """Malformed input: a file, blob, certificate, config value or request that cannot be used.

    The message names the input (file name or field) and what was wrong with it.
    """


class VerificationError(SevdError):
    """A signature, MAC or measurement did not verify; the message names the failing link."""


class DeviceError(SevdError, OSError):
    """The /dev/sev device refused the request before the firmware ran (an errno from the driver)."""

    def __init__(self, errno_value: int, message: str):
        OSError.__init__(self, errno_value, message)
        self.message = message

    def __str__(self) -> str:
        return self.message
