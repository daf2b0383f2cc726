"""Compare what a launched SEV guest's memory holds with the owner's image of its cfg, page by page.

usage: compare-image.py DOMID CFG   (an SEV domain launched by sevd, never unpaused; sev=test)
       compare-image.py --log SEVD_LOG ASID CFG   (after the fact: the per-range hashes sevd logged
                                                   for the first launch with ASID, against CFG's image)
The measurement is an HMAC over these bytes, so a mismatch says only "different"; this says where:
the same request pieces sevd measured, read by machine address (GET_RANGES + READ_SPA) and set
against sevd.owner.pvh's image of the kernel and ramdisk.  Prints one SEVD-CHECK line.
"""

import hashlib
import re
import sys

from sevd.config import Config
from sevd.xen import protocol as proto
from sevd.xen import xlcfg
from sevd.xen.domctl import DomctlXen
from sevd.xen.xsclient import Xenstore

PAGE = 4096


def main(domid: int, cfg: str) -> int:
    xs = Xenstore(Config.load().xenstore_socket)
    request = proto.LaunchRequest.parse_text(domid, xs.read(proto.guest_path(domid, "request")))
    asid = proto.GuestSummary.parse(xs.read(proto.guest_path(domid, "summary"))).asid
    expected = xlcfg.load(cfg).read_image()
    xen = DomctlXen()
    actual = bytearray()
    for gpa, size in request.image_ranges:
        for spa, length in xen.guest_ranges(domid, gpa, size):
            actual += xen.read_spa(asid, spa, length)
    if bytes(actual) == expected:
        print(f"SEVD-CHECK ok: guest memory equals the owner's image ({len(expected)} bytes)", flush=True)
        return 0
    pieces, offset = [], 0
    for gpa, size in request.image_ranges:
        pieces.append((offset, gpa, size))
        offset += size
    bad = [p for p in range(0, max(len(actual), len(expected)), PAGE) if actual[p : p + PAGE] != expected[p : p + PAGE]]
    where = []
    for p in bad[:8]:
        start, gpa, _ = max(piece for piece in pieces if piece[0] <= p)
        first = next(i for i in range(PAGE) if actual[p + i : p + i + 1] != expected[p + i : p + i + 1])
        where.append(f"image+{p:#x} (GPA {gpa + p - start:#x}, byte {first:#x})")
    print(
        f"SEVD-CHECK FAIL: guest memory differs from the owner's image: {len(actual)} vs {len(expected)} bytes, "
        f"{len(bad)} page(s) differ: {', '.join(where)}",
        flush=True,
    )
    return 1


def from_log(log: str, asid: int, cfg: str) -> int:
    """Split the owner's image by the lengths sevd measured, in order, and compare each range's hash."""
    expected = xlcfg.load(cfg).read_image()
    line = re.compile(r"measure-only: ASID (\d+) measured \[(0x[0-9a-f]+), \+(0x[0-9a-f]+)\) sha256 ([0-9a-f]{64})")
    offset, bad = 0, []
    with open(log) as f:
        for m in line.finditer(f.read()):
            if int(m[1]) != asid:
                continue
            n = int(m[3], 16)
            if offset + n > len(expected):
                break  # the next launch with this ASID
            if hashlib.sha256(expected[offset : offset + n]).hexdigest() != m[4]:
                bad.append(f"image+{offset:#x} (SPA {m[2]}, {n:#x} bytes)")
            offset += n
    verdict = "ok" if not bad and offset == len(expected) else "FAIL"
    print(
        f"SEVD-CHECK {verdict}: sevd measured {offset:#x} of {len(expected):#x} bytes for ASID {asid}; "
        f"ranges differing from the owner's image: {', '.join(bad[:8]) or 'none'}",
        flush=True,
    )
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    if sys.argv[1] == "--log":
        sys.exit(from_log(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))
