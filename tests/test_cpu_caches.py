"""What the CPUs do to SEV that the PSP cannot see: WBINVD per core after INIT in a PV Dom0, and caches
on CPUs without SME_COHERENT.  The simulated host models both; sevd copes with both."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import OVMF, Harness, wait_for

from sevd.abi import status
from sevd.abi.commands import FirmwareGuestState as G
from sevd.abi.launch import LaunchMeasurement
from sevd.abi.policy import Policy
from sevd.errors import VerificationError
from sevd.guest import GuestCommands
from sevd.owner.measurement import verify_measurement
from sevd.owner.session import make_session
from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd.toolstack.guestnodes import request_launch
from sevd.xen import protocol as proto
from sevd.xen.hypervisor import HypervisorError
from sevd_sim.cpu import CPUS
from sevd_sim.host import SimulatedHost
from sevd_sim.psp.device import SimulatedPsp, create_psp
from sevd_sim.psp.memory import PhysicalMemory

needs_ovmf = pytest.mark.skipif(not OVMF.exists(), reason="Debian's ovmf package provides the boot image")

# Run in the daemon's process before `sevd run`: the coping taken out.
NO_STARTUP_FLUSH = "from sevd.daemon.service import Daemon\nDaemon.startup_flush = lambda self: None"
NO_ACTIVATE_RETRY = (
    "def _no_retry(self, p, step):\n"
    "    raise status.DfflushRequired(str(step), detail='retry disabled by the test')\n"
    "from sevd.abi import status\n"
    "Daemon._flush_and_retry = _no_retry"
)
NO_CACHE_FLUSH = (
    "from sevd_sim.xen import SimulatedXen\nSimulatedXen.flush_guest_pages = lambda self, domid, ranges=None: None"
)


def firmware_dirty(psp: SimulatedPsp) -> list[int]:
    with psp.firmware() as fw:
        return fw.dirty_asids()


# -- the model: INIT leaves every ASID dirty -------------------------------------------------------------------


@pytest.fixture
def pv_host(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    host.mkdir()
    PhysicalMemory.create(host / "memory.img", 16 << 20).close()
    create_psp(host, pv_dom0=True)
    return host


def test_pv_dom0_post_init_df_flush_fails_and_every_asid_stays_dirty(pv_host):
    psp = SimulatedPsp(pv_host)
    g = GuestCommands(PspClient(psp))
    assert firmware_dirty(psp) == list(range(1, 65))  # the kernel's DF_FLUSH after INIT failed
    with pytest.raises(status.WbinvdRequired):  # Dom0's own WBINVD reached one CPU only
        g.df_flush()
    handle = g.launch_start(Policy(0))
    with pytest.raises(status.DfflushRequired):
        g.activate(handle, 5)
    psp.wbinvd_all_cpus()  # Xen's WBINVD reaches every CPU
    g.df_flush()
    assert firmware_dirty(psp) == []
    g.activate(handle, 5)
    assert g.guest_status(handle).state == G.LUPDATE


def test_native_kernel_init_flushes_every_asid(sim_host):
    psp = SimulatedPsp(sim_host)
    assert firmware_dirty(psp) == []
    GuestCommands(PspClient(psp)).df_flush()


def test_df_flush_cleans_the_ccxs_whose_cores_all_did_wbinvd(pv_host):
    psp = SimulatedPsp(pv_host)
    with psp.firmware() as fw:
        per_ccx = fw.cores // fw.ccxs
        fw.wbinvd(list(range(per_ccx)))  # every core of CCX 0, none of CCX 1
        with pytest.raises(status.WbinvdRequired):
            fw.df_flush()
        assert fw.asid_states(5) == ["clean", "dirty"]  # CCX 0 was cleaned before the refusal
        with pytest.raises(status.DfflushRequired):
            fw.activate(fw.launch_start(0, 0, None, None), 5)
        fw.wbinvd(list(range(per_ccx, 2 * per_ccx)))
        fw.df_flush()
        assert fw.asid_states(5) == ["clean", "clean"]


def test_deactivate_clears_wbinvd_done_on_every_core(sim_host):
    psp = SimulatedPsp(sim_host)
    g = GuestCommands(PspClient(psp))
    handle = g.launch_start(Policy(0))
    g.activate(handle, 5)
    g.launch_measure(handle)
    g.launch_finish(handle)
    g.deactivate(handle)
    with psp.firmware() as fw:
        fw.wbinvd(list(range(fw.cores - 1)))  # all but the last core
    with pytest.raises(status.WbinvdRequired):
        g.df_flush()
    assert firmware_dirty(psp) == [5]


# -- sevd copes: start-up flush, DFFLUSH_REQUIRED retry, Xen and firmware agree -------------------------------


def _launch(h: Harness, name: str, policy: Policy | None = None, session=None) -> tuple[int, bytes]:
    policy = policy or Policy(0)
    image = OVMF.read_bytes()
    domid = h.toolstack.create(name, 16, image)
    gpa, size = h.toolstack.image_location(domid)
    godh, blob = (session.godh.to_bytes(), session.blob.to_bytes()) if session else (None, None)
    request_launch(h.xs, proto.LaunchRequest(domid, 1, policy, False, session is not None, gpa, size, godh, blob))
    return domid, image


def _agree(h: Harness) -> list[int]:
    """Xen's and the firmware's dirty ASIDs, which must be the same list."""
    xen, fw = sorted(h.host.xen().dirty_asids()), firmware_dirty(h.host.psp())
    assert xen == fw, f"Xen thinks {xen} dirty, the firmware {fw}"
    return xen


@pytest.fixture
def pv_harness(tmp_path):
    h = Harness(tmp_path / "host", max_asid=6, min_sev_asid=5)  # a PV Dom0, as every simulated host
    yield h
    h.close()


@needs_ovmf
def test_startup_flush_makes_xen_and_firmware_agree(pv_harness):
    assert len(firmware_dirty(pv_harness.host.psp())) == 6  # INIT left every ASID dirty; Xen thinks them free
    assert pv_harness.host.xen().dirty_asids() == []
    pv_harness.start_daemon()
    assert _agree(pv_harness) == []
    assert "WBINVD + DF_FLUSH: ASIDs [] clean (start-up)" in pv_harness.logs()
    domid, _ = _launch(pv_harness, "first")
    assert pv_harness.wait_state(domid, "running", "error") == "running", pv_harness.logs()
    assert "DFFLUSH_REQUIRED" not in pv_harness.logs()


@needs_ovmf
def test_activate_retries_once_after_wbinvd_and_df_flush(pv_harness):
    pv_harness.start_daemon(prelude=NO_STARTUP_FLUSH)
    domid, _ = _launch(pv_harness, "retried")
    assert pv_harness.wait_state(domid, "running", "error") == "running", pv_harness.logs()
    log = pv_harness.logs()
    assert "ACTIVATE answered DFFLUSH_REQUIRED for ASID 5" in log and "ACTIVATE succeeded after the flush" in log
    assert _agree(pv_harness) == []
    # the next launch needs no retry: the flush cleaned every ASID
    other, _ = _launch(pv_harness, "second")
    assert pv_harness.wait_state(other, "running", "error") == "running"
    assert pv_harness.logs().count("answered DFFLUSH_REQUIRED") == 1


@needs_ovmf
def test_without_the_coping_the_first_activate_fails_dfflush_required(pv_harness):
    pv_harness.start_daemon(prelude=f"{NO_STARTUP_FLUSH}\n{NO_ACTIVATE_RETRY}")
    domid, _ = _launch(pv_harness, "doomed")
    assert pv_harness.wait_state(domid, "running", "error") == "error"
    assert pv_harness.field(domid, "error").startswith("DFFLUSH_REQUIRED:")


@needs_ovmf
def test_xen_and_firmware_agree_through_destroy_and_reuse(pv_harness):
    pv_harness.start_daemon()
    seen = []
    for i in range(3):  # two SEV ASIDs: the third launch reuses a flushed one
        domid, _ = _launch(pv_harness, f"cycle{i}")
        assert pv_harness.wait_state(domid, "running", "error") == "running", pv_harness.logs()
        seen.append(int(pv_harness.field(domid, "asid")))
        pv_harness.toolstack.destroy(domid)
        wait_for(lambda d=domid: pv_harness.xs.read(proto.guest_path(d)) is None, 30, "guest decommissioned")
        assert seen[-1] in _agree(pv_harness)  # dirty in both until the next WBINVD + DF_FLUSH
    assert seen == [5, 6, 5]  # the third launch found no clean ASID: flushed, then reused 5
    assert _agree(pv_harness) == [5]  # the flush cleaned 5 and 6; the reused 5 died since


# -- the model: caches without SME_COHERENT -------------------------------------------------------------------


def test_cpu_generations():
    assert (CPUS["naples"].max_asid, CPUS["naples"].es, CPUS["naples"].coherent) == (15, False, False)
    assert (CPUS["rome"].max_asid, CPUS["rome"].coherent) == (509, False)
    assert (CPUS["milan"].max_asid, CPUS["milan"].coherent) == (509, True)
    assert CPUS["genoa"].max_asid == CPUS["turin"].max_asid == 1006
    for model in CPUS.values():
        assert 1 <= model.min_sev_asid <= model.max_asid
        assert (model.min_sev_asid > 1) == model.es  # an ES range exactly where SEV-ES exists


def test_host_writes_stay_in_the_cache_until_flushed(tmp_path):
    host = SimulatedHost.create(tmp_path / "rome", cpu="rome", memory_size=64 << 20)
    xen = host.xen()
    image = bytes(range(256)) * 64  # 16 KiB
    domid = xen.create_domain("g", 4, image)
    (spa, length), *rest = xen.boot_image_ranges(domid)
    dram = host.psp().memory
    assert dram.read(spa, 64) == bytes(64), "the toolstack's store reached DRAM without a flush"
    assert xen.cpu_read(spa, 64) == image[:64]  # the writer sees its own lines
    xen.flush_guest_pages(domid, [(spa, 4096)])
    assert dram.read(spa, 4096) == image[:4096]
    assert dram.read(spa + 4096, 64) == bytes(64)  # only the range asked for
    with pytest.raises(HypervisorError, match="not its memory"):
        xen.flush_guest_pages(domid, [(0, 4096)])
    xen.flush_guest_pages(domid)  # all of it
    assert b"".join(dram.read(s, n) for s, n in xen.boot_image_ranges(domid)) == image


def test_a_stale_line_written_back_corrupts_what_the_psp_encrypted(tmp_path):
    host = SimulatedHost.create(tmp_path / "rome", cpu="rome", memory_size=64 << 20, pv_dom0=False)
    xen = host.xen()
    image = b"\xa5" * 4096
    domid = xen.create_domain("g", 4, image)
    ((spa, _),) = xen.boot_image_ranges(domid)
    g = GuestCommands(host.client())
    handle = g.launch_start(Policy(0))
    g.activate(handle, xen.make_sev_domain(domid, es=False).asid)
    g.launch_update_data(handle, spa, 4096)  # no flush: the PSP encrypted what DRAM held (zeros)
    assert g.dbg_decrypt(handle, spa, 64) == bytes(64)
    xen.wbinvd_all_cpus()  # the stale plaintext lines go back to DRAM over the ciphertext
    assert g.dbg_decrypt(handle, spa, 64) not in (bytes(64), image[:64])


def test_coherent_cpus_have_no_cache_to_flush(tmp_path):
    host = SimulatedHost.create(tmp_path / "milan", cpu="milan", memory_size=64 << 20)
    xen = host.xen()
    domid = xen.create_domain("g", 4, b"\x5a" * 4096)
    ((spa, _),) = xen.boot_image_ranges(domid)
    assert host.psp().memory.read(spa, 4096) == b"\x5a" * 4096
    assert xen.coherent and not (host.root / "cache").exists()


# -- sevd flushes before the PSP works in place ----------------------------------------------------------------


def _attested_measurement(h: Harness) -> None:
    """Launch with an owner session; the owner's check of the measurement raises VerificationError if wrong."""
    chain = Platform(h.host.client()).pdh_cert_export().chain(*h.host.simulated_roots())
    session = make_session(chain.pdh, 0)
    domid, image = _launch(h, "attested", session=session)
    assert h.wait_state(domid, "measured", "error") == "measured", h.logs()
    measured = LaunchMeasurement.from_base64(h.field(domid, "measurement"))
    major, minor = map(int, h.field(domid, "api").split("."))
    verify_measurement(measured, image, 0, major, minor, int(h.field(domid, "build")), session.keys.tik)


@needs_ovmf
@pytest.mark.parametrize("cpu", ["rome", "milan"])
def test_measurement_verifies_with_the_flush(tmp_path, cpu):
    h = Harness(tmp_path / cpu, cpu=cpu, memory_size=256 << 20)
    try:
        h.start_daemon()
        _attested_measurement(h)
    finally:
        h.close()


@needs_ovmf
def test_without_the_flush_a_non_coherent_cpu_measures_stale_memory(tmp_path):
    h = Harness(tmp_path / "rome", cpu="rome", memory_size=256 << 20)
    try:
        h.start_daemon(prelude=NO_CACHE_FLUSH)
        with pytest.raises(VerificationError):
            _attested_measurement(h)
    finally:
        h.close()


@needs_ovmf
def test_without_the_flush_a_coherent_cpu_still_measures_right(tmp_path):
    h = Harness(tmp_path / "milan", cpu="milan", memory_size=256 << 20)
    try:
        h.start_daemon(prelude=NO_CACHE_FLUSH)
        _attested_measurement(h)
    finally:
        h.close()


# -- the demo on any generation ---------------------------------------------------------------------------------


@needs_ovmf
@pytest.mark.parametrize(  # every CPU generation and every Linux driver generation at least once
    ("cpu", "linux"), [("naples", "6.16"), ("rome", "6.12"), ("milan", "6.1"), ("genoa", "6.12"), ("turin", "6.16")]
)
def test_demo_on_a_host_of_each_generation(tmp_path, cpu, linux):
    sevd_sim = shutil.which("sevd-sim", path=str(Path(sys.executable).parent))
    host = tmp_path / cpu
    made = subprocess.run(
        [sevd_sim, "host", "--cpu", cpu, "--linux", linux, "--create-only", str(host)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    assert f"Linux {linux}" in made.stdout
    assert f'"name": "{cpu}"' in (host / "cpu.json").read_text()
    proc = subprocess.run([sevd_sim, "demo", "--host", str(host)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "domain sev-guest: domid 1, running, unpaused" in proc.stdout
    assert "in plaintext: False" in proc.stdout and "in plaintext: True" not in proc.stdout
