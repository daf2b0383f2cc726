"""The platform's certificate chain as files, for its owner: PDH_CERT_EXPORT plus whatever AMD roots the
PSP backend holds (a simulated chip's own ARK and ASK; none for a real chip, whose roots come from AMD)."""

from __future__ import annotations

import os
from pathlib import Path

from sevd.backends import amd_roots, open_psp
from sevd.config import Config
from sevd.platform import Platform


def export_chain(config: Config, directory: str | os.PathLike[str]) -> list[Path]:
    """pdh, pek, oca, cek .cert (sev-tool's names) into `directory`, then the backend's AMD roots; the paths."""
    paths = Platform(open_psp(config, write=False)).pdh_cert_export().write(directory)
    for name, blob in amd_roots(config).items():
        target = Path(directory) / name
        target.write_bytes(blob)
        paths.append(target)
    return paths
