"""The pyxs wrapper: absent nodes, empty values, conflicting transactions retried, lost connections."""

import errno

import pytest
import pyxs

from sevd.xen.xsclient import Xenstore, XenstoreLost
from sevd_sim.xenstored import XenstoredStandIn


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


def test_read_many_answers_each_path_in_order_in_one_round_trip(xs):
    server, c = xs
    paths = [f"/many/{i}" for i in range(300)]
    for i, path in enumerate(paths[::2]):
        c.write(path, f"value {i}")
    before = server.requests
    values = c.read_many(paths)
    assert values == [f"value {i // 2}" if i % 2 == 0 else None for i in range(300)]
    assert server.requests - before == 300 and c.read_many([]) == []
    assert c.read("/many/0") == "value 0"  # the connection carries on as before


def test_read_many_raises_what_xenstored_refuses(xs, tmp_path):
    server, c = xs
    c.write("/private/x", "1")
    c.set_perms("/private", ("n0",))
    guest = Xenstore(server.domain_socket(5, tmp_path / "dom5.sock"))
    with pytest.raises(pyxs.PyXSError) as info:
        guest.read_many(["/private/x"])
    assert info.value.args[0] == errno.EACCES
    guest.close()


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
