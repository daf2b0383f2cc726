"""LAUNCH_UPDATE_DATA through the ioctl client vs this machine's limit for the same work.

The firmware's work for LAUNCH_UPDATE_DATA is one SHA-256 over the plaintext (the launch digest)
and one AES pass to encrypt it in place.  The limit is measured in the same run: AES-128-CTR over
the same 4 MiB in one call plus SHA-256 over it in one call.  ratio = limit time / command time
(best of several runs each); the simulator should reach 0.85 of the limit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sevd.abi.policy import Policy
from sevd.guest import GuestCommands
from sevd.psp.device import PspClient
from sevd_sim.psp.device import SimulatedPsp, create_psp
from sevd_sim.psp.memory import PhysicalMemory

SIZE = 4 << 20
SPA = 0x100000
TARGET = 0.85
RUNS = 7


def best_of(fn: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def limit(data: bytes) -> float:
    key, iv = os.urandom(16), os.urandom(16)

    def work() -> None:
        Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(data)
        hashlib.sha256(data).digest()

    return best_of(work)


def update_data(host: Path, data: bytes) -> float:
    psp = SimulatedPsp(host)
    guests = GuestCommands(PspClient(psp))
    handle = guests.launch_start(Policy(0))
    guests.activate(handle, 5)
    psp.memory.write(SPA, data)
    try:
        return best_of(lambda: guests.launch_update_data(handle, SPA, SIZE))
    finally:
        guests.launch_measure(handle)  # the digest of all runs is folded and dropped here
        psp.close()


def run() -> dict[str, float]:
    data = os.urandom(SIZE)
    with tempfile.TemporaryDirectory(prefix="sevd-bench-") as tmp:
        host = Path(tmp)
        PhysicalMemory.create(host / "memory.img", 16 << 20).close()
        create_psp(host)
        command = update_data(host, data)
    floor = limit(data)
    ratio = floor / command
    verdict = "PASS" if ratio >= TARGET else "MISS"
    print(f"bench: update_data_vs_limit {ratio:.2f} ratio target >= {TARGET} {verdict}")
    print(
        f"  LAUNCH_UPDATE_DATA 4 MiB: {command * 1e3:.1f} ms ({SIZE / command / 2**20:.0f} MiB/s); "
        f"AES-128-CTR + SHA-256 4 MiB: {floor * 1e3:.1f} ms ({SIZE / floor / 2**20:.0f} MiB/s)"
    )
    return {"ratio": ratio, "command_s": command, "limit_s": floor}


if __name__ == "__main__":
    run()
