"""Simulated PSP: the memory-encryption model and shared, durable state across opens and processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os

import pytest

from sevd.abi import status
from sevd.abi.commands import FirmwareGuestState as G
from sevd.abi.commands import PlatformState as P
from sevd.abi.launch import LaunchMeasurement
from sevd.abi.policy import Policy
from sevd.guest import GuestCommands
from sevd.owner.measurement import verify_measurement
from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd_sim.psp import digest as digest_mod
from sevd_sim.psp.device import SimulatedPsp
from sevd_sim.psp.memory import OutOfRange, PhysicalMemory, crypt

SPA = 0x40000
PLAIN = bytes(range(256)) * 16  # one page


def open_psp(host):
    psp = SimulatedPsp(host)
    client = PspClient(psp)
    return psp, Platform(client), GuestCommands(client)


def launched(g: GuestCommands, asid: int, policy: int = 0) -> int:
    handle = g.launch_start(Policy(policy))
    g.activate(handle, asid)
    return handle


def test_update_data_encrypts_in_place_and_debug_decrypts(sim_host):
    psp, _, g = open_psp(sim_host)
    h = launched(g, 5)
    psp.memory.write(SPA, PLAIN)
    g.launch_update_data(h, SPA, len(PLAIN))
    cipher = psp.memory.read(SPA, len(PLAIN))
    assert cipher != PLAIN
    assert sum(a == b for a, b in zip(cipher, PLAIN, strict=True)) < len(PLAIN) // 16  # every block changed
    assert g.dbg_decrypt(h, SPA, len(PLAIN)) == PLAIN


def test_a_page_copied_to_another_spa_decrypts_to_garbage(sim_host):
    psp, _, g = open_psp(sim_host)
    h = launched(g, 5)
    psp.memory.write(SPA, PLAIN)
    g.launch_update_data(h, SPA, len(PLAIN))
    other = SPA + 0x10000
    psp.memory.write(other, psp.memory.read(SPA, len(PLAIN)))  # the hypervisor moves the page
    moved = g.dbg_decrypt(h, other, len(PLAIN))
    assert moved != PLAIN
    assert sum(a == b for a, b in zip(moved, PLAIN, strict=True)) < len(PLAIN) // 16  # noise, not a near-copy


def test_same_plaintext_in_two_guests_gives_different_ciphertext(sim_host):
    psp, _, g = open_psp(sim_host)
    a, b = launched(g, 5), launched(g, 6)
    psp.memory.write(SPA, PLAIN)
    g.launch_update_data(a, SPA, len(PLAIN))
    cipher_a = psp.memory.read(SPA, len(PLAIN))
    psp.memory.write(SPA, PLAIN)  # same SPA, same bytes, other guest
    g.launch_update_data(b, SPA, len(PLAIN))
    cipher_b = psp.memory.read(SPA, len(PLAIN))
    assert cipher_a != cipher_b
    assert g.dbg_decrypt(b, SPA, len(PLAIN)) == PLAIN
    assert g.dbg_decrypt(a, SPA, len(PLAIN)) != PLAIN  # a's key does not open b's page


def test_dbg_encrypt_then_guest_view(sim_host):
    psp, _, g = open_psp(sim_host)
    h = launched(g, 5)
    g.dbg_encrypt(h, SPA, PLAIN[:256])
    assert psp.memory.read(SPA, 256) != PLAIN[:256]
    assert g.dbg_decrypt(h, SPA, 256) == PLAIN[:256]


def test_state_survives_another_open(sim_host):
    psp, platform, g = open_psp(sim_host)
    h = launched(g, 5)
    psp.memory.write(SPA, PLAIN)
    g.launch_update_data(h, SPA, len(PLAIN))
    g.launch_measure(h)
    psp.close()
    psp2, platform2, g2 = open_psp(sim_host)  # as another process would
    st = platform2.status()
    assert (st.state, st.guests) == (P.WORKING, 1)
    gs = g2.guest_status(h)
    assert (gs.state, gs.asid) == (G.LSECRET, 5)
    assert g2.dbg_decrypt(h, SPA, len(PLAIN)) == PLAIN
    psp2.close()


def _worker(host: str, asid: int, rounds: int, queue) -> None:
    psp, _, g = open_psp(host)
    handles = []
    spa = asid * 0x10000
    for _ in range(rounds):
        h = launched(g, asid)
        psp.memory.write(spa, PLAIN)
        g.launch_update_data(h, spa, len(PLAIN))
        g.launch_measure(h)
        g.launch_finish(h)
        assert g.dbg_decrypt(h, spa, len(PLAIN)) == PLAIN
        g.deactivate(h)
        g.decommission(h)
        while True:  # another process may DEACTIVATE between our WBINVD and DF_FLUSH, as on real hardware
            psp.wbinvd_all_cpus()
            try:
                g.df_flush()
                break
            except status.WbinvdRequired:
                continue
        handles.append(h)
    final = launched(g, asid)
    queue.put((asid, final, handles))


def _run_worker(host: str, asid: int, rounds: int, queue) -> None:
    try:
        _worker(host, asid, rounds, queue)
    except BaseException as exc:  # report instead of leaving the parent waiting
        queue.put((asid, None, repr(exc)))
        raise


def test_concurrent_processes_serialise(sim_host):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    asids = [5, 6, 7, 8]
    procs = [ctx.Process(target=_run_worker, args=(str(sim_host), a, 8, queue)) for a in asids]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    assert all(final is not None for _, final, _ in results), results
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    finals = {final for _, final, _ in results}
    assert len(finals) == len(asids)  # every live guest got its own handle
    _, platform, g = open_psp(sim_host)
    st = platform.status()
    assert (st.state, st.guests) == (P.WORKING, len(asids))
    for asid, final, _ in results:
        gs = g.guest_status(final)
        assert (gs.state, gs.asid) == (G.LUPDATE, asid)
    json.loads((sim_host / "psp" / "state.json").read_text())  # never torn


@pytest.mark.parametrize("backend", ["midstate", "file"])
def test_launch_digest_resumes_across_commands(tmp_path, monkeypatch, backend):
    if backend == "file":
        monkeypatch.setattr(digest_mod, "_LIB", None)
    chunks = [os.urandom(n) for n in (16, 4096, 1, 100_000, 0, 63)]
    state = digest_mod.LaunchDigest(None, tmp_path / "spill").state
    for chunk in chunks:  # each command loads the saved state, adds its range and saves it again
        d = digest_mod.LaunchDigest(json.loads(json.dumps(state)), tmp_path / "spill")
        d.update(memoryview(bytearray(chunk)))
        state = d.state
    assert digest_mod.LaunchDigest(state, tmp_path / "spill").final() == hashlib.sha256(b"".join(chunks)).digest()


def test_in_place_encryption_matches_the_engine(tmp_path):
    mem = PhysicalMemory.create(tmp_path / "m.img", 1 << 20)
    vek = os.urandom(16)
    mem.write(0x2000, PLAIN)
    seen = []
    mem.in_place(0x2000, len(PLAIN), lambda v: seen.append(bytes(v)), vek)
    assert seen == [PLAIN]
    assert mem.read(0x2000, len(PLAIN)) == crypt(vek, 0x2000, PLAIN)
    other = PhysicalMemory(tmp_path / "m.img")  # pread sees what the mapping wrote
    assert crypt(vek, 0x2000, other.read(0x2000, len(PLAIN))) == PLAIN
    with pytest.raises(OutOfRange):
        mem.in_place((1 << 20) - 16, 32, lambda v: None, vek)
    mem.close()
    other.close()


def test_measurement_spans_processes(sim_host):
    """Half the image measured through one open, half through another: the digest midstate is persisted."""
    image = os.urandom(8192)
    psp1, _, g1 = open_psp(sim_host)
    h = launched(g1, 5)
    psp1.memory.write(SPA, image)
    g1.launch_update_data(h, SPA, 4096)
    psp1.close()
    _, platform, g2 = open_psp(sim_host)
    g2.launch_update_data(h, SPA + 4096, 4096)
    m = LaunchMeasurement.parse(g2.launch_measure(h))
    st = platform.status()
    verify_measurement(m, image, 0, st.api_major, st.api_minor, st.build, bytes(16))  # no session: zero TIK
