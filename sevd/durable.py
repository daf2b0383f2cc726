"""Durable files: crash-safe writes (write, fsync, rename) and an inter-process lock.

Used by the daemon for its state and by the simulated host for its PSP and Xen."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write, fsync, rename, fsync the directory: a reader sees the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def encode_json(value: Any) -> bytes:
    """The bytes write_json writes: compact and key-sorted, so that equal values encode equally (and CPython's
    C encoder does the work: an indented dump goes through the pure-Python one, many times slower)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, encode_json(value))


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold the host-wide lock: one command at a time, like the PSP's single mailbox."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class LockHeld(Exception):
    """Another process holds the lock; `pid` is the one it wrote, when it can be read."""

    def __init__(self, path: Path, pid: int | None):
        super().__init__(f"{path} is held by {f'pid {pid}' if pid else 'another process'}")
        self.path, self.pid = path, pid


def hold_lock(lock_path: Path) -> int:
    """Take `lock_path` for this process's lifetime (the fd is returned and stays open; the kernel drops the
    lock when the process ends, however it ends) and write our pid in it.  LockHeld when another holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise LockHeld(lock_path, int(text) if text.isdigit() else None) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) if needed and make it 0700 whatever the umask: it holds the daemon's
    journal and lock, nobody else's to read."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
