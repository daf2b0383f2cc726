"""What an adversarial run broke, each reproduced: a journal that cannot be written, a domain that dies
mid-launch, teardown failures, a second daemon, secrets left behind (issue "Reliability and scale")."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time

import pytest
from daemon_harness import BIN, Harness, wait_for

from sevd.abi.policy import Policy
from sevd.daemon.records import RecordStore
from sevd.durable import hold_lock
from sevd.errors import InputError
from sevd.platform import Platform
from sevd.toolstack.guestnodes import send_secret
from sevd.xen import protocol as proto
from sevd.xen import xlcfg
from sevd.xen.hypervisor import HypervisorError
from sevd_sim.demo import Demo
from sevd_sim.xen import SimulatedXen

IMAGE = bytes(range(256)) * (300 * 4096 // 256)  # 300 pages: several physically discontiguous ranges

# Run first in the daemon's process: once the command named by SEVD_TEST_ARM has run, the journal's
# filesystem turns read-only (as a remount would) until the test removes the flag file.
JOURNAL_FAULT = """
import errno, os, types
import sevd.daemon.records as records
import sevd.daemon.service as service
_flag, _arm = os.environ["SEVD_TEST_FLAG"], os.environ["SEVD_TEST_ARM"]
_fault, _armed = service.fault_point, []
def fault_point(when, step):
    if f"{when}:{step}" == _arm and not _armed:
        _armed.append(1)
        open(_flag, "w").close()
    _fault(when, step)
service.fault_point = fault_point
def pwrite(fd, data, offset):
    if os.path.exists(_flag):
        raise OSError(errno.EROFS, "Read-only file system")
    return os.pwrite(fd, data, offset)
records.os = types.SimpleNamespace(**{**vars(os), "pwrite": pwrite})
"""


def poke(h: Harness, domid: int) -> None:
    """Any node written under the guest makes the daemon reconcile it (as the attack's `xenstore-write` did)."""
    h.xs.write(proto.guest_path(domid, "poke"), "1")
    h.xs.rm(proto.guest_path(domid, "poke"))


def journal_handles(h: Harness) -> list[int]:
    return [r.handle for r in RecordStore(h.root / "sevd-state").load_all() if r.handle]


@pytest.fixture
def host(tmp_path):
    h = Harness(tmp_path / "host", max_asid=6, min_sev_asid=5)
    yield h
    h.close()


# The step after which the journal stops taking writes × how the launch must end.  LAUNCH_UPDATE_DATA
# encrypted a range in place: the range cannot be measured again, so the launch fails INTERRUPTED, as
# after a crash.  LAUNCH_START and ACTIVATE are settled by GUEST_STATUS and the launch goes on.
JOURNAL_CASES = {
    "LAUNCH_START": "running",
    "ACTIVATE": "running",
    "LAUNCH_UPDATE_DATA": "error",
    "LAUNCH_MEASURE": "error",
}


@pytest.mark.parametrize("step", list(JOURNAL_CASES))
def test_a_journal_write_failing_after_a_psp_command_never_reissues_it_blind(host, step):
    flag = host.root / "journal-readonly"
    host.start_daemon({"SEVD_TEST_FLAG": str(flag), "SEVD_TEST_ARM": f"after:{step}"}, prelude=JOURNAL_FAULT)
    domid = host.toolstack.create("ro", 4, IMAGE)
    host.request(domid)
    wait_for(flag.exists, 30, f"the journal failing after {step}")
    # An unwritable journal is published, not left as `launching` with a promise in the log.
    error = wait_for(lambda: host.field(domid, "error"), 10, "the journal error in the summary")
    assert error.startswith("JOURNAL_EROFS:"), error
    flag.unlink()
    poke(host, domid)
    final = host.wait_state(domid, "running", "error", "measured")
    assert final == JOURNAL_CASES[step], host.logs()[-4000:]
    if final == "error":
        assert host.field(domid, "error").startswith("INTERRUPTED:"), host.field(domid, "error")
    else:
        assert host.field(domid, "error") is None
    # No PSP context the journal does not know (the handle of a LAUNCH_START it could not record).
    assert Platform(host.host.client()).status().guests == len(journal_handles(host)), host.logs()[-4000:]
    assert "ASID_OWNED" not in host.logs()


# Run first in the daemon's process: counts LAUNCH_UPDATE_VMSA and LAUNCH_UPDATE_DATA commands in a file, and
# holds the launch after the first command named by SEVD_TEST_HOLD until the test removes the flag file.
HOLD_AND_COUNT = """
import os, time
import sevd.daemon.service as service
from sevd.guest import GuestCommands
_flag, _hold, _count = os.environ["SEVD_TEST_FLAG"], os.environ["SEVD_TEST_HOLD"], os.environ["SEVD_TEST_COUNT"]
_fault, _held = service.fault_point, []
def fault_point(when, step):
    if f"{when}:{step}" == _hold and not _held:
        _held.append(1)
        open(_flag, "w").close()
        while os.path.exists(_flag):
            time.sleep(0.01)
    _fault(when, step)
service.fault_point = fault_point
def counted(fn):
    def wrapper(*args, **kwargs):
        with open(_count, "a") as f:
            f.write("x")
        return fn(*args, **kwargs)
    return wrapper
GuestCommands.launch_update_vmsa = counted(GuestCommands.launch_update_vmsa)
GuestCommands.launch_update_data = counted(GuestCommands.launch_update_data)
"""


def _held_daemon(h: Harness, hold: str):
    flag, count = h.root / "held", h.root / "count"
    env = {"SEVD_TEST_FLAG": str(flag), "SEVD_TEST_HOLD": hold, "SEVD_TEST_COUNT": str(count)}
    h.start_daemon(env, prelude=HOLD_AND_COUNT)
    return flag, lambda: len(count.read_text()) if count.exists() else 0


def test_a_launch_stops_at_the_first_sign_its_domain_is_dying(tmp_path):
    """The domain is destroyed while its SEV-ES launch runs VMSAs: no further PSP command touches its pages."""
    h = Harness(tmp_path / "host")
    try:
        flag, commands = _held_daemon(h, "after:LAUNCH_UPDATE_VMSA")
        domid = h.toolstack.create("dying", 8, IMAGE, vcpus=16)
        h.request(domid, Policy.parse("ES"))
        wait_for(flag.exists, 30, "the first VMSA")
        issued = commands()
        h.toolstack.destroy(domid)
        flag.unlink()
        wait_for(lambda: h.xs.read(proto.guest_path(domid)) is None, 30, "the guest forgotten")
        assert commands() == issued, f"{commands() - issued} commands on the pages of a dead domain"
        assert Platform(h.host.client()).status().guests == 0
        assert "running" not in h.logs() and "measured" not in h.logs()
    finally:
        h.close()


def test_sigterm_stops_a_pass_between_two_steps(tmp_path):
    h = Harness(tmp_path / "host")
    try:
        flag, commands = _held_daemon(h, "after:LAUNCH_UPDATE_DATA")
        domid = h.toolstack.create("long", 64, bytes(4096) * 4096)  # 16 MiB: 64 ranges
        h.request(domid)
        wait_for(flag.exists, 30, "the first range")
        h.daemon.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        flag.unlink()
        rc = h.daemon.wait(timeout=10)
        h.daemon = None
        assert rc == 0
        assert commands() <= 2, f"{commands()} ranges encrypted after SIGTERM"
        h.start_daemon()  # the journal is whole: the next start goes on
        assert h.wait_state(domid, "running", "error") == "running", h.logs()[-3000:]
    finally:
        h.close()


def test_an_es_guest_is_bounded_by_the_vcpus_xen_allows(tmp_path):
    cfg = tmp_path / "big.cfg"
    cfg.write_text('name = "big"\ntype = "hvm"\nmemory = 64\nbios = "ovmf"\nsev = 1\nsev_es = 1\nvcpus = 100000\n')
    with pytest.raises(InputError) as exc:
        xlcfg.load(str(cfg))
    assert "\n" not in str(exc.value) and "at most 128" in str(exc.value), exc.value
    xen = SimulatedXen(Harness(tmp_path / "host").host.root)  # and Xen itself refuses such a domain
    with pytest.raises(HypervisorError, match="1 to 128"):
        xen.create_domain("big", 8, IMAGE, vcpus=100000)


# Run first in the daemon's process: DECOMMISSION answers HWERROR_PLATFORM while the flag file exists.
FAILING_DECOMMISSION = """
import base64
import os
from sevd.abi.status import HwerrorPlatform
from sevd.guest import GuestCommands
_flag, _decommission = os.environ["SEVD_TEST_FLAG"], GuestCommands.decommission
def decommission(self, handle):
    if os.path.exists(_flag):
        raise HwerrorPlatform("DECOMMISSION")
    return _decommission(self, handle)
GuestCommands.decommission = decommission
"""


def test_a_failed_teardown_is_published_retried_and_printed_by_destroy(host):
    flag = host.root / "hwerror"
    host.start_daemon({"SEVD_TEST_FLAG": str(flag)}, prelude=FAILING_DECOMMISSION)
    domid = host.toolstack.create("doomed", 4, IMAGE)
    host.request(domid)
    assert host.wait_state(domid, "running") == "running"
    flag.touch()
    proc = subprocess.run(
        [str(BIN / "xl-sev"), "--config", str(host.root / "sevd.toml"), "destroy", str(domid), "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "HWERROR_PLATFORM" in proc.stderr and "teardown failed" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert Platform(host.host.client()).status().guests == 1  # held while the firmware refuses
    flag.unlink()  # the firmware recovers: the retry releases the context without another event
    wait_for(lambda: host.xs.read(proto.guest_path(domid)) is None, 30, "the retried teardown")
    assert Platform(host.host.client()).status().guests == 0


def test_a_second_sevd_exits_with_one_line_and_its_own_status(host):
    first = host.start_daemon()
    second = subprocess.run(
        [str(BIN / "sevd"), "run", "--config", str(host.root / "sevd.toml")], capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 3, second
    assert second.stderr.strip().splitlines() == [
        f"sevd: another sevd (pid {first.pid}) is running with state directory {host.root / 'sevd-state'}"
    ], second.stderr
    assert host.xs.read(proto.DAEMON_PID) == str(first.pid)  # not taken over


def test_a_second_demo_on_one_simulated_host_refuses(tmp_path, capsys):
    root = tmp_path / "demo"
    root.mkdir()
    fd = hold_lock(root / "demo.lock")  # the first demo
    try:
        assert Demo(root).run() == 3
    finally:
        os.close(fd)
    assert capsys.readouterr().err.strip().splitlines() == [f"another sevd-sim demo (pid {os.getpid()}) runs on {root}"]
    assert not (root / "sevd.toml").exists()  # the host was left alone


def test_the_state_directory_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        RecordStore(tmp_path / "state")
    finally:
        os.umask(old)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "guests").stat().st_mode & 0o777 == 0o700


def _packet(h: Harness, domid: int) -> proto.SecretPacket:
    gpa, _ = h.toolstack.image_location(domid)
    return proto.SecretPacket(bytes(0x34), bytes(32), gpa)


def test_a_refused_inject_secret_leaves_no_packet(host):
    host.start_daemon()
    domid = host.toolstack.create("fin", 4, IMAGE)
    host.request(domid)
    assert host.wait_state(domid, "running") == "running"
    send_secret(host.xs, domid, _packet(host, domid))  # after LAUNCH_FINISH: refused
    wait_for(lambda: host.xs.read(proto.guest_path(domid, "command")) is None, 30, "the answer")
    assert "needs state measured" in host.field(domid, "error")
    assert host.xs.read(proto.guest_path(domid, "secret")) is None


def test_a_packet_whose_command_was_overwritten_is_removed(host):
    host.start_daemon()
    domid = host.toolstack.create("over", 4, IMAGE)
    host.request(domid, attest=True)
    assert host.wait_state(domid, "measured") == "measured"
    # inject-secret and its packet, then `finish` over the command before sevd read it: one write here.
    values = {f"secret/{k}": v for k, v in _packet(host, domid).to_nodes().items()}
    host.xs.write_many(proto.guest_path(domid), {**values, "command": "finish"})
    assert host.wait_state(domid, "running") == "running"
    wait_for(lambda: host.xs.read(proto.guest_path(domid, "command")) is None, 30, "the answer")
    assert host.xs.read(proto.guest_path(domid, "secret")) is None


@pytest.mark.parametrize("dom", ["0", "Domain-0"])
def test_destroy_refuses_dom0(host, dom):
    host.start_daemon()
    host.xs.write_many("/local/domain/0", {"name": "Domain-0", "domid": "0"})  # as xen-init-dom0 writes them
    proc = subprocess.run(
        [str(BIN / "xl-sev"), "--config", str(host.root / "sevd.toml"), "destroy", dom],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "destroyed" not in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"error: domain {dom!r} is Dom0: xl-sev destroys guests, never the control domain"
    ]


def test_the_simulated_xen_frees_a_destroyed_domains_memory(tmp_path):
    """A host with room for two 64 MiB guests builds forty, one after another, as Xen reuses freed pages."""
    from sevd_sim.host import SimulatedHost

    host = SimulatedHost.create(tmp_path / "host", memory_size=160 << 20)
    xen = SimulatedXen(host.root)
    seen: set[int] = set()
    for i in range(40):
        domid = xen.create_domain(f"g{i}", 64, IMAGE)
        ranges = xen.boot_image_ranges(domid)
        assert len(ranges) > 1  # still physically discontiguous
        assert xen.cpu_read(ranges[0][0], 16) == IMAGE[:16]
        seen.update(spa // 4096 for spa, _ in ranges)
        xen.destroy(domid)
        assert xen.cpu_read(ranges[0][0], 16) == bytes(16)  # scrubbed
    assert len(seen) < 40 * len(ranges)  # frames were reused


def test_a_dead_sev_domains_pages_stay_pinned_until_release(tmp_path):
    """xen-patches 0009: the pages named to the PSP keep their references after the domain dies, until RELEASE."""
    from sevd_sim.host import SimulatedHost

    host = SimulatedHost.create(tmp_path / "host", memory_size=64 << 20)
    xen = SimulatedXen(host.root)
    domid = xen.create_domain("sev", 4, IMAGE)
    xen.make_sev_domain(domid, es=False)
    (spa, _), *_ = xen.boot_image_ranges(domid)
    xen.destroy(domid)
    assert xen.pinned_domains() == [domid]
    assert xen.cpu_read(spa, 16) == IMAGE[:16]  # not freed, so not scrubbed
    xen.release_pages(domid)
    xen.release_pages(domid)  # idempotent
    assert xen.pinned_domains() == [] and xen.cpu_read(spa, 16) == bytes(16)


def test_sevd_releases_a_destroyed_guests_pages_after_decommission(host):
    host.start_daemon()
    domid = host.toolstack.create("released", 4, IMAGE)
    host.request(domid)
    assert host.wait_state(domid, "running") == "running"
    host.toolstack.destroy(domid)
    wait_for(lambda: host.xs.read(proto.guest_path(domid)) is None, 30, "the decommission")
    wait_for(lambda: SimulatedXen(host.root).pinned_domains() == [], 10, "the pages released")


# -- break 7: errors that name the right cause, in one line, never with a secret ----------------------------------

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
needs_ovmf = pytest.mark.skipif(not os.path.exists("/usr/share/ovmf/OVMF.fd"), reason="Debian's ovmf package")


def xl_sev(config, *args, timeout=120):
    argv = [str(BIN / "xl-sev"), "--config", str(config), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def sev_cfg(tmp_path, name):
    with open(os.path.join(EXAMPLES, "sev-guest.cfg")) as f:
        text = f.read().replace('name = "sev-guest"', f'name = "{name}"')
    path = tmp_path / f"{name}.cfg"
    path.write_text(text)
    return path


def test_inject_secret_outside_the_guests_memory_names_xens_reason(host, tmp_path):
    host.start_daemon()
    domid = host.toolstack.create("gpa", 4, IMAGE)
    host.request(domid, attest=True)
    assert host.wait_state(domid, "measured") == "measured"
    (tmp_path / "header").write_bytes(bytes(0x34))
    (tmp_path / "secret").write_bytes(bytes(32))
    proc = xl_sev(
        host.root / "sevd.toml", "inject-secret", domid, "--header", tmp_path / "header",
        "--secret", tmp_path / "secret", "--gpa", "0x40000000",
    )  # fmt: skip
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines() == [
        f"error: domain {domid}: XEN_ERROR: [0x40000000, +0x20) is outside its memory"
    ], proc.stderr
    assert host.xs.read(proto.guest_path(domid, "secret")) is None
    assert host.state(domid) == "measured"


@needs_ovmf
def test_a_secret_of_0x5000_bytes_travels_in_pieces_and_is_injected(host, tmp_path):
    host.start_daemon()
    secret = tmp_path / "big.bin"
    secret.write_bytes(os.urandom(0x5000))
    proc = xl_sev(
        host.root / "sevd.toml", "create", sev_cfg(tmp_path, "big"), "--attest", tmp_path / "o", "--secret", secret
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert f"secret ({0x5000} bytes" in proc.stdout
    packaged = (tmp_path / "o" / "packaged_secret.bin").read_bytes()
    for text in (proc.stdout, proc.stderr, host.logs()):
        assert base64.b64encode(packaged[:48]).decode()[:32] not in text


def test_a_secret_packet_fits_xenstores_payload_whatever_its_size():
    for size in (16, proto.SECRET_PIECE, proto.SECRET_PIECE + 16, 0x5000):
        packet = proto.SecretPacket(bytes(0x34), os.urandom(size), 0x1000)
        nodes = packet.to_nodes()
        assert all(len(proto.guest_path(32767, "secret", k)) + 1 + len(v) <= 4096 for k, v in nodes.items())
        assert proto.SecretPacket.parse(nodes) == packet
    nodes = proto.SecretPacket(bytes(0x34), bytes(0x5000), 0x1000).to_nodes()
    del nodes["data-3"]
    with pytest.raises(InputError, match="secret/data-3: missing"):
        proto.SecretPacket.parse(nodes)


def test_an_oversized_xenstore_value_is_refused_without_echoing_it(host):
    from sevd.xen.xsclient import XenstoreError

    with pytest.raises(XenstoreError) as exc:
        host.xs.write("/sevd/x", "S3CRET" * 1000)
    assert "S3CRET" not in str(exc.value) and "4096" in str(exc.value)


@needs_ovmf
def test_a_config_naming_a_missing_simulated_host_says_so_in_one_line(host, tmp_path):
    host.start_daemon()
    config = tmp_path / "sevd.toml"
    text = (host.root / "sevd.toml").read_text()
    config.write_text(text.replace(f'path = "{host.root}"', f'path = "{tmp_path / "gone"}"'))
    proc = xl_sev(config, "create", sev_cfg(tmp_path, "nohost"))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    gone = tmp_path / "gone" / "psp"
    assert proc.stderr.strip().splitlines() == [
        f"error: {config}: [hypervisor] path: {gone}: no simulated PSP here (create the simulated host first)"
    ], proc.stderr


def test_messages_do_not_repeat_their_prefix():
    from sevd.cli.owner import parse_policy

    with pytest.raises(InputError) as exc:
        parse_policy("zz")
    assert str(exc.value).startswith("--policy: unknown flag 'zz'"), exc.value


@needs_ovmf
def test_a_bad_secret_is_refused_before_any_file_is_written(host, tmp_path):
    host.start_daemon()
    odd = tmp_path / "odd.bin"
    odd.write_bytes(bytes(17))
    proc = xl_sev(
        host.root / "sevd.toml", "create", sev_cfg(tmp_path, "odd"), "--attest", tmp_path / "o", "--secret", odd
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "length 17" in proc.stderr
    assert not (tmp_path / "o").exists()
    assert host.toolstack.xen.domains() == {}


# -- break 8: SIGTERM or SIGHUP during create destroys the half-made domain, as Ctrl-C does -----------------------


@needs_ovmf
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_create_destroys_the_half_made_domain(tmp_path, sig):
    h = Harness(tmp_path / "host")
    try:
        flag, _ = _held_daemon(h, "after:LAUNCH_UPDATE_DATA")
        argv = [str(BIN / "xl-sev"), "--config", str(h.root / "sevd.toml"), "create", str(sev_cfg(tmp_path, "sig"))]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(flag.exists, 30, "the launch under way")
        assert Platform(h.host.client()).status().guests == 1  # a handle, an ASID
        proc.send_signal(sig)
        time.sleep(0.2)
        flag.unlink()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, (out, err)
        assert err.strip().splitlines()[-1] == f"error: {sig.name}: launch interrupted (domain sig destroyed)", err
        assert h.toolstack.xen.domains() == {}
        wait_for(lambda: Platform(h.host.client()).status().guests == 0, 30, "the PSP context released")
    finally:
        h.close()


# -- break 9: protocol loose ends ----------------------------------------------------------------------------------


def test_a_hex_generation_survives_a_restart(host):
    host.start_daemon()
    domid = host.toolstack.create("hexgen", 4, IMAGE)
    host.request(domid)
    text = host.xs.read(proto.guest_path(domid, "request")).replace("generation=1 ", "generation=0x1 ")
    host.xs.write(proto.guest_path(domid, "request"), text)  # before the daemon took it: one request
    assert host.wait_state(domid, "running") == "running"
    host.stop_daemon()
    host.start_daemon()
    poke(host, domid)
    time.sleep(0.5)
    assert host.state(domid) == "running" and host.field(domid, "error") is None, host.summary(domid)


def test_a_new_generation_after_destroy_is_refused_when_the_image_was_encrypted(host):
    host.start_daemon()
    domid = host.toolstack.create("again", 4, IMAGE)
    host.request(domid)
    assert host.wait_state(domid, "running") == "running"
    host.xs.write(proto.guest_path(domid, "command"), "destroy")
    assert host.wait_state(domid, "destroyed") == "destroyed"
    text = host.xs.read(proto.guest_path(domid, "request")).replace("generation=1 ", "generation=2 ")
    host.xs.write(proto.guest_path(domid, "request"), text)
    error = wait_for(lambda: host.field(domid, "ack") == "2" and host.field(domid, "error"), 10, "the refusal")
    assert error.startswith("INVALID_REQUEST:") and "encrypted by an earlier launch" in error, error
    assert Platform(host.host.client()).status().guests == 0  # no LAUNCH_START
    host.toolstack.destroy(domid)  # the domain goes: so does its record
    wait_for(lambda: not journal_handles(host) and RecordStore(host.root / "sevd-state").load(domid) is None, 10)


# Run first in the daemon's process: LAUNCH_START answers HWERROR_PLATFORM.
FAILING_LAUNCH_START = """
from sevd.abi.status import HwerrorPlatform
from sevd.guest import GuestCommands
def launch_start(self, *args, **kwargs):
    raise HwerrorPlatform("LAUNCH_START")
GuestCommands.launch_start = launch_start
"""


def test_a_failed_launch_keeps_no_step_in_flight(host):
    host.start_daemon(prelude=FAILING_LAUNCH_START)
    domid = host.toolstack.create("fails", 4, IMAGE)
    host.request(domid)
    assert host.wait_state(domid, "error") == "error"
    record = RecordStore(host.root / "sevd-state").load(domid)
    assert record is not None and record.pending is None, record
    host.stop_daemon()
    before = len(host.logs())
    host.start_daemon()
    assert "recovering step" not in host.logs()[before:]
    assert host.field(domid, "error").startswith("HWERROR_PLATFORM"), host.field(domid, "error")


def test_a_summary_written_by_recovery_keeps_the_name(host):
    host.start_daemon({"SEVD_FAULT": "after:LAUNCH_UPDATE_DATA"})
    domid = host.toolstack.create("named", 4, IMAGE)
    host.request(domid)
    wait_for(lambda: host.daemon.poll() is not None, 30, "the crash")
    host.daemon = None
    host.start_daemon()
    assert host.wait_state(domid, "error") == "error"
    assert host.field(domid, "name") == "named", host.summary(domid)


def test_an_unparsable_request_is_logged_once(host):
    host.start_daemon()
    domid = host.toolstack.create("junk", 4, IMAGE)
    host.xs.write(proto.guest_path(domid, "request"), "v=1 no-generation-here")
    wait_for(lambda: host.field(domid, "error"), 10, "the refusal")
    for _ in range(5):
        poke(host, domid)
    time.sleep(0.5)
    assert host.logs().count("request refused") == 1, host.logs()[-2000:]


def test_removing_sevd_from_xenstore_is_noticed_and_repaired(host):
    host.start_daemon()
    domid = host.toolstack.create("rm", 4, IMAGE)
    host.request(domid)
    assert host.wait_state(domid, "running") == "running"
    host.xs.rm(proto.ROOT)
    wait_for(lambda: host.xs.read(proto.DAEMON_READY) == "1", 10, "the daemon's nodes again")
    assert host.wait_state(domid, "running", timeout=10) == "running"
    assert host.field(domid, "name") == "rm"
    assert host.xs.read(f"{proto.PLATFORM}/guests") == "1"
    assert host.xs.client.get_perms(proto.ROOT.encode()) == [b"n0"]


def test_a_command_without_a_request_is_answered(host):
    host.start_daemon()
    domid = host.toolstack.create("bare", 4, IMAGE)
    host.xs.write(proto.guest_path(domid, "command"), "finish")
    wait_for(lambda: host.xs.read(proto.guest_path(domid, "command")) is None, 10, "the answer")
    assert host.field(domid, "error").startswith("INVALID_REQUEST: finish needs a launch"), host.summary(domid)
