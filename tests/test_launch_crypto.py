"""Launch cryptography (sevd.abi.launch) and the owner-side session, measurement and secret packaging."""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from owner_fixtures import make_pdh

from sevd.abi import launch
from sevd.abi.launch import LaunchMeasurement, LaunchSession, SecretHeader, TransportKeys, WrappingKeys
from sevd.errors import InputError, VerificationError
from sevd.owner import measurement as owner_measurement
from sevd.owner import secret as owner_secret
from sevd.owner.session import make_session

ZERO16 = bytes(16)


# -- KDF and session blob: known answers ---------------------------------------------------------------------


def test_kdf_known_answer():
    assert launch.kdf(ZERO16, b"sev-master-secret", ZERO16, 128).hex() == "ab4d269fcc62bedb4511d56c386ce706"


def test_kdf_longer_output_starts_with_the_first_block():
    long = launch.kdf(ZERO16, b"sev-kek", b"", 512)
    assert len(long) == 64
    first = hmac.new(ZERO16, struct.pack("<I", 1) + b"sev-kek\x00" + struct.pack("<I", 512), "sha256").digest()
    assert long[:32] == first


def test_session_blob_known_answer_all_zero_inputs():
    # virtee/sev's published vector: Z = 16 zero bytes, zero nonce/IV, zero TEK/TIK, policy 0.
    wrapping = launch.derive_kek_kik(ZERO16, ZERO16)
    blob = launch.wrap_transport_keys(TransportKeys(ZERO16, ZERO16), wrapping, 0, ZERO16, iv=ZERO16)
    assert blob.wrap_tk.hex() == "2137bc7f9bb8bd7c3e55a576a15d3454b3856b8ba27afadf46dcfee9f02c02c4"
    assert blob.wrap_mac.hex() == "3176c0752738bd9d5e86689534020f528c088f16238826b000b327dee6aeed7d"
    assert blob.policy_mac.hex() == "aa7855e13839dd767cd5da7c1ff5036540c9264b7a803029315e55375287b4af"


def test_launch_session_blob_layout_is_nonce_wraptk_iv_wrapmac_policymac():
    blob = LaunchSession(b"N" * 16, b"T" * 32, b"I" * 16, b"W" * 32, b"P" * 32)
    data = blob.to_bytes()
    assert len(data) == 0x80
    assert data == b"N" * 16 + b"T" * 32 + b"I" * 16 + b"W" * 32 + b"P" * 32
    assert LaunchSession.parse(data) == blob


def test_truncated_launch_blob_is_refused():
    with pytest.raises(InputError, match=r"launch_blob.bin: a launch session blob is 128 bytes, got 127"):
        LaunchSession.parse(bytes(127), "launch_blob.bin")


def test_unwrap_with_wrong_kik_fails_on_wrap_mac():
    keys = TransportKeys.generate()
    wrapping = launch.derive_kek_kik(b"z" * 48, ZERO16)
    blob = launch.wrap_transport_keys(keys, wrapping, 1, ZERO16)
    other = WrappingKeys(wrapping.kek, bytes(16))
    with pytest.raises(VerificationError, match="wrap_mac"):
        launch.unwrap_transport_keys(blob, other, 1)


def test_unwrap_with_other_policy_fails_on_policy_mac():
    keys = TransportKeys.generate()
    wrapping = launch.derive_kek_kik(b"z" * 48, ZERO16)
    blob = launch.wrap_transport_keys(keys, wrapping, 1, ZERO16)
    with pytest.raises(VerificationError, match="policy_mac does not match policy 0x00000003"):
        launch.unwrap_transport_keys(blob, wrapping, 3)


def test_transport_keys_repr_hides_the_keys():
    keys = TransportKeys(b"\x11" * 16, b"\x22" * 16)
    assert "11" not in repr(keys) and "hidden" in repr(keys)


# -- owner session round trip ----------------------------------------------------------------------------------


def test_owner_session_unwraps_on_the_platform_side_to_the_same_keys():
    pdh_key, pdh_cert = make_pdh()
    session = make_session(pdh_cert, policy=0x1)
    # The platform: ECDH with its PDH private key and the owner's GODH public key.
    godh_public = session.godh.public_key()
    z = launch.shared_secret(pdh_key, godh_public)
    wrapping = launch.derive_kek_kik(z, session.blob.nonce)
    keys = launch.unwrap_transport_keys(session.blob, wrapping, 0x1)
    assert keys.to_bytes() == session.keys.to_bytes()
    assert launch.open_session(session.blob, pdh_key, godh_public, 0x1).to_bytes() == session.keys.to_bytes()


def test_owner_session_for_a_different_pdh_does_not_unwrap():
    _, pdh_cert = make_pdh()
    other_key, _ = make_pdh()
    session = make_session(pdh_cert, policy=0)
    with pytest.raises(VerificationError, match="wrap_mac"):
        launch.open_session(session.blob, other_key, session.godh.public_key(), 0)


def test_godh_certificate_is_an_unsigned_p384_ecdh_pdh_key():
    _, pdh_cert = make_pdh()
    godh = make_session(pdh_cert, policy=0).godh
    assert (godh.version, godh.usage, godh.algo) == (1, 0x1003, 0x3)
    assert (godh.api_major, godh.api_minor) == (0, 0)
    assert [s.usage for s in godh.sigs] == [0x1000, 0x1000]
    assert struct.unpack_from("<I", godh.to_bytes(), 0x10)[0] == 2  # curve P-384


# -- measurement -------------------------------------------------------------------------------------------------


TIK = bytes(range(16))
MNONCE = bytes(range(100, 116))
IMAGE = b"tiny boot image!" * 4


def test_measurement_known_answer_from_virtee():
    tik = bytes.fromhex("66320db73158a35a255d051758e95ed4")
    digest = hashlib.sha256(b"").digest()
    mnonce = bytes.fromhex("4fbe0bedbad6c86ae8f68971d103e554")
    got = launch.measurement(tik, 0x00, 0x12, 0x0F, 0, digest, mnonce)
    assert got.hex() == "6faab2daae389bcd3405a05d6cafe33c0414f7bedd0bae19ba5f38b7fd1664ea"


def test_measurement_of_a_tiny_image_equals_a_hand_computed_hmac():
    message = bytes([0x04, 0, 22, 3]) + (0x5).to_bytes(4, "little") + hashlib.sha256(IMAGE).digest() + MNONCE
    by_hand = hmac.new(TIK, message, "sha256").digest()
    got = owner_measurement.expected_measurement(IMAGE, 0x5, 0, 22, 3, TIK, MNONCE)
    assert got.measure == by_hand and got.mnonce == MNONCE


def test_measurement_includes_vmsa_pages_after_the_image():
    vmsa = b"\x01" * 4096
    got = owner_measurement.expected_measurement(IMAGE, 0x5, 0, 22, 3, TIK, MNONCE, [vmsa])
    digest = hashlib.sha256(IMAGE + vmsa).digest()
    assert got.measure == launch.measurement(TIK, 0, 22, 3, 0x5, digest, MNONCE)


@pytest.mark.parametrize(
    "change",
    ["image", "policy", "build", "api_minor"],
)
def test_measurement_changes_with_any_input(change):
    args = dict(image=IMAGE, policy=0x5, api_major=0, api_minor=22, build=3)
    reported = owner_measurement.expected_measurement(**args, tik=TIK, mnonce=MNONCE)
    if change == "image":
        args["image"] = b"T" + IMAGE[1:]
    else:
        args[change] += 1
    with pytest.raises(VerificationError, match="measurement does not match"):
        owner_measurement.verify_measurement(reported, **args, tik=TIK)


def test_measurement_blob_is_measure_then_mnonce_in_0x30_bytes():
    m = LaunchMeasurement(b"M" * 32, b"N" * 16)
    assert m.to_bytes() == b"M" * 32 + b"N" * 16
    assert LaunchMeasurement.from_base64(m.to_base64()) == m


def test_measurement_of_wrong_size_is_refused():
    with pytest.raises(InputError, match="a launch measurement is 48 bytes, got 32"):
        LaunchMeasurement.parse(bytes(32))


# -- secrets -----------------------------------------------------------------------------------------------------


KEYS = TransportKeys(bytes(range(16)), bytes(range(16, 32)))
MEASURED = LaunchMeasurement(b"\xaa" * 32, b"\xbb" * 16)


def test_secret_header_mac_recomputes_from_the_formula():
    secret = b"S" * 32
    packaged = owner_secret.package_secret(KEYS, secret, MEASURED, flags=0)
    header = packaged.header
    enc = Cipher(algorithms.AES(KEYS.tek), modes.CTR(header.iv)).encryptor()
    assert packaged.ciphertext == enc.update(secret) + enc.finalize()
    message = b"\x01" + struct.pack("<I", 0) + header.iv + struct.pack("<II", 32, 32) + packaged.ciphertext
    assert header.mac == hmac.new(KEYS.tik, message + MEASURED.measure, "sha256").digest()


def test_secret_header_layout_is_flags_iv_mac_in_0x34_bytes():
    h = SecretHeader(7, b"I" * 16, b"M" * 32)
    assert h.to_bytes() == b"\x07\x00\x00\x00" + b"I" * 16 + b"M" * 32
    assert SecretHeader.parse(h.to_bytes()) == h


def test_wrong_size_secret_header_is_refused():
    with pytest.raises(InputError, match=r"hdr.bin: a secret packet header is 52 bytes, got 51"):
        SecretHeader.parse(bytes(51), "hdr.bin")


def test_packaged_secret_opens_with_the_right_keys_and_measurement():
    packaged = owner_secret.package_secret(KEYS, b"x" * 48, MEASURED)
    assert owner_secret.check_packaged_secret(KEYS, packaged, MEASURED) == b"x" * 48


@pytest.mark.parametrize("part", ["ciphertext", "iv", "flags", "mac", "measurement"])
def test_tampered_secret_packet_is_detected(part):
    packaged = owner_secret.package_secret(KEYS, b"x" * 48, MEASURED)
    header, ct, measured = packaged.header, packaged.ciphertext, MEASURED
    if part == "ciphertext":
        ct = bytes([ct[0] ^ 1]) + ct[1:]
    elif part == "iv":
        header = SecretHeader(header.flags, bytes(16), header.mac)
    elif part == "flags":
        header = SecretHeader(1, header.iv, header.mac)
    elif part == "mac":
        header = SecretHeader(header.flags, header.iv, bytes(32))
    else:
        measured = LaunchMeasurement(b"\xab" * 32, MEASURED.mnonce)
    with pytest.raises(VerificationError, match="header MAC does not verify"):
        owner_secret.check_packaged_secret(KEYS, owner_secret.PackagedSecret(header, ct), measured)


@pytest.mark.parametrize("length", [0, 15, 0x5010])
def test_secret_length_must_be_a_multiple_of_16_up_to_0x5000(length):
    with pytest.raises(InputError, match="multiple of 16"):
        owner_secret.package_secret(KEYS, b"s" * length, MEASURED)


GUID_A = uuid.UUID("736869e5-84f0-4973-92ec-06879ce3da0b")
GUID_B = uuid.UUID("e6f5a162-d67f-4750-a67c-5d065f2a9910")


def test_ovmf_secret_table_layout():
    table = owner_secret.ovmf_secret_table([(GUID_A, b"disk-password\x00"), (GUID_B, b"{}")])
    assert table[:16] == uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b").bytes_le
    assert table[:4] == bytes.fromhex("42f5741e")  # EFI GUID order: first field little-endian
    assert struct.unpack_from("<I", table, 16)[0] == len(table)
    assert table[20:36] == GUID_A.bytes_le
    assert struct.unpack_from("<I", table, 36)[0] == 20 + 14
    assert table[40:54] == b"disk-password\x00"
    assert table[54:70] == GUID_B.bytes_le
    assert struct.unpack_from("<I", table, 70)[0] == 20 + 2
    assert table[74:76] == b"{}"
    assert len(table) == 80 and table[76:] == bytes(4)  # 76 bytes padded to 80


def test_ovmf_secret_table_parses_back():
    entries = [(GUID_A, b"one"), (GUID_B, b"two two")]
    assert owner_secret.parse_ovmf_secret_table(owner_secret.ovmf_secret_table(entries)) == entries


# -- independent known answers: ECDH byte order and the secret header's MAC --------------------------------------

# FIPS 186-4 D.1.2.4: the base point G of P-384.
P384_GX = bytes.fromhex(
    "aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7"
)
P384_GY = bytes.fromhex(
    "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f"
)


def _sev_cert_bytes_with_point(qx: bytes, qy: bytes) -> bytes:
    """An SEV certificate laid out by hand as AMD's SEV API appendix C does: version 1, API, usage PDH
    (0x1003), algorithm ECDH-SHA256 (0x3), then the key field: curve id 2 (P-384), QX and QY each
    little-endian in 72 bytes, and no signatures."""
    head = struct.pack("<IBBxxII", 1, 0, 24, 0x1003, 0x3)
    key = struct.pack("<I", 2) + qx[::-1].ljust(72, b"\0") + qy[::-1].ljust(72, b"\0")
    signatures = (struct.pack("<II", 0x1000, 0) + bytes(0x200)) * 2  # two unused slots: usage 0x1000, algorithm 0
    return (head + key.ljust(0x404, b"\0") + signatures).ljust(0x824, b"\0")


def test_sev_certificate_coordinates_are_little_endian():
    from cryptography.hazmat.primitives.asymmetric import ec

    from sevd.abi.certs import SevCert

    point = SevCert.parse(_sev_cert_bytes_with_point(P384_GX, P384_GY)).public_key().public_numbers()
    assert (point.x, point.y) == (int.from_bytes(P384_GX, "big"), int.from_bytes(P384_GY, "big"))
    generator = ec.derive_private_key(1, ec.SECP384R1()).public_key()
    encoded = SevCert.for_ec_key(generator, 0x1003, 0x3).to_bytes()
    assert encoded[0x14 : 0x14 + 48] == P384_GX[::-1]
    assert encoded[0x5C : 0x5C + 48] == P384_GY[::-1]


def test_ecdh_secret_is_the_big_endian_x_coordinate_and_feeds_the_kdf_as_is():
    """With the owner's private key 1 the shared point is the PDH's own: Z = x(G), big-endian (the
    order OpenSSL returns and AMD's firmware uses).  KEK and KIK follow from Z by SP 800-108 over
    HMAC-SHA256, computed here with the standard library alone."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from sevd.abi.certs import SevCert

    pdh = SevCert.parse(_sev_cert_bytes_with_point(P384_GX, P384_GY)).public_key()
    z = launch.shared_secret(ec.derive_private_key(1, ec.SECP384R1()), pdh)
    assert z == P384_GX

    def sp800_108(key: bytes, label: bytes, context: bytes) -> bytes:
        return hmac.new(key, struct.pack("<I", 1) + label + b"\0" + context + struct.pack("<I", 128), "sha256").digest()

    nonce = bytes(range(16))
    master = sp800_108(P384_GX, b"sev-master-secret", nonce)[:16]
    keys = launch.derive_kek_kik(z, nonce)
    assert keys.kek == sp800_108(master, b"sev-kek", b"")[:16]
    assert keys.kik == sp800_108(master, b"sev-kik", b"")[:16]


def test_secret_header_mac_known_answer():
    """TEK = 00..0f, TIK = 10..1f, flags 0, IV = 20..2f, a secret of 16 bytes 0x41, a measurement of 32
    bytes 0xaa.  The ciphertext is AES-128-CTR and the MAC HMAC-SHA256(TIK, 0x01 || flags(LE32) || IV ||
    guest_len(LE32) || trans_len(LE32) || ciphertext || measurement): both values below were computed
    once from those byte strings with Python's hmac module and a plain AES-CTR, not by sevd."""
    keys = TransportKeys(bytes(range(16)), bytes(range(16, 32)))
    header, ciphertext = launch.seal_secret(keys, b"A" * 16, b"\xaa" * 32, flags=0, iv=bytes(range(32, 48)))
    assert ciphertext.hex() == "1aa93f6f1a053dd50a6088ee36178199"
    assert header.mac.hex() == "bca7e082e2608245e1bdf80a79b3ddec5cf147a6f75763f1d893fbed2fa4d640"
