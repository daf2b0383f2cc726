"""Soak: 500 sequential create/launch/destroy cycles with two SEV ASIDs, so every other launch needs
WBINVD + DF_FLUSH and ASID reuse.  No leak of PSP contexts, ASIDs or journal files; daemon memory stable."""

from pathlib import Path

from daemon_harness import Harness, wait_for

from sevd.platform import Platform
from sevd.xen import protocol as proto

CYCLES = 500
IMAGE = b"\xc3" * (4 * 4096)


def rss_anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_500_cycles_without_leaks(tmp_path):
    h = Harness(tmp_path / "host", persist=False, max_asid=6, min_sev_asid=5)
    try:
        h.start_daemon()
        asids_seen = set()
        rss_early = 0
        for cycle in range(CYCLES):
            domid = h.toolstack.create(f"soak{cycle}", 1, IMAGE)
            h.request(domid)
            assert h.wait_state(domid, "running", "error", timeout=30) == "running", h.logs()[-3000:]
            asids_seen.add(h.field(domid, "asid"))
            h.toolstack.destroy(domid)
            wait_for(lambda d=domid: h.xs.read(proto.guest_path(d)) is None, 30, f"teardown of cycle {cycle}")
            if cycle == 50:
                rss_early = rss_anon_kib(h.daemon.pid)
        wait_for(lambda: Platform(h.host.client()).status().guests == 0, 30, "no PSP context left")
        assert asids_seen == {"5", "6"}
        assert list((h.root / "sevd-state" / "guests").iterdir()) == []
        growth = rss_anon_kib(h.daemon.pid) - rss_early
        print(f"soak: {CYCLES} cycles, daemon RssAnon growth after cycle 50: {growth} KiB")
        assert growth < 4096, f"daemon memory grew by {growth} KiB over {CYCLES - 50} cycles"
        assert h.logs().count("DF_FLUSH") >= CYCLES // 2 - 1
    finally:
        h.close()
