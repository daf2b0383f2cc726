"""sevd's real hypervisor backend (sevd/xen/domctl.py) against the patched Xen, from Dom0 of the QEMU boot.

usage: domctl-smoke.py DOMID   (a paused, never-run PVH domain of 32 MiB; sev=test; all ASIDs clean)
Prints "SEVD-CHECK ok|FAIL: python ..." lines like dom0-init's checks; exit status 1 on any failure.
"""

import subprocess
import sys

from sevd.xen.domctl import DomctlXen, HypervisorError

failures = 0


def check(name, ok, detail):
    global failures
    print(f"SEVD-CHECK {'ok' if ok else 'FAIL'}: python {name}: {detail}", flush=True)
    failures += not ok


def main(domid: int) -> int:
    xen = DomctlXen()
    info = xen.info()
    check("info", info.available and info.test_mode and (info.max_asid, info.min_sev_asid) == (7, 4), info)
    dom = xen.make_sev_domain(domid, es=False)
    check("make_sev_domain", (dom.asid, dom.cbit) == (4, 47), dom)
    # 2048 frames: two GET_RANGES calls (at most 1024 frames each), runs joined across them.
    runs = xen.frame_ranges(domid, 0x100, 2048)
    check("guest_ranges 8 MiB", sum(n for _, n in runs) == 2048 * 4096 and len(runs) >= 1, runs[:4])
    spa, length = runs[0]
    xen.check_spa(dom.asid, spa, min(length, 1 << 20))
    check("check_spa own memory", True, hex(spa))
    try:
        xen.boot_image_ranges(domid)  # OVMF's place below 4 GiB: not RAM of a 32 MiB guest
        check("boot_image_ranges outside RAM refused", False, "no error")
    except HypervisorError as e:
        check("boot_image_ranges outside RAM refused", "EINVAL" in str(e), e)
    xen.enable_sev(domid)
    check("enable_sev", True, domid)
    subprocess.run(["xl", "destroy", str(domid)], check=True)
    info = xen.info()
    check("ASID dirty after destroy", info.dirty == (4,), info.dirty)
    xen.release_pages(domid)  # after DECOMMISSION: the dead domain's pinned pages go
    check("release_pages", True, domid)
    xen.wbinvd_all_cpus()
    xen.asids_flushed([4])
    info = xen.info()
    check("wbinvd_all + asids_flushed", info.dirty == (), info.dirty)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main(int(sys.argv[1])))
    except Exception as e:  # any surprise is a failed check, with its reason on the console
        check("backend", False, f"{type(e).__name__}: {e}")
        sys.exit(1)
