"""A xenstored stand-in speaking the real xenstore wire protocol on Unix sockets.

No Xen runs here, so tests and the demo need something that answers like Xen's C xenstored. This module is
that: one asyncio loop, one in-memory tree, the semantics of ``tools/xenstored`` (paths, permissions, watches,
transactions with conflict detection, INTRODUCE/RELEASE with the ``@introduceDomain``/``@releaseDomain``
special watches) and an optional store file so a restarted stand-in keeps its contents.

Every connection speaks for one domain. Connections on the main socket speak for Dom0 (privileged), like the
real daemon's socket connections; ``domain_socket(domid)`` opens an extra listening socket whose connections
speak for ``domid`` (unprivileged unless 0), which is how a test acts as a guest.

In-process::

    with XenstoredStandIn("/tmp/xs.sock", store_path="/tmp/xs.json") as xs:
        guest_sock = xs.domain_socket(5)
        ...

Command line (foreground, SIGTERM/SIGINT stop it)::

    python -m sevd_sim.xenstored --socket /tmp/xs.sock [--store FILE] [--domain-socket 5=/tmp/xs5.sock]

See docs/xenstored-stand-in.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable

from sevd_sim import wire
from sevd_sim.wire import XsType

__all__ = ["XenstoredStandIn", "XsError", "main"]

log = logging.getLogger("sevd.sim.xenstored")

PERM_READ = 1
PERM_WRITE = 2
PERM_OWNER = 4
_PERM_BITS = {"n": 0, "r": PERM_READ, "w": PERM_WRITE, "b": PERM_READ | PERM_WRITE}

_VALID_PATH = re.compile(r"[A-Za-z0-9\-/_@]*")
_ATOI = re.compile(rb"\s*([+-]?\d+)")

STORE_FORMAT = "sevd-xenstored-standin/1"

Perm = tuple[str, int]  # ("r", 5)


class XsError(Exception):
    """A request failed with the xenstore error ``name`` (one of wire.XSD_ERRORS)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    value: bytes
    perms: tuple[Perm, ...]
    children: tuple[str, ...]
    gen: int

    @property
    def owner(self) -> int:
        return self.perms[0][1]


def _perm_strings(perms: Iterable[Perm]) -> list[str]:
    return [f"{k}{d}" for k, d in perms]


def _parse_perms(items: Iterable[bytes]) -> tuple[Perm, ...]:
    out = []
    for item in items:
        if len(item) < 2 or chr(item[0]) not in _PERM_BITS or not item[1:].isdigit():
            raise XsError("EINVAL")
        domid = int(item[1:])
        if domid > 0xFFFF:
            raise XsError("EINVAL")
        out.append((chr(item[0]), domid))
    return tuple(out)


def _atoi(s: bytes) -> int:
    m = _ATOI.match(s)
    return int(m.group(1)) if m else 0


def _parent(path: str) -> str:
    i = path.rfind("/", 1)
    return path[:i] if i > 0 else "/"


def _basename(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def _child(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def _is_child(child: str, parent: str) -> bool:
    if parent == "/":
        return True
    return child == parent or child.startswith(parent + "/")


class Store:
    """path -> immutable Node, plus nodes-per-owner counts (for quotas). Copying is a cheap snapshot."""

    __slots__ = ("nodes", "owners")

    def __init__(self, nodes: dict[str, Node] | None = None, owners: Counter | None = None):
        self.nodes: dict[str, Node] = nodes if nodes is not None else {}
        self.owners: Counter = owners if owners is not None else Counter(n.owner for n in self.nodes.values())

    def copy(self) -> Store:
        return Store(dict(self.nodes), Counter(self.owners))

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def need(self, path: str) -> Node:
        """The node at `path`, which the caller knows exists (the root, a node it just wrote)."""
        node = self.nodes.get(path)
        if node is None:
            raise KeyError(f"xenstored stand-in: {path} vanished from the store")
        return node

    def put(self, path: str, node: Node) -> None:
        old = self.nodes.get(path)
        if old is not None:
            self.owners[old.owner] -= 1
        self.owners[node.owner] += 1
        self.nodes[path] = node

    def delete(self, path: str) -> None:
        old = self.nodes.pop(path, None)
        if old is not None:
            self.owners[old.owner] -= 1


@dataclasses.dataclass(slots=True)
class Watch:
    node: str  # canonical path or @special
    token: str
    prefix_len: int  # >0 for relative watches: events strip the domain home prefix


@dataclasses.dataclass(slots=True)
class Event:
    """A change to report: ``path`` changed; ``exact`` only matches watches on that very path."""

    path: str
    exact: bool
    perms: tuple[Perm, ...] | None  # the node's perms when it changed (None: node unknown)
    parent_perms: tuple[Perm, ...] | None
    old_perms: tuple[Perm, ...] | None = None


class Transaction:
    __slots__ = ("id", "store", "accessed", "modified", "events")

    def __init__(self, tx_id: int, store: Store):
        self.id = tx_id
        self.store = store  # snapshot taken at TRANSACTION_START
        self.accessed: dict[str, int | None] = {}  # path -> generation seen at start (None: absent)
        self.modified: set[str] = set()
        self.events: list[Event] = []


class Ctx:
    """What one request works on: the live store, or the snapshot of its transaction."""

    __slots__ = ("server", "conn", "tx", "store", "events", "changed", "after")

    def __init__(self, server: XenstoredStandIn, conn: Connection, tx: Transaction | None):
        self.server = server
        self.conn = conn
        self.tx = tx
        self.store = tx.store if tx else server.store
        self.events: list[Event] = []
        self.changed = False
        self.after: list[Callable[[], None]] = []  # run once the reply is queued (WATCH's first event)

    def read(self, path: str) -> Node | None:
        node = self.store.get(path)
        if self.tx is not None and path not in self.tx.accessed:
            self.tx.accessed[path] = node.gen if node else None
        return node

    def write(self, path: str, node: Node) -> None:
        """Store ``node`` at ``path`` with a fresh generation number."""
        node = dataclasses.replace(node, gen=self.server._next_gen())
        if self.tx is not None:
            if path not in self.tx.accessed:
                old = self.store.get(path)
                self.tx.accessed[path] = old.gen if old else None
            self.tx.modified.add(path)
        self.store.put(path, node)
        self.changed = True

    def delete(self, path: str) -> None:
        if self.tx is not None:
            if path not in self.tx.accessed:
                old = self.store.get(path)
                self.tx.accessed[path] = old.gen if old else None
            self.tx.modified.add(path)
        self.store.delete(path)
        self.changed = True

    def fire(self, path: str, exact: bool = False, old_perms=None, node: Node | None = None, parent=None):
        if node is None:
            node = self.store.get(path)
        if parent is None and not path.startswith("@"):
            parent = self.store.get(_parent(path))
        ev = Event(path, exact, node.perms if node else None, parent.perms if parent else None, old_perms)
        (self.tx.events if self.tx is not None else self.events).append(ev)


class Connection(asyncio.Protocol):
    def __init__(self, server: XenstoredStandIn, domid: int, is_domain: bool):
        self.server = server
        self.domid = domid
        self.is_domain = is_domain  # True: stands for the domain's ring; False: a Dom0 socket client
        self.transport: asyncio.Transport | None = None
        self.decoder = wire.FrameDecoder()
        self.watches: list[Watch] = []
        self.txs: dict[int, Transaction] = {}
        self.next_tx_id = 1
        self.out: list[bytes] = []
        self.closed = False
        self.peer_pid = 0

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    @property
    def home(self) -> str:
        return f"/local/domain/{self.domid}"

    # asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport
        self.server._conns.add(self)
        sock = transport.get_extra_info("socket")
        try:  # the client's pid, for per-process request accounting (benchmarks)
            self.peer_pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        except (OSError, AttributeError):
            self.peer_pid = 0

    def connection_lost(self, exc):
        self.closed = True
        self.server._conns.discard(self)
        self.watches.clear()
        self.txs.clear()

    def data_received(self, data: bytes) -> None:
        server = self.server
        try:
            for msg in self.decoder.feed(data):
                if self.closed:
                    break
                server._handle(self, msg)
            if self.decoder.too_large and not self.closed:
                log.warning("client (dom%d) sent an oversized frame: dropping the connection", self.domid)
                self.drop()
        except Exception:  # never let one client take the server down
            log.exception("internal error while serving dom%d; dropping the connection", self.domid)
            self.drop()
        server._end_batch()

    def send(self, frame: bytes) -> None:
        if not self.closed:
            self.out.append(frame)
            self.server._pending_out.add(self)

    def flush(self) -> None:
        if self.out and not self.closed and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def drop(self) -> None:
        """Close now, discarding queued output (xenstored's ignore_connection for a socket)."""
        self.out.clear()
        self.watches.clear()
        self.txs.clear()
        self.closed = True
        self.server._conns.discard(self)
        if self.transport is not None:
            self.transport.abort()


class XenstoredStandIn:
    """The stand-in server. ``start()`` runs it on a private thread; ``serve()`` runs it on the caller's loop.

    :param socket_path: the main socket (connections speak for Dom0).
    :param store_path: optional JSON store, loaded at start and rewritten atomically after each change.
    :param domain_sockets: ``{domid: path}`` extra sockets opened at start.
    :param init_dom0: also create ``/local/domain/0/{domid,name}`` as xen-init-dom0 does on a real host.
    :param quota_nodes, quota_watches, quota_transactions, quota_entry_size: limits for unprivileged domains
        (xenstored's defaults), answered with ENOSPC / E2BIG / ENOSPC / ENOSPC as xenstored 4.17 does.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike,
        store_path: str | os.PathLike | None = None,
        *,
        domain_sockets: dict[int, str | os.PathLike] | None = None,
        init_dom0: bool = False,
        quota_nodes: int = 1000,
        quota_watches: int = 128,
        quota_transactions: int = 10,
        quota_entry_size: int = 2048,
    ):
        self.socket_path = os.fspath(socket_path)
        self.store_path = os.fspath(store_path) if store_path is not None else None
        self.quota_nodes = quota_nodes
        self.quota_watches = quota_watches
        self.quota_transactions = quota_transactions
        self.quota_entry_size = quota_entry_size
        self._initial_domain_sockets = {int(k): os.fspath(v) for k, v in (domain_sockets or {}).items()}
        self.domain_socket_paths: dict[int, str] = {}
        self._gen = 0
        self.introduced: set[int] = {0}
        self.targets: dict[int, int] = {}
        self._conns: set[Connection] = set()
        self._pending_out: set[Connection] = set()
        self._dirty = False
        self.saves = 0
        self.requests = 0  # every request answered, for round-trip accounting in benchmarks
        self.requests_by_pid: Counter[int] = Counter()
        self.requests_by_pid_op: Counter[tuple[int, int]] = Counter()  # (pid, XsType): where they go
        self._servers: list[asyncio.AbstractServer] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.store = self._load() or self._fresh_store(init_dom0)

    # ------------------------------------------------------------------ store

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _fresh_store(self, init_dom0: bool) -> Store:
        s = Store()
        n0 = (("n", 0),)
        s.put("/", Node(b"", n0, ("tool",), self._next_gen()))
        s.put("/tool", Node(b"", n0, ("xenstored",), self._next_gen()))
        s.put("/tool/xenstored", Node(b"", n0, (), self._next_gen()))
        s.put(wire.SPECIAL_RELEASE, Node(b"", n0, (), self._next_gen()))
        s.put(wire.SPECIAL_INTRODUCE, Node(b"", n0, (), self._next_gen()))
        if init_dom0:
            root = s.need("/")
            s.put("/", dataclasses.replace(root, children=(*root.children, "local")))
            s.put("/local", Node(b"", n0, ("domain",), self._next_gen()))
            s.put("/local/domain", Node(b"", n0, ("0",), self._next_gen()))
            s.put("/local/domain/0", Node(b"", n0, ("domid", "name"), self._next_gen()))
            s.put("/local/domain/0/domid", Node(b"0", n0, (), self._next_gen()))
            s.put("/local/domain/0/name", Node(b"Domain-0", n0, (), self._next_gen()))
        self._dirty = True
        return s

    def _load(self) -> Store | None:
        if not self.store_path or not os.path.exists(self.store_path):
            return None
        with open(self.store_path, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("format") != STORE_FORMAT:
            raise ValueError(f"{self.store_path}: not a stand-in store ({doc.get('format')!r})")
        s = Store()
        kids: dict[str, list[str]] = {}
        for path, value, perms in doc["nodes"]:
            kids.setdefault(path, [])
            if path != "/" and not path.startswith("@"):
                kids.setdefault(_parent(path), []).append(_basename(path))
            s.put(
                path,
                Node(value.encode("latin-1"), _parse_perms(p.encode() for p in perms), (), self._next_gen()),
            )
        for path, names in kids.items():
            node = s.get(path)
            if node is None:
                raise ValueError(f"{self.store_path}: {path!r} has children but no node")
            s.put(path, dataclasses.replace(node, children=tuple(names)))
        self.introduced = {0, *doc.get("introduced", [])}
        self.targets = {int(k): v for k, v in doc.get("targets", {}).items()}
        return s

    def _dump_nodes(self) -> list:
        nodes = self.store.nodes
        out = []
        stack = ["/"]
        while stack:  # pre-order, children in order: parents always precede children
            path = stack.pop()
            node = nodes[path]
            out.append([path, node.value.decode("latin-1"), _perm_strings(node.perms)])
            stack.extend(_child(path, c) for c in reversed(node.children))
        for special in sorted(p for p in nodes if p.startswith("@")):
            node = nodes[special]
            out.append([special, node.value.decode("latin-1"), _perm_strings(node.perms)])
        return out

    def _save(self) -> None:
        self._dirty = False
        if not self.store_path:
            return
        doc = {
            "format": STORE_FORMAT,
            "introduced": sorted(self.introduced - {0}),
            "targets": {str(k): v for k, v in self.targets.items()},
            "nodes": self._dump_nodes(),
        }
        data = json.dumps(doc, separators=(",", ":")).encode()
        tmp = f"{self.store_path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.store_path)
        dfd = os.open(os.path.dirname(os.path.abspath(self.store_path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.saves += 1

    def _end_batch(self) -> None:
        """After a batch of requests: persist (before anyone sees a reply), then send what is queued."""
        if self._dirty:
            try:
                self._save()
            except OSError:
                log.exception("could not write the store file %s", self.store_path)
        pending, self._pending_out = self._pending_out, set()
        for conn in pending:
            conn.flush()

    # ------------------------------------------------------------------ dispatch

    def _handle(self, conn: Connection, msg: wire.Message) -> None:
        self.requests += 1
        self.requests_by_pid[conn.peer_pid] += 1
        self.requests_by_pid_op[conn.peer_pid, msg.type] += 1
        try:
            handler = _HANDLERS.get(msg.type)
            if handler is None:
                raise XsError("ENOSYS")
            if msg.type in _PRIVILEGED and not conn.privileged:
                raise XsError("EACCES")
            tx = None
            if msg.type not in (XsType.WATCH, XsType.UNWATCH) and msg.tx_id:
                tx = conn.txs.get(msg.tx_id)
                if tx is None:
                    raise XsError("ENOENT")
            ctx = Ctx(self, conn, tx)
            reply = handler(self, ctx, msg.payload)
            if len(reply) > wire.XENSTORE_PAYLOAD_MAX:
                raise XsError("E2BIG")
        except XsError as e:
            conn.send(wire.encode(XsType.ERROR, wire.error_payload(e.name), msg.req_id, msg.tx_id))
            return
        if ctx.changed and tx is None:
            self._dirty = True
        # As xenstored: watch events caused by a request are queued before its reply.
        for ev in ctx.events:
            self._deliver(ev)
        conn.send(wire.encode(msg.type, reply, msg.req_id, msg.tx_id))
        for fn in ctx.after:
            fn()

    # ------------------------------------------------------------------ permissions and paths

    def perm_for(self, conn: Connection, perms: tuple[Perm, ...]) -> int:
        """xenstored's perm_for_conn: privileged and owner get all; else first matching entry, else default."""
        full = PERM_READ | PERM_WRITE | PERM_OWNER
        if conn.privileged:
            return full
        target = self.targets.get(conn.domid)
        owner = perms[0][1]
        if owner == conn.domid or (target is not None and owner == target):
            return full
        for kind, domid in perms[1:]:
            if domid == conn.domid or (target is not None and domid == target):
                return _PERM_BITS[kind]
        return _PERM_BITS[perms[0][0]]

    def canonicalize(self, conn: Connection, raw: bytes | None, allow_special: bool) -> str:
        if raw is None:
            raise XsError("EINVAL")
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise XsError("EINVAL") from None
        if not _VALID_PATH.fullmatch(name) or (name.startswith("@") and not allow_special):
            raise XsError("EINVAL")
        if not name.startswith(("/", "@")):
            name = f"{conn.home}/{name}"
        if (name.endswith("/") and name != "/") or "//" in name or len(name) > wire.XENSTORE_ABS_PATH_MAX:
            raise XsError("EINVAL")
        if not conn.privileged:
            m = re.match(r"/local/domain/\d{1,5}/", name)
            if len(name) - (m.end() if m else 0) > wire.XENSTORE_REL_PATH_MAX:
                raise XsError("EINVAL")
        return name

    def get_node(self, ctx: Ctx, raw: bytes | None, perm: int, allow_special: bool = False):
        """(name, node, error): error is None or the name xenstored would answer, hiding what the caller may
        not know (errno_from_parents)."""
        name = self.canonicalize(ctx.conn, raw, allow_special)
        node = ctx.read(name)
        if node is not None and (self.perm_for(ctx.conn, node.perms) & perm) == perm:
            return name, node, None
        err = "EACCES" if node is not None else "ENOENT"
        # What do the parents say?
        ancestor = None
        p = name
        while p != "/":
            p = _parent(p)
            ancestor = ctx.read(p)
            if ancestor is not None:
                break
        if ancestor is None or not (self.perm_for(ctx.conn, ancestor.perms) & perm):
            err = "EACCES"
        return name, node, err

    # ------------------------------------------------------------------ watches

    def _watch_permitted(self, conn: Connection, ev: Event) -> bool:
        if conn.privileged:
            return True
        for perms in (ev.old_perms, ev.perms, ev.parent_perms):
            if perms is not None and self.perm_for(conn, perms) & PERM_READ:
                return True
        return False

    def _deliver(self, ev: Event) -> None:
        for conn in list(self._conns):
            if conn.closed or not conn.watches or not self._watch_permitted(conn, ev):
                continue
            for w in conn.watches:
                if (ev.path == w.node) if ev.exact else _is_child(ev.path, w.node):
                    self._send_event(conn, ev.path[w.prefix_len :], w.token)

    def _send_event(self, conn: Connection, path: str, token: str) -> None:
        payload = f"{path}\0{token}\0".encode("latin-1")  # tokens are opaque bytes
        if len(payload) <= wire.XENSTORE_PAYLOAD_MAX:
            conn.send(wire.encode(XsType.WATCH_EVENT, payload))

    def _special_event(self, name: str) -> Event:
        """The event of a special watch: exact match only; visible to whoever may read the special node."""
        node = self.store.get(name)
        return Event(name, True, node.perms if node else None, self.store.need("/").perms)

    # ------------------------------------------------------------------ tree operations

    def _create(self, ctx: Ctx, name: str, value: bytes) -> Node:
        """Create ``name`` and missing parents; new nodes inherit the parent's perms, unprivileged creators own
        them (construct_node)."""
        missing = [name]
        parent_name = _parent(name)
        parent = ctx.read(parent_name)
        while parent is None:
            missing.append(parent_name)
            parent_name = _parent(parent_name)
            parent = ctx.read(parent_name)  # "/" always exists
        conn = ctx.conn
        if not conn.privileged and ctx.store.owners[conn.domid] + len(missing) > self.quota_nodes:
            raise XsError("ENOSPC")
        for path in reversed(missing):
            perms = parent.perms
            if not conn.privileged:
                perms = ((perms[0][0], conn.domid), *perms[1:])
            ctx.write(parent_name, dataclasses.replace(parent, children=(*parent.children, _basename(path))))
            ctx.write(path, Node(value if path == name else b"", perms, (), 0))
            parent_name, parent = path, ctx.store.need(path)
        return parent

    def _rm(self, ctx: Ctx, name: str) -> None:
        """Remove ``name`` and its subtree; watch events as rm_node: exact ones for each removed descendant
        (children first), then one for ``name`` that also matches watches on its ancestors."""
        store = ctx.store
        parent_name = _parent(name)
        parent, node = ctx.read(parent_name), ctx.read(name)
        if parent is None or node is None:
            raise XsError("ENOENT")  # callers remove only nodes they found, so this is a bug in the caller
        # Post-order walk without recursion (paths may be ~1500 levels deep).
        order: list[tuple[str, Node, Node | None]] = []
        stack: list[tuple[str, Node, Node | None, bool]] = [(name, node, parent, False)]
        while stack:
            path, node, par, expanded = stack.pop()
            if expanded:
                order.append((path, node, par))
                continue
            stack.append((path, node, par, True))
            for c in reversed(node.children):
                cp = _child(path, c)
                cn = store.get(cp)
                if cn is not None:
                    stack.append((cp, cn, node, False))
        for path, node, par in order:
            ctx.delete(path)
            ctx.fire(path, exact=path != name, node=node, parent=par)
        base = _basename(name)
        ctx.write(parent_name, dataclasses.replace(parent, children=tuple(c for c in parent.children if c != base)))

    # ------------------------------------------------------------------ operations (one per message type)

    def op_directory(self, ctx: Ctx, payload: bytes) -> bytes:
        _, node, err = self.get_node(ctx, _onearg(payload), PERM_READ)
        if err:
            raise XsError(err)
        return wire.join_strings(node.children)

    def op_directory_part(self, ctx: Ctx, payload: bytes) -> bytes:
        if payload.count(b"\0") != 2:
            raise XsError("EINVAL")
        strings = payload.split(b"\0")
        _, node, err = self.get_node(ctx, strings[0], PERM_READ)
        if err:
            raise XsError(err)
        off = max(_atoi(strings[1]), 0)
        gen = str(node.gen).encode() + b"\0"
        children = wire.join_strings(node.children)
        if off >= len(children):
            return gen + b"\0"
        maxlen = wire.XENSTORE_PAYLOAD_MAX - len(gen) - 1
        end = off
        while True:
            nul = children.index(b"\0", end)
            if (end - off) + (nul - end) >= maxlen:
                break
            end = nul + 1
            if end == len(children):
                break
        part = children[off:end]
        return gen + part + (b"\0" if end == len(children) else b"")

    def op_read(self, ctx: Ctx, payload: bytes) -> bytes:
        _, node, err = self.get_node(ctx, _onearg(payload), PERM_READ)
        if err:
            raise XsError(err)
        return node.value

    def op_write(self, ctx: Ctx, payload: bytes) -> bytes:
        nul = payload.find(b"\0")
        if nul < 0:
            raise XsError("EINVAL")
        value = payload[nul + 1 :]
        name, node, err = self.get_node(ctx, payload[:nul], PERM_WRITE)
        if err and err != "ENOENT":
            raise XsError(err)
        if not ctx.conn.privileged and len(value) > self.quota_entry_size:
            raise XsError("ENOSPC")
        if node is None:
            self._create(ctx, name, value)
        else:
            ctx.write(name, dataclasses.replace(node, value=value))
        ctx.fire(name)
        return wire.OK

    def op_mkdir(self, ctx: Ctx, payload: bytes) -> bytes:
        name, node, err = self.get_node(ctx, _onearg(payload), PERM_WRITE)
        if node is None or err:
            if err != "ENOENT":
                raise XsError(err)
            self._create(ctx, name, b"")
            ctx.fire(name)
        return wire.OK

    def op_rm(self, ctx: Ctx, payload: bytes) -> bytes:
        name, node, err = self.get_node(ctx, _onearg(payload), PERM_WRITE)
        if err == "ENOENT":
            if name != "/" and ctx.read(_parent(name)) is not None:
                return wire.OK
            raise XsError("ENOENT")
        if err:
            raise XsError(err)
        if name == "/":
            raise XsError("EINVAL")
        self._rm(ctx, name)
        return wire.OK

    def op_get_perms(self, ctx: Ctx, payload: bytes) -> bytes:
        _, node, err = self.get_node(ctx, _onearg(payload), PERM_READ, allow_special=True)
        if err:
            raise XsError(err)
        return wire.join_strings(_perm_strings(node.perms))

    def op_set_perms(self, ctx: Ctx, payload: bytes) -> bytes:
        strings = wire.split_strings(payload)
        if len(strings) < 2:
            raise XsError("EINVAL")
        perms = _parse_perms(strings[1:])
        name, node, err = self.get_node(ctx, strings[0], PERM_WRITE | PERM_OWNER, allow_special=True)
        if err:
            raise XsError(err)
        if not ctx.conn.privileged and perms[0][1] != node.owner:
            raise XsError("EINVAL")  # EPERM is not a wire error name: xenstored sends EINVAL
        ctx.write(name, dataclasses.replace(node, perms=perms))
        ctx.fire(name, old_perms=node.perms)
        return wire.OK

    def op_watch(self, ctx: Ctx, payload: bytes) -> bytes:
        conn = ctx.conn
        if payload.count(b"\0") != 2:
            raise XsError("EINVAL")
        raw_path, raw_token, _ = payload.split(b"\0")
        relative = not raw_path.startswith((b"/", b"@"))
        path = self.canonicalize(conn, raw_path, allow_special=True)
        token = raw_token.decode("latin-1")
        if any(w.node == path and w.token == token for w in conn.watches):
            raise XsError("EEXIST")
        if not conn.privileged:
            count = sum(len(c.watches) for c in self._conns if c.domid == conn.domid)
            if count >= self.quota_watches:
                raise XsError("E2BIG")
        w = Watch(path, token, len(conn.home) + 1 if relative else 0)
        conn.watches.append(w)
        # The initial event goes out right after the OK reply.
        ctx.after.append(lambda: self._send_event(conn, w.node[w.prefix_len :], w.token))
        return wire.OK

    def op_unwatch(self, ctx: Ctx, payload: bytes) -> bytes:
        conn = ctx.conn
        if payload.count(b"\0") != 2:
            raise XsError("EINVAL")
        raw_path, raw_token, _ = payload.split(b"\0")
        path = self.canonicalize(conn, raw_path, allow_special=True)
        token = raw_token.decode("latin-1")
        for i, w in enumerate(conn.watches):
            if w.node == path and w.token == token:
                del conn.watches[i]
                return wire.OK
        raise XsError("ENOENT")

    def op_transaction_start(self, ctx: Ctx, payload: bytes) -> bytes:
        conn = ctx.conn
        if ctx.tx is not None:
            raise XsError("EBUSY")
        if not conn.privileged and len(conn.txs) >= self.quota_transactions:
            raise XsError("ENOSPC")
        while conn.next_tx_id == 0 or conn.next_tx_id in conn.txs:
            conn.next_tx_id = (conn.next_tx_id + 1) & 0xFFFFFFFF
        tx_id = conn.next_tx_id
        conn.next_tx_id = (tx_id + 1) & 0xFFFFFFFF
        conn.txs[tx_id] = Transaction(tx_id, self.store.copy())
        return f"{tx_id}\0".encode()

    def op_transaction_end(self, ctx: Ctx, payload: bytes) -> bytes:
        arg = _onearg(payload)
        if arg not in (b"T", b"F"):
            raise XsError("EINVAL")
        tx = ctx.tx
        if tx is None:
            raise XsError("ENOENT")
        del ctx.conn.txs[tx.id]
        if arg == b"F":
            return wire.OK
        live = self.store
        for path, gen in tx.accessed.items():
            cur = live.get(path)
            if (cur.gen if cur else None) != gen:
                raise XsError("EAGAIN")
        for path in tx.modified:
            node = tx.store.get(path)
            if node is None:
                live.delete(path)
            else:
                live.put(path, dataclasses.replace(node, gen=self._next_gen()))
        if tx.modified:
            self._dirty = True
        ctx.events.extend(tx.events)
        return wire.OK

    def op_introduce(self, ctx: Ctx, payload: bytes) -> bytes:
        strings = wire.split_strings(payload)
        if len(strings) < 3:
            raise XsError("EINVAL")
        domid = _atoi(strings[0]) & 0xFFFFFFFF
        if _atoi(strings[2]) <= 0:
            raise XsError("EINVAL")
        if domid in self.introduced:
            for c in self._conns:  # re-introduction resets the domain's (ring) connection
                if c.domid == domid and c.is_domain:
                    c.watches.clear()
                    c.txs.clear()
        else:
            self.introduced.add(domid)
            self._dirty = True
            ctx.events.append(self._special_event(wire.SPECIAL_INTRODUCE))
        return wire.OK

    def _onearg_domain(self, payload: bytes) -> int:
        arg = _onearg(payload)
        if arg is None:
            raise XsError("EINVAL")
        domid = _atoi(arg) & 0xFFFFFFFF
        if domid == 0:
            raise XsError("EINVAL")
        if domid not in self.introduced:
            raise XsError("ENOENT")
        return domid

    def op_release(self, ctx: Ctx, payload: bytes) -> bytes:
        domid = self._onearg_domain(payload)
        for c in list(self._conns):  # the domain's (ring) connections go away
            if c.domid == domid and c.is_domain:
                c.drop()
        self.introduced.discard(domid)
        self.targets.pop(domid, None)
        # Nodes the domain owns are removed (xenstored without --keep-orphans).
        rm_ctx = Ctx(self, ctx.conn, None)
        self._remove_owned(rm_ctx, "/", domid)
        ctx.events.extend(rm_ctx.events)
        self._dirty = True
        ctx.events.append(self._special_event(wire.SPECIAL_RELEASE))
        return wire.OK

    def _remove_owned(self, ctx: Ctx, root: str, domid: int) -> None:
        """Remove every subtree whose top node ``domid`` owns (pre-order, without recursion)."""
        stack = [root]
        while stack:
            path = stack.pop()
            node = self.store.get(path)
            if node is None:
                continue
            if path != "/" and node.owner == domid:
                self._rm(ctx, path)
                continue
            stack.extend(_child(path, c) for c in reversed(node.children))

    def op_resume(self, ctx: Ctx, payload: bytes) -> bytes:
        self._onearg_domain(payload)
        return wire.OK

    def op_set_target(self, ctx: Ctx, payload: bytes) -> bytes:
        strings = wire.split_strings(payload)
        if len(strings) < 2:
            raise XsError("EINVAL")
        domid, tdomid = _atoi(strings[0]) & 0xFFFFFFFF, _atoi(strings[1]) & 0xFFFFFFFF
        if domid not in self.introduced or tdomid not in self.introduced:
            raise XsError("ENOENT")
        self.targets[domid] = tdomid
        self._dirty = True
        return wire.OK

    def op_get_domain_path(self, ctx: Ctx, payload: bytes) -> bytes:
        arg = _onearg(payload)
        if arg is None:
            raise XsError("EINVAL")
        return f"/local/domain/{_atoi(arg) & 0xFFFFFFFF}\0".encode()

    def op_is_domain_introduced(self, ctx: Ctx, payload: bytes) -> bytes:
        arg = _onearg(payload)
        if arg is None:
            raise XsError("EINVAL")
        domid = _atoi(arg) & 0xFFFFFFFF
        return b"T\0" if domid == wire.DOMID_SELF or domid in self.introduced else b"F\0"

    def op_reset_watches(self, ctx: Ctx, payload: bytes) -> bytes:
        ctx.conn.watches.clear()
        ctx.conn.txs.clear()
        return wire.OK

    def op_control(self, ctx: Ctx, payload: bytes) -> bytes:
        strings = wire.split_strings(payload)
        if not strings:
            raise XsError("EINVAL")
        cmd = strings[0]
        if cmd == b"help":
            return b"check\nlog\nprint\nhelp\n\0"
        if cmd in (b"check", b"log", b"print"):
            if cmd == b"print" and len(strings) > 1:
                log.info("control print: %s", strings[1].decode("latin-1"))
            return wire.OK
        raise XsError("EINVAL")

    # ------------------------------------------------------------------ lifecycle

    async def _listen(self, path: str, domid: int, is_domain: bool) -> asyncio.AbstractServer:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.get_running_loop().create_unix_server(lambda: Connection(self, domid, is_domain), path)
        self._servers.append(server)
        return server

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Run on the current loop until ``stop_async()``/``request_stop()``."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if self._dirty:
            self._save()
        await self._listen(self.socket_path, 0, False)
        for domid, path in self._initial_domain_sockets.items():
            await self._listen(path, domid, True)
            self.domain_socket_paths[domid] = path
        if ready is not None:
            ready()
        await self._stopped.wait()
        await self._shutdown()

    async def _shutdown(self) -> None:
        for s in self._servers:
            s.close()
        for conn in list(self._conns):
            conn.drop()
        for s in self._servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()
        self._servers.clear()
        if self._dirty:
            self._save()
        for path in [self.socket_path, *self.domain_socket_paths.values()]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def request_stop(self) -> None:
        """Ask a running server to stop (safe from any thread or a signal handler on its loop)."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)

    def start(self) -> XenstoredStandIn:
        """Run on a private thread; returns once the sockets accept connections."""
        if self._thread is not None:
            raise RuntimeError("already started")
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self.serve(ready=started.set))
            except BaseException as e:  # report start-up failures to start()
                failure.append(e)
                started.set()

        self._thread = threading.Thread(target=run, name="xenstored-stand-in", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread started by ``start()``: closes every connection, writes the store."""
        if self._thread is None:
            return
        self.request_stop()
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> XenstoredStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _call(self, fn: Callable):
        """Run ``fn`` on the server loop and return its result (from another thread)."""
        if self._loop is None:
            raise RuntimeError("not running")

        async def wrapper():
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    def domain_socket(self, domid: int, path: str | os.PathLike | None = None) -> str:
        """Path of a listening socket whose connections speak for ``domid`` (opened on first use)."""
        domid = int(domid)
        if domid in self.domain_socket_paths:
            return self.domain_socket_paths[domid]
        p = os.fspath(path) if path is not None else f"{self.socket_path}.d{domid}"

        async def open_it():
            await self._listen(p, domid, True)
            self.domain_socket_paths[domid] = p
            return p

        return self._call(open_it)


def _onearg(payload: bytes) -> bytes | None:
    """The single argument of a request: the payload must hold exactly one NUL, at its end."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


_HANDLERS: dict[int, Callable[[XenstoredStandIn, Ctx, bytes], bytes]] = {
    XsType.CONTROL: XenstoredStandIn.op_control,
    XsType.DIRECTORY: XenstoredStandIn.op_directory,
    XsType.READ: XenstoredStandIn.op_read,
    XsType.GET_PERMS: XenstoredStandIn.op_get_perms,
    XsType.WATCH: XenstoredStandIn.op_watch,
    XsType.UNWATCH: XenstoredStandIn.op_unwatch,
    XsType.TRANSACTION_START: XenstoredStandIn.op_transaction_start,
    XsType.TRANSACTION_END: XenstoredStandIn.op_transaction_end,
    XsType.INTRODUCE: XenstoredStandIn.op_introduce,
    XsType.RELEASE: XenstoredStandIn.op_release,
    XsType.GET_DOMAIN_PATH: XenstoredStandIn.op_get_domain_path,
    XsType.WRITE: XenstoredStandIn.op_write,
    XsType.MKDIR: XenstoredStandIn.op_mkdir,
    XsType.RM: XenstoredStandIn.op_rm,
    XsType.SET_PERMS: XenstoredStandIn.op_set_perms,
    XsType.IS_DOMAIN_INTRODUCED: XenstoredStandIn.op_is_domain_introduced,
    XsType.RESUME: XenstoredStandIn.op_resume,
    XsType.SET_TARGET: XenstoredStandIn.op_set_target,
    XsType.RESET_WATCHES: XenstoredStandIn.op_reset_watches,
    XsType.DIRECTORY_PART: XenstoredStandIn.op_directory_part,
}

#: Requests only a privileged connection may make (XS_FLAG_PRIV in xenstored).
_PRIVILEGED = frozenset(
    {
        XsType.CONTROL,
        XsType.INTRODUCE,
        XsType.RELEASE,
        XsType.IS_DOMAIN_INTRODUCED,
        XsType.RESUME,
        XsType.SET_TARGET,
    }
)


def _domain_socket_arg(text: str) -> tuple[int, str]:
    domid, sep, path = text.partition("=")
    if not sep or not domid.isdigit() or not path:
        raise argparse.ArgumentTypeError("expected DOMID=PATH")
    return int(domid), path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sevd_sim.xenstored",
        description="xenstored stand-in: the xenstore wire protocol on a Unix socket, without Xen.",
    )
    ap.add_argument("--socket", required=True, help="main socket; its connections speak for Dom0")
    ap.add_argument("--store", help="JSON store file, loaded at start and rewritten after each change")
    ap.add_argument(
        "--domain-socket",
        action="append",
        default=[],
        type=_domain_socket_arg,
        metavar="DOMID=PATH",
        help="extra socket whose connections speak for DOMID (repeatable)",
    )
    ap.add_argument("--init-dom0", action="store_true", help="create /local/domain/0 as xen-init-dom0 does")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")

    server = XenstoredStandIn(
        args.socket, args.store, domain_sockets=dict(args.domain_socket), init_dom0=args.init_dom0
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_stop)

        def ready() -> None:
            extra = "".join(f" dom{d}={p}" for d, p in sorted(server.domain_socket_paths.items()))
            print(f"xenstored stand-in ready on {server.socket_path}{extra}", flush=True)

        await server.serve(ready=ready)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
