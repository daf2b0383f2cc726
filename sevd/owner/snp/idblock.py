"""The ID block and ID authentication structure an SNP guest owner gives SNP_LAUNCH_FINISH (SEV-SNP firmware ABI,
"SNP_LAUNCH_FINISH": ID_BLOCK, ID_AUTH_INFO), as virtee's `snp-create-id-block` builds them.

ID block (96 bytes): LD (48, the expected launch digest) ‖ FAMILY_ID (16) ‖ IMAGE_ID (16) ‖ VERSION u32 (1) ‖
GUEST_SVN u32 ‖ POLICY u64.  ID authentication (4096 bytes): ID_KEY_ALGO u32 ‖ AUTH_KEY_ALGO u32 (1 = ECDSA
P-384 with SHA-384) ‖ reserved to 0x40 ‖ ID_BLOCK_SIG (512) at 0x40 ‖ ID_KEY (1028) at 0x240 ‖ reserved to 0x680 ‖
ID_KEY_SIG (512) at 0x680 ‖ AUTHOR_KEY (1028) at 0x880 ‖ reserved to 0x1000.  A public key is CURVE u32 (2 =
P-384) ‖ QX (72) ‖ QY (72) ‖ zeros to 1028; a signature is R (72) ‖ S (72) ‖ zeros to 512, all little-endian.
The ID key signs the ID block; the author key signs the ID key (its 1028-byte form).  The attestation report
carries SHA-384 of each public key (ID_KEY_DIGEST, AUTHOR_KEY_DIGEST).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from sevd.errors import InputError

ID_BLOCK = struct.Struct("<48s16s16sIIQ")
ID_BLOCK_SIZE = ID_BLOCK.size  # 0x60
ID_AUTH_SIZE = 0x1000
ALGO_ECDSA_P384_SHA384 = 1
CURVE_P384 = 2
PUBKEY_SIZE = 0x404
SIG_SIZE = 0x200
COORD = 72
ID_BLOCK_SIG_AT, ID_KEY_AT, ID_KEY_SIG_AT, AUTHOR_KEY_AT = 0x40, 0x240, 0x680, 0x880
DEFAULT_POLICY = 0x30000  # snp-create-id-block's default: ABI 0.0, SMT allowed, bit 17 (reserved, must be 1)
DEFAULT_VERSION = 1


def public_key_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    if not isinstance(key.curve, ec.SECP384R1):
        raise InputError(f"an SNP key must be ECDSA P-384, not {key.curve.name}")
    n = key.public_numbers()
    out = struct.pack("<I", CURVE_P384) + n.x.to_bytes(COORD, "little") + n.y.to_bytes(COORD, "little")
    return out + bytes(PUBKEY_SIZE - len(out))


def key_digest(key: ec.EllipticCurvePublicKey) -> bytes:
    """SHA-384 of the 1028-byte public key, as the report's ID_KEY_DIGEST / AUTHOR_KEY_DIGEST."""
    return hashlib.sha384(public_key_bytes(key)).digest()


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA384())))
    out = r.to_bytes(COORD, "little") + s.to_bytes(COORD, "little")
    return out + bytes(SIG_SIZE - len(out))


def verify(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    r = int.from_bytes(signature[:COORD], "little")
    s = int.from_bytes(signature[COORD : 2 * COORD], "little")
    try:
        key.verify(utils.encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def load_private_key(pem: bytes, name: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise InputError(f"{name}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise InputError(f"{name}: SNP ID and author keys must be ECDSA P-384")
    return key


@dataclass(frozen=True)
class IdBlock:
    launch_digest: bytes
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    version: int = DEFAULT_VERSION
    guest_svn: int = 0
    policy: int = DEFAULT_POLICY

    def __post_init__(self) -> None:
        if len(self.launch_digest) != 48:
            raise InputError(f"measurement: an SNP launch digest is 48 bytes, got {len(self.launch_digest)}")
        for name in ("family_id", "image_id"):
            if len(getattr(self, name)) != 16:
                raise InputError(f"--{name.replace('_', '-')}: 16 bytes (32 hex digits), got {len(getattr(self, name))}")
        if not 0 <= self.guest_svn < 1 << 32:
            raise InputError(f"--guest-svn {self.guest_svn}: a 32-bit number")
        if not 0 <= self.policy < 1 << 64:
            raise InputError(f"--policy {self.policy:#x}: a 64-bit number")

    def to_bytes(self) -> bytes:
        return ID_BLOCK.pack(
            self.launch_digest, self.family_id, self.image_id, self.version, self.guest_svn, self.policy
        )


@dataclass(frozen=True)
class SignedIdBlock:
    id_block: bytes
    id_auth: bytes
    id_key_digest: bytes
    author_key_digest: bytes

    def qemu_line(self) -> str:
        """As snp-create-id-block prints it: QEMU's sev-snp-guest id-block=,id-auth= option values, base64."""
        return (
            f"id-block={base64.b64encode(self.id_block).decode()},"
            f"id-auth={base64.b64encode(self.id_auth).decode()}"
        )


def sign_id_block(
    block: IdBlock, id_key: ec.EllipticCurvePrivateKey, author_key: ec.EllipticCurvePrivateKey
) -> SignedIdBlock:
    raw = block.to_bytes()
    id_pub = public_key_bytes(id_key.public_key())
    author_pub = public_key_bytes(author_key.public_key())
    auth = bytearray(ID_AUTH_SIZE)
    struct.pack_into("<II", auth, 0, ALGO_ECDSA_P384_SHA384, ALGO_ECDSA_P384_SHA384)
    auth[ID_BLOCK_SIG_AT : ID_BLOCK_SIG_AT + SIG_SIZE] = sign(id_key, raw)
    auth[ID_KEY_AT : ID_KEY_AT + PUBKEY_SIZE] = id_pub
    auth[ID_KEY_SIG_AT : ID_KEY_SIG_AT + SIG_SIZE] = sign(author_key, id_pub)
    auth[AUTHOR_KEY_AT : AUTHOR_KEY_AT + PUBKEY_SIZE] = author_pub
    return SignedIdBlock(
        raw, bytes(auth), key_digest(id_key.public_key()), key_digest(author_key.public_key())
    )
