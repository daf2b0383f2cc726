"""SNP certificates from AMD's key distribution server (KDS): a chip's VCEK for a TCB, a product's ASK and ARK,
its CRL.  Fetching, caching and offline use are `sevd.owner.keyserver.KeyServer`'s (one cache for SEV and SNP).

Paths (AMD 57230 section 4; snpguest `src/fetch.rs`): the VCEK and cert_chain paths are `sevd.abi.snp`'s
(`kds_vcek_path`, `kds_chain_path`); the CRL is `/vcek/v1/{product}/crl` (DER), defined here because the ABI module
does not name it.  A VCEK is served DER, the cert_chain as PEM (the ASK then the ARK).

`fetch_vcek_dir` writes the files snpguest's `fetch ca` and `fetch vcek` write: ark.pem, ask.pem, vcek.pem (or
.der), and crl.pem (or .der) from `fetch crl`.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sevd.abi import snp
from sevd.errors import InputError
from sevd.owner import files
from sevd.owner.keyserver import KeyServer, KeyServerError
from sevd.owner.snp.x509 import Certificate, pem_certificates


def kds_crl_path(product: snp.Product) -> str:
    return f"/vcek/v1/{product.value}/crl"


def product_of(report: snp.AttestationReport, named: str | None = None) -> snp.Product:
    """The KDS product: named, else from the report's CPUID (version 3+), as snpguest's get_processor_model."""
    if named:
        for product in snp.Product:
            if named.lower() in (product.value.lower(), *_ALIASES.get(product, ())):
                return product
        raise InputError(f"--product {named!r}: expected Milan, Genoa (Bergamo, Siena) or Turin")
    if report.version >= 3:
        fam, mod = report.cpuid_fam_id, report.cpuid_mod_id
        if fam == 0x19 and mod <= 0x0F:
            return snp.Product.MILAN
        if fam == 0x19 and (0x10 <= mod <= 0x1F or 0xA0 <= mod <= 0xAF):
            return snp.Product.GENOA
        if fam == 0x1A and mod <= 0x11:
            return snp.Product.TURIN
        raise InputError(f"report: CPUID family {fam:#x} model {mod:#x} is no SNP product sevd knows; give --product")
    if report.chip_id[8:] == bytes(56) and report.chip_id != bytes(64):
        return snp.Product.TURIN
    raise InputError("report: version 2 carries no CPUID; give --product (Milan, Genoa or Turin)")


_ALIASES = {snp.Product.GENOA: ("bergamo", "siena")}


def _check_vcek(data: bytes, url: str) -> Certificate:
    cert = Certificate.parse(data, f"key server {url}")
    if not isinstance(cert.public_key, ec.EllipticCurvePublicKey):
        raise KeyServerError(f"key server {url}: not a VCEK (no ECDSA key)")
    cert.tcb_extensions()
    return cert


def _check_chain(data: bytes, url: str) -> tuple[Certificate, Certificate]:
    ders = pem_certificates(data, f"key server {url}")
    if len(ders) != 2:
        raise KeyServerError(f"key server {url}: {len(ders)} certificates, expected the ASK then the ARK")
    ask, ark = (Certificate.parse(d, f"key server {url}") for d in ders)
    if not ark.is_signed_by(ark) or not ask.is_signed_by(ark):
        raise KeyServerError(f"key server {url}: the ARK does not sign itself and the ASK")
    return ask, ark


def _check_crl(data: bytes, url: str) -> cx509.CertificateRevocationList:
    try:
        return cx509.load_der_x509_crl(data)
    except ValueError:
        try:
            return cx509.load_pem_x509_crl(data)
        except ValueError:
            raise KeyServerError(f"key server {url}: not a CRL") from None


@dataclass(frozen=True)
class FetchedVcek:
    paths: list[pathlib.Path]
    product: snp.Product
    urls: list[str]


def fetch_vcek(server: KeyServer, product: snp.Product, report: snp.AttestationReport) -> tuple[Certificate, str]:
    if report.chip_id == bytes(snp.CHIP_ID_SIZE):
        raise InputError("report: CHIP_ID is all zeros (MASK_CHIP_ID set?): the key server needs the chip id")
    tcb = report.reported_tcb
    if product is snp.Product.TURIN and tcb.fmc is None:
        raise InputError("report: a Turin VCEK needs the FMC SPL, and this report's TCB has none")
    path = snp.kds_vcek_path(product, report.chip_id, tcb)
    key = f"chip {product.hwid(report.chip_id)[:16]}... TCB {tcb.describe()}"
    return server.fetch_path(path, f"the VCEK of {key}", key, lambda d: _check_vcek(d, path))


def fetch_chain(server: KeyServer, product: snp.Product) -> tuple[tuple[Certificate, Certificate], str]:
    path = snp.kds_chain_path(product)
    return server.fetch_path(path, f"the {product.value} ASK and ARK", product.value, lambda d: _check_chain(d, path))


def fetch_crl(server: KeyServer, product: snp.Product) -> tuple[cx509.CertificateRevocationList, str]:
    path = kds_crl_path(product)
    return server.fetch_path(path, f"the {product.value} CRL", product.value, lambda d: _check_crl(d, path))


def fetch_vcek_dir(
    directory: str | pathlib.Path,
    report: snp.AttestationReport,
    server: KeyServer,
    product: snp.Product,
    *,
    encoding: str = "pem",
    crl: bool = False,
) -> FetchedVcek:
    """Write ark, ask and vcek (and crl) .pem or .der into `directory`, snpguest's names.  Nothing is trusted:
    verify-report checks the chain against AMD's bundled roots."""
    if encoding not in ("pem", "der"):
        raise InputError(f"--encoding {encoding!r}: pem or der")
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    vcek, vcek_url = fetch_vcek(server, product, report)
    (ask, ark), chain_url = fetch_chain(server, product)
    if not vcek.is_signed_by(ask):
        raise KeyServerError(f"{vcek_url}: this VCEK is not signed by the {product.value} ASK of {chain_url}")

    def blob(cert: Certificate) -> bytes:
        return cert.to_pem() if encoding == "pem" else cert.der

    paths = [
        files.write_public(d / f"ark.{encoding}", blob(ark)),
        files.write_public(d / f"ask.{encoding}", blob(ask)),
        files.write_public(d / f"vcek.{encoding}", blob(vcek)),
    ]
    urls = [vcek_url, chain_url]
    if crl:
        revocations, crl_url = fetch_crl(server, product)
        enc = serialization.Encoding.PEM if encoding == "pem" else serialization.Encoding.DER
        paths.append(files.write_public(d / f"crl.{encoding}", revocations.public_bytes(enc)))
        urls.append(crl_url)
    return FetchedVcek(paths, product, urls)
