"""The xenstored stand-in over raw sockets: wire format, every error reply, perms, watches, transactions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevd_sim import wire
from sevd_sim.wire import XsType
from sevd_sim.xenstored import XenstoredStandIn


def S(*items: str) -> bytes:
    """NUL-terminated strings (spelled out: adjacent byte literals like b"7\\0" b"1" would read as octal)."""
    return wire.join_strings(items)


class XsFail(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class Raw:
    """A minimal raw-socket client built on sevd_sim.wire."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.decoder = wire.FrameDecoder()
        self.req = 0
        self.events: list[tuple[str, str]] = []
        self.inbox: list[wire.Message] = []

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> wire.Message:
        while not self.inbox:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by server")
            self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    def call(self, type_: int, payload: bytes = b"", tx: int = 0) -> wire.Message:
        self.req += 1
        self.sock.sendall(wire.encode(type_, payload, self.req, tx))
        while True:
            msg = self._next()
            if msg.type == XsType.WATCH_EVENT:
                assert msg.req_id == 0 and msg.tx_id == 0
                path, token, _ = msg.payload.split(b"\0")
                self.events.append((path.decode(), token.decode()))
                continue
            assert msg.req_id == self.req
            assert msg.tx_id == tx
            return msg

    def ok(self, type_: int, payload: bytes = b"", tx: int = 0) -> bytes:
        msg = self.call(type_, payload, tx)
        if msg.type == XsType.ERROR:
            assert msg.payload.endswith(b"\0") and msg.payload.count(b"\0") == 1
            raise XsFail(msg.payload[:-1].decode())
        assert msg.type == type_
        return msg.payload

    def err(self, type_: int, payload: bytes = b"", tx: int = 0) -> str:
        with pytest.raises(XsFail) as ei:
            self.ok(type_, payload, tx)
        return ei.value.name

    def event(self) -> tuple[str, str]:
        while not self.events:
            msg = self._next()
            assert msg.type == XsType.WATCH_EVENT, msg
            path, token, _ = msg.payload.split(b"\0")
            self.events.append((path.decode(), token.decode()))
        return self.events.pop(0)

    def no_event(self, wait: float = 0.15) -> None:
        """Nothing pending: a round trip (answered after any queued event) brings in no event."""
        time.sleep(wait)
        self.ok(XsType.GET_DOMAIN_PATH, b"0\0")
        assert self.events == []

    # helpers
    def write(self, path: str, value: bytes, tx: int = 0) -> None:
        assert self.ok(XsType.WRITE, path.encode() + b"\0" + value, tx) == b"OK\0"

    def read(self, path: str, tx: int = 0) -> bytes:
        return self.ok(XsType.READ, path.encode() + b"\0", tx)

    def ls(self, path: str, tx: int = 0) -> list[str]:
        return [x.decode() for x in wire.split_strings(self.ok(XsType.DIRECTORY, path.encode() + b"\0", tx))]

    def perms(self, path: str) -> list[str]:
        return [x.decode() for x in wire.split_strings(self.ok(XsType.GET_PERMS, path.encode() + b"\0"))]

    def set_perms(self, path: str, *perms: str) -> None:
        assert self.ok(XsType.SET_PERMS, wire.join_strings([path, *perms])) == b"OK\0"

    def watch(self, path: str, token: str) -> None:
        assert self.ok(XsType.WATCH, wire.join_strings([path, token])) == b"OK\0"


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="xs", dir="/tmp")  # short: AF_UNIX paths are limited to 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def xs(sockdir):
    server = XenstoredStandIn(os.path.join(sockdir, "sock"), os.path.join(sockdir, "store.json"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def dom0(xs):
    c = Raw(xs.socket_path)
    yield c
    c.close()


@pytest.fixture
def guest(xs, dom0):
    """A connection speaking for domain 5, with a home /local/domain/5 owned by it (as the toolstack sets)."""
    dom0.write("/local/domain/5/name", b"guest")
    dom0.set_perms("/local/domain/5", "n5", "r0")
    dom0.set_perms("/local/domain/5/name", "n5", "r0")
    c = Raw(xs.domain_socket(5))
    yield c
    c.close()


# ---------------------------------------------------------------- the wire definition itself


def test_type_numbers_match_xs_wire_h():
    names = [
        "CONTROL",
        "DIRECTORY",
        "READ",
        "GET_PERMS",
        "WATCH",
        "UNWATCH",
        "TRANSACTION_START",
        "TRANSACTION_END",
        "INTRODUCE",
        "RELEASE",
        "GET_DOMAIN_PATH",
        "WRITE",
        "MKDIR",
        "RM",
        "SET_PERMS",
        "WATCH_EVENT",
        "ERROR",
        "IS_DOMAIN_INTRODUCED",
        "RESUME",
        "SET_TARGET",
    ]
    assert [XsType[n].value for n in names] == list(range(20))
    assert XsType.RESET_WATCHES == 21 and XsType.DIRECTORY_PART == 22
    assert wire.XENSTORE_PAYLOAD_MAX == 4096 and wire.HEADER_SIZE == 16


def test_header_codec_and_decoder():
    frame = wire.encode(XsType.READ, b"/a\0", req_id=7, tx_id=3)
    assert frame[:16] == bytes([2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0])
    assert wire.decode_header(frame) == wire.Header(2, 7, 3, 3)
    dec = wire.FrameDecoder()
    assert dec.feed(frame[:5]) == []
    msgs = dec.feed(frame[5:] + frame)
    assert [m.payload for m in msgs] == [b"/a\0", b"/a\0"] and dec.pending == 0
    with pytest.raises(wire.FrameTooLarge):
        wire.encode(XsType.WRITE, b"x" * 4097)
    assert wire.error_payload("ENOENT") == b"ENOENT\0"
    assert wire.error_payload("EPERM") == b"EINVAL\0"


# ---------------------------------------------------------------- reply formats


def test_reply_formats(dom0):
    dom0.write("/a/b", b"hello")
    dom0.write("/a/c", b"")
    assert dom0.read("/a/b") == b"hello"  # raw value, no trailing NUL
    assert dom0.read("/a/c") == b""
    assert dom0.ok(XsType.DIRECTORY, b"/a\0") == b"b\0c\0"  # each name NUL-terminated
    assert dom0.ok(XsType.DIRECTORY, b"/a/b\0") == b""
    assert dom0.ok(XsType.GET_PERMS, b"/a\0") == b"n0\0"
    assert dom0.ok(XsType.GET_DOMAIN_PATH, b"7\0") == b"/local/domain/7\0"
    assert dom0.ok(XsType.IS_DOMAIN_INTRODUCED, b"0\0") == b"T\0"
    assert dom0.ok(XsType.IS_DOMAIN_INTRODUCED, b"9\0") == b"F\0"
    assert dom0.ok(XsType.MKDIR, b"/m/n\0") == b"OK\0"
    assert dom0.ok(XsType.RM, b"/m\0") == b"OK\0"
    tx = dom0.ok(XsType.TRANSACTION_START, b"\0")
    assert tx.endswith(b"\0") and int(tx[:-1]) > 0
    assert dom0.ok(XsType.TRANSACTION_END, b"F\0", tx=int(tx[:-1])) == b"OK\0"
    assert dom0.ok(XsType.RESET_WATCHES, b"\0") == b"OK\0"
    assert dom0.ls("/") == ["tool", "a"]  # the tree xenstored starts with: /tool/xenstored


def test_binary_value_and_relative_path(dom0, guest):
    dom0.write("/bin", bytes(range(256)))
    assert dom0.read("/bin") == bytes(range(256))
    guest.write("data/x", b"1")  # relative to the connection's home
    assert dom0.read("/local/domain/5/data/x") == b"1"
    assert guest.read("data/x") == b"1"


def test_write_creates_parents_inheriting_perms(dom0, guest):
    dom0.write("/p", b"")
    dom0.set_perms("/p", "n0", "r5")
    dom0.write("/p/q/r", b"v")
    assert dom0.read("/p/q") == b""
    assert dom0.perms("/p/q") == ["n0", "r5"] and dom0.perms("/p/q/r") == ["n0", "r5"]
    # Dom0 writing under a guest-owned tree: the new nodes inherit the guest's perms (owner stays 5).
    dom0.write("/local/domain/5/device/vif/0", b"x")
    assert dom0.perms("/local/domain/5/device/vif/0") == ["n5", "r0"]
    # A guest creating nodes owns them; the rest of the parent's list is kept.
    guest.write("/local/domain/5/mine/a", b"1")
    assert dom0.perms("/local/domain/5/mine/a") == ["n5", "r0"]
    dom0.write("/shared", b"")
    dom0.set_perms("/shared", "b0", "r7")
    guest.write("/shared/g", b"1")
    assert dom0.perms("/shared/g") == ["b5", "r7"]


def test_mkdir_keeps_existing_value(dom0):
    dom0.write("/k", b"val")
    dom0.ok(XsType.MKDIR, b"/k\0")
    assert dom0.read("/k") == b"val"


def test_rm_semantics(dom0):
    dom0.write("/r/a/b/c", b"1")
    dom0.ok(XsType.RM, b"/r/a\0")
    assert dom0.ls("/r") == []
    assert dom0.ok(XsType.RM, b"/r/missing\0") == b"OK\0"  # parent exists: fine
    assert dom0.err(XsType.RM, b"/r/missing/deeper\0") == "ENOENT"
    assert dom0.err(XsType.RM, b"/\0") == "EINVAL"


# ---------------------------------------------------------------- error replies


def test_enoent(dom0):
    assert dom0.err(XsType.READ, b"/nope\0") == "ENOENT"
    assert dom0.err(XsType.DIRECTORY, b"/nope\0") == "ENOENT"
    assert dom0.err(XsType.GET_PERMS, b"/nope\0") == "ENOENT"
    assert dom0.err(XsType.UNWATCH, b"/w\0tok\0") == "ENOENT"
    assert dom0.err(XsType.READ, b"/tool\0", tx=99) == "ENOENT"  # unknown transaction
    assert dom0.err(XsType.TRANSACTION_END, b"T\0") == "ENOENT"  # no transaction
    assert dom0.err(XsType.RELEASE, b"9\0") == "ENOENT"  # not introduced


def test_einval(dom0):
    for bad in (b"/a//b\0", b"/a/\0", b"/a b\0", b"\0", b"/a", b"/a\0extra\0", b"@introduceDomain\0"):
        assert dom0.err(XsType.READ, bad) == "EINVAL", bad
    assert dom0.err(XsType.WRITE, b"/no-nul") == "EINVAL"
    assert dom0.err(XsType.READ, b"/" + b"a" * 3100 + b"\0") == "EINVAL"
    assert dom0.err(XsType.TRANSACTION_END, b"X\0", tx=int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])) == ("EINVAL")
    assert dom0.err(XsType.SET_PERMS, b"/tool\0") == "EINVAL"
    assert dom0.err(XsType.SET_PERMS, b"/tool\0x0\0") == "EINVAL"
    assert dom0.err(XsType.SET_PERMS, b"/tool\0rfoo\0") == "EINVAL"
    assert dom0.err(XsType.WATCH, b"/only-path\0") == "EINVAL"
    assert dom0.err(XsType.INTRODUCE, b"5\0") == "EINVAL"
    assert dom0.err(XsType.INTRODUCE, S("5", "123", "0")) == "EINVAL"  # event channel must be > 0
    assert dom0.err(XsType.RELEASE, b"0\0") == "EINVAL"
    assert dom0.err(XsType.DIRECTORY_PART, b"/tool\0") == "EINVAL"


def test_unknown_and_reply_only_types_get_enosys(dom0):
    # xenstored answers requests it has no handler for with ENOSYS (docs/misc/xenstore.txt).
    for t in (XsType.WATCH_EVENT, XsType.ERROR, 20, 23, 999, 0xFFFF):
        assert dom0.err(t, b"/x\0") == "ENOSYS"


def test_eacces_for_unprivileged_domain(dom0, guest):
    dom0.write("/local/domain/0/secret", b"s")
    dom0.write("/local/domain/5/ro", b"r")
    dom0.set_perms("/local/domain/5/ro", "n0", "r5")
    assert guest.err(XsType.READ, b"/local/domain/0/secret\0") == "EACCES"
    assert guest.err(XsType.DIRECTORY, b"/local/domain/0\0") == "EACCES"
    assert guest.err(XsType.WRITE, b"/local/domain/0/secret\0x") == "EACCES"
    assert guest.err(XsType.WRITE, b"/local/domain/0/new\0x") == "EACCES"  # create in unwritable dir
    assert guest.err(XsType.MKDIR, b"/local/domain/0/newdir\0") == "EACCES"
    assert guest.err(XsType.RM, b"/local/domain/0/secret\0") == "EACCES"
    assert guest.read("/local/domain/5/ro") == b"r"
    assert guest.err(XsType.WRITE, b"/local/domain/5/ro\0x") == "EACCES"
    assert guest.err(XsType.SET_PERMS, b"/local/domain/5/ro\0b5\0") == "EACCES"  # not the owner
    # A missing node under an unreadable parent: EACCES, not ENOENT (nothing leaks).
    assert guest.err(XsType.READ, b"/local/domain/0/missing\0") == "EACCES"
    assert guest.err(XsType.READ, b"/local/domain/5/missing\0") == "ENOENT"
    for t, p in (
        (XsType.INTRODUCE, S("6", "1", "1")),
        (XsType.RELEASE, b"6\0"),
        (XsType.IS_DOMAIN_INTRODUCED, b"6\0"),
        (XsType.SET_TARGET, S("6", "5")),
        (XsType.RESUME, b"6\0"),
        (XsType.CONTROL, b"help\0"),
    ):
        assert guest.err(t, p) == "EACCES"


def test_owner_may_set_perms_but_not_give_away(dom0, guest):
    guest.write("own", b"1")
    guest.set_perms("own", "n5", "r0", "r7")
    assert guest.perms("own") == ["n5", "r0", "r7"]
    assert guest.err(XsType.SET_PERMS, b"own\0n7\0") == "EINVAL"  # EPERM travels as EINVAL


def test_eagain_on_transaction_conflict(xs, dom0):
    other = Raw(xs.socket_path)
    dom0.write("/t/a", b"0")
    dom0.write("/t/b", b"0")
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    assert dom0.read("/t/a", tx) == b"0"
    dom0.write("/t/a", b"1", tx)
    assert dom0.read("/t/a") == b"0"  # not visible outside before commit
    other.write("/t/a", b"2")
    assert dom0.err(XsType.TRANSACTION_END, b"T\0", tx) == "EAGAIN"
    assert dom0.read("/t/a") == b"2"
    # Changes to nodes the transaction never touched do not conflict.
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    dom0.write("/t/a", b"3", tx)
    other.write("/t/b", b"9")
    assert dom0.ok(XsType.TRANSACTION_END, b"T\0", tx) == b"OK\0"
    assert dom0.read("/t/a") == b"3"
    # A node only read in the transaction conflicts too; and a node created outside that the tx saw absent.
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    dom0.read("/t/b", tx)
    assert dom0.err(XsType.READ, b"/t/new\0", tx) == "ENOENT"
    other.write("/t/new", b"x")
    assert dom0.err(XsType.TRANSACTION_END, b"T\0", tx) == "EAGAIN"
    # Abort discards; the id is gone afterwards.
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    dom0.write("/t/c", b"1", tx)
    assert dom0.ok(XsType.TRANSACTION_END, b"F\0", tx) == b"OK\0"
    assert dom0.err(XsType.READ, b"/t/c\0") == "ENOENT"
    assert dom0.err(XsType.READ, b"/t/a\0", tx) == "ENOENT"
    # No nested start inside a transaction.
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    assert dom0.err(XsType.TRANSACTION_START, b"\0", tx) == "EBUSY"
    other.close()


def test_transaction_commit_creates_and_removes(dom0):
    dom0.write("/tx/old/x", b"1")
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    dom0.write("/tx/new/deep", b"v", tx)
    dom0.ok(XsType.RM, b"/tx/old\0", tx)
    assert dom0.ls("/tx", tx) == ["new"]
    assert dom0.ls("/tx") == ["old"]
    dom0.ok(XsType.TRANSACTION_END, b"T\0", tx)
    assert dom0.ls("/tx") == ["new"] and dom0.read("/tx/new/deep") == b"v"


def test_e2big_reply_and_directory_part(dom0):
    names = [f"child-with-a-long-name-{i:04d}" for i in range(300)]  # ~9 KiB of names
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    for n in names:
        dom0.write(f"/big/{n}", b"", tx)
    dom0.ok(XsType.TRANSACTION_END, b"T\0", tx)
    assert dom0.err(XsType.DIRECTORY, b"/big\0") == "E2BIG"
    got: list[bytes] = []
    off = 0
    gens = set()
    while True:
        reply = dom0.ok(XsType.DIRECTORY_PART, b"/big\0" + str(off).encode() + b"\0")
        assert len(reply) <= 4096
        gen, _, rest = reply.partition(b"\0")
        gens.add(gen)
        if rest == b"\0":
            break
        done = rest.endswith(b"\0\0")
        part = wire.split_strings(rest[:-1] if done else rest)
        got += part
        off += sum(len(p) + 1 for p in part)
        if done:
            break
    assert [g.decode() for g in got] == names and len(gens) == 1


def test_eexist_duplicate_watch(dom0):
    dom0.watch("/w", "t")
    assert dom0.err(XsType.WATCH, b"/w\0t\0") == "EEXIST"
    dom0.watch("/w", "t2")


def test_quotas(sockdir):
    with XenstoredStandIn(os.path.join(sockdir, "q"), quota_nodes=5, quota_watches=2) as xs:
        d0 = Raw(xs.socket_path)
        d0.write("/local/domain/6", b"")
        d0.set_perms("/local/domain/6", "n6")
        g = Raw(xs.domain_socket(6))  # owns 1 node already
        g.write("a", b"")
        g.write("b/c", b"")
        assert g.err(XsType.WRITE, b"d/e\0x") == "ENOSPC"
        g.write("d", b"")
        assert g.err(XsType.WRITE, b"f\0") == "ENOSPC"
        d0.write("/local/domain/6/f", b"")  # Dom0 has no quota
        g.watch("a", "1")
        g.watch("b", "1")
        assert g.err(XsType.WATCH, S("d", "1")) == "E2BIG"
        assert g.err(XsType.WRITE, b"a\0" + b"x" * 2049) == "ENOSPC"
        d0.close()
        g.close()


# ---------------------------------------------------------------- watches


def test_watch_initial_event_and_descendants(dom0, xs):
    other = Raw(xs.socket_path)
    dom0.watch("/w", "tok")
    assert dom0.event() == ("/w", "tok")  # fired once straight away, after the OK
    other.write("/w/a/b", b"1")
    assert dom0.event() == ("/w/a/b", "tok")  # only the written path, not the created parents
    other.write("/wx", b"1")  # not a child of /w
    other.set_perms("/w/a", "n0", "r1")
    assert dom0.event() == ("/w/a", "tok")
    other.ok(XsType.MKDIR, b"/w/a\0")  # already exists: no event
    other.ok(XsType.RM, b"/w/a\0")
    # One event for the removed node; removed descendants only match watches set exactly on them.
    assert dom0.event() == ("/w/a", "tok")
    dom0.no_event()
    dom0.ok(XsType.UNWATCH, b"/w\0tok\0")
    other.write("/w/c", b"1")
    dom0.no_event()
    other.close()


def test_rm_of_ancestor_fires_watch_on_descendant(dom0, xs):
    other = Raw(xs.socket_path)
    other.write("/anc/x/y", b"1")
    dom0.watch("/anc/x/y", "deep")
    assert dom0.event() == ("/anc/x/y", "deep")
    other.ok(XsType.RM, b"/anc\0")
    assert dom0.event() == ("/anc/x/y", "deep")
    dom0.no_event()
    other.close()


def test_relative_watch_paths(dom0, guest):
    guest.watch("dev", "rel")
    assert guest.event() == ("dev", "rel")
    dom0.write("/local/domain/5/dev/vbd", b"1")
    assert guest.event() == ("dev/vbd", "rel")


def test_unprivileged_watcher_only_sees_readable_nodes(dom0, guest):
    guest.watch("/local/domain/0", "peek")
    assert guest.event() == ("/local/domain/0", "peek")
    dom0.write("/local/domain/0/hidden", b"1")
    guest.no_event()
    dom0.write("/local/domain/5/visible", b"1")  # inherits n5: readable by the guest
    guest.watch("/local/domain/5", "home")
    assert guest.event() == ("/local/domain/5", "home")
    dom0.write("/local/domain/5/visible", b"2")
    assert guest.event() == ("/local/domain/5/visible", "home")


def test_transaction_events_fire_on_commit_only(dom0, xs):
    watcher = Raw(xs.socket_path)
    watcher.watch("/te", "t")
    assert watcher.event() == ("/te", "t")
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    dom0.write("/te/a", b"1", tx)
    watcher.no_event()
    dom0.ok(XsType.TRANSACTION_END, b"T\0", tx)
    assert watcher.event() == ("/te/a", "t")
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    dom0.write("/te/b", b"1", tx)
    dom0.ok(XsType.TRANSACTION_END, b"F\0", tx)
    watcher.no_event()
    watcher.close()


def test_special_watches_introduce_release(dom0, xs):
    g = Raw(xs.domain_socket(7))
    g.watch("@introduceDomain", "gi")
    assert g.event() == ("@introduceDomain", "gi")
    dom0.watch("@introduceDomain", "i")
    dom0.watch("@releaseDomain", "r")
    assert dom0.event() == ("@introduceDomain", "i")
    assert dom0.event() == ("@releaseDomain", "r")
    dom0.ok(XsType.INTRODUCE, S("7", "4096", "3"))
    assert dom0.event() == ("@introduceDomain", "i")
    assert dom0.ok(XsType.IS_DOMAIN_INTRODUCED, b"7\0") == b"T\0"
    g.no_event()  # unprivileged: the special node is not readable
    dom0.ok(XsType.INTRODUCE, S("7", "4096", "3"))  # again: no new event
    dom0.no_event()
    # The guest's own nodes go away with it; Dom0-owned nodes stay.
    dom0.write("/local/domain/7", b"")
    dom0.set_perms("/local/domain/7", "n7", "r0")
    dom0.write("/vm/7", b"keep")
    dom0.ok(XsType.RELEASE, b"7\0")
    assert dom0.event() == ("@releaseDomain", "r")
    assert dom0.ok(XsType.IS_DOMAIN_INTRODUCED, b"7\0") == b"F\0"
    assert dom0.err(XsType.READ, b"/local/domain/7\0") == "ENOENT"
    assert dom0.read("/vm/7") == b"keep"
    with pytest.raises((ConnectionError, OSError)):
        g.ok(XsType.READ, b"/local/domain/7\0")  # the domain's connection was dropped
    g.close()
    # Granting read on the special node lets an unprivileged watcher see it (as xenstored does).
    dom0.set_perms("@introduceDomain", "n0", "r8")
    g8 = Raw(xs.domain_socket(8))
    g8.watch("@introduceDomain", "x")
    assert g8.event() == ("@introduceDomain", "x")
    dom0.ok(XsType.INTRODUCE, S("9", "1", "1"))
    assert g8.event() == ("@introduceDomain", "x")
    g8.close()


def test_reset_watches(dom0, xs):
    other = Raw(xs.socket_path)
    dom0.watch("/rw", "t")
    assert dom0.event() == ("/rw", "t")
    dom0.ok(XsType.RESET_WATCHES, b"\0")
    other.write("/rw", b"1")
    dom0.no_event()
    other.close()


# ---------------------------------------------------------------- bad frames and fuzz


def _raw_sock(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def _closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_oversized_frame_drops_only_that_connection(xs, dom0):
    bad = _raw_sock(xs.socket_path)
    bad.sendall(wire.HEADER.pack(XsType.WRITE, 1, 0, 4097) + b"x" * 100)
    assert _closed_by_server(bad)
    bad.close()
    dom0.write("/still", b"fine")
    assert dom0.read("/still") == b"fine"


def test_truncated_frame_then_eof(xs, dom0):
    for chunk in (wire.encode(XsType.WRITE, b"/trunc\0value")[:20], b"\x01\x02\x03"):
        bad = _raw_sock(xs.socket_path)
        bad.sendall(chunk)
        bad.close()
    assert dom0.err(XsType.READ, b"/trunc\0") == "ENOENT"
    assert dom0.read("/tool") == b""


def test_pipelined_requests_answered_in_order(xs):
    s = _raw_sock(xs.socket_path)
    s.sendall(b"".join(wire.encode(XsType.WRITE, f"/pipe/{i}\0{i}".encode(), req_id=i) for i in range(50)))
    dec = wire.FrameDecoder()
    msgs: list[wire.Message] = []
    while len(msgs) < 50:
        msgs += dec.feed(s.recv(65536))
    assert [m.req_id for m in msgs] == list(range(50)) and {m.payload for m in msgs} == {b"OK\0"}
    s.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.builds(
                lambda t, r, x, p: wire.HEADER.pack(t, r, x, len(p)) + p,
                st.integers(0, 30),
                st.integers(0, 2**32 - 1),
                st.sampled_from([0, 0, 1, 2**32 - 1]),
                st.binary(max_size=200),
            ),
        ),
        max_size=6,
    )
)
def test_fuzz_raw_bytes(xs, chunks):
    s = _raw_sock(xs.socket_path)
    s.settimeout(2)
    try:
        for c in chunks:
            s.sendall(c)
    except OSError:
        pass  # the server may drop a connection sending garbage
    s.close()
    fresh = Raw(xs.socket_path)
    fresh.write("/fuzz-ok", b"1")
    assert fresh.read("/fuzz-ok") == b"1"
    fresh.close()


# ---------------------------------------------------------------- persistence and command line


def test_store_survives_restart(sockdir):
    sock, store = os.path.join(sockdir, "p"), os.path.join(sockdir, "p.json")
    with XenstoredStandIn(sock, store) as xs:
        c = Raw(sock)
        c.write("/keep/a", b"\x00\xffbin")
        c.write("/keep/b", b"2")
        c.set_perms("/keep/b", "n3", "r0")
        c.set_perms("@releaseDomain", "n0", "r3")
        c.ok(XsType.INTRODUCE, S("3", "1", "1"))
        # durable before the reply: the file already holds the last write
        with open(store) as f:
            doc = json.load(f)
        assert ["/keep/b", "2", ["n3", "r0"]] in doc["nodes"]
        assert xs.saves >= 1
        c.close()
    assert not os.path.exists(store + ".tmp")
    with XenstoredStandIn(sock, store):
        c = Raw(sock)
        assert c.read("/keep/a") == b"\x00\xffbin"
        assert c.ls("/keep") == ["a", "b"]
        assert c.perms("/keep/b") == ["n3", "r0"]
        assert c.perms("@releaseDomain") == ["n0", "r3"]
        assert c.ok(XsType.IS_DOMAIN_INTRODUCED, b"3\0") == b"T\0"
        c.close()


def test_command_line_ready_line_and_sigterm(sockdir):
    sock = os.path.join(sockdir, "cli")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sevd_sim.xenstored", "--socket", sock, "--domain-socket", f"4={sock}4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"xenstored stand-in ready on {sock}") and "dom4=" in line
        c = Raw(sock)
        c.write("/local/domain/4/x", b"1")
        c.set_perms("/local/domain/4/x", "n4")
        g = Raw(sock + "4")
        assert g.read("x") == b"1"
        g.close()
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not os.path.exists(sock)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_event_precedes_reply_of_the_request_causing_it(xs):
    s = _raw_sock(xs.socket_path)
    dec = wire.FrameDecoder()

    def frames(n: int) -> list[wire.Message]:
        got: list[wire.Message] = []
        while len(got) < n:
            got += dec.feed(s.recv(65536))
        return got

    s.sendall(wire.encode(XsType.WATCH, S("/order", "t"), req_id=1))
    assert [m.type for m in frames(2)] == [XsType.WATCH, XsType.WATCH_EVENT]  # OK, then the first event
    s.sendall(wire.encode(XsType.WRITE, b"/order/x\0" + b"1", req_id=2))
    assert [(m.type, m.req_id) for m in frames(2)] == [(XsType.WATCH_EVENT, 0), (XsType.WRITE, 2)]
    s.close()


def test_deep_tree_and_binary_token(dom0, xs):
    deep = "/deep" + "/d" * 1400  # ~2800 bytes, deeper than Python's recursion limit
    dom0.write(deep, b"1")
    assert dom0.read(deep) == b"1"
    s = _raw_sock(xs.socket_path)
    s.sendall(wire.encode(XsType.WATCH, b"/deep\0tok\xff\x80\0", req_id=1))
    dec = wire.FrameDecoder()
    got: list[wire.Message] = []
    while len(got) < 2:
        got += dec.feed(s.recv(65536))
    assert got[1].payload == b"/deep\0tok\xff\x80\0"  # tokens come back byte for byte
    s.close()
    dom0.ok(XsType.RM, b"/deep\0")
    assert dom0.err(XsType.READ, b"/deep\0") == "ENOENT"
