"""The two one-node formats of the xenstore protocol: the toolstack's `request` and sevd's `summary`.

Each formats and parses back to the same value, and malformed content is refused with an InputError
that names the node, the key and what is wrong."""

import base64

import pytest

from sevd.abi.policy import Policy
from sevd.errors import InputError
from sevd.xen import protocol as proto

MEASUREMENT = base64.b64encode(bytes(range(48))).decode()


def test_request_formats_as_one_line_and_parses_back():
    req = proto.LaunchRequest(5, 3, Policy(1), False, True, 0xFFE00000, 2 << 20, b"g" * 0x824, b"s" * 0x80)
    text = req.format()
    assert text.startswith("v=1 generation=3 policy=0x00000001 es=0 attest=1 image-gpa=0xffe00000 image-size=2097152 ")
    assert "\n" not in text and len(text) < 4000  # one xenstore value, with room for its path
    assert proto.LaunchRequest.parse_text(5, text) == req
    assert proto.request_generation(text) == 3


def test_request_without_session_is_short():
    req = proto.LaunchRequest(5, 1, Policy(0), False, False, 0x100000, 4096)
    assert req.format() == "v=1 generation=1 policy=0x00000000 es=0 attest=0 image-gpa=0x100000 image-size=4096"
    assert proto.LaunchRequest.parse_text(5, req.format()) == req


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "request: must start with the version v=1"),
        ("generation=1 policy=0", "request: must start with the version v=1"),
        ("v=2 generation=1", "request: version '2' is not understood"),
        ("v=1  generation=1", "request: '' is not key=value"),
        ("v=1 generation=1 policy", "request: 'policy' is not key=value"),
        ("v=1 generation=1 policy=", "request policy: empty value"),
        ("v=1 generation=1 generation=2", "request generation: given twice"),
        ("v=1 generation=1\npolicy=0", "request: holds a control character"),
        ("v=1 generation=1 policy=0x40 image-gpa=0 image-size=1", "request policy: "),
        ("v=1 generation=1 policy=0 image-gpa=0x1001 image-size=1", "request image-gpa: must be page aligned"),
        ("v=1 generation=0 policy=0 image-gpa=0 image-size=1", "request generation: 0 is outside"),
        ("v=1 generation=1 policy=0 image-gpa=0 image-size=1 colour=red", "request: unknown key(s) colour"),
        ("v=1 generation=1 policy=0 image-gpa=0", "request image-size: missing"),
        ("v=1 generation=1 policy=0 image-gpa=0 image-size=1 godh=AAAA", "request godh: must decode to 2084"),
    ],
)
def test_malformed_request_is_refused_naming_the_key(text, message):
    with pytest.raises(InputError) as info:
        proto.LaunchRequest.parse_text(1, text)
    assert str(info.value).startswith(message), info.value


def test_generation_is_found_even_in_a_refused_request():
    assert proto.request_generation("v=1 policy=0x40 generation=7 image-size=x") == 7
    assert proto.request_generation("v=1 generation=x") is None
    assert proto.request_generation("v=1 xgeneration=7") is None
    assert proto.request_generation("v=1 generation=0") is None


def test_summary_formats_and_parses_back_with_the_error_last():
    summary = proto.GuestSummary(
        state=proto.GuestState.MEASURED,
        ack=2,
        step="LAUNCH_UPDATE_SECRET",
        handle=1,
        asid=5,
        api="0.24",
        build=15,
        policy=Policy(1),
        measurement=MEASUREMENT,
        error="BAD_MEASUREMENT: the packet's MAC does not match  (twice spaced: kept as written)",
    )
    text = summary.format()
    assert text.startswith(
        "v=1 ack=2 state=measured step=LAUNCH_UPDATE_SECRET handle=1 asid=5 api=0.24 build=15 policy=0x00000001 "
    )
    assert text.endswith(" error=BAD_MEASUREMENT: the packet's MAC does not match  (twice spaced: kept as written)")
    assert proto.GuestSummary.parse(text) == summary
    assert summary.to_fields()["error"].split(":")[0] == "BAD_MEASUREMENT"


def test_summary_leaves_out_what_is_not_known_yet():
    summary = proto.GuestSummary(state=proto.GuestState.LAUNCHING, ack=1, policy=Policy(0))
    assert summary.format() == "v=1 ack=1 state=launching policy=0x00000000"
    assert proto.GuestSummary.parse(summary.format()).to_fields() == {
        "ack": "1",
        "state": "launching",
        "policy": "0x00000000",
    }


def test_summary_readers_skip_keys_they_do_not_know():
    summary = proto.GuestSummary.parse("v=1 ack=1 state=running later-key=x error=NAME: message")
    assert summary.state == proto.GuestState.RUNNING and summary.error == "NAME: message"


@pytest.mark.parametrize(
    "old,new",
    [
        ("SEV_DOMAIN", "MAKE_SEV"),
        ("SEV_ENABLED", "SEV_ENABLE"),
        ("UPDATE_DATA", "LAUNCH_UPDATE_DATA"),
        ("UPDATE_VMSA", "LAUNCH_UPDATE_VMSA"),
        ("MEASURE", "LAUNCH_MEASURE"),
        ("SECRET", "LAUNCH_UPDATE_SECRET"),
        ("FINISH", "LAUNCH_FINISH"),
    ],
)
def test_a_summary_of_the_previous_version_reads_with_the_new_step_names(old, new):
    """A summary an older sevd left (read by the new one after an upgrade) keeps its ack, with the new name."""
    summary = proto.GuestSummary.parse(f"v=1 ack=3 state=destroyed step={old}")
    assert (summary.ack, summary.step) == (3, new)


@pytest.mark.parametrize(
    "text,message",
    [
        ("state=running", "summary: must start with the version v=1"),
        ("v=2 state=running", "summary: version '2' is not understood (this sevd speaks v=1)"),
        ("v=1 state=sleeping", "summary state: 'sleeping' is not one of queued, launching"),
        ("v=1 state=running step=BOOT", "summary step: 'BOOT' is not one of MAKE_SEV"),
        ("v=1 state=running asid=five", "summary asid: 'five' is not a decimal"),
        ("v=1 state=running api=0_24", "summary api: '0_24' is not MAJOR.MINOR"),
        ("v=1 state=running measurement=AAAA", "summary measurement: must decode to 48 bytes"),
        ("v=1 state=running ack=0", "summary ack: 0 is outside"),
        ("v=1 state=running state=error", "summary state: given twice"),
        ("v=1 state=running error=", "summary error: empty value"),
        ("v=1 state=running\terror=x", "summary: holds a control character"),
    ],
)
def test_malformed_summary_is_refused_naming_the_key(text, message):
    with pytest.raises(InputError) as info:
        proto.GuestSummary.parse(text)
    assert str(info.value).startswith(message), info.value


def test_error_text_is_one_printable_ascii_line():
    text = proto.error_text("XEN_ERROR", "line one\nline two: caf\u00e9")
    assert text == "XEN_ERROR: line one line two: caf\\xe9"
    assert len(proto.error_text("X", "y" * 5000)) == 1024
    summary = proto.GuestSummary(state=proto.GuestState.ERROR, error=text)
    assert proto.GuestSummary.parse(summary.format()).error == text
