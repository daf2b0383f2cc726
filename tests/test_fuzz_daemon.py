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
    # pyxs (the writer here) refuses empty values and control characters.
    nodes = {k: v for k, v in nodes.items() if v and v.isprintable()}
    nodes["generation"] = nodes.get("generation", "1")
    try:
        valid = proto.LaunchRequest.parse(domid, nodes)
    except InputError:
        valid = None
    before = Platform(harness.host.client()).status().guests
    harness.xs.write_many(proto.guest_path(domid, "request"), nodes)
    ack = wait_for(lambda: harness.xs.read(proto.guest_path(domid, "ack")), 30, "ack")
    assert ack == nodes["generation"]
    if valid is None:
        state = harness.wait_state(domid, "error")
        error = harness.xs.read(proto.guest_path(domid, "error"))
        assert state == "error" and error.startswith("INVALID_REQUEST: request"), error
        assert Platform(harness.host.client()).status().guests == before, "a refused request touched the PSP"
    else:
        # Valid requests may still fail in the firmware (e.g. an image range outside the domain): by name.
        state = harness.wait_state(domid, "running", "measured", "error")
        if state == "error":
            assert harness.xs.read(proto.guest_path(domid, "error")).split(":")[0].isupper()
    harness.toolstack.destroy(domid)
    wait_for(lambda: harness.xs.read(proto.guest_path(domid)) is None, 30, "cleanup")
