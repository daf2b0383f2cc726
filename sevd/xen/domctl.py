"""The real hypervisor backend: XEN_DOMCTL_sev_op of our Xen patches, reached through libxencall.

`DomctlXen` answers the `Hypervisor` protocol (sevd/xen/hypervisor.py): make_sev_domain,
boot_image_ranges, enable_sev, asids_flushed; plus info(), check_spa() and, for the PSP
simulated in Dom0 under sev=test only, read_spa().  It talks to Xen with
Debian's libxencall (`libxencall.so.1`, stable ABI) in cffi ABI mode: no Xen headers are needed.

The domctl layout below is this project's one definition of it in Python; it must match the public
header the Xen patches add (xen-patches/xen, xen/include/public/domctl.h), which
tests/test_xen_domctl.py checks byte for byte.  A real hypercall needs Dom0 on the patched Xen: the unit
tests drive this module with a stand-in for libxencall; `make xen-check` runs it for real in Dom0 of the
patched Xen under QEMU (sev=test, xen-patches/qemu/domctl-smoke.py), where no SEV hardware exists.
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
from collections.abc import Callable
from typing import Any

from cffi import FFI

from sevd.abi.units import PAGE_SIZE as PAGE
from sevd.abi.units import Asid, DomId, Gpa, Spa
from sevd.xen.hypervisor import HypervisorError, SevCapabilities, SevDomain

# Xen 4.17's domctl interface version; the patches keep it, so Debian's tools still work.
XEN_DOMCTL_INTERFACE_VERSION = 0x00000015
HYPERVISOR_DOMCTL = 36  # __HYPERVISOR_domctl
XEN_DOMCTL_SEV_OP = 87  # XEN_DOMCTL_sev_op
DOMID_INVALID = DomId(0x7FF4)

# Sub-ops (struct xen_domctl_sev_op.op).
SEV_INFO = 0
SEV_MAKE_SEV = 1
SEV_GET_RANGES = 2
SEV_ENABLE = 3
SEV_ASID_FLUSHED = 4
SEV_CHECK_SPA = 5
SEV_WBINVD = 6
SEV_READ_SPA = 7  # sev=test only: guest memory for the PSP simulated in Dom0
SEV_RELEASE = 8  # after DECOMMISSION: drop the page references GET_RANGES and CHECK_SPA took

# Flags.
SEV_FLAG_ES = 1 << 0  # XEN_DOMCTL_SEV_ES (MAKE_SEV)
SEV_INFO_AVAILABLE = 1 << 0
SEV_INFO_TEST_MODE = 1 << 1
SEV_INFO_ES = 1 << 2

# Xen's limits per call.
RANGES_MAX_FRAMES = 1024
FLUSHED_MAX = 4096
CHECK_MAX = 16 << 20
READ_MAX = 1 << 20  # XEN_DOMCTL_SEV_READ_MAX

# Guest handles (XEN_GUEST_HANDLE_64) are 64-bit addresses of hypercall buffers on x86-64.
CDEF = """
typedef uint16_t domid_t;

struct xen_sev_range {
    uint64_t spa;
    uint64_t len;
};

struct xen_domctl_sev_info {
    uint32_t flags;
    uint32_t cbit;
    uint32_t phys_reduction;
    uint32_t max_asid;
    uint32_t min_sev_asid;
    uint32_t nr_dirty;
    uint64_t dirty;
};

struct xen_domctl_sev_make {
    uint32_t asid;
    uint32_t cbit;
};

struct xen_domctl_sev_ranges {
    uint64_t gfn;
    uint32_t nr_frames;
    uint32_t nr_ranges;
    uint64_t ranges;
};

struct xen_domctl_sev_flushed {
    uint32_t nr_asids;
    uint32_t pad;
    uint64_t asids;
};

struct xen_domctl_sev_check {
    uint32_t asid;
    uint32_t pad;
    uint64_t spa;
    uint64_t len;
};

struct xen_domctl_sev_read {
    uint32_t asid;
    uint32_t pad;
    uint64_t spa;
    uint64_t len;
    uint64_t buffer;
};

struct xen_domctl_sev_op {
    uint32_t op;
    uint32_t flags;
    union {
        struct xen_domctl_sev_info info;
        struct xen_domctl_sev_make make;
        struct xen_domctl_sev_ranges ranges;
        struct xen_domctl_sev_flushed flushed;
        struct xen_domctl_sev_check check;
        struct xen_domctl_sev_read read;
    } u;
};

struct xen_domctl {
    uint32_t cmd;
    uint32_t interface_version;
    domid_t domain;
    uint16_t _pad[3];
    union {
        struct xen_domctl_sev_op sev_op;
        uint8_t pad[128];
    } u;
};

typedef struct xencall_handle xencall_handle;
xencall_handle *xencall_open(void *logger, unsigned int open_flags);
int xencall_close(xencall_handle *xcall);
int xencall1(xencall_handle *xcall, unsigned int op, uint64_t arg1);
void *xencall_alloc_buffer(xencall_handle *xcall, size_t size);
void xencall_free_buffer(xencall_handle *xcall, void *p);
"""

ffi = FFI()
ffi.cdef(CDEF)

DOMCTL_SIZE = ffi.sizeof("struct xen_domctl")

# What Xen's refusals mean for the daemon (Xen logs the detailed reason on its console).
_ERRNO_HINTS = {
    errno_mod.EBUSY: "the domain has already run; SEV must be set before its first VMRUN",
    errno_mod.EOPNOTSUPP: "not supported here (SEV unavailable on this host, or SEV-ES ENABLE)",
    errno_mod.ENOSPC: "no clean ASID left in the range (dirty ones await DF_FLUSH)",
    errno_mod.ESRCH: "no such domain (or no SEV domain with that ASID)",
    errno_mod.EINVAL: "refused: not an HVM/PVH guest with HAP, not an SEV domain, or not guest RAM",
    errno_mod.EPERM: "not permitted (Dom0 only), or the memory is not the SEV guest's",
    errno_mod.EACCES: "domctl interface version mismatch: this Xen is not 4.17",
    errno_mod.ENOSYS: "this Xen lacks the SEV patches (XEN_DOMCTL_sev_op unknown)",
    errno_mod.E2BIG: "too many frames pinned or ASIDs listed in one call",
}

# READ_SPA's refusals say something else (docs/xen.md).
_READ_HINTS = {
    errno_mod.EOPNOTSUPP: "READ_SPA exists only when Xen is booted with sev=test",
    errno_mod.EINVAL: "refused: length 0 or over 1 MiB, or not an SEV ASID",
    errno_mod.ESRCH: "no live SEV domain holds that ASID",
    errno_mod.EPERM: "a page of the range is not ordinary RAM of the SEV domain with that ASID",
}


PATCHED_XEN_HINT = "boot the patched Xen (xen-patches/)"


class DomctlError(HypervisorError):
    """Xen refused a sub-op; `errno` says why, for callers that must tell refusals apart."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


@dataclasses.dataclass(frozen=True)
class SevInfo:
    available: bool
    test_mode: bool
    es: bool
    cbit: int
    phys_reduction: int
    max_asid: Asid
    min_sev_asid: Asid
    dirty: tuple[Asid, ...]


def ovmf_layout(image_size: int = 2 << 20) -> Callable[[DomId], tuple[int, int]]:
    """Boot image at the top of the guest's first 4 GiB (where OVMF lives), as the simulated Xen places it."""
    frames = -(-image_size // PAGE)
    return lambda domid: ((1 << 32) // PAGE - frames, frames)


class DomctlXen:
    """XEN_DOMCTL_sev_op over libxencall.

    `lib` is the libxencall library (loaded with cffi's dlopen when not given); tests pass a stand-in
    with the same five functions.  `image_frames(domid) -> (first_gfn, nr_frames)` says where the
    toolstack put the boot image in guest-frame space (default: OVMF's place, 2 MiB below 4 GiB).
    """

    def __init__(
        self,
        lib: Any = None,
        image_frames: Callable[[DomId], tuple[int, int]] | None = None,
        exists: Callable[[DomId], bool] | None = None,
    ):
        if lib is None:
            try:
                lib = ffi.dlopen("libxencall.so.1")
            except OSError as exc:
                raise HypervisorError(
                    f"cannot load libxencall.so.1 ({exc}): not a Xen Dom0?", hint=PATCHED_XEN_HINT
                ) from None
        self.lib = lib
        self.image_frames = image_frames or ovmf_layout()
        # Whether a domain still exists; the daemon answers from xenstore (/local/domain/<domid>).
        self.exists = exists
        self.handle = self.lib.xencall_open(ffi.NULL, 0)
        if self.handle == ffi.NULL:
            raise HypervisorError(
                f"cannot open Xen's privcmd interface ({errno_mod.errorcode.get(ffi.errno, ffi.errno)}): "
                "not running in Dom0 of a Xen host?",
                hint=PATCHED_XEN_HINT,
            )

    def close(self) -> None:
        if self.handle is not None:
            self.lib.xencall_close(self.handle)
            self.handle = None

    # -- the hypercall ----------------------------------------------------------------------------------

    def _buffer(self, ctype: str, count: int) -> Any:
        raw = self.lib.xencall_alloc_buffer(self.handle, max(ffi.sizeof(ctype) * count, 1))
        if raw == ffi.NULL:
            raise HypervisorError("libxencall could not allocate a hypercall buffer")
        return ffi.cast(f"{ctype} *", raw)

    def _free(self, buf: Any) -> None:
        self.lib.xencall_free_buffer(self.handle, buf)

    def _sev_op(
        self,
        domid: DomId,
        op: int,
        what: str,
        fill: Callable[[Any], None] | None = None,
        flags: int = 0,
        hints: dict[int, str] | None = None,
    ) -> Any:
        """Issue one sub-op; returns a copy of the struct xen_domctl as Xen left it."""
        domctl = self._buffer("struct xen_domctl", 1)
        try:
            ffi.memmove(domctl, bytes(DOMCTL_SIZE), DOMCTL_SIZE)
            domctl.cmd = XEN_DOMCTL_SEV_OP
            domctl.interface_version = XEN_DOMCTL_INTERFACE_VERSION
            domctl.domain = domid
            domctl.u.sev_op.op = op
            domctl.u.sev_op.flags = flags
            if fill is not None:
                fill(domctl.u.sev_op.u)
            rc = self.lib.xencall1(self.handle, HYPERVISOR_DOMCTL, int(ffi.cast("uintptr_t", domctl)))
            if rc < 0:
                err = ffi.errno
                name = errno_mod.errorcode.get(err, str(err))
                target = "" if domid == DOMID_INVALID else f" for domain {domid}"
                hint = (hints or {}).get(err) or _ERRNO_HINTS.get(err, "see the Xen log")
                raise DomctlError(f"Xen refused {what}{target}: {name}: {hint}", err)
            out = ffi.new("struct xen_domctl *")
            ffi.memmove(out, domctl, DOMCTL_SIZE)
            return out
        finally:
            self._free(domctl)

    # -- the Hypervisor protocol ------------------------------------------------------------------------

    def info(self) -> SevInfo:
        room = 1024
        dirty = self._buffer("uint32_t", room)
        try:

            def fill(u):
                u.info.nr_dirty = room
                u.info.dirty = int(ffi.cast("uintptr_t", dirty))

            out = self._sev_op(DOMID_INVALID, SEV_INFO, "INFO", fill).u.sev_op.u.info
            return SevInfo(
                available=bool(out.flags & SEV_INFO_AVAILABLE),
                test_mode=bool(out.flags & SEV_INFO_TEST_MODE),
                es=bool(out.flags & SEV_INFO_ES),
                cbit=out.cbit,
                phys_reduction=out.phys_reduction,
                max_asid=Asid(out.max_asid),
                min_sev_asid=Asid(out.min_sev_asid),
                dirty=tuple(Asid(dirty[i]) for i in range(min(out.nr_dirty, room))),
            )
        finally:
            self._free(dirty)

    def sev_capabilities(self) -> SevCapabilities:
        """INFO as the host checks show it.  This Xen launches plain SEV guests only: xen-patches/ has no
        SEV-ES VMSA or #VC handling yet, whatever the CPU reports; nor does it set an RMP up (`snp` stays
        False: SEV-SNP on Xen is docs/snp.md's part 2)."""
        try:
            info = self.info()
        except HypervisorError as exc:
            raise HypervisorError(f"Xen's SEV domctl: {exc}", hint=PATCHED_XEN_HINT) from None
        return SevCapabilities(
            source="Xen",
            available=info.available,
            min_sev_asid=info.min_sev_asid,
            max_asid=info.max_asid,
            cbit=info.cbit,
            es=info.es,
            launches_es=False,
            test_mode=info.test_mode,
            awaiting_flush=len(info.dirty),
            why_unavailable="see `xl dmesg | grep SEV` for Xen's reason",
        )

    def make_sev_domain(self, domid: DomId, es: bool) -> SevDomain:
        out = self._sev_op(domid, SEV_MAKE_SEV, "MAKE_SEV", flags=SEV_FLAG_ES if es else 0)
        make = out.u.sev_op.u.make
        return SevDomain(domid, Asid(make.asid), make.cbit)

    def frame_ranges(self, domid: DomId, gfn: int, nr_frames: int) -> list[tuple[Spa, int]]:
        """System-physical (start, length) runs of guest frames gfn..gfn+nr_frames-1, coalesced; Xen pins them."""
        runs: list[tuple[Spa, int]] = []
        room = RANGES_MAX_FRAMES
        ranges = self._buffer("struct xen_sev_range", room)
        try:
            while nr_frames > 0:
                ask = min(nr_frames, RANGES_MAX_FRAMES)

                def fill(u, gfn=gfn, ask=ask):
                    u.ranges.gfn = gfn
                    u.ranges.nr_frames = ask
                    u.ranges.nr_ranges = room
                    u.ranges.ranges = int(ffi.cast("uintptr_t", ranges))

                out = self._sev_op(domid, SEV_GET_RANGES, "GET_RANGES", fill).u.sev_op.u.ranges
                if out.nr_frames == 0 or out.nr_frames > ask:
                    raise HypervisorError(f"GET_RANGES for domain {domid} covered {out.nr_frames} of {ask} frames")
                for i in range(out.nr_ranges):
                    spa, length = Spa(ranges[i].spa), int(ranges[i].len)
                    if runs and runs[-1][0] + runs[-1][1] == spa:  # contiguous across calls
                        runs[-1] = (runs[-1][0], runs[-1][1] + length)
                    else:
                        runs.append((spa, length))
                gfn += out.nr_frames
                nr_frames -= out.nr_frames
            return runs
        finally:
            self._free(ranges)

    def boot_image_ranges(self, domid: DomId) -> list[tuple[Spa, int]]:
        gfn, frames = self.image_frames(domid)
        return self.frame_ranges(domid, gfn, frames)

    def guest_ranges(self, domid: DomId, gpa: Gpa, length: int) -> list[tuple[Spa, int]]:
        """The bytes [gpa, gpa+length) of the guest as system-physical runs (first and last page trimmed)."""
        if gpa < 0 or length <= 0:
            raise HypervisorError(f"domain {domid}: [{gpa:#x}, +{length:#x}) is not a guest range")
        first, last = gpa // PAGE, (gpa + length - 1) // PAGE
        runs = self.frame_ranges(domid, first, last - first + 1)
        head, tail = gpa % PAGE, (last + 1) * PAGE - (gpa + length)
        runs[0] = (Spa(runs[0][0] + head), runs[0][1] - head)
        runs[-1] = (runs[-1][0], runs[-1][1] - tail)
        return runs

    def vmsa_pages(self, domid: DomId) -> list[Spa]:
        raise HypervisorError(
            f"domain {domid}: SEV-ES VMSA pages are not exposed by XEN_DOMCTL_sev_op yet (see docs/xen.md)"
        )

    def dirty_asids(self) -> list[Asid]:
        return list(self.info().dirty)

    def domain_exists(self, domid: DomId) -> bool:
        if self.exists is None:
            raise HypervisorError("DomctlXen was built without a way to tell whether a domain exists")
        return self.exists(domid)

    def enable_sev(self, domid: DomId) -> None:
        self._sev_op(domid, SEV_ENABLE, "ENABLE")

    def asids_flushed(self, asids: list[Asid]) -> None:
        for start in range(0, len(asids), FLUSHED_MAX):
            chunk = asids[start : start + FLUSHED_MAX]
            count = len(chunk)
            buf = self._buffer("uint32_t", count)
            try:
                for i, asid in enumerate(chunk):
                    buf[i] = asid

                def fill(u, buf=buf, n=count):
                    u.flushed.nr_asids = n
                    u.flushed.asids = int(ffi.cast("uintptr_t", buf))

                self._sev_op(DOMID_INVALID, SEV_ASID_FLUSHED, "ASID_FLUSHED", fill)
            finally:
                self._free(buf)

    def release_pages(self, domid: DomId) -> None:
        """After the PSP's DECOMMISSION: Xen drops the page references GET_RANGES and CHECK_SPA took.

        Until then those pages stay the domain's, even after it died (a dead SEV domain lingers), so the PSP
        never writes a page with a new owner.  Idempotent."""
        self._sev_op(domid, SEV_RELEASE, "RELEASE")

    def wbinvd_all_cpus(self) -> None:
        """WBINVD on every CPU.  The PSP's DEACTIVATE clears its record that WBINVD ran, so call this
        after DEACTIVATE and before DF_FLUSH (which otherwise answers WBINVD_REQUIRED)."""
        self._sev_op(DOMID_INVALID, SEV_WBINVD, "WBINVD")

    def flush_guest_pages(self, domid: DomId, spa_ranges: list[tuple[Spa, int]] | None = None) -> None:
        """The cache flush before the PSP works in place: the WBINVD sub-op, a superset of CLFLUSH of the pages.

        A page-granular flush sub-op (and an INFO flag saying whether the CPU has SME_COHERENT, so coherent
        CPUs could skip it) is the Xen series' open work (docs/xen.md); INFO cannot tell yet, so this always
        flushes."""
        self._sev_op(DOMID_INVALID, SEV_WBINVD, f"WBINVD (cache flush for domain {domid})")

    def pages_owned(self, domid: DomId, asid: Asid, spa_ranges: list[tuple[Spa, int]]) -> bool:
        """CHECK_SPA over each range: Xen answers for the live SEV domain holding `asid` (a dying domain no
        longer counts), and the domain must still be `domid`."""
        if not self.domain_exists(domid):
            return False
        try:
            for spa, length in spa_ranges:
                self.check_spa(asid, spa, length)
        except DomctlError as exc:
            if exc.errno in (errno_mod.ESRCH, errno_mod.EPERM, errno_mod.EINVAL):
                return False
            raise
        return True

    def check_spa(self, asid: Asid, spa: Spa, length: int) -> None:
        """What Dom0's kernel asks before the PSP touches guest memory: is this RAM of the SEV guest with `asid`?"""
        while length > 0:
            n = min(length, CHECK_MAX)

            def fill(u, spa=spa, n=n):
                u.check.asid = asid
                u.check.spa = spa
                u.check.len = n

            self._sev_op(DOMID_INVALID, SEV_CHECK_SPA, "CHECK_SPA", fill)
            spa = Spa(spa + n)
            length -= n

    def read_spa(self, asid: Asid, spa: Spa, length: int) -> bytes:
        """sev=test only: the bytes [spa, spa+length) of the SEV guest holding `asid`, for the PSP simulated
        in Dom0, which like the real one is handed machine addresses.  Xen checks them as for CHECK_SPA."""
        if length < 0 or spa < 0:
            raise HypervisorError(f"READ_SPA: [{spa:#x}, +{length:#x}) is not a range")
        out = bytearray(length)
        if not length:
            return bytes(out)
        size = min(length, READ_MAX)
        buf = self._buffer("uint8_t", size)
        try:
            done = 0
            while done < length:
                n = min(length - done, READ_MAX)

                def fill(u, at=spa + done, n=n):
                    u.read.asid = asid
                    u.read.spa = at
                    u.read.len = n
                    u.read.buffer = int(ffi.cast("uintptr_t", buf))

                what = f"READ_SPA of [{spa + done:#x}, +{n:#x}) for ASID {asid}"
                self._sev_op(DOMID_INVALID, SEV_READ_SPA, what, fill, hints=_READ_HINTS)
                out[done : done + n] = ffi.buffer(buf, n)[:]
                done += n
            return bytes(out)
        finally:
            self._free(buf)
