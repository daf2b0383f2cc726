"""Sign an ID block for SNP_LAUNCH_FINISH as virtee's `snp-create-id-block` does (sev-snp-measure 0.0.13).

The structures are `sevd.abi.snp.IdBlock` and `IdAuth`.  The ID key signs the 0x60-byte ID block, the author key
signs the ID key's 0x404-byte form; both are ECDSA P-384 with SHA-384.  `snp-create-id-block` prints
`id-block=<base64>,id-auth=<base64>` (QEMU's sev-snp-guest option values), then `id_key_hash: <base64>` and
`author_key: <base64>` (SHA-384 of each public key, what the report's ID_KEY_DIGEST and AUTHOR_KEY_DIGEST hold);
its ID block has zero family and image ids, version 1, guest SVN 0 and policy 0x30000.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from sevd.abi import snp
from sevd.errors import InputError

DEFAULT_POLICY = 0x30000  # snp-create-id-block's: SMT allowed, bit 17 (must be one), ABI 0.0


def load_private_key(pem: bytes, name: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise InputError(f"{name}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise InputError(f"{name}: SNP ID and author keys must be ECDSA P-384")
    return key


def public_key_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    n = key.public_numbers()
    return snp.ecdsa_pubkey_bytes(n.x, n.y)


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    return snp.ecdsa_sig_bytes(*utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA384()))))


@dataclass(frozen=True)
class SignedIdBlock:
    id_block: bytes
    id_auth: bytes

    @property
    def id_key_digest(self) -> bytes:
        return snp.key_digest(snp.IdAuth.parse(self.id_auth).id_key)

    @property
    def author_key_digest(self) -> bytes:
        return snp.key_digest(snp.IdAuth.parse(self.id_auth).author_key)

    def lines(self) -> list[str]:
        """What snp-create-id-block prints."""
        b64 = base64.b64encode
        return [
            f"id-block={b64(self.id_block).decode()},id-auth={b64(self.id_auth).decode()}",
            f"id_key_hash: {b64(self.id_key_digest).decode()}",
            f"author_key: {b64(self.author_key_digest).decode()}",
        ]


def sign_id_block(
    block: snp.IdBlock, id_key: ec.EllipticCurvePrivateKey, author_key: ec.EllipticCurvePrivateKey
) -> SignedIdBlock:
    raw = block.to_bytes()
    id_pub = public_key_bytes(id_key.public_key())
    auth = snp.IdAuth(
        id_block_sig=sign(id_key, raw),
        id_key=id_pub,
        id_key_sig=sign(author_key, id_pub),
        author_key=public_key_bytes(author_key.public_key()),
    )
    return SignedIdBlock(raw, auth.to_bytes())
