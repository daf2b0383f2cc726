"""`sev-owner snp verify-report` and `snp fetch-vcek`: a report built with sevd.abi.snp's layout and signed by a
test VCEK chain generated here (X.509 with AMD's VCEK extensions), AMD's real SNP roots, a negative serial."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import warnings

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

from sevd.abi import snp
from sevd.cli.owner import main
from sevd.owner.snp import x509 as snp_x509
from sevd.owner.snp.x509 import Certificate, builtin_snp_roots

ROOTS = pathlib.Path(__file__).resolve().parents[1] / "sevd" / "abi" / "roots" / "snp"
REFERENCE = pathlib.Path("/work/shared/reference/amd-certs/snp")
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
TCB = snp.TcbVersion(boot_loader=3, tee=0, snp=8, microcode=115)
CHIP = bytes(range(64))
MEASUREMENT = bytes(range(48))
HOST_DATA = b"\x42" * 32
REPORT_DATA = b"\x07" * 64
POLICY = 0x30000


def der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_len(len(content)) + content


def der_int(v: int) -> bytes:
    return der(0x02, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=True))


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def rsa_ca(cn: str, key: rsa.RSAPrivateKey, issuer: str, signer: rsa.RSAPrivateKey) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2045, 1, 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA384(), rsa_padding=PSS)
    )


def vcek_cert(
    key: ec.EllipticCurvePrivateKey, ask_key: rsa.RSAPrivateKey, tcb: snp.TcbVersion = TCB, hwid: bytes = CHIP
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(name("SEV-VCEK"))
        .issuer_name(name("SEV-Test-ASK"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2045, 1, 1))
    )
    exts = {
        snp.OID_STRUCT_VERSION: der_int(1),
        snp.OID_PRODUCT_NAME: der(0x16, b"Milan-B0"),
        snp.OID_BL_SPL: der_int(tcb.boot_loader),
        snp.OID_TEE_SPL: der_int(tcb.tee),
        snp.OID_SNP_SPL: der_int(tcb.snp),
        snp.OID_UCODE_SPL: der_int(tcb.microcode),
        snp.OID_HWID: der(0x04, hwid),
    }
    for oid, value in exts.items():
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return b.sign(ask_key, hashes.SHA384(), rsa_padding=PSS)


@dataclasses.dataclass
class Chain:
    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    ask_key: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def chain() -> Chain:
    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark = rsa_ca("ARK-Test", ark_key, "ARK-Test", ark_key)
    ask = rsa_ca("SEV-Test-ASK", ask_key, "ARK-Test", ark_key)
    return Chain(ark, ask, vcek_cert(vcek_key, ask_key), vcek_key, ask_key)


def make_report(key: ec.EllipticCurvePrivateKey, **changes: object) -> bytes:
    fields: dict[str, object] = dict(
        version=3, guest_svn=1, policy=POLICY, family_id=bytes(16), image_id=bytes(16), vmpl=0,
        sig_algo=1, current_tcb=TCB, platform_info=0, key_info=0, report_data=REPORT_DATA,
        measurement=MEASUREMENT, host_data=HOST_DATA, id_key_digest=bytes(48), author_key_digest=bytes(48),
        report_id=bytes(32), report_id_ma=bytes(32), reported_tcb=TCB, chip_id=CHIP, committed_tcb=TCB,
        current_build=1, current_minor=55, current_major=1, committed_build=1, committed_minor=55,
        committed_major=1, launch_tcb=TCB, cpuid_fam_id=0x19, cpuid_mod_id=0x01, cpuid_step=1,
    )  # fmt: skip
    fields.update(changes)
    report = snp.AttestationReport(**fields)  # type: ignore[arg-type]
    r, s = utils.decode_dss_signature(key.sign(report.signed_bytes(), ec.ECDSA(hashes.SHA384())))
    return report.with_signature(r, s).to_bytes()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def dirs(tmp_path: pathlib.Path, chain: Chain) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    certs, roots = tmp_path / "certs", tmp_path / "roots"
    certs.mkdir()
    roots.mkdir()
    (certs / "vcek.pem").write_bytes(pem(chain.vcek))
    (roots / "ark.pem").write_bytes(pem(chain.ark))
    (roots / "ask.pem").write_bytes(pem(chain.ask))
    report = tmp_path / "report.bin"
    report.write_bytes(make_report(chain.vcek_key))
    return report, certs, roots


def verify(report: pathlib.Path, certs: pathlib.Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["snp", "verify-report", "--report", str(report), "--certs", str(certs), *extra])
    return result.exit_code, result.output


EXPECT = [
    "--measurement", MEASUREMENT.hex(), "--policy", hex(POLICY), "--host-data", HOST_DATA.hex(),
    "--report-data", REPORT_DATA.hex(), "--min-tcb", "bl=3,tee=0,snp=8,ucode=115",
]  # fmt: skip


def test_bundled_snp_roots_are_amds_reference_certificates() -> None:
    for gen in ("milan", "genoa", "turin"):
        for f in ("ark.pem", "ask.pem"):
            assert (ROOTS / gen / f).read_bytes() == (REFERENCE / gen / f).read_bytes()
        ark, ask = builtin_snp_roots(gen)
        assert ark.is_signed_by(ark) and ask.is_signed_by(ark)
    milan_ark, _ = builtin_snp_roots("milan")
    _, genoa_ask = builtin_snp_roots("genoa")
    assert not genoa_ask.is_signed_by(milan_ark)


def test_valid_report_with_named_roots_says_they_are_not_amds(dirs: tuple[pathlib.Path, ...]) -> None:
    report, certs, roots = dirs
    code, out = verify(report, certs, "--roots", str(roots), *EXPECT)
    assert code == 0, out
    assert "NOT AMD's" in out and "WARNING" in out
    assert "measurement" in out and "reported TCB = VCEK TCB" in out


def test_json_output(dirs: tuple[pathlib.Path, ...]) -> None:
    report, certs, roots = dirs
    code, out = verify(report, certs, "--roots", str(roots), "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["amd_roots"] is False and data["endorsement"] == "VCEK"


def test_without_named_roots_only_amds_are_trusted(dirs: tuple[pathlib.Path, ...]) -> None:
    report, certs, _ = dirs
    code, out = verify(report, certs)
    assert code == 1 and "AMD's milan ASK" in out


def test_host_root_files_must_be_the_trusted_ones(dirs: tuple[pathlib.Path, ...]) -> None:
    report, certs, roots = dirs
    shutil.copy(ROOTS / "milan" / "ark.pem", certs / "ark.pem")
    code, out = verify(report, certs, "--roots", str(roots))
    assert code == 1 and "ark.pem" in out and "never trusted" in out
    shutil.copy(roots / "ark.pem", certs / "ark.pem")
    shutil.copy(roots / "ask.pem", certs / "ask.pem")
    assert verify(report, certs, "--roots", str(roots))[0] == 0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"measurement": b"\x01" * 48}, "measurement"),
        ({"policy": 0x30001}, "policy"),
        ({"host_data": b"\x00" * 32}, "host_data"),
        ({"report_data": b"\x00" * 64}, "report_data"),
        ({"reported_tcb": snp.TcbVersion(3, 0, 7, 115)}, "reported TCB"),
        ({"chip_id": bytes(63) + b"\x01"}, "chip_id"),
        ({"sig_algo": 2}, "signature"),
        ({"key_info": 1 << 2}, "signature"),
    ],
)
def test_each_checked_field_tampered_fails_naming_it(
    dirs: tuple[pathlib.Path, ...], chain: Chain, change: dict[str, object], named: str
) -> None:
    report, certs, roots = dirs
    report.write_bytes(make_report(chain.vcek_key, **change))
    code, out = verify(report, certs, "--roots", str(roots), *EXPECT)
    assert code == 1, out
    assert named in out


def test_min_tcb_above_the_reported_tcb_fails(dirs: tuple[pathlib.Path, ...]) -> None:
    report, certs, roots = dirs
    code, out = verify(report, certs, "--roots", str(roots), "--min-tcb", "bl=3,snp=9")
    assert code == 1 and "min-tcb" in out and "snp" in out


def test_a_flipped_bit_breaks_the_signature(dirs: tuple[pathlib.Path, ...]) -> None:
    report, certs, roots = dirs
    raw = bytearray(report.read_bytes())
    raw[0x90] ^= 1
    report.write_bytes(bytes(raw))
    code, out = verify(report, certs, "--roots", str(roots))
    assert code == 1 and "signature" in out


def test_vcek_for_another_tcb_fails(dirs: tuple[pathlib.Path, ...], chain: Chain) -> None:
    report, certs, roots = dirs
    other = vcek_cert(chain.vcek_key, chain.ask_key, tcb=snp.TcbVersion(2, 0, 8, 115))
    (certs / "vcek.pem").write_bytes(pem(other))
    code, out = verify(report, certs, "--roots", str(roots))
    assert code == 1 and "reported TCB" in out


def test_vcek_not_signed_by_the_ask_fails(dirs: tuple[pathlib.Path, ...], chain: Chain) -> None:
    report, certs, roots = dirs
    stranger = rsa.generate_private_key(65537, 2048)
    (certs / "vcek.pem").write_bytes(pem(vcek_cert(chain.vcek_key, stranger)))
    code, out = verify(report, certs, "--roots", str(roots))
    assert code == 1 and "chain" in out


@pytest.mark.parametrize("what", ["no vcek", "short report", "bad hex"])
def test_unusable_input_exits_2(dirs: tuple[pathlib.Path, ...], what: str) -> None:
    report, certs, roots = dirs
    extra: list[str] = []
    if what == "no vcek":
        (certs / "vcek.pem").unlink()
    elif what == "short report":
        report.write_bytes(b"\0" * 100)
    else:
        extra = ["--measurement", "zz"]
    assert verify(report, certs, "--roots", str(roots), *extra)[0] == 2


def test_vcek_in_der_is_read(dirs: tuple[pathlib.Path, ...], chain: Chain) -> None:
    report, certs, roots = dirs
    (certs / "vcek.pem").unlink()
    (certs / "vcek.der").write_bytes(chain.vcek.public_bytes(serialization.Encoding.DER))
    assert verify(report, certs, "--roots", str(roots))[0] == 0


# -- a VCEK with a negative serial, as AMD's real ones have -------------------------------------------------------


def negative_serial(cert: x509.Certificate, signer: rsa.RSAPrivateKey) -> bytes:
    """The certificate re-encoded with serial -1 (TBS rebuilt, re-signed)."""
    tbs = cert.tbs_certificate_bytes
    _, cs, ce = snp_x509._tlv(tbs, 0, "tbs")
    parts = snp_x509._children(tbs, cs, ce, "tbs")
    version, serial = parts[0], parts[1]
    new_tbs_content = tbs[version[1] : version[3]] + der(0x02, b"\xff") + tbs[serial[3] : ce]
    new_tbs = der(0x30, new_tbs_content)
    algid = cert.public_bytes(serialization.Encoding.DER)
    _, ocs, oce = snp_x509._tlv(algid, 0, "cert")
    alg_el = snp_x509._children(algid, ocs, oce, "cert")[1]
    sig = signer.sign(new_tbs, PSS, hashes.SHA384())
    return der(0x30, new_tbs + algid[alg_el[1] : alg_el[3]] + der(0x03, b"\0" + sig))


def test_negative_serial_vcek_loads_without_warning_and_verifies(dirs: tuple[pathlib.Path, ...], chain: Chain) -> None:
    report, certs, roots = dirs
    blob = negative_serial(chain.vcek, chain.ask_key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cert = Certificate.parse(blob, "vcek.der")
    assert cert.serial == -1
    (certs / "vcek.pem").unlink()
    (certs / "vcek.der").write_bytes(blob)
    assert verify(report, certs, "--roots", str(roots))[0] == 0


def test_negative_serial_through_the_minimal_der_reader_when_cryptography_refuses(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = negative_serial(chain.vcek, chain.ask_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_cryptography = Certificate.parse(blob, "vcek")

    def refuse(data: bytes) -> x509.Certificate:
        raise ValueError("serial number is not positive")

    monkeypatch.setattr(snp_x509.cx509, "load_der_x509_certificate", refuse)
    minimal = Certificate.parse(blob, "vcek")
    assert minimal.serial == -1
    assert (minimal.tbs, minimal.signature, minimal.signature_oid, minimal.extensions) == (
        by_cryptography.tbs, by_cryptography.signature, by_cryptography.signature_oid, by_cryptography.extensions,
    )  # fmt: skip
    assert minimal.tcb_extensions() == {"boot_loader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert minimal.hwid() == CHIP
    ask = Certificate.parse(pem(chain.ask), "ask")
    assert minimal.is_signed_by(ask)


# -- fetch-vcek: a key-server tree served as file://, then offline from the cache ---------------------------------


def test_fetch_vcek_writes_snpguests_files_and_works_offline_from_cache(tmp_path: pathlib.Path, chain: Chain) -> None:
    report = tmp_path / "report.bin"
    report.write_bytes(make_report(chain.vcek_key))
    kds = tmp_path / "kds"
    vcek_rel = snp.kds_vcek_path(snp.Product.MILAN, CHIP, TCB).lstrip("/")
    assert vcek_rel == f"vcek/v1/Milan/{CHIP.hex()}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115"
    (kds / vcek_rel).parent.mkdir(parents=True)
    (kds / vcek_rel).write_bytes(chain.vcek.public_bytes(serialization.Encoding.DER))
    (kds / "vcek/v1/Milan/cert_chain").write_bytes(pem(chain.ask) + pem(chain.ark))
    cache = tmp_path / "cache"
    args = ["snp", "fetch-vcek", str(tmp_path / "certs"), "--report", str(report), "--cache", str(cache)]
    result = CliRunner().invoke(main, [*args, "--kds-url", f"file://{kds}"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "certs")) == ["ark.pem", "ask.pem", "vcek.pem"]
    code, out = verify(report, tmp_path / "certs", "--roots", str(tmp_path / "certs"))
    assert code == 0, out
    shutil.rmtree(kds)
    shutil.rmtree(tmp_path / "certs")
    result = CliRunner().invoke(main, [*args, "--kds-url", f"file://{kds}"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "certs" / "vcek.pem").exists()


def test_fetch_vcek_unreachable_and_not_cached_names_the_url(tmp_path: pathlib.Path, chain: Chain) -> None:
    report = tmp_path / "report.bin"
    report.write_bytes(make_report(chain.vcek_key))
    result = CliRunner().invoke(
        main,
        ["snp", "fetch-vcek", str(tmp_path / "c"), "--report", str(report), "--cache", str(tmp_path / "cache"),
         "--kds-url", f"file://{tmp_path}/nowhere"],
    )  # fmt: skip
    assert result.exit_code == 2 and "vcek/v1/Milan/" in result.output


def test_kds_urls_per_generation() -> None:
    from sevd.owner.snp.kds import kds_crl_path

    turin = snp.TcbVersion(boot_loader=1, tee=2, snp=3, microcode=4, fmc=5)
    chip = bytes(range(8)) + bytes(56)
    assert snp.kds_vcek_path(snp.Product.TURIN, chip, turin) == (
        "/vcek/v1/Turin/0001020304050607?fmcSPL=5&blSPL=1&teeSPL=2&snpSPL=3&ucodeSPL=4"
    )
    assert snp.kds_chain_path(snp.Product.GENOA) == "/vcek/v1/Genoa/cert_chain"
    assert kds_crl_path(snp.Product.MILAN) == "/vcek/v1/Milan/crl"
