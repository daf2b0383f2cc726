"""`xl-sev ok` and `xl-sev platform snp-*` on SEV-SNP: a `sevd-sim host --snp` host and a host without SNP."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd.snp_firmware import SnpCommands
from sevd.toolstack import hostcheck
from sevd.xen.hypervisor import HypervisorError, SevCapabilities
from sevd_sim.psp.device import SimulatedPsp
from sevd_sim.xen import SimulatedXen

BIN = Path(sys.executable).parent
TCB = "d516000000000004"  # the simulated chip's current TCB (bl 4, snp 0x16, ucode 0xd5)


def run(*args, check=0):
    proc = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=120)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def xl(root, *args, check=0):
    return run("xl-sev", "--config", root / "sevd.toml", *args, check=check)


@pytest.fixture(scope="module")
def snp_host(tmp_path_factory):
    root = tmp_path_factory.mktemp("snp") / "host"
    run("sevd-sim", "host", root, "--snp", "--linux", "6.12", "--create-only")
    return root


@pytest.fixture(scope="module")
def plain_host(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain") / "host"
    run("sevd-sim", "host", root, "--create-only")
    return root


def sevd_start(root: Path) -> None:
    """What sevd does at start-up: INIT the platform, SNP_INIT first where SEV-SNP is enabled."""
    client = PspClient(SimulatedPsp(root))
    try:
        Platform(client).ensure_initialised()
    finally:
        client.close()


# -- xl-sev ok ---------------------------------------------------------------------------------------------------


def test_ok_on_an_snp_host_passes_snp_from_the_hypervisor_and_the_firmware(snp_host):
    out = xl(snp_host, "ok", check=1).stdout  # no xenstore here: those checks fail
    (line,) = [line for line in out.splitlines() if "SEV-SNP:" in line]
    assert line.startswith("[ PASS ] SEV-SNP: simulated: CPU SEV-SNP, RMP set up; SNP API 1.55"), out
    assert f"reported TCB 0x{TCB}" in line
    checks = json.loads(xl(snp_host, "--json", "ok", check=1).stdout)
    (snp,) = [c for c in checks if c["name"] == "SEV-SNP"]
    assert snp["ok"] and not snp["required"]


def test_ok_on_a_host_without_snp_says_so_in_one_line_and_plain_sev_is_unchanged(plain_host):
    out = xl(plain_host, "ok", check=1).stdout
    lines = out.splitlines()
    (i,) = [n for n, line in enumerate(lines) if "SEV-SNP" in line]
    assert lines[i] == (
        "[ WARN ] SEV-SNP: not enabled: simulated: no RMP set up (SEV-SNP off in the BIOS); SEV and SEV-ES guests only"
    )
    assert not lines[i + 1].startswith(" "), "one line, no hint"
    assert "[ PASS ] firmware: SEV API 0.24 build 7, INIT" in out


def caps(**kw: object) -> SevCapabilities:
    values: dict[str, object] = dict(
        source="Xen", available=True, min_sev_asid=5, max_asid=15, cbit=51, es=True, launches_es=False
    )
    return SevCapabilities(**(values | kw))  # type: ignore[arg-type]


def test_snp_check_on_each_answer(snp_host, plain_host):
    no_cpu = hostcheck.snp_check(lambda: caps(), None)
    assert no_cpu.verdict == "WARN" and no_cpu.detail.startswith("not available: Xen reports no SEV-SNP")
    no_rmp = hostcheck.snp_check(lambda: caps(snp_cpu=True), None)
    assert no_rmp.verdict == "WARN" and "no RMP set up" in no_rmp.detail and not no_rmp.hint

    def refused() -> SevCapabilities:
        raise HypervisorError("Xen's SEV domctl: unknown")

    assert hostcheck.snp_check(refused, None).detail == "not checked: Xen's SEV domctl: unknown"
    assert "no PSP" in hostcheck.snp_check(lambda: caps(snp_cpu=True, snp=True), None).detail
    # an RMP but a PSP (or kernel) that does not answer SNP_PLATFORM_STATUS
    client = PspClient(SimulatedPsp(plain_host))
    try:
        check = hostcheck.snp_check(lambda: caps(snp_cpu=True, snp=True), client)
    finally:
        client.close()
    assert check.verdict == "WARN" and "does not answer SNP_PLATFORM_STATUS" in check.detail
    assert "Linux 6.11" in check.hint


def test_the_simulated_xen_reports_the_cpu_bit_and_the_rmp(snp_host, plain_host):
    snp, plain = SimulatedXen(snp_host).sev_capabilities(), SimulatedXen(plain_host).sev_capabilities()
    assert (snp.snp_cpu, snp.snp) == (True, True)
    assert (plain.snp_cpu, plain.snp) == (True, False)  # the CPU has it; the BIOS left it off
    assert SimulatedXen(snp_host).cpuid_8000001f().snp


# -- xl-sev platform snp-* ---------------------------------------------------------------------------------------


def test_snp_status_before_and_after_sevd_starts(tmp_path):
    root = tmp_path / "host"
    run("sevd-sim", "host", root, "--snp", "--linux", "6.12", "--create-only")
    data = json.loads(xl(root, "platform", "snp-status", "--json").stdout)
    assert (data["state"], data["rmp_initialized"], data["current_tcb"]) == ("UNINIT", True, TCB)
    refused = xl(root, "platform", "snp-commit", check=1)
    assert "SNP_COMMIT: INVALID_PLATFORM_STATE" in refused.stderr
    sevd_start(root)  # SNP_INIT, then the legacy INIT that SNP_INIT makes possible
    assert "state INIT" in xl(root, "platform", "snp-status").stdout
    assert "state INIT" in xl(root, "platform", "status").stdout


def test_snp_config_commit_and_vlek_load(tmp_path):
    root = tmp_path / "host"
    run("sevd-sim", "host", root, "--snp", "--linux", "6.12", "--create-only")
    sevd_start(root)
    lower = "d516000000000003"
    out = xl(root, "platform", "snp-config", "--reported-tcb", lower, "--mask-chip-id").stdout
    assert f"reported-tcb {lower}" in out and "mask chip-id" in out
    # what is not given stays as it is
    data = json.loads(xl(root, "--json", "platform", "snp-config", "--mask-chip-key").stdout)
    assert (data["reported_tcb"], data["mask_chip_id"], data["mask_chip_key"]) == (lower, True, True)
    above = xl(root, "platform", "snp-config", "--reported-tcb", "d516000000000005", check=1)
    assert "SNP_SET_CONFIG: INVALID_PARAM" in above.stderr
    assert xl(root, "platform", "snp-config", "--reported-tcb", "nope", check=2).stderr.startswith("error: TCB 'nope'")
    assert json.loads(xl(root, "platform", "snp-commit", "--json").stdout)["state"] == "INIT"
    stick = tmp_path / "vlek.bin"
    stick.write_bytes(bytes(range(256)) + bytes(176))
    assert "vlek loaded" in xl(root, "platform", "vlek-load", stick).stdout
    assert SnpCommands(client := PspClient(SimulatedPsp(root))).platform_status().vlek_en
    client.close()
    stick.write_bytes(bytes(10))
    short = xl(root, "platform", "vlek-load", stick, check=2)
    assert "432 bytes, not 10" in short.stderr
    missing = xl(root, "--json", "platform", "vlek-load", tmp_path / "none", check=2)
    assert json.loads(missing.stdout)["error"] == "input"


def test_snp_verbs_on_a_host_without_snp_say_so(plain_host):
    for verb in (["snp-status"], ["snp-commit"], ["snp-config", "--mask-chip-id"]):
        proc = xl(plain_host, "platform", *verb, check=1)
        assert proc.stderr == (
            "error: this host has no SEV-SNP: the PSP does not answer SNP_PLATFORM_STATUS "
            "(SEV-SNP off in the BIOS, or a Dom0 kernel before Linux 6.11)\n"
        ), proc.stderr
