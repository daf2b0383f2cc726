"""The platform's certificate chain as files, for its owner: PDH_CERT_EXPORT, then the CEK AMD signed and the
ARK and ASK from the key server (real firmware exports its CEK unsigned)."""

from __future__ import annotations

import os
from pathlib import Path

from sevd.backends import open_psp
from sevd.config import Config
from sevd.platform import Platform


def export_chain(config: Config, directory: str | os.PathLike[str], kds_url: str | None = None) -> list[Path]:
    """pdh, pek, oca, cek, ark and ask .cert (sev-tool's names) into `directory`; the paths."""
    return Platform(open_psp(config, write=False)).export_full_chain(directory, config.keyserver(kds_url))
