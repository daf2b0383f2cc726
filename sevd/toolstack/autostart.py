"""`xl-sev autostart`: start the guests whose cfgs are in /etc/sevd/auto, each through the launch flow of
`xl-sev create` (sevd.toolstack.launch), at boot (sevd-autostart.service) or by hand.

Stock xendomains starts what /etc/xen/auto holds with plain `xl create`, which ignores `sev = 1` and runs the
guest without SEV: SEV cfgs live here instead, and `xl-sev ok` warns about any left in /etc/xen/auto
(sevd.toolstack.xendomains).  A cfg naming `sev_session` stops at `measured` for its owner; one without is
launched unattested, as `xl-sev create` does.  A guest already running is left alone; one failure does not
stop the others.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sevd.abi.status import FirmwareError
from sevd.config import Config
from sevd.errors import SevdError
from sevd.toolstack.domains import xenstore
from sevd.toolstack.launch import CreateOptions, create_guest
from sevd.toolstack.waiting import Reporter
from sevd.xen import xlcfg
from sevd.xen.xsclient import Xenstore

AUTO_DIR = "/etc/sevd/auto"
SKIPPED_SUFFIXES = ("~", ".dpkg-old", ".dpkg-new", ".dpkg-dist", ".bak", ".swp")


@dataclasses.dataclass(frozen=True)
class Started:
    cfg: str
    name: str
    status: str  # "started", "measured" (waits for its owner), "running" (already), "failed"
    detail: str = ""

    def line(self) -> str:
        what = {
            "started": "started",
            "measured": "measured, waits for its owner (xl-sev inject-secret, xl-sev finish)",
            "running": "already running, left alone",
            "failed": "FAILED",
        }[self.status]
        return f"{self.cfg}: {self.name or '?'} {what}" + (f": {self.detail}" if self.detail else "")


def cfg_files(directory: Path) -> list[Path]:
    """The cfgs in `directory`, in name order; hidden files and editors' and dpkg's leftovers skipped."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(SKIPPED_SUFFIXES)
    )


def _running(xs: Xenstore, name: str) -> bool:
    return any(xs.read(f"/local/domain/{d}/name") == name for d in xs.list("/local/domain") if d.isdigit())


def start_all(config: Config, directory: Path, timeout: float, reporter: Reporter) -> list[Started]:
    """Create each cfg in `directory` not running yet; one `Started` per cfg."""
    results = []
    for path in cfg_files(directory):
        name = ""
        try:
            guest = xlcfg.load(path)
            name = guest.name
            with xenstore(config) as xs:
                if _running(xs, name):
                    results.append(Started(str(path), name, "running"))
                    continue
            reporter.line(f"autostart: {path}")
            result = create_guest(config, guest, CreateOptions(timeout=timeout), reporter)
            reporter.close()
            status = "measured" if result["state"] == "measured" else "started"
            results.append(Started(str(path), name, status, "" if guest.sev else "not an SEV guest (sev = 0)"))
        except (SevdError, FirmwareError) as exc:
            reporter.close()
            results.append(Started(str(path), name, "failed", str(exc)))
    return results
