"""The simulated RMP (Reverse Map Table): one entry per 4 KiB page of system memory, owned by the simulated Xen.

On SNP hardware the RMP says, for every page, whether it is assigned to a guest (or the firmware), which ASID
and GPA, whether the guest validated it, whether it is immutable (only the firmware may change it) and the
page size.  The hypervisor writes it with RMPUPDATE and PSMASH (AMD64 APM vol. 2, 15.36 "Secure Nested
Paging"); the firmware checks it on every page it touches and changes entries itself (SNP ABI 56860, "Page
States").  On Xen, Xen sets the RMP up before Dom0 starts and does every RMPUPDATE (docs/snp.md); here
`SimulatedXen` does the same through this module.

`Rmp` is sans-I/O over a JSON-able dict; `RmpFile` keeps it in `HOST/rmp.json` under `HOST/rmp.lock`, so the
simulated Xen and the simulated PSP (which holds its own mailbox lock first) see one table.  Pages absent from
the dict are in the default state: hypervisor-owned (not assigned).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sevd.durable import exclusive, read_json, write_json

PAGE = 4096
PAGES_2M = 512


class RmpError(Exception):
    """An RMPUPDATE or PSMASH the hardware refuses (FAIL_INPUT, FAIL_PERMISSION, FAIL_SIZEMISMATCH)."""


@dataclasses.dataclass(frozen=True)
class RmpEntry:
    assigned: bool = False
    asid: int = 0
    gpa: int = 0
    validated: bool = False
    immutable: bool = False
    page_size: int = 0  # 0: 4 KiB, 1: part of a 2 MiB entry
    vmsa: bool = False
    # What the firmware made of a page it owns ("context" for a guest context page, else ""); the hardware
    # keeps this in the firmware's own metadata, not in the RMP entry.
    firmware_use: str = ""

    @property
    def hypervisor_owned(self) -> bool:
        return not self.assigned

    @property
    def firmware_owned(self) -> bool:
        """The "Firmware" or "Context" page state: assigned to ASID 0, immutable."""
        return self.assigned and self.asid == 0 and self.immutable

    @property
    def pre_guest(self) -> bool:
        """Assigned to a guest ASID, not yet validated, mutable: what SNP_LAUNCH_UPDATE takes."""
        return self.assigned and self.asid != 0 and not self.validated and not self.immutable


_DEFAULT = dataclasses.asdict(RmpEntry())


class Rmp:
    def __init__(self, state: dict[str, Any]):
        self.state = state
        state.setdefault("initialised", False)
        state.setdefault("entries", {})

    @property
    def initialised(self) -> bool:
        return bool(self.state["initialised"])

    def setup(self) -> None:
        """Xen at boot: RMP base/end programmed, every entry cleared, SNPEn set on every CPU."""
        self.state["initialised"] = True
        self.state["entries"] = {}

    def entry(self, spa: int) -> RmpEntry:
        raw = self.state["entries"].get(str(spa // PAGE))
        return RmpEntry(**raw) if raw else RmpEntry()

    def firmware_use(self, spa: int) -> str:
        """`entry(spa).firmware_use` without building the entry (checked on every guest command)."""
        raw = self.state["entries"].get(str(spa // PAGE))
        return str(raw["firmware_use"]) if raw else ""

    def _store(self, spa: int, entry: RmpEntry) -> None:
        key = str(spa // PAGE)
        if entry == RmpEntry():
            self.state["entries"].pop(key, None)
        else:
            self.state["entries"][key] = dict(vars(entry))  # flat fields: asdict's deep copy is not needed

    # -- the hypervisor's instructions -------------------------------------------------------------------

    def rmpupdate(
        self,
        spa: int,
        *,
        assigned: bool,
        asid: int = 0,
        gpa: int = 0,
        page_size: int = 0,
        immutable: bool = False,
        vmsa: bool = False,
    ) -> None:
        """RMPUPDATE: set a page's entry (all 512 for a 2 MiB one). Refused on immutable pages; clears Validated."""
        if not self.initialised:
            raise RmpError("the RMP is not set up (SNPEn clear)")
        if spa % PAGE or (page_size and spa % (PAGE * PAGES_2M)):
            raise RmpError(f"RMPUPDATE {spa:#x}: misaligned (FAIL_INPUT)")
        pages = PAGES_2M if page_size else 1
        for i in range(pages):
            if self.entry(spa + i * PAGE).immutable:
                raise RmpError(f"RMPUPDATE {spa + i * PAGE:#x}: immutable page (FAIL_PERMISSION)")
        for i in range(pages):
            self._store(
                spa + i * PAGE,
                RmpEntry(
                    assigned=assigned,
                    asid=asid if assigned else 0,
                    gpa=(gpa + i * PAGE) if assigned else 0,
                    immutable=immutable,
                    page_size=page_size,
                    vmsa=vmsa,
                ),
            )

    def psmash(self, spa: int) -> None:
        """PSMASH: split a 2 MiB entry into 512 4 KiB entries with the same attributes."""
        if spa % (PAGE * PAGES_2M):
            raise RmpError(f"PSMASH {spa:#x}: not 2 MiB aligned (FAIL_INPUT)")
        first = self.entry(spa)
        if first.page_size != 1:
            raise RmpError(f"PSMASH {spa:#x}: not a 2 MiB entry (FAIL_SIZEMISMATCH)")
        for i in range(PAGES_2M):
            self._store(spa + i * PAGE, dataclasses.replace(self.entry(spa + i * PAGE), page_size=0))

    # -- the firmware's own changes (it may change immutable pages) ---------------------------------------

    def firmware_set(self, spa: int, **fields: Any) -> None:
        key = str(spa // PAGE)
        raw = self.state["entries"].get(key)
        if raw is None:
            self._store(spa, RmpEntry(**fields))
        else:
            raw.update(fields)  # SNP_LAUNCH_UPDATE does this once per page: no entry built and copied
            if raw == _DEFAULT:
                del self.state["entries"][key]

    def firmware_release(self, spa: int) -> None:
        """Back to hypervisor-owned (SNP_PAGE_RECLAIM, DECOMMISSION of context pages)."""
        self._store(spa, RmpEntry())


class RmpFile:
    """The host's RMP on disk: `with RmpFile(host).open() as rmp:` loads it under its lock and saves it after."""

    def __init__(self, host: Path | str):
        self.path = Path(host) / "rmp.json"
        self.lock = Path(host) / "rmp.lock"

    def initialised(self) -> bool:
        """Xen has set the RMP up (read without taking the table)."""
        return self.path.exists() and bool(read_json(self.path).get("initialised"))

    @contextlib.contextmanager
    def open(self) -> Iterator[Rmp]:
        with exclusive(self.lock):
            state = read_json(self.path) if self.path.exists() else {}
            rmp = Rmp(state)
            try:
                yield rmp
            finally:
                write_json(self.path, rmp.state)
