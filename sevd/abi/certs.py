"""SEV certificates (SEV API, "Certificates") and AMD's ARK/ASK certificates, with chain verification.

Two formats live here:

* The **SEV certificate** (version 1, 0x824 bytes, little-endian) carries the platform keys PDH, PEK, OCA and
  CEK and the guest owner's GODH.  Layout::

      0x000 version u32 (=1)       0x004 api_major u8   0x005 api_minor u8   0x006 reserved u8[2]
      0x008 pubkey_usage u32       0x00C pubkey_algo u32
      0x010 pubkey (0x404 bytes)   ECDSA/ECDH: curve u32, qx[72] LE, qy[72] LE, zero padding
                                   RSA: modulus_size u32 (bits), pubexp[512] LE, modulus[512] LE
      0x414 sig1: usage u32, algo u32, sig[0x200]   ECDSA: r[72] LE, s[72] LE;  RSA: signature byte-reversed
      0x61C sig2: same layout; an empty slot has usage 0x1000 (none)

  The signed range is [0, 0x414).

* The **AMD certificate** (ARK, ASK): a 64-byte header (version u32, key_id[16], certifying_id[16],
  key_usage u32, reserved[16], pubexp_size u32 bits, modulus_size u32 bits), then pubexp, modulus and an RSA-PSS
  signature, each modulus_size/8 bytes (pubexp pubexp_size/8), little-endian; the signature is byte-reversed.
  2048-bit keys (Naples) sign with SHA-256, 4096-bit keys with SHA-384; the PSS salt is the digest length.
  The ARK signs itself; the ARK signs the ASK; the ASK signs the CEK.

A platform chain is PDH <- PEK <- (OCA, CEK <- ASK <- ARK).  The CEK carries no ASK key id, so the AMD roots of
a chain whose ARK/ASK are not supplied are found by trying each generation's ASK (see `identify_generation`).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.resources
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sevd.errors import InputError, VerificationError

SEV_CERT_SIZE = 0x824
SEV_CERT_SIGNED_SIZE = 0x414
PUBKEY_OFFSET = 0x10
PUBKEY_SIZE = 0x404
SIG_SLOT_OFFSETS = (SEV_CERT_SIGNED_SIZE, 0x61C)
SIG_SIZE = 0x200
EC_COORD_SIZE = 72
RSA_FIELD_SIZE = 512

AMD_HEADER_SIZE = 64

GENERATIONS = ("naples", "rome", "milan", "genoa", "turin")


class Usage(enum.IntEnum):
    """Key usage codes shared by SEV and AMD certificates."""

    ARK = 0x0000
    ASK = 0x0013
    NONE = 0x1000
    OCA = 0x1001
    PEK = 0x1002
    PDH = 0x1003
    CEK = 0x1004


class Algo(enum.IntEnum):
    """Public-key / signature algorithm codes."""

    NONE = 0x0
    RSA_SHA256 = 0x1
    ECDSA_SHA256 = 0x2
    ECDH_SHA256 = 0x3
    RSA_SHA384 = 0x101
    ECDSA_SHA384 = 0x102
    ECDH_SHA384 = 0x103


class Curve(enum.IntEnum):
    P256 = 1
    P384 = 2


_RSA_ALGOS = {Algo.RSA_SHA256, Algo.RSA_SHA384}
_ECDSA_ALGOS = {Algo.ECDSA_SHA256, Algo.ECDSA_SHA384}
_ECDH_ALGOS = {Algo.ECDH_SHA256, Algo.ECDH_SHA384}
_SIG_ALGOS = _RSA_ALGOS | _ECDSA_ALGOS
_SIGNER_USAGES = {Usage.ASK, Usage.OCA, Usage.PEK, Usage.CEK}

# Which public-key algorithms each SEV certificate usage may carry.
_ALLOWED_KEY_ALGOS = {
    Usage.OCA: _ECDSA_ALGOS | _RSA_ALGOS,
    Usage.PEK: _ECDSA_ALGOS,
    Usage.CEK: _ECDSA_ALGOS,
    Usage.PDH: _ECDH_ALGOS,
}


def _hash_for(algo: int) -> hashes.HashAlgorithm:
    return hashes.SHA384() if algo & 0x100 else hashes.SHA256()


def _le_int(data: bytes) -> int:
    return int.from_bytes(data, "little")


def _usage_name(value: int) -> str:
    try:
        return Usage(value).name
    except ValueError:
        return f"0x{value:x}"


def _algo_name(value: int) -> str:
    try:
        return Algo(value).name
    except ValueError:
        return f"0x{value:x}"


@dataclasses.dataclass(frozen=True)
class SevSignature:
    """One signature slot of an SEV certificate."""

    usage: int
    algo: int
    raw: bytes  # the 0x200-byte signature field as stored

    @classmethod
    def empty(cls) -> SevSignature:
        return cls(Usage.NONE, Algo.NONE, bytes(SIG_SIZE))

    def is_empty(self) -> bool:
        return self.usage == Usage.NONE

    def check(self, name: str) -> None:
        """Refuse a slot whose bytes are not exactly what the format allows (so no bit goes unchecked)."""
        if self.is_empty():
            if self.algo != Algo.NONE or any(self.raw):
                raise InputError(f"{name}: signature slot is marked unused (usage 0x1000) but is not all zero")
            return
        if self.usage not in _SIGNER_USAGES:
            raise InputError(f"{name}: signature usage {_usage_name(self.usage)} is not a signing key usage")
        if self.algo not in _SIG_ALGOS:
            raise InputError(f"{name}: signature algorithm {_algo_name(self.algo)} is not a signature algorithm")
        if self.algo in _ECDSA_ALGOS and any(self.raw[2 * EC_COORD_SIZE :]):
            raise InputError(f"{name}: ECDSA signature padding is not zero")

    def to_bytes(self) -> bytes:
        return struct.pack("<II", self.usage, self.algo) + self.raw


@dataclasses.dataclass(frozen=True)
class SevCert:
    """A parsed SEV certificate (version 1).  `pubkey` is the raw 0x404-byte key field."""

    version: int
    api_major: int
    api_minor: int
    usage: int
    algo: int
    pubkey: bytes
    sigs: tuple[SevSignature, SevSignature]

    # -- codec -----------------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes, name: str = "SEV certificate") -> SevCert:
        """Decode and check an SEV certificate; `name` (a file name or role) appears in every error."""
        if len(data) != SEV_CERT_SIZE:
            raise InputError(f"{name}: an SEV certificate is {SEV_CERT_SIZE} bytes, got {len(data)}")
        version, api_major, api_minor, usage, algo = struct.unpack_from("<IBBxxII", data, 0)
        if version != 1:
            raise InputError(f"{name}: certificate version {version} is not supported (expected 1)")
        if usage not in _ALLOWED_KEY_ALGOS:
            raise InputError(f"{name}: key usage {_usage_name(usage)} is not an SEV platform key usage")
        if algo not in _ALLOWED_KEY_ALGOS[Usage(usage)]:
            raise InputError(f"{name}: algorithm {_algo_name(algo)} is not valid for a {Usage(usage).name} key")
        if any(data[6:8]):
            raise InputError(f"{name}: reserved header bytes are not zero")
        sigs = []
        for slot, off in enumerate(SIG_SLOT_OFFSETS, 1):
            s_usage, s_algo = struct.unpack_from("<II", data, off)
            sig = SevSignature(s_usage, s_algo, bytes(data[off + 8 : off + 8 + SIG_SIZE]))
            sig.check(f"{name} signature {slot}")
            sigs.append(sig)
        cert = cls(
            version=version,
            api_major=api_major,
            api_minor=api_minor,
            usage=usage,
            algo=algo,
            pubkey=bytes(data[PUBKEY_OFFSET : PUBKEY_OFFSET + PUBKEY_SIZE]),
            sigs=(sigs[0], sigs[1]),
        )
        cert.public_key(name)  # refuses a wrong curve id or a point off the curve now, not at first use
        return cert

    def to_bytes(self) -> bytes:
        body = self.signed_bytes()
        return body + self.sigs[0].to_bytes() + self.sigs[1].to_bytes()

    def signed_bytes(self) -> bytes:
        """The signed range [0, 0x414)."""
        head = struct.pack("<IBBxxII", self.version, self.api_major, self.api_minor, self.usage, self.algo)
        return head + self.pubkey

    # -- keys --------------------------------------------------------------------------------------------------

    @property
    def role(self) -> str:
        return _usage_name(self.usage)

    def public_key(self, name: str | None = None) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        name = name or self.role
        if self.algo in _RSA_ALGOS:
            bits = struct.unpack_from("<I", self.pubkey, 0)[0]
            if bits not in (2048, 4096):
                raise InputError(f"{name}: RSA modulus size {bits} bits is not supported (2048 or 4096)")
            exp = _le_int(self.pubkey[4 : 4 + RSA_FIELD_SIZE])
            mod = _le_int(self.pubkey[4 + RSA_FIELD_SIZE : 4 + 2 * RSA_FIELD_SIZE])
            try:
                return rsa.RSAPublicNumbers(exp, mod).public_key()
            except ValueError as exc:
                raise InputError(f"{name}: RSA public key is invalid ({exc})") from None
        curve = struct.unpack_from("<I", self.pubkey, 0)[0]
        if curve != Curve.P384:
            raise InputError(f"{name}: curve id {curve} is not supported (expected {int(Curve.P384)} = P-384)")
        qx = _le_int(self.pubkey[4 : 4 + EC_COORD_SIZE])
        qy = _le_int(self.pubkey[4 + EC_COORD_SIZE : 4 + 2 * EC_COORD_SIZE])
        try:
            return ec.EllipticCurvePublicNumbers(qx, qy, ec.SECP384R1()).public_key()
        except ValueError:
            raise InputError(f"{name}: public key point is not on the P-384 curve") from None

    @classmethod
    def for_ec_key(
        cls,
        key: ec.EllipticCurvePublicKey,
        usage: int,
        algo: int,
        api_major: int = 0,
        api_minor: int = 0,
    ) -> SevCert:
        """An unsigned certificate for a P-384 public key (the GODH, or a simulated platform key)."""
        if not isinstance(key.curve, ec.SECP384R1):
            raise InputError(f"{_usage_name(usage)} key: only P-384 keys can go in an SEV certificate")
        nums = key.public_numbers()
        field = (
            struct.pack("<I", Curve.P384)
            + nums.x.to_bytes(EC_COORD_SIZE, "little")
            + nums.y.to_bytes(EC_COORD_SIZE, "little")
        )
        field += bytes(PUBKEY_SIZE - len(field))
        return cls(1, api_major, api_minor, usage, algo, field, (SevSignature.empty(), SevSignature.empty()))

    def signed_by(self, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, usage: int, algo: int) -> SevCert:
        """A copy with the first empty signature slot filled by `private_key`'s signature (ECDSA or RSA-PSS)."""
        message = self.signed_bytes()
        if algo in _ECDSA_ALGOS and isinstance(private_key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(private_key.sign(message, ec.ECDSA(_hash_for(algo))))
            raw = r.to_bytes(EC_COORD_SIZE, "little") + s.to_bytes(EC_COORD_SIZE, "little")
        elif algo in _RSA_ALGOS and isinstance(private_key, rsa.RSAPrivateKey):
            raw = _sign_pss(private_key, message, _hash_for(algo))[::-1]
        else:
            raise InputError(f"signing {self.role}: algorithm {_algo_name(algo)} does not match the signing key")
        sig = SevSignature(usage, algo, raw + bytes(SIG_SIZE - len(raw)))
        if self.sigs[0].is_empty():
            return dataclasses.replace(self, sigs=(sig, self.sigs[1]))
        if self.sigs[1].is_empty():
            return dataclasses.replace(self, sigs=(self.sigs[0], sig))
        raise InputError(f"signing {self.role}: both signature slots are already used")

    # -- verification ----------------------------------------------------------------------------------------

    def is_signed_by(self, signer: SevCert | AmdCert) -> bool:
        """True when one signature slot of this certificate verifies under `signer`'s key."""
        key = signer.public_key()
        for sig in self.sigs:
            if sig.is_empty() or sig.usage != signer.usage:
                continue
            if _verify_slot(key, sig, self.signed_bytes()):
                return True
        return False

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "format": "sev",
            "usage": self.role,
            "algo": _algo_name(self.algo),
            "api": f"{self.api_major}.{self.api_minor}",
            "signatures": [
                {"usage": _usage_name(s.usage), "algo": _algo_name(s.algo)} for s in self.sigs if not s.is_empty()
            ],
        }
        return out


def _verify_slot(key: object, sig: SevSignature, message: bytes) -> bool:
    try:
        if sig.algo in _ECDSA_ALGOS and isinstance(key, ec.EllipticCurvePublicKey):
            r = _le_int(sig.raw[:EC_COORD_SIZE])
            s = _le_int(sig.raw[EC_COORD_SIZE : 2 * EC_COORD_SIZE])
            key.verify(encode_dss_signature(r, s), message, ec.ECDSA(_hash_for(sig.algo)))
            return True
        if sig.algo in _RSA_ALGOS and isinstance(key, rsa.RSAPublicKey):
            size = key.key_size // 8
            if any(sig.raw[size:]):
                return False
            _verify_pss(key, sig.raw[:size][::-1], message, _hash_for(sig.algo))
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def _sign_pss(key: rsa.RSAPrivateKey, message: bytes, algo: hashes.HashAlgorithm) -> bytes:
    return key.sign(message, padding.PSS(padding.MGF1(algo), algo.digest_size), algo)


def _verify_pss(key: rsa.RSAPublicKey, signature: bytes, message: bytes, algo: hashes.HashAlgorithm) -> None:
    key.verify(signature, message, padding.PSS(padding.MGF1(algo), algo.digest_size), algo)


@dataclasses.dataclass(frozen=True)
class AmdCert:
    """An AMD root certificate (ARK or ASK)."""

    version: int
    key_id: bytes
    certifying_id: bytes
    usage: int
    pubexp_bits: int
    modulus_bits: int
    pubexp: bytes
    modulus: bytes
    signature: bytes  # as stored (byte-reversed)

    @classmethod
    def parse(cls, data: bytes, name: str = "AMD certificate") -> AmdCert:
        if len(data) < AMD_HEADER_SIZE:
            raise InputError(f"{name}: an AMD certificate has a {AMD_HEADER_SIZE}-byte header, got {len(data)} bytes")
        version = struct.unpack_from("<I", data, 0)[0]
        key_id = bytes(data[4:20])
        certifying_id = bytes(data[20:36])
        usage = struct.unpack_from("<I", data, 36)[0]
        pubexp_bits, modulus_bits = struct.unpack_from("<II", data, 56)
        if version != 1:
            raise InputError(f"{name}: AMD certificate version {version} is not supported (expected 1)")
        if usage not in (Usage.ARK, Usage.ASK):
            raise InputError(f"{name}: key usage {_usage_name(usage)} is not ARK or ASK")
        if any(data[40:56]):
            raise InputError(f"{name}: reserved header bytes 40-55 are not zero")
        if modulus_bits not in (2048, 4096):
            raise InputError(f"{name}: modulus size {modulus_bits} bits is not supported (2048 or 4096)")
        if pubexp_bits not in (2048, 4096) or pubexp_bits % 8:
            raise InputError(f"{name}: public exponent size {pubexp_bits} bits is not supported")
        nexp, nmod = pubexp_bits // 8, modulus_bits // 8
        expected = AMD_HEADER_SIZE + nexp + 2 * nmod
        if len(data) != expected:
            raise InputError(f"{name}: a {modulus_bits}-bit AMD certificate is {expected} bytes, got {len(data)}")
        off = AMD_HEADER_SIZE
        cert = cls(
            version=version,
            key_id=key_id,
            certifying_id=certifying_id,
            usage=usage,
            pubexp_bits=pubexp_bits,
            modulus_bits=modulus_bits,
            pubexp=bytes(data[off : off + nexp]),
            modulus=bytes(data[off + nexp : off + nexp + nmod]),
            signature=bytes(data[off + nexp + nmod :]),
        )
        cert.public_key(name)
        return cert

    @classmethod
    def for_rsa_key(cls, key: rsa.RSAPublicKey, usage: int, key_id: bytes, certifying_id: bytes) -> AmdCert:
        """An unsigned AMD certificate for an RSA key (a simulated ARK or ASK); sign it with `signed_by`."""
        if key.key_size not in (2048, 4096) or len(key_id) != 16 or len(certifying_id) != 16:
            raise InputError(f"{_usage_name(usage)}: needs a 2048/4096-bit key and 16-byte key ids")
        nums, size = key.public_numbers(), key.key_size // 8
        return cls(
            1, key_id, certifying_id, usage, key.key_size, key.key_size,
            nums.e.to_bytes(size, "little"), nums.n.to_bytes(size, "little"), bytes(size),
        )  # fmt: skip

    def signed_by(self, private_key: rsa.RSAPrivateKey) -> AmdCert:
        """A copy signed (RSA-PSS, byte-reversed) by `private_key`, whose certificate must carry certifying_id."""
        algo = hashes.SHA256() if private_key.key_size == 2048 else hashes.SHA384()
        sig = _sign_pss(private_key, self.signed_bytes(), algo)[::-1]
        return dataclasses.replace(self, signature=sig + bytes(len(self.modulus) - len(sig)))

    def signed_bytes(self) -> bytes:
        head = struct.pack("<I", self.version) + self.key_id + self.certifying_id + struct.pack("<I", self.usage)
        head += bytes(16) + struct.pack("<II", self.pubexp_bits, self.modulus_bits)
        return head + self.pubexp + self.modulus

    def to_bytes(self) -> bytes:
        return self.signed_bytes() + self.signature

    @property
    def role(self) -> str:
        return _usage_name(self.usage)

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SHA256() if self.modulus_bits == 2048 else hashes.SHA384()

    def public_key(self, name: str | None = None) -> rsa.RSAPublicKey:
        try:
            return rsa.RSAPublicNumbers(_le_int(self.pubexp), _le_int(self.modulus)).public_key()
        except ValueError as exc:
            raise InputError(f"{name or self.role}: RSA public key is invalid ({exc})") from None

    def is_signed_by(self, signer: AmdCert) -> bool:
        if self.certifying_id != signer.key_id:
            return False
        try:
            _verify_pss(signer.public_key(), self.signature[::-1], self.signed_bytes(), signer.hash_algorithm)
        except (InvalidSignature, ValueError):
            return False
        return True

    def describe(self) -> dict[str, object]:
        return {
            "format": "amd",
            "usage": self.role,
            "key_id": self.key_id.hex(),
            "certifying_id": self.certifying_id.hex(),
            "modulus_bits": self.modulus_bits,
        }


def parse_any(data: bytes, name: str = "certificate") -> SevCert | AmdCert:
    """Decode either format: SEV certificates are exactly 0x824 bytes, AMD ones 832 or 1600."""
    if len(data) == SEV_CERT_SIZE:
        return SevCert.parse(data, name)
    return AmdCert.parse(data, name)


def split_ask_ark(data: bytes, name: str = "ask_ark.cert") -> tuple[AmdCert, AmdCert]:
    """Split sev-tool's ask_ark.cert (the ASK followed by the ARK) into (ask, ark)."""
    for size in (832, 1600):
        if len(data) == 2 * size:
            ask = AmdCert.parse(data[:size], f"{name} (ASK part)")
            ark = AmdCert.parse(data[size:], f"{name} (ARK part)")
            return ask, ark
    raise InputError(f"{name}: an ASK+ARK file is 1664 or 3200 bytes, got {len(data)}")


# -- AMD roots shipped with the package --------------------------------------------------------------------------


def builtin_roots(generation: str) -> tuple[AmdCert, AmdCert]:
    """AMD's published (ark, ask) for an EPYC generation ("naples", "rome", "milan", "genoa", "turin")."""
    if generation not in GENERATIONS:
        raise InputError(f"unknown EPYC generation {generation!r} (known: {', '.join(GENERATIONS)})")
    base = importlib.resources.files("sevd.abi") / "roots" / generation
    ark = AmdCert.parse(base.joinpath("ark.cert").read_bytes(), f"{generation}/ark.cert")
    ask = AmdCert.parse(base.joinpath("ask.cert").read_bytes(), f"{generation}/ask.cert")
    return ark, ask


def identify_generation(cek: SevCert, generations: Iterable[str] = GENERATIONS) -> str:
    """The generation whose ASK signed this CEK.  The CEK names no ASK key id, so each ASK is tried."""
    for gen in generations:
        _, ask = builtin_roots(gen)
        if cek.is_signed_by(ask):
            return gen
    raise VerificationError("CEK is not signed by the ASK of any known AMD generation")


# -- chain verification ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlatformChain:
    pdh: SevCert
    pek: SevCert
    oca: SevCert
    cek: SevCert
    ask: AmdCert
    ark: AmdCert


def _expect_usage(cert: SevCert | AmdCert, usage: Usage, name: str) -> None:
    if cert.usage != usage:
        raise InputError(f"{name}: holds a {_usage_name(cert.usage)} key, expected {usage.name}")


def verify_chain(chain: PlatformChain) -> None:
    """Verify PDH <- PEK <- (OCA, CEK <- ASK <- ARK); raise VerificationError naming the first failing link."""
    for cert, usage in (
        (chain.pdh, Usage.PDH),
        (chain.pek, Usage.PEK),
        (chain.oca, Usage.OCA),
        (chain.cek, Usage.CEK),
        (chain.ask, Usage.ASK),
        (chain.ark, Usage.ARK),
    ):
        _expect_usage(cert, usage, usage.name)
    links: list[tuple[SevCert | AmdCert, SevCert | AmdCert]] = [
        (chain.ark, chain.ark),
        (chain.ask, chain.ark),
        (chain.cek, chain.ask),
        (chain.oca, chain.oca),
        (chain.pek, chain.oca),
        (chain.pek, chain.cek),
        (chain.pdh, chain.pek),
    ]
    for subject, signer in links:
        if not subject.is_signed_by(signer):  # type: ignore[arg-type]
            if subject is signer:
                raise VerificationError(f"{subject.role} is not self-signed")
            raise VerificationError(f"{subject.role} is not signed by {signer.role}")
