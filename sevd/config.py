"""sevd.toml: which PSP, xenstore and hypervisor a daemon or CLI talks to.

[psp]        backend = "device" | "simulated";  path = "/dev/sev" or the simulated host dir
[xenstore]   socket = "/run/xenstored/socket"
[hypervisor] backend = "xen" | "simulated";  path = the simulated host dir
[daemon]     state_dir = "/var/lib/sevd";  log_level = "info"
[keyserver]  url = "https://kdsintf.amd.com";  roots_url = AMD's developer site for AMD's url, else
             "<url>/wp-content/resources";  generation = the ask_ark file to fetch (default: the AMD
             generation whose ASK signed the CEK);  cache = "$SEVD_CACHE_DIR/kds" or "/var/cache/sevd/kds"
[owner]      roots = a directory (ark.cert + ask.cert) the local owner (`xl-sev create --attest`) trusts
             instead of AMD's bundled roots; unset on a real host
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

from sevd.errors import InputError
from sevd.owner.keyserver import AMD_KDS_URL, KeyServer, default_cache_dir
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
    keyserver_url: str = AMD_KDS_URL
    keyserver_roots_url: str = ""
    keyserver_generation: str = ""
    keyserver_cache: str = ""  # "" = $SEVD_CACHE_DIR/kds, else /var/cache/sevd/kds
    owner_roots: str = ""
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
            keyserver_url=get("keyserver", "url", AMD_KDS_URL),
            keyserver_roots_url=get("keyserver", "roots_url", ""),
            keyserver_generation=get("keyserver", "generation", ""),
            keyserver_cache=get("keyserver", "cache", ""),
            owner_roots=get("owner", "roots", ""),
            source=str(chosen),
        )

    def keyserver(self, url: str | None = None) -> KeyServer:
        """The key server this host fetches its signed CEK from; `url` (an option) overrides the config's."""
        cache = Path(self.keyserver_cache) if self.keyserver_cache else default_cache_dir()
        generation = self.keyserver_generation or None
        if url is not None:
            return KeyServer(url=url, roots_url=None, cache_dir=cache, generation=generation)
        try:
            return KeyServer(
                url=self.keyserver_url,
                roots_url=self.keyserver_roots_url or None,
                cache_dir=cache,
                generation=generation,
            )
        except InputError as exc:
            raise InputError(f"{self.source}: [keyserver] {exc}") from None
