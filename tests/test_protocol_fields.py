"""The field specifications of sevd/xen/protocol.py: what the generated parse and format do, per message and key.

Expected wire text comes from docs/xenstore-protocol.md (read here where it is given in full), never from the
codecs under test.  Each key's refusal is its own case: the message names the node and the key."""

import base64
import re
from pathlib import Path

import pytest

from sevd.abi.commands import PlatformState
from sevd.abi.policy import Policy
from sevd.errors import InputError
from sevd.xen import protocol as proto

DOC = (Path(__file__).parent.parent / "docs" / "xenstore-protocol.md").read_text()


def doc_block(heading: str) -> list[str]:
    """The lines of the first fenced block after `heading` in the protocol document."""
    section = DOC[DOC.index(heading) :]
    match = re.search(r"```\n(.*?)```", section, re.S)
    assert match, heading
    return match.group(1).splitlines()


# -- the documented examples ------------------------------------------------------------------------------------


def test_documented_summaries_parse_and_format_back_unchanged():
    lines = [line for line in doc_block("### `summary`") if "…" not in line]  # elided ones cannot be whole nodes
    assert lines, "the document gives no whole summary line"
    for line in lines:
        assert proto.GuestSummary.parse(line).format() == line


def test_documented_elided_summary_round_trips_with_a_real_measurement():
    measurement = base64.b64encode(bytes(range(48))).decode()
    for line in (line for line in doc_block("### `summary`") if "…" in line):
        line = re.sub(r"measurement=\S+", f"measurement={measurement}", line)
        assert proto.GuestSummary.parse(line).format() == line


def test_documented_request_prefix_is_what_the_toolstack_writes():
    documented = doc_block("### `request`")[0]
    before_owner = documented.split(" godh=")[0]
    request = proto.LaunchRequest(1, 1, Policy(1), False, True, 0xFFE00000, 2097152)
    assert request.format() == before_owner
    with_owner = proto.LaunchRequest(1, 1, Policy(1), False, True, 0xFFE00000, 2097152, b"g" * 0x824, b"s" * 0x80)
    assert with_owner.format().startswith(before_owner + " godh=")
    assert " session=" in with_owner.format().split(" godh=")[1]


def test_the_documented_refusal_is_the_request_codecs_message():
    documented = doc_block("### `summary`")[2]
    reason = documented.split("error=INVALID_REQUEST: ")[1]
    with pytest.raises(InputError) as info:
        proto.LaunchRequest.parse_text(1, "v=1 generation=1 policy=0x00000040 image-gpa=0 image-size=4096")
    assert str(info.value) == reason


def test_platform_nodes_as_documented():
    nodes = proto.PlatformNodes("0.24", 15, PlatformState.WORKING, False, True, 2).to_nodes()
    # docs: `0.24`, decimal, `INIT`/`WORKING`/`UNINIT`, `0`/`1`, `0`/`1`, decimal
    assert nodes == {"api": "0.24", "build": "15", "state": "WORKING", "owner": "0", "es": "1", "guests": "2"}
    assert proto.PlatformNodes.parse(nodes) == proto.PlatformNodes("0.24", 15, PlatformState.WORKING, False, True, 2)
    assert set(nodes) == set(re.search(r"/sevd/platform/\{([a-z,]+)\}", DOC).group(1).split(","))


def test_secret_nodes_as_documented():
    packet = proto.SecretPacket(bytes(0x34), bytes(32), 0x7000)
    # docs: base64 0x34 bytes, base64 ≤ 0x5000 bytes (multiple of 16), 16-aligned hex GPA
    assert packet.to_nodes() == {"header": "A" * 70 + "==", "data": "A" * 43 + "=", "gpa": "0x7000"}
    assert proto.SecretPacket.parse(packet.to_nodes()) == packet


# -- refusals, one per key ----------------------------------------------------------------------------------------

REQUEST_BASE = {"generation": "1", "policy": "0x1", "image-gpa": "0x100000", "image-size": "4096"}


@pytest.mark.parametrize(
    "key,text,message",
    [
        ("generation", "0", "request generation: 0 is outside 1..9223372036854775808"),
        ("generation", "one", "request generation: 'one' is not a decimal or 0x-hex integer"),
        ("name", "a\u00e9", "request name: 'a\u00e9' is not 1-64 printable ASCII characters without spaces"),
        ("name", "x" * 65, "request name: "),
        ("policy", "0x40", "request policy: policy 0x00000040 sets reserved bits 0x0040"),
        ("policy", "0x100000000", "request policy: 4294967296 is outside 0..4294967295"),
        ("es", "2", "request es: must be 0 or 1, got '2'"),
        ("es", "1", "request es: must equal the policy's ES bit"),
        ("attest", "yes", "request attest: must be 0 or 1, got 'yes'"),
        ("image-gpa", "0x1001", "request image-gpa: must be page aligned"),
        ("image-gpa", "-1", "request image-gpa: '-1' is not a decimal or 0x-hex integer"),
        ("image-size", "0", "request image-size: 0 is outside 1..1073741824"),
        ("image-size", "0x40000001", "request image-size: 1073741825 is outside 1..1073741824"),
        ("image-more", "0x200000", "request image-more: '0x200000' is not GPA+SIZE"),
        ("image-more", "0x200001+0x1000", "request image-more: 0x200001 is not page aligned"),
        ("image-more", "0x100000+0x1000", "request image-more: the piece at 0x100000 overlaps the one at 0x100000"),
        ("image-more", ",".join(["0x200000+1"] * 16), "request image-more: give 1..15 GPA+SIZE pieces"),
        ("godh", "AAAA", "request godh: must decode to 2084 bytes, got 3"),
        ("godh", "!!!!", "request godh: not valid base64"),
        ("session", "AAAA", "request session: must decode to 128 bytes, got 3"),
    ],
)
def test_request_key_is_refused_naming_it(key, text, message):
    fields = {**REQUEST_BASE, key: text}
    if key == "session":
        fields["godh"] = base64.b64encode(bytes(0x824)).decode()
    with pytest.raises(InputError) as info:
        proto.LaunchRequest.parse(1, fields)
    assert str(info.value).startswith(message), info.value


@pytest.mark.parametrize("key", ["generation", "policy", "image-gpa", "image-size"])
def test_required_request_key_is_missing(key):
    fields = {k: v for k, v in REQUEST_BASE.items() if k != key}
    with pytest.raises(InputError, match=f"^request {key}: missing$"):
        proto.LaunchRequest.parse(1, fields)


@pytest.mark.parametrize("given,missing", [("godh", "session"), ("session", "godh")])
def test_owner_session_needs_both_nodes(given, missing):
    blobs = {"godh": bytes(0x824), "session": bytes(0x80)}
    fields = {**REQUEST_BASE, given: base64.b64encode(blobs[given]).decode()}
    with pytest.raises(InputError, match=f"^request {missing}: missing"):
        proto.LaunchRequest.parse(1, fields)


def test_request_defaults_and_optional_keys_are_left_out():
    request = proto.LaunchRequest.parse(4, REQUEST_BASE)
    defaults = (request.es, request.attest, request.name, request.godh, request.image_more)
    assert defaults == (False, False, None, None, ())
    assert request.format() == "v=1 generation=1 policy=0x00000001 es=0 attest=0 image-gpa=0x100000 image-size=4096"


@pytest.mark.parametrize(
    "key,text,message",
    [
        ("ack", "0", "summary ack: 0 is outside 1.."),
        ("name", "\u00e9", "summary name: "),
        ("state", "sleeping", "summary state: 'sleeping' is not one of queued, launching, measured, running,"),
        ("step", "BOOT", "summary step: 'BOOT' is not one of MAKE_SEV, LAUNCH_START,"),
        ("handle", "0x100000000", "summary handle: 4294967296 is outside 0..4294967295"),
        ("asid", "five", "summary asid: 'five' is not a decimal or 0x-hex integer"),
        ("api", "0_24", "summary api: '0_24' is not MAJOR.MINOR"),
        ("build", "256", "summary build: 256 is outside 0..255"),
        ("policy", "0x8000", "summary policy: policy 0x00008000 sets reserved bits"),
        ("measurement", "AAAA", "summary measurement: must decode to 48 bytes, got 3"),
    ],
)
def test_summary_key_is_refused_naming_it(key, text, message):
    with pytest.raises(InputError) as info:
        proto.GuestSummary.parse(f"v=1 {key}={text}")
    assert str(info.value).startswith(message), info.value


def test_summary_error_runs_to_the_end_and_an_empty_one_is_not_written():
    summary = proto.GuestSummary.parse("v=1 state=error error=XEN_ERROR: a b  c=d")
    assert summary.error == "XEN_ERROR: a b  c=d" and summary.to_fields() == {"state": "error", "error": summary.error}
    with pytest.raises(ValueError, match="summary error: empty"):
        proto.GuestSummary(state=proto.GuestState.ERROR, error="").format()


@pytest.mark.parametrize(
    "key,text,message",
    [
        ("header", "AAAA", "secret/header: must decode to 52 bytes, got 3"),
        ("data", "A" * 24, "secret/data: length 18 is not a multiple of 16"),
        ("data", base64.b64encode(bytes(0x5010)).decode(), "secret/data: must decode to 1..20480 bytes, got 20496"),
        ("gpa", "0x1008", "secret/gpa: must be 16-byte aligned"),
        ("gpa", "far", "secret/gpa: 'far' is not a decimal or 0x-hex integer"),
    ],
)
def test_secret_node_is_refused_naming_it(key, text, message):
    nodes = {**proto.SecretPacket(bytes(0x34), bytes(16), 0x1000).to_nodes(), key: text}
    with pytest.raises(InputError) as info:
        proto.SecretPacket.parse(nodes)
    assert str(info.value).startswith(message), info.value


@pytest.mark.parametrize("key", ["header", "data", "gpa"])
def test_secret_node_missing(key):
    nodes = proto.SecretPacket(bytes(0x34), bytes(16), 0x1000).to_nodes()
    del nodes[key]
    with pytest.raises(InputError, match=f"^secret/{key}: missing$"):
        proto.SecretPacket.parse(nodes)


@pytest.mark.parametrize(
    "key,text,message",
    [
        ("api", "1", "platform/api: '1' is not MAJOR.MINOR"),
        ("build", "x", "platform/build: 'x' is not a decimal"),
        ("state", "RUNNING", "platform/state: 'RUNNING' is not one of UNINIT, INIT, WORKING"),
        ("owner", "true", "platform/owner: must be 0 or 1"),
        ("es", "", "platform/es: must be 0 or 1"),
        ("guests", "-1", "platform/guests: '-1' is not a decimal"),
    ],
)
def test_platform_node_is_refused_naming_it(key, text, message):
    nodes = {**proto.PlatformNodes("0.24", 1, PlatformState.INIT, False, False, 0).to_nodes(), key: text}
    with pytest.raises(InputError) as info:
        proto.PlatformNodes.parse(nodes)
    assert str(info.value).startswith(message), info.value


# -- the layout machinery ---------------------------------------------------------------------------------------


def test_a_layout_refuses_a_key_twice_and_free_text_before_the_end():
    text = proto.Field("note", "note", proto.TEXT)
    number = proto.Field("n", "n", proto.integer(0, 9))
    with pytest.raises(ValueError, match="given twice"):
        proto.Layout("x", (number, number))
    with pytest.raises(ValueError, match="must come last"):
        proto.Layout("x", (text, number), free_text="note")


def test_a_layout_naming_an_attribute_the_message_lacks_is_refused_where_it_is_defined():
    layout = proto.Layout("x", (proto.Field("gpa", "gpa", proto.integer(0, 9)), proto.Field("n", "count", proto.TEXT)))
    with pytest.raises(TypeError, match=r"SecretPacket has no attribute\(s\) \['count'\]"):
        layout.check(proto.SecretPacket)


def test_every_message_field_is_an_attribute_and_wire_order_is_fixed():
    assert proto.REQUEST.keys == (
        "generation", "name", "policy", "es", "attest", "image-gpa", "image-size", "image-more", "godh", "session",
    )  # fmt: skip
    assert proto.SUMMARY.keys == (
        "ack", "name", "state", "step", "handle", "asid", "api", "build", "policy", "measurement", "error",
    )  # fmt: skip
    assert proto.SECRET.keys == ("header", "data", "gpa")
