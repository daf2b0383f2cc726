"""A small, thread-safe wrapper over pyxs for the daemon and the toolstack.

pyxs wants bytes and refuses empty values; this wrapper speaks str, maps "absent" to None and
serialises requests (and whole transactions) with one lock.  Watch events are read from
pyxs' event queue with a timeout (its Monitor.wait would block forever), and a lost connection
surfaces as XenstoreLost.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyxs
from pyxs._internal import Op, Packet, next_rq_id
from pyxs.helpers import error as pyxs_error

from sevd.errors import SevdError

T = TypeVar("T")


class XenstoreError(SevdError):
    pass


# xenstored's limit on one message's payload (Xen's XENSTORE_PAYLOAD_MAX): a write carries the path, a NUL
# and the value in it.
PAYLOAD_MAX = 4096


def _is_absent(exc: Exception) -> bool:
    return isinstance(exc, pyxs.PyXSError) and bool(exc.args) and exc.args[0] == errno.ENOENT


class Xenstore:
    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        self._lock = threading.RLock()
        self._monitor: Any = None  # pyxs' Monitor, opened by the first watch
        self._tokens: list[str] = []
        try:
            self.client = pyxs.Client(unix_socket_path=socket_path)
            self.client.connect()
        except (OSError, pyxs.PyXSError) as exc:
            raise XenstoreError(f"xenstore at {socket_path}: cannot connect ({exc})") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def read(self, path: str) -> str | None:
        with self._lock:
            try:
                return self.client.read(path.encode()).decode(errors="replace")  # validation names bad bytes
            except pyxs.PyXSError as exc:
                if _is_absent(exc):
                    return None
                raise

    def read_many(self, paths: list[str]) -> list[str | None]:
        """Each path's value (None when absent), the requests pipelined: all of them leave in one send
        before the first reply is awaited, so N reads cost about one round trip, not N (xenstored
        answers a connection's requests in order)."""
        if not paths:
            return []
        with self._lock:
            router = self.client.router
            tx_id = self.client.tx_id
            ids = [next_rq_id() for _ in paths]
            replies = _Replies(len(ids))
            wire = b"".join(
                Packet._struct.pack(Op.READ, rq_id, tx_id, len(path) + 1) + path.encode() + b"\x00"
                for rq_id, path in zip(ids, paths, strict=True)
            )
            with router.send_lock:  # as pyxs' Router.send: the replies are awaited before the requests leave
                if not router.is_connected:
                    raise XenstoreLost(f"xenstore at {self.socket_path}: connection lost")
                router.rvars.update(dict.fromkeys(ids, replies))
                router.connection.transport.send(wire)
            replies.done.wait()
        values: list[str | None] = []
        for rq_id in ids:
            reply = replies.packets[rq_id]
            if reply.op != Op.ERROR:
                values.append(reply.payload.rstrip(b"\x00").decode(errors="replace"))
                continue
            exc = pyxs_error(reply.payload[:-1])  # "ENOENT\0": as pyxs turns it into an exception
            if not _is_absent(exc):
                raise exc
            values.append(None)
        return values

    def list(self, path: str) -> list[str]:
        with self._lock:
            try:
                return [n.decode() for n in self.client.list(path.encode())]
            except pyxs.PyXSError as exc:
                if _is_absent(exc):
                    return []
                raise

    def read_dir(self, path: str) -> dict[str, str]:
        """Values of the direct children of `path` (children that vanish meanwhile are skipped)."""
        out = {}
        for name in self.list(path):
            value = self.read(f"{path}/{name}")
            if value is not None:
                out[name] = value
        return out

    def write(self, path: str, value: str) -> None:
        # xenstore allows empty values but pyxs does not: an empty node is written as MKDIR.
        size = len(path.encode()) + 1 + len(value.encode())
        if size > PAYLOAD_MAX:  # refused here, naming sizes only: the value may be a secret
            raise XenstoreError(f"{path}: {size} bytes with the path exceed xenstore's {PAYLOAD_MAX}-byte payload")
        with self._lock:
            if value:
                self.client.write(path.encode(), value.encode())
            else:
                self.client.mkdir(path.encode())

    def write_many(self, base: str, values: dict[str, str]) -> None:
        """All of `values` under `base` atomically, in order (so a trigger node written last is seen last)."""

        def body() -> None:
            for key, value in values.items():
                self.write(f"{base}/{key}", value)

        self.transact(body)

    def rm(self, path: str) -> None:
        with self._lock:
            try:
                self.client.delete(path.encode())
            except pyxs.PyXSError as exc:
                if not _is_absent(exc):
                    raise

    def set_perms(self, path: str, perms: tuple[str, ...]) -> None:
        with self._lock:
            self.client.set_perms(path.encode(), [p.encode() for p in perms])

    def introduce(self, domid: int, mfn: int, port: int) -> None:
        with self._lock:
            self.client.introduce_domain(domid, mfn, port)

    def release(self, domid: int) -> None:
        with self._lock:
            # pyxs decides "am I Dom0?" from /proc/xen/capabilities, absent without Xen; the
            # privileged socket is proof enough.
            self.client.SU = True
            self.client.release_domain(domid)

    def transact(self, body: Callable[[], T], attempts: int = 20) -> T:
        """Run `body` in a transaction, again from the start when xenstored answers EAGAIN (a conflict).

        pyxs reports EAGAIN as commit() returning False; ignoring that would silently drop the writes.
        """
        with self._lock:
            for _ in range(attempts):
                self.client.transaction()
                try:
                    result = body()
                except BaseException:
                    with contextlib.suppress(Exception):
                        self.client.rollback()
                    raise
                if self.client.commit():
                    return result
            raise XenstoreError(f"xenstore at {self.socket_path}: transaction still conflicting after {attempts} tries")

    # -- watches -------------------------------------------------------------------------------------------

    def watch(self, paths: Sequence[str]) -> None:
        """Watch `paths` on this connection; events are read with `next_event`."""
        if self._monitor is None:
            self._monitor = self.client.monitor()
            # When the connection dies, pyxs' router thread ends: wake next_event with a sentinel.
            router = self.client.router
            threading.Thread(target=self._on_router_exit, args=(router,), name="xenstore-lost", daemon=True).start()
        for i, path in enumerate(paths):
            token = f"sevd-{len(self._tokens) + i}"
            with self._lock:
                self._monitor.watch(path.encode(), token.encode())
        self._tokens.extend(paths)

    def _on_router_exit(self, router: Any) -> None:
        """pyxs' router thread ended (connection gone): fail the requests still waiting for a reply
        (pyxs would leave them blocked forever) and wake next_event."""
        router.thread.join()
        for rq_id, rvar in list(router.rvars.items()):
            rvar.set(Packet(Op.ERROR, b"EIO\x00", rq_id=rq_id))
        router.rvars.clear()
        if self._monitor is not None:
            self._monitor.events.put(_LOST)

    def next_event(self, timeout: float | None) -> str | None:
        """The path of the next watch event, or None after `timeout` seconds; raises XenstoreLost."""
        assert self._monitor is not None, "watch() first"
        try:
            event = self._monitor.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event is _WAKE:
            return None
        if event is _LOST:
            raise XenstoreLost(f"xenstore at {self.socket_path}: connection lost")
        return event[0].decode()

    def wake(self) -> None:
        """Make a blocked next_event return None now (safe from signal handlers and other threads)."""
        if self._monitor is not None:
            self._monitor.events.put(_WAKE)


class _Replies:
    """Where pyxs' router puts the replies to a pipelined batch (it calls `set` as on its own RVar): one
    wake-up for the whole batch instead of one per reply."""

    def __init__(self, count: int):
        self.packets: dict[int, Packet] = {}
        self.count = count
        self.done = threading.Event()

    def set(self, packet: Packet) -> None:
        self.packets[packet.rq_id] = packet
        if len(self.packets) == self.count:
            self.done.set()


class XenstoreLost(XenstoreError):
    """The connection to xenstored is gone; reconnect, re-watch and rescan."""


_LOST = object()
_WAKE = object()
