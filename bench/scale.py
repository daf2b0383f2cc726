"""The whole ASID space: as many concurrent SEV guests as a Genoa has ASIDs, then a SIGKILL and the restart.

A simulated Genoa (1,006 ASIDs: 1-499 for SEV-ES, 500-1,006 for SEV) with one guest per ASID: the ES range
filled with SEV-ES guests (one VMSA each), the rest with plain SEV guests.  Each domain is 1 MiB with a one-page
boot image, so the simulated memory holds them all; what is measured is the daemon, not the image size.
Figures named by the guest count: failures, daemon RssAnon, the `list` p99 during the launches, and the time
from a restarted `sevd run` to its xenstore ready node after a SIGKILL with every guest tracked.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.daemon import Harness, line, list_latency, rss_kib
from sevd.abi.policy import Policy, PolicyFlag
from sevd.xen import protocol as proto
from sevd_sim.cpu import cpu_model

CPU = "genoa"
MODEL = cpu_model(CPU)
GUESTS = int(os.environ.get("BENCH_SCALE_GUESTS", str(MODEL.max_asid)))
ES_GUESTS = min(GUESTS, MODEL.min_sev_asid - 1)  # ASIDs below min_sev_asid are SEV-ES's
IMAGE = b"\xc3" * 4096  # one page
MEMORY_MB = 1
# The simulated host in memory when there is a tmpfs: the figures here are counts, memory and the list's
# latency, not the disk's sync latency (the launch ratio in bench/daemon.py keeps the journal on disk).
TMPFS = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def wait_ready(h: Harness, pid: int, timeout: float = 60, poll: float = 0.005) -> None:
    """Until /sevd/daemon says ready with `pid` (polled every 5 ms: the bench's own share of the CPU)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if h.xs.read(proto.DAEMON_READY) == "1" and h.xs.read(proto.DAEMON_PID) == str(pid):
            return
        time.sleep(poll)
    raise RuntimeError(f"sevd (pid {pid}) not ready after {timeout} s")


def import_time() -> float:
    """What a new `sevd run` spends before its own code runs: the interpreter and the daemon's imports."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sevd.daemon.service, sevd.backends"], check=True)
    return time.perf_counter() - start


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="sevd-bench-", dir=TMPFS) as tmp:
        # 1 MiB per domain plus a hole per run and Xen's VMSA pages, with room to spare.
        memory = GUESTS * (MEMORY_MB << 20) * 2 + (64 << 20)
        h = Harness(Path(tmp) / "host", persist=False, memory_size=memory, cpu=CPU)
        try:
            h.start_daemon()
            assert h.daemon is not None
            start = time.perf_counter()
            domids = [h.toolstack.create(f"s{i}", MEMORY_MB, IMAGE) for i in range(GUESTS)]
            created = time.perf_counter() - start
            es = Policy(int(PolicyFlag.ES))
            latencies = []
            start = time.perf_counter()
            for i, domid in enumerate(domids):
                h.request(domid, es if i < ES_GUESTS else None)
            while True:
                latencies.append(list_latency(h))
                states = h.states(domids)
                if all(s in ("running", "error") for s in states):
                    break
            elapsed = time.perf_counter() - start
            failures = sum(s != "running" for s in states)
            line(f"concurrent_launch_failures_{GUESTS}_guests", failures, "guests", "<=", 0)
            print(
                f"  {GUESTS} guests on a simulated {CPU} ({ES_GUESTS} SEV-ES, {GUESTS - ES_GUESTS} SEV): created in "
                f"{created:.1f} s, launched in {elapsed:.1f} s ({GUESTS / elapsed:.1f} launches/s)"
            )
            p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0]
            line(f"list_p99_{GUESTS}_guests", p99 * 1e3, "ms", "<=", 10)
            print(f"  {len(latencies)} list reads, median {statistics.median(latencies) * 1e3:.1f} ms")
            line(f"daemon_rss_{GUESTS}_guests", rss_kib(h.daemon.pid) / 1024, "MiB", "<=", 48)

            # SIGKILL with every guest tracked, then a new `sevd run`: time to its ready node.
            h.stop_daemon(signal.SIGKILL)
            start = time.perf_counter()
            wait_ready(h, h.start_daemon(wait=False).pid)
            ready = time.perf_counter() - start
            line(f"restart_ready_{GUESTS}_guests", ready, "s", "<=", 2)
            print(
                f"  ready {ready:.2f} s after the new `sevd run` started, of which interpreter start-up and imports "
                f"about {import_time():.2f} s"
            )
        finally:
            h.close()


if __name__ == "__main__":
    run()
