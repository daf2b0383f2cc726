"""SEV and AMD certificate codecs and platform chain verification, against AMD's real certificates."""

from __future__ import annotations

import random
import struct
import zlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from owner_fixtures import PLATFORM_FILES, PLATFORM_ROME, ROOTS

from sevd.abi import certs
from sevd.abi.certs import AmdCert, PlatformChain, SevCert, Usage
from sevd.errors import InputError, SevdError, VerificationError


def raw(name: str) -> bytes:
    return (PLATFORM_ROME / f"{name}.cert").read_bytes()


def root_raw(generation: str, name: str) -> bytes:
    return (ROOTS / generation / f"{name}.cert").read_bytes()


def rome_chain(**override: bytes) -> PlatformChain:
    """The Rome chain; `override` replaces one certificate's bytes (pdh=..., ask=...)."""
    blobs = {n: raw(n) for n in PLATFORM_FILES}
    blobs["ark"] = root_raw("rome", "ark")
    blobs["ask"] = root_raw("rome", "ask")
    blobs.update(override)
    return PlatformChain(
        pdh=SevCert.parse(blobs["pdh"], "pdh"),
        pek=SevCert.parse(blobs["pek"], "pek"),
        oca=SevCert.parse(blobs["oca"], "oca"),
        cek=SevCert.parse(blobs["cek"], "cek"),
        ask=AmdCert.parse(blobs["ask"], "ask"),
        ark=AmdCert.parse(blobs["ark"], "ark"),
    )


# -- codec ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PLATFORM_FILES)
def test_sev_certificate_round_trips_byte_for_byte(name):
    assert SevCert.parse(raw(name), name).to_bytes() == raw(name)


@pytest.mark.parametrize(
    "name, usage", [("pdh", Usage.PDH), ("pek", Usage.PEK), ("oca", Usage.OCA), ("cek", Usage.CEK)]
)
def test_sev_certificate_usage_is_decoded(name, usage):
    assert SevCert.parse(raw(name), name).usage == usage


def test_cek_is_signed_by_ask_with_rsa_sha384():
    cek = SevCert.parse(raw("cek"), "cek")
    assert (cek.sigs[0].usage, cek.sigs[0].algo) == (Usage.ASK, certs.Algo.RSA_SHA384)
    assert cek.sigs[1].is_empty()


@pytest.mark.parametrize("generation", certs.GENERATIONS)
def test_amd_roots_round_trip_and_ark_signs_ask(generation):
    ark, ask = certs.builtin_roots(generation)
    assert ark.to_bytes() == root_raw(generation, "ark")
    assert ask.to_bytes() == root_raw(generation, "ask")
    assert ark.usage == Usage.ARK and ask.usage == Usage.ASK
    assert ark.is_signed_by(ark)
    assert ask.is_signed_by(ark)
    assert ask.certifying_id == ark.key_id


def test_naples_roots_are_2048_bit_832_bytes():
    ark, ask = certs.builtin_roots("naples")
    assert len(ark.to_bytes()) == len(ask.to_bytes()) == 832
    assert ark.modulus_bits == 2048


def test_later_roots_are_4096_bit_1600_bytes():
    ark, _ = certs.builtin_roots("milan")
    assert len(ark.to_bytes()) == 1600 and ark.modulus_bits == 4096


def test_parse_any_tells_the_formats_apart():
    assert isinstance(certs.parse_any(raw("pek")), SevCert)
    assert isinstance(certs.parse_any(root_raw("rome", "ask")), AmdCert)


def test_ask_ark_file_splits_into_ask_then_ark():
    ask, ark = certs.split_ask_ark(root_raw("rome", "ask") + root_raw("rome", "ark"))
    assert ask.usage == Usage.ASK and ark.usage == Usage.ARK


# -- the Rome chain ------------------------------------------------------------------------------------------


def test_rome_chain_verifies_with_rome_roots():
    certs.verify_chain(rome_chain())


@pytest.mark.parametrize("generation", [g for g in certs.GENERATIONS if g != "rome"])
def test_rome_chain_is_rejected_with_another_generations_ask(generation):
    ark, ask = certs.builtin_roots(generation)
    chain = rome_chain(ask=ask.to_bytes(), ark=ark.to_bytes())
    with pytest.raises(VerificationError, match="CEK is not signed by ASK"):
        certs.verify_chain(chain)


def test_rome_cek_identifies_rome_generation():
    assert certs.identify_generation(SevCert.parse(raw("cek"))) == "rome"


def test_pdh_signed_by_someone_else_names_the_link():
    key = ec.generate_private_key(ec.SECP384R1())
    pdh = SevCert.parse(raw("pdh"))
    forged = SevCert(
        pdh.version, pdh.api_major, pdh.api_minor, pdh.usage, pdh.algo, pdh.pubkey,
        (certs.SevSignature.empty(), certs.SevSignature.empty()),
    ).signed_by(key, Usage.PEK, certs.Algo.ECDSA_SHA256)  # fmt: skip
    with pytest.raises(VerificationError, match="PDH is not signed by PEK"):
        certs.verify_chain(rome_chain(pdh=forged.to_bytes()))


def test_chain_with_certificates_in_the_wrong_roles_is_refused():
    with pytest.raises(InputError, match="PEK: holds a OCA key"):
        certs.verify_chain(rome_chain(pek=raw("oca")))


def _flip_positions(size: int, seed: int) -> list[int]:
    """Bit positions to flip: header fields, the key, both signature slots, and ~30 random ones."""
    rng = random.Random(seed)
    fixed = [0, 8 * 4, 8 * 5, 8 * 8, 8 * 12, 8 * 16, 8 * 40, 8 * 60]
    randoms = [rng.randrange(size * 8) for _ in range(30)]
    return sorted({p for p in fixed + randoms if p < size * 8})


def _flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _sev_flip_positions(seed: int) -> list[int]:
    extra = [
        8 * 0x414,  # sig1 usage
        8 * 0x418,  # sig1 algo
        8 * 0x41C,  # sig1 first signature byte
        8 * 0x414 + 8 * (8 + 71),  # high byte of r
        8 * 0x61C,  # sig2 usage
        8 * 0x620,  # sig2 algo
        8 * 0x624 + 3,  # sig2 signature
        8 * 0x823 + 7,  # last bit of the certificate
    ]
    return sorted(set(_flip_positions(certs.SEV_CERT_SIZE, seed) + extra))


@pytest.mark.parametrize("name", PLATFORM_FILES)
def test_any_flipped_bit_in_a_platform_certificate_is_rejected(name):
    original = raw(name)
    for bit in _sev_flip_positions(seed=zlib.crc32(name.encode())):
        with pytest.raises(SevdError):
            certs.verify_chain(rome_chain(**{name: _flipped(original, bit)}))


@pytest.mark.parametrize("name", ["ark", "ask"])
def test_any_flipped_bit_in_a_rome_root_is_rejected(name):
    original = root_raw("rome", name)
    positions = _flip_positions(len(original), seed=7 if name == "ark" else 11)
    positions += [8 * 4, 8 * 20, 8 * 36, 8 * 64, 8 * (len(original) - 1)]  # key id, certifying id, usage, ...
    for bit in sorted(set(positions)):
        with pytest.raises(SevdError):
            certs.verify_chain(rome_chain(**{name: _flipped(original, bit)}))


# -- malformed input ---------------------------------------------------------------------------------------


def test_short_sev_certificate_is_refused_with_its_size():
    with pytest.raises(InputError, match=r"pdh.cert: an SEV certificate is 2084 bytes, got 2000"):
        SevCert.parse(raw("pdh")[:2000], "pdh.cert")


def test_wrong_usage_is_refused():
    bad = bytearray(raw("pdh"))
    struct.pack_into("<I", bad, 8, 0x1234)
    with pytest.raises(InputError, match="pdh.cert: key usage 0x1234"):
        SevCert.parse(bytes(bad), "pdh.cert")


def test_wrong_algorithm_for_usage_is_refused():
    bad = bytearray(raw("pdh"))
    struct.pack_into("<I", bad, 12, certs.Algo.ECDSA_SHA256)  # a PDH must be an ECDH key
    with pytest.raises(InputError, match="algorithm ECDSA_SHA256 is not valid for a PDH key"):
        SevCert.parse(bytes(bad), "pdh.cert")


def test_wrong_curve_id_is_refused():
    bad = bytearray(raw("pek"))
    struct.pack_into("<I", bad, 0x10, 1)
    with pytest.raises(InputError, match="pek.cert: curve id 1 is not supported"):
        SevCert.parse(bytes(bad), "pek.cert")


def test_point_not_on_curve_is_refused():
    bad = bytearray(raw("pek"))
    bad[0x14] ^= 1  # lowest bit of qx
    with pytest.raises(InputError, match="pek.cert: public key point is not on the P-384 curve"):
        SevCert.parse(bytes(bad), "pek.cert")


def test_unused_signature_slot_must_be_zero():
    bad = bytearray(raw("pdh"))
    bad[0x700] = 1
    with pytest.raises(InputError, match="signature 2: signature slot is marked unused"):
        SevCert.parse(bytes(bad), "pdh.cert")


def test_wrong_version_is_refused():
    bad = bytearray(raw("pdh"))
    struct.pack_into("<I", bad, 0, 2)
    with pytest.raises(InputError, match="certificate version 2"):
        SevCert.parse(bytes(bad), "pdh.cert")


def test_truncated_amd_certificate_is_refused():
    with pytest.raises(InputError, match=r"ask.cert: a 4096-bit AMD certificate is 1600 bytes, got 1599"):
        AmdCert.parse(root_raw("rome", "ask")[:1599], "ask.cert")


def test_amd_certificate_shorter_than_header_is_refused():
    with pytest.raises(InputError, match="64-byte header"):
        AmdCert.parse(b"\x01\x00\x00\x00", "ark.cert")


def test_amd_certificate_with_sev_usage_is_refused():
    bad = bytearray(root_raw("rome", "ask"))
    struct.pack_into("<I", bad, 36, Usage.PEK)
    with pytest.raises(InputError, match="ask.cert: key usage PEK is not ARK or ASK"):
        AmdCert.parse(bytes(bad), "ask.cert")


def test_godh_style_certificate_round_trips():
    key = ec.generate_private_key(ec.SECP384R1())
    cert = SevCert.for_ec_key(key.public_key(), Usage.PDH, certs.Algo.ECDH_SHA256)
    again = SevCert.parse(cert.to_bytes(), "godh.cert")
    assert again == cert
    assert again.sigs[0].usage == Usage.NONE and again.sigs[1].usage == Usage.NONE
    assert again.public_key().public_numbers() == key.public_key().public_numbers()


def test_a_chain_built_with_fresh_keys_verifies_like_amds():
    from cryptography.hazmat.primitives.asymmetric import rsa

    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    ark = AmdCert.for_rsa_key(ark_key.public_key(), Usage.ARK, b"A" * 16, b"A" * 16).signed_by(ark_key)
    ask = AmdCert.for_rsa_key(ask_key.public_key(), Usage.ASK, b"S" * 16, b"A" * 16).signed_by(ark_key)
    keys = {u: ec.generate_private_key(ec.SECP384R1()) for u in (Usage.CEK, Usage.OCA, Usage.PEK, Usage.PDH)}

    def cert(usage, algo):
        return SevCert.for_ec_key(keys[usage].public_key(), usage, algo, 0, 22)

    ecdsa = certs.Algo.ECDSA_SHA256
    cek = cert(Usage.CEK, ecdsa).signed_by(ask_key, Usage.ASK, certs.Algo.RSA_SHA256)
    oca = cert(Usage.OCA, ecdsa).signed_by(keys[Usage.OCA], Usage.OCA, ecdsa)
    pek = cert(Usage.PEK, ecdsa).signed_by(keys[Usage.OCA], Usage.OCA, ecdsa)
    pek = pek.signed_by(keys[Usage.CEK], Usage.CEK, ecdsa)
    pdh = cert(Usage.PDH, certs.Algo.ECDH_SHA256).signed_by(keys[Usage.PEK], Usage.PEK, ecdsa)
    reparsed = [SevCert.parse(c.to_bytes()) for c in (pdh, pek, oca, cek)]
    roots = [AmdCert.parse(c.to_bytes()) for c in (ask, ark)]
    certs.verify_chain(PlatformChain(*reparsed, *roots))
    with pytest.raises(VerificationError, match="CEK is not signed by ASK"):
        certs.verify_chain(PlatformChain(*reparsed, *certs.builtin_roots("naples")[::-1]))
