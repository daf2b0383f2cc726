"""The daemon's durable per-guest journal: written before and after every PSP command.

One file per domain in `state_dir/guests/<domid>.journal`, holding two 4 KiB slots written in turn
with pwrite + fdatasync.  Each slot carries a sequence number and a CRC32; a reader takes the valid
slot with the highest sequence, so a crash in the middle of a write leaves the previous record
intact.  That costs one data sync per record — no rename and no directory sync, which matters at
two records per PSP command.

`pending` names the step in flight: after a crash it says exactly which command may or may not
have reached the firmware, and recovery asks GUEST_STATUS which it was (RECOVERY in
sevd/launch/tables.py).  States and steps are written by name (`sevd.launch.GuestState`, `Step`); a
record holding the step names of an older sevd is read as the new names.  No secret is ever written
here (the launch session blob is wrapped for the firmware; TEK/TIK never reach the host).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import struct
import threading
import zlib
from pathlib import Path

from sevd.durable import private_dir
from sevd.errors import SevdError
from sevd.launch import GuestRecord  # the record is the launch core's value; this module makes it durable

__all__ = ["SLOT", "GuestRecord", "JournalCorrupt", "JournalError", "RecordStore"]

SLOT = 4096
_HEADER = struct.Struct("<8sQII")  # magic, sequence, length, crc32 of the JSON
_MAGIC = b"sevdjrn1"


class JournalCorrupt(Exception):
    pass


class JournalError(SevdError):
    """The journal could not be written (a full or read-only filesystem, an I/O error): what the daemon did
    since the last record written is known to no journal.  Not an OSError, so nobody takes it for xenstore's."""

    def __init__(self, path: Path, exc: OSError):
        self.errno = exc.errno or 0
        self.name = f"JOURNAL_{errno.errorcode.get(self.errno, self.errno)}"
        super().__init__(f"cannot write {path}: {exc.strerror or exc}")
        # Set by the daemon when the write that failed was the record after a command: (step, its result).
        self.issued: tuple[object, object] | None = None


def _read_slots(data: bytes) -> tuple[int, dict] | None:
    best = None
    for offset in (0, SLOT):
        chunk = data[offset : offset + SLOT]
        if len(chunk) < _HEADER.size:
            continue
        magic, seq, length, crc = _HEADER.unpack_from(chunk)
        body = chunk[_HEADER.size : _HEADER.size + length]
        if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
            continue  # a torn or never-written slot
        if best is None or seq > best[0]:
            best = (seq, json.loads(body))
    return best


class RecordStore:
    def __init__(self, state_dir: Path):
        self.dir = private_dir(Path(state_dir)) / "guests"
        self.dir.mkdir(exist_ok=True, mode=0o700)
        self._seq: dict[int, int] = {}
        self._lock = threading.Lock()

    def _path(self, domid: int) -> Path:
        return self.dir / f"{domid}.journal"

    def save(self, record: GuestRecord) -> None:
        """Make `record` durable; JournalError when the filesystem refuses."""
        try:
            self._save(record)
        except OSError as exc:
            with self._lock:  # the sequence is read from disk again: a failed write must not skip a slot
                self._seq.pop(record.domid, None)
            raise JournalError(self._path(record.domid), exc) from None

    def _save(self, record: GuestRecord) -> None:
        body = json.dumps(dataclasses.asdict(record), sort_keys=True).encode()
        if len(body) > SLOT - _HEADER.size:
            raise ValueError(f"journal record for domain {record.domid} is {len(body)} bytes, over one slot")
        path = self._path(record.domid)
        with self._lock:
            seq = self._seq.get(record.domid)
            if seq is None:
                found = _read_slots(path.read_bytes()) if path.exists() else None
                seq = found[0] if found else 0
            seq += 1
            self._seq[record.domid] = seq
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, _HEADER.pack(_MAGIC, seq, len(body), zlib.crc32(body)) + body, (seq % 2) * SLOT)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:  # a new name must reach the disk too, once
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def load(self, domid: int) -> GuestRecord | None:
        path = self._path(domid)
        if not path.exists():
            return None
        found = _read_slots(path.read_bytes())
        if found is None:
            raise JournalCorrupt(f"{path}: no valid record in either slot")
        return GuestRecord(**found[1])

    def load_all(self) -> list[GuestRecord]:
        records = []
        for path in sorted(self.dir.glob("*.journal")):
            record = self.load(int(path.stem))
            if record is not None:
                records.append(record)
        return records

    def delete(self, domid: int) -> None:
        try:
            self._path(domid).unlink(missing_ok=True)
        except OSError as exc:
            raise JournalError(self._path(domid), exc) from None
        with self._lock:
            self._seq.pop(domid, None)
