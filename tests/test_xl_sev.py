"""`xl-sev` guest verbs as an operator runs them: installed entry points, as subprocesses, against a
simulated host with the xenstored stand-in and `sevd run` running (tests/daemon_harness.py)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from daemon_harness import BIN, OVMF, Harness, wait_for

from sevd.platform import Platform
from sevd.xen import protocol as proto
from sevd.xen.xsclient import Xenstore
from sevd_sim import kds
from sevd_sim.xenstored import XenstoredStandIn

pytestmark = pytest.mark.skipif(not OVMF.exists(), reason="Debian's ovmf package provides the boot image")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args, check=None, env=None, timeout=90):
    proc = subprocess.run(
        [str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("xlsev") / "host")
    h.start_daemon()
    yield h
    h.close()


def xl(h, *args, check=0, json_out=False):
    proc = run("xl-sev", "--config", h.root / "sevd.toml", *(["--json"] if json_out else []), *args, check=check)
    return json.loads(proc.stdout) if json_out and check == 0 else proc


def guest_cfg(tmp_path, name, extra="", base="sev-guest.cfg"):
    text = (EXAMPLES / base).read_text()
    text = text.replace('name = "sev-guest"', f'name = "{name}"').replace('name = "plain-guest"', f'name = "{name}"')
    path = tmp_path / f"{name}.cfg"
    path.write_text(text + extra)
    return path


def psp_guests(h):
    return Platform(h.host.client()).status().guests


def test_create_attest_runs_and_every_read_verb_reports_it(harness, tmp_path):
    owner = tmp_path / "owner"
    out = xl(harness, "create", guest_cfg(tmp_path, "att"), "--attest", owner).stdout
    for line in ("Parsing config from", "owner: platform chain verified", "  measured", "owner: measurement verified"):
        assert line in out, out
    assert out.strip().endswith("running, unpaused")
    domid = int(out.split("domid ")[1].split(",")[0])
    assert harness.toolstack.xen.domains()[domid]["paused"] is False
    assert (owner / "secret.bin").stat().st_mode & 0o777 == 0o600 and len((owner / "secret.bin").read_bytes()) == 32

    rows = {r["name"]: r for r in xl(harness, "list", json_out=True)}
    assert set(rows["att"]) == {"domid", "name", "handle", "asid", "state", "policy"}
    assert rows["att"]["domid"] == domid and rows["att"]["state"] == "running" and rows["att"]["policy"] == "0x00000001"
    assert "NODBG" in xl(harness, "list").stdout

    m = xl(harness, "launch-measure", "att", json_out=True)
    assert set(m) == {"measurement", "api_major", "api_minor", "build", "policy"}
    assert (m["api_major"], m["api_minor"]) == (0, 24) and len(m["measurement"]) == 64
    # the owner's tool agrees with what xl-sev checked
    run(
        "sev-owner", "verify-measurement", "--image", OVMF, "--policy", m["policy"], "--api", "0.24",
        "--build", m["build"], "--tk", owner / "tmp_tk.bin", "--measurement", m["measurement"], check=0,
    )  # fmt: skip
    st = xl(harness, "guest-status", str(domid), json_out=True)
    assert (st["state"], st["handle"], st["asid"]) == ("RUNNING", rows["att"]["handle"], rows["att"]["asid"])

    before = psp_guests(harness)
    assert "destroyed" in xl(harness, "destroy", "att").stdout
    assert harness.xs.read(proto.guest_path(domid)) is None and psp_guests(harness) == before - 1


def test_remote_owner_session_stops_at_measured_then_secret_and_finish(harness, tmp_path):
    remote = tmp_path / "remote"
    xl(harness, "platform", "export", remote)
    roots = kds.roots_dir(harness.root)  # the simulated AMD root, named explicitly
    run(
        "sev-owner", "session", "--pdh", remote / "pdh.cert", "--policy", "0x1", "--out", remote, "--name", "r",
        "--roots", roots, check=0,
    )  # fmt: skip
    (remote / "godh.cert").unlink()  # leave only the sevctl form
    (remote / "launch_blob.bin").unlink()
    out = xl(harness, "create", guest_cfg(tmp_path, "remote", f'sev_session = "{remote}"\n')).stdout
    assert "waits in state measured" in out and "xl-sev inject-secret remote" in out, out
    m = xl(harness, "launch-measure", "remote", json_out=True)["measurement"]
    (tmp_path / "s.bin").write_bytes(os.urandom(64))
    run(
        "sev-owner", "package-secret", "--secret", tmp_path / "s.bin", "--tek", remote / "r_tek.bin",
        "--tik", remote / "r_tik.bin", "--measurement", m, "--out", tmp_path / "pkt", check=0,
    )  # fmt: skip
    header, data = tmp_path / "pkt" / "packaged_secret_header.bin", tmp_path / "pkt" / "packaged_secret.bin"

    # a tampered packet: the firmware's MAC check fails, the launch stays measured
    bad = tmp_path / "bad_header.bin"
    raw = bytearray(header.read_bytes())
    raw[-1] ^= 1
    bad.write_bytes(bytes(raw))
    proc = xl(harness, "inject-secret", "remote", "--header", bad, "--secret", data, check=1)
    assert "BAD_MEASUREMENT" in proc.stderr, proc.stderr
    assert xl(harness, "--json", "list", check=0).stdout.count('"measured"') == 1  # the launch survives

    assert (
        "secret injected: 64 bytes"
        in xl(harness, "inject-secret", "remote", "--header", header, "--secret", data).stdout
    )
    proc = xl(harness, "inject-secret", "remote", "--header", header, "--secret", data, "--gpa", "0x3", check=2)
    assert "secret/gpa: must be 16-byte aligned" in proc.stderr
    assert "running" in xl(harness, "finish", "remote").stdout
    proc = xl(harness, "finish", "remote", check=1)
    assert "INVALID_REQUEST" in proc.stderr and "running" in proc.stderr
    xl(harness, "destroy", "remote")


def test_plain_sev_and_no_sev_guests_and_paused(harness, tmp_path):
    out = xl(harness, "--json", "create", "-p", guest_cfg(tmp_path, "quick"), json_out=False).stdout
    result = json.loads(out)
    assert result["state"] == "running" and result["name"] == "quick" and result["measurement"]
    assert harness.toolstack.xen.domains()[result["domid"]]["paused"] is True  # -p
    out = xl(harness, "create", guest_cfg(tmp_path, "nosev", base="plain-guest.cfg")).stdout
    assert "not an SEV guest" in out
    domid = harness.toolstack.xen.domid_by_name("nosev")
    assert harness.xs.read(proto.guest_path(domid)) is None  # sevd was never asked
    proc = xl(harness, "launch-measure", "nosev", check=2)
    assert "is not an SEV guest" in proc.stderr
    xl(harness, "destroy", "nosev")
    xl(harness, "destroy", str(result["domid"]))


def test_unknown_domains_are_named(harness):
    for verb in ("launch-measure", "guest-status", "finish", "destroy"):
        proc = xl(harness, verb, "no-such-guest", check=2)
        assert "no-such-guest" in proc.stderr, (verb, proc.stderr)
    assert "domain 4242: no such domain" in xl(harness, "guest-status", "4242", check=2).stderr


def test_malformed_cfg_names_line_and_key_and_creates_nothing(harness, tmp_path):
    bad = tmp_path / "guest.cfg"
    bad.write_text('name = "x"\nmemory = = 64\n')
    proc = xl(harness, "create", bad, check=2)
    assert f"{bad}:2: config parsing error near `='" in proc.stderr
    text = (EXAMPLES / "sev-guest.cfg").read_text().replace("sev_policy = 0x1", "sev_policy = 0x1000")
    bad.write_text(text)
    line = text.splitlines().index("sev_policy = 0x1000") + 1
    proc = xl(harness, "create", bad, check=2)
    assert f"guest.cfg:{line}: `sev_policy'" in proc.stderr and "reserved bits" in proc.stderr, proc.stderr
    assert harness.toolstack.xen.domid_by_name("sev-guest") is None


def test_firmware_error_surfaces_by_spec_name_and_the_domain_is_cleaned_up(harness, tmp_path):
    harness.host.psp().inject_failure("LAUNCH_START", "RESOURCE_LIMIT")
    cfg = tmp_path / "es.cfg"
    cfg.write_text((EXAMPLES / "sev-es-guest.cfg").read_text())
    proc = xl(harness, "create", cfg, check=1)
    assert "RESOURCE_LIMIT" in proc.stderr and "destroyed" in proc.stderr, proc.stderr
    assert harness.toolstack.xen.domid_by_name("sev-es-guest") is None


def test_sev_es_guest_attested_with_its_vmsa(harness, tmp_path):
    cfg = tmp_path / "es.cfg"
    cfg.write_text((EXAMPLES / "sev-es-guest.cfg").read_text())
    proc = xl(harness, "create", cfg, "--attest", tmp_path / "owner")
    assert "measurement verified" in proc.stdout, proc.stdout + proc.stderr
    domid = harness.toolstack.xen.domid_by_name("sev-es-guest")
    asid = harness.summary(domid).asid
    assert 1 <= asid < 5, "SEV-ES guests take ASIDs below the minimum SEV ASID"
    xl(harness, "destroy", "sev-es-guest")


def test_ok_passes_on_a_ready_host(harness):
    out = xl(harness, "ok").stdout
    assert out.count("[ PASS ]") == 8 and "FAIL" not in out, out
    assert "simulated" in out and "sevd: running, pid" in out


def test_without_daemon_create_fails_clearly_and_ok_says_so(tmp_path):
    h = Harness(tmp_path / "host")  # xenstored stand-in, no sevd
    try:
        proc = xl(h, "create", guest_cfg(tmp_path, "lonely"), check=1)
        assert "sevd is not running: /sevd/daemon/ready missing" in proc.stderr
        assert h.toolstack.xen.domains() == {}
        proc = xl(h, "ok", check=1)
        assert "[ FAIL ] sevd: sevd is not running" in proc.stdout
        assert proc.stdout.count("systemctl start sevd") == 1, proc.stdout  # the hint once, not twice
        h.xs.write_many("/sevd/daemon", {"ready": "1", "pid": "999999"})  # a dead daemon's leftovers
        assert "its pid 999999 is gone" in xl(h, "create", guest_cfg(tmp_path, "lonely"), check=1).stderr
    finally:
        h.close()


def test_help_warns_that_stock_xl_starts_the_guest_without_sev():
    out = run("xl-sev", "create", "--help", check=0).stdout
    assert "WITHOUT SEV" in " ".join(out.split())
    env = dict(os.environ, _XL_SEV_COMPLETE="bash_source")
    assert "_xl_sev_completion" in run("xl-sev", env=env, check=0).stdout


# -- a real Xen host's path, with a fake `xl` on PATH ----------------------------------------------------------------

FAKE_XL = """\
#!{python}
import os, sys
from sevd.xen.xsclient import Xenstore
from sevd_sim import kds
with open({log!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
xs = Xenstore({sock!r})
verbose = sys.argv[1] == "-vvv"
verb = sys.argv[2 if verbose else 1]
if verb == "create":
    xs.write("/local/domain/7/name", "realguest")
    if verbose:  # libxenguest's account of where it loaded a PVH kernel, start info and ramdisk
        for line in {builder_log!r}:
            print("domainbuilder: detail: xc_dom_alloc_segment:   " + line, file=sys.stderr)
elif verb == "domid":
    print(7)
elif verb == "destroy":
    xs.rm("/local/domain/7")
    xs.rm("/sevd/guest/7")
"""


class RealHost:
    """A Xen host for xl-sev without Xen: the xenstored stand-in, a fake `xl` on PATH that logs its
    command lines, and a stand-in for sevd that takes the request and reports the guest running."""

    def __init__(self, tmp_path, builder_log=()):
        self.sock = tmp_path / "xs.sock"
        self.stand_in = XenstoredStandIn(str(self.sock), str(tmp_path / "xs.json")).start()
        self.xs = Xenstore(str(self.sock))
        bindir, self.log = tmp_path / "bin", tmp_path / "xl.log"
        bindir.mkdir()
        fake = FAKE_XL.format(
            python=sys.executable, log=str(self.log), sock=str(self.sock), builder_log=list(builder_log)
        )
        (bindir / "xl").write_text(fake)
        (bindir / "xl").chmod(0o755)
        self.config = tmp_path / "sevd.toml"
        self.config.write_text(f'[xenstore]\nsocket = "{self.sock}"\n[hypervisor]\nbackend = "xen"\n')
        self.xs.write_many("/sevd/daemon", {"ready": "1", "pid": str(os.getpid())})
        self.env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
        self.seen: dict[str, str] = {}  # the request's fields, as the fake sevd read them

    def start_daemon(self) -> threading.Thread:
        def fake_daemon():  # accepts the request and reports the guest running, as sevd would
            text = wait_for(lambda: self.xs.read(proto.guest_path(7, "request")), 30, "request")
            self.seen.update(proto.parse_pairs("request", text))
            summary = proto.GuestSummary(state=proto.GuestState.RUNNING, ack=1, handle=1, asid=9, measurement="A" * 64)
            self.xs.write(proto.guest_path(7, "summary"), summary.format())

        daemon = threading.Thread(target=fake_daemon, daemon=True)
        daemon.start()
        return daemon

    def xl_sev(self, *args, timeout=90):
        return run("xl-sev", "--config", self.config, *args, env=self.env, timeout=timeout)

    def xl_calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def close(self) -> None:
        self.xs.close()
        self.stand_in.stop()


def pvh_files(tmp_path):
    """A small PVH kernel and a raw ramdisk of two pages."""
    from test_owner_pvh import kernel_elf

    kernel, ramdisk = tmp_path / "vmlinux", tmp_path / "initrd"
    kernel.write_bytes(kernel_elf())
    ramdisk.write_bytes(os.urandom(5000))
    return kernel, ramdisk


def test_real_host_runs_stock_xl_with_these_command_lines(tmp_path):
    host = RealHost(tmp_path)
    daemon = host.start_daemon()
    cfg = guest_cfg(tmp_path, "realguest")
    try:
        proc = host.xl_sev("create", cfg)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        daemon.join(5)
        assert host.xl_calls() == [
            f'create -p {cfg} on_reboot="destroy" on_soft_reset="destroy"',
            "domid realguest",
            "unpause 7",
        ]
        # hvmloader's place for OVMF: the image ends at 4 GiB
        seen = host.seen
        assert int(seen["image-gpa"], 0) == (1 << 32) - (2 << 20) and seen["image-size"] == str(OVMF.stat().st_size)
        assert (seen["attest"], seen["policy"], seen["generation"]) == ("0", "0x00000001", "1")
        proc = host.xl_sev("destroy", "realguest", timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert host.xl_calls()[-1] == "destroy 7"
    finally:
        host.close()


def test_real_host_pvh_guest_is_measured_where_libxenguest_says_it_loaded_it(tmp_path):
    builder_log = [
        "kernel       : 0x1000000 -> 0x1005100  (pfn 0x1000 + 0x6 pages)",
        "HVM start info : 0x1006000 -> 0x1006a78  (pfn 0x1006 + 0x1 pages)",
        "module0      : 0x1007000 -> 0x1008388  (pfn 0x1007 + 0x2 pages)",
    ]
    host = RealHost(tmp_path, builder_log)
    kernel, ramdisk = pvh_files(tmp_path)
    cfg = tmp_path / "pvh.cfg"
    cfg.write_text(
        f'name = "realguest"\ntype = "pvh"\nkernel = "{kernel}"\nramdisk = "{ramdisk}"\nmemory = 64\nsev = 1\n'
    )
    daemon = host.start_daemon()
    try:
        proc = host.xl_sev("create", cfg)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        daemon.join(5)
        assert host.xl_calls()[0] == f'-vvv create -p {cfg} on_reboot="destroy" on_soft_reset="destroy"'
        # the kernel's six pages, then (past the start-info page) the ramdisk's two
        seen = host.seen
        assert (seen["image-gpa"], seen["image-size"], seen["image-more"]) == ("0x1000000", "24576", "0x1007000+0x2000")
        assert seen["generation"] == "1"

        # a ramdisk other than the one xl loaded: the sizes disagree and nothing is measured
        ramdisk.write_bytes(os.urandom(9000))
        host.xs.rm(proto.guest_path(7))
        proc = host.xl_sev("create", cfg)
        assert proc.returncode == 1 and "refusing to measure" in proc.stderr, proc.stderr
        assert host.xs.read(proto.guest_path(7, "request")) is None
        assert host.xl_calls()[-1] == "destroy 7"
    finally:
        host.close()


def test_pvh_guest_attested_on_the_simulated_host(harness, tmp_path):
    kernel, ramdisk = pvh_files(tmp_path)
    cfg = tmp_path / "pvhsev.cfg"
    cfg.write_text(f'name = "pvhsev"\ntype = "pvh"\nkernel = "{kernel}"\nramdisk = "{ramdisk}"\nmemory = 64\nsev = 1\n')
    owner = tmp_path / "owner"
    out = xl(harness, "create", cfg, "--attest", owner).stdout
    assert f"owner: measurement verified against kernel {kernel} + ramdisk {ramdisk}" in out, out
    m = xl(harness, "launch-measure", "pvhsev", json_out=True)
    args = ["--policy", m["policy"], "--api", "0.24", "--build", m["build"], "--tk", owner / "tmp_tk.bin"]
    run("sev-owner", "verify-measurement", "--kernel", kernel, "--ramdisk", ramdisk, *args,
        "--measurement", m["measurement"], check=0)  # fmt: skip
    # the same files without the ramdisk are another image
    proc = run("sev-owner", "verify-measurement", "--kernel", kernel, *args, "--measurement", m["measurement"])
    assert proc.returncode != 0 and "measurement" in proc.stderr.lower(), proc.stderr
    proc = run("sev-owner", "verify-measurement", "--image", kernel, "--kernel", kernel, *args, "--measurement", "x")
    assert proc.returncode == 2 and "give either --image FILE (firmware) or --kernel FILE" in proc.stderr
    xl(harness, "destroy", "pvhsev")


def test_ok_on_xen_asks_xen_for_sev_and_warns_that_sev_es_is_not_launched():
    from sevd.toolstack.hostcheck import sev_checks
    from sevd.xen.domctl import DomctlXen, SevInfo
    from sevd.xen.hypervisor import HypervisorError

    def xen_answering(info):
        xen = object.__new__(DomctlXen)
        xen.info = lambda: info
        return xen.sev_capabilities

    sev, es = sev_checks(xen_answering(SevInfo(True, True, True, 47, 5, 7, 4, (5,))))
    assert sev.ok and sev.detail.startswith("Xen: SEV ASIDs 4..7, C-bit 47, 1 awaiting DF_FLUSH")
    assert "TEST MODE (sev=test), NOT SECURE" in sev.detail
    assert not es.ok and not es.required and "plain SEV guests only" in es.detail
    assert "SEV-ES reported (SEV-ES ASIDs 1..3)" in es.detail
    off = sev_checks(xen_answering(SevInfo(False, False, False, 0, 0, 0, 0, ())))
    assert not off[0].ok and off[0].required and "xl dmesg" in off[0].hint

    def refused():
        raise HypervisorError("this Xen lacks the SEV patches (XEN_DOMCTL_sev_op unknown)")

    xen = object.__new__(DomctlXen)
    xen.info = refused
    (bad,) = sev_checks(xen.sev_capabilities)
    assert not bad.ok and bad.detail.startswith("Xen's SEV domctl: this Xen lacks the SEV patches")
    assert "xen-patches" in bad.hint


def test_ok_on_a_simulated_host_asks_the_simulated_xen(harness):
    from sevd.toolstack.hostcheck import sev_checks

    caps = harness.toolstack.xen.sev_capabilities()
    assert (caps.source, caps.min_sev_asid, caps.launches_es) == ("simulated", 5, True)
    sev, es = sev_checks(lambda: caps)
    assert sev.ok and sev.detail.startswith(f"simulated: SEV ASIDs 5..{caps.max_asid}, C-bit 47")
    assert es.ok and es.detail == "simulated: SEV-ES ASIDs 1..4"


def test_ok_says_what_the_backends_are_without_asking_their_names(harness, tmp_path):
    out = xl(harness, "ok").stdout
    assert f"[ PASS ] /dev/sev: simulated PSP at {harness.host.root}" in out, out
    assert f"[ PASS ] Xen: simulated Xen at {harness.host.root}" in out, out
    # a host on the device backend: the device node is missing, and nothing further is probed
    cfg = tmp_path / "device.toml"
    cfg.write_text(
        f'[psp]\nbackend = "device"\npath = "{tmp_path}/no-sev"\n'
        f'[hypervisor]\nbackend = "simulated"\npath = "{harness.host.root}"\n'
        f'[xenstore]\nsocket = "{harness.host.root}/xenstored.sock"\n'
    )
    proc = run("xl-sev", "--config", cfg, "ok")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"[ FAIL ] /dev/sev: {tmp_path}/no-sev missing, not writable" in proc.stdout, proc.stdout
    assert "guest-command ioctl" not in proc.stdout and "[ FAIL ] firmware: not checked: no PSP" in proc.stdout


def test_a_clean_stop_clears_ready_and_list_then_says_sevd_is_down(tmp_path):
    h = Harness(tmp_path / "host")
    try:
        h.start_daemon()
        assert xl(h, "list").returncode == 0
        assert h.stop_daemon() == 0
        assert h.xs.read("/sevd/daemon/ready") is None and h.xs.read("/sevd/daemon/pid") is None
        proc = xl(h, "list", check=1)
        assert proc.stdout == "" and proc.stderr.count("\n") == 1
        assert "sevd is not running" in proc.stderr
    finally:
        h.close()


# -- the CLI as a new user meets it ---------------------------------------------------------------------------------


def test_list_dom_and_long_and_columns_that_survive_long_names(harness, tmp_path):
    long_name = "a-guest-with-a-name-much-longer-than-twenty"
    xl(harness, "create", guest_cfg(tmp_path, long_name))
    xl(harness, "create", guest_cfg(tmp_path, "short"))
    try:
        lines = xl(harness, "list").stdout.splitlines()
        header = lines[0]
        rows = {line.split()[0]: line for line in lines[1:]}
        for row in rows.values():  # every column starts where its header does, whatever the names
            assert row.index(" running ") == header.index("State") - 1, lines
        assert set(rows) >= {long_name, "short"}
        only = xl(harness, "list", "short").stdout.splitlines()
        assert len(only) == 2 and only[1].startswith("short ")
        rows_json = xl(harness, "list", "short", long_name, "--json", check=0)
        assert {r["name"] for r in json.loads(rows_json.stdout)} == {"short", long_name}
        long_out = xl(harness, "list", "-l", "short").stdout
        assert "short:" in long_out and "measurement" in long_out and "build" in long_out and "step" in long_out
        row = json.loads(xl(harness, "list", "-l", "short", "--json", check=0).stdout)[0]
        assert {"api", "build", "step", "measurement", "error"} <= set(row) and row["measurement"]
        proc = xl(harness, "list", "no-such-guest", check=2)
        assert "no-such-guest" in proc.stderr
    finally:
        xl(harness, "destroy", long_name)
        xl(harness, "destroy", "short")


def test_json_after_the_verb_and_errors_as_json(harness):
    before = json.loads(xl(harness, "--json", "platform", "status").stdout)
    assert json.loads(xl(harness, "platform", "status", "--json").stdout) == before
    proc = xl(harness, "guest-status", "no-such-guest", "--json", check=2)
    error = json.loads(proc.stdout)
    assert error["ok"] is False and error["error"] == "input" and error["exit"] == 2
    assert "no-such-guest" in error["message"] and proc.stderr == ""
    proc = xl(harness, "--json", "list", "--no-such-option", check=2)  # click's own usage error
    assert "--no-such-option" in json.loads(proc.stdout)["message"]
    proc = xl(harness, "list", "--no-such-option", check=2)
    assert "No such option" in proc.stderr and proc.stdout == ""


def test_verbose_is_gone():
    proc = run("xl-sev", "-v", "list")
    assert proc.returncode == 2 and "No such option" in proc.stderr and "-v" in proc.stderr


def test_factory_reset_asks_and_names_running_guests(harness, tmp_path):
    proc = xl(harness, "platform", "factory-reset", check=2)  # no terminal to ask on
    assert "confirm with --yes" in proc.stderr
    xl(harness, "create", guest_cfg(tmp_path, "busy"))
    try:
        proc = xl(harness, "platform", "factory-reset", "--yes", check=1)
        assert "guest(s) running" in proc.stderr and "destroy them first" in proc.stderr, proc.stderr
        assert "reload ccp" not in proc.stderr and "EBUSY" not in proc.stderr
    finally:
        xl(harness, "destroy", "busy")


def test_factory_reset_ebusy_from_the_driver_says_guests_run():
    import errno

    from sevd.psp.device import _errno_message

    text = _errno_message(errno.EBUSY, "FACTORY_RESET", False)
    assert "guests are running" in text and "destroy them first" in text and "reload ccp" not in text
    assert "reload ccp" in _errno_message(errno.EBUSY, "PEK_GEN", False)


def test_dev_sev_hint_names_no_user_that_does_not_exist(tmp_path):
    cfg = tmp_path / "device.toml"
    cfg.write_text(f'[psp]\nbackend = "device"\npath = "{tmp_path}/no-sev"\n')
    out = run("xl-sev", "--config", cfg, "ok").stdout
    hint = next(line for line in out.splitlines()[out.splitlines().index(
        next(line for line in out.splitlines() if "/dev/sev:" in line)) + 1:] if "hint:" in line)  # fmt: skip
    assert "run xl-sev as root" in hint and "sevd user" not in out, out


def test_remote_owner_steps_use_the_owners_keys_not_files_on_the_host(tmp_path):
    from sevd.toolstack.launch import owner_hint
    from sevd.xen.xlcfg import GuestConfig, SessionFiles

    session_dir = tmp_path / "on-the-host"
    for form, keys in (("sev-tool", "--tk tmp_tk.bin"), ("sevctl:vm1", "--tek vm1_tek.bin --tik vm1_tik.bin")):
        guest = GuestConfig(
            str(tmp_path / "g.cfg"), "g", "hvm", 64, 1, "ovmf", OVMF, True, __import__("sevd").abi.policy.Policy(1),
            False, SessionFiles(session_dir, b"", b"", form),
        )  # fmt: skip
        text = owner_hint(guest, {"api": "0.24", "build": "7", "measurement": "M"})
        assert str(session_dir) not in text and str(OVMF.parent) not in text, text
        assert keys in text and "never come to this host" in text and "their own machine" in text
        assert "--header packaged_secret_header.bin" in text
