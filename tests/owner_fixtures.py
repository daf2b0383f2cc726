"""Shared helpers for the certificate, launch-crypto and sev-owner tests."""

from __future__ import annotations

import pathlib
import shutil

from cryptography.hazmat.primitives.asymmetric import ec

from sevd.abi.certs import Algo, SevCert, Usage

# A real Rome platform chain (AMD's bytes, public), kept with the tests so they need nothing outside the repo.
REFERENCE = pathlib.Path(__file__).parent / "data"
PLATFORM_ROME = REFERENCE / "platform-rome"
ROOTS = pathlib.Path(__file__).resolve().parent.parent / "sevd" / "abi" / "roots"
PLATFORM_FILES = ("pdh", "pek", "oca", "cek")


def rome_chain_dir(tmp_path: pathlib.Path, with_roots: bool = True) -> pathlib.Path:
    """A directory holding the real Rome platform chain (and, if asked, the Rome ARK/ASK)."""
    out = tmp_path / "chain"
    out.mkdir()
    for name in PLATFORM_FILES:
        shutil.copyfile(PLATFORM_ROME / f"{name}.cert", out / f"{name}.cert")
    if with_roots:
        for name in ("ark", "ask"):
            shutil.copyfile(ROOTS / "rome" / f"{name}.cert", out / f"{name}.cert")
    return out


def make_pdh(api_major: int = 0, api_minor: int = 22) -> tuple[ec.EllipticCurvePrivateKey, SevCert]:
    """A fresh P-384 PDH key and its (unsigned) certificate, standing in for a platform's."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = SevCert.for_ec_key(key.public_key(), Usage.PDH, Algo.ECDH_SHA256, api_major, api_minor)
    return key, cert
