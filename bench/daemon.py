"""The daemon's figures: xenstore round trips and overhead per launch, 256 concurrent launches, footprint.

Each figure is measured in the same run and printed as `bench: NAME VALUE UNIT target OP TARGET PASS|MISS`.
Real processes: the xenstored stand-in, `sevd run` (simulated PSP and Xen) and a simulated toolstack.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sevd.abi.policy import Policy
from sevd.guest import GuestCommands
from sevd.toolstack.domains import guest_rows
from sevd.toolstack.guestnodes import parse_summary
from sevd.xen import protocol as proto
from sevd.xen.xsclient import Xenstore
from sevd_sim.wire import XsType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from daemon_harness import OVMF, Harness  # noqa: E402

CONCURRENT = int(os.environ.get("BENCH_GUESTS", "256"))
RUNNING = proto.GuestState.RUNNING


def line(name: str, value: float, unit: str, op: str, target: float) -> None:
    ok = value <= target if op == "<=" else value >= target
    print(f"bench: {name} {value:.3g} {unit} target {op} {target:g} {'PASS' if ok else 'MISS'}")


def timed_launch(h: Harness, domid: int) -> tuple[float, int]:
    """Seconds from the request to `running`, waiting on a xenstore watch set up beforehand (no polling,
    which would steal the CPU from what is measured); and the toolstack's requests for it."""
    watcher = Xenstore(str(h.root / "xenstored.sock"))
    path = proto.guest_path(domid, "summary")
    try:
        watcher.watch([path])
        watcher.next_event(1.0)  # the watch's initial event
        start = time.perf_counter()
        before = h.xenstored.requests_by_pid[os.getpid()]
        h.request(domid)
        toolstack = h.xenstored.requests_by_pid[os.getpid()] - before
        deadline = start + 60
        while (summary := parse_summary(domid, watcher.read(path))) is None or summary.state != RUNNING:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"domain {domid} did not reach running")
            watcher.next_event(1.0)
        return time.perf_counter() - start, toolstack
    finally:
        watcher.close()


def bare_sequence(h: Harness, domid: int) -> float:
    """The same launch with no daemon and no xenstore: the PSP and Xen calls alone."""
    xen = h.toolstack.xen
    guest = GuestCommands(h.host.client())
    start = time.perf_counter()
    sev = xen.make_sev_domain(domid, es=False)
    handle = guest.launch_start(Policy(0))
    guest.activate(handle, sev.asid)
    xen.enable_sev(domid)
    for spa, length in xen.boot_image_ranges(domid):
        guest.launch_update_data(handle, spa, length)
    guest.launch_measure(handle)
    guest.launch_finish(handle)
    elapsed = time.perf_counter() - start
    guest.deactivate(handle)
    guest.decommission(handle)
    return elapsed


def requests_by_op(h: Harness, pid: int) -> Counter[str]:
    return Counter({XsType(op).name: n for (p, op), n in h.xenstored.requests_by_pid_op.items() if p == pid})


def rss_kib(pid: int, field: str = "RssAnon:") -> int:
    """The daemon's own memory: anonymous pages.  (RssFile also counts the simulated host's memory
    file, which the simulated PSP maps to encrypt in place; a real daemon maps no guest memory.)"""
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith(field):
            return int(text.split()[1])
    return 0


def switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for text in (task / "status").read_text().splitlines():
            if text.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(text.split()[1])
    return total


def list_latency(h: Harness) -> float:
    """What `xl-sev list` does against xenstore (its own function), in process (no interpreter start-up)."""
    start = time.perf_counter()
    guest_rows(h.xs)
    return time.perf_counter() - start


def run() -> None:
    image = OVMF.read_bytes()
    with tempfile.TemporaryDirectory(prefix="sevd-bench-") as tmp:
        memory = (CONCURRENT + 8) * 4 * 2**20 + (64 << 20)
        h = Harness(Path(tmp) / "host", persist=False, memory_size=memory, max_asid=CONCURRENT + 16, min_sev_asid=5)
        try:
            h.start_daemon()
            pid = h.daemon.pid
            time.sleep(0.5)
            before = switches(pid)
            time.sleep(3)
            idle_wakeups = (switches(pid) - before) / 3
            idle_rss = rss_kib(pid)

            # One launch: round trips on the xenstore socket (toolstack + daemon) and time vs the bare sequence.
            bare_dom = h.toolstack.create("bare", 4, image)
            bare = min(bare_sequence(h, h.toolstack.create(f"bare{i}", 4, image)) for i in range(3))
            del bare_dom
            times = []
            daemon_requests, toolstack_requests = [], []
            for i in range(3):
                domid = h.toolstack.create(f"one{i}", 4, image)
                d0 = h.xenstored.requests_by_pid[pid]
                ops0 = requests_by_op(h, pid)
                elapsed, toolstack = timed_launch(h, domid)
                times.append(elapsed)
                time.sleep(0.2)  # let the daemon's own follow-up writes land before counting
                daemon_requests.append(h.xenstored.requests_by_pid[pid] - d0)
                toolstack_requests.append(toolstack)
                breakdown = requests_by_op(h, pid) - ops0
            line("xenstore_requests_per_launch", min(daemon_requests), "requests", "<=", 8)
            ops = ", ".join(f"{n} {op}" for op, n in sorted(breakdown.items()))
            print(f"  sevd's own requests ({ops}); the toolstack adds {min(toolstack_requests)} (the request node)")
            line("launch_vs_bare_psp", min(times) / bare, "ratio", "<=", 1.15)
            print(f"  launch {min(times) * 1e3:.0f} ms end to end, bare PSP+Xen sequence {bare * 1e3:.0f} ms")

            # 256 launches at once.
            domids = [h.toolstack.create(f"c{i}", 4, image) for i in range(CONCURRENT)]
            latencies = []
            start = time.perf_counter()
            for domid in domids:
                h.request(domid)
            while True:
                latencies.append(list_latency(h))
                states = h.states(domids)
                if all(s in ("running", "error") for s in states):
                    break
            elapsed = time.perf_counter() - start
            failures = sum(s != "running" for s in states)
            line("concurrent_launch_failures", failures, "guests", "<=", 0)
            print(f"  {CONCURRENT} launches in {elapsed:.1f} s: {CONCURRENT / elapsed:.1f} launches/s")
            p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0]
            line("list_p99_during_launches", p99 * 1e3, "ms", "<=", 50)
            line("daemon_rss_idle", idle_rss / 1024, "MiB", "<=", 40)
            line(f"daemon_rss_{CONCURRENT}_guests", rss_kib(pid) / 1024, "MiB", "<=", 40)
            print(f"  RssFile (mapped simulated memory and libraries): {rss_kib(pid, 'RssFile:') / 1024:.0f} MiB")
            line("daemon_idle_wakeups", idle_wakeups, "per_s", "<=", 0)
        finally:
            h.close()


if __name__ == "__main__":
    run()
