"""The daemon's durable per-guest journal: written atomically before and after every PSP command.

One JSON file per domain in `state_dir/guests/`.  `pending` names the step in flight: after a
crash it says exactly which command may or may not have reached the firmware, and recovery asks
GUEST_STATUS which it was.  No secret is ever written here (the launch session blob is wrapped
for the firmware and safe to keep; TEK/TIK never reach the host).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sevd.durable import write_json


@dataclasses.dataclass
class GuestRecord:
    domid: int
    generation: int
    policy: int
    es: bool
    attest: bool
    image_gpa: int
    image_size: int
    state: str = "queued"
    step: str = "NEW"  # last step completed
    pending: str | None = None  # step in flight
    handle: int = 0
    asid: int = 0
    ranges_done: int = 0
    measurement: str | None = None
    error: str | None = None


class RecordStore:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir) / "guests"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, domid: int) -> Path:
        return self.dir / f"{domid}.json"

    def save(self, record: GuestRecord) -> None:
        write_json(self._path(record.domid), dataclasses.asdict(record))

    def load(self, domid: int) -> GuestRecord | None:
        path = self._path(domid)
        if not path.exists():
            return None
        return GuestRecord(**json.loads(path.read_bytes()))

    def load_all(self) -> list[GuestRecord]:
        return [GuestRecord(**json.loads(p.read_bytes())) for p in sorted(self.dir.glob("*.json"))]

    def delete(self, domid: int) -> None:
        self._path(domid).unlink(missing_ok=True)
