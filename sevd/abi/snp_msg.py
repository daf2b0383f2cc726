"""SEV-SNP guest messages: what a guest sends the firmware through SNP_GUEST_REQUEST (SNP ABI 56860, chapter 7
"Guest Messages": the message header, MSG_REPORT_REQ/RSP, MSG_KEY_REQ/RSP) and the secrets page that holds the
VMPCKs (SNP ABI "Secrets Page Format").  The header is authenticated, the payload encrypted with AES-256-GCM under
the VMPCK the header names; the IV is the 64-bit sequence number, zero-extended to 96 bits.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sevd.errors import InputError, VerificationError

HEADER_SIZE = 0x60
AEAD_ALGO_AES_256_GCM = 1
HEADER_VERSION = 1
AUTHTAG_SIZE = 16  # of the 32-byte AUTHTAG field, AES-GCM fills 16
AAD_OFFSET = 0x30  # the header from ALGO to its end is the additional authenticated data
VMPCK_SIZE = 32
SEQNO_MAX = (1 << 64) - 1


class MsgType(enum.IntEnum):
    CPUID_REQ = 1
    CPUID_RSP = 2
    KEY_REQ = 3
    KEY_RSP = 4
    REPORT_REQ = 5
    REPORT_RSP = 6
    EXPORT_REQ = 7
    EXPORT_RSP = 8
    IMPORT_REQ = 9
    IMPORT_RSP = 10
    ABSORB_REQ = 11
    ABSORB_RSP = 12
    VMRK_REQ = 13
    VMRK_RSP = 14
    ABSORB_NOMA_REQ = 15
    ABSORB_NOMA_RSP = 16
    TSC_INFO_REQ = 17
    TSC_INFO_RSP = 18


@dataclasses.dataclass(frozen=True)
class MsgHeader:
    """The 0x60-byte header: AUTHTAG(32) ‖ MSG_SEQNO(u64) ‖ rsvd(8) ‖ ALGO(u8) ‖ HDR_VERSION(u8) ‖ HDR_SZ(u16) ‖
    MSG_TYPE(u8) ‖ MSG_VERSION(u8) ‖ MSG_SZ(u16) ‖ rsvd(u32) ‖ MSG_VMPCK(u8) ‖ rsvd(35)."""

    seqno: int
    msg_type: int
    msg_size: int
    vmpck: int
    msg_version: int = 1
    algo: int = AEAD_ALGO_AES_256_GCM
    hdr_version: int = HEADER_VERSION
    hdr_size: int = HEADER_SIZE
    authtag: bytes = bytes(32)

    _FMT = "<32sQ8xBBHBBHIB35x"

    @classmethod
    def parse(cls, data: bytes) -> MsgHeader:
        if len(data) < HEADER_SIZE:
            raise InputError(f"an SNP guest message header is {HEADER_SIZE} bytes, not {len(data)}")
        tag, seqno, algo, hver, hsz, mtype, mver, msz, _rsvd, vmpck = struct.unpack_from(cls._FMT, data)
        return cls(seqno, mtype, msz, vmpck, mver, algo, hver, hsz, tag)

    def to_bytes(self) -> bytes:
        return struct.pack(
            self._FMT, self.authtag, self.seqno, self.algo, self.hdr_version, self.hdr_size, self.msg_type,
            self.msg_version, self.msg_size, 0, self.vmpck,
        )  # fmt: skip


def _iv(seqno: int) -> bytes:
    return seqno.to_bytes(12, "little")


def seal(key: bytes, header: MsgHeader, payload: bytes) -> bytes:
    """Header ‖ AES-256-GCM(payload), the tag written into AUTHTAG."""
    header = dataclasses.replace(header, msg_size=len(payload), authtag=bytes(32))
    aad = header.to_bytes()[AAD_OFFSET:]
    sealed = AESGCM(key).encrypt(_iv(header.seqno), payload, aad)
    ciphertext, tag = sealed[:-AUTHTAG_SIZE], sealed[-AUTHTAG_SIZE:]
    return dataclasses.replace(header, authtag=tag + bytes(32 - AUTHTAG_SIZE)).to_bytes() + ciphertext


def open_message(key: bytes, message: bytes) -> tuple[MsgHeader, bytes]:
    """(header, plaintext payload); VerificationError if the tag does not verify."""
    header = MsgHeader.parse(message)
    ciphertext = message[HEADER_SIZE : HEADER_SIZE + header.msg_size]
    aad = header.to_bytes()[AAD_OFFSET:]
    try:
        payload = AESGCM(key).decrypt(_iv(header.seqno), ciphertext + header.authtag[:AUTHTAG_SIZE], aad)
    except InvalidTag:
        raise VerificationError("SNP guest message: the authentication tag does not verify") from None
    return header, payload


# MSG_REPORT_REQ: REPORT_DATA(64) ‖ VMPL(u32) ‖ KEY_SEL(u32, bits 1:0) ‖ rsvd(24)
REPORT_REQ_SIZE = 0x60
# MSG_REPORT_RSP: STATUS(u32) ‖ REPORT_SIZE(u32) ‖ rsvd(0x18) ‖ REPORT(0x4A0)
REPORT_RSP_HEADER = 0x20
# MSG_KEY_REQ: ROOT_KEY_SELECT/KEY_SEL(u32) ‖ rsvd(u32) ‖ GUEST_FIELD_SELECT(u64) ‖ VMPL(u32) ‖ GUEST_SVN(u32) ‖
# TCB_VERSION(u64)
KEY_REQ_SIZE = 0x20
# MSG_KEY_RSP: STATUS(u32) ‖ rsvd(0x1C) ‖ DERIVED_KEY(32)
KEY_RSP_SIZE = 0x40
RSP_STATUS_SUCCESS = 0
RSP_STATUS_INVALID_PARAM = 0x16
RSP_STATUS_INVALID_KEY = 0x27

KEY_SEL_DEFAULT, KEY_SEL_VCEK, KEY_SEL_VLEK = 0, 1, 2


class GuestField(enum.IntFlag):
    """MSG_KEY_REQ GUEST_FIELD_SELECT: what the derived key is bound to."""

    GUEST_POLICY = 1 << 0
    IMAGE_ID = 1 << 1
    FAMILY_ID = 1 << 2
    MEASUREMENT = 1 << 3
    GUEST_SVN = 1 << 4
    TCB_VERSION = 1 << 5


@dataclasses.dataclass(frozen=True)
class ReportRequest:
    report_data: bytes = bytes(64)
    vmpl: int = 0
    key_sel: int = KEY_SEL_DEFAULT

    @classmethod
    def parse(cls, data: bytes) -> ReportRequest:
        if len(data) < REPORT_REQ_SIZE:
            raise InputError(f"MSG_REPORT_REQ is {REPORT_REQ_SIZE} bytes, not {len(data)}")
        report_data, vmpl, key_sel = struct.unpack_from("<64sII", data)
        return cls(report_data, vmpl, key_sel & 0x3)

    def to_bytes(self) -> bytes:
        return struct.pack("<64sII24x", self.report_data, self.vmpl, self.key_sel)


@dataclasses.dataclass(frozen=True)
class KeyRequest:
    root_key_select: int = 0  # 0: the VCEK-derived root, 1: the VMRK
    key_sel: int = KEY_SEL_DEFAULT
    guest_field_select: int = 0
    vmpl: int = 0
    guest_svn: int = 0
    tcb_version: int = 0

    @classmethod
    def parse(cls, data: bytes) -> KeyRequest:
        if len(data) < KEY_REQ_SIZE:
            raise InputError(f"MSG_KEY_REQ is {KEY_REQ_SIZE} bytes, not {len(data)}")
        word, fields, vmpl, svn, tcb = struct.unpack_from("<I4xQIIQ", data)
        return cls(word & 1, (word >> 1) & 0x3, fields, vmpl, svn, tcb)

    def to_bytes(self) -> bytes:
        word = self.root_key_select | self.key_sel << 1
        return struct.pack("<I4xQIIQ", word, self.guest_field_select, self.vmpl, self.guest_svn, self.tcb_version)


# Secrets page (SNP ABI "Secrets Page Format", version 3): VERSION(u32) ‖ IMIEN(u32) ‖ FMS(u32) ‖ rsvd(u32) ‖
# GOSVW(16) ‖ VMPCK0..3(32 each at 0x20, 0x40, 0x60, 0x80) ‖ guest OS area(96 at 0xA0) ‖ VMSA tweak bitmap(64 at
# 0x100) ‖ rsvd(32) ‖ TSC_FACTOR(u32 at 0x160) ‖ rsvd
SECRETS_VERSION = 3
VMPCK_OFFSETS = (0x20, 0x40, 0x60, 0x80)


def secrets_page(vmpcks: tuple[bytes, bytes, bytes, bytes], fms: int, gosvw: bytes = bytes(16)) -> bytes:
    page = bytearray(4096)
    struct.pack_into("<III", page, 0, SECRETS_VERSION, 0, fms)
    page[0x10:0x20] = gosvw
    for offset, key in zip(VMPCK_OFFSETS, vmpcks, strict=True):
        page[offset : offset + VMPCK_SIZE] = key
    return bytes(page)


def vmpck(secrets: bytes, index: int) -> bytes:
    """VMPCK`index` from a secrets page."""
    offset = VMPCK_OFFSETS[index]
    return secrets[offset : offset + VMPCK_SIZE]
