"""A guest owner and the simulated PSP, end to end, through files and the ioctl client.

The owner side uses only sevd.owner (what runs on the owner's machine); the host side issues
commands through PspClient.  The boot image is Debian's OVMF, placed in simulated memory in
non-contiguous chunks as a hypervisor would lay it out.
"""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from sevd.abi import status
from sevd.abi.certs import Algo, SevCert, Usage, verify_chain
from sevd.abi.launch import LaunchMeasurement, SecretHeader
from sevd.abi.policy import Policy, PolicyFlag
from sevd.cli.owner import main as owner_cli
from sevd.errors import VerificationError
from sevd.guest import GuestCommands
from sevd.owner.chain import load_platform_chain
from sevd.owner.keyserver import KeyServer
from sevd.owner.measurement import verify_measurement
from sevd.owner.secret import package_secret
from sevd.owner.session import make_session
from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd_sim import kds
from sevd_sim.psp.device import SimulatedPsp
from sevd_sim.psp.identity import API_MAJOR, API_MINOR

OVMF = pathlib.Path("/usr/share/ovmf/OVMF.fd")
BUILD = 7
ASID = 5
SECRET_SPA = 0x3F00000
# Where the hypervisor put each quarter of the image: scattered and out of address order.
CHUNK_SPAS = (0x2400000, 0x0800000, 0x3000000, 0x1200000)

needs_ovmf = pytest.mark.skipif(
    not OVMF.exists(), reason=f"{OVMF} is missing (Debian package ovmf; make test installs it)"
)


class Host:
    def __init__(self, host: pathlib.Path):
        self.root = host
        self.psp = SimulatedPsp(host)
        client = PspClient(self.psp)
        self.platform = Platform(client)
        self.g = GuestCommands(client)

    def export(self, out: pathlib.Path) -> pathlib.Path:
        """What the host sends the owner: the full chain, its CEK and ARK/ASK from the host's key server (file://)."""
        server = KeyServer(url=kds.kds_url(self.root), cache_dir=None, generation=kds.GENERATION)
        self.platform.export_full_chain(out, server)
        return out

    def load_image(self, handle: int, image: bytes) -> None:
        quarter = len(image) // len(CHUNK_SPAS)
        for i, spa in enumerate(CHUNK_SPAS):
            self.psp.memory.write(spa, image[i * quarter : (i + 1) * quarter])
        for spa in CHUNK_SPAS:  # measured in image order, one range per contiguous run
            self.g.launch_update_data(handle, spa, quarter)


@pytest.fixture
def owner_view(sim_host, tmp_path):
    host = Host(sim_host)
    report = load_platform_chain(host.export(tmp_path / "from-host"), roots=kds.roots_dir(sim_host))
    verify_chain(report.chain)
    return host, report.chain.pdh


@needs_ovmf
def test_owner_round_trip_with_ovmf(owner_view, tmp_path):
    host, pdh = owner_view
    image = OVMF.read_bytes()
    policy = 0  # debugging allowed, so the test can look at guest memory
    session = make_session(pdh, policy)
    handle = host.g.launch_start(Policy(policy), godh_cert=session.godh.to_bytes(), session=session.blob.to_bytes())
    host.g.activate(handle, ASID)
    host.load_image(handle, image)
    assert host.psp.memory.read(CHUNK_SPAS[0], 4096) != image[:4096]  # encrypted in place
    reported = LaunchMeasurement.parse(host.g.launch_measure(handle))
    st = host.platform.status()
    assert (st.api_major, st.api_minor, st.build) == (API_MAJOR, API_MINOR, BUILD)

    verify_measurement(reported, image, policy, st.api_major, st.api_minor, st.build, session.keys.tik)
    tampered = bytearray(image)
    tampered[len(image) // 2] ^= 1
    for args in (
        (bytes(tampered), policy, st.build),
        (image, policy | PolicyFlag.NOKS, st.build),
        (image, policy, st.build + 1),
    ):
        img, pol, build = args
        with pytest.raises(VerificationError):
            verify_measurement(reported, img, int(pol), st.api_major, st.api_minor, build, session.keys.tik)

    # the sev-owner CLI agrees
    (tmp_path / "tik.bin").write_bytes(session.keys.tik)
    result = CliRunner().invoke(
        owner_cli,
        [
            "verify-measurement",
            "--image",
            str(OVMF),
            "--policy",
            "0x0",
            "--api",
            f"{st.api_major}.{st.api_minor}",
            "--build",
            str(st.build),
            "--tik",
            str(tmp_path / "tik.bin"),
            "--measurement",
            reported.to_base64(),
        ],
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        owner_cli,
        ["verify-measurement", "--image", str(OVMF), "--policy", "0x0", "--api", "0.24", "--build", "8"]
        + ["--tik", str(tmp_path / "tik.bin"), "--measurement", reported.to_base64()],
    )
    assert result.exit_code != 0

    secret = b"the disk key: correct horse battery staple".ljust(64, b"\0")
    packet = package_secret(session.keys, secret, reported)
    bad = dataclasses.replace(packet.header, mac=bytes(32))
    with pytest.raises(status.BadMeasurement):
        host.g.launch_update_secret(handle, bad.to_bytes(), SECRET_SPA, packet.ciphertext)
    host.g.launch_update_secret(handle, packet.header.to_bytes(), SECRET_SPA, packet.ciphertext)
    assert host.psp.memory.read(SECRET_SPA, len(secret)) != secret  # in guest memory, encrypted
    assert host.g.dbg_decrypt(handle, SECRET_SPA, len(secret)) == secret
    host.g.launch_finish(handle)
    assert host.g.dbg_decrypt(handle, CHUNK_SPAS[1], 4096) == image[len(image) // 4 : len(image) // 4 + 4096]


def test_secret_for_another_launch_is_refused(owner_view):
    host, pdh = owner_view
    sessions = [make_session(pdh, 0) for _ in range(2)]
    handles = []
    for i, s in enumerate(sessions):
        h = host.g.launch_start(Policy(0), godh_cert=s.godh.to_bytes(), session=s.blob.to_bytes())
        host.g.activate(h, ASID + i)
        handles.append(h)
    m0 = LaunchMeasurement.parse(host.g.launch_measure(handles[0]))
    host.g.launch_measure(handles[1])
    packet = package_secret(sessions[0].keys, b"k" * 32, m0)
    with pytest.raises(status.BadMeasurement):  # other TIK, other measurement
        host.g.launch_update_secret(handles[1], packet.header.to_bytes(), SECRET_SPA, packet.ciphertext)
    flipped = bytearray(packet.ciphertext)
    flipped[0] ^= 0x80
    with pytest.raises(status.BadMeasurement):
        host.g.launch_update_secret(handles[0], packet.header.to_bytes(), SECRET_SPA, bytes(flipped))
    compressed = package_secret(sessions[0].keys, b"k" * 32, m0, flags=1)
    with pytest.raises(status.Unsupported):
        host.g.launch_update_secret(handles[0], compressed.header.to_bytes(), SECRET_SPA, compressed.ciphertext)
    assert SecretHeader.parse(packet.header.to_bytes()) == packet.header


def test_wrong_policy_for_the_session_is_bad_measurement(owner_view):
    host, pdh = owner_view
    session = make_session(pdh, 0)
    with pytest.raises(status.BadMeasurement):
        host.g.launch_start(
            Policy(int(PolicyFlag.NODBG)), godh_cert=session.godh.to_bytes(), session=session.blob.to_bytes()
        )
    assert host.platform.status().guests == 0


def test_session_for_another_platform_is_bad_measurement(owner_view, tmp_path):
    host, _ = owner_view
    other_pdh = SevCert.for_ec_key(ec.generate_private_key(ec.SECP384R1()).public_key(), Usage.PDH, Algo.ECDH_SHA256)
    session = make_session(other_pdh, 0)
    with pytest.raises(status.BadMeasurement):
        host.g.launch_start(Policy(0), godh_cert=session.godh.to_bytes(), session=session.blob.to_bytes())


@pytest.mark.parametrize("how", ["zeros", "usage", "algo", "point"])
def test_malformed_godh_is_invalid_certificate(owner_view, how):
    host, pdh = owner_view
    session = make_session(pdh, 0)
    godh = session.godh
    if how == "zeros":
        raw = bytes(len(godh.to_bytes()))
    elif how == "usage":
        raw = dataclasses.replace(godh, usage=Usage.OCA).to_bytes()
    elif how == "algo":
        raw = dataclasses.replace(godh, algo=Algo.ECDSA_SHA256).to_bytes()
    else:  # a point that is not on the curve
        raw = bytearray(godh.to_bytes())
        raw[0x14] ^= 1
        raw = bytes(raw)
    with pytest.raises(status.InvalidCertificate):
        host.g.launch_start(Policy(0), godh_cert=raw, session=session.blob.to_bytes())
    assert host.platform.status().guests == 0
