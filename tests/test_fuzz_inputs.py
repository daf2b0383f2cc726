"""Fuzzing what crosses a trust boundary: xenstore launch requests and secret packets (from the
toolstack), certificates, GODH certs, launch blobs and secret headers (from the other side).
Each is either accepted as a valid value or refused with InputError naming what was wrong —
never another exception."""

import base64
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevd.abi.certs import AmdCert, SevCert, parse_any
from sevd.abi.launch import LaunchMeasurement, LaunchSession, SecretHeader
from sevd.errors import InputError
from sevd.xen import protocol as proto

FIELDS = ["policy", "es", "godh", "session", "attest", "image-gpa", "image-size", "image-more", "generation", "bogus"]
text = st.text(alphabet=string.printable, max_size=40)
b64 = st.binary(max_size=3000).map(lambda b: base64.b64encode(b).decode())
numbers = st.one_of(st.integers(-5, 2**70).map(str), st.integers(0, 2**70).map(hex))
pieces = st.lists(st.tuples(st.integers(0, 2**34), st.integers(0, 2**31)), min_size=0, max_size=17).map(
    lambda ps: ",".join(f"{g:#x}+{n:#x}" for g, n in ps)
)
values = st.one_of(text, b64, numbers, pieces, st.sampled_from(["0", "1", "0x0", "0x40", "0x4", ""]))
requests = st.dictionaries(st.sampled_from(FIELDS), values, max_size=len(FIELDS))

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(requests, st.integers(0, 2**16))
def test_launch_request_is_valid_or_refused_with_a_named_node(nodes, domid):
    try:
        req = proto.LaunchRequest.parse(domid, nodes)
    except InputError as exc:
        assert str(exc).startswith("request"), exc
        return
    assert req.generation >= 1 and req.image_size >= 1 and req.image_gpa % 4096 == 0
    assert int(req.policy) & 0xFFC0 == 0
    assert (req.godh is None) == (req.session is None)
    spans = sorted(req.image_ranges)
    assert all(gpa % 4096 == 0 and size >= 1 for gpa, size in spans) and sum(n for _, n in spans) <= proto.MAX_IMAGE
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:], strict=False))
    # What the toolstack would write for it parses back to the same request.
    assert proto.LaunchRequest.parse_text(domid, req.format()) == req


@FUZZ
@given(st.one_of(text, requests.map(proto.format_pairs), st.lists(text).map(" ".join)), st.integers(0, 2**16))
def test_request_node_text_is_valid_or_refused_with_a_reason(node, domid):
    try:
        req = proto.LaunchRequest.parse_text(domid, node)
    except InputError as exc:
        assert str(exc).startswith("request"), exc
        return
    assert proto.LaunchRequest.parse_text(domid, req.format()) == req


summary_keys = st.sampled_from(["ack", "state", "step", "handle", "asid", "api", "build", "policy", "measurement"])
summary_values = st.one_of(values, st.sampled_from(["running", "MEASURE", "0.24", "A" * 64, "0x00000001"]))


@FUZZ
@given(
    st.one_of(
        text,
        st.dictionaries(summary_keys, summary_values).map(proto.format_pairs),
        st.tuples(st.dictionaries(summary_keys, summary_values), text).map(
            lambda t: proto.format_pairs({**t[0], "error": t[1]})
        ),
    )
)
def test_summary_node_text_is_valid_or_refused_with_a_reason(node):
    try:
        summary = proto.GuestSummary.parse(node)
    except InputError as exc:
        assert str(exc).startswith("summary"), exc
        return
    assert proto.GuestSummary.parse(summary.format()) == summary


@FUZZ
@given(st.dictionaries(st.sampled_from(["header", "data", "gpa", "x"]), values, max_size=4))
def test_secret_packet_is_valid_or_refused(nodes):
    try:
        packet = proto.SecretPacket.parse(nodes)
    except InputError as exc:
        assert str(exc).startswith("secret/"), exc
        return
    assert len(packet.header) == 0x34 and len(packet.data) % 16 == 0 and packet.gpa % 16 == 0


@FUZZ
@given(text)
def test_command_is_known_or_refused(value):
    try:
        proto.parse_command(value)
    except InputError as exc:
        assert "is not one of" in str(exc)


def mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, val in flips:
        out[pos % len(out)] = val
    return bytes(out)


PDH = (Path(__file__).parent / "data" / "platform-rome" / "pdh.cert").read_bytes()
flipped_pdh = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8).map(lambda f: mutate(PDH, f))


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=4000),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8).map(lambda f: mutate(PDH, f)),
    )
)
def test_certificates_parse_or_are_refused(data):
    for parse in (SevCert.parse, AmdCert.parse, parse_any):
        try:
            parse(data, "fuzzed.cert")
        except InputError as exc:
            assert "fuzzed.cert" in str(exc)


@FUZZ
@given(st.binary(max_size=200))
def test_blobs_parse_or_are_refused(data):
    for parse in (LaunchSession.parse, SecretHeader.parse, LaunchMeasurement.parse):
        try:
            parsed = parse(data)
        except InputError:
            continue
        assert parsed.to_bytes() == data


def test_image_pieces_parse_and_bad_ones_are_named():
    base = {"policy": "0x1", "image-gpa": "0x1000000", "image-size": "0x5000", "generation": "1"}
    req = proto.LaunchRequest.parse(3, {**base, "image-more": "0x1006000+0x3000,0x2000000+16"})
    assert req.image_ranges == ((0x1000000, 0x5000), (0x1006000, 0x3000), (0x2000000, 16))
    assert req.to_fields()["image-more"] == "0x1006000+0x3000,0x2000000+0x10"
    assert proto.LaunchRequest.parse_text(3, req.format()) == req
    for more, reason in [
        ("0x1004000+0x1000", "the piece at 0x1004000 overlaps the one at 0x1000000"),
        ("0x1006001+0x1000", "0x1006001 is not page aligned"),
        ("0x1006000", "'0x1006000' is not GPA+SIZE"),
        ("0x1006000+0", "0 is outside 1.."),
        ("0x1006000+0x1000,,0x2000000+1", "'' is not GPA+SIZE"),
        (",".join(f"{0x2000000 + i * 0x1000:#x}+1" for i in range(16)), "give 1..15 GPA+SIZE pieces"),
        ("0x2000000+0x40000000", "add up to more than 1073741824 bytes"),
    ]:
        try:
            proto.LaunchRequest.parse(3, {**base, "image-more": more})
        except InputError as exc:
            assert str(exc).startswith("request image-more: ") and reason in str(exc), (more, exc)
        else:
            raise AssertionError(f"{more!r} was accepted")
