"""Compare what a launched SEV guest's memory holds with the owner's image of its cfg, page by page.

usage: compare-image.py DOMID CFG   (an SEV domain launched by sevd, never unpaused; sev=test)
The measurement is an HMAC over these bytes, so a mismatch says only "different"; this says where:
the same request pieces sevd measured, read by machine address (GET_RANGES + READ_SPA) and set
against sevd.owner.pvh's image of the kernel and ramdisk.  Prints one SEVD-CHECK line.
"""

import sys

from sevd.config import Config
from sevd.xen import protocol as proto
from sevd.xen import xlcfg
from sevd.xen.domctl import DomctlXen
from sevd.xen.xsclient import Xenstore

PAGE = 4096


def main(domid: int, cfg: str) -> int:
    xs = Xenstore(Config.load().xenstore_socket)
    request = proto.LaunchRequest.parse(domid, xs.read_dir(proto.guest_path(domid, "request")))
    asid = int(xs.read(proto.guest_path(domid, "asid")))
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


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))
