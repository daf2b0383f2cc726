"""Verify a platform's certificate chain from a directory of files, as a guest owner receives it.

The owner trusts AMD's roots only: the ARK and ASK bundled with sevd (`sevd/abi/roots/<generation>/`), of the
generation whose ASK signed the CEK.  An ark.cert, ask.cert or ask_ark.cert in the directory comes from the host
and is never a source of trust: each must be AMD's own root of that generation, else the verification fails
naming the file.  Other roots (a test platform, the simulated host) are trusted only when the owner names them
explicitly (`roots=`, `--roots DIR`), and the report then says they are not AMD's.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from sevd.abi import certs
from sevd.abi.certs import AmdCert, PlatformChain, SevCert, Usage
from sevd.errors import InputError, VerificationError
from sevd.owner import files


@dataclasses.dataclass(frozen=True)
class ChainReport:
    chain: PlatformChain
    roots: str  # "builtin:<generation>" (AMD's bundled roots) or the path of the roots named explicitly
    generation: str | None  # the AMD generation the roots are, None for roots that are not AMD's
    amd: bool  # the roots are AMD's own (bundled, or named and identical to a bundled generation)

    @property
    def warning(self) -> str | None:
        if self.amd:
            return None
        return (
            f"WARNING: the roots in {self.roots} are not AMD's: this chain proves only that those keys signed it, "
            "not that the platform is a genuine AMD EPYC"
        )

    def describe_roots(self) -> str:
        if self.roots.startswith("builtin:"):
            return f"AMD's bundled {self.generation} roots"
        if self.amd:
            return f"{self.roots} (named explicitly; AMD's {self.generation} roots)"
        return f"{self.roots} (named explicitly; NOT AMD's)"


def _sev(directory: pathlib.Path, filename: str) -> SevCert:
    path = directory / filename
    return SevCert.parse(files.read_bytes(path, filename), str(path))


def _amd(path: str | os.PathLike[str], what: str) -> AmdCert:
    return AmdCert.parse(files.read_bytes(path, what), str(path))


def read_roots(location: str | os.PathLike[str]) -> tuple[AmdCert, AmdCert]:
    """(ark, ask) from a directory holding ark.cert and ask.cert (or sev-tool's ask_ark.cert)."""
    d = pathlib.Path(location)
    if not d.is_dir():
        raise InputError(f"--roots {d}: not a directory (expected one holding ark.cert and ask.cert)")
    if (d / files.ARK).exists() or (d / files.ASK).exists():
        return _amd(d / files.ARK, "ARK"), _amd(d / files.ASK, "ASK")
    if (d / files.ASK_ARK).exists():
        ask, ark = certs.split_ask_ark(files.read_bytes(d / files.ASK_ARK, "ASK+ARK"), str(d / files.ASK_ARK))
        return ark, ask
    raise InputError(f"--roots {d}: holds neither ark.cert + ask.cert nor ask_ark.cert")


def _host_roots(directory: pathlib.Path) -> list[tuple[pathlib.Path, AmdCert]]:
    """The ARK/ASK files the host put in the directory, each with its certificate."""
    found = []
    for name, what in ((files.ARK, "ARK"), (files.ASK, "ASK")):
        path = directory / name
        if path.exists():
            found.append((path, _amd(path, what)))
    path = directory / files.ASK_ARK
    if path.exists():
        ask, ark = certs.split_ask_ark(files.read_bytes(path, "ASK+ARK"), str(path))
        found += [(path, ask), (path, ark)]
    return found


def _builtin_generation(ark: AmdCert, ask: AmdCert) -> str | None:
    return next((g for g in certs.GENERATIONS if certs.builtin_roots(g) == (ark, ask)), None)


def load_platform_chain(
    directory: str | os.PathLike[str],
    roots: str | os.PathLike[str] | None = None,
    *,
    ark: str | os.PathLike[str] | None = None,
    ask: str | os.PathLike[str] | None = None,
) -> ChainReport:
    """Read pdh/pek/oca/cek from `directory` and choose the roots to trust.

    Trusted roots: AMD's bundled ARK/ASK of the generation whose ASK signed the CEK; or, only when named, the
    roots in `roots` (a directory) or the `ark`/`ask` files.  Root files in `directory` must be exactly the
    trusted ones, else VerificationError naming the file.
    """
    d = pathlib.Path(directory)
    pdh, pek, oca, cek = (_sev(d, n) for n in (files.PDH, files.PEK, files.OCA, files.CEK))
    host_roots = _host_roots(d)
    if (ark is None) != (ask is None):
        raise InputError("give both --ark and --ask, or neither")
    if roots is not None and ark is not None:
        raise InputError("give --roots DIR or --ark/--ask, not both")
    if roots is not None or ark is not None:
        if roots is not None:
            ark_c, ask_c = read_roots(roots)
            source = str(roots)
        else:
            assert ark is not None and ask is not None
            ark_c, ask_c = _amd(ark, "ARK"), _amd(ask, "ASK")
            source = f"{ark} + {ask}"
        generation = _builtin_generation(ark_c, ask_c)
        _expect_roots(ark_c, ask_c, source)
        trusted = f"the {{role}} of the roots named explicitly ({source})"
    else:
        try:
            generation = certs.identify_generation(cek)
        except VerificationError:
            if host_roots:
                path, cert = host_roots[0]
                raise VerificationError(
                    f"{path}: this {cert.role} is not AMD's and the CEK is not signed by any AMD generation's ASK; "
                    "only AMD's bundled roots are trusted (name other roots explicitly with --roots DIR)"
                ) from None
            raise
        ark_c, ask_c = certs.builtin_roots(generation)
        source = f"builtin:{generation}"
        trusted = f"AMD's {generation} {{role}}"
    for path, cert in host_roots:
        expected = ark_c if cert.usage == Usage.ARK else ask_c
        if cert != expected:
            raise VerificationError(
                f"{path}: this {cert.role} is not {trusted.format(role=cert.role)}; "
                "root files from the host are never trusted (name other roots explicitly with --roots DIR)"
            )
    return ChainReport(PlatformChain(pdh, pek, oca, cek, ask_c, ark_c), source, generation, generation is not None)


def _expect_roots(ark: AmdCert, ask: AmdCert, source: str) -> None:
    if ark.usage != Usage.ARK or ask.usage != Usage.ASK:
        raise InputError(f"{source}: expected an ARK and an ASK, got {ark.role} and {ask.role}")


def verify_chain_dir(
    directory: str | os.PathLike[str],
    roots: str | os.PathLike[str] | None = None,
    *,
    ark: str | os.PathLike[str] | None = None,
    ask: str | os.PathLike[str] | None = None,
) -> ChainReport:
    """Load and verify; raises VerificationError naming the failing link or file, InputError for unusable files."""
    report = load_platform_chain(directory, roots, ark=ark, ask=ask)
    certs.verify_chain(report.chain)
    return report
