"""The simulated PSP's measure-only machine-memory mode (memory kind "xen") and its wiring to the real Xen backend.

Under emulation the patched Xen runs with sev=test and the PSP is simulated in Dom0: it is handed machine
addresses and reads them through XEN_DOMCTL_SEV_READ_SPA.  No Xen runs here: the real DomctlXen is driven
with a stand-in for libxencall that answers READ_SPA from a fake machine (one SEV domain's RAM), and the
daemon's wiring is checked with a fake DomctlXen.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from sevd import backends
from sevd.abi import status
from sevd.abi.launch import LaunchMeasurement, TransportKeys
from sevd.abi.policy import Policy
from sevd.abi.units import PHYS_ADDR_LIMIT as SPA_LIMIT
from sevd.config import Config
from sevd.errors import DeviceError
from sevd.guest import GuestCommands
from sevd.owner.measurement import verify_measurement
from sevd.owner.secret import package_secret
from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd.xen import domctl
from sevd.xen.hypervisor import HypervisorError
from sevd_sim.cli import cli
from sevd_sim.psp import device
from sevd_sim.psp import digest as digest_mod
from sevd_sim.psp.device import XEN_MACHINE_MEMORY, SimulatedPsp, create_psp
from sevd_sim.psp.firmware import Firmware
from sevd_sim.psp.identity import Identity
from sevd_sim.psp.memory import READ_CHUNK, MachineMemory, MemoryFault, OutOfRange, PhysicalMemory

BASE = 0x7A000000  # where the fake machine holds the guest's RAM
RAM = 4 << 20
ASID = 5
REAL_DOMCTL_XEN = domctl.DomctlXen


class Machine:
    """Xen's READ_SPA as docs/xen.md states it: RAM of the SEV domain with ASID 5 at BASE, refusals by errno."""

    def __init__(self, test_mode: bool = True):
        self.ram = bytearray(os.urandom(RAM))
        self.test_mode = test_mode
        self.reads: list[tuple[int, int, int]] = []

    def read_spa(self, asid: int, spa: int, length: int) -> bytes:
        self.reads.append((asid, spa, length))
        if not self.test_mode:
            raise domctl.DomctlError("Xen refused READ_SPA: EOPNOTSUPP", errno.EOPNOTSUPP)
        if not 0 < length <= READ_CHUNK:
            raise domctl.DomctlError("Xen refused READ_SPA: EINVAL", errno.EINVAL)
        if asid != ASID:
            raise domctl.DomctlError("Xen refused READ_SPA: ESRCH", errno.ESRCH)
        if not (spa >= BASE and spa + length <= BASE + RAM):
            raise domctl.DomctlError("Xen refused READ_SPA: EPERM", errno.EPERM)
        return bytes(self.ram[spa - BASE : spa - BASE + length])

    def check_spa(self, asid: int, spa: int, length: int) -> None:
        """CHECK_SPA, which the Dom0 patch asks before the PSP touches guest memory: the same RAM, or EPERM."""
        if asid != ASID:
            raise domctl.DomctlError("Xen refused CHECK_SPA: ESRCH", errno.ESRCH)
        if not (spa >= BASE and spa + length <= BASE + RAM):
            raise domctl.DomctlError("Xen refused CHECK_SPA: EPERM", errno.EPERM)

    def xencall(self, d) -> int:
        """The same machine behind the real DomctlXen: libxencall's xencall1 with a struct xen_domctl."""
        if d.u.sev_op.op == domctl.SEV_CHECK_SPA:
            c = d.u.sev_op.u.check
            try:
                self.check_spa(c.asid, c.spa, c.len)
            except domctl.DomctlError as exc:
                domctl.ffi.errno = exc.errno
                return -1
            return 0
        r = d.u.sev_op.u.read
        try:
            data = self.read_spa(r.asid, r.spa, r.len)
        except domctl.DomctlError as exc:
            domctl.ffi.errno = exc.errno
            return -1
        domctl.ffi.memmove(domctl.ffi.cast("uint8_t *", r.buffer), data, len(data))
        return 0


class FakeXencall:
    """libxencall.so.1 for DomctlXen: cffi memory as hypercall buffers, xencall1 answered by a Machine."""

    def __init__(self, machine: Machine):
        self.machine = machine
        self.buffers: dict[int, object] = {}
        self.opened = self.closed = 0

    def xencall_open(self, logger, flags):
        self.opened += 1
        return domctl.ffi.cast("xencall_handle *", 1)

    def xencall_close(self, handle):
        self.closed += 1

    def xencall_alloc_buffer(self, handle, size):
        buf = domctl.ffi.new("char[]", size)
        ptr = domctl.ffi.cast("void *", buf)
        self.buffers[int(domctl.ffi.cast("uintptr_t", ptr))] = buf
        return ptr

    def xencall_free_buffer(self, handle, ptr):
        del self.buffers[int(domctl.ffi.cast("uintptr_t", ptr))]

    def xencall1(self, handle, op, arg):
        return self.machine.xencall(domctl.ffi.cast("struct xen_domctl *", arg))


@pytest.fixture
def machine(monkeypatch) -> Machine:
    """The fake machine behind every DomctlXen() the simulated PSP opens."""
    m = Machine()
    lib = FakeXencall(m)
    m.lib = lib
    monkeypatch.setattr(domctl, "DomctlXen", lambda **kw: REAL_DOMCTL_XEN(lib, **kw))
    return m


@pytest.fixture
def xen_psp(tmp_path) -> Path:
    host = tmp_path / "psp-host"
    create_psp(host, memory=XEN_MACHINE_MEMORY, encrypt=False, max_asid=7, min_sev_asid=4, es=True)
    return host


def open_guest(host: Path):
    psp = SimulatedPsp(host)
    client = PspClient(psp)
    return psp, Platform(client), GuestCommands(client)


# -- the memory class ------------------------------------------------------------------------------------


def test_reads_go_to_xen_in_1_mib_chunks_with_the_asid():
    m = Machine()
    mem = MachineMemory(m.read_spa)
    length = (2 << 20) + 48
    assert mem.read(BASE + 16, length, asid=ASID) == bytes(m.ram[16 : 16 + length])
    chunks = [(ASID, BASE + 16, 1 << 20), (ASID, BASE + 16 + (1 << 20), 1 << 20), (ASID, BASE + 16 + (2 << 20), 48)]
    assert m.reads == [read for chunk in chunks for read in (chunk, chunk)]  # each read twice, to see it repeats


def test_contains_leaves_machine_ram_to_xen():
    mem = MachineMemory(Machine().read_spa)
    assert mem.contains(0, 16) and mem.contains(SPA_LIMIT - 16, 16)
    assert not mem.contains(SPA_LIMIT - 16, 32) and not mem.contains(-16, 16)


@pytest.mark.parametrize(("asid", "spa"), [(ASID, BASE + RAM - 16), (ASID + 1, BASE)])
def test_xen_refusals_are_out_of_range(asid, spa):
    with pytest.raises(OutOfRange, match="EPERM|ESRCH"):
        MachineMemory(Machine().read_spa).read(spa, 32, asid=asid)


def test_in_place_feeds_chunks_and_never_encrypts():
    m = Machine()
    mem = MachineMemory(m.read_spa)
    seen: list[bytes] = []
    mem.in_place(BASE, (1 << 20) + 32, lambda v: seen.append(bytes(v)), None, asid=ASID)
    assert [len(c) for c in seen] == [1 << 20, 32]
    assert b"".join(seen) == bytes(m.ram[: (1 << 20) + 32])
    with pytest.raises(ValueError, match="cannot be encrypted"):
        mem.in_place(BASE, 32, lambda v: None, bytes(16), asid=ASID)


@pytest.mark.parametrize("backend", ["midstate", "file"])
def test_chunked_digest_equals_one_call(tmp_path, monkeypatch, backend):
    """The launch digest fed 1 MiB chunks from machine memory equals one call over the same bytes in a file."""
    if backend == "file":
        monkeypatch.setattr(digest_mod, "_LIB", None)
    m = Machine()
    length = (2 << 20) + (512 << 10)
    chunked = digest_mod.LaunchDigest(None, tmp_path / "chunked")
    MachineMemory(m.read_spa).in_place(BASE, length, chunked.update, None, asid=ASID)
    assert len(m.reads) == 3 * 2  # each chunk read twice
    whole_calls: list[int] = []
    whole = digest_mod.LaunchDigest(None, tmp_path / "whole")
    file_mem = PhysicalMemory.create(tmp_path / "m.img", length)
    file_mem.write(0, bytes(m.ram[:length]))

    def observe(view):
        whole_calls.append(len(view))
        whole.update(view)

    file_mem.in_place(0, length, observe, None)
    file_mem.close()
    assert whole_calls == [length]
    expected = hashlib.sha256(bytes(m.ram[:length])).digest()
    assert chunked.final() == whole.final() == expected


def test_firmware_refuses_to_encrypt_machine_memory(tmp_path, xen_psp):
    mem = MachineMemory(Machine().read_spa)
    state = json.loads((xen_psp / "psp" / "state.json").read_text())
    with pytest.raises(ValueError, match="encrypt=False"):
        Firmware(state, Identity(xen_psp / "psp" / "identity"), mem, tmp_path, encrypt=True)
    Firmware(state, Identity(xen_psp / "psp" / "identity"), mem, tmp_path, encrypt=False)
    with pytest.raises(ValueError, match="cannot be encrypted"):
        SimulatedPsp(xen_psp, encrypt=True)
    with pytest.raises(ValueError, match="encrypt=False"):
        create_psp(tmp_path / "other", memory=XEN_MACHINE_MEMORY)


# -- the simulated PSP in this mode ----------------------------------------------------------------------


def test_config_records_the_kind_and_no_encryption(xen_psp):
    config = json.loads((xen_psp / "psp" / "config.json").read_text())
    assert (config["memory"], config["encrypt"]) == ("xen", False)


def test_xen_is_opened_only_when_guest_memory_is_read(xen_psp, monkeypatch, caplog):
    def no_xen(**kw):
        raise AssertionError("libxencall opened without a guest-memory access")

    monkeypatch.setattr(domctl, "DomctlXen", no_xen)
    monkeypatch.setattr(device, "_warned", set())  # as in a new process (creating the PSP announced it already)
    with caplog.at_level(logging.WARNING, logger="sevd.sim.psp"):
        psp, platform, g = open_guest(xen_psp)
        psp2 = SimulatedPsp(xen_psp)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "measure-only TEST MODE" in warnings[0] and "NOT encrypted" in warnings[0]
    h = g.launch_start(Policy(0))
    g.activate(h, ASID)
    assert g.guest_status(h).asid == ASID
    psp.wbinvd_all_cpus()
    platform.status()
    psp.close()
    psp2.close()


def test_launch_measures_machine_memory(xen_psp, machine):
    """LAUNCH_UPDATE_DATA over 2.5 MiB of the guest's machine memory: the owner's measurement matches, nothing
    is written, the reads carry the guest's ASID."""
    psp, platform, g = open_guest(xen_psp)
    h = g.launch_start(Policy(0))
    g.activate(h, ASID)
    before = bytes(machine.ram)
    image_len = (2 << 20) + (512 << 10)
    g.launch_update_data(h, BASE, image_len)
    assert {(asid, length) for asid, _, length in machine.reads} == {(ASID, 1 << 20), (ASID, 512 << 10)}
    assert len(machine.reads) == 3 * 2  # each chunk read twice
    m = LaunchMeasurement.parse(g.launch_measure(h))
    st = platform.status()
    verify_measurement(m, before[:image_len], 0, st.api_major, st.api_minor, st.build, bytes(16))
    assert bytes(machine.ram) == before
    assert g.dbg_decrypt(h, BASE + 4096, 64) == before[4096 : 4096 + 64]  # plaintext: nothing was encrypted
    psp.close()
    assert machine.lib.opened == machine.lib.closed == 1
    assert not machine.lib.buffers


@pytest.mark.parametrize("backend", ["midstate", "file"])
def test_a_refused_range_is_eperm_and_measures_nothing(xen_psp, machine, monkeypatch, backend):
    """The Dom0 patch asks Xen's CHECK_SPA before the firmware runs (sev_guest_memory_ok): EPERM."""
    if backend == "file":
        monkeypatch.setattr(digest_mod, "_LIB", None)
    psp, platform, g = open_guest(xen_psp)
    h = g.launch_start(Policy(0))
    g.activate(h, ASID)
    # The first 1 MiB is the guest's, the rest runs past its RAM: Xen refuses the range.
    with pytest.raises(DeviceError) as info:
        g.launch_update_data(h, BASE + RAM - (1 << 20), (1 << 20) + 4096)
    assert info.value.errno == errno.EPERM
    g.launch_update_data(h, BASE, 8192)
    m = LaunchMeasurement.parse(g.launch_measure(h))
    st = platform.status()
    verify_measurement(m, bytes(machine.ram[:8192]), 0, st.api_major, st.api_minor, st.build, bytes(16))
    psp.close()


def test_a_guest_whose_asid_xen_does_not_know_is_eperm(xen_psp, machine):
    """sev_xen_check_spa turns Xen's ESRCH (no live SEV domain with the ASID) into EPERM; nothing is read."""
    psp, _, g = open_guest(xen_psp)
    h = g.launch_start(Policy(0))
    g.activate(h, ASID + 1)
    with pytest.raises(DeviceError) as info:
        g.launch_update_data(h, BASE, 4096)
    assert info.value.errno == errno.EPERM
    assert not machine.reads
    psp.close()


def test_xen_without_sev_test_is_a_platform_error(xen_psp, machine, caplog):
    machine.test_mode = False
    psp, _, g = open_guest(xen_psp)
    h = g.launch_start(Policy(0))
    g.activate(h, ASID)
    with pytest.raises(status.HwerrorPlatform):
        g.launch_update_data(h, BASE, 4096)
    assert any("booted with sev=test" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    psp.close()


def test_secret_is_checked_not_written_and_never_logged(xen_psp, machine, caplog):
    psp, _, g = open_guest(xen_psp)
    h = g.launch_start(Policy(0))
    g.activate(h, ASID)
    g.launch_update_data(h, BASE, 4096)
    m = LaunchMeasurement.parse(g.launch_measure(h))
    secret = b"TOP-SECRET-PASSPHRASE-0123456789"
    packet = package_secret(TransportKeys(bytes(16), bytes(16)), secret, m)
    before = bytes(machine.ram)
    spa = BASE + 0x10000
    with caplog.at_level(logging.DEBUG):
        g.launch_update_secret(h, packet.header.to_bytes(), spa, packet.ciphertext)
    assert bytes(machine.ram) == before
    lines = [r.getMessage() for r in caplog.records]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert any(f"the secret of 32 bytes at SPA {spa:#x}" in line and "not written" in line for line in lines)
    for line in lines:
        for leak in ("TOP-SECRET", secret.hex(), packet.ciphertext.hex(), repr(packet.ciphertext)[2:20]):
            assert leak not in line
    # Still verified: a secret bound to another measurement is refused.
    other = package_secret(TransportKeys(bytes(16), bytes(16)), secret, LaunchMeasurement(bytes(32), m.mnonce))
    with pytest.raises(status.BadMeasurement):
        g.launch_update_secret(h, other.header.to_bytes(), spa, other.ciphertext)
    # And Xen still decides the address: not the guest's RAM (CHECK_SPA, EPERM from the Dom0 patch).
    with pytest.raises(DeviceError) as info:
        g.launch_update_secret(h, packet.header.to_bytes(), BASE + RAM, packet.ciphertext)
    assert info.value.errno == errno.EPERM
    psp.close()


def test_dbg_encrypt_is_not_written(xen_psp, machine, caplog):
    psp, _, g = open_guest(xen_psp)
    h = g.launch_start(Policy(0))
    g.activate(h, ASID)
    before = bytes(machine.ram)
    with caplog.at_level(logging.WARNING):
        g.dbg_encrypt(h, BASE, b"x" * 32)
    assert bytes(machine.ram) == before
    assert any("DBG_ENCRYPT data of 32 bytes" in r.getMessage() for r in caplog.records)
    psp.close()


# -- the daemon: Xen's WBINVD reaches the simulated PSP ----------------------------------------------------


class FakeDomctlXen:
    def __init__(self, psp_host: Path, fail: bool = False, exists=None):
        self.psp_host, self.fail, self.exists = psp_host, fail, exists
        self.calls: list[tuple[str, bool]] = []

    def _psp_saw_wbinvd(self) -> bool:
        return all(json.loads((self.psp_host / "psp" / "state.json").read_text())["wbinvd_done"])  # every core

    def wbinvd_all_cpus(self) -> None:
        self.calls.append(("wbinvd_all_cpus", self._psp_saw_wbinvd()))
        if self.fail:
            raise HypervisorError("Xen refused WBINVD: EOPNOTSUPP")

    def dirty_asids(self) -> list[int]:
        return [4]


def _dirty_psp(host: Path) -> GuestCommands:
    """A guest ran with ASID 5 and was DEACTIVATEd: the firmware now needs WBINVD before DF_FLUSH."""
    _, _, g = open_guest(host)
    h = g.launch_start(Policy(0))
    g.activate(h, ASID)
    g.launch_measure(h)
    g.launch_finish(h)
    g.deactivate(h)
    g.decommission(h)
    with pytest.raises(status.WbinvdRequired):
        g.df_flush()
    return g


def test_wbinvd_through_real_xen_reaches_the_simulated_psp(xen_psp, machine, monkeypatch):
    g = _dirty_psp(xen_psp)
    fakes: list[FakeDomctlXen] = []
    monkeypatch.setattr(domctl, "DomctlXen", lambda **kw: fakes.append(FakeDomctlXen(xen_psp, **kw)) or fakes[-1])
    config = Config(psp_backend="simulated", psp_path=str(xen_psp), hypervisor_backend="xen")
    hv = backends.open_hypervisor(config, lambda domid: True)
    assert hv.exists(3) and hv.dirty_asids() == [4]  # everything else is Xen's
    hv.wbinvd_all_cpus()
    assert fakes[0].calls == [("wbinvd_all_cpus", False)]  # the PSP learns of it only after Xen did it
    g.df_flush()


def test_a_refused_wbinvd_is_not_signalled(xen_psp, machine, monkeypatch):
    g = _dirty_psp(xen_psp)
    monkeypatch.setattr(domctl, "DomctlXen", lambda **kw: FakeDomctlXen(xen_psp, fail=True, **kw))
    config = Config(psp_backend="simulated", psp_path=str(xen_psp), hypervisor_backend="xen")
    hv = backends.open_hypervisor(config, lambda domid: True)
    with pytest.raises(HypervisorError):
        hv.wbinvd_all_cpus()
    with pytest.raises(status.WbinvdRequired):
        g.df_flush()


def test_a_real_psp_gets_the_bare_xen_backend(monkeypatch):
    fake = FakeDomctlXen(Path("/nonexistent"))
    monkeypatch.setattr(domctl, "DomctlXen", lambda **kw: fake)
    config = Config(psp_backend="device", hypervisor_backend="xen")
    assert backends.open_hypervisor(config, lambda domid: True) is fake


# -- sevd-sim psp ------------------------------------------------------------------------------------------


def test_sim_psp_plain_creates_only_a_psp(tmp_path):
    root = tmp_path / "p"
    result = CliRunner().invoke(cli, ["psp", str(root), "--max-asid", "9", "--min-sev-asid", "3"])
    assert result.exit_code == 0, result.output
    assert f"simulated PSP ready: {root / 'psp'}" in result.output
    assert "ASIDs: 1..9 (SEV-ES 1..2, SEV 3..9)" in result.output
    # no xen/, no xenstored, no sevd.toml; the chip's key server (kds/) and the simulated AMD root beside it
    assert sorted(p.name for p in root.iterdir()) == ["kds", "memory.img", "psp", "simulated-amd-roots"]
    config = json.loads((root / "psp" / "config.json").read_text())
    assert config["memory"] == str(root / "memory.img") and config["encrypt"] is True
    state = json.loads((root / "psp" / "state.json").read_text())
    assert (state["max_asid"], state["min_sev_asid"]) == (9, 3)
    _, platform, _ = open_guest(root)
    assert platform.status().state == 1  # INIT, as the kernel leaves it at probe
    again = CliRunner().invoke(cli, ["psp", str(root)])
    assert again.exit_code == 2 and "already holds a simulated PSP" in again.output


def test_sim_psp_refuses_impossible_asids(tmp_path):
    result = CliRunner().invoke(cli, ["psp", str(tmp_path / "p"), "--max-asid", "4", "--min-sev-asid", "5"])
    assert result.exit_code == 2 and "--min-sev-asid" in result.output
    assert not (tmp_path / "p").exists()


@pytest.mark.skipif(Path("/dev/xen/privcmd").exists(), reason="this is a Xen Dom0")
def test_sim_psp_on_xen_without_xen_says_so(tmp_path):
    result = CliRunner().invoke(cli, ["psp", str(tmp_path / "p"), "--xen-machine-memory"])
    assert result.exit_code == 1
    assert "--xen-machine-memory needs Dom0 of the patched Xen booted with sev=test" in result.output
    assert "Dom0" in result.output.split("sev=test:", 1)[1]  # and why: DomctlXen's own reason
    assert not (tmp_path / "p" / "psp").exists()


class FakeInfoXen:
    def __init__(self, test_mode: bool):
        self.test_mode = test_mode
        self.closed = False

    def info(self) -> domctl.SevInfo:
        return domctl.SevInfo(True, self.test_mode, True, 47, 5, 7, 4, ())

    def close(self) -> None:
        self.closed = True


def test_sim_psp_on_xen_takes_the_asids_from_xen(tmp_path, monkeypatch):
    xen = FakeInfoXen(test_mode=True)
    monkeypatch.setattr(domctl, "DomctlXen", lambda **kw: xen)
    root = tmp_path / "p"
    result = CliRunner().invoke(cli, ["psp", str(root), "--xen-machine-memory"])
    assert result.exit_code == 0, result.output
    assert "measure-only TEST MODE" in result.output and "ASIDs: 1..7 (SEV-ES 1..3, SEV 4..7)" in result.output
    assert xen.closed
    assert not (root / "memory.img").exists()
    config = json.loads((root / "psp" / "config.json").read_text())
    assert (config["memory"], config["encrypt"], config["es"]) == ("xen", False, True)
    state = json.loads((root / "psp" / "state.json").read_text())
    assert (state["max_asid"], state["min_sev_asid"]) == (7, 4)
    explicit = CliRunner().invoke(cli, ["psp", str(tmp_path / "q"), "--xen-machine-memory", "--max-asid", "6"])
    assert explicit.exit_code == 0, explicit.output
    assert json.loads((tmp_path / "q" / "psp" / "state.json").read_text())["max_asid"] == 6


def test_sim_psp_on_xen_needs_sev_test(tmp_path, monkeypatch):
    monkeypatch.setattr(domctl, "DomctlXen", lambda **kw: FakeInfoXen(test_mode=False))
    result = CliRunner().invoke(cli, ["psp", str(tmp_path / "p"), "--xen-machine-memory"])
    assert result.exit_code == 1 and "sev=test" in result.output
    assert not (tmp_path / "p" / "psp").exists()


def test_a_read_that_does_not_repeat_is_read_again_and_logged(caplog):
    """Machine memory read through Xen under emulation: a chunk whose second read differs is read until two
    reads agree (and the disagreement is logged); one that never repeats is a fault, never measured."""
    m = Machine()
    flips = iter([True, False, False])

    def unstable(asid, spa, length):
        data = bytearray(m.read_spa(asid, spa, length))
        if next(flips, False):
            data[0] ^= 0xFF
        return bytes(data)

    with caplog.at_level(logging.WARNING, logger="sevd.sim.psp"):
        assert MachineMemory(unstable).read(BASE, 4096, asid=ASID) == bytes(m.ram[:4096])
    assert any("read differently twice" in r.getMessage() for r in caplog.records)
    counter = iter(range(1000))

    def never_the_same(asid, spa, length):
        return next(counter).to_bytes(4, "little") * (length // 4)

    with pytest.raises(MemoryFault, match="reads differently every time"):
        MachineMemory(never_the_same).read(BASE, 4096, asid=ASID)
