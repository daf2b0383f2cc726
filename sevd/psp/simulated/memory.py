"""Simulated system-physical memory and the memory-encryption engine.

Memory is a sparse file that the simulated Xen (placing domains) and the simulated PSP (encrypting
them) both open, so every process of a simulated host sees the same bytes at the same system
physical address (SPA).

The encryption engine models what matters about SEV's AES engine: each guest has its own key
(VEK), and the keystream for a 16-byte block depends on the block's SPA.  Concretely it is
AES-128-CTR under the VEK with the counter block = SPA / 16, so one bulk call covers a contiguous
range, a page copied to another SPA decrypts to garbage, and the same plaintext in two guests
gives different ciphertext.  It is a model of the behaviour, not of the hardware's cipher.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
PAGE = 4096


class OutOfRange(Exception):
    """An access outside simulated memory (the firmware answers INVALID_ADDRESS)."""


class PhysicalMemory:
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

    def read(self, spa: int, length: int) -> bytes:
        self._check(spa, length)
        return os.pread(self.fd, length, spa)

    def write(self, spa: int, data: bytes) -> None:
        self._check(spa, len(data))
        os.pwrite(self.fd, data, spa)

    def in_place(self, spa: int, length: int, observe: Callable[[memoryview], None], vek: bytes | None) -> None:
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


def crypt(vek: bytes, spa: int, data: bytes) -> bytes:
    """Encrypt or decrypt (the same operation) `data` that lives at `spa` under the guest key `vek`."""
    return _engine(vek, spa).update(data)


def _engine(vek: bytes, spa: int):
    if spa % BLOCK:
        raise ValueError(f"SPA {spa:#x} is not {BLOCK}-byte aligned")
    counter = (spa // BLOCK).to_bytes(16, "big")
    return Cipher(algorithms.AES(vek), modes.CTR(counter)).encryptor()
