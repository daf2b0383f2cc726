"""sevd.abi.snp against the SNP firmware ABI, Linux's headers and independent implementations.

Known answers: the launch digest of a small synthetic launch computed by virtee's `sev-snp-measure` (recorded
below, and recomputed through its Python API when it is installed: a test dependency only); command ids and
status codes transcribed from Linux `include/linux/psp-sev.h` / `include/uapi/linux/psp-sev.h`; report offsets
from the SNP ABI's ATTESTATION_REPORT table as snpguest parses it.
"""

import hashlib
import struct

import pytest

from sevd._psp import ffi
from sevd.abi import snp
from sevd.abi.snp import (
    AttestationReport,
    IdAuth,
    IdBlock,
    PageType,
    Product,
    SnpCommand,
    SnpPolicy,
    SnpPolicyFlag,
    TcbLayout,
    TcbVersion,
)
from sevd.abi.status import FirmwareStatus, error_class
from sevd.errors import InputError

# --- command ids and statuses, transcribed from Linux (enum sev_cmd; sev_ret_code) -----------------------------------

LINUX_SNP_COMMANDS = {
    "SNP_INIT": 0x081, "SNP_SHUTDOWN": 0x082, "SNP_PLATFORM_STATUS": 0x083, "SNP_DF_FLUSH": 0x084,
    "SNP_INIT_EX": 0x085, "SNP_SHUTDOWN_EX": 0x086, "SNP_DECOMMISSION": 0x090, "SNP_ACTIVATE": 0x091,
    "SNP_GUEST_STATUS": 0x092, "SNP_GCTX_CREATE": 0x093, "SNP_GUEST_REQUEST": 0x094, "SNP_ACTIVATE_EX": 0x095,
    "SNP_LAUNCH_START": 0x0A0, "SNP_LAUNCH_UPDATE": 0x0A1, "SNP_LAUNCH_FINISH": 0x0A2,
    "SNP_DBG_DECRYPT": 0x0B0, "SNP_DBG_ENCRYPT": 0x0B1, "SNP_PAGE_SWAP_OUT": 0x0C0, "SNP_PAGE_SWAP_IN": 0x0C1,
    "SNP_PAGE_MOVE": 0x0C2, "SNP_PAGE_MD_INIT": 0x0C3, "SNP_PAGE_SET_STATE": 0x0C6, "SNP_PAGE_RECLAIM": 0x0C7,
    "SNP_PAGE_UNSMASH": 0x0C8, "SNP_CONFIG": 0x0C9, "SNP_DOWNLOAD_FIRMWARE_EX": 0x0CA, "SNP_COMMIT": 0x0CB,
    "SNP_VLEK_LOAD": 0x0CD, "SNP_FEATURE_INFO": 0x0CE,
}  # fmt: skip

LINUX_SNP_STATUSES = {
    "INVALID_PAGE_SIZE": 0x19, "INVALID_PAGE_STATE": 0x1A, "INVALID_MDATA_ENTRY": 0x1B, "INVALID_PAGE_OWNER": 0x1C,
    "AEAD_OFLOW": 0x1D, "RING_BUFFER_EXIT": 0x1F, "RMP_INIT_REQUIRED": 0x20, "BAD_SVN": 0x21, "BAD_VERSION": 0x22,
    "SHUTDOWN_REQUIRED": 0x23, "UPDATE_FAILED": 0x24, "RESTORE_REQUIRED": 0x25, "RMP_INITIALIZATION_FAILED": 0x26,
    "INVALID_KEY": 0x27,
}  # fmt: skip


@pytest.mark.parametrize("name,value", sorted(LINUX_SNP_COMMANDS.items()))
def test_command_id_is_linuxs(name, value):
    assert SnpCommand[name] == value


def test_no_command_beyond_linuxs():
    assert {c.name for c in SnpCommand} == set(LINUX_SNP_COMMANDS)


@pytest.mark.parametrize("name,value", sorted(LINUX_SNP_STATUSES.items()))
def test_snp_status_is_spec_named_exception(name, value):
    assert FirmwareStatus[name] == value
    assert error_class(value).status == value


def test_user_ioctl_ids_follow_get_id2():
    assert [int(c) for c in snp.SnpUserCommand] == [9, 10, 11, 12]


# --- buffers --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "struct_name,size",
    [
        ("sev_data_snp_addr", 8),
        ("sev_data_snp_activate", 12),
        ("sev_data_snp_launch_start", 0x30),
        ("sev_data_snp_launch_update", 0x20),
        ("sev_data_snp_launch_finish", 0x40),
        ("sev_data_snp_guest_request", 0x18),
        ("sev_data_snp_init_ex", 0x40),
        ("sevd_snp_platform_status", 0x20),
        ("sevd_snp_config", 0x40),
        ("sevd_snp_vlek_load", 0x10),
    ],
)
def test_buffer_sizes(struct_name, size):
    assert ffi.sizeof(f"struct {struct_name}") == size


def test_launch_update_buffer_is_laid_out_as_linuxs_bitfields():
    buf = ffi.new("struct sev_data_snp_launch_update *")
    buf.gctx_paddr = 0x1000
    buf.flags = snp.launch_update_flags(PageType.CPUID, imi_page=True)
    buf.address = 0x2000
    buf.vmpl1_perms, buf.vmpl2_perms, buf.vmpl3_perms = 1, 2, 3
    raw = bytes(ffi.buffer(buf))
    # u32 page_size:1, page_type:3, imi_page:1 → 6 << 1 | 1 << 4; then rsvd3:8, vmpl1:8, vmpl2:8, vmpl3:8.
    assert raw[8:12] == struct.pack("<I", 0x1C)
    assert raw[0x18:0x1C] == bytes([0, 1, 2, 3])


# --- policy ---------------------------------------------------------------------------------------------------------


def test_policy_bits_are_linuxs():
    assert SnpPolicyFlag.SMT == 1 << 16 and SnpPolicyFlag.RESERVED_MBO == 1 << 17
    assert SnpPolicyFlag.MIGRATE_MA == 1 << 18 and SnpPolicyFlag.DEBUG == 1 << 19
    assert SnpPolicyFlag.SINGLE_SOCKET == 1 << 20 and SnpPolicyFlag.CXL_ALLOW == 1 << 21
    assert SnpPolicyFlag.MEM_AES_256_XTS == 1 << 22 and SnpPolicyFlag.RAPL_DIS == 1 << 23
    assert SnpPolicyFlag.CIPHERTEXT_HIDING == 1 << 24 and SnpPolicyFlag.PAGE_SWAP_DISABLE == 1 << 25


def test_policy_parse_and_fields():
    policy = SnpPolicy.parse("smt|debug")
    assert int(policy) == 0x30000 | 1 << 19
    assert SnpPolicy(0x30000).describe() == "SMT abi>=0.0"
    made = SnpPolicy.make(SnpPolicyFlag.SMT, abi_major=1, abi_minor=55)
    assert (made.abi_major, made.abi_minor, int(made)) == (1, 55, 0x30137)
    assert made.requires_abi_newer_than(1, 51) and not made.requires_abi_newer_than(1, 55)


@pytest.mark.parametrize("value", [0x10000, 0x30000 | 1 << 26, 1 << 64 | 0x20000, -1])
def test_policy_refuses_mbo_clear_reserved_set_or_out_of_range(value):
    with pytest.raises(InputError):
        SnpPolicy(value)


# --- TCB ------------------------------------------------------------------------------------------------------------


def test_tcb_layout_milan_genoa():
    tcb = TcbVersion(boot_loader=3, tee=0, snp=8, microcode=115)
    assert tcb.to_bytes() == bytes([3, 0, 0, 0, 0, 0, 8, 115])
    assert TcbVersion.from_int(int(tcb)) == tcb


def test_tcb_layout_turin():
    tcb = TcbVersion(boot_loader=1, tee=2, snp=3, microcode=4, fmc=5)
    assert tcb.to_bytes() == bytes([5, 1, 2, 3, 0, 0, 0, 4])
    assert TcbVersion.from_bytes(tcb.to_bytes(), TcbLayout.TURIN) == tcb
    assert TcbLayout.for_cpuid(0x1A) is TcbLayout.TURIN and TcbLayout.for_cpuid(0x19) is TcbLayout.MILAN_GENOA


# --- report ---------------------------------------------------------------------------------------------------------


def _report_bytes(version=5, family=0x19):
    raw = bytearray(snp.REPORT_SIZE)
    struct.pack_into("<IIQ", raw, 0, version, 7, 0x30000)
    raw[0x038:0x040] = bytes([3, 0, 0, 0, 0, 0, 8, 115])  # current_tcb
    struct.pack_into("<I", raw, 0x048, 1 << 0 | 1 << 2)  # author key, signed by VLEK
    raw[0x050:0x090] = b"R" * 64
    raw[0x090:0x0C0] = b"M" * 48
    raw[0x0C0:0x0E0] = b"H" * 32
    raw[0x180:0x188] = bytes([2, 0, 0, 0, 0, 0, 7, 100])  # reported_tcb
    raw[0x188:0x18B] = bytes([family, 1, 1])
    raw[0x1A0:0x1E0] = b"C" * 64
    raw[0x1E8:0x1EB] = bytes([21, 55, 1])
    raw[0x2A0 : 0x2A0 + 72] = (12345).to_bytes(72, "little")
    raw[0x2E8 : 0x2E8 + 72] = (67890).to_bytes(72, "little")
    return bytes(raw)


def test_report_fields_at_the_spec_offsets():
    raw = _report_bytes()
    report = AttestationReport.parse(raw)
    assert (report.version, report.guest_svn, report.policy) == (5, 7, 0x30000)
    assert report.current_tcb == TcbVersion(3, 0, 8, 115)
    assert report.reported_tcb == TcbVersion(2, 0, 7, 100)
    assert (report.author_key_en, report.mask_chip_key, report.signing_key) == (True, False, snp.SigningKey.VLEK)
    assert report.report_data == b"R" * 64 and report.measurement == b"M" * 48 and report.host_data == b"H" * 32
    assert report.chip_id == b"C" * 64
    assert (report.current_build, report.current_minor, report.current_major) == (21, 55, 1)
    assert report.signature_rs() == (12345, 67890)
    assert report.to_bytes() == raw
    assert report.signed_bytes() == raw[:0x2A0]


def test_turin_report_decodes_the_fmc_layout():
    report = AttestationReport.parse(_report_bytes(family=0x1A))
    assert report.current_tcb == TcbVersion(boot_loader=0, tee=0, snp=0, microcode=115, fmc=3)


def test_version_2_report_has_no_cpuid_fields():
    report = AttestationReport.parse(_report_bytes(version=2, family=0x1A))
    assert report.cpuid_fam_id == 0 and report.tcb_layout is TcbLayout.MILAN_GENOA


def test_report_of_wrong_size_is_refused():
    with pytest.raises(InputError, match="1184"):
        AttestationReport.parse(bytes(1000))


# --- launch digest --------------------------------------------------------------------------------------------------

# sev-snp-measure 0.0.13, GCTX(): update_normal_pages(0x1000, bytes(range(256)) * 32); update_zero_pages(0x3000, 4096);
# update_unmeasured_pages(0x4000, 4096); update_secrets_page(0x5000); update_cpuid_page(0x6000);
# update_vmsa_page(b"\xaa" * 4096); hex_ld().
SEV_SNP_MEASURE_DIGEST = (
    "33269d08cb70cedd8c0ee7c8c0668becd88e7db7447e3b076d59d448d0171d1c800d68fb8b154df6612ca3d0b9be153c"
)
IMAGE = bytes(range(256)) * 32
VMSA = b"\xaa" * 4096


def _our_digest() -> bytes:
    ld = snp.ZERO_DIGEST
    ld = snp.extend(ld, PageType.NORMAL, 0x1000, IMAGE[:4096])
    ld = snp.extend(ld, PageType.NORMAL, 0x2000, IMAGE[4096:])
    ld = snp.extend(ld, PageType.ZERO, 0x3000)
    ld = snp.extend(ld, PageType.UNMEASURED, 0x4000)
    ld = snp.extend(ld, PageType.SECRETS, 0x5000)
    ld = snp.extend(ld, PageType.CPUID, 0x6000)
    return snp.extend(ld, PageType.VMSA, snp.VMSA_GPA, VMSA)


def test_launch_digest_matches_the_recorded_sev_snp_measure_answer():
    assert _our_digest().hex() == SEV_SNP_MEASURE_DIGEST


def test_launch_digest_matches_sev_snp_measure_live():
    gctx = pytest.importorskip("sevsnpmeasure.gctx")
    ctx = gctx.GCTX()
    ctx.update_normal_pages(0x1000, IMAGE)
    ctx.update_zero_pages(0x3000, 4096)
    ctx.update_unmeasured_pages(0x4000, 4096)
    ctx.update_secrets_page(0x5000)
    ctx.update_cpuid_page(0x6000)
    ctx.update_vmsa_page(VMSA)
    assert ctx.ld() == _our_digest()


def test_page_info_layout():
    info = snp.page_info(b"D" * 48, b"C" * 48, PageType.NORMAL, 0x1234000, imi_page=True, vmpl1_perms=1,
                         vmpl2_perms=2, vmpl3_perms=3)  # fmt: skip
    assert len(info) == 0x70
    assert info[0x60:0x70] == struct.pack("<HBBBBBBQ", 0x70, 1, 1, 3, 2, 1, 0, 0x1234000)
    assert (
        snp.extend(b"D" * 48, PageType.ZERO, 0x1234000)
        == hashlib.sha384(snp.page_info(b"D" * 48, bytes(48), PageType.ZERO, 0x1234000)).digest()
    )


def test_a_measured_page_needs_its_contents():
    with pytest.raises(InputError):
        snp.extend(snp.ZERO_DIGEST, PageType.NORMAL, 0)


# --- ID block, KDS --------------------------------------------------------------------------------------------------


def test_id_block_and_auth_roundtrip():
    block = IdBlock(launch_digest=b"L" * 48, family_id=b"F" * 16, image_id=b"I" * 16, guest_svn=2, policy=0x30000)
    raw = block.to_bytes()
    assert len(raw) == 0x60 and raw[0x50:0x60] == struct.pack("<IIQ", 1, 2, 0x30000)
    assert IdBlock.parse(raw) == block
    key = snp.ecdsa_pubkey_bytes(5, 6)
    assert len(key) == 0x404 and snp.parse_ecdsa_pubkey(key) == (5, 6)
    auth = IdAuth(id_block_sig=snp.ecdsa_sig_bytes(7, 8), id_key=key)
    raw_auth = auth.to_bytes()
    assert len(raw_auth) == 0x1000 and raw_auth[0x240:0x644] == key
    assert IdAuth.parse(raw_auth) == auth and snp.parse_ecdsa_sig(auth.id_block_sig) == (7, 8)


def test_kds_paths():
    chip = bytes(range(64))
    tcb = TcbVersion(boot_loader=3, tee=0, snp=8, microcode=115)
    assert snp.kds_vcek_path(Product.MILAN, chip, tcb) == (
        f"/vcek/v1/Milan/{chip.hex()}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115"
    )
    turin = TcbVersion(boot_loader=1, tee=2, snp=3, microcode=4, fmc=5)
    assert snp.kds_vcek_path(Product.TURIN, chip, turin) == (
        "/vcek/v1/Turin/0001020304050607?fmcSPL=5&blSPL=1&teeSPL=2&snpSPL=3&ucodeSPL=4"
    )
    assert snp.kds_chain_path(Product.GENOA) == "/vcek/v1/Genoa/cert_chain"
