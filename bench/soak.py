"""Soak: 2,000 sequential create/launch/destroy cycles through one daemon, the simulated Xen freeing each
destroyed domain's memory (the host has room for a few dozen of them at once, so without the freeing the run
ends early).  SEV-ES and SEV guests alternate over 4 ES and 2 SEV ASIDs, so ASIDs are reused and WBINVD +
DF_FLUSH run every few cycles.  The figure: the daemon's RssAnon growth from cycle 200 (warmed up) to the end.
`tests/test_soak.py` keeps its own 500 cycles, asserted without timing.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.daemon import Harness, line, rss_kib
from bench.scale import TMPFS
from sevd.abi.policy import Policy, PolicyFlag
from sevd.platform import Platform
from sevd.xen import protocol as proto
from sevd.xen.xsclient import Xenstore

CYCLES = int(os.environ.get("BENCH_SOAK_CYCLES", "2000"))
WARM = min(200, CYCLES // 4)
IMAGE = b"\xc3" * 4096


def run() -> None:
    es = Policy(int(PolicyFlag.ES))
    with tempfile.TemporaryDirectory(prefix="sevd-bench-", dir=TMPFS) as tmp:
        h = Harness(Path(tmp) / "host", persist=False, memory_size=64 << 20, max_asid=6, min_sev_asid=5)
        watcher = Xenstore(str(h.root / "xenstored.sock"))
        try:
            h.start_daemon()
            assert h.daemon is not None
            pid = h.daemon.pid
            watcher.watch([proto.GUESTS])

            def until(done, what: str) -> None:  # woken by the watch, not polling
                deadline = time.monotonic() + 30
                while not done():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"soak: timed out waiting for {what}")
                    watcher.next_event(0.5)

            rss_warm = 0
            failures = 0
            start = time.perf_counter()
            for cycle in range(CYCLES):
                domid = h.toolstack.create(f"soak{cycle}", 1, IMAGE)
                h.request(domid, es if cycle % 2 else None)
                until(lambda d=domid: h.state(d) in ("running", "error"), f"the launch of cycle {cycle}")
                failures += h.state(domid) != "running"
                h.toolstack.destroy(domid)
                until(lambda d=domid: h.xs.read(proto.guest_path(d)) is None, f"the teardown of cycle {cycle}")
                if cycle == WARM:
                    rss_warm = rss_kib(pid)
            elapsed = time.perf_counter() - start
            growth = rss_kib(pid) - rss_warm
            left = Platform(h.host.client()).status().guests
            journals = len(list((h.root / "sevd-state" / "guests").iterdir()))
            line(f"soak_rss_growth_{CYCLES}_cycles", growth / 1024, "MiB", "<=", 1)
            print(
                f"  {CYCLES} cycles in {elapsed:.0f} s ({CYCLES / elapsed:.1f}/s), RssAnon growth after cycle {WARM}: "
                f"{growth} KiB; {failures} failed launches, {left} PSP contexts and {journals} journals left, "
                f"{h.logs().count('DF_FLUSH')} DF_FLUSH"
            )
        finally:
            watcher.close()
            h.close()


if __name__ == "__main__":
    run()
