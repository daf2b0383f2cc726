"""The simulated Xen: domain placement, SEV ASID ranges, boot-image ranges, the flush handshake."""

import pytest

from sevd.abi.units import PAGE_SIZE as PAGE
from sevd.xen.hypervisor import HypervisorError
from sevd_sim.psp.memory import PhysicalMemory
from sevd_sim.xen import SimulatedXen, coalesce


@pytest.fixture
def xen(tmp_path):
    PhysicalMemory.create(tmp_path / "memory.img", 64 << 20).close()
    signals = []
    x = SimulatedXen.create(tmp_path, (64 << 20) // PAGE, max_asid=8, min_sev_asid=5)
    x.psp_wbinvd = lambda: signals.append("wbinvd")
    x.signals = signals
    return x


def test_coalesce_joins_only_contiguous_frames():
    assert coalesce([10, 11, 12, 20, 21, 5]) == [(10 * PAGE, 3 * PAGE), (20 * PAGE, 2 * PAGE), (5 * PAGE, PAGE)]


def test_image_lands_in_discontiguous_frames_in_guest_order(xen, tmp_path):
    image = bytes(range(256)) * (300 * PAGE // 256)  # 300 pages: more than one chunk
    domid = xen.create_domain("g", 4, image)
    ranges = xen.boot_image_ranges(domid)
    assert len(ranges) > 1, "frames must not be one contiguous run"
    assert sum(n for _, n in ranges) == len(image)
    memory = PhysicalMemory(tmp_path / "memory.img")
    assert b"".join(memory.read(spa, n) for spa, n in ranges) == image


def test_sev_and_es_asids_come_from_their_ranges(xen):
    sev = xen.make_sev_domain(xen.create_domain("a", 1, b""), es=False)
    es = xen.make_sev_domain(xen.create_domain("b", 1, b""), es=True)
    assert 5 <= sev.asid <= 8
    assert 1 <= es.asid <= 4
    assert sev.cbit == SimulatedXen.CBIT


def test_asid_is_reused_only_after_flush(xen):
    domids = [xen.create_domain(f"g{i}", 1, b"") for i in range(4)]
    asids = [xen.make_sev_domain(d, es=False).asid for d in domids]
    assert sorted(asids) == [5, 6, 7, 8]
    xen.destroy(domids[0])
    assert xen.signals == ["wbinvd"]
    assert xen.dirty_asids() == [asids[0]]
    spare = xen.create_domain("spare", 1, b"")
    with pytest.raises(HypervisorError, match="await DF_FLUSH"):
        xen.make_sev_domain(spare, es=False)
    xen.asids_flushed([asids[0]])
    assert xen.make_sev_domain(spare, es=False).asid == asids[0]


def test_sev_refused_after_first_run(xen):
    domid = xen.create_domain("ran", 1, b"")
    xen.unpause(domid)
    with pytest.raises(HypervisorError, match="already run"):
        xen.make_sev_domain(domid, es=False)


def test_sev_domain_cannot_run_before_vmcb_enable(xen):
    domid = xen.create_domain("early", 1, b"")
    xen.make_sev_domain(domid, es=False)
    with pytest.raises(HypervisorError, match="launch it first"):
        xen.unpause(domid)
    xen.enable_sev(domid)
    xen.unpause(domid)
    assert xen.domains()[domid]["paused"] is False


def test_duplicate_name_and_unknown_domain_refused(xen):
    xen.create_domain("same", 1, b"")
    with pytest.raises(HypervisorError, match="already exists"):
        xen.create_domain("same", 1, b"")
    with pytest.raises(HypervisorError, match="does not exist"):
        xen.enable_sev(99)


def test_guest_ranges_trim_to_the_bytes_asked(xen, tmp_path):
    domid = xen.create_domain("r", 1, b"")
    ranges = xen.guest_ranges(domid, 70 * PAGE - 32, PAGE)  # starts 32 bytes before guest page 70
    assert sum(n for _, n in ranges) == PAGE
    assert ranges[0][0] == xen.machine_frame(domid, 69) * PAGE + PAGE - 32
    across = xen.guest_ranges(domid, 64 * PAGE - 16, 32)  # crosses the hole after the first 64-page chunk
    assert [n for _, n in across] == [16, 16]
    assert across[1][0] == xen.machine_frame(domid, 64) * PAGE != xen.machine_frame(domid, 63) * PAGE + PAGE
    with pytest.raises(HypervisorError, match="outside its memory"):
        xen.guest_ranges(domid, 256 * PAGE - 16, 32)


def test_boot_image_ranges_equal_guest_ranges_of_the_image(xen):
    domid = xen.create_domain("img", 2, b"\x01" * (3 * PAGE + 100))
    dom = xen.domains()[domid]
    assert xen.guest_ranges(domid, dom["image_gpa"], dom["image_size"])[0][0] == xen.boot_image_ranges(domid)[0][0]


def test_capabilities_are_the_hosts_asid_split_and_count_what_awaits_a_flush(xen):
    caps = xen.sev_capabilities()
    assert (caps.source, caps.available, caps.min_sev_asid, caps.max_asid, caps.cbit) == ("simulated", True, 5, 8, 47)
    assert caps.es and caps.launches_es and list(caps.es_asids) == [1, 2, 3, 4]
    assert caps.awaiting_flush == 0 and not caps.test_mode
    domid = xen.create_domain("g", 1, b"")
    xen.make_sev_domain(domid, es=False)
    xen.destroy(domid)
    assert xen.sev_capabilities().awaiting_flush == 1


def test_capabilities_without_es_asids(tmp_path):
    PhysicalMemory.create(tmp_path / "memory.img", 1 << 20).close()
    caps = SimulatedXen.create(tmp_path, (1 << 20) // PAGE, max_asid=4, min_sev_asid=1).sev_capabilities()
    assert (caps.min_sev_asid, caps.max_asid, list(caps.es_asids)) == (1, 4, [])


def test_capabilities_of_a_missing_host_say_so_with_a_hint(tmp_path):
    with pytest.raises(HypervisorError, match="simulated host unreadable") as err:
        SimulatedXen(tmp_path / "nowhere").sev_capabilities()
    assert "[hypervisor] path" in err.value.hint
