"""xl cfg files through Xen's own parser (libxlutil via cffi) and the SEV checks on top."""

import base64
import os
from pathlib import Path

import pytest

from sevd.abi.commands import CERT_SIZE, SESSION_SIZE
from sevd.errors import InputError
from sevd.xen import xlcfg

OVMF = Path("/usr/share/ovmf/OVMF.fd")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.skipif(not OVMF.exists(), reason="Debian's ovmf package provides the boot image")

SEV = 'name = "g"\ntype = "hvm"\nmemory = 64\nbios = "ovmf"\nsev = 1\n'


def cfg(tmp_path, text, name="guest.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error(tmp_path, text):
    with pytest.raises(InputError) as exc:
        xlcfg.load(cfg(tmp_path, text))
    return str(exc.value)


def test_libxlutil_is_debians_and_loads_without_xen():
    # this machine runs no Xen: the parser needs none
    assert xlcfg.LIBXLUTIL == "libxlutil.so.4.17"
    lib, _ = xlcfg._libs()
    assert lib.xlu_cfg_init


def test_examples_parse():
    g = xlcfg.load(EXAMPLES / "sev-guest.cfg")
    assert (g.name, g.type, g.memory_mb, g.vcpus, g.sev, int(g.policy), g.es) == (
        "sev-guest",
        "hvm",
        64,
        1,
        True,
        1,
        False,
    )
    assert g.image == OVMF and g.session is None
    es = xlcfg.load(EXAMPLES / "sev-es-guest.cfg")
    assert es.es and int(es.policy) == 5
    plain = xlcfg.load(EXAMPLES / "plain-guest.cfg")
    assert not plain.sev


def test_xl_syntax_numbers_lists_and_overrides(tmp_path):
    text = SEV + "memory = 0x40\nvif = [ 'bridge=xenbr0', \"mac=00:16:3e:00:00:01\" ]\nmemory = 128  # later wins\n"
    path = cfg(tmp_path, text)
    g = xlcfg.load(path)
    assert g.memory_mb == 128 and int(g.policy) == xlcfg.DEFAULT_POLICY
    with xlcfg.XlConfig(path) as c:
        assert c.list("vif") == ["bridge=xenbr0", "mac=00:16:3e:00:00:01"]
        assert c.string("nope") is None and c.long("memory") == 128 and c.line_of("memory") == 8


def test_syntax_error_is_reported_as_xl_does(tmp_path):
    msg = error(tmp_path, 'name = "g"\nmemory = = 64\n')
    assert msg.startswith(f"{tmp_path}/guest.cfg:2: config parsing error near `='"), msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SEV + "sev_policy = 0x40\n", ":6: `sev_policy': policy 0x00000040 sets reserved bits"),
        (SEV + "sev_policy = 0x100000000\n", ":6: `sev_policy' 0x100000000 does not fit in 32 bits"),
        (SEV + "sev_polcy = 1\n", ":6: unknown key `sev_polcy'"),
        (SEV + "sev_es = 1\nsev_policy = 0x1\n", ":6: `sev_es' = 1 but sev_policy 0x00000001 lacks the ES bit"),
        (SEV + "sev = 2\n", ":6: `sev' must be 0 or 1, got 2"),
        (SEV.replace('"hvm"', '"pv"'), ':2: an SEV guest needs type = "hvm" or "pvh", got \'pv\''),
        (SEV.replace('"ovmf"', '"seabios"'), ':4: an SEV HVM guest needs bios = "ovmf"'),
        (SEV.replace("memory = 64", 'memory = "lots"'), ":3: parameter `memory' is not a valid number"),
        (
            SEV.replace("memory = 64", "memory = 1"),
            ":3: the boot image /usr/share/ovmf/OVMF.fd (2097152 bytes) does not fit",
        ),
        (SEV + 'bios_path_override = "/nonexistent.fd"\n', ":6: boot image /nonexistent.fd does not exist"),
        (SEV + "sev_session = ['a']\n", ":6: parameter `sev_session' is a list but should be a single value"),
        (SEV + 'sev_session = "/nonexistent"\n', ":6: `sev_session': /nonexistent is not a directory"),
        ('name = "g"\nmemory = 64\nsev_es = 1\n', ":3: `sev_es' needs sev = 1"),
        ('name = "1"\nmemory = 64\n', ":1: `name' '1' is not a usable domain name"),
        ("memory = 64\n", "`name' is missing"),
    ],
)
def test_bad_values_name_line_and_key(tmp_path, text, expected):
    msg = error(tmp_path, text)
    assert f"{tmp_path}/guest.cfg" in msg and expected in msg, msg


def test_session_dir_in_sev_tool_and_sevctl_form(tmp_path):
    godh, blob = os.urandom(CERT_SIZE), os.urandom(SESSION_SIZE)
    tool = tmp_path / "tool"
    tool.mkdir()
    (tool / "godh.cert").write_bytes(godh)
    (tool / "launch_blob.bin").write_bytes(blob)
    g = xlcfg.load(cfg(tmp_path, SEV + f'sev_session = "{tool}"\n'))
    assert (g.session.godh, g.session.blob, g.session.form) == (godh, blob, "sev-tool")

    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "vm1_godh.b64").write_bytes(base64.b64encode(godh))
    (ctl / "vm1_session.b64").write_bytes(base64.b64encode(blob))
    g = xlcfg.load(cfg(tmp_path, SEV + f'sev_session = "{ctl}"\n'))
    assert (g.session.godh, g.session.blob, g.session.form) == (godh, blob, "sevctl:vm1")

    (ctl / "vm1_session.b64").write_bytes(base64.b64encode(blob[:-1]))
    assert "launch blob is 127 bytes, expected 128" in error(tmp_path, SEV + f'sev_session = "{ctl}"\n')
    (tool / "launch_blob.bin").unlink()
    assert "cannot read launch blob" in error(tmp_path, SEV + f'sev_session = "{tool}"\n')


def test_sev_pvh_guest_measures_its_kernel_and_ramdisk_as_loaded(tmp_path):
    from test_owner_pvh import kernel_elf

    from sevd.owner.pvh import load_pvh_image

    kernel, ramdisk = tmp_path / "vmlinux", tmp_path / "initrd"
    kernel.write_bytes(kernel_elf())
    ramdisk.write_bytes(os.urandom(5000))
    text = f'name = "p"\ntype = "pvh"\nmemory = 64\nkernel = "{kernel}"\nramdisk = "{ramdisk}"\nsev = 1\n'
    g = xlcfg.load(cfg(tmp_path, text))
    assert (g.pvh, g.image, g.ramdisk) == (True, kernel, ramdisk)
    assert g.describe_image() == f"kernel {kernel} + ramdisk {ramdisk}"
    expected = load_pvh_image(kernel.read_bytes(), ramdisk.read_bytes()).data
    assert g.read_image() == expected and len(expected) % 4096 == 0

    assert ":4: an SEV PVH guest needs `kernel'" in error(tmp_path, text.replace(f'kernel = "{kernel}"', "kernel = ''"))
    missing = text.replace(str(ramdisk), "/nonexistent.cpio")
    assert ":5: boot image /nonexistent.cpio does not exist" in error(tmp_path, missing)
    # without sev the files are not looked at (stock xl would do that)
    assert not xlcfg.load(cfg(tmp_path, missing.replace("sev = 1", "sev = 0"))).sev
