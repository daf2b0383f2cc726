"""The pyxs wrapper: absent nodes, empty values, conflicting transactions retried, lost connections."""

import pytest

from sevd.xen.xenstored import XenstoredStandIn
from sevd.xen.xsclient import Xenstore, XenstoreLost


@pytest.fixture
def xs(tmp_path):
    server = XenstoredStandIn(str(tmp_path / "xs.sock")).start()
    client = Xenstore(server.socket_path)
    yield server, client
    client.close()
    server.stop()


def test_absent_is_none_and_empty_is_allowed(xs):
    _, c = xs
    assert c.read("/nope") is None
    assert c.list("/nope") == []
    c.write("/a/empty", "")
    assert c.read("/a/empty") == ""


def test_conflicting_transaction_is_run_again_not_dropped(xs):
    server, c = xs
    other = Xenstore(server.socket_path)
    runs = []

    def body():
        runs.append(c.read("/counter"))
        if len(runs) == 1:
            other.write("/counter", "changed-meanwhile")  # makes the first commit conflict (EAGAIN)
        c.write("/counter", "mine")

    c.write("/counter", "start")
    c.transact(body)
    assert len(runs) == 2 and runs[1] == "changed-meanwhile"
    assert c.read("/counter") == "mine"
    other.close()


# pyxs' router thread ends with ConnectionError when xenstored goes away: that is the event under test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_watch_events_and_lost_connection(xs):
    server, c = xs
    c.watch(["/w"])
    assert c.next_event(2) == "/w"  # the initial event every WATCH fires
    c.write("/w/x", "1")
    assert c.next_event(2) == "/w/x"
    assert c.next_event(0.05) is None
    server.stop()
    with pytest.raises(XenstoreLost):
        for _ in range(5):
            c.next_event(2)
