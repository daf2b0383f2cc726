"""Fuzzed launch requests at a running daemon: a reason written back, no partial state, and it keeps serving."""

import itertools

import pytest
from daemon_harness import Harness, wait_for
from hypothesis import HealthCheck, given, settings
from test_fuzz_inputs import requests

from sevd.errors import InputError
from sevd.platform import Platform
from sevd.xen import protocol as proto

IMAGE = b"\xf4" * (8 * 4096)
names = (f"fz{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("fuzz") / "host", persist=False, max_asid=400)
    h.start_daemon()
    yield h
    h.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests)
def test_fuzzed_request(harness, nodes):
    domid = harness.toolstack.create(next(names), 1, IMAGE)
    # pyxs (the writer here) refuses control characters; a xenstore value holds at most 4096 bytes with its path.
    nodes = {k: v for k, v in nodes.items() if v.isprintable()}
    nodes["generation"] = nodes.get("generation", "1")
    text = proto.format_pairs(nodes)[:3900]
    try:
        valid = proto.LaunchRequest.parse_text(domid, text)
    except InputError:
        valid = None
    generation = proto.request_generation(text)
    before = Platform(harness.host.client()).status().guests
    harness.xs.write(proto.guest_path(domid, "request"), text)
    state = harness.wait_state(domid, "running", "measured", "error")
    assert harness.field(domid, "ack") == (None if generation is None else str(generation))
    if valid is None:
        error = harness.field(domid, "error")
        assert state == "error" and error.startswith("INVALID_REQUEST: request"), error
        assert Platform(harness.host.client()).status().guests == before, "a refused request touched the PSP"
    elif state == "error":
        # Valid requests may still fail in the firmware (e.g. an image range outside the domain): by name.
        assert harness.field(domid, "error").split(":")[0].isupper()
    harness.toolstack.destroy(domid)
    wait_for(lambda: harness.xs.read(proto.guest_path(domid)) is None, 30, "cleanup")
