"""Injected firmware failures: each spec status reaches the error node and the journal by name,
and the daemon keeps serving other guests."""

import pytest
from daemon_harness import Harness

from sevd.platform import Platform

IMAGE = b"\x90" * (80 * 4096)


def launch(h, name):
    domid = h.toolstack.create(name, 2, IMAGE)
    h.request(domid)
    return domid


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("inject") / "host")
    h.start_daemon()
    yield h
    h.close()


@pytest.mark.parametrize(
    "command,outcome",
    [
        ("LAUNCH_START", "RESOURCE_LIMIT"),
        ("ACTIVATE", "ASID_OWNED"),
        ("LAUNCH_UPDATE_DATA", "INVALID_ADDRESS"),
        ("LAUNCH_MEASURE", "HWERROR_PLATFORM"),
        ("LAUNCH_FINISH", "INVALID_GUEST_STATE"),
    ],
)
def test_status_surfaces_by_name_and_others_still_launch(harness, command, outcome):
    harness.host.psp().inject_failure(command, outcome)
    bad = launch(harness, f"bad-{command}")
    assert harness.wait_state(bad, "error", "running") == "error"
    error = harness.field(bad, "error")
    assert error.startswith(f"{outcome}:"), error
    assert outcome in harness.logs()
    good = launch(harness, f"good-{command}")
    assert harness.wait_state(good, "running", "error") == "running", harness.logs()
    harness.toolstack.destroy(good)
    harness.toolstack.destroy(bad)


def test_no_context_leaks_after_failures(harness):
    from daemon_harness import wait_for

    wait_for(lambda: Platform(harness.host.client()).status().guests == 0, 30, "all contexts decommissioned")


def test_psp_timeout_disables_it_like_linux(tmp_path):
    h = Harness(tmp_path / "host")
    try:
        h.start_daemon()
        h.host.psp().inject_failure("LAUNCH_UPDATE_DATA", "TIMEOUT")
        first = launch(h, "timeout")
        assert h.wait_state(first, "error", "running") == "error"
        assert h.field(first, "error").startswith("DEVICE_ETIMEDOUT:")
        second = launch(h, "after-timeout")
        assert h.wait_state(second, "error", "running") == "error"
        assert "EBUSY" in h.field(second, "error")
    finally:
        h.close()
