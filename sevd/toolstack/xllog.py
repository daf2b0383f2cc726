"""Where libxenguest put a PVH guest's kernel and ramdisk, read from its own log of `xl -vvv create`.

libxenguest logs each segment it allocates in guest-physical memory (`xc_dom_alloc_segment`): first
"kernel", then "module0" (the ramdisk), then "HVM start info" — unless the kernel asked for an unmapped
initrd, when the start info page comes before module0 (sevd.owner.pvh explains the layout the owner
rebuilds).  The measured pieces are the kernel segment and the module0 segment, in that order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sevd.abi.units import PAGE_SIZE, Gpa
from sevd.errors import InputError


@dataclass(frozen=True)
class Segment:
    """One `xc_dom_alloc_segment` line of a domain builder log."""

    name: str
    vstart: int
    vend: int
    pfn: int
    pages: int


def _pages(size: int) -> int:
    return (size + PAGE_SIZE - 1) // PAGE_SIZE


# xc_dom_alloc_segment's debug line: "%-20s:   %-12s : 0x%x -> 0x%x  (pfn 0x%x + 0x%x pages)"
_SEGMENT_LINE = re.compile(
    r"xc_dom_alloc_segment:\s+(?P<name>\S(?:.*?\S)?)\s+:\s+0x(?P<vstart>[0-9a-fA-F]+)\s+->\s+0x(?P<vend>[0-9a-fA-F]+)"
    r"\s+\(pfn\s+0x(?P<pfn>[0-9a-fA-F]+)\s+\+\s+0x(?P<pages>[0-9a-fA-F]+)\s+pages\)"
)


def parse_domain_builder_log(text: str) -> dict[str, Segment]:
    """The segments libxenguest allocated, from `xl -vvv create` output (its xc_dom_alloc_segment lines)."""
    segments: dict[str, Segment] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _SEGMENT_LINE.search(line)
        if m is None:
            continue
        seg = Segment(m["name"], *(int(m[k], 16) for k in ("vstart", "vend", "pfn", "pages")))
        if seg.name in segments:
            raise InputError(f"domain builder log line {n}: segment {seg.name!r} appears twice (one build per log)")
        if seg.vend < seg.vstart or seg.pages != _pages(seg.vend - seg.vstart):
            raise InputError(f"domain builder log line {n}: segment {seg.name!r} has inconsistent size and pages")
        segments[seg.name] = seg
    if "kernel" not in segments:
        raise InputError("domain builder log: no xc_dom_alloc_segment line for the kernel (was xl run with -vvv?)")
    return segments


def _kernel_and_module(segments: Mapping[str, Segment]) -> tuple[Segment, Segment | None]:
    kernel = segments.get("kernel")
    if kernel is None:
        raise InputError("domain builder log: no kernel segment")
    if kernel.vstart != kernel.pfn * PAGE_SIZE:
        raise InputError(
            f"domain builder log: kernel segment at {kernel.vstart:#x} is not at its pfn {kernel.pfn:#x}: "
            "not a PVH guest's build"
        )
    return kernel, segments.get("module0")


def measured_range(segments: Mapping[str, Segment]) -> tuple[Gpa, int]:
    """(guest-physical address, size) of the kernel segment and module0 right after it, in whole pages."""
    kernel, module = _kernel_and_module(segments)
    if module is None:
        return Gpa(kernel.pfn * PAGE_SIZE), kernel.pages * PAGE_SIZE
    if module.pfn != kernel.pfn + kernel.pages:
        raise InputError(
            f"domain builder log: module0 starts at pfn {module.pfn:#x}, not right after the kernel "
            f"(pfn {kernel.pfn + kernel.pages:#x}); kernel and ramdisk are not one contiguous range"
        )
    return Gpa(kernel.pfn * PAGE_SIZE), (kernel.pages + module.pages) * PAGE_SIZE


def measured_ranges(segments: Mapping[str, Segment]) -> list[tuple[Gpa, int]]:
    """The kernel and module0 ranges, in that order (one range when adjacent).

    Measuring them one after the other gives the same digest as `PvhImage.data`, also when the HVM start info
    page lies between them.
    """
    kernel, module = _kernel_and_module(segments)
    if module is None or module.pfn == kernel.pfn + kernel.pages:
        return [measured_range(segments)]
    if module.pfn < kernel.pfn + kernel.pages and module.pfn + module.pages > kernel.pfn:
        raise InputError("domain builder log: module0 overlaps the kernel segment")
    return [
        (Gpa(kernel.pfn * PAGE_SIZE), kernel.pages * PAGE_SIZE),
        (Gpa(module.pfn * PAGE_SIZE), module.pages * PAGE_SIZE),
    ]
