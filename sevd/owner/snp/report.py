"""Verify an SNP attestation report (`report.bin`, as snpguest writes it) with the certificates in a directory
(snpguest's layout: vcek.pem or vcek.der, or vlek.*; optionally ask.*, ark.*, asvk.*).

The chain ends at AMD's SNP roots only: the ARK and ASK bundled with sevd (`sevd/abi/roots/snp/<generation>/`),
of the report's product (its CPUID, report version 3+) or else of the generation whose ASK signed the VCEK.  Root
files in the directory come from the host and are never a source of trust: each must equal the trusted root, or
verification fails naming the file.  Other roots only when the owner names them (`roots=`), and the result then
says they are not AMD's — the rule of `sevd.owner.chain` for SEV.

Checks, in order; the first that fails raises VerificationError naming it: ARK self-signed; ASK (or ASVK) signed by
the ARK; VCEK (VLEK) signed by the ASK (ASVK); the report's signature algorithm and signing key; the report's
ECDSA P-384/SHA-384 signature over [0, 0x2A0) by the VCEK; the VCEK's TCB extensions equal to the report's
REPORTED_TCB and its hwID to CHIP_ID; then each expectation given (measurement, policy, host data, report data,
minimum TCB).
"""

from __future__ import annotations

import hmac
import pathlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from sevd.abi import snp
from sevd.errors import InputError, VerificationError
from sevd.owner import files
from sevd.owner.snp.x509 import SNP_GENERATIONS, Certificate, builtin_snp_roots

_GENERATION_OF = {snp.Product.MILAN: "milan", snp.Product.GENOA: "genoa", snp.Product.TURIN: "turin"}


@dataclass(frozen=True)
class Expectations:
    measurement: bytes | None = None
    policy: int | None = None
    host_data: bytes | None = None
    report_data: bytes | None = None
    min_tcb: dict[str, int] | None = None


@dataclass(frozen=True)
class ReportVerdict:
    report: snp.AttestationReport
    endorsement: str  # "VCEK" or "VLEK"
    roots: str  # "builtin:<generation>" or the directory named
    generation: str | None
    amd: bool
    checked: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        if self.amd:
            return None
        return (
            f"WARNING: the roots in {self.roots} are not AMD's: this report proves only that those keys signed it, "
            "not that it comes from a genuine AMD EPYC"
        )

    def describe_roots(self) -> str:
        if self.roots.startswith("builtin:"):
            return f"AMD's bundled {self.generation} SNP roots"
        if self.amd:
            return f"{self.roots} (named explicitly; AMD's {self.generation} SNP roots)"
        return f"{self.roots} (named explicitly; NOT AMD's)"


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
    for ext in ("pem", "der", "crt", "cer"):
        path = directory / f"{stem}.{ext}"
        if path.exists():
            return path
    return None


def _load(path: pathlib.Path, what: str) -> Certificate:
    return Certificate.parse(files.read_bytes(path, what), str(path))


def _roots_from(directory: pathlib.Path, signer: str) -> tuple[Certificate, Certificate]:
    if not directory.is_dir():
        raise InputError(f"--roots {directory}: not a directory (expected ark.pem and ask.pem)")
    ark, ask = _find(directory, "ark"), _find(directory, signer)
    if ark is None or ask is None:
        raise InputError(f"--roots {directory}: needs ark.pem (or .der) and {signer}.pem (or .der)")
    return _load(ark, "ARK"), _load(ask, signer.upper())


def _builtin_generation(ark: Certificate, ask: Certificate) -> str | None:
    for generation in SNP_GENERATIONS:
        b_ark, b_ask = builtin_snp_roots(generation)
        if (b_ark.der, b_ask.der) == (ark.der, ask.der):
            return generation
    return None


def _report_product(report: snp.AttestationReport) -> snp.Product | None:
    from sevd.owner.snp.kds import product_of

    try:
        return product_of(report)
    except InputError:
        return None


def verify_report(
    report_path: str | pathlib.Path,
    certs_dir: str | pathlib.Path,
    expect: Expectations = Expectations(),
    roots: str | pathlib.Path | None = None,
) -> ReportVerdict:
    raw = files.read_bytes(report_path, "attestation report")
    report = snp.AttestationReport.parse(raw, str(report_path))
    d = pathlib.Path(certs_dir)
    if not d.is_dir():
        raise InputError(f"--certs {d}: not a directory")
    vcek_path, vlek_path = _find(d, "vcek"), _find(d, "vlek")
    if vcek_path is None and vlek_path is None:
        raise InputError(f"--certs {d}: holds neither vcek.pem/vcek.der nor vlek.pem/vlek.der")
    if vcek_path is not None and vlek_path is not None:
        raise InputError(f"--certs {d}: holds both a VCEK and a VLEK; keep the one that signed the report")
    endorsement, signer = ("VCEK", "ask") if vcek_path is not None else ("VLEK", "asvk")
    key_path = vcek_path or vlek_path
    assert key_path is not None
    vcek = _load(key_path, endorsement)
    checked: list[str] = []

    # The trusted roots.
    if roots is not None:
        ark, ask = _roots_from(pathlib.Path(roots), signer)
        generation = _builtin_generation(ark, ask)
        source = str(roots)
        trusted = f"the {{role}} of the roots named explicitly ({roots})"
    else:
        if endorsement == "VLEK":
            raise VerificationError(
                f"{key_path}: a VLEK is signed by an ASVK, and sevd bundles no AMD ASVK; "
                "name the roots explicitly with --roots DIR (ark.pem + asvk.pem)"
            )
        product = _report_product(report)
        candidates = [_GENERATION_OF[product]] if product is not None else list(SNP_GENERATIONS)
        generation = next((g for g in candidates if vcek.is_signed_by(builtin_snp_roots(g)[1])), None)
        if generation is None:
            which = f"AMD's {candidates[0]}" if len(candidates) == 1 else "any AMD generation's"
            raise VerificationError(
                f"{key_path}: the {endorsement} is not signed by {which} ASK; only AMD's bundled SNP roots are "
                "trusted (name other roots explicitly with --roots DIR)"
            )
        ark, ask = builtin_snp_roots(generation)
        source = f"builtin:{generation}"
        trusted = f"AMD's {generation} {{role}}"
    for stem, role, expected in (("ark", "ARK", ark), (signer, signer.upper(), ask)):
        path = _find(d, stem)
        if path is not None and _load(path, role).der != expected.der:
            raise VerificationError(
                f"{path}: this {role} is not {trusted.format(role=role)}; root files from the host are never "
                "trusted (name other roots explicitly with --roots DIR)"
            )

    # The chain.
    if not ark.is_signed_by(ark):
        raise VerificationError("chain: the ARK is not self-signed")
    if not ask.is_signed_by(ark):
        raise VerificationError(f"chain: the {signer.upper()} is not signed by the ARK")
    if not vcek.is_signed_by(ask):
        raise VerificationError(f"chain: the {endorsement} ({key_path}) is not signed by the {signer.upper()}")
    checked.append(f"chain {endorsement} <- {signer.upper()} <- ARK")

    # The report's signature.
    if report.sig_algo != snp.SIG_ALGO_ECDSA_P384_SHA384:
        raise VerificationError(f"signature: algorithm {report.sig_algo}, expected 1 (ECDSA P-384 with SHA-384)")
    wanted = snp.SigningKey.VCEK if endorsement == "VCEK" else snp.SigningKey.VLEK
    if report.signing_key != wanted:
        raise VerificationError(
            f"signature: the report says signing key {report.signing_key}, not the {endorsement} given ({int(wanted)})"
        )
    key = vcek.public_key
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError(f"{key_path}: the {endorsement} key is not ECDSA P-384")
    r, s = report.signature_rs()
    try:
        key.verify(utils.encode_dss_signature(r, s), raw[: snp.SIGNATURE_OFFSET], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise VerificationError(f"signature: the report's signature does not verify with the {endorsement}") from None
    checked.append("signature")

    # The VCEK is the one for this chip and TCB.
    _check_tcb_extensions(vcek, report, endorsement)
    checked.append("reported TCB = VCEK TCB")
    hwid = vcek.hwid()
    if endorsement == "VCEK" and hwid is not None and report.chip_id != bytes(snp.CHIP_ID_SIZE):
        chip = report.chip_id[: len(hwid)]
        if hwid != chip or report.chip_id[len(hwid) :] != bytes(snp.CHIP_ID_SIZE - len(hwid)):
            raise VerificationError("chip_id: the report's CHIP_ID is not the VCEK's hwID")
        checked.append("chip_id = VCEK hwID")

    _check_expectations(report, expect, checked)
    return ReportVerdict(report, endorsement, source, generation, generation is not None, checked)


def _check_tcb_extensions(vcek: Certificate, report: snp.AttestationReport, endorsement: str) -> None:
    try:
        ext = vcek.tcb_extensions()
    except InputError as exc:
        raise VerificationError(f"reported TCB: {exc}") from None
    tcb = report.reported_tcb
    mine = {"boot_loader": tcb.boot_loader, "tee": tcb.tee, "snp": tcb.snp, "microcode": tcb.microcode}
    if tcb.fmc is not None or "fmc" in ext:
        mine["fmc"] = tcb.fmc if tcb.fmc is not None else -1
    if ext != mine:
        theirs = " ".join(f"{k}={v}" for k, v in ext.items())
        raise VerificationError(
            f"reported TCB: the report's REPORTED_TCB ({tcb.describe()}) is not the {endorsement}'s ({theirs})"
        )


def _check_expectations(report: snp.AttestationReport, expect: Expectations, checked: list[str]) -> None:
    pairs: list[tuple[str, bytes | None, bytes]] = [
        ("measurement", expect.measurement, report.measurement),
        ("host_data", expect.host_data, report.host_data),
        ("report_data", expect.report_data, report.report_data),
    ]
    for name, wanted, got in pairs:
        if wanted is None:
            continue
        if not hmac.compare_digest(wanted, got):
            raise VerificationError(f"{name}: the report has {got.hex()}, expected {wanted.hex()}")
        checked.append(name)
    if expect.policy is not None:
        if report.policy != expect.policy:
            raise VerificationError(f"policy: the report has {report.policy:#x}, expected {expect.policy:#x}")
        checked.append("policy")
    if expect.min_tcb is not None:
        tcb = report.reported_tcb
        for name, minimum in expect.min_tcb.items():
            value = getattr(tcb, name)
            if value is None or value < minimum:
                raise VerificationError(
                    f"min-tcb: the report's REPORTED_TCB {name} SVN is {value}, below the minimum {minimum}"
                )
        checked.append("min-tcb")


def parse_min_tcb(text: str) -> dict[str, int]:
    """`bl=3,tee=0,snp=8,ucode=115[,fmc=1]` (names: bl/boot_loader, tee, snp, ucode/microcode, fmc)."""
    names = {"bl": "boot_loader", "boot_loader": "boot_loader", "tee": "tee", "snp": "snp"}
    names |= {"ucode": "microcode", "microcode": "microcode", "fmc": "fmc"}
    out: dict[str, int] = {}
    for part in text.replace(" ", "").split(","):
        key, sep, value = part.partition("=")
        if not sep or key.lower() not in names:
            raise InputError(f"--min-tcb {text!r}: expected bl=N,tee=N,snp=N,ucode=N[,fmc=N]")
        try:
            number = int(value, 0)
        except ValueError:
            raise InputError(f"--min-tcb {text!r}: {value!r} is not a number") from None
        if not 0 <= number <= 255:
            raise InputError(f"--min-tcb {text!r}: an SVN is 0-255")
        out[names[key.lower()]] = number
    return out
