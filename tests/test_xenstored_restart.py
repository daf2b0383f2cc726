"""xenstored goes away mid-launch and comes back with its store: sevd reconnects, re-watches and
finishes or reports every pending launch; nothing is lost."""

import pytest
from daemon_harness import Harness, wait_for

from sevd.platform import Platform
from sevd.toolstack.guestnodes import send_command
from sevd.xen import protocol as proto
from sevd.xen.xsclient import Xenstore
from sevd_sim.xenstored import XenstoredStandIn

IMAGE = b"\x0f" * (200 * 4096)


def restart_xenstored(h: Harness) -> None:
    h.xs.close()
    h.xenstored.stop()
    h.xenstored = XenstoredStandIn(str(h.root / "xenstored.sock"), str(h.root / "xenstored.json")).start()
    h.xs = Xenstore(str(h.root / "xenstored.sock"))
    h.toolstack.xs = h.xs


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path / "host")
    h.start_daemon()
    yield h
    h.close()


def launch(h, name, attest):
    domid = h.toolstack.create(name, 2, IMAGE)
    h.request(domid, attest=attest)
    return domid


def test_restart_while_waiting_for_the_owner(harness):
    domid = launch(harness, "waiting", attest=True)
    assert harness.wait_state(domid, "measured") == "measured"
    restart_xenstored(harness)
    wait_for(lambda: "reconnecting" in harness.logs(), 30, "the daemon to notice")
    send_command(harness.xs, domid, proto.Command.FINISH)  # written while sevd may still be reconnecting
    assert harness.wait_state(domid, "running", "error") == "running", harness.logs()
    assert harness.daemon.poll() is None


def test_restart_in_the_middle_of_launches(harness):
    domids = [launch(harness, f"busy{i}", attest=False) for i in range(6)]
    restart_xenstored(harness)  # some launches are mid-flight, some not yet taken
    later = launch(harness, "after", attest=False)
    for domid in [*domids, later]:
        assert harness.wait_state(domid, "running", "error") == "running", harness.logs()
    assert Platform(harness.host.client()).status().guests == 7
