"""Simulated system-physical memory and the memory-encryption engine.

Memory is a sparse file that the simulated Xen (placing domains) and the simulated PSP (encrypting
them) both open, so every process of a simulated host sees the same bytes at the same system
physical address (SPA).

The encryption engine models what matters about SEV's AES engine: each guest has its own key
(VEK), and the keystream for a 16-byte block depends on the block's SPA.  Concretely it is
AES-128-CTR under the VEK with the counter block = SPA / 16, so one bulk call covers a contiguous
range, a page copied to another SPA decrypts to garbage, and the same plaintext in two guests
gives different ciphertext.  It is a model of the behaviour, not of the hardware's cipher.

`CpuCache` is the CPUs' write-back cache on a CPU without SME_COHERENT (Naples, Rome): what the host
writes through its own key sits there until flushed, where the PSP, which reads and writes DRAM under
the guest's key, cannot see it, and from where it is written back later over whatever the PSP put there.

`MachineMemory` is the other kind: the machine memory of a real Xen host (sev=test under emulation),
read through Xen by system physical address, for a simulated PSP that measures but cannot encrypt.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sevd.abi.units import PHYS_ADDR_LIMIT
from sevd.durable import exclusive, read_json, write_json

BLOCK = 16
LINE = 64  # a cache line
READ_CHUNK = 1 << 20  # Xen's READ_SPA limit per call
UNSTABLE_READ_RETRIES = 4

log = logging.getLogger("sevd.sim.psp")  # under "sevd": the daemon that opens it logs its lines


class OutOfRange(Exception):
    """An access outside simulated memory, or machine memory Xen refused (the firmware answers INVALID_ADDRESS)."""


class MemoryFault(Exception):
    """Machine memory could not be read for another reason than its owner (the firmware answers HWERROR_PLATFORM)."""


class PhysicalMemory:
    """The simulated host's memory file.  `asid` (the guest the PSP acts for) is accepted and ignored:
    the simulated Xen keeps guests apart, as the real PSP leaves it to the hypervisor."""

    can_encrypt = True

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size
        self._map: mmap.mmap | None = None  # a shared mapping, made on first in-place use

    @classmethod
    def create(cls, path: Path, size: int) -> PhysicalMemory:
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: costs no disk until written
        return cls(path)

    def contains(self, spa: int, length: int) -> bool:
        return spa >= 0 and length >= 0 and spa + length <= self.size

    def _check(self, spa: int, length: int) -> None:
        if not self.contains(spa, length):
            raise OutOfRange(f"[{spa:#x}, {spa + length:#x}) is outside simulated memory of {self.size:#x} bytes")

    def read(self, spa: int, length: int, asid: int = 0) -> bytes:
        self._check(spa, length)
        return os.pread(self.fd, length, spa)

    def write(self, spa: int, data: bytes, asid: int = 0, what: str = "data") -> None:
        self._check(spa, len(data))
        os.pwrite(self.fd, data, spa)

    def in_place(
        self, spa: int, length: int, observe: Callable[[memoryview], None], vek: bytes | None, asid: int = 0
    ) -> None:
        """Show the bytes at `spa` to `observe`, then (with `vek`) encrypt them in place: no copies.

        The mapping is MAP_SHARED over the same file, so pread/pwrite users in other processes
        see the result at once (one page cache).
        """
        self._check(spa, length)
        if length == 0:
            return
        if self._map is None:
            self._map = mmap.mmap(self.fd, self.size)
        view = memoryview(self._map)[spa : spa + length]
        try:
            observe(view)
            if vek is not None:
                _engine(vek, spa).update_into(view, view)
        finally:
            view.release()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class CpuCache:
    """Dirty cache lines the host wrote through its own key (the toolstack loading an image, Xen writing a
    VMSA) on a CPU without SME_COHERENT, shared by every process of the simulated host.

    DRAM is the memory file.  A write lands here (whole lines: a partial line is filled from what the
    writer sees); reading back through the same key (`read`) sees it; the PSP reads and writes DRAM and
    does not.  `flush` (CLFLUSH of ranges) and `flush()` (WBINVD) write lines back to DRAM, over whatever is
    there now.  Lines a guest writes under its own key are not modelled: the simulated guest never runs.

    HOST/cache/lines.json  dirty line ranges [[start, end], ...], sorted and disjoint, line-aligned
    HOST/cache/data.img    their contents, at the same offsets as in memory.img (sparse)
    """

    def __init__(self, host: Path):
        self.dir = Path(host) / "cache"

    @classmethod
    def create(cls, host: Path, size: int) -> CpuCache:
        cache = cls(host)
        cache.dir.mkdir(parents=True, exist_ok=True)
        with open(cache.dir / "data.img", "wb") as f:
            f.truncate(size)
        write_json(cache.dir / "lines.json", {"lines": []})
        return cache

    @property
    def exists(self) -> bool:
        return (self.dir / "lines.json").exists()

    def _lines(self) -> list[list[int]]:
        return read_json(self.dir / "lines.json")["lines"]

    def _save(self, lines: list[list[int]]) -> None:
        write_json(self.dir / "lines.json", {"lines": lines})

    def dirty(self) -> list[tuple[int, int]]:
        """(spa, length) of the dirty lines, coalesced."""
        return [(lo, hi - lo) for lo, hi in self._lines()]

    def write(self, memory: PhysicalMemory, spa: int, data: bytes) -> None:
        """A store through the host's key: the lines go dirty in the cache, DRAM is unchanged."""
        memory._check(spa, len(data))
        if not data:
            return
        lo, hi = spa - spa % LINE, -(-(spa + len(data)) // LINE) * LINE
        with exclusive(self.dir / "lock"):
            lines = self._lines()
            buf = bytearray(self._view(memory, lines, lo, hi - lo))
            buf[spa - lo : spa - lo + len(data)] = data
            fd = os.open(self.dir / "data.img", os.O_RDWR | os.O_CLOEXEC)
            try:
                os.pwrite(fd, bytes(buf), lo)
            finally:
                os.close(fd)
            self._save(_merge([*lines, [lo, hi]]))

    def read(self, memory: PhysicalMemory, spa: int, length: int) -> bytes:
        """A load through the host's key: its own dirty lines, else DRAM."""
        with exclusive(self.dir / "lock"):
            return self._view(memory, self._lines(), spa, length)

    def _view(self, memory: PhysicalMemory, lines: list[list[int]], spa: int, length: int) -> bytes:
        out = bytearray(memory.read(spa, length))
        hits = _clip(lines, spa, spa + length)
        if hits:
            fd = os.open(self.dir / "data.img", os.O_RDONLY | os.O_CLOEXEC)
            try:
                for lo, hi in hits:
                    out[lo - spa : hi - spa] = os.pread(fd, hi - lo, lo)
            finally:
                os.close(fd)
        return bytes(out)

    def flush(self, memory: PhysicalMemory, ranges: Sequence[tuple[int, int]] | None = None) -> int:
        """Write back and invalidate the dirty lines in `ranges` (CLFLUSH), or all of them (WBINVD, None).
        Returns how many bytes went back to DRAM."""
        with exclusive(self.dir / "lock"):
            lines = self._lines()
            if not lines:
                return 0
            spans = [[0, 1 << 62]] if ranges is None else _merge([[s - s % LINE, s + n] for s, n in ranges if n > 0])
            written = 0
            fd = os.open(self.dir / "data.img", os.O_RDWR | os.O_CLOEXEC)
            try:
                for lo, hi in spans:
                    for a, b in _clip(lines, lo, -(-hi // LINE) * LINE):
                        memory.write(a, os.pread(fd, b - a, a))
                        written += b - a
                        # the cache copy is dropped: sparse again, it costs nothing
                        os.pwrite(fd, bytes(b - a), a)
                    lines = _subtract(lines, lo, -(-hi // LINE) * LINE)
            finally:
                os.close(fd)
            self._save(lines)
            return written


def _merge(spans: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def _clip(lines: list[list[int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return [(max(a, lo), min(b, hi)) for a, b in lines if a < hi and b > lo]


def _subtract(lines: list[list[int]], lo: int, hi: int) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in lines:
        if b <= lo or a >= hi:
            out.append([a, b])
            continue
        if a < lo:
            out.append([a, lo])
        if b > hi:
            out.append([hi, b])
    return out


class MachineMemory:
    """Machine memory of the Xen host this process runs on, read with `read_spa(asid, spa, length)`
    (`DomctlXen.read_spa`, which exists only under sev=test).  Measure-only: it cannot encrypt, and
    Xen offers no write, so writes are checked and dropped.  Xen decides what a guest's ASID may read;
    a refusal (EPERM, ESRCH) is an address the firmware may not touch.
    """

    can_encrypt = False
    size = PHYS_ADDR_LIMIT

    def __init__(self, read_spa: Callable[[int, int, int], bytes], close: Callable[[], None] | None = None):
        self._read_spa = read_spa
        self._close = close

    def contains(self, spa: int, length: int) -> bool:
        # Which machine frames are RAM only Xen knows; it refuses the rest when they are read.
        return spa >= 0 and length >= 0 and spa + length <= PHYS_ADDR_LIMIT

    def _chunk(self, spa: int, length: int, asid: int) -> bytes:
        """One READ_SPA, read until two reads in a row agree.  Under software emulation a read of a guest's
        freshly built memory has come back different from what the same pages held a moment later (and
        from the owner's image); the PSP's own DMA read has no such failure, so the test mode must not
        measure a read it cannot repeat.  Each disagreement is logged."""
        data = self._read_once(spa, length, asid)
        for _ in range(UNSTABLE_READ_RETRIES):
            again = self._read_once(spa, length, asid)
            if again == data:
                return data
            differing = sum(1 for i in range(0, length, 4096) if again[i : i + 4096] != data[i : i + 4096])
            log.warning(
                "machine memory at SPA %#x (+%#x) read differently twice (%d page(s)); reading again",
                spa, length, differing,
            )  # fmt: skip
            data = again
        raise MemoryFault(f"machine memory at SPA {spa:#x} reads differently every time")

    def _read_once(self, spa: int, length: int, asid: int) -> bytes:
        try:
            data = self._read_spa(asid, spa, length)
        except Exception as exc:
            if getattr(exc, "errno", None) in (errno.EPERM, errno.ESRCH):
                raise OutOfRange(str(exc)) from None
            # The ioctl carries only the status code: the reason goes to the log.
            log.error("machine memory at SPA %#x could not be read: %s", spa, exc)
            raise MemoryFault(str(exc)) from None
        if len(data) != length:
            raise MemoryFault(f"READ_SPA at {spa:#x} returned {len(data)} of {length} bytes")
        return data

    def _chunks(self, spa: int, length: int, asid: int):
        if not self.contains(spa, length):
            raise OutOfRange(f"[{spa:#x}, +{length:#x}) is not a machine address range")
        for at in range(spa, spa + length, READ_CHUNK):
            yield self._chunk(at, min(READ_CHUNK, spa + length - at), asid)

    def read(self, spa: int, length: int, asid: int = 0) -> bytes:
        return b"".join(self._chunks(spa, length, asid))

    def write(self, spa: int, data: bytes, asid: int = 0, what: str = "data") -> None:
        # Read first, so Xen still refuses an address that is not this guest's RAM.
        self.read(spa, len(data), asid)
        log.warning(
            "%s of %d bytes at SPA %#x (ASID %d) was checked and not written (measure-only test mode)",
            what,
            len(data),
            spa,
            asid,
        )

    def in_place(
        self, spa: int, length: int, observe: Callable[[memoryview], None], vek: bytes | None, asid: int = 0
    ) -> None:
        """Show the bytes at `spa` to `observe`, chunk by chunk; never encrypts."""
        if vek is not None:
            raise ValueError("machine memory read through Xen cannot be encrypted (measure-only test mode)")
        # Test mode only: a hash per range says where a measurement that does not verify went wrong
        # (the boot image is the owner's own file; nothing here is secret).
        seen = hashlib.sha256()
        for chunk in self._chunks(spa, length, asid):
            observe(memoryview(chunk))
            seen.update(chunk)
        log.info("measure-only: ASID %d measured [%#x, +%#x) sha256 %s", asid, spa, length, seen.hexdigest())

    def close(self) -> None:
        if self._close is not None:
            self._close()


def crypt(vek: bytes, spa: int, data: bytes) -> bytes:
    """Encrypt or decrypt (the same operation) `data` that lives at `spa` under the guest key `vek`."""
    return _engine(vek, spa).update(data)


def _engine(vek: bytes, spa: int):
    if spa % BLOCK:
        raise ValueError(f"SPA {spa:#x} is not {BLOCK}-byte aligned")
    counter = (spa // BLOCK).to_bytes(16, "big")
    return Cipher(algorithms.AES(vek), modes.CTR(counter)).encryptor()
