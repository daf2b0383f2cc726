"""Owner file formats and file handling: sev-tool's and sevctl's names, private files written mode 0600."""

from __future__ import annotations

import base64
import binascii
import os
import pathlib

from sevd.abi.launch import KEY_SIZE, TransportKeys
from sevd.errors import InputError

# sev-tool file names (its --ofolder layout)
PDH = "pdh.cert"
PEK = "pek.cert"
OCA = "oca.cert"
CEK = "cek.cert"
ASK = "ask.cert"
ARK = "ark.cert"
ASK_ARK = "ask_ark.cert"  # sev-tool get_ask_ark: the ASK followed by the ARK
GODH = "godh.cert"
LAUNCH_BLOB = "launch_blob.bin"
TK = "tmp_tk.bin"  # TEK || TIK
SECRET_HEADER = "packaged_secret_header.bin"
SECRET = "packaged_secret.bin"


# sevctl session file names, for a session called `name`
def sevctl_names(name: str) -> dict[str, str]:
    return {
        "godh": f"{name}_godh.b64",
        "session": f"{name}_session.b64",
        "tek": f"{name}_tek.bin",
        "tik": f"{name}_tik.bin",
    }


def read_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    """Read a whole file; a missing or unreadable file is an InputError naming the file and its role."""
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def read_base64(path: str | os.PathLike[str], what: str) -> bytes:
    text = read_bytes(path, what)
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{path}: {what} is not valid base64") from None


def write_public(path: pathlib.Path, data: bytes) -> pathlib.Path:
    _write(path, data, 0o644)
    return path


def write_private(path: pathlib.Path, data: bytes) -> pathlib.Path:
    """Create or replace a file readable by its owner only (mode 0600 from the first byte written)."""
    _write(path, data, 0o600)
    return path


def _write(path: pathlib.Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_transport_keys(tk: str | None = None, tek: str | None = None, tik: str | None = None) -> TransportKeys:
    """TEK/TIK from sev-tool's tmp_tk.bin (32 bytes) or sevctl's NAME_tek.bin + NAME_tik.bin (16 bytes each)."""
    if tk is not None:
        return TransportKeys.parse(read_bytes(tk, "transport keys (TEK||TIK)"), str(tk))
    if tek is None or tik is None:
        raise InputError("give the transport keys as --tk tmp_tk.bin, or as --tek FILE and --tik FILE")
    return TransportKeys(read_key(tek, "TEK"), read_key(tik, "TIK"))


def read_key(path: str, what: str) -> bytes:
    data = read_bytes(path, what)
    if len(data) != KEY_SIZE:
        raise InputError(f"{path}: a {what} is {KEY_SIZE} bytes, got {len(data)}")
    return data


def read_tik(tik: str | None = None, tk: str | None = None) -> bytes:
    """The TIK alone, from a 16-byte TIK file or from tmp_tk.bin."""
    if tik is not None and tk is not None:
        raise InputError("give either --tik or --tk, not both")
    if tik is not None:
        return read_key(tik, "TIK")
    if tk is not None:
        return read_transport_keys(tk=tk).tik
    raise InputError("the TIK is needed: give --tik FILE (16 bytes) or --tk tmp_tk.bin (TEK||TIK)")
