"""The simulated SEV-SNP firmware, driven only through the ioctl client (PspClient + sevd.snp_firmware).

Expected answers are the SNP firmware ABI's (56860), transcribed here as literal tables, not read from the
model's tables in sim/sevd_sim/psp/snp.py: command × platform state, command × guest state, and the RMP
states a launch page may be in.  The launch digest is checked against sevd.abi.snp (itself checked against
sev-snp-measure in test_snp_abi.py); a report's signature is checked with `cryptography` against the VCEK and
the ARK/ASK chain the simulated key server publishes.
"""

from __future__ import annotations

import hashlib
import struct
import urllib.parse

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sevd.abi import snp, snp_msg, status
from sevd.abi.snp import PageType, Product, SnpGuestState, SnpPlatformState, SnpPolicy, SnpPolicyFlag, TcbVersion
from sevd.abi.units import Asid, Spa
from sevd.errors import DeviceError
from sevd.psp.device import PspClient
from sevd.snp_firmware import SnpCommands
from sevd_sim import kds
from sevd_sim.cli import cli
from sevd_sim.host import SimulatedHost
from sevd_sim.psp.device import SimulatedPsp, create_psp
from sevd_sim.psp.memory import PhysicalMemory
from sevd_sim.xen import SimulatedXen

GCTX = Spa(0x0100_0000)
PAGES = 0x0200_0000  # guest pages from here
ASID = Asid(1)  # the SNP (SEV-ES) range is 1..4 on the default CPU
POLICY = SnpPolicy.make(SnpPolicyFlag.SMT)


class _Host:
    """A simulated host whose PSP, ioctl client and Xen are opened once and closed after the test (every
    SimulatedPsp holds the memory file open; the suite must not leak descriptors)."""

    def __init__(self, host: SimulatedHost):
        self.root = host.root
        self._psp = host.psp()
        self._client = PspClient(self._psp)
        self._xen = SimulatedXen(host.root)

    def psp(self) -> SimulatedPsp:
        return self._psp

    def client(self) -> PspClient:
        return self._client

    def xen(self) -> SimulatedXen:
        return self._xen

    def close(self) -> None:
        self._psp.close()


@pytest.fixture
def opened():
    hosts: list[_Host] = []

    def open_host(root, **kwargs) -> _Host:
        hosts.append(_Host(SimulatedHost.create(root, **kwargs)))
        return hosts[-1]

    yield open_host
    for host in hosts:
        host.close()


@pytest.fixture
def host(tmp_path, opened):
    return opened(tmp_path / "host", snp=True, linux="6.12")


def commands(host) -> SnpCommands:
    return SnpCommands(host.client())


def firmware_page(host, spa=GCTX):
    host.xen().rmpupdate(spa, assigned=True, asid=0, immutable=True)


def guest_page(host, spa, gpa, asid=ASID):
    host.xen().rmpupdate(spa, assigned=True, asid=asid, gpa=gpa)


def launched(host, cmds, state=SnpGuestState.LAUNCH):
    """A guest in `state` (INIT, LAUNCH or RUNNING), activated from LAUNCH on."""
    cmds.init()
    firmware_page(host)
    cmds.gctx_create(GCTX)
    if state == SnpGuestState.INIT:
        return
    cmds.launch_start(GCTX, POLICY)
    cmds.activate(GCTX, ASID)
    if state == SnpGuestState.RUNNING:
        cmds.launch_finish(GCTX)


# --- platform: SNP before SEV ---------------------------------------------------------------------------------------


def test_legacy_init_is_refused_until_snp_init(host):
    with host.psp().firmware() as fw, pytest.raises(status.InvalidPlatformState, match="SNP_INIT"):
        fw.init()
    commands(host).init()
    with host.psp().firmware() as fw:
        fw.init()  # SNP first, then SEV: what Linux does
        assert fw.platform == 1


def test_snp_init_needs_the_rmp_xen_sets_up(tmp_path):
    PhysicalMemory.create(tmp_path / "memory.img", 64 << 20).close()
    create_psp(tmp_path, snp="Milan", linux="6.12")
    client = PspClient(SimulatedPsp(tmp_path))
    cmds = SnpCommands(client)
    try:
        with pytest.raises(status.RmpInitRequired):
            cmds.init()
        assert cmds.platform_status().rmp_initialized is False
    finally:
        client.close()


def test_snp_init_after_sev_init_is_refused(host):
    cmds = commands(host)
    cmds.init()
    with host.psp().firmware() as fw:
        fw.init()
    with host.psp().firmware() as fw:
        fw.state["snp"]["platform"] = 0  # as after an SNP_SHUTDOWN with SEV left INIT
    with pytest.raises(status.InvalidPlatformState):
        cmds.init()


def test_snp_shutdown_needs_sev_shut_down_first(host):
    cmds = commands(host)
    cmds.init()
    with host.psp().firmware() as fw:
        fw.init()
    with pytest.raises(status.ShutdownRequired):
        cmds.shutdown_ex()
    with host.psp().firmware() as fw:
        fw.shutdown()
    cmds.shutdown_ex()
    assert cmds.platform_status().state == SnpPlatformState.UNINIT


def test_a_host_without_snp_is_unchanged(tmp_path, opened):
    host = opened(tmp_path / "host", linux="6.12")
    with host.psp().firmware() as fw:
        assert "snp" not in fw.state
        fw.init()  # legacy INIT as always
    with pytest.raises(DeviceError):  # no SNP ioctls: EINVAL, as a driver without SNP answers
        commands(host).init()
    assert not (host.root / "rmp.json").exists()


def test_sevd_sim_host_snp_flag(tmp_path):
    result = CliRunner().invoke(cli, ["host", "--snp", "--cpu", "genoa", "--create-only", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    psp = SimulatedPsp(tmp_path / "h")
    assert psp.snp is Product.GENOA and SimulatedXen(tmp_path / "h").rmp_entry(Spa(0)).hypervisor_owned
    psp.close()
    host = SimulatedHost(tmp_path / "h")
    assert (kds.kds_dir(host.root) / "vcek/v1/Genoa/cert_chain").exists()


# --- command × platform state (SNP ABI: platform state machine; each command's "platform must be INIT") ----------

# command → accepted in UNINIT?  (every command here is accepted in INIT except SNP_INIT/SNP_INIT_EX)
PLATFORM_TABLE = {
    "SNP_INIT": (True, False),
    "SNP_INIT_EX": (True, False),
    "SNP_PLATFORM_STATUS": (True, True),
    "SNP_SHUTDOWN_EX": (True, True),
    "SNP_DF_FLUSH": (False, True),
    "SNP_SET_CONFIG": (False, True),
    "SNP_COMMIT": (False, True),
    "SNP_GCTX_CREATE": (False, True),
}


def _issue(host, cmds, name):
    if name == "SNP_INIT":
        cmds.init()
    elif name == "SNP_INIT_EX":
        cmds.init_ex()
    elif name == "SNP_PLATFORM_STATUS":
        cmds.platform_status()
    elif name == "SNP_SHUTDOWN_EX":
        cmds.shutdown_ex()
    elif name == "SNP_DF_FLUSH":
        cmds.df_flush()
    elif name == "SNP_SET_CONFIG":
        cmds.set_config(TcbVersion.from_int(cmds.platform_status().current_tcb))
    elif name == "SNP_COMMIT":
        cmds.commit()
    elif name == "SNP_GCTX_CREATE":
        firmware_page(host, Spa(0x0300_0000))
        cmds.gctx_create(Spa(0x0300_0000))


@pytest.mark.parametrize("name", sorted(PLATFORM_TABLE))
@pytest.mark.parametrize("state", ["UNINIT", "INIT"])
def test_command_x_platform_state(host, name, state):
    cmds = commands(host)
    if state == "INIT":
        cmds.init()
    ok = PLATFORM_TABLE[name][0 if state == "UNINIT" else 1]
    if ok:
        _issue(host, cmds, name)
    else:
        with pytest.raises(status.InvalidPlatformState):
            _issue(host, cmds, name)


# --- command × guest state (SNP ABI: guest state machine) -----------------------------------------------------------

# (command, guest state) → the guest state after success, or the status the firmware answers.
GUEST_TABLE = {
    ("SNP_LAUNCH_START", "INIT"): "LAUNCH",
    ("SNP_LAUNCH_START", "LAUNCH"): "INVALID_GUEST_STATE",
    ("SNP_LAUNCH_START", "RUNNING"): "INVALID_GUEST_STATE",
    ("SNP_LAUNCH_UPDATE", "INIT"): "INVALID_GUEST_STATE",
    ("SNP_LAUNCH_UPDATE", "LAUNCH"): "LAUNCH",
    ("SNP_LAUNCH_UPDATE", "RUNNING"): "INVALID_GUEST_STATE",
    ("SNP_LAUNCH_FINISH", "INIT"): "INVALID_GUEST_STATE",
    ("SNP_LAUNCH_FINISH", "LAUNCH"): "RUNNING",
    ("SNP_LAUNCH_FINISH", "RUNNING"): "INVALID_GUEST_STATE",
    ("SNP_GUEST_REQUEST", "INIT"): "INVALID_GUEST_STATE",
    ("SNP_GUEST_REQUEST", "LAUNCH"): "INVALID_GUEST_STATE",
    ("SNP_GUEST_STATUS", "INIT"): "INIT",
    ("SNP_GUEST_STATUS", "LAUNCH"): "LAUNCH",
    ("SNP_GUEST_STATUS", "RUNNING"): "RUNNING",
    ("SNP_DECOMMISSION", "INIT"): "gone",
    ("SNP_DECOMMISSION", "LAUNCH"): "gone",
    ("SNP_DECOMMISSION", "RUNNING"): "gone",
}


@pytest.mark.parametrize("command,state", sorted(GUEST_TABLE))
def test_command_x_guest_state(host, command, state):
    cmds = commands(host)
    launched(host, cmds, SnpGuestState[state])
    expected = GUEST_TABLE[(command, state)]

    def run():
        if command == "SNP_LAUNCH_START":
            cmds.launch_start(GCTX, POLICY)
        elif command == "SNP_LAUNCH_UPDATE":
            guest_page(host, Spa(PAGES), 0)
            cmds.launch_update(GCTX, Spa(PAGES), PageType.NORMAL)
        elif command == "SNP_LAUNCH_FINISH":
            cmds.launch_finish(GCTX)
        elif command == "SNP_GUEST_REQUEST":
            cmds.guest_request(GCTX, bytes(0x60))
        elif command == "SNP_GUEST_STATUS":
            cmds.guest_status(GCTX)
        elif command == "SNP_DECOMMISSION":
            cmds.decommission(GCTX)

    if expected in status.FirmwareStatus.__members__:
        with pytest.raises(status.error_class(status.FirmwareStatus[expected])):
            run()
    else:
        run()
        if expected == "gone":
            with pytest.raises(status.InvalidGuest):
                cmds.guest_status(GCTX)
        else:
            assert cmds.guest_status(GCTX).state == SnpGuestState[expected]


def test_guest_commands_on_a_page_that_is_no_context_are_invalid_guest(host):
    cmds = commands(host)
    cmds.init()
    with pytest.raises(status.InvalidGuest):
        cmds.launch_start(GCTX, POLICY)


# --- pages and their RMP preconditions (SNP ABI "Page States"; SNP_GCTX_CREATE, SNP_LAUNCH_UPDATE) -------------------

# The RMP state a page is put in by the hypervisor → what SNP_LAUNCH_UPDATE answers (the guest's ASID is 1).
PAGE_STATE_TABLE = {
    "hypervisor": "INVALID_PAGE_STATE",  # not assigned
    "pre-guest": "SUCCESS",  # assigned to the guest's ASID, not validated, mutable
    "other guest": "INVALID_PAGE_OWNER",  # assigned to another ASID
    "firmware": "INVALID_PAGE_STATE",  # assigned to ASID 0, immutable
    "2 MiB entry": "INVALID_PAGE_SIZE",  # a 4 KiB request for a page of a 2 MiB entry
    "already measured": "INVALID_PAGE_STATE",  # validated by an earlier SNP_LAUNCH_UPDATE
}


@pytest.mark.parametrize("page_state", sorted(PAGE_STATE_TABLE))
def test_launch_update_page_preconditions(host, page_state):
    cmds = commands(host)
    launched(host, cmds)
    page = Spa(0x0400_0000)
    xen = host.xen()
    if page_state == "pre-guest":
        guest_page(host, page, 0x1000)
    elif page_state == "other guest":
        guest_page(host, page, 0x1000, asid=Asid(2))
    elif page_state == "firmware":
        firmware_page(host, page)
    elif page_state == "2 MiB entry":
        xen.rmpupdate(page, assigned=True, asid=ASID, gpa=0, page_size=1)
    elif page_state == "already measured":
        guest_page(host, page, 0x1000)
        cmds.launch_update(GCTX, page, PageType.NORMAL)
    expected = PAGE_STATE_TABLE[page_state]
    if expected == "SUCCESS":
        cmds.launch_update(GCTX, page, PageType.NORMAL)
        entry = xen.rmp_entry(page)
        assert entry.validated and entry.asid == ASID
    else:
        with pytest.raises(status.error_class(status.FirmwareStatus[expected])):
            cmds.launch_update(GCTX, page, PageType.NORMAL)


GCTX_PAGE_TABLE = {
    "hypervisor": "INVALID_PAGE_STATE",
    "firmware": "SUCCESS",
    "guest": "INVALID_PAGE_STATE",
    "2 MiB entry": "INVALID_PAGE_SIZE",
}


@pytest.mark.parametrize("page_state", sorted(GCTX_PAGE_TABLE))
def test_gctx_create_page_preconditions(host, page_state):
    cmds = commands(host)
    cmds.init()
    xen = host.xen()
    if page_state == "firmware":
        firmware_page(host)
    elif page_state == "guest":
        guest_page(host, GCTX, 0)
    elif page_state == "2 MiB entry":
        xen.rmpupdate(GCTX, assigned=True, asid=0, immutable=True, page_size=1)
    expected = GCTX_PAGE_TABLE[page_state]
    if expected == "SUCCESS":
        cmds.gctx_create(GCTX)
        assert cmds.guest_status(GCTX).state == SnpGuestState.INIT
    else:
        with pytest.raises(status.error_class(status.FirmwareStatus[expected])):
            cmds.gctx_create(GCTX)


def test_activate_takes_an_asid_of_the_snp_range_once(host):
    cmds = commands(host)
    cmds.init()
    firmware_page(host)
    cmds.gctx_create(GCTX)
    cmds.launch_start(GCTX, POLICY)
    with pytest.raises(status.InvalidAsid):
        cmds.activate(GCTX, Asid(5))  # a plain-SEV ASID
    cmds.activate(GCTX, ASID)
    other = Spa(0x0300_0000)
    firmware_page(host, other)
    cmds.gctx_create(other)
    cmds.launch_start(other, POLICY)
    with pytest.raises(status.AsidOwned):
        cmds.activate(other, ASID)


def test_launch_start_refuses_a_policy_without_the_mbo_bit(host):
    cmds = commands(host)
    cmds.init()
    firmware_page(host)
    cmds.gctx_create(GCTX)
    req_policy = SnpPolicy.make()
    object.__setattr__(req_policy, "value", 0x10000)  # what a careless caller might send
    with pytest.raises(status.PolicyFailure):
        cmds.launch_start(GCTX, req_policy)


# --- a whole launch: every page type, the digest, ID block, report, keys ---------------------------------------------

IMAGE = bytes(range(256)) * 16
VMSA_PAGE = b"\x5a" * 4096


def _keypair():
    key = ec.generate_private_key(ec.SECP384R1())
    numbers = key.public_key().public_numbers()
    return key, snp.ecdsa_pubkey_bytes(numbers.x, numbers.y)


def _sign(key, message):
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA384())))
    return snp.ecdsa_sig_bytes(r, s)


def _launch(host, *, cpuid_table=None):
    """Launch a guest with one page of each type; return (expected digest, secrets page SPA)."""
    cmds = commands(host)
    cmds.init()
    firmware_page(host)
    cmds.gctx_create(GCTX)
    cmds.launch_start(GCTX, POLICY)
    cmds.activate(GCTX, ASID)
    memory = host.psp().memory
    layout = [
        (PageType.NORMAL, 0x0000, IMAGE),
        (PageType.ZERO, 0x1000, b"\xff" * 4096),
        (PageType.UNMEASURED, 0x2000, b"u" * 4096),
        (PageType.SECRETS, 0x3000, None),
        (PageType.CPUID, 0x4000, cpuid_table),
        (PageType.VMSA, snp.VMSA_GPA, VMSA_PAGE),
    ]
    digest = snp.ZERO_DIGEST
    for i, (kind, gpa, data) in enumerate(layout):
        spa = Spa(PAGES + i * 0x1000)
        if data is not None:
            memory.write(spa, data)
        guest_page(host, spa, gpa)
        cmds.launch_update(GCTX, spa, kind)
        digest = snp.extend(digest, kind, gpa, data if kind in (PageType.NORMAL, PageType.VMSA) else None)
    return cmds, digest, Spa(PAGES + 3 * 0x1000)


def _request(cmds, host, secrets_spa, msg_type, payload, seqno=1, vmpck=0):
    key = snp_msg.vmpck(host.psp().memory.read(secrets_spa, 4096), vmpck)
    message = snp_msg.seal(key, snp_msg.MsgHeader(seqno, msg_type, 0, vmpck), payload)
    header, body = snp_msg.open_message(key, cmds.guest_request(GCTX, message))
    assert (header.seqno, header.msg_type) == (seqno + 1, msg_type + 1)
    return body


def test_launch_digest_of_every_page_type_and_the_report(host):
    cmds, digest, secrets = _launch(host)
    memory = host.psp().memory
    assert memory.read(Spa(PAGES + 0x1000), 4096) == bytes(4096)  # ZERO page zeroed by the firmware
    block = snp.IdBlock(launch_digest=digest, family_id=b"F" * 16, image_id=b"I" * 16, guest_svn=3, policy=int(POLICY))
    id_key, id_pub = _keypair()
    author_key, author_pub = _keypair()
    auth = snp.IdAuth(
        id_block_sig=_sign(id_key, block.to_bytes()),
        id_key=id_pub,
        id_key_sig=_sign(author_key, id_pub),
        author_key=author_pub,
    )
    cmds.launch_finish(GCTX, id_block=block.to_bytes(), id_auth=auth.to_bytes(), auth_key_en=True, host_data=b"h" * 32)
    assert cmds.guest_status(GCTX).state == SnpGuestState.RUNNING

    body = _request(cmds, host, secrets, snp_msg.MsgType.REPORT_REQ, snp_msg.ReportRequest(b"n" * 64).to_bytes())
    rsp_status, size = struct.unpack_from("<II", body)
    assert (rsp_status, size) == (0, snp.REPORT_SIZE)
    report = snp.AttestationReport.parse(body[0x20 : 0x20 + size])
    assert report.measurement == digest and report.report_data == b"n" * 64 and report.host_data == b"h" * 32
    assert report.id_key_digest == hashlib.sha384(id_pub).digest()
    assert report.author_key_digest == hashlib.sha384(author_pub).digest() and report.author_key_en
    assert (report.family_id, report.image_id, report.guest_svn, report.policy) == (
        b"F" * 16, b"I" * 16, 3, int(POLICY),
    )  # fmt: skip
    assert report.signing_key == snp.SigningKey.VCEK and report.cpuid_fam_id == 0x19

    # The VCEK the key server publishes for the reported TCB verifies the report; the chain verifies to the ARK.
    tree = kds.kds_dir(host.root)
    chip = report.chip_id
    vcek_path = tree / snp.kds_vcek_path(Product.MILAN, chip, report.reported_tcb).lstrip("/")
    vcek = x509.load_der_x509_certificate(vcek_path.read_bytes())
    ask, ark = x509.load_pem_x509_certificates((tree / "vcek/v1/Milan/cert_chain").read_bytes())
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    ark.public_key().verify(ark.signature, ark.tbs_certificate_bytes, pss, hashes.SHA384())
    ark.public_key().verify(ask.signature, ask.tbs_certificate_bytes, pss, hashes.SHA384())
    ask.public_key().verify(vcek.signature, vcek.tbs_certificate_bytes, pss, hashes.SHA384())
    r, s = report.signature_rs()
    vcek.public_key().verify(encode_dss_signature(r, s), report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    assert vcek.serial_number > 0
    ext = {e.oid.dotted_string: e.value.value for e in vcek.extensions}
    assert ext[snp.OID_HWID] == bytes([0x04, 64]) + chip
    assert ext[snp.OID_BL_SPL] == bytes([0x02, 0x01, report.reported_tcb.boot_loader])
    assert ext[snp.OID_UCODE_SPL] == bytes([0x02, 0x02, 0x00, report.reported_tcb.microcode])  # 213: a leading 0
    assert urllib.parse.urlsplit(snp.kds_vcek_path(Product.MILAN, chip, report.reported_tcb)).query.startswith("blSPL")


def test_id_block_with_a_wrong_digest_or_signature_is_refused(host):
    cmds, digest, _secrets = _launch(host)
    id_key, id_pub = _keypair()
    wrong = snp.IdBlock(launch_digest=b"x" * 48, policy=int(POLICY))
    auth = snp.IdAuth(id_block_sig=_sign(id_key, wrong.to_bytes()), id_key=id_pub)
    with pytest.raises(status.BadMeasurement):
        cmds.launch_finish(GCTX, id_block=wrong.to_bytes(), id_auth=auth.to_bytes())
    right = snp.IdBlock(launch_digest=digest, policy=int(POLICY))
    forged = snp.IdAuth(id_block_sig=_sign(_keypair()[0], right.to_bytes()), id_key=id_pub)
    with pytest.raises(status.BadSignature):
        cmds.launch_finish(GCTX, id_block=right.to_bytes(), id_auth=forged.to_bytes())
    assert cmds.guest_status(GCTX).state == SnpGuestState.LAUNCH


def test_a_cpuid_table_the_chip_does_not_allow_is_corrected_and_refused(host):
    table = bytearray(4096)
    struct.pack_into("<I", table, 0, 1)
    struct.pack_into("<IIQQIIII", table, 0x10, 0x8000001F, 0, 0, 0, 0xFFFFFFFF, 0, 0, 0)
    cmds = commands(host)
    cmds.init()
    firmware_page(host)
    cmds.gctx_create(GCTX)
    cmds.launch_start(GCTX, POLICY)
    cmds.activate(GCTX, ASID)
    spa = Spa(PAGES)
    host.psp().memory.write(spa, bytes(table))
    guest_page(host, spa, 0x4000)
    with pytest.raises(status.InvalidParam):
        cmds.launch_update(GCTX, spa, PageType.CPUID)
    corrected = host.psp().memory.read(spa, 4096)
    eax = struct.unpack_from("<I", corrected, 0x10 + 0x18)[0]
    assert eax == 0x0001_781F  # the chip's value written back
    cmds.launch_update(GCTX, spa, PageType.CPUID)  # the corrected table is accepted


def test_guest_requests_keep_sequence_numbers_and_derive_stable_keys(host):
    cmds, _digest, secrets = _launch(host)
    cmds.launch_finish(GCTX)
    fields = snp_msg.GuestField.MEASUREMENT | snp_msg.GuestField.GUEST_POLICY
    req = snp_msg.KeyRequest(guest_field_select=int(fields)).to_bytes()
    first = _request(cmds, host, secrets, snp_msg.MsgType.KEY_REQ, req, seqno=1)
    second = _request(cmds, host, secrets, snp_msg.MsgType.KEY_REQ, req, seqno=3)
    assert struct.unpack_from("<I", first)[0] == 0 and first[0x20:] == second[0x20:] and any(first[0x20:])
    with pytest.raises(status.InvalidParam):  # a replayed sequence number
        _request(cmds, host, secrets, snp_msg.MsgType.KEY_REQ, req, seqno=3)
    key = snp_msg.vmpck(host.psp().memory.read(secrets, 4096), 1)
    tampered = bytearray(snp_msg.seal(key, snp_msg.MsgHeader(1, snp_msg.MsgType.KEY_REQ, 0, 0), req))
    with pytest.raises(status.InvalidParam):  # sealed under VMPCK1 but naming VMPCK0
        cmds.guest_request(GCTX, bytes(tampered))


def test_set_config_masks_the_chip_id_and_lowers_the_reported_tcb(host):
    cmds, _digest, secrets = _launch(host)
    cmds.launch_finish(GCTX)
    current = TcbVersion.from_int(cmds.platform_status().current_tcb)
    lower = TcbVersion(current.boot_loader, current.tee, current.snp - 1, current.microcode)
    cmds.set_config(lower, mask_chip_id=True)
    st = cmds.platform_status()
    assert st.reported_tcb == int(lower) and st.mask_chip_id
    body = _request(cmds, host, secrets, snp_msg.MsgType.REPORT_REQ, snp_msg.ReportRequest().to_bytes())
    report = snp.AttestationReport.parse(body[0x20 : 0x20 + snp.REPORT_SIZE])
    assert report.chip_id == bytes(64) and report.reported_tcb == lower
    higher = TcbVersion(current.boot_loader, current.tee, current.snp + 1, current.microcode)
    with pytest.raises(status.InvalidParam):
        cmds.set_config(higher)
    cmds.commit()


def test_vlek_signs_reports_once_loaded(host):
    cmds, _digest, secrets = _launch(host)
    cmds.launch_finish(GCTX)
    body = _request(cmds, host, secrets, snp_msg.MsgType.REPORT_REQ, snp_msg.ReportRequest(key_sel=2).to_bytes())
    assert struct.unpack_from("<I", body)[0] == snp_msg.RSP_STATUS_INVALID_KEY
    cmds.vlek_load(b"v" * 432)
    assert cmds.platform_status().vlek_en
    body = _request(cmds, host, secrets, snp_msg.MsgType.REPORT_REQ, snp_msg.ReportRequest().to_bytes(), seqno=3)
    assert snp.AttestationReport.parse(body[0x20 : 0x20 + snp.REPORT_SIZE]).signing_key == snp.SigningKey.VLEK


def test_decommission_then_reclaim_returns_the_context_page(host):
    cmds = commands(host)
    launched(host, cmds, SnpGuestState.RUNNING)
    with pytest.raises(status.InvalidPageState):
        cmds.page_reclaim(GCTX)  # still a live guest's context
    cmds.decommission(GCTX)
    cmds.page_reclaim(GCTX)
    xen = host.xen()
    assert not xen.rmp_entry(GCTX).immutable
    xen.rmpupdate(GCTX, assigned=False)  # the hypervisor takes it back
    assert xen.rmp_entry(GCTX).hypervisor_owned


def test_a_simulated_psp_opened_twice_shares_the_rmp(host):
    commands(host).init()
    other = PspClient(SimulatedPsp(host.root))
    try:
        assert SnpCommands(other).platform_status().state == SnpPlatformState.INIT
    finally:
        other.close()
