"""The launch digest as a resumable SHA-256: its midstate is saved with the guest between commands.

The firmware hashes the plaintext of every LAUNCH_UPDATE_DATA/VMSA as it goes and only finishes
the hash at LAUNCH_MEASURE.  The simulator runs each command in whichever process issued it, so
the running hash must be stored between commands.  hashlib cannot export its state; OpenSSL's
SHA256_CTX (a public, fixed-layout struct: h[8], Nl, Nh, data[16], num, md_len = 112 bytes) can
be copied in and out, so the midstate goes into the state file and no plaintext is kept.
Without libcrypto's SHA256_* the digest falls back to a file of the measured plaintext.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from pathlib import Path

CTX_SIZE = 112


def _load() -> ctypes.CDLL | None:
    # find_library needs ldconfig or a compiler; a minimal root (the QEMU Dom0) has neither.
    name = ctypes.util.find_library("crypto") or "libcrypto.so.3"
    try:
        lib = ctypes.CDLL(name)
        for fn in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
            fn.restype = ctypes.c_int
        lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return lib


_LIB = _load()


class LaunchDigest:
    """SHA-256 over everything measured so far; `state` is a JSON-able string (midstate or file name)."""

    def __init__(self, state: str | None, spill: Path):
        self.spill = spill
        if _LIB is None:
            self.ctx = None
            if state is None:
                spill.write_bytes(b"")
            return
        self.ctx = ctypes.create_string_buffer(CTX_SIZE)
        if state is None or state == "file":
            _LIB.SHA256_Init(self.ctx)
        else:
            ctypes.memmove(self.ctx, bytes.fromhex(state), CTX_SIZE)

    @property
    def state(self) -> str:
        return "file" if self.ctx is None else self.ctx.raw.hex()

    def update(self, data: memoryview | bytes) -> None:
        if self.ctx is None:
            with open(self.spill, "ab") as f:
                f.write(data)
            return
        view = memoryview(data)
        if not len(view):
            return
        buf = (ctypes.c_char * len(view)).from_buffer(view) if not view.readonly else bytes(view)
        try:
            _LIB.SHA256_Update(self.ctx, buf, len(view))  # type: ignore[union-attr]
        finally:
            del buf

    def final(self) -> bytes:
        if self.ctx is None:
            h = hashlib.sha256()
            with open(self.spill, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            self.spill.unlink(missing_ok=True)
            return h.digest()
        out = ctypes.create_string_buffer(32)
        _LIB.SHA256_Final(out, self.ctx)  # type: ignore[union-attr]
        return out.raw
