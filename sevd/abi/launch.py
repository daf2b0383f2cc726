"""Launch cryptography and blob layouts shared by the guest owner and the simulated PSP.

Each formula of the SEV launch protocol is written once, here:

* `kdf` — NIST SP 800-108 counter mode, HMAC-SHA256, with a little-endian counter and length:
  block_i = HMAC(key, LE32(i) || label || 0x00 || context || LE32(bits)).  (`cryptography`'s KBKDFHMAC encodes
  the counter and length big-endian, so it cannot produce SEV's values; the loop below uses its HMAC.)
* `shared_secret` — ECDH on P-384 between the PDH and the guest owner's GODH.  Z is the 48-byte x-coordinate
  exactly as OpenSSL/`cryptography` return it (big-endian), not reversed: virtee/sev derives it the same way
  (OpenSSL `derive_to_vec`, no reversal) and its sessions are accepted by real AMD firmware.
* `derive_kek_kik` — master = KDF(Z, "sev-master-secret", nonce); KEK = KDF(master, "sev-kek", "");
  KIK = KDF(master, "sev-kik", ""), 128 bits each.
* `LaunchSession` — the 0x80-byte LAUNCH_START session blob: nonce[16], wrap_tk[32], wrap_iv[16],
  wrap_mac[32], policy_mac[32].  wrap_tk = AES-128-CTR(KEK, wrap_iv, TEK || TIK); wrap_mac = HMAC-SHA256(KIK,
  wrap_tk); policy_mac = HMAC-SHA256(TIK, LE32(policy)).
* `measurement` — HMAC-SHA256(TIK, 0x04 || api_major || api_minor || build || LE32(policy) || digest || mnonce),
  digest being SHA-256 over every LAUNCH_UPDATE_DATA (and, for SEV-ES, LAUNCH_UPDATE_VMSA) plaintext in order.
  `LaunchMeasurement` is the 0x30-byte LAUNCH_MEASURE blob: measure[32] || mnonce[16].
* `SecretHeader` — the 0x34-byte LAUNCH_SECRET packet header: flags u32, iv[16], mac[32], where
  mac = HMAC-SHA256(TIK, 0x01 || LE32(flags) || iv || LE32(guest_len) || LE32(trans_len) || ciphertext ||
  measure) and ciphertext = AES-128-CTR(TEK, iv, secret).

Key material never appears in an exception message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
import struct
from collections.abc import Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sevd.errors import InputError, VerificationError

KEY_SIZE = 16
NONCE_SIZE = 16
IV_SIZE = 16
MAC_SIZE = 32
LAUNCH_SESSION_SIZE = 0x80
LAUNCH_MEASURE_SIZE = 0x30
SECRET_HEADER_SIZE = 0x34
MAX_SECRET_SIZE = 0x5000
MEASURE_CONTEXT = 0x04
SECRET_CONTEXT = 0x01

LABEL_MASTER = b"sev-master-secret"
LABEL_KEK = b"sev-kek"
LABEL_KIK = b"sev-kik"


def _hmac_sha256(key: bytes, *parts: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    for part in parts:
        mac.update(part)
    return mac.finalize()


def _aes128_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    if len(key) != KEY_SIZE:
        raise InputError(f"AES-128 key must be {KEY_SIZE} bytes, got {len(key)}")
    if len(iv) != IV_SIZE:
        raise InputError(f"AES-CTR IV must be {IV_SIZE} bytes, got {len(iv)}")
    ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return ctx.update(data) + ctx.finalize()


def kdf(key: bytes, label: bytes, context: bytes, bits: int = 128) -> bytes:
    """NIST SP 800-108 counter-mode KDF with HMAC-SHA256, SEV's little-endian encoding."""
    if bits <= 0 or bits % 8:
        raise InputError(f"KDF output length must be a positive multiple of 8 bits, got {bits}")
    out = b""
    i = 1
    while len(out) * 8 < bits:
        out += _hmac_sha256(key, struct.pack("<I", i), label, b"\x00", context, struct.pack("<I", bits))
        i += 1
    return out[: bits // 8]


def shared_secret(private_key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    """ECDH Z: the shared point's x-coordinate, 48 bytes big-endian (see the module docstring)."""
    return private_key.exchange(ec.ECDH(), peer)


@dataclasses.dataclass(frozen=True, repr=False)
class TransportKeys:
    """TEK and TIK, 16 bytes each.  sev-tool keeps them as tmp_tk.bin = TEK || TIK."""

    tek: bytes
    tik: bytes

    def __post_init__(self) -> None:
        if len(self.tek) != KEY_SIZE or len(self.tik) != KEY_SIZE:
            raise InputError(f"TEK and TIK must be {KEY_SIZE} bytes each")

    @classmethod
    def generate(cls) -> TransportKeys:
        return cls(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))

    @classmethod
    def parse(cls, data: bytes, name: str = "transport keys") -> TransportKeys:
        if len(data) != 2 * KEY_SIZE:
            raise InputError(f"{name}: TEK||TIK is {2 * KEY_SIZE} bytes, got {len(data)}")
        return cls(bytes(data[:KEY_SIZE]), bytes(data[KEY_SIZE:]))

    def to_bytes(self) -> bytes:
        return self.tek + self.tik

    def __repr__(self) -> str:
        return "TransportKeys(<hidden>)"


@dataclasses.dataclass(frozen=True, repr=False)
class WrappingKeys:
    """KEK and KIK derived from the ECDH secret and the session nonce."""

    kek: bytes
    kik: bytes

    def __repr__(self) -> str:
        return "WrappingKeys(<hidden>)"


def derive_kek_kik(z: bytes, nonce: bytes) -> WrappingKeys:
    if len(nonce) != NONCE_SIZE:
        raise InputError(f"session nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    master = kdf(z, LABEL_MASTER, nonce)
    return WrappingKeys(kdf(master, LABEL_KEK, b""), kdf(master, LABEL_KIK, b""))


def policy_mac(tik: bytes, policy: int) -> bytes:
    return _hmac_sha256(tik, struct.pack("<I", policy))


@dataclasses.dataclass(frozen=True)
class LaunchSession:
    """The 0x80-byte session blob given to LAUNCH_START (sev-tool's launch_blob.bin)."""

    nonce: bytes
    wrap_tk: bytes
    wrap_iv: bytes
    wrap_mac: bytes
    policy_mac: bytes

    @classmethod
    def parse(cls, data: bytes, name: str = "launch session blob") -> LaunchSession:
        if len(data) != LAUNCH_SESSION_SIZE:
            raise InputError(f"{name}: a launch session blob is {LAUNCH_SESSION_SIZE} bytes, got {len(data)}")
        return cls(data[0:16], data[16:48], data[48:64], data[64:96], data[96:128])

    def to_bytes(self) -> bytes:
        return self.nonce + self.wrap_tk + self.wrap_iv + self.wrap_mac + self.policy_mac


def wrap_transport_keys(
    keys: TransportKeys,
    wrapping: WrappingKeys,
    policy: int,
    nonce: bytes,
    iv: bytes | None = None,
) -> LaunchSession:
    """The owner side: wrap TEK||TIK for the firmware."""
    iv = os.urandom(IV_SIZE) if iv is None else iv
    wrap_tk = _aes128_ctr(wrapping.kek, iv, keys.to_bytes())
    return LaunchSession(
        nonce=nonce,
        wrap_tk=wrap_tk,
        wrap_iv=iv,
        wrap_mac=_hmac_sha256(wrapping.kik, wrap_tk),
        policy_mac=policy_mac(keys.tik, policy),
    )


def unwrap_transport_keys(session: LaunchSession, wrapping: WrappingKeys, policy: int) -> TransportKeys:
    """The firmware side: check wrap_mac, unwrap TEK||TIK, check policy_mac."""
    if not hmac.compare_digest(_hmac_sha256(wrapping.kik, session.wrap_tk), session.wrap_mac):
        raise VerificationError("launch session: wrap_mac does not verify under the KIK (wrong PDH or GODH?)")
    keys = TransportKeys.parse(_aes128_ctr(wrapping.kek, session.wrap_iv, session.wrap_tk))
    if not hmac.compare_digest(policy_mac(keys.tik, policy), session.policy_mac):
        raise VerificationError(f"launch session: policy_mac does not match policy 0x{policy:08x}")
    return keys


def open_session(
    session: LaunchSession,
    pdh_private: ec.EllipticCurvePrivateKey,
    godh_public: ec.EllipticCurvePublicKey,
    policy: int,
) -> TransportKeys:
    """What LAUNCH_START does with an owner session: ECDH with the GODH, derive KEK/KIK, unwrap."""
    wrapping = derive_kek_kik(shared_secret(pdh_private, godh_public), session.nonce)
    return unwrap_transport_keys(session, wrapping, policy)


# -- measurement ---------------------------------------------------------------------------------------------


def launch_digest(chunks: Iterable[bytes]) -> bytes:
    """SHA-256 over all measured plaintext, in LAUNCH_UPDATE order."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.digest()


def measurement(
    tik: bytes, api_major: int, api_minor: int, build: int, policy: int, digest: bytes, mnonce: bytes
) -> bytes:
    for field, value in (("api_major", api_major), ("api_minor", api_minor), ("build", build)):
        if not 0 <= value <= 0xFF:
            raise InputError(f"measurement: {field} {value} does not fit in one byte")
    if len(digest) != 32:
        raise InputError(f"measurement: launch digest must be 32 bytes, got {len(digest)}")
    if len(mnonce) != NONCE_SIZE:
        raise InputError(f"measurement: mnonce must be {NONCE_SIZE} bytes, got {len(mnonce)}")
    head = bytes([MEASURE_CONTEXT, api_major, api_minor, build]) + struct.pack("<I", policy)
    return _hmac_sha256(tik, head, digest, mnonce)


@dataclasses.dataclass(frozen=True)
class LaunchMeasurement:
    """The 0x30-byte LAUNCH_MEASURE blob; QEMU shows it base64-encoded (query-sev-launch-measure)."""

    measure: bytes
    mnonce: bytes

    @classmethod
    def parse(cls, data: bytes, name: str = "launch measurement") -> LaunchMeasurement:
        if len(data) != LAUNCH_MEASURE_SIZE:
            raise InputError(f"{name}: a launch measurement is {LAUNCH_MEASURE_SIZE} bytes, got {len(data)}")
        return cls(bytes(data[:MAC_SIZE]), bytes(data[MAC_SIZE:]))

    @classmethod
    def from_base64(cls, text: str, name: str = "measurement") -> LaunchMeasurement:
        try:
            data = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{name}: not valid base64") from None
        return cls.parse(data, name)

    def to_bytes(self) -> bytes:
        return self.measure + self.mnonce

    def to_base64(self) -> str:
        return base64.b64encode(self.to_bytes()).decode()


# -- LAUNCH_SECRET --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SecretHeader:
    """The 0x34-byte LAUNCH_SECRET packet header (sev-tool's packaged_secret_header.bin)."""

    flags: int
    iv: bytes
    mac: bytes

    @classmethod
    def parse(cls, data: bytes, name: str = "secret header") -> SecretHeader:
        if len(data) != SECRET_HEADER_SIZE:
            raise InputError(f"{name}: a secret packet header is {SECRET_HEADER_SIZE} bytes, got {len(data)}")
        return cls(struct.unpack_from("<I", data, 0)[0], bytes(data[4:20]), bytes(data[20:52]))

    def to_bytes(self) -> bytes:
        return struct.pack("<I", self.flags) + self.iv + self.mac


def check_secret_length(length: int, name: str = "secret") -> None:
    if length == 0 or length % 16 or length > MAX_SECRET_SIZE:
        raise InputError(
            f"{name}: length {length} must be a non-zero multiple of 16 and at most {MAX_SECRET_SIZE:#x} bytes"
        )


def secret_mac(
    tik: bytes, flags: int, iv: bytes, guest_len: int, trans_len: int, ciphertext: bytes, measure: bytes
) -> bytes:
    if len(measure) != MAC_SIZE:
        raise InputError(f"secret MAC: measure must be {MAC_SIZE} bytes, got {len(measure)}")
    head = bytes([SECRET_CONTEXT]) + struct.pack("<I", flags) + iv + struct.pack("<II", guest_len, trans_len)
    return _hmac_sha256(tik, head, ciphertext, measure)


def seal_secret(
    keys: TransportKeys, secret: bytes, measure: bytes, flags: int = 0, iv: bytes | None = None
) -> tuple[SecretHeader, bytes]:
    """The owner side: encrypt a secret under the TEK and MAC it under the TIK, bound to the measurement."""
    check_secret_length(len(secret))
    iv = os.urandom(IV_SIZE) if iv is None else iv
    ciphertext = _aes128_ctr(keys.tek, iv, secret)
    mac = secret_mac(keys.tik, flags, iv, len(secret), len(ciphertext), ciphertext, measure)
    return SecretHeader(flags, iv, mac), ciphertext


def open_secret(
    keys: TransportKeys, header: SecretHeader, ciphertext: bytes, measure: bytes, guest_len: int | None = None
) -> bytes:
    """The firmware side of LAUNCH_SECRET: check the MAC, then decrypt.  Raises VerificationError on tampering."""
    guest_len = len(ciphertext) if guest_len is None else guest_len
    check_secret_length(len(ciphertext), "secret ciphertext")
    expected = secret_mac(keys.tik, header.flags, header.iv, guest_len, len(ciphertext), ciphertext, measure)
    if not hmac.compare_digest(expected, header.mac):
        raise VerificationError("secret packet: header MAC does not verify (tampered, or a different measurement)")
    return _aes128_ctr(keys.tek, header.iv, ciphertext)
