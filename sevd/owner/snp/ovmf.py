"""What an OVMF image tells the SNP launch: its GUIDed footer table, the SEV metadata sections, the SEV-ES reset
block and where the SEV hashes table goes.

OVMF (edk2 OvmfPkg/ResetVector) ends with a table the VMM reads: the last 32 bytes are the reset vector area;
just before them is a footer entry (u16 size, GUID 96b582de-...) whose size covers the whole table, and the table
is a list of entries read backwards from there, each ending in (u16 size, GUID) with its data before it.  The SEV
metadata entry (dc886566-...) holds the offset from the end of the image of an "ASEV" header (signature, u32
size, u32 version 1, u32 count) followed by count (u32 gpa, u32 size, u32 type) section descriptors.  QEMU maps
the image to end at 4 GiB.  The reading matches QEMU's and virtee's sev-snp-measure (which the tests compare with).
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass, field

from sevd.errors import InputError

FOUR_GIB = 1 << 32
FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_HASH_TABLE_RV_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
SEV_ES_RESET_BLOCK_GUID = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
SEV_METADATA_GUID = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc")
_ENTRY = struct.Struct("<H16s")  # size, GUID (EFI byte order)
_RESET_AREA = 32  # the footer entry ends this many bytes before the end of the image
_METADATA_HEADER = struct.Struct("<4sIII")  # "ASEV", size, version, number of sections
_SECTION = struct.Struct("<III")  # gpa, size, type


class SectionType(enum.IntEnum):
    """OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm."""

    SNP_SEC_MEM = 1
    SNP_SECRETS = 2
    CPUID = 3
    SVSM_CAA = 4
    SNP_KERNEL_HASHES = 0x10


@dataclass(frozen=True)
class MetadataSection:
    gpa: int
    size: int
    type: SectionType


@dataclass(frozen=True)
class OvmfImage:
    data: bytes = field(repr=False)
    table: dict[uuid.UUID, bytes]
    sections: tuple[MetadataSection, ...]
    name: str = "OVMF"

    @property
    def gpa(self) -> int:
        """The image is mapped to end at 4 GiB."""
        return FOUR_GIB - len(self.data)

    @classmethod
    def parse(cls, data: bytes, name: str = "OVMF") -> OvmfImage:
        if len(data) == 0 or len(data) % 4096:
            raise InputError(f"{name}: {len(data)} bytes is not a whole number of 4 KiB pages (not an OVMF image)")
        table = _footer_table(data, name)
        return cls(data, table, _metadata(data, table, name), name)

    def has_section(self, kind: SectionType) -> bool:
        return any(s.type == kind for s in self.sections)

    def sev_es_reset_eip(self) -> int:
        entry = self.table.get(SEV_ES_RESET_BLOCK_GUID)
        if entry is None or len(entry) < 4:
            raise InputError(f"{self.name}: no SEV-ES reset block in the OVMF footer table (not an SEV build of OVMF)")
        return int.from_bytes(entry[:4], "little")

    def sev_hashes_table_gpa(self) -> int:
        """Where OVMF expects the SEV hashes table (0: this OVMF does not take one)."""
        entry = self.table.get(SEV_HASH_TABLE_RV_GUID)
        if entry is None or len(entry) < 4:
            return 0
        return int.from_bytes(entry[:4], "little")


def _footer_table(data: bytes, name: str) -> dict[uuid.UUID, bytes]:
    footer_at = len(data) - _RESET_AREA - _ENTRY.size
    if footer_at < 0:
        return {}
    size, guid = _ENTRY.unpack_from(data, footer_at)
    if uuid.UUID(bytes_le=guid) != FOOTER_GUID:
        return {}
    table_size = size - _ENTRY.size
    if table_size < 0 or table_size > footer_at:
        raise InputError(f"{name}: OVMF footer table size {size} is out of the image")
    blob = data[footer_at - table_size : footer_at]
    table: dict[uuid.UUID, bytes] = {}
    while len(blob) >= _ENTRY.size:
        entry_size, guid = _ENTRY.unpack_from(blob, len(blob) - _ENTRY.size)
        if entry_size < _ENTRY.size or entry_size > len(blob):
            raise InputError(f"{name}: OVMF footer table entry {uuid.UUID(bytes_le=guid)} has size {entry_size}")
        table[uuid.UUID(bytes_le=guid)] = blob[len(blob) - entry_size : len(blob) - _ENTRY.size]
        blob = blob[: len(blob) - entry_size]
    return table


def _metadata(data: bytes, table: dict[uuid.UUID, bytes], name: str) -> tuple[MetadataSection, ...]:
    entry = table.get(SEV_METADATA_GUID)
    if entry is None:
        return ()
    if len(entry) < 4:
        raise InputError(f"{name}: the SEV metadata footer entry is {len(entry)} bytes")
    start = len(data) - int.from_bytes(entry[:4], "little")
    if not 0 <= start <= len(data) - _METADATA_HEADER.size:
        raise InputError(f"{name}: the SEV metadata offset points outside the image")
    signature, size, version, count = _METADATA_HEADER.unpack_from(data, start)
    if signature != b"ASEV" or version != 1:
        raise InputError(f"{name}: the SEV metadata header is not ASEV version 1")
    end = start + _METADATA_HEADER.size + count * _SECTION.size
    if end > len(data) or end > start + size:
        raise InputError(f"{name}: the SEV metadata ({count} sections) runs past its header's size or the image")
    sections = []
    for i in range(count):
        gpa, length, kind = _SECTION.unpack_from(data, start + _METADATA_HEADER.size + i * _SECTION.size)
        try:
            section_type = SectionType(kind)
        except ValueError:
            raise InputError(f"{name}: SEV metadata section {i} has unknown type {kind:#x}") from None
        if gpa % 4096 or length % 4096:
            raise InputError(f"{name}: SEV metadata section {i} [{gpa:#x}, +{length:#x}) is not page-aligned")
        sections.append(MetadataSection(gpa, length, section_type))
    return tuple(sections)
