"""`xl-sev platform` and `sevd-sim host` as an operator runs them: installed entry points, subprocesses."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(*args, check=True):
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    root = tmp_path_factory.mktemp("host")
    run("sevd-sim", "host", str(root), "--create-only")
    return root


def xl(host, *args, check=True):
    return run("xl-sev", "--config", str(host / "sevd.toml"), *args, check=check)


def test_platform_status_json_fields(host):
    data = json.loads(run("xl-sev", "--json", "--config", str(host / "sevd.toml"), "platform", "status").stdout)
    assert set(data) == {"api_major", "api_minor", "build", "state", "owner", "es", "guests"}
    assert (data["api_major"], data["api_minor"], data["state"]) == (0, 24, "INIT")


def test_export_writes_the_full_chain_with_sev_tool_names_and_the_owner_verifies_it_with_named_roots(host, tmp_path):
    xl(host, "platform", "export", str(tmp_path / "certs"))
    names = sorted(p.name for p in (tmp_path / "certs").iterdir())
    assert names == ["ark.cert", "ask.cert", "cek.cert", "oca.cert", "pdh.cert", "pek.cert"]
    # the simulated AMD root is not AMD's: refused by default, accepted only when named, with a warning
    refused = run("sev-owner", "verify-chain", str(tmp_path / "certs"), check=False)
    assert refused.returncode == 1 and "ark.cert: this ARK is not AMD's" in refused.stderr
    named = run("sev-owner", "verify-chain", str(tmp_path / "certs"), "--roots", str(host / "simulated-amd-roots"))
    assert "not AMD's" in named.stdout


def test_pdh_gen_changes_the_pdh(host, tmp_path):
    xl(host, "platform", "export", str(tmp_path / "a"))
    xl(host, "platform", "pdh-gen")
    xl(host, "platform", "export", str(tmp_path / "b"))
    assert (tmp_path / "a" / "pdh.cert").read_bytes() != (tmp_path / "b" / "pdh.cert").read_bytes()
    assert (tmp_path / "a" / "pek.cert").read_bytes() == (tmp_path / "b" / "pek.cert").read_bytes()


def test_get_id_is_64_bytes_hex(host):
    assert len(xl(host, "platform", "get-id").stdout.strip()) == 128


def test_missing_config_is_a_usage_error(tmp_path):
    proc = run("xl-sev", "--config", str(tmp_path / "nope.toml"), "platform", "status", check=False)
    assert proc.returncode == 2
    assert "no such configuration file" in proc.stderr


def test_bad_config_value_is_named(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[psp]\nbackend = "carrier-pigeon"\n')
    proc = run("xl-sev", "--config", str(cfg), "platform", "status", check=False)
    assert proc.returncode == 2
    assert "[psp] backend = 'carrier-pigeon'" in proc.stderr


def test_firmware_error_exits_1_with_spec_name(tmp_path):
    root = tmp_path / "h"
    run("sevd-sim", "host", str(root), "--create-only")
    cfg = str(root / "sevd.toml")
    xl_ = ("xl-sev", "--config", cfg, "platform")
    run(*xl_, "factory-reset", "--yes")
    assert json.loads(run("xl-sev", "--json", "--config", cfg, "platform", "status").stdout)["state"] == "UNINIT"
    csr = tmp_path / "pek.csr"
    # Lazy INIT, as the driver does; in a PV Dom0 (the simulated host's) the kernel's DF_FLUSH after it fails,
    # its WBINVD having reached one CPU, and the command answers that.  The firmware is INIT now: again works.
    proc = run(*xl_, "pek-csr", str(csr), check=False)
    assert proc.returncode == 1 and "WBINVD_REQUIRED" in proc.stderr, proc.stderr
    run(*xl_, "pek-csr", str(csr))
    # Importing the unsigned CSR with an unsigned OCA: the firmware refuses the certificates.
    proc = run(*xl_, "pek-cert-import", str(csr), str(csr), check=False)
    assert proc.returncode == 1
    assert "INVALID_CERTIFICATE" in proc.stderr or "BAD_SIGNATURE" in proc.stderr


def test_sim_host_runs_xenstored_until_sigterm(tmp_path):
    root = tmp_path / "fg"
    proc = subprocess.Popen(
        [str(BIN / "sevd-sim"), "host", str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines = []
        for _ in range(5):
            line = proc.stdout.readline()
            lines.append(line)
            if "xenstored stand-in ready" in line:
                break
        assert any("xenstored stand-in ready" in s for s in lines), lines
        env = dict(os.environ, XENSTORED_PATH=str(root / "xenstored.sock"))
        subprocess.run(["xenstore-write", "/probe", "ok"], env=env, check=True, timeout=10)
        out = subprocess.run(["xenstore-read", "/probe"], env=env, capture_output=True, text=True, timeout=10)
        assert out.stdout.strip() == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
