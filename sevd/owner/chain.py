"""Verify a platform's certificate chain from a directory of files, as a guest owner receives it."""

from __future__ import annotations

import dataclasses
import os
import pathlib

from sevd.abi import certs
from sevd.abi.certs import AmdCert, PlatformChain, SevCert
from sevd.errors import InputError
from sevd.owner import files


@dataclasses.dataclass(frozen=True)
class ChainReport:
    chain: PlatformChain
    roots: str  # where the ARK/ASK came from: "arguments", "directory", "ask_ark.cert" or "builtin:<generation>"
    generation: str | None


def _sev(directory: pathlib.Path, filename: str) -> SevCert:
    path = directory / filename
    return SevCert.parse(files.read_bytes(path, filename), str(path))


def _amd(path: str | os.PathLike[str], what: str) -> AmdCert:
    return AmdCert.parse(files.read_bytes(path, what), str(path))


def load_platform_chain(
    directory: str | os.PathLike[str], ark: str | None = None, ask: str | None = None
) -> ChainReport:
    """Read pdh/pek/oca/cek from `directory` and find the AMD roots.

    Roots, in order of preference: --ark/--ask; ark.cert and ask.cert in the directory; sev-tool's ask_ark.cert;
    otherwise the packaged roots of the generation whose ASK signed the CEK.
    """
    d = pathlib.Path(directory)
    pdh, pek, oca, cek = (_sev(d, n) for n in (files.PDH, files.PEK, files.OCA, files.CEK))
    generation: str | None = None
    if ark is not None or ask is not None:
        if ark is None or ask is None:
            raise InputError("give both --ark and --ask, or neither")
        ark_c, ask_c, source = _amd(ark, "ARK"), _amd(ask, "ASK"), "arguments"
    elif (d / files.ARK).exists() and (d / files.ASK).exists():
        ark_c, ask_c, source = _amd(d / files.ARK, "ARK"), _amd(d / files.ASK, "ASK"), "directory"
    elif (d / files.ASK_ARK).exists():
        path = d / files.ASK_ARK
        ask_c, ark_c = certs.split_ask_ark(files.read_bytes(path, "ASK+ARK"), str(path))
        source = files.ASK_ARK
    else:
        generation = certs.identify_generation(cek)
        ark_c, ask_c = certs.builtin_roots(generation)
        source = f"builtin:{generation}"
    if generation is None:
        generation = next((g for g in certs.GENERATIONS if certs.builtin_roots(g)[0] == ark_c), None)
    return ChainReport(PlatformChain(pdh, pek, oca, cek, ask_c, ark_c), source, generation)


def verify_chain_dir(directory: str | os.PathLike[str], ark: str | None = None, ask: str | None = None) -> ChainReport:
    """Load and verify; raises VerificationError naming the failing link, InputError for unusable files."""
    report = load_platform_chain(directory, ark, ask)
    certs.verify_chain(report.chain)
    return report
