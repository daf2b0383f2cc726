"""sevd.toml: which PSP, xenstore and hypervisor a daemon or CLI talks to.

[psp]        backend = "device" | "simulated";  path = "/dev/sev" or the simulated host dir
[xenstore]   socket = "/run/xenstored/socket"
[hypervisor] backend = "xen" | "simulated";  path = the simulated host dir
[daemon]     state_dir = "/var/lib/sevd";  log_level = "info"
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

from sevd.errors import InputError
from sevd.psp.device import DEFAULT_DEVICE

DEFAULT_CONFIG = Path("/etc/sevd/sevd.toml")


@dataclasses.dataclass(frozen=True)
class Config:
    psp_backend: str = "device"
    psp_path: str = DEFAULT_DEVICE
    xenstore_socket: str = "/run/xenstored/socket"
    hypervisor_backend: str = "xen"
    hypervisor_path: str = ""
    state_dir: str = "/var/lib/sevd"
    log_level: str = "info"
    source: str = "<defaults>"

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Config:
        """From `path`, else $SEVD_CONFIG, else /etc/sevd/sevd.toml; errors name the file and key."""
        chosen = Path(path or os.environ.get("SEVD_CONFIG") or DEFAULT_CONFIG)
        try:
            data = tomllib.loads(chosen.read_text())
        except FileNotFoundError:
            raise InputError(f"{chosen}: no such configuration file (use --config or $SEVD_CONFIG)") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{chosen}: not valid TOML: {exc}") from None

        def get(section: str, key: str, default: str, choices: tuple[str, ...] = ()) -> str:
            value = data.get(section, {}).get(key, default)
            if not isinstance(value, str):
                raise InputError(f"{chosen}: [{section}] {key} must be a string")
            if choices and value not in choices:
                raise InputError(f"{chosen}: [{section}] {key} = {value!r} is not one of {', '.join(choices)}")
            return value

        return cls(
            psp_backend=get("psp", "backend", "device", ("device", "simulated")),
            psp_path=get("psp", "path", DEFAULT_DEVICE),
            xenstore_socket=get("xenstore", "socket", cls.xenstore_socket),
            hypervisor_backend=get("hypervisor", "backend", "xen", ("xen", "simulated")),
            hypervisor_path=get("hypervisor", "path", ""),
            state_dir=get("daemon", "state_dir", cls.state_dir),
            log_level=get("daemon", "log_level", "info", ("debug", "info", "warning", "error")),
            source=str(chosen),
        )
