"""The key-server client (sevd.owner.keyserver) against the simulated host's key server, served as files
(file://) and over HTTP on 127.0.0.1; and against a tree holding AMD's real Rome CEK and roots."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from owner_fixtures import PLATFORM_ROME, ROOTS

from sevd.abi.certs import SevCert, SevSignature, Usage
from sevd.config import Config
from sevd.errors import InputError
from sevd.owner import keyserver
from sevd.owner.chain import verify_chain_dir
from sevd.owner.keyserver import KeyServer, KeyServerError, complete_chain_dir
from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd_sim import kds
from sevd_sim.host import simulated_roots
from sevd_sim.psp.device import SimulatedPsp, create_psp
from sevd_sim.psp.memory import PhysicalMemory

BIN = Path(sys.executable).parent


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve():
    """serve(directory) -> http://127.0.0.1:PORT serving it, in a thread; every server is shut down after."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_Quiet, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_url():
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def platform(host: Path) -> Platform:
    return Platform(PspClient(SimulatedPsp(host)))


def test_the_simulated_host_publishes_its_cek_at_amds_kds_path(sim_host):
    chip_id = platform(sim_host).get_id()
    # sev-tool: KDS_CEK = "https://kdsintf.amd.com/cek/id/" + the first socket's 64-byte id as %02x
    path = sim_host / "kds" / "cek" / "id" / chip_id[:64].hex()
    cek = SevCert.parse(path.read_bytes())
    exported = SevCert.parse(platform(sim_host).pdh_cert_export().cek)
    assert cek.pubkey == exported.pubkey and cek.is_signed_by(simulated_roots(sim_host)[1])
    assert all(s.is_empty() for s in exported.sigs)  # the firmware's CEK is not signed by AMD
    assert (sim_host / "kds" / "wp-content" / "resources" / "ask_ark_simulated.cert").stat().st_size == 3200


def test_fetch_over_http_and_the_cache_answers_offline_afterwards(sim_host, serve, closed_url, tmp_path):
    chip_id = platform(sim_host).get_id()
    cache = tmp_path / "cache"
    url = serve(sim_host / "kds")
    cek = KeyServer(url=url, cache_dir=cache).fetch_cek(chip_id)
    assert cek == kds.signed_cek(sim_host, chip_id)
    ask, ark = KeyServer(url=url, cache_dir=cache).fetch_ask_ark("simulated")
    assert (ark.usage, ask.usage) == (Usage.ARK, Usage.ASK)
    assert (cache / "cek" / "id" / chip_id.hex()).read_bytes() == cek.to_bytes()
    offline = KeyServer(url=closed_url, cache_dir=cache)
    assert offline.fetch_cek(chip_id) == cek
    assert offline.fetch_ask_ark("simulated") == (ask, ark)


def test_fetch_over_file_url(sim_host, tmp_path):
    chip_id = platform(sim_host).get_id()
    server = KeyServer(url=kds.kds_url(sim_host), cache_dir=None)
    assert server.cek_url(chip_id) == f"file://{sim_host.resolve()}/kds/cek/id/{chip_id.hex()}"
    assert server.fetch_cek(chip_id) == kds.signed_cek(sim_host, chip_id)


def test_a_prefilled_cache_works_with_no_server(sim_host, closed_url, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(sim_host / "kds", cache)  # the cache keeps the server's paths
    server = KeyServer(url=closed_url, cache_dir=cache, generation="simulated")
    out = tmp_path / "chain"
    platform(sim_host).export_full_chain(out, server)
    assert verify_chain_dir(out, kds.roots_dir(sim_host)).amd is False


def test_unreachable_server_and_empty_cache_is_one_line_naming_url_and_chip_id(sim_host, closed_url, tmp_path):
    chip_id = platform(sim_host).get_id()
    server = KeyServer(url=closed_url, cache_dir=tmp_path / "empty")
    with pytest.raises(KeyServerError) as info:
        server.fetch_cek(chip_id)
    message = str(info.value)
    assert "\n" not in message
    assert f"{closed_url}/cek/id/{chip_id.hex()}" in message and f"chip id {chip_id.hex()}" in message
    assert "Connection refused" in message and "unverifiable without the AMD-signed CEK" in message


def test_unknown_chip_id_is_http_404_naming_url_and_chip_id(sim_host, serve, tmp_path):
    url = serve(sim_host / "kds")
    with pytest.raises(KeyServerError, match=r"answered HTTP 404 for chip id (00)+ .*unverifiable"):
        KeyServer(url=url, cache_dir=None).fetch_cek(bytes(64))


def test_missing_file_under_a_file_url_names_it(sim_host, tmp_path):
    server = KeyServer(url=kds.kds_url(tmp_path), cache_dir=None)
    with pytest.raises(KeyServerError, match="No such file or directory"):
        server.fetch_cek(bytes(64))


def _tree_with_cek(tmp_path: Path, chip_id: bytes, data: bytes) -> Path:
    tree = tmp_path / "tree"
    path = tree / keyserver.cek_path(chip_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return tree


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda c: c.to_bytes()[:-1], "an SEV certificate is 2084 bytes, got 2083"),
        (lambda c: b"<html>not found</html>", "an SEV certificate is 2084 bytes, got 22"),
        (lambda c: dataclasses.replace(c, usage=Usage.PEK).to_bytes(), "gave a PEK certificate, expected a CEK"),
        (
            lambda c: dataclasses.replace(c, sigs=(SevSignature.empty(), SevSignature.empty())).to_bytes(),
            "the CEK carries no ASK signature",
        ),
    ],
    ids=["truncated", "html", "pek", "unsigned"],
)
def test_a_malformed_or_wrong_usage_cek_is_refused(sim_host, serve, tmp_path, mangle, message):
    chip_id = platform(sim_host).get_id()
    tree = _tree_with_cek(tmp_path, chip_id, mangle(kds.signed_cek(sim_host, chip_id)))
    url = serve(tree)
    with pytest.raises(KeyServerError, match=message) as info:
        KeyServer(url=url, cache_dir=tmp_path / "cache").fetch_cek(chip_id)
    assert url in str(info.value)
    assert not (tmp_path / "cache" / keyserver.cek_path(chip_id)).exists()  # never cached


def test_a_malformed_ask_ark_is_refused(sim_host, tmp_path):
    tree = tmp_path / "tree" / "wp-content" / "resources"
    tree.mkdir(parents=True)
    good = (sim_host / "kds" / "wp-content" / "resources" / "ask_ark_simulated.cert").read_bytes()
    (tree / "ask_ark_short.cert").write_bytes(good[:-1])
    (tree / "ask_ark_swapped.cert").write_bytes(good[1600:] + good[:1600])
    server = KeyServer(url=(tmp_path / "tree").resolve().as_uri(), cache_dir=None)
    with pytest.raises(KeyServerError, match="an ASK\\+ARK file is 1664 or 3200 bytes, got 3199"):
        server.fetch_ask_ark("short")
    with pytest.raises(KeyServerError, match="holds ARK then ASK, expected the ASK then the ARK"):
        server.fetch_ask_ark("swapped")
    with pytest.raises(InputError, match="generation '../x'"):
        server.fetch_ask_ark("../x")


def test_a_corrupt_cache_entry_is_fetched_again(sim_host, tmp_path):
    chip_id = platform(sim_host).get_id()
    cache = tmp_path / "cache"
    (cache / "cek" / "id").mkdir(parents=True)
    (cache / keyserver.cek_path(chip_id)).write_bytes(b"garbage")
    cek = KeyServer(url=kds.kds_url(sim_host), cache_dir=cache).fetch_cek(chip_id)
    assert (cache / keyserver.cek_path(chip_id)).read_bytes() == cek.to_bytes()


def test_a_cek_whose_key_is_not_the_firmwares_is_refused(sim_host, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    PhysicalMemory.create(other / "memory.img", 1 << 20).close()
    create_psp(other)  # another chip, same simulated AMD
    chip_id = platform(sim_host).get_id()
    stranger = kds.signed_cek(other, platform(other).get_id())
    tree = _tree_with_cek(tmp_path, chip_id, stranger.to_bytes())  # a key server with the wrong CEK
    out = tmp_path / "chain"
    platform(sim_host).pdh_cert_export().write(out)
    server = KeyServer(url=tree.resolve().as_uri(), cache_dir=None)
    with pytest.raises(KeyServerError, match="its CEK holds a different key than this firmware's CEK"):
        complete_chain_dir(out, chip_id, dataclasses.replace(server, generation="simulated"))


def test_the_real_rome_cek_from_a_key_server_completes_a_chain_verified_by_amds_roots(serve, tmp_path):
    """AMD's bytes: the KDS-signed Rome CEK at its chip id, the Rome ASK+ARK; the firmware's CEK is unsigned."""
    chip_id = bytes(range(64))
    real_cek = SevCert.parse((PLATFORM_ROME / "cek.cert").read_bytes())
    tree = _tree_with_cek(tmp_path, chip_id, real_cek.to_bytes())
    resources = tree / "wp-content" / "resources"
    resources.mkdir(parents=True)
    (resources / "ask_ark_rome.cert").write_bytes(
        (ROOTS / "rome" / "ask.cert").read_bytes() + (ROOTS / "rome" / "ark.cert").read_bytes()
    )
    out = tmp_path / "chain"
    out.mkdir()
    for name in ("pdh", "pek", "oca"):
        shutil.copyfile(PLATFORM_ROME / f"{name}.cert", out / f"{name}.cert")
    unsigned = dataclasses.replace(real_cek, sigs=(SevSignature.empty(), SevSignature.empty()))
    (out / "cek.cert").write_bytes(unsigned.to_bytes())
    done = complete_chain_dir(out, chip_id, KeyServer(url=serve(tree), cache_dir=None))
    assert done.generation == "rome"  # the AMD generation whose bundled ASK signed the fetched CEK
    assert (out / "cek.cert").read_bytes() == real_cek.to_bytes()
    report = verify_chain_dir(out)
    assert (report.roots, report.amd) == ("builtin:rome", True)


def test_keyserver_urls_for_amd_and_for_a_one_base_mirror():
    chip_id = bytes([0xAB]) * 64
    amd = KeyServer(cache_dir=None)
    assert amd.cek_url(chip_id) == "https://kdsintf.amd.com/cek/id/" + "ab" * 64
    assert amd.ask_ark_url("milan") == "https://developer.amd.com/wp-content/resources/ask_ark_milan.cert"
    mirror = KeyServer(url="file:///srv/kds/", cache_dir=None)
    assert mirror.ask_ark_url("rome") == "file:///srv/kds/wp-content/resources/ask_ark_rome.cert"
    with pytest.raises(InputError, match="expected an http://, https:// or file:// URL"):
        KeyServer(url="ftp://example.org", cache_dir=None)


def test_cache_dir_defaults_and_sevd_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SEVD_CACHE_DIR", raising=False)
    assert keyserver.default_cache_dir() == Path("/var/cache/sevd/kds")
    monkeypatch.setenv("SEVD_CACHE_DIR", str(tmp_path))
    assert keyserver.default_cache_dir() == tmp_path / "kds"
    cfg = tmp_path / "sevd.toml"
    cfg.write_text('[keyserver]\nurl = "file:///srv/kds"\ngeneration = "simulated"\n')
    server = Config.load(cfg).keyserver()
    assert (server.url, server.generation, server.cache_dir) == ("file:///srv/kds", "simulated", tmp_path / "kds")
    cfg.write_text('[keyserver]\nurl = "gopher://x"\n')
    with pytest.raises(InputError, match=r"sevd.toml: \[keyserver\] key server url 'gopher://x'"):
        Config.load(cfg).keyserver()


# -- xl-sev platform export, as an operator runs it -----------------------------------------------------------------


def xl(host: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "xl-sev"), "--config", str(host / "sevd.toml"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    root = tmp_path_factory.mktemp("kdshost")
    subprocess.run([str(BIN / "sevd-sim"), "host", str(root), "--create-only"], check=True, capture_output=True)
    return root


def test_xl_sev_export_over_http_with_kds_url(host, serve, tmp_path):
    out = tmp_path / "certs"
    proc = xl(host, "platform", "export", str(out), "--kds-url", serve(host / "kds"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.cert" for n in ("ark", "ask", "cek", "oca", "pdh", "pek")]
    assert verify_chain_dir(out, kds.roots_dir(host)).chain.cek.is_signed_by(simulated_roots(host)[1])


def test_xl_sev_export_with_an_unreachable_server_and_no_cache_exits_1_with_one_line(host, closed_url, tmp_path):
    shutil.rmtree(host / "cache", ignore_errors=True)
    proc = xl(host, "platform", "export", str(tmp_path / "certs"), "--kds-url", closed_url)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: cannot fetch {closed_url}/cek/id/") and "chip id" in lines[0]


def _rome_export(tmp_path: Path, firmware_cek: bytes) -> Path:
    out = tmp_path / "chain"
    out.mkdir()
    for name in ("pdh", "pek", "oca"):
        shutil.copyfile(PLATFORM_ROME / f"{name}.cert", out / f"{name}.cert")
    (out / "cek.cert").write_bytes(firmware_cek)
    return out


def test_a_dummy_firmware_cek_relies_on_the_fetched_cek_signing_the_pek(sim_host, serve, tmp_path):
    chip_id = bytes(range(64))
    real_cek = (PLATFORM_ROME / "cek.cert").read_bytes()
    tree = _tree_with_cek(tmp_path, chip_id, real_cek)
    resources = tree / "wp-content" / "resources"
    resources.mkdir(parents=True)
    (resources / "ask_ark_rome.cert").write_bytes(
        (ROOTS / "rome" / "ask.cert").read_bytes() + (ROOTS / "rome" / "ark.cert").read_bytes()
    )
    out = _rome_export(tmp_path, bytes(0x824))  # no usable key in the firmware's CEK
    complete_chain_dir(out, chip_id, KeyServer(url=serve(tree), cache_dir=None))
    assert verify_chain_dir(out).generation == "rome"
    # a CEK that did not sign this platform's PEK (another chip's) is refused
    other = kds.signed_cek(sim_host, platform(sim_host).get_id())
    (tree / keyserver.cek_path(chip_id)).write_bytes(other.to_bytes())
    (out / "cek.cert").write_bytes(bytes(0x824))
    with pytest.raises(KeyServerError, match="its CEK did not sign this platform's PEK"):
        complete_chain_dir(out, chip_id, KeyServer(url=serve(tree), cache_dir=None, generation="rome"))
