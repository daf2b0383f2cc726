"""The simulated Xen: domains, their frames and SEV ASIDs in a simulated host, answering sevd's Hypervisor protocol.

It places domains in the simulated physical memory and hands out ASIDs from the SEV ranges of the
simulated CPU's CPUID 0x8000001F, the way the patched Xen does (xen-patches/xen).  On a CPU without
SME_COHERENT what the host writes into a domain (the toolstack's boot image, Xen's VMSAs) goes through
the CPUs' cache (`CpuCache`) and reaches DRAM, where the PSP reads, only when flushed.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sevd.abi.cpuid import Feature, MemoryEncryption
from sevd.abi.units import MAX_VCPUS, Asid, DomId, Gpa, Spa
from sevd.abi.units import PAGE_SIZE as PAGE
from sevd.abi.vmsa import reset_vmsas
from sevd.durable import exclusive, read_json, write_json
from sevd.xen.hypervisor import HypervisorError, SevCapabilities, SevDomain
from sevd_sim.psp.memory import CpuCache, PhysicalMemory
from sevd_sim.rmp import RmpEntry, RmpFile


def coalesce(frames: list[int]) -> list[tuple[Spa, int]]:
    """Machine frames (in guest order) → (spa, length) runs of physically contiguous frames."""
    runs: list[tuple[Spa, int]] = []
    for mfn in frames:
        spa = Spa(mfn * PAGE)
        if runs and runs[-1][0] + runs[-1][1] == spa:
            runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
        else:
            runs.append((spa, PAGE))
    return runs


class SimulatedXen:
    """Domains in a simulated host: their frames, pause state and SEV ASID, kept in xen/domains.json."""

    # CPUID 0x8000001F EBX[5:0]: the C-bit position EPYC reports.
    CBIT = 47
    # Frames are handed out in chunks of this many pages, interleaved between domains and
    # skipping a frame now and then, so a boot image is never one contiguous range.
    CHUNK_PAGES = 64

    def __init__(self, host: Path | str, psp_wbinvd: Any = None):
        self.host = Path(host)
        self.dir = self.host / "xen"
        self.psp_wbinvd = psp_wbinvd  # callable: the WBINVD-on-all-CPUs signal to the PSP

    @classmethod
    def create(
        cls,
        host: Path,
        memory_pages: int,
        max_asid: int,
        min_sev_asid: int,
        coherent: bool = True,
        snp_cpu: bool = False,
    ) -> SimulatedXen:
        """`coherent`: the CPU has SME_COHERENT (CPUID 0x8000001F EAX bit 10); without it host writes are cached.
        `snp_cpu`: the CPU has SEV-SNP (EAX bit 4); the RMP is set up only on a host whose BIOS enables it."""
        xen = cls(host)
        xen.dir.mkdir(parents=True, exist_ok=True)
        if not coherent:
            CpuCache.create(xen.host, memory_pages * PAGE)
        write_json(
            xen.dir / "domains.json",
            {
                "next_domid": 1,
                "next_free_page": 256,  # the first 1 MiB stays Xen's own
                "memory_pages": memory_pages,
                "max_asid": max_asid,
                "min_sev_asid": min_sev_asid,
                "coherent": coherent,
                "snp_cpu": snp_cpu,
                "dirty_asids": [],
                "domains": {},
            },
        )
        return xen

    def _locked(self):
        return exclusive(self.dir / "lock")

    def _load(self) -> dict[str, Any]:
        return read_json(self.dir / "domains.json")

    def _save(self, state: dict[str, Any]) -> None:
        write_json(self.dir / "domains.json", state)

    @property
    def coherent(self) -> bool:
        return bool(self._load().get("coherent", True))

    def _cache(self) -> CpuCache | None:
        cache = CpuCache(self.host)
        return cache if cache.exists else None

    def cpu_write(self, spa: int, data: bytes) -> None:
        """A store by the host (toolstack or Xen) through its own key: cached on a CPU without SME_COHERENT."""
        memory = PhysicalMemory(self.host / "memory.img")
        try:
            cache = self._cache()
            if cache is None:
                memory.write(spa, data)
            else:
                cache.write(memory, spa, data)
        finally:
            memory.close()

    def cpu_read(self, spa: int, length: int) -> bytes:
        """A load by the host through its own key: its dirty lines are seen, as the PSP does not see them."""
        memory = PhysicalMemory(self.host / "memory.img")
        try:
            cache = self._cache()
            return memory.read(spa, length) if cache is None else cache.read(memory, spa, length)
        finally:
            memory.close()

    def _flush_cache(self, ranges: Sequence[tuple[int, int]] | None) -> int:
        cache = self._cache()
        if cache is None:
            return 0
        memory = PhysicalMemory(self.host / "memory.img")
        try:
            return cache.flush(memory, ranges)
        finally:
            memory.close()

    def _domain(self, state: dict[str, Any], domid: int) -> dict[str, Any]:
        dom = state["domains"].get(str(domid))
        if dom is None:
            raise HypervisorError(f"domain {domid} does not exist")
        return dom

    # -- toolstack side (xl create -p / unpause / destroy) ------------------------------------------------

    def create_domain(self, name: str, memory_mb: int, image: bytes, vcpus: int = 1) -> DomId:
        """`xl create -p`: a paused domain with `image` loaded at the top of its first 4 GiB, like OVMF."""
        pages = memory_mb * 1024 * 1024 // PAGE
        if not 1 <= vcpus <= MAX_VCPUS:
            raise HypervisorError(f"{vcpus} vCPUs: Xen creates a guest with 1 to {MAX_VCPUS} (HVM_MAX_VCPUS)")
        with self._locked():
            state = self._load()
            if any(d["name"] == name for d in state["domains"].values()):
                raise HypervisorError(f"a domain named {name!r} already exists")
            runs: list[list[int]] = []  # [first mfn, count] in guest-frame order: small JSON at any size
            allocated, cursor = (
                _reuse(state.setdefault("free_runs", []), pages, runs, self.CHUNK_PAGES),
                state["next_free_page"],
            )
            while allocated < pages:
                take = min(self.CHUNK_PAGES, pages - allocated)
                runs.append([cursor, take])
                allocated += take
                cursor += take + 1  # leave a hole: physically discontiguous on purpose
            if cursor > state["memory_pages"]:
                raise HypervisorError(f"out of simulated memory for {memory_mb} MiB (raise the host's memory size)")
            state["next_free_page"] = cursor
            domid = state["next_domid"]
            state["next_domid"] += 1
            image_pages = -(-len(image) // PAGE)
            state["domains"][str(domid)] = {
                "name": name,
                "memory_mb": memory_mb,
                "vcpus": vcpus,
                "frame_runs": runs,
                "pages": pages,
                "image_gpa": (pages - image_pages) * PAGE,
                "image_size": len(image),
                "paused": True,
                "sev": False,
                "asid": 0,
                "sev_enabled": False,
                "has_run": False,
            }
            self._save(state)
        if image:
            padded = image + bytes(image_pages * PAGE - len(image))
            for (spa, length), offset in _runs_with_offsets(
                self.guest_ranges(DomId(domid), Gpa((pages - image_pages) * PAGE), len(padded))
            ):
                self.cpu_write(spa, padded[offset : offset + length])  # the toolstack's plaintext stores
        return domid

    def unpause(self, domid: int) -> None:
        with self._locked():
            state = self._load()
            dom = self._domain(state, domid)
            if dom["sev"] and not dom["sev_enabled"]:
                raise HypervisorError(f"domain {domid} is SEV but its VMCBs have no SEV yet; launch it first")
            dom.update(paused=False, has_run=True)
            self._save(state)

    def destroy(self, domid: int) -> None:
        """`xl destroy`: the domain's frames are scrubbed and its ASID is dirty until WBINVD + DF_FLUSH."""
        with self._locked():
            state = self._load()
            dom = self._domain(state, domid)
            del state["domains"][str(domid)]
            if dom["asid"]:
                state["dirty_asids"].append(dom["asid"])
            self._save(state)
        if dom["sev"]:  # Xen runs WBINVD on every CPU when an SEV domain dies, before freeing its memory
            self._flush_cache(None)
            if self.psp_wbinvd is not None:
                self.psp_wbinvd()
        frames = [*dom["frame_runs"], *([mfn, 1] for mfn in dom.get("vmsa_frames", []))]
        if dom["sev"]:
            # The pages named to the PSP stay referenced (pinned) until sevd's RELEASE after DECOMMISSION: the
            # dead domain lingers, so the PSP never writes a page that has a new owner (xen-patches 0009).
            with self._locked():
                state = self._load()
                state.setdefault("pinned", {})[str(domid)] = frames
                self._save(state)
            return
        self._free(frames)

    def release_pages(self, domid: DomId) -> None:
        """RELEASE: drop the references a dead SEV domain's pages held; Xen then frees them.  Idempotent; a
        live domain keeps its memory."""
        with self._locked():
            state = self._load()
            frames = state.get("pinned", {}).pop(str(domid), None)
            self._save(state)
        if frames is not None:
            self._free(frames)

    def pinned_domains(self) -> list[DomId]:
        """Dead SEV domains whose pages are still referenced (RELEASE not yet asked)."""
        return [DomId(int(d)) for d in self._load().get("pinned", {})]

    def _free(self, frames: list[list[int]]) -> None:
        """Xen scrubs the pages and returns them to its heap: the next domains are built from them."""
        _scrub(self.host / "memory.img", frames)
        with self._locked():
            state = self._load()
            state.setdefault("free_runs", []).extend(frames)
            self._save(state)

    def domains(self) -> dict[int, dict[str, Any]]:
        return {int(k): v for k, v in self._load()["domains"].items()}

    def domid_by_name(self, name: str) -> int | None:
        return next((d for d, v in self.domains().items() if v["name"] == name), None)

    # -- the SEV domctl ------------------------------------------------------------------------------------

    def make_sev_domain(self, domid: DomId, es: bool) -> SevDomain:
        with self._locked():
            state = self._load()
            dom = self._domain(state, domid)
            if dom["has_run"]:
                raise HypervisorError(f"domain {domid} has already run; SEV must be set before its first VMRUN")
            if dom["sev"]:
                return SevDomain(domid, Asid(dom["asid"]), self.CBIT)
            lo, hi = (1, state["min_sev_asid"] - 1) if es else (state["min_sev_asid"], state["max_asid"])
            taken = {d["asid"] for d in state["domains"].values()} | set(state["dirty_asids"])
            asid = next((a for a in range(lo, hi + 1) if a not in taken), None)
            if asid is None:
                dirty = sorted(a for a in state["dirty_asids"] if lo <= a <= hi)
                hint = f"; ASIDs {dirty} await DF_FLUSH" if dirty else ""
                raise HypervisorError(f"no free {'SEV-ES' if es else 'SEV'} ASID in {lo}..{hi}{hint}")
            dom.update(sev=True, es=es, asid=asid)
            vmsas = reset_vmsas(dom.get("vcpus", 1)) if es else []
            if vmsas:
                # Xen keeps each vCPU's VMSA in a page of its own heap, not in guest memory.
                first = state["next_free_page"]
                state["next_free_page"] = first + len(vmsas)
                dom["vmsa_frames"] = list(range(first, first + len(vmsas)))
            self._save(state)
        for mfn, page in zip(dom.get("vmsa_frames", []), vmsas, strict=True):
            self.cpu_write(Spa(mfn * PAGE), page)  # Xen's stores: cached like any other on a non-coherent CPU
        return SevDomain(domid, Asid(asid), self.CBIT)

    def boot_image_ranges(self, domid: DomId) -> list[tuple[Spa, int]]:
        dom = self._domain(self._load(), domid)
        size = -(-dom["image_size"] // PAGE) * PAGE  # whole pages, as the image was loaded
        return self.guest_ranges(domid, Gpa(dom["image_gpa"]), size) if size else []

    def machine_frame(self, domid: int, gfn: int) -> int:
        """The machine frame backing guest frame `gfn` (what a P2M lookup answers)."""
        return next(iter(_mfn_runs(self._domain(self._load(), domid)["frame_runs"], gfn, 1)))[0]

    def guest_ranges(self, domid: DomId, gpa: Gpa, length: int) -> list[tuple[Spa, int]]:
        dom = self._domain(self._load(), domid)
        if gpa < 0 or length <= 0 or gpa + length > dom["pages"] * PAGE:
            raise HypervisorError(f"domain {domid}: [{gpa:#x}, +{length:#x}) is outside its memory")
        first, last = gpa // PAGE, (gpa + length - 1) // PAGE
        runs: list[tuple[Spa, int]] = []
        for mfn, count in _mfn_runs(dom["frame_runs"], first, last - first + 1):
            spa = Spa(mfn * PAGE)
            if runs and runs[-1][0] + runs[-1][1] == spa:
                runs[-1] = (runs[-1][0], runs[-1][1] + count * PAGE)
            else:
                runs.append((spa, count * PAGE))
        # Trim the first and last page to the bytes asked for.
        head = gpa % PAGE
        runs[0] = (Spa(runs[0][0] + head), runs[0][1] - head)
        tail = (last + 1) * PAGE - (gpa + length)
        runs[-1] = (runs[-1][0], runs[-1][1] - tail)
        return runs

    def check_spa(self, asid: Asid, spa: Spa, length: int) -> None:
        """CHECK_SPA: every page of [spa, spa + length) must belong to the live SEV domain holding `asid`.

        As the Xen patch's sev_check_spa: its RAM, at any frame of its memory.  This Xen also runs
        SEV-ES guests (the Xen patches refuse them), so their VMSA pages count as the guest's too.
        Raises HypervisorError (Xen's -ESRCH or -EPERM) otherwise.
        """
        state = self._load()
        dom = next((d for d in state["domains"].values() if d.get("sev") and d.get("asid") == asid), None)
        if dom is None or not asid or length <= 0:
            raise HypervisorError(f"CHECK_SPA: no live SEV domain holds ASID {asid}")
        frames = set(dom.get("vmsa_frames", []))
        for mfn, count in _mfn_runs(dom["frame_runs"], 0, dom["pages"]):
            frames.update(range(mfn, mfn + count))
        for frame in range(spa // PAGE, (spa + length - 1) // PAGE + 1):
            if frame not in frames:
                raise HypervisorError(f"CHECK_SPA: {frame * PAGE:#x} is not RAM of the SEV domain with ASID {asid}")

    def pages_owned(self, domid: DomId, asid: Asid, spa_ranges: list[tuple[Spa, int]]) -> bool:
        """CHECK_SPA over each range, for the domain `domid` (which must still live and hold `asid`)."""
        dom = self._load()["domains"].get(str(domid))
        if dom is None or not dom.get("sev") or dom.get("asid") != asid:
            return False
        try:
            for spa, length in spa_ranges:
                self.check_spa(asid, spa, length)
        except HypervisorError:
            return False
        return True

    def vmsa_pages(self, domid: DomId) -> list[Spa]:
        return [Spa(mfn * PAGE) for mfn in self._domain(self._load(), domid).get("vmsa_frames", [])]

    def enable_sev(self, domid: DomId) -> None:
        with self._locked():
            state = self._load()
            dom = self._domain(state, domid)
            if not dom["sev"]:
                raise HypervisorError(f"domain {domid} is not an SEV domain")
            dom["sev_enabled"] = True
            self._save(state)

    def dirty_asids(self) -> list[Asid]:
        return [Asid(a) for a in self._load()["dirty_asids"]]

    def wbinvd_all_cpus(self) -> None:
        self._flush_cache(None)
        if self.psp_wbinvd is not None:
            self.psp_wbinvd()

    def flush_guest_pages(self, domid: DomId, spa_ranges: list[tuple[Spa, int]] | None = None) -> None:
        """CLFLUSH of the domain's pages in `spa_ranges` (None: all its memory and VMSAs); refused for pages
        that are not the domain's.  Does nothing on a coherent CPU, as KVM's sev_clflush_pages."""
        dom = self._domain(self._load(), domid)
        owned = [(Spa(mfn * PAGE), n * PAGE) for mfn, n in dom["frame_runs"]]
        owned += [(Spa(mfn * PAGE), PAGE) for mfn in dom.get("vmsa_frames", [])]
        if spa_ranges is None:
            spa_ranges = owned
        for spa, length in spa_ranges:
            if not any(lo <= spa and spa + length <= lo + n for lo, n in owned):
                raise HypervisorError(f"domain {domid}: [{spa:#x}, +{length:#x}) is not its memory; not flushed")
        self._flush_cache(spa_ranges)

    def domain_exists(self, domid: DomId) -> bool:
        return str(domid) in self._load()["domains"]

    def asids_flushed(self, asids: list[Asid]) -> None:
        with self._locked():
            state = self._load()
            state["dirty_asids"] = [a for a in state["dirty_asids"] if a not in set(asids)]
            self._save(state)

    def sev_capabilities(self) -> SevCapabilities:
        """The simulated CPU's ASID split from the host's state; it runs SEV-ES guests when it has ES ASIDs."""
        try:
            state = self._load()
        except OSError as exc:
            raise HypervisorError(f"simulated host unreadable: {exc}", hint="check [hypervisor] path") from None
        leaf = self.cpuid_8000001f(state)
        return SevCapabilities(
            source="simulated",
            available=leaf.sev,
            min_sev_asid=leaf.min_sev_asid,
            max_asid=leaf.max_asid,
            cbit=leaf.cbit,
            es=leaf.es,
            launches_es=True,
            awaiting_flush=len(state["dirty_asids"]),
            snp_cpu=leaf.snp,
            snp=RmpFile(self.host).initialised(),
        )

    def cpuid_8000001f(self, state: dict[str, Any] | None = None) -> MemoryEncryption:
        """The simulated CPU's memory-encryption leaf as Xen reads it."""
        state = self._load() if state is None else state
        features = Feature.SME | Feature.SEV | Feature.SEV_ES
        if state.get("snp_cpu"):
            features |= Feature.SEV_SNP
        return MemoryEncryption(features, self.CBIT, 1, state["max_asid"], state["min_sev_asid"])

    # -- SEV-SNP: the RMP is Xen's (docs/snp.md) ------------------------------------------------------------

    def setup_rmp(self) -> None:
        """What Xen does at boot on an SNP host before Dom0 starts: RMP base/end, SNPEn, MSR_VM_HSAVE_PA cleared,
        WBINVD on every CPU; here, a cleared table marked initialised."""
        with RmpFile(self.host).open() as rmp:
            rmp.setup()

    def rmpupdate(self, spa: Spa, *, assigned: bool, asid: int = 0, gpa: int = 0, page_size: int = 0,
                  immutable: bool = False, vmsa: bool = False) -> None:  # fmt: skip
        """RMPUPDATE on request (e.g. a page moved to the firmware state for SNP_GCTX_CREATE)."""
        with RmpFile(self.host).open() as rmp:
            rmp.rmpupdate(spa, assigned=assigned, asid=asid, gpa=gpa, page_size=page_size, immutable=immutable,
                          vmsa=vmsa)  # fmt: skip

    def psmash(self, spa: Spa) -> None:
        with RmpFile(self.host).open() as rmp:
            rmp.psmash(spa)

    def rmp_entry(self, spa: Spa) -> RmpEntry:
        with RmpFile(self.host).open() as rmp:
            return rmp.entry(spa)

    def close(self) -> None:
        """Nothing stays open between calls: each reads and writes the host's files."""


def _reuse(free: list[list[int]], pages: int, runs: list[list[int]], chunk: int) -> int:
    """Take up to `pages` frames from Xen's free runs into `runs`, in chunks of at most `chunk` with a frame
    left between two chunks of one run (so an image stays physically discontiguous); the frames taken."""
    taken, holes = 0, []
    while taken < pages and free:
        first, count = free.pop(0)
        take = min(chunk, pages - taken, count)
        runs.append([first, take])
        taken += take
        if count > take + 1:
            holes.append([first + take, 1])
            free.insert(0, [first + take + 1, count - take - 1])
        elif count == take + 1:
            holes.append([first + take, 1])
    free.extend(holes)
    return taken


def _scrub(memory: Path, runs: list[list[int]]) -> None:
    """Zero freed frames as Xen scrubs them, by punching holes in the sparse memory file (no data written)."""
    fd = os.open(memory, os.O_RDWR | os.O_CLOEXEC)
    try:
        for mfn, count in runs:
            if _libc.fallocate(fd, _PUNCH_HOLE, ctypes.c_long(mfn * PAGE), ctypes.c_long(count * PAGE)) != 0:
                os.pwrite(fd, bytes(count * PAGE), mfn * PAGE)  # a filesystem without hole punching
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def _mfn_runs(frame_runs: list[list[int]], first_gfn: int, count: int) -> Iterator[tuple[int, int]]:
    """(mfn, n) pieces covering guest frames [first_gfn, first_gfn + count), in guest order."""
    gfn = 0
    for mfn, n in frame_runs:
        lo, hi = max(gfn, first_gfn), min(gfn + n, first_gfn + count)
        if lo < hi:
            yield mfn + (lo - gfn), hi - lo
        gfn += n
        if gfn >= first_gfn + count:
            return


def _runs_with_offsets(runs: list[tuple[Spa, int]]) -> Iterator[tuple[tuple[Spa, int], int]]:
    offset = 0
    for spa, length in runs:
        yield (spa, length), offset
        offset += length
