"""PVH direct boot: the kernel and ramdisk bytes libxenguest places in guest memory (sevd.owner.pvh), and the
host's reading of its build log (sevd.toolstack.xllog), checked against each other.

Kernels are small synthetic ELF files with a Xen PHYS32_ENTRY note, as they are and wrapped in synthetic bzImages;
Debian's own kernel and Xen's PVH shim are loaded too when present.
"""

from __future__ import annotations

import glob
import gzip
import lzma
import pathlib
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from sevd.errors import InputError
from sevd.owner import pvh
from sevd.owner.pvh import PAGE_SIZE, load_pvh_image
from sevd.toolstack.xllog import Segment, measured_range, measured_ranges, parse_domain_builder_log

PF_X, PF_W, PF_R = 1, 2, 4
PT_LOAD, PT_NOTE = 1, 4

BASE = 0x1000000
ENTRY = BASE + 0x10


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def note(name: bytes, kind: int, desc: bytes) -> bytes:
    n = name + b"\0"
    return struct.pack("<III", len(n), len(desc), kind) + pad4(n) + pad4(desc)


def phys32(entry: int = ENTRY, size: int = 4) -> bytes:
    return note(b"Xen", 18, entry.to_bytes(size, "little"))


def xen_str(kind: int, text: bytes) -> bytes:
    return note(b"Xen", kind, text + b"\0")


@dataclass
class Load:
    paddr: int
    data: bytes
    memsz: int | None = None
    flags: int = PF_R | PF_X
    type: int = PT_LOAD
    offset: int | None = None  # None: where the builder puts `data`


def make_elf(
    loads: list[Load],
    notes: bytes = b"",
    *,
    bits: int = 64,
    notes_in_section: bool = False,
) -> bytes:
    """An ELF executable: headers, then the note area, then each segment's data (16-byte aligned)."""
    ehsize, phentsize, shentsize = (64, 56, 64) if bits == 64 else (52, 32, 40)
    note_phdr = bool(notes) and not notes_in_section
    nph = len(loads) + note_phdr
    out = bytearray(ehsize + phentsize * nph)

    def place(blob: bytes) -> int:
        out.extend(bytes(-len(out) % 16))
        at = len(out)
        out.extend(blob)
        return at

    note_off = place(notes) if notes else 0
    phdrs = []
    for ld in loads:
        off = place(ld.data) if ld.offset is None else ld.offset
        memsz = len(ld.data) if ld.memsz is None else ld.memsz
        phdrs.append((ld.type, ld.flags, off, ld.paddr, len(ld.data), memsz))
    if note_phdr:
        phdrs.append((PT_NOTE, PF_R, note_off, 0, len(notes), len(notes)))

    shoff = shnum = 0
    if notes_in_section:
        out.extend(bytes(-len(out) % 8))
        shoff, shnum = len(out), 2
        for sh_type, offset, size in ((0, 0, 0), (7, note_off, len(notes))):
            if bits == 64:
                out.extend(struct.pack("<IIQQQQIIQQ", 0, sh_type, 0, 0, offset, size, 0, 0, 4, 0))
            else:
                out.extend(struct.pack("<IIIIIIIIII", 0, sh_type, 0, 0, offset, size, 0, 0, 4, 0))

    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1, 1]) + bytes(9)
    if bits == 64:
        ehdr = ident + struct.pack(
            "<HHIQQQIHHHHHH", 2, 62, 1, 0, ehsize, shoff, 0, ehsize, phentsize, nph, 64, shnum, 0
        )
    else:
        ehdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0, ehsize, shoff, 0, ehsize, phentsize, nph, 40, shnum, 0)
    out[:ehsize] = ehdr
    for i, (p_type, flags, off, paddr, filesz, memsz) in enumerate(phdrs):
        at = ehsize + i * phentsize
        if bits == 64:
            out[at : at + phentsize] = struct.pack("<IIQQQQQQ", p_type, flags, off, paddr, paddr, filesz, memsz, 16)
        else:
            out[at : at + phentsize] = struct.pack("<IIIIIIII", p_type, off, paddr, paddr, filesz, memsz, flags, 16)
    return bytes(out)


# Two segments with a gap between them; the second has a bss (memsz > filesz).
SEG_A = rand(0x1800, 1)
SEG_B = rand(0x900, 2)
B_ADDR = BASE + 0x3000
B_MEMSZ = 0x2100
KERNEL_SIZE = B_ADDR + B_MEMSZ - BASE  # 0x5100: six pages


def kernel_elf(notes: bytes | None = None, bits: int = 64, **kw: object) -> bytes:
    loads = [Load(BASE, SEG_A), Load(B_ADDR, SEG_B, memsz=B_MEMSZ, flags=PF_R | PF_W)]
    return make_elf(loads, phys32() if notes is None else notes, bits=bits, **kw)  # type: ignore[arg-type]


def check_kernel_layout(data: bytes) -> None:
    assert data[:0x1800] == SEG_A
    assert data[0x1800:0x3000] == bytes(0x1800)  # the gap
    assert data[0x3000:0x3900] == SEG_B
    assert data[0x3900:0x6000] == bytes(0x2700)  # bss, then the rest of the last page


def make_bzimage(
    elf: bytes, compression: str = "xz", *, setup_sects: int = 3, version: int = 0x20F, payload: bytes | None = None
) -> bytes:
    """A bzImage as libxenguest reads it: setup header fields, payload after the setup sectors + payload_offset."""
    if payload is None:
        if compression == "xz":
            payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + struct.pack("<I", len(elf))
        elif compression == "lzma":
            payload = lzma.compress(elf, format=lzma.FORMAT_ALONE) + struct.pack("<I", len(elf))
        else:
            payload = gzip.compress(elf)
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    setup[0x206:0x208] = version.to_bytes(2, "little")
    payload_offset = 0x1A0  # decompressor code sits before the payload
    setup[0x248:0x250] = struct.pack("<II", payload_offset, len(payload))
    return bytes(setup) + rand(payload_offset, 3) + payload + rand(0x40, 4)


# --- the kernel -------------------------------------------------------------------------------------------------


def test_elf64_segments_gap_and_bss_land_byte_for_byte() -> None:
    im = load_pvh_image(kernel_elf(), None)
    assert (im.kernel_start, im.kernel_size, im.entry) == (BASE, KERNEL_SIZE, ENTRY)
    assert im.module_size is None and not im.module_after_start_info
    assert len(im.data) == 6 * PAGE_SIZE == im.kernel_pages * PAGE_SIZE
    check_kernel_layout(im.data)


def test_elf32_kernel_like_the_xen_shim() -> None:
    im = load_pvh_image(kernel_elf(bits=32), None)
    assert (im.kernel_start, im.kernel_size, im.entry) == (BASE, KERNEL_SIZE, ENTRY)
    check_kernel_layout(im.data)


def test_segments_load_in_table_order_and_bss_zeroes_what_came_before() -> None:
    first = rand(0x2000, 5)
    second = b"\xaa" * 0x10
    elf = make_elf([Load(BASE, first), Load(BASE + 0x1000, second, memsz=0x800)], phys32())
    data = load_pvh_image(elf, None).data
    assert data[:0x1000] == first[:0x1000]
    assert data[0x1000:0x1010] == second
    assert data[0x1010:0x1800] == bytes(0x7F0)  # the later segment's bss overwrote the first's bytes
    assert data[0x1800:0x2000] == first[0x1800:]


def test_pt_load_without_rwx_flags_is_not_loaded() -> None:
    ignored = Load(0x800000, rand(0x1000, 6), flags=0)
    elf = make_elf([ignored, Load(BASE, SEG_A)], phys32())
    im = load_pvh_image(elf, None)
    assert im.kernel_start == BASE and im.kernel_size == len(SEG_A)
    assert im.data == SEG_A + bytes(0x800)


def test_entry_note_of_8_bytes_and_other_notes_are_read() -> None:
    notes = (
        note(b"GNU", 3, rand(20, 7))
        + xen_str(6, b"linux")
        + xen_str(10, b"!writable_page_tables|pae_pgdir_above_4gb")
        + note(b"Xen", 3, (0xFFFFFFFF80000000).to_bytes(8, "little"))
        + note(b"Xen", 4, bytes(8))
        + phys32(BASE + 0x850, size=8)
    )
    im = load_pvh_image(kernel_elf(notes), None)
    assert im.entry == BASE + 0x850
    check_kernel_layout(im.data)


def test_notes_come_from_sections_when_no_note_segment_has_xen_notes() -> None:
    im = load_pvh_image(kernel_elf(notes_in_section=True), None)
    assert im.entry == ENTRY


def test_note_strings_longer_than_4096_are_ignored() -> None:
    # libelf gives up on such a string, so this unknown required feature goes unnoticed
    im = load_pvh_image(kernel_elf(phys32() + xen_str(10, b"!" + b"x" * 4096)), None)
    assert im.entry == ENTRY
    with pytest.raises(InputError, match="unknown feature"):
        load_pvh_image(kernel_elf(phys32() + xen_str(10, b"!" + b"x" * 4094)), None)


def test_gzipped_kernel_file_is_unpacked_first() -> None:
    plain = load_pvh_image(kernel_elf(), None)
    assert load_pvh_image(gzip.compress(kernel_elf()), None) == plain


def test_gunzipped_kernel_ends_in_16_zero_bytes() -> None:
    # libxenguest gunzips into a zeroed buffer 16 bytes longer than the trailer's size, and reads the ELF from it
    elf = bytearray(make_elf([Load(BASE, SEG_A)], phys32()))
    assert elf.endswith(SEG_A)
    struct.pack_into("<QQ", elf, 64 + 32, len(SEG_A) + 16, len(SEG_A) + 16)  # p_filesz, p_memsz
    with pytest.raises(InputError, match="runs past the end of the file"):
        load_pvh_image(bytes(elf), None)
    im = load_pvh_image(gzip.compress(bytes(elf)), None)
    assert im.kernel_size == len(SEG_A) + 16
    assert im.data == SEG_A + bytes(PAGE_SIZE * 2 - len(SEG_A))


@pytest.mark.parametrize("compression", ["xz", "gzip", "lzma"])
def test_bzimage_gives_the_same_image_as_its_elf(compression: str) -> None:
    elf = kernel_elf()
    ramdisk = rand(5000, 8)
    assert load_pvh_image(make_bzimage(elf, compression), ramdisk) == load_pvh_image(elf, ramdisk)


def test_decompression_in_small_pieces_gives_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    elf = kernel_elf()
    content = (b"initramfs " * 500) + rand(700, 15)
    expected = load_pvh_image(elf, gzip.compress(content))
    bz = make_bzimage(elf)
    monkeypatch.setattr(pvh, "_CHUNK", 5)
    monkeypatch.setattr(pvh, "_OUT_CHUNK", 7)
    assert load_pvh_image(bz, gzip.compress(content)) == expected
    assert expected.data[6 * PAGE_SIZE : 6 * PAGE_SIZE + len(content)] == content


# --- the ramdisk ------------------------------------------------------------------------------------------------


def test_raw_ramdisk_follows_the_kernel_pages() -> None:
    ramdisk = rand(3 * PAGE_SIZE + 5, 9)
    im = load_pvh_image(kernel_elf(), ramdisk)
    assert im.module_size == len(ramdisk) and not im.module_gunzipped
    assert len(im.data) == (6 + 4) * PAGE_SIZE
    check_kernel_layout(im.data)
    assert im.data[6 * PAGE_SIZE :] == ramdisk + bytes(PAGE_SIZE - 5)


def test_gzip_ramdisk_is_gunzipped_into_a_segment_of_trailer_size_plus_16() -> None:
    content = (rand(1000, 10) * 13)[: 3 * PAGE_SIZE - 8]  # + 16 crosses into a fourth page
    blob = gzip.compress(content)
    assert len(blob) < len(content)  # else the file's own size would set the segment's
    im = load_pvh_image(kernel_elf(), blob)
    assert im.module_gunzipped
    assert im.module_size == len(content) + 16
    assert len(im.data) == (6 + 4) * PAGE_SIZE
    assert im.data[6 * PAGE_SIZE :] == content + bytes(PAGE_SIZE + 8)


def test_gzip_ramdisk_with_bytes_after_the_stream() -> None:
    # inflate stops at the end of the first gzip member; the size is read from the file's last 4 bytes
    content = b"initramfs" * 1000
    blob = gzip.compress(content) + struct.pack("<I", len(content))  # as Linux's size_append does
    im = load_pvh_image(kernel_elf(), blob)
    assert im.module_gunzipped and im.module_size == len(content) + 16
    assert im.data[6 * PAGE_SIZE : 6 * PAGE_SIZE + len(content)] == content


def corrupt(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda gz: corrupt(gz, len(gz) - 6), id="bad-crc"),
        pytest.param(lambda gz: gz[: len(gz) // 2] + gz[-4:], id="truncated"),
        pytest.param(lambda gz: gz[:-4] + struct.pack("<I", 100), id="trailer-understates"),
    ],
)
def test_gzip_ramdisk_that_does_not_inflate_is_copied_raw(
    make: Callable[[bytes], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # output comes in pieces, so some of it is in place before the failure shows; the raw copy must not keep it
    monkeypatch.setattr(pvh, "_OUT_CHUNK", 1000)
    content = rand(1000, 11) * 60
    blob = make(gzip.compress(content))
    unzip = int.from_bytes(blob[-4:], "little") + 16
    im = load_pvh_image(kernel_elf(), blob)
    assert not im.module_gunzipped
    assert im.module_size == max(unzip, len(blob))
    module = im.data[6 * PAGE_SIZE :]
    assert len(module) == im.module_pages * PAGE_SIZE
    assert module == blob + bytes(len(module) - len(blob))


def test_gzip_ramdisk_claiming_over_1_gib_is_not_gunzipped() -> None:
    blob = gzip.compress(b"x" * 1000)[:-4] + struct.pack("<I", (1 << 30) + 1)
    im = load_pvh_image(kernel_elf(), blob)
    assert not im.module_gunzipped and im.module_size == len(blob)
    assert im.data[6 * PAGE_SIZE : 6 * PAGE_SIZE + len(blob)] == blob


def test_gzip_magic_in_under_6_bytes_is_copied_raw() -> None:
    im = load_pvh_image(kernel_elf(), b"\x1f\x8b\x08")
    assert not im.module_gunzipped and im.module_size == 3
    assert im.data[6 * PAGE_SIZE :] == b"\x1f\x8b\x08" + bytes(PAGE_SIZE - 3)


def test_mod_start_pfn_note_puts_the_module_after_the_start_info() -> None:
    notes = phys32() + note(b"Xen", 16, (1).to_bytes(4, "little"))
    im = load_pvh_image(kernel_elf(notes), b"ramdisk")
    assert im.module_after_start_info
    assert not load_pvh_image(kernel_elf(notes), None).module_after_start_info
    assert not load_pvh_image(kernel_elf(), b"ramdisk").module_after_start_info


# --- what is refused --------------------------------------------------------------------------------------------


def truncated_segment() -> bytes:
    elf = make_elf([Load(BASE, SEG_A)], phys32())
    return elf[:-16]


def bin_table_kernel() -> bytes:
    magic, flags = 0x336EC578, 0x00010000
    table = struct.pack("<III", magic, flags, (-(magic + flags)) & 0xFFFFFFFF) + bytes(20)
    elf = bytearray(kernel_elf())
    elf[0x400:0x420] = table  # inside the first segment's data, within the first 8 KiB
    return bytes(elf)


def with_byte(blob: bytes, at: int, value: int) -> bytes:
    return blob[:at] + bytes([value]) + blob[at + 1 :]


def corrupt_xz() -> bytes:
    elf = kernel_elf()
    xz = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    return corrupt(xz, len(xz) // 2) + struct.pack("<I", len(elf))


KERNEL_ERRORS = [
    pytest.param(b"", "empty file", id="empty"),
    pytest.param(b"just some text, long enough" * 30, "neither an ELF file nor a bzImage", id="not-a-kernel"),
    pytest.param(make_elf([], phys32()), "no loadable PT_LOAD", id="no-pt-load"),
    pytest.param(make_elf([Load(BASE, SEG_A, flags=0)], phys32()), "no loadable PT_LOAD", id="pt-load-without-rwx"),
    pytest.param(kernel_elf(xen_str(6, b"linux")), "no XEN_ELFNOTE_PHYS32_ENTRY (18)", id="no-phys32-note"),
    pytest.param(kernel_elf(note(b"Xenx", 18, ENTRY.to_bytes(4, "little"))), "PHYS32_ENTRY", id="note-not-xen"),
    pytest.param(kernel_elf(phys32(0xFFFFFFFF)), "PHYS32_ENTRY", id="phys32-all-ones-is-unset"),
    pytest.param(make_elf([Load(BASE, SEG_A)]), "has no notes", id="no-notes"),
    pytest.param(  # libelf skips a PT_NOTE at file offset 0 (some binutils write that)
        make_elf([Load(BASE, SEG_A), Load(0, bytes(16), type=PT_NOTE, offset=0)]), "has no notes", id="note-at-offset-0"
    ),
    pytest.param(kernel_elf()[:100], "program headers run past the end", id="truncated-phdrs"),
    pytest.param(kernel_elf()[:40], "neither an ELF file nor a bzImage", id="truncated-ehdr"),
    pytest.param(truncated_segment(), "runs past the end of the file", id="truncated-segment"),
    pytest.param(kernel_elf(phys32(BASE + 0x6000)), "outside the kernel", id="entry-beyond-kernel"),
    pytest.param(kernel_elf(phys32(BASE - 1)), "outside the kernel", id="entry-below-kernel"),
    pytest.param(make_elf([Load(BASE + 0x10, SEG_A)], phys32(BASE + 0x20)), "not page aligned", id="unaligned"),
    pytest.param(
        make_elf([Load(BASE, SEG_A, memsz=0x100)], phys32()), "p_filesz 0x1800 > p_memsz 0x100", id="filesz>memsz"
    ),
    pytest.param(kernel_elf(phys32() + xen_str(10, b"!no_such_feature")), "unknown feature", id="unknown-feature"),
    pytest.param(kernel_elf(phys32() + xen_str(10, b"writable_page_tables|!dom0")), "dom0", id="dom0-only"),
    pytest.param(kernel_elf(phys32() + xen_str(11, b"yes")), "BSD_SYMTAB", id="bsd-symtab"),
    pytest.param(
        kernel_elf(phys32() + note(b"Xen", 15, BASE.to_bytes(8, "little")) + note(b"Xen", 3, bytes(8))),
        "INIT_P2M",
        id="p2m-inside-kernel",
    ),
    pytest.param(kernel_elf(phys32() + note(b"Xen", 4, bytes(8))), "PADDR_OFFSET", id="paddr-offset-no-virt-base"),
    pytest.param(corrupt(gzip.compress(kernel_elf()), 30), "corrupt or truncated gzip", id="corrupt-gzip-kernel"),
    pytest.param(bin_table_kernel(), "'bin' image", id="bin-table"),
    pytest.param(make_bzimage(kernel_elf(), version=0x207), "older than 2.08", id="bz-too-old"),
    pytest.param(make_bzimage(kernel_elf())[:0x24F], "neither an ELF file nor a bzImage", id="bz-tiny"),
    pytest.param(with_byte(make_bzimage(kernel_elf()), 0x1F1, 255), "beyond the end of the file", id="bz-offset"),
    pytest.param(
        make_bzimage(kernel_elf(), payload=b"\xfd7zXZ\x00" + bytes(0x10000))[:0x1000], "runs past", id="bz-cut"
    ),
    pytest.param(make_bzimage(b"", payload=b"\x28\xb5\x2f\xfd" + bytes(64)), "zstd not supported", id="bz-zstd"),
    pytest.param(make_bzimage(b"", payload=b"BZh91AY&SY" + bytes(64)), "bzip2 not supported", id="bz-bzip2"),
    pytest.param(make_bzimage(b"", payload=b"\x02\x21\x4c\x18" + bytes(64)), "LZ4 not supported", id="bz-lz4"),
    pytest.param(make_bzimage(b"", payload=b"PLAIN" + bytes(64)), "compression unknown", id="bz-unknown"),
    pytest.param(make_bzimage(b"", payload=corrupt_xz()), "XZ bzImage payload is corrupt", id="bz-corrupt-xz"),
    pytest.param(
        make_bzimage(b"", payload=lzma.compress(kernel_elf(), format=lzma.FORMAT_XZ) + struct.pack("<I", 1 << 20)),
        "not the 1048576 bytes it claims",
        id="bz-xz-size-overstated",
    ),
    pytest.param(
        make_bzimage(b"", payload=lzma.compress(b"not an ELF file" * 10) + struct.pack("<I", 150)),
        "does not decompress to an ELF",
        id="bz-not-elf-inside",
    ),
    pytest.param(make_bzimage(b"", payload=gzip.compress(kernel_elf())[:-20]), "gzip", id="bz-truncated-gzip"),
]


@pytest.mark.parametrize(("kernel", "message"), KERNEL_ERRORS)
def test_unusable_kernels_are_input_errors_naming_the_file(kernel: bytes, message: str) -> None:
    with pytest.raises(InputError) as err:
        load_pvh_image(kernel, None, kernel_name="vmlinuz-test")
    assert str(err.value).startswith("vmlinuz-test: ")
    assert message in str(err.value)


def test_xz_payload_longer_than_its_stated_size_is_cut_like_libxenguest() -> None:
    # libxenguest decodes until the buffer of the stated size is full, and takes that
    elf = kernel_elf()
    payload = lzma.compress(elf + rand(5000, 13), format=lzma.FORMAT_XZ) + struct.pack("<I", len(elf))
    assert load_pvh_image(make_bzimage(b"", payload=payload), None) == load_pvh_image(elf, None)


def test_empty_ramdisk_is_an_input_error() -> None:
    with pytest.raises(InputError, match="^initrd.img: empty file"):
        load_pvh_image(kernel_elf(), b"", ramdisk_name="initrd.img")


# --- the domain builder log -------------------------------------------------------------------------------------

LOG_UNMAPPED = """\
libxl: debug: libxl_dom.c:890:libxl__domain_firmware: xc_dom_module_file, path /boot/vmlinuz cmdline
domainbuilder: detail: xc_dom_allocate: cmdline="console=hvc0 root=/dev/xvda1 ro", features=""
domainbuilder: detail: xc_dom_kernel_file: filename="/boot/vmlinuz-6.1.0-56-amd64"
domainbuilder: detail: xc_dom_malloc_filemap    : 8053 kB
domainbuilder: detail: xc_dom_module_file: filename="/boot/initrd.img-6.1.0-56-amd64"
domainbuilder: detail: xc_dom_find_loader: trying Linux bzImage loader ...
domainbuilder: detail: _xc_try_lzma_decode: XZ decompress OK, 0x7bf070 -> 0x3eda7b4
domainbuilder: detail: loader probe OK
domainbuilder: detail: xc_dom_parse_elf_kernel: hvm-3.0-x86_32: 0x1000000 -> 0x4a00000
domainbuilder: detail: xc_dom_mem_init: mem 1024 MB, pages 0x40000 pages, 4k each
domainbuilder: detail: xc_dom_build_image: called
domainbuilder: detail: xc_dom_pfn_to_ptr_retcount: domU mapping: pfn 0x1000+0x3a00 at 0x7f3c1c600000
domainbuilder: detail: xc_dom_alloc_segment:   kernel       : 0x1000000 -> 0x4a00000  (pfn 0x1000 + 0x3a00 pages)
domainbuilder: detail: elf_load_binary: phdr 0 at 0x7f3c1c600000 -> 0x7f3c1deea9f0
domainbuilder: detail: xc_dom_alloc_segment:   HVM start info : 0x4a00000 -> 0x4a00a78  (pfn 0x4a00 + 0x1 pages)
domainbuilder: detail: xc_dom_alloc_segment:   module0      : 0x4a01000 -> 0x67b7881  (pfn 0x4a01 + 0x1db7 pages)
domainbuilder: detail: xc_dom_build_image  : virt_alloc_end : 0x67b8000
domainbuilder: detail: xc_dom_build_image  : virt_pgtab_end : 0x0
domainbuilder: detail: xc_dom_boot_image: called
"""

# The same build for a kernel without MOD_START_PFN (Xen's PVH shim, say): module0 right after the kernel.
LOG_CONTIGUOUS = """\
2026-11-26 08:00:01 domainbuilder: detail: xc_dom_alloc_segment:   kernel       : 0x200000 -> 0xa00000  (pfn 0x200 + 0x800 pages)
2026-11-26 08:00:01 domainbuilder: detail: xc_dom_alloc_segment:   module0      : 0xa00000 -> 0xa03001  (pfn 0xa00 + 0x4 pages)
2026-11-26 08:00:01 domainbuilder: detail: xc_dom_alloc_segment:   HVM start info : 0xa04000 -> 0xa04a78  (pfn 0xa04 + 0x1 pages)
"""  # noqa: E501


def test_log_parser_reads_every_segment_line() -> None:
    segs = parse_domain_builder_log(LOG_UNMAPPED)
    assert segs == {
        "kernel": Segment("kernel", 0x1000000, 0x4A00000, 0x1000, 0x3A00),
        "HVM start info": Segment("HVM start info", 0x4A00000, 0x4A00A78, 0x4A00, 0x1),
        "module0": Segment("module0", 0x4A01000, 0x67B7881, 0x4A01, 0x1DB7),
    }


def test_measured_range_of_kernel_and_adjacent_module() -> None:
    segs = parse_domain_builder_log(LOG_CONTIGUOUS)
    assert measured_range(segs) == (0x200000, (0x800 + 4) * PAGE_SIZE)
    assert measured_ranges(segs) == [(0x200000, (0x800 + 4) * PAGE_SIZE)]


def test_measured_range_of_kernel_alone() -> None:
    segs = parse_domain_builder_log(LOG_CONTIGUOUS.splitlines()[0])
    assert measured_range(segs) == (0x200000, 0x800 * PAGE_SIZE)
    assert measured_ranges(segs) == [(0x200000, 0x800 * PAGE_SIZE)]


def test_measured_range_refuses_a_module_after_the_start_info() -> None:
    segs = parse_domain_builder_log(LOG_UNMAPPED)
    with pytest.raises(InputError, match="module0 starts at pfn 0x4a01, not right after the kernel"):
        measured_range(segs)
    assert measured_ranges(segs) == [(0x1000000, 0x3A00 * PAGE_SIZE), (0x4A01000, 0x1DB7 * PAGE_SIZE)]


def test_measured_range_matches_the_loaded_image() -> None:
    ramdisk = rand(3 * PAGE_SIZE + 1, 14)
    im = load_pvh_image(kernel_elf(), ramdisk)
    end = BASE + im.kernel_pages * PAGE_SIZE
    log = (
        f"xc_dom_alloc_segment:   kernel       : {BASE:#x} -> {BASE + im.kernel_size:#x}  "
        f"(pfn {BASE >> 12:#x} + {im.kernel_pages:#x} pages)\n"
        f"xc_dom_alloc_segment:   module0      : {end:#x} -> {end + len(ramdisk):#x}  "
        f"(pfn {end >> 12:#x} + {im.module_pages:#x} pages)\n"
    )
    assert measured_range(parse_domain_builder_log(log)) == (im.kernel_start, len(im.data))


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ("domainbuilder: detail: xc_dom_build_image: called\n", "no xc_dom_alloc_segment line for the kernel"),
        (LOG_CONTIGUOUS.replace("kernel ", "other  "), "no xc_dom_alloc_segment line for the kernel"),
        (LOG_CONTIGUOUS + LOG_CONTIGUOUS, "'kernel' appears twice"),
        (LOG_CONTIGUOUS.replace("0x800 pages", "0x801 pages"), "inconsistent size and pages"),
    ],
)
def test_bad_logs_are_input_errors(log: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_domain_builder_log(log)


def test_measured_range_needs_a_pvh_kernel_segment() -> None:
    pv = {"kernel": Segment("kernel", 0xFFFFFFFF81000000, 0xFFFFFFFF83000000, 0x1000, 0x2000)}
    with pytest.raises(InputError, match="not a PVH guest's build"):
        measured_range(pv)
    with pytest.raises(InputError, match="no kernel segment"):
        measured_range({})


def test_measured_ranges_refuses_overlap() -> None:
    segs = {
        "kernel": Segment("kernel", 0x200000, 0x202000, 0x200, 2),
        "module0": Segment("module0", 0x201000, 0x202000, 0x201, 1),
    }
    with pytest.raises(InputError, match="overlaps"):
        measured_ranges(segs)


# --- real kernels -----------------------------------------------------------------------------------------------

DEBIAN_KERNELS = sorted(glob.glob("/boot/vmlinuz-*"))
XEN_SHIM = pathlib.Path("/usr/lib/xen-4.17/boot/xen-shim")


@pytest.mark.skipif(not DEBIAN_KERNELS, reason="no /boot/vmlinuz-*")
def test_debian_kernel() -> None:
    kernel = pathlib.Path(DEBIAN_KERNELS[-1]).read_bytes()
    im = load_pvh_image(kernel, b"initramfs", kernel_name=DEBIAN_KERNELS[-1])
    assert im.kernel_start == 0x1000000  # Linux's LOAD_PHYSICAL_ADDR
    assert im.kernel_start <= im.entry < im.kernel_start + im.kernel_size
    assert len(im.data) % PAGE_SIZE == 0
    assert len(im.data) == (im.kernel_pages + 1) * PAGE_SIZE
    # Debian builds CONFIG_XEN_PV, whose MOD_START_PFN note makes libxenguest put the start info page first
    assert im.module_after_start_info
    assert im.data[im.kernel_pages * PAGE_SIZE :] == b"initramfs" + bytes(PAGE_SIZE - 9)


@pytest.mark.skipif(not XEN_SHIM.exists(), reason="no Xen PVH shim")
def test_xen_shim() -> None:
    im = load_pvh_image(XEN_SHIM.read_bytes(), None)
    assert im.kernel_start == 0x200000
    assert im.kernel_start <= im.entry < im.kernel_start + im.kernel_size
    assert len(im.data) == im.kernel_pages * PAGE_SIZE
    # an ELF32 file with one PT_LOAD: its file bytes, then zeros
    shim = XEN_SHIM.read_bytes()
    phoff = struct.unpack_from("<I", shim, 28)[0]
    p_type, offset, _, paddr, filesz, memsz = struct.unpack_from("<6I", shim, phoff)
    assert (p_type, paddr, memsz) == (PT_LOAD, im.kernel_start, im.kernel_size)
    assert im.data[:filesz] == shim[offset : offset + filesz]
    assert im.data[filesz:] == bytes(len(im.data) - filesz)
