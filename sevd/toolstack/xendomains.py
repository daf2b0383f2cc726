"""Debian's xendomains against SEV guests: the two `xl-sev ok` checks of what it would do with them.

xendomains (xen-utils-common) starts every cfg in XENDOMAINS_AUTO (/etc/xen/auto) with stock `xl create`,
which ignores `sev = 1`: the guest would run WITHOUT SEV, and nothing stock can be made to refuse it.  At
host shutdown it saves every domain to XENDOMAINS_SAVE (Debian's default /var/lib/xen/save) and restores
the images at boot (XENDOMAINS_RESTORE): an SEV guest's image could not be restored as an SEV guest (the
patched Xen refuses to save one), so hosts running SEV guests set XENDOMAINS_SAVE empty and their guests
are shut down, then started again through sevd (sevd.toolstack.autostart).  XENDOMAINS_MIGRATE likewise.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

from sevd.toolstack.autostart import AUTO_DIR, cfg_files
from sevd.toolstack.hostcheck import Check

XEN_AUTO = "/etc/xen/auto"  # xendomains' default XENDOMAINS_AUTO
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$")
_SEV_LINE = re.compile(r"^\s*sev\s*=\s*(?:1|0x0*1)\s*(?:#.*)?$", re.MULTILINE)


def settings(path: Path) -> dict[str, str] | None:
    """The variables /etc/default/xendomains sets (a shell fragment: `KEY=value`, quoted or not), or None
    when there is no such file (xendomains not installed)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _ASSIGNMENT.match(line)
        if match:
            try:
                words = shlex.split(match.group(2), comments=True)
            except ValueError:
                words = [match.group(2).strip()]
            values[match.group(1)] = words[0] if words else ""
    return values


def is_sev_cfg(path: Path) -> bool:
    """Does this xl cfg ask for SEV (`sev = 1`)?  Read with Xen's own parser when it loads, else by line."""
    with contextlib.suppress(Exception):
        from sevd.xen.xlcfg import XlConfig

        with XlConfig(path) as cfg:
            return cfg.long("sev") == 1
    try:
        return bool(_SEV_LINE.search(path.read_text(errors="replace")))
    except OSError:
        return False


def checks(defaults: Path, auto_default: Path) -> list[Check]:
    """`xendomains autostart` and `xendomains save` for the host whose xendomains settings are `defaults`."""
    values = settings(defaults)
    if values is None:
        return [Check("xendomains", True, f"{defaults} missing: xendomains does not start, save or restore guests")]
    auto = Path(values.get("XENDOMAINS_AUTO") or auto_default)
    sev = [p.name for p in cfg_files(auto) if is_sev_cfg(p)]
    autostart = Check(
        "xendomains autostart",
        not sev,
        f"{auto} holds SEV cfgs ({', '.join(sev)}): xendomains starts them at boot with stock `xl create`, "
        "which ignores sev = 1: they would run WITHOUT SEV"
        if sev
        else f"no SEV cfg in {auto}",
        f"move them to {AUTO_DIR} (sevd-autostart.service starts those through sevd)",
        required=False,
    )
    saving = [f"{key}={values[key]}" for key in ("XENDOMAINS_SAVE", "XENDOMAINS_MIGRATE") if values.get(key)]
    save = Check(
        "xendomains save",
        not saving,
        f"{' and '.join(saving)} in {defaults}: at host shutdown xendomains saves (or migrates) every guest; an SEV "
        "guest cannot be saved or migrated (Xen refuses), so it is neither kept nor restored as an SEV guest"
        if saving
        else f"XENDOMAINS_SAVE empty in {defaults}: guests are shut down at host shutdown, not saved",
        f"set XENDOMAINS_SAVE= and XENDOMAINS_MIGRATE= (empty) in {defaults}; SEV guests are then shut down "
        f"and started again at boot from {AUTO_DIR}",
        required=False,
    )
    return [autostart, save]
