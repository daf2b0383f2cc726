"""The simulated chip's identity: the CEK, and the owner keys OCA, PEK, PDH; and a simulated AMD root (ARK, ASK).

Same formats as a real platform.  As on real firmware, the CEK the chip holds and PDH_CERT_EXPORT gives is not
signed by AMD: the simulated AMD signs it with its simulated ASK and publishes it on the simulated host's key
server (sevd_sim.kds), as AMD's KDS serves a real chip's.  The owner's verifier accepts the full chain only with
the simulated ARK/ASK named explicitly, and rejects it against AMD's real roots.  Private keys live in the
simulated host's psp/ directory (mode 0600): they stand for what real firmware keeps inside the PSP.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from sevd.abi.certs import Algo, AmdCert, SevCert, SevSignature, Usage
from sevd.durable import atomic_write

# Simulated firmware version: API 0.24 as the spec this project follows.
API_MAJOR, API_MINOR = 0, 24
AMD_ROOT_BITS = 4096


def _pss_sign(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """RSA-PSS/SHA-384 as AMD signs, stored byte-reversed (little-endian) as AMD certificates hold it."""
    sig = key.sign(message, padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())
    return sig[::-1]


def _amd_cert(key: rsa.RSAPrivateKey, usage: Usage, key_id: bytes, signer: rsa.RSAPrivateKey, signer_id: bytes):
    nums = key.public_key().public_numbers()
    nbytes = AMD_ROOT_BITS // 8
    unsigned = AmdCert(
        version=1,
        key_id=key_id,
        certifying_id=signer_id,
        usage=usage,
        pubexp_bits=AMD_ROOT_BITS,
        modulus_bits=AMD_ROOT_BITS,
        pubexp=nums.e.to_bytes(nbytes, "little"),
        modulus=nums.n.to_bytes(nbytes, "little"),
        signature=b"",
    )
    return dataclasses.replace(unsigned, signature=_pss_sign(signer, unsigned.signed_bytes()))


@functools.lru_cache(maxsize=1)
def simulated_amd_root() -> tuple[bytes, bytes, rsa.RSAPrivateKey]:
    """(ark.cert, ask.cert, ASK private key) of a simulated AMD root.

    Every real chip of a generation shares AMD's ARK/ASK, so simulated hosts made by one process
    share one simulated root too; that also keeps RSA-4096 key generation to once per process.
    """
    ark_key = rsa.generate_private_key(65537, AMD_ROOT_BITS)
    ask_key = rsa.generate_private_key(65537, AMD_ROOT_BITS)
    ark_id, ask_id = os.urandom(16), os.urandom(16)
    ark = _amd_cert(ark_key, Usage.ARK, ark_id, ark_key, ark_id)
    ask = _amd_cert(ask_key, Usage.ASK, ask_id, ark_key, ark_id)
    # The key object, not PEM: loading an RSA-4096 PEM re-checks the key (~0.3 s per chip).
    return ark.to_bytes(), ask.to_bytes(), ask_key


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _new_ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _unsigned(key: ec.EllipticCurvePrivateKey, usage: Usage, algo: Algo) -> SevCert:
    return SevCert.for_ec_key(key.public_key(), usage, algo, API_MAJOR, API_MINOR)


class Identity:
    """Reads and (re)generates the key files in a host's psp/identity directory."""

    def __init__(self, directory: Path):
        self.dir = directory

    def path(self, name: str) -> Path:
        return self.dir / name

    def cert(self, name: str) -> bytes:
        return self.path(f"{name}.cert").read_bytes()

    def key(self, name: str) -> ec.EllipticCurvePrivateKey:
        return load_ec_key(self.path(f"{name}.key"))

    def _save(self, name: str, cert: SevCert | bytes, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        if key is not None:
            atomic_write(self.path(f"{name}.key"), _pem(key))
        atomic_write(self.path(f"{name}.cert"), cert if isinstance(cert, bytes) else cert.to_bytes(), 0o644)

    def create(self) -> None:
        """A new chip: a CEK with both signature slots empty (AMD's signature lives on the key server, as on
        real firmware), then a self-owned OCA/PEK/PDH."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cek_key = _new_ec()
        self._save("cek", _unsigned(cek_key, Usage.CEK, Algo.ECDSA_SHA256), cek_key)
        self.pek_gen()

    def pek_gen(self) -> None:
        """PEK_GEN: a new self-signed OCA, a PEK signed by OCA and CEK, and a new PDH."""
        oca_key, pek_key = _new_ec(), _new_ec()
        oca = _unsigned(oca_key, Usage.OCA, Algo.ECDSA_SHA256).signed_by(oca_key, Usage.OCA, Algo.ECDSA_SHA256)
        pek = _unsigned(pek_key, Usage.PEK, Algo.ECDSA_SHA256)
        pek = pek.signed_by(oca_key, Usage.OCA, Algo.ECDSA_SHA256).signed_by(
            self.key("cek"), Usage.CEK, Algo.ECDSA_SHA256
        )
        self._save("oca", oca, oca_key)
        self._save("pek", pek, pek_key)
        self.pdh_gen()

    def pdh_gen(self) -> None:
        pdh_key = _new_ec()
        pdh = _unsigned(pdh_key, Usage.PDH, Algo.ECDH_SHA256).signed_by(self.key("pek"), Usage.PEK, Algo.ECDSA_SHA256)
        self._save("pdh", pdh, pdh_key)

    def pek_csr(self) -> bytes:
        """The PEK certificate body, unsigned, for the owner's OCA to sign."""
        pek = SevCert.parse(self.cert("pek"), "PEK")
        return dataclasses.replace(pek, sigs=(SevSignature.empty(), SevSignature.empty())).to_bytes()

    def import_owner(self, pek_signed_by_oca: SevCert, oca: SevCert) -> None:
        """PEK_CERT_IMPORT's effect: the owner's OCA replaces ours, the CEK signature is kept, a new PDH."""
        cek_sig = next(s for s in SevCert.parse(self.cert("pek"), "PEK").sigs if s.usage == Usage.CEK)
        oca_sig = next(s for s in pek_signed_by_oca.sigs if s.usage == Usage.OCA)
        pek = dataclasses.replace(pek_signed_by_oca, sigs=(oca_sig, cek_sig))
        self._save("oca", oca)
        self.path("oca.key").unlink(missing_ok=True)  # the owner holds it now
        self._save("pek", pek)
        self.pdh_gen()
