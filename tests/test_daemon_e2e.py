"""sevd end to end with real processes: xenstored stand-in + `sevd run` + a simulated toolstack."""

import base64

import pytest
from daemon_harness import OVMF, Harness, wait_for

from sevd.abi.certs import SevCert, verify_chain
from sevd.abi.launch import LaunchMeasurement
from sevd.abi.policy import Policy
from sevd.owner.measurement import verify_measurement
from sevd.owner.secret import package_secret
from sevd.owner.session import make_session
from sevd.platform import Platform
from sevd.toolstack.guestnodes import request_launch, send_command, send_secret
from sevd.xen import protocol as proto

pytestmark = pytest.mark.skipif(not OVMF.exists(), reason="Debian's ovmf package provides the boot image")


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path / "host", max_asid=6, min_sev_asid=5)  # two SEV ASIDs: forces flush-and-reuse
    h.start_daemon()
    yield h
    h.close()


def new_guest(h, name, policy=None, attest=False, session=None, generation=1):
    policy = policy or Policy(0)
    image = OVMF.read_bytes()
    domid = h.toolstack.create(name, 16, image)
    gpa, size = h.toolstack.image_location(domid)
    request = proto.LaunchRequest(
        domid=domid,
        generation=generation,
        policy=policy,
        es=False,
        attest=attest,
        image_gpa=gpa,
        image_size=size,
        godh=session.godh.to_bytes() if session else None,
        session=session.blob.to_bytes() if session else None,
    )
    request_launch(h.xs, request)
    return domid, image


def psp_guests(h):
    return Platform(h.host.client()).status().guests


def test_launch_without_session_runs_at_once(harness):
    domid, _ = new_guest(harness, "plain")
    assert harness.wait_state(domid, "running", "error") == "running", harness.logs()
    assert harness.field(domid, "asid") in ("5", "6")
    assert LaunchMeasurement.from_base64(harness.field(domid, "measurement"))
    assert psp_guests(harness) == 1
    harness.toolstack.unpause(domid)  # Xen refuses this before the VMCBs have SEV: it worked


def test_attested_launch_with_owner_session_and_secret(harness, tmp_path):
    chain = harness.host.owner_chain()
    verify_chain(chain)
    policy = Policy(0)
    session = make_session(chain.pdh, int(policy))
    domid, image = new_guest(harness, "attested", policy, attest=True, session=session)
    assert harness.wait_state(domid, "measured", "error") == "measured", harness.logs()

    measured = LaunchMeasurement.from_base64(harness.field(domid, "measurement"))
    api_major, api_minor = map(int, harness.field(domid, "api").split("."))
    build = int(harness.field(domid, "build"))
    verify_measurement(measured, image, int(policy), api_major, api_minor, build, session.keys.tik)

    secret = b"owner-secret-0123456789abcdef!!!"
    packaged = package_secret(session.keys, secret, measured)
    gpa, _ = harness.toolstack.image_location(domid)
    send_secret(harness.xs, domid, proto.SecretPacket(packaged.header.to_bytes(), packaged.ciphertext, gpa))
    wait_for(lambda: harness.field(domid, "step") == "LAUNCH_UPDATE_SECRET", 30, "secret injected")
    assert harness.xs.read(proto.guest_path(domid, "secret", "data")) is None, "secret nodes must be removed after use"
    send_command(harness.xs, domid, proto.Command.FINISH)
    assert harness.wait_state(domid, "running", "error") == "running"
    assert secret not in harness.logs().encode() and base64.b64encode(secret).decode() not in harness.logs()


def test_tampered_secret_reports_bad_measurement_and_launch_survives(harness):
    client = harness.host.client()
    pdh = SevCert.parse(Platform(client).pdh_cert_export().pdh)
    session = make_session(pdh, 0)
    domid, _ = new_guest(harness, "tampered", attest=True, session=session)
    harness.wait_state(domid, "measured", "error")
    measured = LaunchMeasurement.from_base64(harness.field(domid, "measurement"))
    packaged = package_secret(session.keys, b"x" * 32, measured)
    header = bytearray(packaged.header.to_bytes())
    header[-1] ^= 1
    gpa, _ = harness.toolstack.image_location(domid)
    send_secret(harness.xs, domid, proto.SecretPacket(bytes(header), packaged.ciphertext, gpa))
    err = wait_for(lambda: harness.field(domid, "error"), 30, "error node")
    assert err.startswith("BAD_MEASUREMENT:")
    assert harness.state(domid) == "measured"


def test_bad_request_gets_a_reason_and_nothing_else(harness):
    domid = harness.toolstack.create("bad", 16, b"\x00" * 4096)
    request = "v=1 generation=1 policy=0x40 image-gpa=0 image-size=4096"
    harness.xs.write(proto.guest_path(domid, "request"), request)
    err = wait_for(lambda: harness.field(domid, "error"), 30, "error in the summary")
    assert err.startswith("INVALID_REQUEST: request policy") and "reserved" in err
    assert harness.state(domid) == "error" and harness.field(domid, "ack") == "1"
    assert psp_guests(harness) == 0


def test_destroy_decommissions_and_asids_are_reused_after_flush(harness):
    seen = []
    for i in range(4):  # two SEV ASIDs on this host: every launch after the second needs a flush
        domid, _ = new_guest(harness, f"cycle{i}")
        assert harness.wait_state(domid, "running", "error") == "running", harness.logs()
        seen.append(int(harness.field(domid, "asid")))
        harness.toolstack.destroy(domid)
        wait_for(lambda d=domid: harness.xs.read(proto.guest_path(d)) is None, 30, "guest nodes removed")
        wait_for(lambda: psp_guests(harness) == 0, 30, "PSP context decommissioned")
    assert set(seen) <= {5, 6} and len(seen) == 4
    assert "DF_FLUSH" in harness.logs()


def test_guest_cannot_read_or_write_sev_nodes(harness):
    domid, _ = new_guest(harness, "nosy")
    harness.wait_state(domid, "running", "error")
    guest_sock = harness.xenstored.domain_socket(domid)
    from sevd.xen.xsclient import Xenstore

    guest = Xenstore(guest_sock)
    import pyxs

    with pytest.raises(pyxs.PyXSError):
        guest.read(proto.guest_path(domid, "summary"))
    with pytest.raises(pyxs.PyXSError):
        guest.write(proto.guest_path(domid, "command"), "destroy")
    with pytest.raises(pyxs.PyXSError):
        guest.write(proto.guest_path(domid + 1, "request"), "v=1 generation=1")
    guest.close()


def test_daemon_restart_keeps_running_guests(harness):
    domid, _ = new_guest(harness, "survivor")
    harness.wait_state(domid, "running", "error")
    assert harness.stop_daemon() == 0
    harness.start_daemon()
    assert psp_guests(harness) == 1
    harness.toolstack.destroy(domid)
    wait_for(lambda: psp_guests(harness) == 0, 30, "decommission after restart")
