"""Crash at every step: sevd is SIGKILLed right before and right after each PSP command, then restarted.

Afterwards every guest ends running, or decommissioned with its error node set; the simulated
PSP's contexts equal the daemon's journal; no ASID is held twice and none is reused unflushed.
"""

import dataclasses
import json

import pytest
from daemon_harness import Harness, wait_for

from sevd.abi.certs import SevCert
from sevd.abi.launch import LaunchMeasurement
from sevd.abi.policy import Policy
from sevd.daemon.records import RecordStore
from sevd.owner.secret import package_secret
from sevd.owner.session import make_session
from sevd.platform import Platform
from sevd.toolstack.guestnodes import send_command, send_secret
from sevd.xen import protocol as proto

LAUNCH_STEPS = [
    "MAKE_SEV",
    "LAUNCH_START",
    "ACTIVATE",
    "SEV_ENABLE",
    "LAUNCH_UPDATE_DATA",
    "LAUNCH_MEASURE",
    "LAUNCH_UPDATE_SECRET",
    "LAUNCH_FINISH",
]
TEARDOWN_STEPS = ["DEACTIVATE", "DECOMMISSION", "DF_FLUSH"]
# Steps after which recovery cannot know what the firmware did to guest memory: the launch must fail cleanly.
MUST_FAIL = {("before", "LAUNCH_UPDATE_DATA"), ("after", "LAUNCH_UPDATE_DATA"), ("after", "LAUNCH_MEASURE")}
IMAGE = bytes(range(256)) * (300 * 4096 // 256)  # 300 pages: several physically discontiguous ranges


def launch(h, name, session):
    domid = h.toolstack.create(name, 4, IMAGE)
    h.request(domid, attest=True, session=session)
    return domid


def summary_or_death(h, domid, *states):
    """Wait until no command is pending and the summary's state is one of `states`, and return that summary;
    None when the daemon died first (the injected crash).

    The summary is read once and everything is decided on that one read, as a toolstack does: after a
    restart the node still says what the killed daemon last published until the new daemon's first pass
    republishes it from the journal, so two reads can see two different summaries (`state=measured` from
    the old one, `step=FINISH` from the new).  A command the killed daemon left is answered first, as the
    protocol says (list the guest, read the summary): a packet written over a pending one could be read
    half old, half new.
    """

    def check():
        if h.daemon.poll() is not None:
            return "killed"
        if "command" in h.xs.list(proto.guest_path(domid)):
            return None
        summary = h.summary(domid)
        return summary if summary is not None and summary.state is not None and summary.state.value in states else None

    found = wait_for(check, 30, f"domain {domid} in {states}")
    return None if found == "killed" else found


def state_or_death(h, domid, *states):
    """Wait for one of `states`; None when the daemon died first (the injected crash)."""
    summary = summary_or_death(h, domid, *states)
    return None if summary is None else summary.state.value


def drive_to_running(h, domid, session):
    """Play the owner until the guest runs or fails; None when the daemon was killed on the way."""
    summary = summary_or_death(h, domid, "measured", "running", "error")
    if summary is None:
        return None
    if summary.state == proto.GuestState.MEASURED:
        if summary.step != "LAUNCH_UPDATE_SECRET":
            measured = LaunchMeasurement.from_base64(summary.measurement)
            packaged = package_secret(session.keys, b"s" * 32, measured)
            gpa, _ = h.toolstack.image_location(domid)
            send_secret(h.xs, domid, proto.SecretPacket(packaged.header.to_bytes(), packaged.ciphertext, gpa))
            # sevd removes the command as it publishes the outcome: then the summary holds the command's result.
            path = proto.guest_path(domid, "command")
            wait_for(lambda: h.xs.read(path) is None or h.daemon.poll() is not None, 30, "secret")
            if h.daemon.poll() is not None:
                return None  # killed on the way: the caller restarts
            answered = h.summary(domid)
            assert answered is not None and answered.step == "LAUNCH_UPDATE_SECRET", (answered, h.logs()[-4000:])
        send_command(h.xs, domid, proto.Command.FINISH)
        return state_or_death(h, domid, "running", "error")
    return summary.state.value


def journal(h):
    return [dataclasses.asdict(r) for r in RecordStore(h.root / "sevd-state").load_all()]


def assert_consistent(h):
    status = Platform(h.host.client()).status()
    records = journal(h)
    live = [r for r in records if r["handle"]]
    assert status.guests == len(live), (status, records)
    psp_state = json.loads((h.root / "psp" / "state.json").read_text())
    psp_asids = sorted(g["asid"] for g in psp_state["guests"].values() if g["asid"])
    assert psp_asids == sorted(r["asid"] for r in live if r["state"] == "running")
    assert len(set(psp_asids)) == len(psp_asids)
    xen = json.loads((h.root / "xen" / "domains.json").read_text())
    in_use = [d["asid"] for d in xen["domains"].values() if d["asid"]]
    assert not set(in_use) & set(xen["dirty_asids"]), "an ASID was handed out while still dirty"


@pytest.fixture
def host(tmp_path):
    h = Harness(tmp_path / "host", max_asid=6, min_sev_asid=5)
    yield h
    h.close()


def _session(h):
    pdh = SevCert.parse(Platform(h.host.client()).pdh_cert_export().pdh)
    return make_session(pdh, 0)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", LAUNCH_STEPS)
def test_crash_during_launch(host, when, step):
    session = _session(host)
    host.start_daemon({"SEVD_FAULT": f"{when}:{step}"})
    domid = launch(host, "crash", session)
    result = drive_to_running(host, domid, session)
    if result is None or host.daemon.poll() is None:
        wait_for(lambda: host.daemon.poll() is not None, 30, "the injected crash")
    assert host.daemon.returncode == -9, host.logs()
    host.daemon = None
    host.start_daemon()
    final = drive_to_running(host, domid, session)
    if (when, step) in MUST_FAIL:
        assert final == "error", host.logs()
        assert host.field(domid, "error").startswith("INTERRUPTED:")
    else:
        assert final == "running", host.logs()
    assert_consistent(host)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", TEARDOWN_STEPS)
def test_crash_during_teardown(host, when, step):
    session = _session(host)
    host.start_daemon({"SEVD_FAULT": f"{when}:{step}"})
    # Two SEV ASIDs: the third launch needs WBINVD + DF_FLUSH of the first two.
    domids = []
    for i in range(3):
        if host.daemon is None:
            host.start_daemon()
        domid = launch(host, f"t{i}", session)
        state = drive_to_running(host, domid, session)
        if state is None or host.daemon.poll() is not None:
            wait_for(lambda: host.daemon.poll() is not None, 30, "the injected crash")
            host.daemon = None
            host.start_daemon()
            state = drive_to_running(host, domid, session)
        assert state == "running", host.logs()
        domids.append(domid)
        if i < 2:
            host.toolstack.destroy(domid)
            wait_for(
                lambda d=domid: host.xs.read(proto.guest_path(d)) is None or host.daemon.poll() is not None,
                30,
                "teardown",
            )
            if host.daemon.poll() is not None:
                assert host.daemon.returncode == -9
                host.daemon = None
                host.start_daemon()
                wait_for(lambda d=domid: host.xs.read(proto.guest_path(d)) is None, 30, "teardown after restart")
    assert "killed" not in host.logs()
    assert_consistent(host)


@pytest.mark.parametrize("when", ["before", "after"])
def test_crash_during_update_vmsa_fails_cleanly(tmp_path, when):
    """SEV-ES: a VMSA possibly encrypted already cannot be measured again: INTERRUPTED, context gone."""
    h = Harness(tmp_path / "host")
    try:
        h.start_daemon({"SEVD_FAULT": f"{when}:LAUNCH_UPDATE_VMSA"})
        domid = h.toolstack.create("es-crash", 4, IMAGE)
        h.request(domid, Policy.parse("ES"))
        wait_for(lambda: h.daemon.poll() is not None, 30, "the injected crash")
        h.daemon = None
        h.start_daemon()
        assert h.wait_state(domid, "error", "running") == "error"
        assert h.field(domid, "error").startswith("INTERRUPTED:")
        assert_consistent(h)
    finally:
        h.close()
