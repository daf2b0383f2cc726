"""The xenstore wire protocol: message types, the frame header and error names.

This module is the single definition of the protocol used by sevd's xenstore code (the xenstored stand-in and
any raw-socket client). Facts come from Xen's ``xen/include/public/io/xs_wire.h`` and ``docs/misc/xenstore.txt``:

* every message, in both directions, is a ``struct xsd_sockmsg { uint32 type, req_id, tx_id, len; }`` header in
  the host's byte order (little-endian on x86) followed by ``len`` bytes of payload, ``len <= 4096``;
* payloads are NUL-terminated strings, except the value of READ replies and WRITE requests (raw bytes);
* an error reply has type ``ERROR`` and payload ``b"E<name>\\0"`` with the errno *name*, never its number;
* replies copy ``req_id`` and ``tx_id`` from the request; watch events carry ``req_id = tx_id = 0``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DOMID_SELF",
    "HEADER",
    "HEADER_SIZE",
    "OK",
    "SPECIAL_INTRODUCE",
    "SPECIAL_RELEASE",
    "XSD_ERRORS",
    "XENSTORE_ABS_PATH_MAX",
    "XENSTORE_PAYLOAD_MAX",
    "XENSTORE_REL_PATH_MAX",
    "FrameDecoder",
    "FrameTooLarge",
    "Header",
    "Message",
    "XsType",
    "decode_header",
    "encode",
    "error_payload",
    "join_strings",
    "split_strings",
]


class XsType(enum.IntEnum):
    """``enum xsd_sockmsg_type`` (XS_DEBUG is the old name of XS_CONTROL; 20 was XS_RESTRICT, now invalid)."""

    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


XS_DEBUG = XsType.CONTROL
XS_RESTRICT_REMOVED = 20
XS_TYPE_COUNT = 23
XS_INVALID = 0xFFFF

XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

#: ``DOMID_SELF`` from xen.h, accepted by IS_DOMAIN_INTRODUCED.
DOMID_SELF = 0x7FF0

SPECIAL_INTRODUCE = "@introduceDomain"
SPECIAL_RELEASE = "@releaseDomain"

#: The errno names xenstored can put on the wire (``xsd_errors[]`` in xs_wire.h, in that order). Any other
#: error is sent as EINVAL, the first entry.
XSD_ERRORS: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
)

OK = b"OK\0"

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size  # 16


@dataclass(frozen=True, slots=True)
class Header:
    type: int
    req_id: int
    tx_id: int
    len: int


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    req_id: int
    tx_id: int
    payload: bytes


class FrameTooLarge(ValueError):
    """A header announced a payload longer than XENSTORE_PAYLOAD_MAX."""


def decode_header(data: bytes) -> Header:
    """Decode the first 16 bytes of ``data`` as an ``xsd_sockmsg`` header."""
    return Header(*HEADER.unpack_from(data))


def encode(type_: int, payload: bytes = b"", req_id: int = 0, tx_id: int = 0) -> bytes:
    """One frame: header + payload. Raises FrameTooLarge past XENSTORE_PAYLOAD_MAX."""
    if len(payload) > XENSTORE_PAYLOAD_MAX:
        raise FrameTooLarge(f"payload of {len(payload)} bytes exceeds {XENSTORE_PAYLOAD_MAX}")
    return HEADER.pack(int(type_), req_id & 0xFFFFFFFF, tx_id & 0xFFFFFFFF, len(payload)) + payload


def error_payload(name: str) -> bytes:
    """Payload of an ERROR reply; names outside XSD_ERRORS become EINVAL, as xenstored does."""
    if name not in XSD_ERRORS:
        name = "EINVAL"
    return name.encode("ascii") + b"\0"


def join_strings(items: Iterable[str | bytes]) -> bytes:
    """Each item followed by a NUL (the ``<foo>|*`` notation of xenstore.txt)."""
    out = bytearray()
    for item in items:
        out += item.encode() if isinstance(item, str) else item
        out += b"\0"
    return bytes(out)


def split_strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of ``payload``; bytes after the last NUL are ignored (as xenstored does)."""
    parts = payload.split(b"\0")
    return parts[:-1]


class FrameDecoder:
    """Incremental decoder of a byte stream into Messages.

    ``feed()`` returns the complete messages so far. A header announcing more than XENSTORE_PAYLOAD_MAX stops
    decoding: the messages before it are still returned and ``too_large`` becomes true (xenstored then drops the
    connection). ``pending`` is the number of buffered bytes of an incomplete frame.
    """

    __slots__ = ("_buf", "too_large")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.too_large = False

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        if self.too_large:
            return []
        buf = self._buf
        buf += data
        out: list[Message] = []
        off = 0
        while len(buf) - off >= HEADER_SIZE:
            type_, req_id, tx_id, length = HEADER.unpack_from(buf, off)
            if length > XENSTORE_PAYLOAD_MAX:
                self.too_large = True
                break
            end = off + HEADER_SIZE + length
            if len(buf) < end:
                break
            out.append(Message(type_, req_id, tx_id, bytes(buf[off + HEADER_SIZE : end])))
            off = end
        del buf[:off]
        return out
