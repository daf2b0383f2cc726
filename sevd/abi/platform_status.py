"""PLATFORM_STATUS's flags word (SEV API 0.24, 5.5.2), as the kernel's `sev_user_data_status.flags` holds it.

The kernel reads bytes 3-6 of the firmware's answer into one little-endian u32: byte 3 bit 0 is OWNER,
byte 4 bit 0 is CONFIG.ES (linux/psp-sev.h: SEV_STATUS_FLAGS_CONFIG_ES = 0x0100).
"""

from __future__ import annotations

import enum


class StatusFlag(enum.IntFlag):
    OWNER = 1 << 0  # externally owned: a PEK certificate signed by an OCA was imported
    CONFIG_ES = 1 << 8  # SEV-ES enabled at INIT (the kernel INITs with it when it could allocate the TMR)


def status_flags(*, owner: bool, es: bool) -> StatusFlag:
    """The flags word a firmware in this configuration reports."""
    return (StatusFlag.OWNER if owner else StatusFlag(0)) | (StatusFlag.CONFIG_ES if es else StatusFlag(0))
