"""SNP's X.509 certificates as the owner needs them: AMD's ARK and ASK (RSA-4096, RSA-PSS/SHA-384), a chip's VCEK
or VLEK (ECDSA P-384, signed by the ASK or ASVK) with AMD's TCB extensions, and AMD's bundled SNP roots.

AMD's real VCEKs have a serial number that is not positive, which RFC 5280 forbids: `cryptography` 41-50 loads
them with a CryptographyDeprecationWarning and announces it will refuse them.  `Certificate.parse` loads with
cryptography under `warnings.catch_warnings` (that warning silenced); if cryptography refuses the certificate,
it falls back to a minimal DER reader that takes only what verification needs from the certificate (the TBS bytes,
the signature, the public key, the extensions) and nothing else.  Both paths give the same value.

Only AMD's extensions (1.3.6.1.4.1.3704.*, named in sevd.abi.snp) are kept (AMD, "Versioned Chip Endorsement
Key (VCEK) Certificate and KDS Interface Specification" #57230, section 3.1): the blSPL, teeSPL, snpSPL, ucodeSPL
and (Turin) fmcSPL DER INTEGERs, hwID (the chip id: 64 bytes, 8 on Turin), productName (e.g. "Milan-B0").
"""

from __future__ import annotations

import importlib.resources
import warnings
from dataclasses import dataclass, field

from cryptography import x509 as cx509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from sevd.abi import snp
from sevd.errors import InputError

SNP_GENERATIONS = ("milan", "genoa", "turin")

AMD_OID_PREFIX = "1.3.6.1.4.1.3704."
TCB_OIDS = {
    "boot_loader": snp.OID_BL_SPL,
    "tee": snp.OID_TEE_SPL,
    "snp": snp.OID_SNP_SPL,
    "microcode": snp.OID_UCODE_SPL,
}
OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_ECDSA_SHA384 = "1.2.840.10045.4.3.3"

PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


# -- a minimal DER reader, only for what cryptography refuses -----------------------------------------------------


def _tlv(data: bytes, at: int, name: str) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `at`."""
    if at + 2 > len(data):
        raise InputError(f"{name}: truncated DER")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or at + n > len(data):
            raise InputError(f"{name}: bad DER length")
        length = int.from_bytes(data[at : at + n], "big")
        at += n
    if at + length > len(data):
        raise InputError(f"{name}: DER element runs past the end")
    return tag, at, at + length


def _children(data: bytes, start: int, end: int, name: str) -> list[tuple[int, int, int, int]]:
    """(tag, element start, content start, content end) of each element in [start, end)."""
    out = []
    while start < end:
        tag, cs, ce = _tlv(data, start, name)
        out.append((tag, start, cs, ce))
        start = ce
    return out


def _oid(content: bytes) -> str:
    first = content[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for b in content[1:]:
        value = value << 7 | b & 0x7F
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _parse_der_minimal(der: bytes, name: str) -> tuple[bytes, bytes, str, bytes, dict[str, bytes], int]:
    """(tbs, signature, signature algorithm OID, SubjectPublicKeyInfo DER, extensions OID -> value, serial)."""
    _, cs, ce = _tlv(der, 0, name)
    top = _children(der, cs, ce, name)
    if len(top) != 3:
        raise InputError(f"{name}: not an X.509 certificate")
    tbs_el, alg_el, sig_el = top
    tbs = der[tbs_el[1] : tbs_el[3]]
    alg_oid = _oid(
        der[_children(der, alg_el[2], alg_el[3], name)[0][2] : _children(der, alg_el[2], alg_el[3], name)[0][3]]
    )
    signature = der[sig_el[2] + 1 : sig_el[3]]  # BIT STRING: skip the unused-bits byte
    fields = _children(der, tbs_el[2], tbs_el[3], name)
    i = 1 if fields and fields[0][0] == 0xA0 else 0  # [0] version
    serial = int.from_bytes(der[fields[i][2] : fields[i][3]], "big", signed=True)
    spki_el = fields[i + 5]
    spki = der[spki_el[1] : spki_el[3]]
    extensions: dict[str, bytes] = {}
    for tag, _, xs, xe in fields[i + 6 :]:
        if tag != 0xA3:
            continue
        seq = _children(der, xs, xe, name)[0]
        for _, _, es, ee in _children(der, seq[2], seq[3], name):
            parts = _children(der, es, ee, name)
            oid = _oid(der[parts[0][2] : parts[0][3]])
            value = parts[-1]
            if oid.startswith(AMD_OID_PREFIX):
                extensions[oid] = der[value[2] : value[3]]
    return tbs, signature, alg_oid, spki, extensions, serial


def _der_int(value: bytes, name: str) -> int:
    tag, cs, ce = _tlv(value, 0, name)
    if tag != 0x02:
        raise InputError(f"{name}: expected a DER INTEGER")
    return int.from_bytes(value[cs:ce], "big", signed=True)


# -- the certificate value ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    der: bytes = field(repr=False)
    tbs: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    signature_oid: str
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey = field(repr=False)
    extensions: dict[str, bytes] = field(repr=False)
    serial: int
    name: str

    @classmethod
    def parse(cls, data: bytes, name: str) -> Certificate:
        """PEM or DER."""
        der = _pem_to_der(data, name) if data.lstrip().startswith(b"-----BEGIN") else data
        key: object
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*serial number.*")
                cert = cx509.load_der_x509_certificate(der)
                serial = cert.serial_number
            key = cert.public_key()
            exts = {e.oid.dotted_string: _unrecognized(e) for e in cert.extensions if _is_amd(e)}
            tbs, sig, oid = cert.tbs_certificate_bytes, cert.signature, cert.signature_algorithm_oid.dotted_string
        except ValueError:
            try:
                tbs, sig, oid, spki, exts, serial = _parse_der_minimal(der, name)
            except (IndexError, ValueError):
                raise InputError(f"{name}: not an X.509 certificate (PEM or DER)") from None
            try:
                key = serialization.load_der_public_key(spki)
            except ValueError:
                raise InputError(f"{name}: not an X.509 certificate with a usable public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise InputError(f"{name}: holds neither an RSA nor an EC key")
        return cls(der, tbs, sig, oid, key, exts, serial, name)

    def to_pem(self) -> bytes:
        import base64
        import textwrap

        body = "\n".join(textwrap.wrap(base64.b64encode(self.der).decode(), 64))
        return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()

    def is_signed_by(self, signer: Certificate) -> bool:
        key = signer.public_key
        try:
            if self.signature_oid == OID_RSASSA_PSS and isinstance(key, rsa.RSAPublicKey):
                key.verify(self.signature, self.tbs, PSS_SHA384, hashes.SHA384())
            elif self.signature_oid == OID_ECDSA_SHA384 and isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(self.signature, self.tbs, ec.ECDSA(hashes.SHA384()))
            else:
                return False
        except InvalidSignature:
            return False
        return True

    # VCEK/VLEK extensions
    def tcb_extensions(self) -> dict[str, int]:
        """AMD's TCB extensions of a VCEK/VLEK: boot_loader, tee, snp, microcode and (Turin) fmc SPLs."""
        oids = dict(TCB_OIDS)
        if snp.OID_FMC_SPL in self.extensions:
            oids["fmc"] = snp.OID_FMC_SPL
        missing = [n for n, o in oids.items() if o not in self.extensions]
        if missing:
            raise InputError(f"{self.name}: lacks AMD's TCB extension(s) {', '.join(missing)} (not a VCEK/VLEK?)")
        return {n: _der_int(self.extensions[o], f"{self.name} {n}SPL") for n, o in oids.items()}

    def hwid(self) -> bytes | None:
        """The hwID extension: raw bytes, or (as some tools write it) a DER OCTET STRING around them."""
        value = self.extensions.get(snp.OID_HWID)
        if value is not None and len(value) >= 2 and value[0] == 0x04:
            try:
                _, cs, ce = _tlv(value, 0, "hwID")
            except InputError:
                return value
            if ce == len(value):
                return value[cs:ce]
        return value


def _unrecognized(ext: cx509.Extension[cx509.ExtensionType]) -> bytes:
    value = ext.value
    assert isinstance(value, cx509.UnrecognizedExtension)
    return value.value


def _is_amd(ext: cx509.Extension[cx509.ExtensionType]) -> bool:
    return ext.oid.dotted_string.startswith(AMD_OID_PREFIX) and isinstance(ext.value, cx509.UnrecognizedExtension)


def _pem_to_der(data: bytes, name: str) -> bytes:
    certs = pem_certificates(data, name)
    if len(certs) != 1:
        raise InputError(f"{name}: holds {len(certs)} PEM certificates, expected one")
    return certs[0]


def pem_certificates(data: bytes, name: str) -> list[bytes]:
    """The DER of each certificate in a PEM file, in order."""
    import base64
    import binascii
    import re

    out = []
    for m in re.finditer(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", data, re.S):
        try:
            out.append(base64.b64decode(b"".join(m.group(1).split()), validate=True))
        except (binascii.Error, ValueError):
            raise InputError(f"{name}: a PEM certificate is not valid base64") from None
    if not out:
        raise InputError(f"{name}: no PEM certificate in it")
    return out


def builtin_snp_roots(generation: str) -> tuple[Certificate, Certificate]:
    """(ark, ask): AMD's SNP roots of a generation, bundled as sevd/abi/roots/snp/<generation>/{ark,ask}.pem."""
    base = importlib.resources.files("sevd.abi") / "roots" / "snp" / generation
    ark = Certificate.parse((base / "ark.pem").read_bytes(), f"AMD's {generation} ARK")
    ask = Certificate.parse((base / "ask.pem").read_bytes(), f"AMD's {generation} ASK")
    return ark, ask
