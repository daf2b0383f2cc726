"""`make demo`: an attested SEV launch on a simulated host, step by step.

The host side (simulated Xen + the /dev/sev ioctl client in front of the simulated PSP) and the
guest owner side (sevd.owner, which trusts only signatures) run in one process here, talking only
through the files and blobs they would exchange over a network.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from sevd.abi.certs import AmdCert, PlatformChain, SevCert, verify_chain
from sevd.abi.launch import LaunchMeasurement
from sevd.abi.policy import Policy
from sevd.errors import VerificationError
from sevd.guest import GuestCommands
from sevd.owner.measurement import verify_measurement
from sevd.owner.secret import package_secret
from sevd.owner.session import make_session
from sevd.platform import Platform
from sevd.simhost import SimulatedHost

OVMF = Path("/usr/share/ovmf/OVMF.fd")


def _step(text: str) -> None:
    print(f"  - {text}", flush=True)


def run_demo(host_dir: str | None = None) -> int:
    """Run the demo on `host_dir` (kept), or on a temporary host removed afterwards."""
    if host_dir is None:
        with tempfile.TemporaryDirectory(prefix="sevd-demo-") as tmp:
            return _run(Path(tmp))
    return _run(Path(host_dir))


def _run(root: Path) -> int:
    started = time.monotonic()
    if not OVMF.exists():
        print(f"{OVMF} is missing: install Debian's ovmf package (make demo does)")
        return 2
    print(f"simulated host: {root}")
    host = SimulatedHost.create(root)
    client = host.client()
    platform, guest = Platform(client), GuestCommands(client)
    xen = host.xen()

    st = platform.status()
    print(f"platform: SEV API {st.api_major}.{st.api_minor} build {st.build}, {st.state.name}, guests {st.guests}")

    print("guest owner: verify the platform and build a launch session")
    export = platform.pdh_cert_export()
    identity = root / "psp" / "identity"  # the simulated chip's AMD root, exported alongside the chain
    chain = PlatformChain(
        pdh=SevCert.parse(export.pdh, "pdh.cert"),
        pek=SevCert.parse(export.pek, "pek.cert"),
        oca=SevCert.parse(export.oca, "oca.cert"),
        cek=SevCert.parse(export.cek, "cek.cert"),
        ask=AmdCert.parse((identity / "ask.cert").read_bytes(), "ask.cert"),
        ark=AmdCert.parse((identity / "ark.cert").read_bytes(), "ark.cert"),
    )
    verify_chain(chain)
    _step("PDH <- PEK <- (OCA, CEK <- ASK <- ARK) verified")
    policy = Policy.parse("NOKS|0x00000000")  # debugging allowed so the demo can show the secret landed
    session = make_session(chain.pdh, int(policy))
    _step(f"GODH key + launch blob for policy {policy} ({policy.describe()})")

    image = OVMF.read_bytes()
    print(f"host: create the paused domain with {OVMF} ({len(image) // 1024} KiB)")
    domid = xen.create_domain(f"sev-demo-{os.getpid()}", 64, image)
    sev = xen.make_sev_domain(domid, es=False)
    _step(f"domain {domid}: SEV, ASID {sev.asid}, C-bit {sev.cbit}")
    handle = guest.launch_start(policy, godh_cert=session.godh.to_bytes(), session=session.blob.to_bytes())
    _step(f"LAUNCH_START -> handle {handle}")
    guest.activate(handle, sev.asid)
    xen.enable_sev(domid)
    _step(f"ACTIVATE handle {handle} on ASID {sev.asid}; SEV enabled in the VMCBs")
    ranges = xen.boot_image_ranges(domid)
    for spa, length in ranges:
        guest.launch_update_data(handle, spa, length)
    _step(f"LAUNCH_UPDATE_DATA x{len(ranges)} (contiguous frames coalesced) over {sum(n for _, n in ranges)} bytes")
    blob = guest.launch_measure(handle)
    measured = LaunchMeasurement.parse(blob)
    _step(f"LAUNCH_MEASURE -> {measured.to_base64()}")

    print("guest owner: check the measurement, send the secret")
    st = platform.status()
    tik = session.keys.tik
    try:
        verify_measurement(measured, image, int(policy), st.api_major, st.api_minor, st.build, tik)
    except VerificationError as err:
        print(f"measurement MISMATCH ({err}): the owner refuses to send the secret")
        return 1
    _step("measurement matches the expected OVMF launch digest")
    secret = b"disk-passphrase:correct horse battery staple".ljust(64, b"\0")
    packaged = package_secret(session.keys, secret, measured)
    secret_spa = ranges[0][0]
    guest.launch_update_secret(handle, packaged.header.to_bytes(), secret_spa, packaged.ciphertext)
    _step(f"LAUNCH_UPDATE_SECRET: {len(secret)} bytes at SPA {secret_spa:#x}")
    guest.launch_finish(handle)
    xen.unpause(domid)
    _step(f"LAUNCH_FINISH; domain {domid} running: {guest.guest_status(handle).state.name}")
    in_guest = guest.dbg_decrypt(handle, secret_spa, len(secret))
    raw = host.psp().memory.read(secret_spa, len(secret))
    _step(f"guest sees its secret: {in_guest == secret}; host memory holds ciphertext: {secret not in raw}")

    print("host: destroy")
    guest.deactivate(handle)
    guest.decommission(handle)
    xen.destroy(domid)  # Xen: WBINVD on all CPUs
    dirty = xen.dirty_asids()
    guest.df_flush()
    xen.asids_flushed(dirty)
    _step(f"DEACTIVATE, DECOMMISSION, WBINVD + DF_FLUSH: ASIDs {dirty} clean again")
    st = platform.status()
    print(f"platform: {st.state.name}, guests {st.guests}; done in {time.monotonic() - started:.1f} s")
    return 0
