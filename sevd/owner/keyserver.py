"""AMD's key distribution server (KDS): the ASK-signed CEK of a chip, and the ARK/ASK of a generation.

Real firmware's PDH_CERT_EXPORT gives a CEK that AMD has not signed.  AMD signs each chip's CEK once and serves
it by the chip id GET_ID returns; sevctl (`export --full`) and AMD's sev-tool (`export_cert_chain`) fetch it
from there.  The paths are AMD's (see docs/guest-owner.md, "The key server", for the sources):

    <url>/cek/id/<chip id, lower-case hex>          the CEK signed by the ASK, an SEV certificate (0x824 bytes)
    <roots_url>/ask_ark_<generation>.cert           the ASK followed by the ARK, AMD certificates

with url = https://kdsintf.amd.com and roots_url = https://developer.amd.com/wp-content/resources.  Any other
base URL (a mirror, an air-gapped copy, the simulated host's `file://HOST/kds`) holds both trees under one base:
<url>/cek/id/... and <url>/wp-content/resources/ask_ark_....  `http(s)://` and `file://` URLs both work
(urllib).  Answers are cached under the same relative paths (default /var/cache/sevd/kds); a cached answer is
used without asking the server, so a pre-filled cache works offline.  `KeyServer.fetch_path` gives the same
fetching and caching to any other tree of the server (the SNP VCEKs, `sevd.owner.snp.kds`).

Nothing fetched here is trusted: the owner verifies the chain against AMD's bundled roots (sevd.owner.chain).
The checks here refuse answers that cannot be what was asked for (a malformed certificate, the wrong usage,
a CEK whose key is not the firmware's), with one line naming the URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
from collections.abc import Callable
from typing import TypeVar

from sevd.abi import certs
from sevd.abi.certs import AmdCert, SevCert, Usage
from sevd.errors import InputError, SevdError
from sevd.owner import files

AMD_KDS_URL = "https://kdsintf.amd.com"
AMD_ROOTS_URL = "https://developer.amd.com/wp-content/resources"
MIRROR_ROOTS_PATH = "wp-content/resources"  # where a one-base mirror keeps AMD's ask_ark files
DEFAULT_CACHE_DIR = pathlib.Path("/var/cache/sevd/kds")
CACHE_ENV = "SEVD_CACHE_DIR"  # sevd's cache directory; the key server's cache is its kds/ subdirectory
CHIP_ID_SIZE = 64  # GET_ID: 64 bytes per socket; the key server knows a chip by the first socket's id
MAX_ANSWER = 64 * 1024  # an SEV certificate is 2084 bytes, an ASK+ARK 3200
DEFAULT_TIMEOUT = 30.0
_T = TypeVar("_T")
_GENERATION = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class KeyServerError(SevdError):
    """The key server could not give a certificate, or gave one that cannot be what was asked for."""


def default_cache_dir() -> pathlib.Path:
    """$SEVD_CACHE_DIR/kds when set, else /var/cache/sevd/kds."""
    base = os.environ.get(CACHE_ENV)
    return pathlib.Path(base) / "kds" if base else DEFAULT_CACHE_DIR


def chip_id_hex(chip_id: bytes) -> str:
    """The chip id as the key server's path has it: the first socket's 64 bytes, lower-case hex (sev-tool)."""
    if len(chip_id) < CHIP_ID_SIZE:
        raise InputError(f"chip id: GET_ID gives {CHIP_ID_SIZE} bytes per socket, got {len(chip_id)}")
    return chip_id[:CHIP_ID_SIZE].hex()


def cek_path(chip_id: bytes) -> str:
    return f"cek/id/{chip_id_hex(chip_id)}"


def ask_ark_name(generation: str) -> str:
    if not _GENERATION.match(generation):
        raise InputError(f"generation {generation!r}: expected a lower-case name such as rome or milan")
    return f"ask_ark_{generation}.cert"


@dataclasses.dataclass(frozen=True)
class KeyServer:
    """A key server at `url` (AMD's by default) with a local cache (None: no cache)."""

    url: str = AMD_KDS_URL
    roots_url: str | None = None  # None: AMD's developer site for AMD's server, else <url>/wp-content/resources
    cache_dir: pathlib.Path | None = dataclasses.field(default_factory=default_cache_dir)
    generation: str | None = None  # the ask_ark file for this host's chip; None: the AMD generation that signed
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("url", "roots_url"):
            value = getattr(self, name)
            if value is not None and not re.match(r"^(https?|file)://", value):
                raise InputError(f"key server {name} {value!r}: expected an http://, https:// or file:// URL")

    @property
    def ask_ark_base(self) -> str:
        if self.roots_url is not None:
            return self.roots_url.rstrip("/")
        if self.url.rstrip("/") == AMD_KDS_URL:
            return AMD_ROOTS_URL
        return f"{self.url.rstrip('/')}/{MIRROR_ROOTS_PATH}"

    def cek_url(self, chip_id: bytes) -> str:
        return f"{self.url.rstrip('/')}/{cek_path(chip_id)}"

    def ask_ark_url(self, generation: str) -> str:
        return f"{self.ask_ark_base}/{ask_ark_name(generation)}"

    # -- fetching ------------------------------------------------------------------------------------------------

    def fetch_cek(self, chip_id: bytes) -> SevCert:
        """The chip's CEK as AMD signed it: an SEV certificate of usage CEK with an ASK signature."""
        url = self.cek_url(chip_id)
        hexid = chip_id_hex(chip_id)
        cache_rel = cek_path(chip_id)
        cached = self._cached(cache_rel, lambda data: _check_cek(data, url))
        if cached is not None:
            return cached
        data = self._get(url, f"the AMD-signed CEK of chip id {hexid}", f"chip id {hexid}")
        cert = _check_cek(data, url)
        self._store(cache_rel, data)
        return cert

    def fetch_ask_ark(self, generation: str) -> tuple[AmdCert, AmdCert]:
        """(ask, ark) of `generation` from the key server's ask_ark_<generation>.cert."""
        url = self.ask_ark_url(generation)
        cache_rel = f"{MIRROR_ROOTS_PATH}/{ask_ark_name(generation)}"
        cached = self._cached(cache_rel, lambda data: _check_ask_ark(data, url))
        if cached is not None:
            return cached
        data = self._get(url, f"the {generation} ASK and ARK", f"generation {generation}")
        pair = _check_ask_ark(data, url)
        self._store(cache_rel, data)
        return pair

    def fetch_path(self, rel: str, what: str, key: str, check: Callable[[bytes], _T]) -> tuple[_T, str]:
        """(checked answer, URL) for any path under `url` (the SNP VCEK tree, say): the cached answer when it
        passes `check`, else fetched, checked and cached under the same relative path (query string included)."""
        rel = rel.lstrip("/")
        if ".." in rel.split("?")[0].split("/"):
            raise InputError(f"key server path {rel!r}: no '..' allowed")
        url = f"{self.url.rstrip('/')}/{rel}"
        cached = self._cached(rel, check)
        if cached is not None:
            return cached, url
        data = self._get(url, what, key)
        value = check(data)
        self._store(rel, data)
        return value, url

    def _get(self, url: str, what: str, key: str) -> bytes:
        # Imported here: urllib.request brings http.client, email and ssl (megabytes the daemon, which
        # loads this module with its configuration, never uses).
        import urllib.error
        import urllib.request

        cache = f"the cache {self.cache_dir}" if self.cache_dir is not None else "no cache"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as answer:
                data = answer.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            raise KeyServerError(
                f"key server {url} answered HTTP {exc.code} for {key} ({cache} lacks it): "
                f"the certificate chain is unverifiable without {what}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            reason = getattr(reason, "strerror", None) or reason
            raise KeyServerError(
                f"cannot fetch {url} for {key} ({reason}) and {cache} lacks it: "
                f"the certificate chain is unverifiable without {what}"
            ) from None
        if len(data) > MAX_ANSWER:
            raise KeyServerError(f"key server {url}: the answer is over {MAX_ANSWER} bytes, not a certificate")
        return data

    def _cached(self, rel: str, check: Callable[[bytes], _T]) -> _T | None:
        """A valid cached answer, or None (missing or unusable: fetched again)."""
        if self.cache_dir is None:
            return None
        path = self.cache_dir / rel
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            return check(data)
        except SevdError:
            return None

    def _store(self, rel: str, data: bytes) -> None:
        """Best effort: a cache that cannot be written (a user without rights to it) costs a later fetch only."""
        if self.cache_dir is None:
            return
        path = self.cache_dir / rel
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            files.write_public(path, data)


# -- what an answer must be -------------------------------------------------------------------------------------


def _check_cek(data: bytes, url: str) -> SevCert:
    try:
        cert = SevCert.parse(data, f"key server {url}")
    except InputError as exc:
        raise KeyServerError(f"{exc} (expected the CEK as an SEV certificate)") from None
    if cert.usage != Usage.CEK:
        raise KeyServerError(f"key server {url}: gave a {cert.role} certificate, expected a CEK")
    if not any(s.usage == Usage.ASK for s in cert.sigs):
        raise KeyServerError(f"key server {url}: the CEK carries no ASK signature (AMD's KDS serves it signed)")
    return cert


def _check_ask_ark(data: bytes, url: str) -> tuple[AmdCert, AmdCert]:
    try:
        ask, ark = certs.split_ask_ark(data, f"key server {url}")
    except InputError as exc:
        raise KeyServerError(str(exc)) from None
    if ask.usage != Usage.ASK or ark.usage != Usage.ARK:
        raise KeyServerError(f"key server {url}: holds {ask.role} then {ark.role}, expected the ASK then the ARK")
    if not ark.is_signed_by(ark) or not ask.is_signed_by(ark):
        raise KeyServerError(f"key server {url}: the ARK does not sign itself and the ASK")
    return ask, ark


# -- completing an exported chain --------------------------------------------------------------------------------


def _firmware_cek(data: bytes) -> SevCert | None:
    """The firmware's exported CEK, or None when it holds no usable CEK key (Genoa firmware is documented to
    export an unsigned dummy): the fetched CEK is then tied to the platform by its signature on the PEK alone."""
    try:
        cert = SevCert.parse(data, "the firmware's CEK")
    except InputError:
        return None
    return cert if cert.usage == Usage.CEK else None


@dataclasses.dataclass(frozen=True)
class CompletedChain:
    paths: list[pathlib.Path]
    chip_id: str
    generation: str
    cek_url: str
    ask_ark_url: str


def complete_chain_dir(directory: str | os.PathLike[str], chip_id: bytes, server: KeyServer) -> CompletedChain:
    """Turn a PDH_CERT_EXPORT directory (pdh, pek, oca and the firmware's unsigned cek .cert) into the full
    chain sevctl's `export --full` and sev-tool's `export_cert_chain` give: cek.cert replaced by the CEK the key
    server signed, ark.cert and ask.cert added.

    `server.generation` names the ask_ark file to fetch; by default it is the AMD generation whose bundled ASK
    signed the fetched CEK.  The fetched CEK must hold the firmware's CEK key and sign the exported PEK.
    """
    d = pathlib.Path(directory)
    cek_file = d / files.CEK
    firmware_cek = _firmware_cek(files.read_bytes(cek_file, "the firmware's CEK"))
    pek = SevCert.parse(files.read_bytes(d / files.PEK, "PEK"), str(d / files.PEK))
    url = server.cek_url(chip_id)
    signed = server.fetch_cek(chip_id)
    if firmware_cek is not None and (signed.algo, signed.pubkey) != (firmware_cek.algo, firmware_cek.pubkey):
        raise KeyServerError(
            f"key server {url}: its CEK holds a different key than this firmware's CEK (chip id {chip_id_hex(chip_id)})"
        )
    if not pek.is_signed_by(signed):
        raise KeyServerError(f"key server {url}: its CEK did not sign this platform's PEK")
    generation = server.generation
    if generation is None:
        try:
            generation = certs.identify_generation(signed)
        except SevdError:
            raise KeyServerError(
                f"key server {url}: its CEK is not signed by the ASK of any AMD generation sevd knows; "
                "name the generation whose ask_ark file to fetch ([keyserver] generation)"
            ) from None
    ask, ark = server.fetch_ask_ark(generation)
    if not signed.is_signed_by(ask):
        raise KeyServerError(f"{server.ask_ark_url(generation)}: its ASK did not sign the CEK of this chip")
    paths = [
        files.write_public(cek_file, signed.to_bytes()),
        files.write_public(d / files.ASK, ask.to_bytes()),
        files.write_public(d / files.ARK, ark.to_bytes()),
    ]
    return CompletedChain(paths, chip_id_hex(chip_id), generation, url, server.ask_ark_url(generation))
