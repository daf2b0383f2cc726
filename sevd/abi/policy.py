"""The guest policy word (SEV API 0.24, "Guest Policy"): one parser, one formatter, one validator."""

from __future__ import annotations

import dataclasses
import enum

from sevd.errors import InputError


class PolicyFlag(enum.IntFlag):
    NODBG = 1 << 0  # debugging (DBG_DECRYPT/DBG_ENCRYPT) forbidden
    NOKS = 1 << 1  # key sharing with other guests forbidden
    ES = 1 << 2  # SEV-ES guest (encrypted register state)
    NOSEND = 1 << 3  # migration (SEND_*) forbidden
    DOMAIN = 1 << 4  # migration only within the same platform owner's domain
    SEV = 1 << 5  # migration only to SEV-capable platforms


RESERVED_MASK = 0x0000FFC0  # bits 6-15 must be zero
API_MAJOR_SHIFT = 16
API_MINOR_SHIFT = 24


@dataclasses.dataclass(frozen=True)
class Policy:
    """A validated 32-bit guest policy."""

    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value <= 0xFFFFFFFF:
            raise InputError(f"policy 0x{self.value:x} does not fit in 32 bits")
        if self.value & RESERVED_MASK:
            raise InputError(
                f"policy 0x{self.value:08x} sets reserved bits 0x{self.value & RESERVED_MASK:04x} (bits 6-15 must be 0)"
            )

    @classmethod
    def parse(cls, text: str | int) -> Policy:
        """From an int, a hex/decimal string ("0x1", "5"), or flag names joined by "|" or ","."""
        if isinstance(text, int):
            return cls(text)
        words = [w.strip() for w in text.replace("|", ",").split(",") if w.strip()]
        if not words:
            raise InputError("policy is empty")
        value = 0
        for word in words:
            try:
                value |= int(word, 0)
            except ValueError:
                try:
                    value |= PolicyFlag[word.upper()]
                except KeyError:
                    known = ", ".join(f.name for f in PolicyFlag if f.name)
                    raise InputError(f"unknown flag {word!r} (known: {known})") from None
        return cls(int(value))

    @property
    def flags(self) -> PolicyFlag:
        return PolicyFlag(self.value & 0x3F)

    @property
    def api_major(self) -> int:
        return (self.value >> API_MAJOR_SHIFT) & 0xFF

    @property
    def api_minor(self) -> int:
        return (self.value >> API_MINOR_SHIFT) & 0xFF

    def allows_debug(self) -> bool:
        return not self.flags & PolicyFlag.NODBG

    def is_es(self) -> bool:
        return bool(self.flags & PolicyFlag.ES)

    def requires_api_newer_than(self, major: int, minor: int) -> bool:
        """True when the policy's minimum firmware API is above `major.minor`."""
        return (self.api_major, self.api_minor) > (major, minor)

    def describe(self) -> str:
        """Human form, e.g. "NODBG|NOKS api>=0.0"."""
        names = [f.name for f in PolicyFlag if f.name and self.flags & f]
        return f"{'|'.join(names) or 'none'} api>={self.api_major}.{self.api_minor}"

    def __int__(self) -> int:
        return self.value

    def __str__(self) -> str:
        return f"0x{self.value:08x}"
