"""Real xenstore clients against the stand-in: Debian's xenstore-utils (libxenstore) and pyxs.

If these work, the stand-in speaks the protocol the way Xen's own library expects it.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import tempfile
import threading

import pytest

from sevd_sim.xenstored import XenstoredStandIn

pyxs = pytest.importorskip("pyxs")

needs_utils = pytest.mark.skipif(shutil.which("xenstore-read") is None, reason="xenstore-utils not installed")


@pytest.fixture
def xs():
    d = tempfile.mkdtemp(prefix="xsc", dir="/tmp")
    server = XenstoredStandIn(os.path.join(d, "sock"), init_dom0=True)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(d, ignore_errors=True)


def run(xs, *argv: str, sock: str | None = None, timeout: float = 10) -> subprocess.CompletedProcess:
    env = dict(os.environ, XENSTORED_PATH=sock or xs.socket_path)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def ok(xs, *argv: str, sock: str | None = None) -> str:
    p = run(xs, *argv, sock=sock)
    assert p.returncode == 0, (argv, p.stdout, p.stderr)
    return p.stdout


# ---------------------------------------------------------------- Debian xenstore-utils


@needs_utils
def test_cli_write_read_list_exists_rm(xs):
    ok(xs, "xenstore-write", "/vm/1/name", "guest-one", "/vm/1/uuid", "1234")
    assert ok(xs, "xenstore-read", "/vm/1/name", "/vm/1/uuid") == "guest-one\n1234\n"
    assert ok(xs, "xenstore-list", "/vm/1") == "name\nuuid\n"
    assert run(xs, "xenstore-exists", "/vm/1/name").returncode == 0
    assert run(xs, "xenstore-exists", "/vm/1/nope").returncode != 0
    p = run(xs, "xenstore-read", "/vm/1/nope")
    assert p.returncode != 0 and "couldn't read" in p.stderr
    ok(xs, "xenstore-rm", "/vm/1/uuid")
    assert ok(xs, "xenstore-list", "/vm/1") == "name\n"
    ok(xs, "xenstore-rm", "/vm")
    assert run(xs, "xenstore-exists", "/vm").returncode != 0


@needs_utils
def test_cli_ls_and_chmod(xs):
    ok(xs, "xenstore-write", "/local/domain/3/name", "g3", "/local/domain/3/dev/x", "1")
    ok(xs, "xenstore-chmod", "-r", "/local/domain/3", "n3", "r0")
    listing = ok(xs, "xenstore-ls", "-f", "-p", "/local/domain/3")
    assert '/local/domain/3/name = "g3"' in listing
    assert "(n3,r0)" in listing
    full = ok(xs, "xenstore-ls")
    assert "tool = " in full and 'name = "Domain-0"' in full
    # The guest can read its own tree but not Dom0's.
    gsock = xs.domain_socket(3)
    assert ok(xs, "xenstore-read", "name", sock=gsock) == "g3\n"
    assert run(xs, "xenstore-read", "/local/domain/0/name", sock=gsock).returncode != 0
    p = run(xs, "xenstore-write", "/local/domain/0/name", "evil", sock=gsock)
    assert p.returncode != 0
    assert ok(xs, "xenstore-read", "/local/domain/0/name") == "Domain-0\n"


@needs_utils
def test_cli_list_large_directory_uses_directory_part(xs):
    with pyxs.Client(unix_socket_path=xs.socket_path) as c:
        c.transaction()
        names = [f"a-rather-long-child-name-{i:04d}" for i in range(250)]
        for n in names:
            c.write(f"/big/{n}".encode(), b"1")
        assert c.commit()
    # More than 4096 bytes of names: DIRECTORY answers E2BIG, libxenstore falls back to DIRECTORY_PART.
    assert ok(xs, "xenstore-list", "/big").split() == names


@needs_utils
def test_cli_watch_bounded(xs):
    ok(xs, "xenstore-write", "/watched", "0")
    env = dict(os.environ, XENSTORED_PATH=xs.socket_path)
    proc = subprocess.Popen(["xenstore-watch", "-n", "3", "/watched"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "/watched"  # the initial event
        ok(xs, "xenstore-write", "/watched/a", "1")
        ok(xs, "xenstore-write", "/elsewhere", "1")
        ok(xs, "xenstore-rm", "/watched/a")
        out, _ = proc.communicate(timeout=10)
        assert out.split() == ["/watched/a", "/watched/a"]
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- pyxs


def test_pyxs_basic_operations(xs):
    with pyxs.Client(unix_socket_path=xs.socket_path) as c:
        c.SU = True  # pyxs checks /proc/xen/capabilities before RELEASE/RESUME/SET_TARGET; no Xen here
        c.write(b"/p/a", b"1")
        c.mkdir(b"/p/dir")
        assert c.read(b"/p/a") == b"1"
        assert sorted(c.list(b"/p")) == [b"a", b"dir"]
        assert c.exists(b"/p/a") and not c.exists(b"/p/zz")
        assert c.get_perms(b"/p/a") == [b"n0"]
        c.set_perms(b"/p/a", [b"n0", b"r5"])
        assert c.get_perms(b"/p/a") == [b"n0", b"r5"]
        assert c.get_domain_path(5) == b"/local/domain/5"
        assert c.is_domain_introduced(0)
        c.introduce_domain(5, 1234, 7)
        assert c.is_domain_introduced(5)
        c.release_domain(5)
        assert not c.is_domain_introduced(5)
        c.delete(b"/p")
        assert not c.exists(b"/p")
        with pytest.raises(pyxs.PyXSError):
            c.read(b"/p/a")


def test_pyxs_transactions(xs):
    with pyxs.Client(unix_socket_path=xs.socket_path) as a, pyxs.Client(unix_socket_path=xs.socket_path) as b:
        a.write(b"/cnt", b"0")
        a.transaction()
        v = int(a.read(b"/cnt"))
        a.write(b"/cnt", str(v + 1).encode())
        assert a.commit()
        assert b.read(b"/cnt") == b"1"
        a.transaction()
        a.read(b"/cnt")
        a.write(b"/cnt", b"100")
        b.write(b"/cnt", b"50")  # intervening write
        assert not a.commit()  # EAGAIN
        assert b.read(b"/cnt") == b"50"
        a.transaction()
        a.write(b"/cnt", b"7")
        a.rollback()
        assert a.read(b"/cnt") == b"50"


def _next_event(monitor, timeout: float = 5.0):
    """Monitor.wait() blocks forever: take one event on a helper thread, bounded."""
    q: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: q.put(next(monitor.wait())), daemon=True).start()
    return q.get(timeout=timeout)


def test_pyxs_watches(xs):
    with pyxs.Client(unix_socket_path=xs.socket_path) as c:
        m = c.monitor()
        c.SU = True  # see test_pyxs_basic_operations
        m.watch(b"/pw", b"tok")
        ev = _next_event(m)
        assert (ev.path, ev.token) == (b"/pw", b"tok")
        with pyxs.Client(unix_socket_path=xs.socket_path) as other:
            other.write(b"/pw/x", b"1")
            ev = _next_event(m)
            assert (ev.path, ev.token) == (b"/pw/x", b"tok")
            other.delete(b"/pw/x")
            ev = _next_event(m)
            assert ev.path == b"/pw/x"
        m.watch(b"@releaseDomain", b"rel")
        assert _next_event(m).path == b"@releaseDomain"
        c.introduce_domain(9, 1, 1)
        c.release_domain(9)
        assert _next_event(m) == (b"@releaseDomain", b"rel")
        m.unwatch(b"/pw", b"tok")
        m.unwatch(b"@releaseDomain", b"rel")


def test_pyxs_as_guest(xs):
    with pyxs.Client(unix_socket_path=xs.socket_path) as d0:
        d0.write(b"/local/domain/5/name", b"g")
        d0.set_perms(b"/local/domain/5", [b"n5", b"r0"])
        d0.set_perms(b"/local/domain/5/name", [b"n5", b"r0"])
    with pyxs.Client(unix_socket_path=xs.domain_socket(5)) as g:
        assert g.read(b"/local/domain/5/name") == b"g"
        g.write(b"/local/domain/5/data/state", b"1")
        with pytest.raises(pyxs.PyXSError) as ei:
            g.read(b"/local/domain/0/name")
        assert ei.value.args[0] == 13  # EACCES
        with pytest.raises(pyxs.PyXSError):
            g.write(b"/tool/xenstored/x", b"1")
