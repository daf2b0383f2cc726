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

Every key has a default, so no file at the default path means the defaults; a file named with --config or
$SEVD_CONFIG must exist.  A section or key not listed in KEYS is refused, naming it and the file: a typo must
not silently leave a setting at its default.
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

# Every section and its keys, as sevd.toml spells them.
KEYS: dict[str, tuple[str, ...]] = {
    "psp": ("backend", "path"),
    "xenstore": ("socket",),
    "hypervisor": ("backend", "path"),
    "daemon": ("state_dir", "log_level"),
    "keyserver": ("url", "roots_url", "generation", "cache"),
    "owner": ("roots",),
}


def _refuse_unknown(chosen: Path, data: dict[str, object]) -> None:
    for section, body in data.items():
        if section not in KEYS:
            known = ", ".join(f"[{s}]" for s in KEYS)
            raise InputError(f"{chosen}: unknown section [{section}] (known: {known})")
        if not isinstance(body, dict):
            raise InputError(f"{chosen}: {section} must be a [{section}] section, not a value")
        for key in body:
            if key not in KEYS[section]:
                raise InputError(f"{chosen}: unknown key {key!r} in [{section}] (known: {', '.join(KEYS[section])})")


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
        """From `path`, else $SEVD_CONFIG, else /etc/sevd/sevd.toml (the defaults when that file is absent);
        errors name the file and key."""
        named = path or os.environ.get("SEVD_CONFIG")
        chosen = Path(named or DEFAULT_CONFIG)
        try:
            data = tomllib.loads(chosen.read_text())
        except FileNotFoundError:
            if not named:
                return cls()
            raise InputError(f"{chosen}: no such configuration file (use --config or $SEVD_CONFIG)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{chosen}: cannot read the configuration: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{chosen}: not valid TOML: {exc}") from None
        _refuse_unknown(chosen, data)

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
