"""SEV-SNP keys of the simulated chip and the simulated AMD: VCEK per reported TCB, the ARK/ASK/VCEK X.509 chain.

Real chips derive the VCEK from a chip-unique secret and the TCB version, so a chip has one VCEK per TCB and
AMD's key server (KDS) serves the matching certificate.  Here the VCEK's private scalar is SHA-384 of the
simulated chip secret and the 8 TCB bytes (reduced mod n), so it is stable across processes and restarts.

The certificates follow AMD's (VCEK certificate and KDS interface specification, 57230): ARK and ASK RSA-4096
with RSA-PSS/SHA-384 (MGF1-SHA-384, salt 48), the VCEK ECDSA P-384 signed by the ASK with RSA-PSS, carrying
the SPLs (`1.3.6.1.4.1.3704.1.3.x`, DER INTEGERs), the product name (`.1.2`, IA5String) and the hwID (`.1.4`,
OCTET STRING of the 64-byte chip id).  AMD's own VCEKs have had serial numbers that DER reads as negative or
zero, which `cryptography` warns about (and a future release will refuse); the simulated VCEK's serial is
positive.
"""

from __future__ import annotations

import datetime
import functools
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sevd.abi import snp
from sevd.abi.snp import Product, TcbVersion
from sevd_sim.psp.identity import AMD_ROOT_BITS

# The order of P-384's base point (FIPS 186-4, D.1.2.4).
P384_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(2051, 1, 1, tzinfo=datetime.UTC)


def derive_key(secret: bytes, label: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-384 private key from a secret and a label, deterministically (scalar in [1, n-1])."""
    scalar = int.from_bytes(hashlib.sha384(b"sevd-sim-snp\0" + label + b"\0" + secret).digest(), "big")
    return ec.derive_private_key(scalar % (P384_N - 1) + 1, ec.SECP384R1())


def vcek_key(chip_secret: bytes, tcb: TcbVersion) -> ec.EllipticCurvePrivateKey:
    return derive_key(chip_secret, b"vcek" + tcb.to_bytes())


def vlek_key(hashstick: bytes) -> ec.EllipticCurvePrivateKey:
    return derive_key(hashstick, b"vlek")


def sign_report(key: ec.EllipticCurvePrivateKey, report: snp.AttestationReport) -> snp.AttestationReport:
    der = key.sign(report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return report.with_signature(r, s)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Simulated Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    assert len(body) < 0x80
    return bytes([tag, len(body)]) + body


@functools.cache
def simulated_snp_root(product: Product) -> tuple[x509.Certificate, x509.Certificate, rsa.RSAPrivateKey]:
    """(ARK, ASK, ASK key) of the simulated AMD for one product, once per process (RSA-4096 is slow to make)."""
    ark_key = rsa.generate_private_key(65537, AMD_ROOT_BITS)
    ask_key = rsa.generate_private_key(65537, AMD_ROOT_BITS)
    ark_name, ask_name = _name(f"ARK-{product.value}"), _name(f"SEV-{product.value}")

    def ca(subject: x509.Name, key: rsa.RSAPrivateKey, serial: int) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ark_name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(_NOT_BEFORE)
            .not_valid_after(_NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        )

    ark = ca(ark_name, ark_key, 1).sign(ark_key, hashes.SHA384(), rsa_padding=_PSS)
    ask = ca(ask_name, ask_key, 2).sign(ark_key, hashes.SHA384(), rsa_padding=_PSS)
    return ark, ask, ask_key


def vcek_certificate(product: Product, chip_id: bytes, chip_secret: bytes, tcb: TcbVersion) -> x509.Certificate:
    """The VCEK certificate the simulated KDS serves for this chip and TCB, signed by the simulated ASK."""
    _ark, ask, ask_key = simulated_snp_root(product)
    key = vcek_key(chip_secret, tcb)
    spls = [(snp.OID_BL_SPL, tcb.boot_loader), (snp.OID_TEE_SPL, tcb.tee), (snp.OID_SNP_SPL, tcb.snp)]
    spls += [(f"1.3.6.1.4.1.3704.1.3.{i}", 0) for i in range(4, 8)] + [(snp.OID_UCODE_SPL, tcb.microcode)]
    if product is Product.TURIN:
        spls.append((snp.OID_FMC_SPL, tcb.fmc or 0))
    serial = int.from_bytes(hashlib.sha256(chip_id + tcb.to_bytes()).digest()[:16], "big") | 1 << 120  # > 0
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("SEV-VCEK"))
        .issuer_name(ask.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(snp.OID_STRUCT_VERSION), _der_integer(1)), critical=False
        )  # fmt: skip
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(snp.OID_PRODUCT_NAME), _der(0x16, f"{product.value}-B0".encode())
            ),
            critical=False,
        )
    )
    for oid, value in spls:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), _der_integer(value)), critical=False
        )
    builder = builder.add_extension(
        x509.UnrecognizedExtension(x509.ObjectIdentifier(snp.OID_HWID), _der(0x04, chip_id)), critical=False
    )
    return builder.sign(ask_key, hashes.SHA384(), rsa_padding=_PSS)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
