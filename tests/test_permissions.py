"""As an unprivileged guest: every sevd node is unreadable and unwritable, and no launch can be
requested for any domain.  After an attested launch, no secret material is left in xenstore, the
daemon's journal or its log."""

import base64

import pytest
from daemon_harness import OVMF, Harness, wait_for

from sevd.abi.launch import LaunchMeasurement
from sevd.abi.policy import Policy
from sevd.owner.secret import package_secret
from sevd.owner.session import make_session
from sevd.toolstack.guestnodes import request_launch, send_command, send_secret
from sevd.xen import protocol as proto
from sevd.xen.xsclient import Xenstore

pytestmark = pytest.mark.skipif(not OVMF.exists(), reason="Debian's ovmf package provides the boot image")
SECRET = b"the-owner-secret-never-on-host!!"


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("perm") / "host")
    h.start_daemon()
    pdh = h.host.owner_chain().pdh
    session = make_session(pdh, 0)
    image = OVMF.read_bytes()
    domid = h.toolstack.create("victim", 16, image)
    gpa, size = h.toolstack.image_location(domid)
    godh, blob = session.godh.to_bytes(), session.blob.to_bytes()
    request_launch(h.xs, proto.LaunchRequest(domid, 1, Policy(0), False, True, gpa, size, godh, blob))
    h.wait_state(domid, "measured")
    measured = LaunchMeasurement.from_base64(h.field(domid, "measurement"))
    packaged = package_secret(session.keys, SECRET, measured)
    send_secret(h.xs, domid, proto.SecretPacket(packaged.header.to_bytes(), packaged.ciphertext, gpa))
    wait_for(lambda: h.field(domid, "step") == "LAUNCH_UPDATE_SECRET", 30, "secret injected")
    send_command(h.xs, domid, proto.Command.FINISH)
    h.wait_state(domid, "running")
    yield h, domid, session, packaged
    h.close()


def all_nodes(xs, path):
    yield path
    for name in xs.list(path):
        yield from all_nodes(xs, f"{path}/{name}".replace("//", "/"))


def test_guest_can_neither_read_nor_write_any_sevd_node(launched):
    h, domid, _, _ = launched
    guest = Xenstore(h.xenstored.domain_socket(domid))
    nodes = list(all_nodes(h.xs, proto.ROOT))
    assert len(nodes) > 10 and {proto.guest_path(domid, "request"), proto.guest_path(domid, "summary")} <= set(nodes)
    refused_reads = refused_writes = 0
    for node in nodes:
        try:
            guest.read(node)
        except Exception:  # noqa: BLE001 - EACCES from xenstored, whatever pyxs wraps it in
            refused_reads += 1
        try:
            guest.write(node, "x")
        except Exception:  # noqa: BLE001
            refused_writes += 1
    guest.close()
    assert refused_reads == refused_writes == len(nodes)


@pytest.mark.parametrize("target", ["self", "other", "new"])
def test_guest_cannot_request_a_launch(launched, target):
    h, domid, _, _ = launched
    victim = {"self": domid, "other": domid + 1, "new": 4242}[target]
    guest = Xenstore(h.xenstored.domain_socket(domid))
    with pytest.raises(Exception):  # noqa: B017 - xenstored answers EACCES
        guest.write(proto.guest_path(victim, "request"), "v=1 generation=9")
    with pytest.raises(Exception):  # noqa: B017
        guest.write(proto.guest_path(victim, "command"), "destroy")
    guest.close()


def test_no_secret_material_left_anywhere(launched):
    h, domid, session, packaged = launched
    values = " ".join(v for n in all_nodes(h.xs, "/") if (v := h.xs.read(n)))
    journal = b"".join(p.read_bytes() for p in (h.root / "sevd-state" / "guests").iterdir())
    log = h.logs().encode()
    for needle in (SECRET, session.keys.tek, session.keys.tik, packaged.ciphertext):
        for form in (needle, base64.b64encode(needle), needle.hex().encode()):
            assert form not in values.encode(), "secret material left in xenstore"
            assert form not in journal and form not in log
    assert h.xs.list(proto.guest_path(domid, "secret")) == []
