"""The sev-owner CLI: exit status 0 (ok), 1 (verification failure), 2 (unusable input), and the files it writes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import struct
import uuid

import pytest
from click.testing import CliRunner
from owner_fixtures import PLATFORM_ROME, ROOTS, make_pdh, rome_chain_dir

from sevd.abi import launch
from sevd.abi.certs import SevCert
from sevd.abi.launch import LaunchMeasurement, LaunchSession, SecretHeader, TransportKeys
from sevd.cli.owner import main
from sevd.owner import measurement as owner_measurement
from sevd.owner import secret as owner_secret
from sevd.owner.keyserver import KeyServer
from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd_sim import kds
from sevd_sim.psp.device import SimulatedPsp


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# -- verify-chain --------------------------------------------------------------------------------------------------


def test_verify_chain_accepts_the_real_rome_platform_with_amds_bundled_rome_roots(tmp_path):
    result = run("verify-chain", rome_chain_dir(tmp_path, with_roots=False), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out == {"ok": True, "roots": "builtin:rome", "generation": "rome", "amd_roots": True}


def test_verify_chain_accepts_amds_own_rome_root_files_in_the_directory(tmp_path):
    result = run("verify-chain", rome_chain_dir(tmp_path))  # ark.cert + ask.cert: AMD's Rome bytes
    assert result.exit_code == 0, result.output
    assert "roots: AMD's bundled rome roots" in result.output and "WARNING" not in result.output


def test_verify_chain_with_amds_ask_ark_file(tmp_path):
    d = rome_chain_dir(tmp_path, with_roots=False)
    (d / "ask_ark.cert").write_bytes(
        (ROOTS / "rome" / "ask.cert").read_bytes() + (ROOTS / "rome" / "ark.cert").read_bytes()
    )
    result = run("verify-chain", d, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["roots"] == "builtin:rome"


def test_verify_chain_with_milan_roots_exits_1_naming_the_link(tmp_path):
    d = rome_chain_dir(tmp_path, with_roots=False)
    result = run("verify-chain", d, "--ark", ROOTS / "milan" / "ark.cert", "--ask", ROOTS / "milan" / "ask.cert")
    assert result.exit_code == 1
    assert "CEK is not signed by ASK" in result.output


@pytest.fixture
def foreign_chain(sim_host, tmp_path):
    """A whole chain signed by a root that is not AMD's (the simulated one), its ark.cert and ask.cert beside it,
    as a host would hand them over; and the directory where those roots live, to name them explicitly."""
    out = tmp_path / "foreign"
    server = KeyServer(url=kds.kds_url(sim_host), cache_dir=None, generation=kds.GENERATION)
    Platform(PspClient(SimulatedPsp(sim_host))).export_full_chain(out, server)
    return out, kds.roots_dir(sim_host)


def test_a_chain_signed_by_a_foreign_ark_ask_in_the_directory_exits_1_naming_the_file(foreign_chain):
    d, _ = foreign_chain
    result = run("verify-chain", d)
    assert result.exit_code == 1
    assert f"{d / 'ark.cert'}: this ARK is not AMD's" in result.output
    assert "only AMD's bundled roots are trusted" in result.output


def test_root_files_from_the_host_are_never_trusted_even_when_they_match_the_chain(foreign_chain):
    d, _ = foreign_chain
    (d / "ark.cert").unlink()  # the ASK alone, which did sign the CEK
    result = run("verify-chain", d, "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["message"].startswith(f"{d / 'ask.cert'}: this ASK is not AMD's")
    (d / "ask.cert").unlink()
    result = run("verify-chain", d)
    assert result.exit_code == 1 and "CEK is not signed by the ASK of any known AMD generation" in result.output


def test_an_amd_chain_with_another_generations_ark_in_the_directory_exits_1_naming_it(tmp_path):
    d = rome_chain_dir(tmp_path, with_roots=False)
    shutil.copyfile(ROOTS / "milan" / "ark.cert", d / "ark.cert")
    result = run("verify-chain", d)
    assert result.exit_code == 1
    assert f"{d / 'ark.cert'}: this ARK is not AMD's rome ARK" in result.output


def test_roots_named_explicitly_are_trusted_with_a_plain_warning(foreign_chain):
    d, roots = foreign_chain
    result = run("verify-chain", d, "--roots", roots)
    assert result.exit_code == 0, result.output
    assert f"roots: {roots} (named explicitly; NOT AMD's)" in result.output
    assert f"WARNING: the roots in {roots} are not AMD's" in result.output
    out = json.loads(run("verify-chain", d, "--roots", roots, "--json").output)
    assert (out["ok"], out["amd_roots"], out["generation"], out["roots"]) == (True, False, None, str(roots))
    assert "not AMD's" in out["warning"]


def test_named_roots_must_also_match_the_root_files_in_the_directory(foreign_chain, tmp_path):
    d, roots = foreign_chain
    shutil.copyfile(ROOTS / "rome" / "ask.cert", d / "ask.cert")
    result = run("verify-chain", d, "--roots", roots)
    assert result.exit_code == 1
    assert f"{d / 'ask.cert'}: this ASK is not the ASK of the roots named explicitly ({roots})" in result.output


def test_amds_own_roots_named_explicitly_carry_no_warning(tmp_path):
    result = run("verify-chain", rome_chain_dir(tmp_path), "--roots", ROOTS / "rome")
    assert result.exit_code == 0, result.output
    assert "AMD's rome roots" in result.output and "WARNING" not in result.output


def test_roots_that_are_not_a_directory_of_roots_exit_2(foreign_chain, tmp_path):
    d, _ = foreign_chain
    result = run("verify-chain", d, "--roots", tmp_path / "nowhere")
    assert result.exit_code == 2 and "not a directory" in result.output
    result = run("verify-chain", d, "--roots", tmp_path)
    assert result.exit_code == 2 and "holds neither ark.cert + ask.cert nor ask_ark.cert" in result.output


def test_session_with_named_roots_warns_and_without_them_refuses(foreign_chain, tmp_path):
    d, roots = foreign_chain
    refused = run("session", "--pdh", d / "pdh.cert", "--policy", "0x1", "--out", tmp_path / "no")
    assert refused.exit_code == 1 and not (tmp_path / "no").exists()
    made = run("session", "--pdh", d / "pdh.cert", "--policy", "0x1", "--out", tmp_path / "yes", "--roots", roots)
    assert made.exit_code == 0, made.output
    assert "WARNING: the roots in" in made.output and (tmp_path / "yes" / "launch_blob.bin").exists()


def test_fetch_cek_completes_a_firmware_export_from_the_key_server(sim_host, tmp_path):
    platform = Platform(PspClient(SimulatedPsp(sim_host)))
    d = tmp_path / "from-host"
    platform.pdh_cert_export().write(d)  # the firmware's CEK, unsigned: no chain yet
    assert run("verify-chain", d, "--roots", kds.roots_dir(sim_host)).exit_code == 1
    chip = platform.get_id().hex()
    args = ("--chip-id", chip, "--kds-url", kds.kds_url(sim_host), "--cache", tmp_path / "cache")
    result = run("fetch-cek", d, *args, "--generation", "simulated", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["generation"] == "simulated"
    assert run("verify-chain", d, "--roots", kds.roots_dir(sim_host)).exit_code == 0
    assert run("verify-chain", d).exit_code == 1  # still not AMD's
    bad = run("fetch-cek", d, "--chip-id", "zz", "--kds-url", kds.kds_url(sim_host))
    assert bad.exit_code == 2 and "--chip-id" in bad.output


def test_verify_chain_with_a_pek_not_signed_by_the_oca_exits_1(tmp_path):
    d = rome_chain_dir(tmp_path)
    pek = bytearray((d / "pek.cert").read_bytes())
    pek[0x41C] ^= 0x01  # first byte of the OCA's signature (r)
    (d / "pek.cert").write_bytes(bytes(pek))
    result = run("verify-chain", d, "--json")
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert out["ok"] is False and out["message"] == "PEK is not signed by OCA"


def test_verify_chain_with_a_missing_file_exits_2_naming_it(tmp_path):
    d = rome_chain_dir(tmp_path)
    (d / "oca.cert").unlink()
    result = run("verify-chain", d)
    assert result.exit_code == 2
    assert "oca.cert: cannot read oca.cert" in result.output


def test_verify_chain_with_a_short_file_exits_2_naming_it(tmp_path):
    d = rome_chain_dir(tmp_path)
    (d / "pdh.cert").write_bytes(b"\x01" * 100)
    result = run("verify-chain", d)
    assert result.exit_code == 2
    assert "pdh.cert: an SEV certificate is 2084 bytes, got 100" in result.output


# -- session -----------------------------------------------------------------------------------------------------


def test_session_writes_sev_tool_and_sevctl_files(tmp_path):
    d = rome_chain_dir(tmp_path)
    out = tmp_path / "out"
    result = run("session", "--pdh", d / "pdh.cert", "--policy", "0x1", "--out", out, "--name", "vm1")
    assert result.exit_code == 0, result.output
    names = {
        "godh.cert",
        "launch_blob.bin",
        "tmp_tk.bin",
        "vm1_godh.b64",
        "vm1_session.b64",
        "vm1_tek.bin",
        "vm1_tik.bin",
    }
    assert {p.name for p in out.iterdir()} == names
    for private in ("tmp_tk.bin", "vm1_tek.bin", "vm1_tik.bin"):
        assert stat.S_IMODE(os.stat(out / private).st_mode) == 0o600
    godh = (out / "godh.cert").read_bytes()
    blob = (out / "launch_blob.bin").read_bytes()
    assert base64.b64decode((out / "vm1_godh.b64").read_bytes()) == godh
    assert base64.b64decode((out / "vm1_session.b64").read_bytes()) == blob
    tk = (out / "tmp_tk.bin").read_bytes()
    assert tk == (out / "vm1_tek.bin").read_bytes() + (out / "vm1_tik.bin").read_bytes()
    SevCert.parse(godh, "godh.cert")
    session = LaunchSession.parse(blob)
    assert session.policy_mac == launch.policy_mac(tk[16:], 0x1)


def test_session_refuses_a_pdh_whose_chain_fails(tmp_path):
    d = rome_chain_dir(tmp_path)
    shutil.copyfile(ROOTS / "genoa" / "ask.cert", d / "ask.cert")
    shutil.copyfile(ROOTS / "genoa" / "ark.cert", d / "ark.cert")
    result = run("session", "--pdh", d / "pdh.cert", "--policy", "0", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert f"{d / 'ark.cert'}: this ARK is not AMD's rome ARK" in result.output
    assert not (tmp_path / "out").exists()


def test_session_with_no_verify_unwraps_on_the_platform_side(tmp_path):
    pdh_key, pdh_cert = make_pdh()
    (tmp_path / "pdh.cert").write_bytes(pdh_cert.to_bytes())
    out = tmp_path / "out"
    result = run("session", "--pdh", tmp_path / "pdh.cert", "--policy", "0x5", "--out", out, "--no-verify")
    assert result.exit_code == 0, result.output
    godh = SevCert.parse((out / "godh.cert").read_bytes())
    blob = LaunchSession.parse((out / "launch_blob.bin").read_bytes())
    keys = launch.open_session(blob, pdh_key, godh.public_key(), 0x5)
    assert keys.to_bytes() == (out / "tmp_tk.bin").read_bytes()


def test_session_refuses_reserved_policy_bits(tmp_path):
    _, pdh_cert = make_pdh()
    (tmp_path / "pdh.cert").write_bytes(pdh_cert.to_bytes())
    result = run("session", "--pdh", tmp_path / "pdh.cert", "--policy", "0x40", "--out", tmp_path, "--no-verify")
    assert result.exit_code == 2
    assert "reserved" in result.output


# -- measurement ---------------------------------------------------------------------------------------------------


TIK = bytes(range(16, 32))
TEK = bytes(range(16))
MNONCE = bytes(range(200, 216))


@pytest.fixture
def launch_files(tmp_path):
    (tmp_path / "image.fd").write_bytes(b"OVMF" * 1024)
    (tmp_path / "tik.bin").write_bytes(TIK)
    (tmp_path / "tmp_tk.bin").write_bytes(TEK + TIK)
    return tmp_path


def reported_measurement(image: bytes, policy=0x1, api=(0, 22), build=5) -> str:
    m = owner_measurement.expected_measurement(image, policy, api[0], api[1], build, TIK, MNONCE)
    return m.to_base64()


def test_measurement_prints_hex_and_base64(launch_files):
    d = launch_files
    result = run(
        "measurement", "--image", d / "image.fd", "--policy", "0x1", "--api", "0.22", "--build", "5",
        "--tik", d / "tik.bin", "--mnonce", MNONCE.hex(), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["base64"] == reported_measurement(b"OVMF" * 1024)
    assert out["mnonce"] == MNONCE.hex()


def test_measurement_from_tk_equals_from_tik(launch_files):
    d = launch_files
    common = ["--image", d / "image.fd", "--policy", "1", "--api", "0.22", "--build", "5", "--mnonce", MNONCE.hex()]
    a = run("measurement", *common, "--tik", d / "tik.bin", "--json")
    b = run("measurement", *common, "--tk", d / "tmp_tk.bin", "--json")
    assert a.output == b.output


def verify_args(d, measurement: str, build="5", policy="0x1"):
    return [
        "verify-measurement", "--image", d / "image.fd", "--policy", policy, "--api", "0.22", "--build", build,
        "--tk", d / "tmp_tk.bin", "--measurement", measurement,
    ]  # fmt: skip


def test_verify_measurement_exit_0_when_it_matches(launch_files):
    result = run(*verify_args(launch_files, reported_measurement(b"OVMF" * 1024)))
    assert result.exit_code == 0, result.output


def test_verify_measurement_exit_1_when_the_image_differs(launch_files):
    result = run(*verify_args(launch_files, reported_measurement(b"OVMF" * 1023 + b"OVMX")))
    assert result.exit_code == 1
    assert "measurement does not match" in result.output


def test_verify_measurement_exit_1_when_the_build_differs(launch_files):
    result = run(*verify_args(launch_files, reported_measurement(b"OVMF" * 1024), build="6"))
    assert result.exit_code == 1


def test_verify_measurement_exit_1_when_the_policy_differs(launch_files):
    result = run(*verify_args(launch_files, reported_measurement(b"OVMF" * 1024), policy="0x3"))
    assert result.exit_code == 1


def test_verify_measurement_exit_2_for_bad_base64(launch_files):
    result = run(*verify_args(launch_files, "not*base64"))
    assert result.exit_code == 2
    assert "--measurement: not valid base64" in result.output


def test_verify_measurement_exit_2_for_a_short_measurement(launch_files):
    result = run(*verify_args(launch_files, base64.b64encode(bytes(32)).decode()))
    assert result.exit_code == 2
    assert "48 bytes, got 32" in result.output


def test_verify_measurement_exit_2_for_a_bad_api_version(launch_files):
    args = verify_args(launch_files, reported_measurement(b"OVMF" * 1024))
    args[args.index("0.22")] = "22"
    result = run(*args)
    assert result.exit_code == 2
    assert "--api '22': expected MAJOR.MINOR" in result.output


# -- package-secret ----------------------------------------------------------------------------------------------


def test_package_secret_from_guid_entries_writes_a_verifiable_packet(launch_files):
    d = launch_files
    (d / "pw.txt").write_bytes(b"hunter2\x00")
    guid = "736869e5-84f0-4973-92ec-06879ce3da0b"
    measured = reported_measurement(b"OVMF" * 1024)
    result = run(
        "package-secret", "--guid", f"{guid}={d / 'pw.txt'}", "--tk", d / "tmp_tk.bin",
        "--measurement", measured, "--out", d / "secret", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    header = SecretHeader.parse((d / "secret" / "packaged_secret_header.bin").read_bytes())
    ciphertext = (d / "secret" / "packaged_secret.bin").read_bytes()
    packaged = owner_secret.PackagedSecret(header, ciphertext)
    table = owner_secret.check_packaged_secret(
        TransportKeys(TEK, TIK), packaged, LaunchMeasurement.from_base64(measured)
    )
    assert owner_secret.parse_ovmf_secret_table(table) == [(uuid.UUID(guid), b"hunter2\x00")]
    assert len(table) % 16 == 0 and struct.unpack_from("<I", table, 16)[0] == len(table)
    out = json.loads(result.output)
    assert base64.b64decode(out["packet_header"]) == header.to_bytes()


def test_package_secret_refuses_a_raw_secret_not_a_multiple_of_16(launch_files):
    d = launch_files
    (d / "raw.bin").write_bytes(b"x" * 20)
    result = run(
        "package-secret", "--secret", d / "raw.bin", "--tk", d / "tmp_tk.bin",
        "--measurement", reported_measurement(b""), "--out", d / "secret",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "multiple of 16" in result.output


def test_package_secret_refuses_a_short_tk_file(launch_files):
    d = launch_files
    (d / "raw.bin").write_bytes(b"x" * 16)
    (d / "short_tk.bin").write_bytes(bytes(31))
    result = run(
        "package-secret", "--secret", d / "raw.bin", "--tk", d / "short_tk.bin",
        "--measurement", reported_measurement(b""), "--out", d / "secret",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "short_tk.bin: TEK||TIK is 32 bytes, got 31" in result.output


# -- show-cert -----------------------------------------------------------------------------------------------------


def test_show_cert_decodes_an_sev_certificate():
    result = run("show-cert", PLATFORM_ROME / "pek.cert", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["usage"], out["algo"], out["api"]) == ("PEK", "ECDSA_SHA256", "0.22")
    assert [s["usage"] for s in out["signatures"]] == ["OCA", "CEK"]


def test_show_cert_decodes_an_amd_certificate():
    result = run("show-cert", ROOTS / "rome" / "ask.cert", "--json")
    out = json.loads(result.output)
    assert out["usage"] == "ASK" and out["modulus_bits"] == 4096 and len(out["key_id"]) == 32


def test_show_cert_on_garbage_exits_2(tmp_path):
    (tmp_path / "x.cert").write_bytes(b"\x00" * 10)
    result = run("show-cert", tmp_path / "x.cert")
    assert result.exit_code == 2
    assert "x.cert" in result.output


def test_version_and_show_cert_in_plain_words():
    import subprocess
    import sys
    from pathlib import Path

    sev_owner = str(Path(sys.executable).parent / "sev-owner")
    proc = subprocess.run([sev_owner, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("sev-owner, version ")
    pek = Path(__file__).parent / "data" / "platform-rome" / "pek.cert"
    out = subprocess.run([sev_owner, "show-cert", str(pek)], capture_output=True, text=True).stdout
    assert "signatures: OCA ECDSA_SHA256, CEK ECDSA_SHA256" in out and "[" not in out and "{" not in out, out
