"""`sev-owner snp measure` and `snp id-block` against virtee's sev-snp-measure and snp-create-id-block (PyPI),
run as separate programs: the digests, VMSAs and ID blocks must be theirs byte for byte."""

from __future__ import annotations

import base64
import ctypes
import hashlib
import os
import pathlib
import struct
import subprocess
import sys
import uuid

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from test_owner_pvh import ENTRY, kernel_elf

from sevd.abi import snp
from sevd.cli.owner import main
from sevd.owner.pvh import load_pvh_image
from sevd.owner.snp import measure, ovmf, vmsa

BIN = pathlib.Path(sys.executable).parent
DEBIAN_OVMF = pathlib.Path("/usr/share/ovmf/OVMF.fd")
needs_ovmf = pytest.mark.skipif(not DEBIAN_OVMF.exists(), reason="Debian's ovmf package is not installed")


def virtee(*args: str, cwd: pathlib.Path | None = None) -> str:
    out = subprocess.run([str(BIN / "sev-snp-measure"), *args], capture_output=True, text=True, check=True, cwd=cwd)
    return out.stdout.strip().splitlines()[-1]


def ours(*args: str, cwd: pathlib.Path | None = None) -> str:
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(main, ["snp", "measure", *args])
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


# -- a synthetic OVMF-like image: the footer GUID table, SEV metadata with a kernel-hashes page ------------------


def guid_entry(guid: str, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def synthetic_ovmf(size: int = 0x10000, hashes_offset: int = 0xC00) -> bytes:
    """size bytes ending at 4 GiB; metadata: SEC_MEM, SECRETS, CPUID, KERNEL_HASHES pages below 1 MiB."""
    img = bytearray(os.urandom(size))
    sections = [(0x800000, 0x3000, 1), (0x803000, 0x1000, 2), (0x804000, 0x1000, 3), (0x805000, 0x1000, 0x10)]
    meta = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
    meta += b"".join(struct.pack("<III", *s) for s in sections)
    meta_at = 0x1000
    img[meta_at : meta_at + len(meta)] = meta
    table = guid_entry(ovmf.SEV_ES_RESET_BLOCK_GUID.__str__(), struct.pack("<I", 0xFFFFF000 + 0x800) + b"\0" * 4)
    table += guid_entry(str(ovmf.SEV_HASH_TABLE_RV_GUID), struct.pack("<II", 0x805000 + hashes_offset, 0x400))
    table += guid_entry(str(ovmf.SEV_METADATA_GUID), struct.pack("<I", size - meta_at))
    footer = struct.pack("<H", len(table) + 18) + ovmf.FOOTER_GUID.bytes_le
    end = size - 32
    img[end - 18 - len(table) : end] = table + footer
    return bytes(img)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("ovmf")
    (d / "OVMF.fd").write_bytes(synthetic_ovmf())
    (d / "vmlinuz").write_bytes(os.urandom(50000))
    (d / "initrd").write_bytes(os.urandom(30000))
    return d


# -- measure ---------------------------------------------------------------------------------------------------


@needs_ovmf
def test_debian_ovmf_has_snp_metadata_and_no_kernel_hashes_section() -> None:
    image = ovmf.OvmfImage.parse(DEBIAN_OVMF.read_bytes(), str(DEBIAN_OVMF))
    assert image.has_section(ovmf.SectionType.SNP_SECRETS)
    assert not image.has_section(ovmf.SectionType.SNP_KERNEL_HASHES)


@needs_ovmf
@pytest.mark.parametrize(
    "args",
    [
        ["--vcpus", "1", "--vcpu-type", "EPYC-v4"],
        ["--vcpus", "2", "--vcpu-type", "EPYC-Milan"],
        ["--vcpus", "4", "--vcpu-type", "EPYC-Genoa", "--guest-features", "0x21"],
        ["--vcpus", "3", "--vcpu-sig", "0xa00f11", "--guest-features", "0x1"],
        ["--vcpus", "2", "--vcpu-family", "25", "--vcpu-model", "17", "--vcpu-stepping", "0"],
        ["--vcpus", "2", "--vmm-type", "ec2"],
        ["--vcpus", "1", "--vmm-type", "ec2", "--guest-features", "0x21"],
        ["--vcpus", "8", "--vcpu-type", "EPYC-Turin", "--output-format", "base64"],
    ],
)
def test_debian_ovmf_digest_is_sev_snp_measures(args: list[str]) -> None:
    common = ["--mode", "snp", "--ovmf", str(DEBIAN_OVMF), *args]
    assert ours(*common) == virtee(*common)


@pytest.mark.parametrize(
    "kernel_args",
    [
        [],
        ["--kernel", "vmlinuz"],
        ["--kernel", "vmlinuz", "--initrd", "initrd"],
        ["--kernel", "vmlinuz", "--initrd", "initrd", "--append", "console=ttyS0 root=/dev/vda1"],
    ],
)
@pytest.mark.parametrize("vmm", ["QEMU", "ec2"])
def test_kernel_hashes_table_digest_is_sev_snp_measures(synth: pathlib.Path, kernel_args: list[str], vmm: str) -> None:
    common = ["--mode", "snp", "--ovmf", "OVMF.fd", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--vmm-type", vmm]
    assert ours(*common, *kernel_args, cwd=synth) == virtee(*common, *kernel_args, cwd=synth)


@needs_ovmf
def test_dump_vmsa_writes_sev_snp_measures_pages(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    args = ["--mode", "snp", "--ovmf", str(DEBIAN_OVMF), "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--dump-vmsa"]
    assert ours(*args, cwd=tmp_path / "a") == virtee(*args, cwd=tmp_path / "b")
    for name in ("vmsa0.bin", "vmsa1.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@needs_ovmf
def test_digest_alone_on_the_last_line_and_errors_exit_2() -> None:
    result = CliRunner().invoke(main, ["snp", "measure", "--ovmf", str(DEBIAN_OVMF), "--vcpus", "1"])
    assert result.exit_code == 2 and "--vcpu-type" in result.output
    result = CliRunner().invoke(
        main, ["snp", "measure", "--ovmf", str(DEBIAN_OVMF), "--vcpus", "1", "--vcpu-type", "EPYC", "--kernel", "x"]
    )
    assert result.exit_code == 2


def test_a_kernel_with_an_ovmf_lacking_the_hashes_section_is_refused(tmp_path: pathlib.Path) -> None:
    if not DEBIAN_OVMF.exists():
        pytest.skip("no Debian OVMF")
    (tmp_path / "k").write_bytes(b"k")
    args = ["snp", "measure", "--ovmf", str(DEBIAN_OVMF), "--vcpus", "1", "--vcpu-type", "EPYC", "--kernel"]
    result = CliRunner().invoke(main, [*args, str(tmp_path / "k")])
    assert result.exit_code == 2 and "SNP_KERNEL_HASHES" in result.output


# -- Xen PVH ---------------------------------------------------------------------------------------------------


def reference_digest(pages: list[tuple[int, bytes]], vmsas: list[bytes]) -> bytes:
    """sev-snp-measure's own GCTX over the given NORMAL pages, then VMSAs."""
    from sevsnpmeasure.gctx import GCTX

    g = GCTX()
    for gpa, data in pages:
        g.update_normal_pages(gpa, data)
    for page in vmsas:
        g.update_vmsa_page(page)
    return g.ld()


def test_pvh_digest_is_the_image_pages_at_their_gpas_then_the_bsp_vmsa(tmp_path: pathlib.Path) -> None:
    kernel = kernel_elf()
    ramdisk = os.urandom(10000)
    (tmp_path / "k").write_bytes(kernel)
    (tmp_path / "r").write_bytes(ramdisk)
    image = load_pvh_image(kernel, ramdisk)
    kbytes = image.kernel_pages * 4096
    module_gpa = image.kernel_start + kbytes
    start_info = module_gpa + image.module_pages * 4096
    bsp = vmsa.pvh_vmsa(ENTRY, start_info, vmsa.VCPU_TYPES["EPYC-Milan"], 1)
    expected = reference_digest([(image.kernel_start, image.data[:kbytes]), (module_gpa, image.data[kbytes:])], [bsp])
    got = ours("--pvh-kernel", str(tmp_path / "k"), "--pvh-ramdisk", str(tmp_path / "r"), "--vcpu-type", "EPYC-Milan")
    assert got == expected.hex()


def test_pvh_vmsa_fields_in_sev_snp_measures_save_area_layout() -> None:
    from sevsnpmeasure.vmsa import SevEsSaveArea

    page = vmsa.pvh_vmsa(ENTRY, 0x1234000, 0xA00F11, 0x21)
    area = SevEsSaveArea.from_buffer_copy(page)
    assert (area.rip, area.rbx, area.rdx, area.sev_features) == (ENTRY, 0x1234000, 0xA00F11, 0x21)
    assert (area.cr0, area.efer, area.cr4) == (0x11, 0x1000, 0)
    assert (area.cs.attrib, area.cs.limit, area.cs.base) == (0xC9B, 0xFFFFFFFF, 0)
    assert all(getattr(area, s).attrib == 0xC93 for s in ("ds", "es", "ss", "fs", "gs"))
    assert (area.tr.attrib, area.tr.limit) == (0x8B, 0x67)
    assert (area.mxcsr, area.x87_fcw, area.g_pat, area.xcr0) == (0x1F80, 0x37F, 0x7040600070406, 1)
    assert ctypes.sizeof(area) == len(page)


def test_pvh_layout_needs_the_module_gpa_for_an_unmapped_initrd() -> None:
    image = load_pvh_image(kernel_elf(), os.urandom(5000))
    unmapped = type(image)(**{**image.__dict__, "module_after_start_info": True})
    with pytest.raises(Exception, match="--pvh-module-gpa"):
        measure.pvh_layout(unmapped)
    assert measure.pvh_layout(unmapped, module_gpa=0x2000000).module_gpa == 0x2000000


# -- id-block --------------------------------------------------------------------------------------------------


def write_key(path: pathlib.Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    return key


def check_sig(key: ec.EllipticCurvePublicKey, sig: bytes, message: bytes) -> None:
    r, s = snp.parse_ecdsa_sig(sig)
    key.verify(utils.encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
    assert sig[144:] == bytes(len(sig) - 144)


def parse_tool_output(text: str) -> tuple[bytes, bytes, str, str]:
    lines = text.strip().splitlines()
    first = dict(part.split("=", 1) for part in lines[0].split(","))
    return base64.b64decode(first["id-block"]), base64.b64decode(first["id-auth"]), lines[1], lines[2]


def test_id_block_is_snp_create_id_blocks(tmp_path: pathlib.Path) -> None:
    id_key, author_key = write_key(tmp_path / "id.pem"), write_key(tmp_path / "author.pem")
    ld = base64.b64encode(hashlib.sha384(b"guest").digest()).decode()
    args = ["--measurement", ld, "--idkey", str(tmp_path / "id.pem"), "--authorkey", str(tmp_path / "author.pem")]
    theirs = subprocess.run([str(BIN / "snp-create-id-block"), *args], capture_output=True, text=True, check=True)
    result = CliRunner().invoke(main, ["snp", "id-block", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    mine_block, mine_auth, mine_idh, mine_ah = parse_tool_output("\n".join(result.output.splitlines()[2:]))
    t_block, t_auth, t_idh, t_ah = parse_tool_output(theirs.stdout)
    assert mine_block == t_block  # the ID block is deterministic: byte for byte
    assert (mine_idh, mine_ah) == (t_idh, t_ah)
    # ECDSA signatures are randomised: everything else is byte for byte, and both signatures verify.
    sigs = [(snp.ID_AUTH_ID_BLOCK_SIG, snp.ECDSA_SIG_SIZE), (snp.ID_AUTH_ID_KEY_SIG, snp.ECDSA_SIG_SIZE)]
    blank = bytearray(mine_auth), bytearray(t_auth)
    for at, n in sigs:
        for b in blank:
            b[at : at + n] = bytes(n)
    assert blank[0] == blank[1] and len(mine_auth) == 0x1000
    for auth in (mine_auth, t_auth):
        parsed = snp.IdAuth.parse(auth)
        check_sig(id_key.public_key(), parsed.id_block_sig, mine_block)
        check_sig(author_key.public_key(), parsed.id_key_sig, parsed.id_key)
    assert base64.b64decode((tmp_path / "out" / "id_block.b64").read_bytes()) == mine_block
    assert base64.b64decode((tmp_path / "out" / "id_auth.b64").read_bytes()) == mine_auth


def test_id_block_fields_policy_ids_and_svn(tmp_path: pathlib.Path) -> None:
    write_key(tmp_path / "id.pem")
    write_key(tmp_path / "author.pem")
    ld = hashlib.sha384(b"x").hexdigest()
    result = CliRunner().invoke(
        main,
        ["snp", "id-block", "--measurement", ld, "--idkey", str(tmp_path / "id.pem"), "--authorkey",
         str(tmp_path / "author.pem"), "--policy", "0xb0000", "--family-id", "11" * 16, "--image-id", "22" * 16,
         "--guest-svn", "7", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    block = snp.IdBlock.parse(base64.b64decode(json.loads(result.output)["id_block"]))
    assert (block.policy, block.family_id, block.image_id, block.guest_svn, block.version) == (
        0xB0000, b"\x11" * 16, b"\x22" * 16, 7, 1,
    )  # fmt: skip
    assert block.launch_digest.hex() == ld


def test_id_block_refuses_a_p256_key(tmp_path: pathlib.Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "id.pem").write_bytes(pem)
    write_key(tmp_path / "author.pem")
    ld = base64.b64encode(bytes(48)).decode()
    result = CliRunner().invoke(
        main,
        ["snp", "id-block", "--measurement", ld, "--idkey", str(tmp_path / "id.pem"), "--authorkey",
         str(tmp_path / "author.pem")],
    )  # fmt: skip
    assert result.exit_code == 2 and "P-384" in result.output
