"""Simulated system-physical memory and the memory-encryption engine.

Memory is a sparse file that the simulated Xen (placing domains) and the simulated PSP (encrypting
them) both open, so every process of a simulated host sees the same bytes at the same system
physical address (SPA).

The encryption engine models what matters about SEV's AES engine: each guest has its own key
(VEK), and the keystream for a 16-byte block depends on the block's SPA.  Concretely it is
AES-128-CTR under the VEK with the counter block = SPA / 16, so one bulk call covers a contiguous
range, a page copied to another SPA decrypts to garbage, and the same plaintext in two guests
gives different ciphertext.  It is a model of the behaviour, not of the hardware's cipher.

`MachineMemory` is the other kind: the machine memory of a real Xen host (sev=test under emulation),
read through Xen by system physical address, for a simulated PSP that measures but cannot encrypt.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sevd.abi.units import PHYS_ADDR_LIMIT

BLOCK = 16
READ_CHUNK = 1 << 20  # Xen's READ_SPA limit per call

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
