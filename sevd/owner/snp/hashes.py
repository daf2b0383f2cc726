"""The SEV hashes table QEMU puts in OVMF's reserved page for a direct kernel boot (-kernel/-initrd/-append).

Layout (QEMU target/i386/sev.c, SevHashTable; OVMF BlobVerifierLibSevHashes): a header GUID + u16 length, then
three entries (GUID, u16 length, SHA-256) for the command line, the initrd and the kernel, the whole zero-padded
to a multiple of 16.  The command line is hashed with its terminating NUL (just the NUL when empty); a missing
initrd hashes as empty.  GUIDs are in EFI byte order.
"""

from __future__ import annotations

import hashlib
import struct
import uuid

from sevd.errors import InputError

TABLE_GUID = uuid.UUID("9438d606-4f22-4cc9-b479-a793d411fd21")
KERNEL_GUID = uuid.UUID("4de79437-abd2-427f-b835-d5b172d2045b")
INITRD_GUID = uuid.UUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
CMDLINE_GUID = uuid.UUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
_ENTRY = struct.Struct("<16sH32s")
_HEADER = struct.Struct("<16sH")
TABLE_SIZE = _HEADER.size + 3 * _ENTRY.size
PAGE = 4096


def hashes_table(kernel: bytes, initrd: bytes | None, cmdline: str | None) -> bytes:
    """The padded table (QEMU's PaddedSevHashTable)."""
    entries = [
        (CMDLINE_GUID, (cmdline or "").encode() + b"\0"),
        (INITRD_GUID, initrd or b""),
        (KERNEL_GUID, kernel),
    ]
    body = b"".join(_ENTRY.pack(g.bytes_le, _ENTRY.size, hashlib.sha256(d).digest()) for g, d in entries)
    table = _HEADER.pack(TABLE_GUID.bytes_le, TABLE_SIZE) + body
    return table + bytes(-len(table) % 16)


def hashes_page(kernel: bytes, initrd: bytes | None, cmdline: str | None, offset: int) -> bytes:
    """The 4 KiB page holding the table at `offset` (the table's GPA within its page)."""
    table = hashes_table(kernel, initrd, cmdline)
    if offset + len(table) > PAGE:
        raise InputError(f"the SEV hashes table at page offset {offset:#x} does not fit in its page")
    return bytes(offset) + table + bytes(PAGE - offset - len(table))
