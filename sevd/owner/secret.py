"""Secrets for LAUNCH_SECRET: OVMF's GUIDed secret table and the packaged (encrypted, MAC'd) secret."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import struct
import uuid
from collections.abc import Sequence

from sevd.abi import launch
from sevd.abi.launch import LaunchMeasurement, SecretHeader, TransportKeys
from sevd.errors import InputError
from sevd.owner import files

# The table header GUID OVMF and Linux's efi_secret look for; GUIDs are stored in EFI (bytes_le) order.
SECRET_TABLE_GUID = uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b")
ENTRY_HEADER_SIZE = 20  # GUID + u32 length


def ovmf_secret_table(entries: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    """header GUID, u32 total length; then per entry GUID, u32 length (header included), data; padded to 16."""
    if not entries:
        raise InputError("secret table: at least one GUID=FILE entry is needed")
    body = b""
    for guid, data in entries:
        body += guid.bytes_le + struct.pack("<I", ENTRY_HEADER_SIZE + len(data)) + data
    total = ENTRY_HEADER_SIZE + len(body)
    total += -total % 16
    table = SECRET_TABLE_GUID.bytes_le + struct.pack("<I", total) + body
    table += bytes(total - len(table))
    launch.check_secret_length(len(table), "secret table")
    return table


def parse_ovmf_secret_table(data: bytes, name: str = "secret table") -> list[tuple[uuid.UUID, bytes]]:
    if len(data) < ENTRY_HEADER_SIZE or uuid.UUID(bytes_le=bytes(data[:16])) != SECRET_TABLE_GUID:
        raise InputError(f"{name}: does not start with the secret table GUID {SECRET_TABLE_GUID}")
    total = struct.unpack_from("<I", data, 16)[0]
    if total > len(data):
        raise InputError(f"{name}: table length {total} exceeds the {len(data)} bytes given")
    entries = []
    off = ENTRY_HEADER_SIZE
    while off + ENTRY_HEADER_SIZE <= total:
        guid_bytes = bytes(data[off : off + 16])
        if not any(guid_bytes):
            break  # padding
        length = struct.unpack_from("<I", data, off + 16)[0]
        if length < ENTRY_HEADER_SIZE or off + length > total:
            raise InputError(f"{name}: entry at offset {off} has a bad length {length}")
        entries.append((uuid.UUID(bytes_le=guid_bytes), bytes(data[off + ENTRY_HEADER_SIZE : off + length])))
        off += length
    return entries


def parse_guid_file_arg(text: str) -> tuple[uuid.UUID, str]:
    guid, sep, path = text.partition("=")
    if not sep or not path:
        raise InputError(f"--guid {text!r}: expected GUID=FILE")
    try:
        return uuid.UUID(guid), path
    except ValueError:
        raise InputError(f"--guid {text!r}: {guid!r} is not a GUID") from None


@dataclasses.dataclass(frozen=True)
class PackagedSecret:
    header: SecretHeader
    ciphertext: bytes


def package_secret(
    keys: TransportKeys, secret: bytes, measurement: LaunchMeasurement, flags: int = 0
) -> PackagedSecret:
    """Encrypt and MAC a secret for the guest whose launch produced `measurement`."""
    header, ciphertext = launch.seal_secret(keys, secret, measurement.measure, flags)
    return PackagedSecret(header, ciphertext)


def check_packaged_secret(keys: TransportKeys, packaged: PackagedSecret, measurement: LaunchMeasurement) -> bytes:
    """Recompute the header MAC as the firmware will; raise VerificationError if anything was altered."""
    return launch.open_secret(keys, packaged.header, packaged.ciphertext, measurement.measure)


def write_packaged_secret(out_dir: str | os.PathLike[str], packaged: PackagedSecret) -> list[pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        files.write_public(out / files.SECRET_HEADER, packaged.header.to_bytes()),
        files.write_public(out / files.SECRET, packaged.ciphertext),
    ]
