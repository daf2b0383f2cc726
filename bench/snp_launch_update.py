"""SNP_LAUNCH_UPDATE in the simulated SNP firmware vs this machine's OpenSSL SHA-384 over the same bytes.

The firmware's work for SNP_LAUNCH_UPDATE of a NORMAL page is the RMP checks, SHA-384 of the page (PAGE_INFO's
CONTENTS) and SHA-384 of the 0x70-byte PAGE_INFO that chains the previous digest in, then the RMP entry marked
validated.  The command is timed in the firmware model (`SnpFirmware.launch_update`) over the host's memory file
and an RMP held in memory, PAGES pages in a row; the limit is OpenSSL's SHA-384 (`cryptography`'s
hashes.SHA384) over the same page bytes plus one PAGE_INFO per page, in one call.  ratio = limit time / command
time, best of several runs each, the two interleaved so a busy moment hits both.  The same update through the
ioctl client (one command per page, the firmware's state kept on disk per command as for every simulated
command) is printed for information.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from sevd.abi import snp
from sevd.abi.snp import PageType, Product, SnpPolicy, SnpPolicyFlag
from sevd.abi.units import Asid, Spa
from sevd.psp.device import PspClient
from sevd.snp_firmware import SnpCommands
from sevd_sim.host import SimulatedHost
from sevd_sim.psp.memory import PhysicalMemory
from sevd_sim.psp.snp import SnpFirmware, new_snp_state
from sevd_sim.rmp import Rmp
from sevd_sim.xen import SimulatedXen

PAGE = 4096
PAGES = 256  # 1 MiB per run
GCTX = 0x0010_0000
BASE = 0x0020_0000
ASID = 1
TARGET = 0.5
RUNS = 15
IOCTL_PAGES = 16


def _firmware(memory: PhysicalMemory) -> tuple[SnpFirmware, Rmp]:
    rmp = Rmp({})
    rmp.setup()
    fw = SnpFirmware(
        new_snp_state(), rmp, memory, chip_id=bytes(64), product=Product.MILAN, cpuid={}, cpuid_fms=(0x19, 1, 1),
        min_sev_asid=5,
    )  # fmt: skip
    fw.init()
    rmp.rmpupdate(GCTX, assigned=True, asid=0, immutable=True)
    fw.gctx_create(GCTX)
    fw.launch_start(GCTX, int(SnpPolicy.make(SnpPolicyFlag.SMT)))
    fw.activate(GCTX, ASID)
    return fw, rmp


def _command(fw: SnpFirmware, rmp: Rmp) -> float:
    for i in range(PAGES):  # Xen's RMPUPDATE to Pre-Guest, not timed
        rmp.rmpupdate(BASE + i * PAGE, assigned=True, asid=ASID, gpa=i * PAGE)
    start = time.perf_counter()
    for i in range(PAGES):
        fw.launch_update(GCTX, BASE + i * PAGE, PageType.NORMAL)
    return time.perf_counter() - start


def _limit(data: bytes, infos: bytes) -> float:
    start = time.perf_counter()
    h = hashes.Hash(hashes.SHA384())
    h.update(data)
    h.update(infos)
    h.finalize()
    return time.perf_counter() - start


def _through_ioctls(root: Path) -> float:
    host = SimulatedHost.create(root, snp=True, linux="6.12")
    psp = host.psp()
    xen = SimulatedXen(root)
    cmds = SnpCommands(PspClient(psp))
    try:
        cmds.init()
        xen.rmpupdate(Spa(GCTX), assigned=True, asid=0, immutable=True)
        cmds.gctx_create(Spa(GCTX))
        cmds.launch_start(Spa(GCTX), SnpPolicy.make(SnpPolicyFlag.SMT))
        cmds.activate(Spa(GCTX), Asid(ASID))
        for i in range(IOCTL_PAGES):
            xen.rmpupdate(Spa(BASE + i * PAGE), assigned=True, asid=ASID, gpa=i * PAGE)
        start = time.perf_counter()
        for i in range(IOCTL_PAGES):
            cmds.launch_update(Spa(GCTX), Spa(BASE + i * PAGE), PageType.NORMAL)
        return (time.perf_counter() - start) / IOCTL_PAGES
    finally:
        psp.close()


def run() -> dict[str, float]:
    data = os.urandom(PAGES * PAGE)
    infos = os.urandom(PAGES * snp.PAGE_INFO_SIZE)
    with tempfile.TemporaryDirectory(prefix="sevd-bench-") as tmp:
        memory = PhysicalMemory.create(Path(tmp) / "memory.img", 16 << 20)
        try:
            memory.write(BASE, data)
            fw, rmp = _firmware(memory)
            command = floor = float("inf")
            for _ in range(RUNS):
                command = min(command, _command(fw, rmp))
                floor = min(floor, _limit(data, infos))
        finally:
            memory.close()
        per_ioctl = _through_ioctls(Path(tmp) / "host")
    ratio = floor / command
    verdict = "PASS" if ratio >= TARGET else "MISS"
    print(f"bench: snp_launch_update_vs_sha384 {ratio:.2f} ratio target >= {TARGET} {verdict}")
    print(
        f"  SNP_LAUNCH_UPDATE {PAGES} pages: {command * 1e3:.2f} ms ({command / PAGES * 1e6:.1f} us/page); "
        f"OpenSSL SHA-384 over the same bytes: {floor * 1e3:.2f} ms ({floor / PAGES * 1e6:.1f} us/page); "
        f"through the ioctl client: {per_ioctl * 1e3:.2f} ms/page"
    )
    return {"ratio": ratio, "command_s": command, "limit_s": floor, "ioctl_page_s": per_ioctl}


if __name__ == "__main__":
    run()
