"""The bytes Xen's toolstack places in a PVH guest's memory, so that the owner can predict the launch measurement.

`xl create` (libxenguest 4.17) builds a PVH guest by allocating page-rounded, zero-filled segments one after
another in guest-physical memory: first "kernel", then "module0" (the ramdisk), then "HVM start info" (but see
MOD_START_PFN below). The measured bytes are the kernel segment followed by the module0 segment.

What libxenguest does, and this module reproduces:

- Kernel file: if it starts with the gzip magic and its gzip trailer (last 4 bytes) claims at most 1 GiB, the whole
  file is gunzipped first into a buffer of trailer-size + 16 bytes (the last 16 bytes zero); a failed gunzip fails
  the build. Then a bzImage (boot protocol >= 2.08) has its payload at (setup_sects + 1) * 512 + payload_offset,
  payload_length bytes, decompressed (gzip as above; XZ and LZMA to exactly the size in the payload's last 4
  bytes) into an ELF file. Debian's libxenguest also has zstd and LZ4, not bzip2 or LZO; we do gzip, XZ and LZMA.
- ELF: Xen notes ("Xen" name) are read from PT_NOTE program headers (p_offset != 0), else from SHT_NOTE sections.
  PVH needs XEN_ELFNOTE_PHYS32_ENTRY (18); the entry is that note's value. In an HVM container virt_base and the
  paddr offset are forced to 0, so the kernel segment is [pstart, pend): the lowest p_paddr and the highest
  p_paddr + p_memsz over the loadable program headers (PT_LOAD with any of the R, W, X flags). Each loadable
  header, in table order, gets p_filesz bytes from p_offset at p_paddr - pstart, then zeros up to p_memsz.
- Ramdisk (module0): with the gzip magic, at least 6 bytes and a trailer size of at most 1 GiB, the segment is
  max(trailer size + 16, file size) bytes and the file is gunzipped into it; if inflating fails (corrupt data,
  or more output than trailer size + 16), the raw file is copied instead. Otherwise the raw file is copied.
- A kernel whose XEN_ELFNOTE_MOD_START_PFN note is non-zero (any Linux built with CONFIG_XEN_PV) asks for an
  "unmapped initrd": libxenguest then allocates the "HVM start info" segment right after the kernel and module0
  only after it, so kernel and ramdisk are not adjacent (`PvhImage.module_after_start_info`).

Where libxenguest would quietly load something odd (a segment whose file data lies beyond the end of the file is
left zero, say), we raise InputError rather than predict it.
"""

from __future__ import annotations

import io
import lzma
import struct
import zlib
from dataclasses import dataclass, field

from sevd.abi.units import PAGE_SIZE
from sevd.errors import InputError

_GZIP_MAGIC = b"\x1f\x8b"
_DECOMPRESS_MAX = 1 << 30  # libxenguest's XC_DOM_DECOMPRESS_MAX: larger gzip trailer sizes are not believed
_GUNZIP_SLACK = 16  # libxenguest sizes a gunzip buffer as trailer size + 16
_LZMA_MEMLIMIT = 256 << 20  # libxenguest's LZMA_BLOCK_SIZE, the decoder memory limit
_MAX_SEGMENT = 1 << 30  # our own bound on what a kernel may make us allocate
_CHUNK = 1 << 20  # compressed input fed per call
_OUT_CHUNK = 16 << 20  # decompressed output taken per call, so no single call makes a huge object

# xen/include/public/elfnote.h
_NOTE_VIRT_BASE = 3
_NOTE_PADDR_OFFSET = 4
_NOTE_FEATURES = 10
_NOTE_BSD_SYMTAB = 11
_NOTE_INIT_P2M = 15
_NOTE_MOD_START_PFN = 16
_NOTE_PHYS32_ENTRY = 18
_NUMERIC_NOTES = frozenset({1, 2, 3, 4, 12, 14, 15, 16, 17, 18})
_STRING_NOTES = frozenset({5, 6, 7, 8, 9, 10, 11})
_MAX_NOTES = 65536  # libelf stops reading notes after this many
_MAX_STRING = 4096  # and gives up on longer note strings

# the Xen feature names libelf knows in a FEATURES note (xen/include/public/features.h)
_FEATURES = {
    b"writable_page_tables": 0,
    b"writable_descriptor_tables": 1,
    b"auto_translated_physmap": 2,
    b"supervisor_mode_kernel": 3,
    b"pae_pgdir_above_4gb": 4,
    b"hvm_callback_vector": 8,
    b"dom0": 11,
}
_FEAT_DOM0 = 11

_PT_LOAD = 1
_PT_NOTE = 4
_SHT_NOTE = 7
_PF_RWX = 7
_EM_386 = 3
_EM_X86_64 = 62
_UNSET32 = 0xFFFFFFFF  # libelf's "not set" for 32- and 64-bit note values
_UNSET64 = 0xFFFFFFFFFFFFFFFF

# x86 boot protocol setup header, as libxenguest reads it
_SETUP_HEADER_END = 0x250
_BIN_TABLE_MAGIC = 0x336EC578  # libxenguest's "bin" loader (probed before ELF and bzImage)


@dataclass(frozen=True)
class PvhImage:
    """The kernel and module0 segments as libxenguest fills them.

    `data` is the kernel segment zero-padded to whole pages, then the module0 segment zero-padded to whole pages:
    the bytes the launch measures, starting at guest-physical `kernel_start`. The two segments are adjacent in
    guest memory unless `module_after_start_info` (the kernel asked for an unmapped initrd, so the HVM start info
    page sits between them).
    """

    kernel_start: int
    kernel_size: int  # vend - vstart of the kernel segment
    entry: int  # XEN_ELFNOTE_PHYS32_ENTRY
    module_size: int | None  # vend - vstart of the module0 segment, None without a ramdisk
    module_gunzipped: bool
    module_after_start_info: bool
    data: bytes = field(repr=False)

    @property
    def kernel_pages(self) -> int:
        return _pages(self.kernel_size)

    @property
    def module_pages(self) -> int:
        return 0 if self.module_size is None else _pages(self.module_size)


def _pages(size: int) -> int:
    return (size + PAGE_SIZE - 1) // PAGE_SIZE


# --- decompression ----------------------------------------------------------------------------------------------


def _gunzip_size(blob: bytes | bytearray) -> int:
    """The buffer size libxenguest would gunzip into, or 0 when it would not try (xc_dom_check_gzip)."""
    if len(blob) < 6 or blob[:2] != _GZIP_MAGIC:
        return 0
    size = int.from_bytes(blob[-4:], "little")
    if size > _DECOMPRESS_MAX:
        return 0
    return size + _GUNZIP_SLACK


class _Sink:
    """Where decompressed bytes go: a fixed window of the measured region, or a buffer that grows as it fills."""

    def __init__(self, window: memoryview | None = None):
        self.window = window
        self.grown = io.BytesIO() if window is None else None
        self.written = 0

    def write(self, data: bytes) -> None:
        if self.window is not None:
            self.window[self.written : self.written + len(data)] = data
        else:
            assert self.grown is not None
            self.grown.write(data)
        self.written += len(data)

    def padded(self, size: int) -> bytes:
        """The grown buffer, zero-filled to size bytes (as the zeroed buffer libxenguest decompresses into)."""
        assert self.grown is not None
        self.grown.seek(0, io.SEEK_END)
        self.grown.write(bytes(size - self.written))
        return self.grown.getvalue()


def _inflate(src: memoryview, limit: int, sink: _Sink) -> bool:
    """Inflate one gzip stream; False when zlib would not reach the stream's end within limit output bytes."""
    d = zlib.decompressobj(zlib.MAX_WBITS | 32)
    pos = 0
    tail = b""
    try:
        while not d.eof:
            room = limit - sink.written
            if room == 0:
                return False  # output would overflow the buffer
            if tail:
                chunk: bytes | memoryview = tail
            elif pos < len(src):
                chunk = src[pos : pos + _CHUNK]
                pos += len(chunk)
            else:
                chunk = b""  # all input given; zlib may still hold output
            out = d.decompress(chunk, min(room, _OUT_CHUNK))
            if not out and not chunk:
                return False  # input ended inside the stream
            sink.write(out)
            tail = d.unconsumed_tail
    except zlib.error:
        return False
    return True


def _unlzma(src: memoryview, limit: int, sink: _Sink, fmt: int) -> bool:
    """Decode until limit bytes are out, as libxenguest's single lzma_code() call does; True when exactly limit."""
    d = lzma.LZMADecompressor(format=fmt, memlimit=_LZMA_MEMLIMIT)
    pos = 0
    try:
        while sink.written < limit and not d.eof:
            if d.needs_input:
                if pos >= len(src):
                    break
                chunk: bytes | memoryview = src[pos : pos + _CHUNK]
                pos += len(chunk)
            else:
                chunk = b""
            out = d.decompress(chunk, min(limit - sink.written, _OUT_CHUNK))
            if not out and not chunk and not d.needs_input:
                break  # no progress, and none to come
            sink.write(out)
    except lzma.LZMAError:
        return False
    return sink.written == limit


def _gunzip_blob(blob: bytes | bytearray, name: str, what: str) -> bytes:
    """xc_dom_try_gunzip for a kernel: failure to inflate fails the build."""
    size = _gunzip_size(blob)
    if size == 0:
        if len(blob) < 6:
            raise InputError(f"{name}: {what} is a truncated gzip file")
        claimed = int.from_bytes(blob[-4:], "little")
        raise InputError(
            f"{name}: {what} is gzip data claiming {claimed} bytes, more than the {_DECOMPRESS_MAX} libxenguest gunzips"
        )
    sink = _Sink()
    with memoryview(blob) as src:
        ok = _inflate(src, size, sink)
    if not ok:
        raise InputError(f"{name}: {what} is corrupt or truncated gzip data")
    return sink.padded(size)


# the payload formats libxenguest recognises, in the order it tries them
_COMPRESSIONS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "XZ"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x5d\x00", "LZMA"),
    (b"\x89LZO\x00", "LZO"),
    (b"\x02\x21", "LZ4"),
)


def _bzimage_payload(blob: bytes | bytearray, name: str) -> bytes:
    """The ELF file inside a bzImage (xc_dom_probe_bzimage_kernel)."""
    version = int.from_bytes(blob[0x206:0x208], "little")
    if version < 0x0208:
        raise InputError(f"{name}: bzImage boot protocol {version >> 8}.{version & 0xFF:02d} is older than 2.08")
    offset = (blob[0x1F1] + 1) * 512 + int.from_bytes(blob[0x248:0x24C], "little")
    length = int.from_bytes(blob[0x24C:0x250], "little")
    if offset >= len(blob):
        raise InputError(f"{name}: bzImage payload offset {offset:#x} is beyond the end of the file")
    if offset + length > len(blob):
        raise InputError(f"{name}: bzImage payload [{offset:#x}, {offset + length:#x}) runs past the end of the file")
    payload = blob[offset : offset + length]
    what = next((w for magic, w in _COMPRESSIONS if payload[: len(magic)] == magic), None)
    if what is None:
        raise InputError(f"{name}: bzImage payload compression unknown (starts {bytes(payload[:6]).hex()})")
    if what == "gzip":
        return _gunzip_blob(payload, name, "the bzImage payload")
    if what not in ("XZ", "LZMA"):
        raise InputError(f"{name}: bzImage payload compression {what} not supported")
    if len(payload) < 8:
        raise InputError(f"{name}: {what} bzImage payload is truncated ({len(payload)} bytes)")
    size = int.from_bytes(payload[-4:], "little")
    if size > _MAX_SEGMENT:
        raise InputError(f"{name}: {what} bzImage payload claims {size} bytes, more than {_MAX_SEGMENT}")
    sink = _Sink()
    with memoryview(payload) as mv:
        ok = _unlzma(mv[:-4], size, sink, lzma.FORMAT_XZ if what == "XZ" else lzma.FORMAT_ALONE)
    if not ok:
        raise InputError(f"{name}: {what} bzImage payload is corrupt, truncated or not the {size} bytes it claims")
    return sink.padded(size)


# --- ELF --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Phdr:
    index: int
    type: int
    flags: int
    offset: int
    paddr: int
    filesz: int
    memsz: int

    @property
    def loadable(self) -> bool:
        return self.type == _PT_LOAD and self.flags & _PF_RWX != 0


@dataclass
class _XenNotes:
    seen_notes: bool = False  # any note area was read, Xen's or not
    total: int = 0
    phys_entry: int | None = None
    virt_base: int | None = None
    paddr_offset: int | None = None
    p2m_base: int | None = None
    unmapped_initrd: bool = False
    bsd_symtab: bool = False
    required: set[int] = field(default_factory=set)


class _Elf:
    """Just the parts of an ELF file libelf reads for a PVH kernel; out-of-file header fields read as 0, as there."""

    def __init__(self, buf: bytes | bytearray, name: str):
        self.buf = buf
        self.size = len(buf)
        self.name = name
        if buf[4] == 1:
            self.is64 = False
        elif buf[4] == 2:
            self.is64 = True
        else:
            raise InputError(f"{name}: ELF class {buf[4]} is neither 32- nor 64-bit")
        if buf[5] == 1:
            self.order = "<"
        elif buf[5] == 2:
            self.order = ">"
        else:
            raise InputError(f"{name}: ELF data encoding {buf[5]} is neither little- nor big-endian")
        ehdr_size = 64 if self.is64 else 52
        if self.size < ehdr_size:
            raise InputError(f"{name}: truncated ELF header ({self.size} bytes)")
        if self.is64:
            self.phoff, self.shoff = self._u(32, 8), self._u(40, 8)
            self.phentsize, self.phnum, self.shentsize, shnum = (self._u(o, 2) for o in (54, 56, 58, 60))
        else:
            self.phoff, self.shoff = self._u(28, 4), self._u(32, 4)
            self.phentsize, self.phnum, self.shentsize, shnum = (self._u(o, 2) for o in (42, 44, 46, 48))
        self.machine = self._u(18, 2)
        if self.phoff + self.phentsize * self.phnum > self.size:
            raise InputError(f"{name}: ELF program headers run past the end of the file (truncated?)")
        self.shnum = min(shnum, self.size // 40)  # libelf's cap on a section count
        if self.shoff + self.shentsize * self.shnum > self.size:
            raise InputError(f"{name}: ELF section headers run past the end of the file (truncated?)")

    def _u(self, off: int, size: int) -> int:
        if off < 0 or off + size > self.size:
            return 0
        return int(struct.unpack_from(self.order + {1: "B", 2: "H", 4: "I", 8: "Q"}[size], self.buf, off)[0])

    def _str(self, off: int) -> bytes | None:
        """A NUL-terminated string inside the file, at most 4096 characters; None otherwise."""
        if off < 0 or off >= self.size:
            return None
        end = self.buf.find(b"\0", off, off + _MAX_STRING + 1)
        return None if end < 0 else bytes(self.buf[off:end])

    def phdrs(self) -> list[_Phdr]:
        out = []
        for i in range(self.phnum):
            b = self.phoff + self.phentsize * i
            if b >= self.size:
                break
            if self.is64:
                ph = _Phdr(i, self._u(b, 4), self._u(b + 4, 4), *(self._u(b + o, 8) for o in (8, 24, 32, 40)))
            else:
                ph = _Phdr(i, self._u(b, 4), self._u(b + 24, 4), *(self._u(b + o, 4) for o in (4, 12, 16, 20)))
            out.append(ph)
        return out

    def note_sections(self) -> list[tuple[int, int]]:
        out = []
        for i in range(1, self.shnum):
            b = self.shoff + self.shentsize * i
            if b >= self.size:
                break
            if self._u(b + 4, 4) != _SHT_NOTE:
                continue
            offset, size = (
                (self._u(b + 24, 8), self._u(b + 32, 8)) if self.is64 else (self._u(b + 16, 4), self._u(b + 20, 4))
            )
            out.append((offset, offset + size))
        return out

    def read_notes(self, start: int, end: int, notes: _XenNotes) -> int:
        """Walk one note area as libelf does (4-byte aligned, names read up to their NUL); count the Xen notes."""
        notes.seen_notes = True
        count = 0
        ptr = start
        while ptr < end:
            if notes.total >= _MAX_NOTES:
                break
            notes.total += 1
            if self._str(ptr + 12) == b"Xen":
                self._xen_note(ptr, notes)
                count += 1
            namesz = (self._u(ptr, 4) + 3) & 0xFFFFFFFC
            descsz = (self._u(ptr + 4, 4) + 3) & 0xFFFFFFFC
            if not 0 <= ptr < self.size:
                break
            ptr += 12 + namesz + descsz
        return count

    def _xen_note(self, ptr: int, notes: _XenNotes) -> None:
        kind = self._u(ptr + 8, 4)
        descsz = self._u(ptr + 4, 4)
        desc = ptr + 12 + ((self._u(ptr, 4) + 3) & 0xFFFFFFFC)
        if kind in _STRING_NOTES:
            text = self._str(desc)
            if text is None:
                return
            if kind == _NOTE_FEATURES:
                notes.required |= self._required_features(text)
            elif kind == _NOTE_BSD_SYMTAB and text == b"yes":
                notes.bsd_symtab = True
        elif kind in _NUMERIC_NOTES:
            value = self._u(desc, descsz) if descsz in (1, 2, 4, 8) else 0
            if kind == _NOTE_PHYS32_ENTRY:
                value &= 0xFFFFFFFF  # a 32-bit field there; all ones means unset
                notes.phys_entry = None if value == _UNSET32 else value
            elif kind == _NOTE_VIRT_BASE:
                notes.virt_base = None if value == _UNSET64 else value
            elif kind == _NOTE_PADDR_OFFSET:
                notes.paddr_offset = None if value == _UNSET64 else value
            elif kind == _NOTE_INIT_P2M:
                notes.p2m_base = None if value == _UNSET64 else value
            elif kind == _NOTE_MOD_START_PFN:
                notes.unmapped_initrd = value != 0

    def _required_features(self, text: bytes) -> set[int]:
        """The '!'-marked features of a FEATURES note; an unknown one makes libelf refuse the kernel."""
        required = set()
        pos = 0
        while pos < len(text):
            n = 0
            token = bytearray()
            while n < 63 and pos + n < len(text):  # libelf's 64-byte token buffer
                c = text[pos + n]
                n += 1
                if c == ord("|"):
                    break
                token.append(c)
            pos += n
            if token[:1] == b"!":
                bit = _FEATURES.get(bytes(token[1:]))
                if bit is None:
                    raise InputError(f"{self.name}: Xen FEATURES note requires unknown feature {bytes(token[1:])!r}")
                required.add(bit)
        return required


@dataclass(frozen=True)
class _Kernel:
    elf: _Elf
    loads: list[_Phdr]
    pstart: int
    pend: int
    entry: int
    unmapped_initrd: bool


def _parse_pvh_elf(buf: bytes | bytearray, name: str) -> _Kernel:
    """elf_parse_binary + elf_xen_parse for an HVM container + xc_dom_parse_elf_kernel's checks."""
    elf = _Elf(buf, name)
    phdrs = elf.phdrs()
    loads = [ph for ph in phdrs if ph.loadable]
    notes = _XenNotes()
    xen = sum(
        elf.read_notes(ph.offset, ph.offset + ph.filesz, notes) for ph in phdrs if ph.type == _PT_NOTE and ph.offset
    )
    if xen == 0:
        for start, end in elf.note_sections():
            elf.read_notes(start, end, notes)
    if notes.phys_entry is None:
        if not notes.seen_notes and elf.machine in (_EM_386, _EM_X86_64):
            raise InputError(f"{name}: ELF file has no notes, so it is not a Xen PVH kernel")
        raise InputError(f"{name}: no XEN_ELFNOTE_PHYS32_ENTRY (18) note, so it is not a PVH kernel")
    if notes.paddr_offset is not None and notes.virt_base is None:
        raise InputError(f"{name}: Xen note ELF_PADDR_OFFSET is set without VIRT_BASE")
    if not loads:
        raise InputError(f"{name}: ELF file has no loadable PT_LOAD program header")
    pstart = min(ph.paddr for ph in loads)
    pend = max(ph.paddr + ph.memsz for ph in loads)
    entry = notes.phys_entry
    if notes.bsd_symtab:
        raise InputError(f"{name}: the BSD_SYMTAB note asks for a symbol table load, which is not supported")
    if pstart > pend or not pstart <= entry <= pend:
        raise InputError(f"{name}: PVH entry {entry:#x} is outside the kernel [{pstart:#x}, {pend:#x}]")
    if notes.p2m_base is not None and pstart <= notes.p2m_base < pend:
        raise InputError(f"{name}: Xen note INIT_P2M {notes.p2m_base:#x} lies inside the kernel")
    if _FEAT_DOM0 in notes.required:
        raise InputError(f"{name}: the kernel requires to be dom0 and cannot run as a guest")
    if pstart % PAGE_SIZE:
        raise InputError(f"{name}: the kernel starts at {pstart:#x}, which is not page aligned")
    if pend == pstart:
        raise InputError(f"{name}: the kernel's loadable segments are all empty")
    if pend - pstart > _MAX_SEGMENT:
        raise InputError(f"{name}: the kernel spans {pend - pstart:#x} bytes, more than {_MAX_SEGMENT:#x}")
    dest_size = _pages(pend - pstart) * PAGE_SIZE
    if sum(ph.memsz for ph in loads) > 2 * dest_size:
        raise InputError(f"{name}: the loadable segments add up to more than twice the kernel's size")
    for ph in loads:
        if ph.filesz > ph.memsz:
            raise InputError(f"{name}: program header {ph.index} has p_filesz {ph.filesz:#x} > p_memsz {ph.memsz:#x}")
        if ph.offset + ph.filesz > elf.size:
            raise InputError(
                f"{name}: program header {ph.index} data [{ph.offset:#x}, {ph.offset + ph.filesz:#x}) "
                f"runs past the end of the file ({elf.size:#x} bytes; truncated?)"
            )
    return _Kernel(elf, loads, pstart, pend, entry, notes.unmapped_initrd)


def _has_bin_table(blob: bytes | bytearray) -> bool:
    """libxenguest's "bin" loader claims any image with its checksummed magic in the first 8 KiB."""
    if len(blob) < 32:
        return False
    end = 8192 if len(blob) > 8192 + 32 else len(blob) - 32
    magic = _BIN_TABLE_MAGIC.to_bytes(4, "little")
    at = blob.find(magic, 0, end + 3)
    while 0 <= at < end:
        if at % 4 == 0:
            flags, check = struct.unpack_from("<II", blob, at + 4)
            if (_BIN_TABLE_MAGIC + flags + check) & 0xFFFFFFFF == 0:
                return True
        at = blob.find(magic, at + 1, end + 3)
    return False


_ZEROS = bytes(_CHUNK)


def _zero(dst: memoryview, start: int, end: int) -> None:
    with memoryview(_ZEROS) as zeros:
        while start < end:
            n = min(end - start, len(zeros))
            dst[start : start + n] = zeros[:n]
            start += n


def load_pvh_image(
    kernel: bytes, ramdisk: bytes | None, *, kernel_name: str = "kernel", ramdisk_name: str = "ramdisk"
) -> PvhImage:
    """The kernel and ramdisk segments exactly as libxenguest 4.17 fills them for a PVH guest (see the module doc)."""
    if not kernel:
        raise InputError(f"{kernel_name}: empty file")
    if ramdisk is not None and not ramdisk:
        raise InputError(f"{ramdisk_name}: empty file")

    blob: bytes | bytearray = kernel
    if blob[:2] == _GZIP_MAGIC:
        blob = _gunzip_blob(blob, kernel_name, "the kernel")
    if _has_bin_table(blob):
        raise InputError(f"{kernel_name}: a Xen 'bin' image (multiboot-style table), not an ELF or bzImage kernel")
    is_elf = len(blob) >= 52 and blob[:4] == b"\x7fELF"
    is_bzimage = len(blob) >= _SETUP_HEADER_END and blob[0x202:0x206] == b"HdrS"
    if is_elf and is_bzimage:
        raise InputError(f"{kernel_name}: both an ELF file and a bzImage; libxenguest's choice is not predictable")
    if is_bzimage:
        blob = _bzimage_payload(blob, kernel_name)
        if not (len(blob) >= 52 and blob[:4] == b"\x7fELF"):
            raise InputError(f"{kernel_name}: the bzImage payload does not decompress to an ELF file")
    elif not is_elf:
        raise InputError(f"{kernel_name}: neither an ELF file nor a bzImage")
    k = _parse_pvh_elf(blob, kernel_name)

    kernel_bytes = _pages(k.pend - k.pstart) * PAGE_SIZE
    unzip = _gunzip_size(ramdisk) if ramdisk is not None else 0
    module_size = None if ramdisk is None else max(unzip, len(ramdisk))
    total = kernel_bytes + (0 if module_size is None else _pages(module_size) * PAGE_SIZE)

    # One buffer, zero-filled and grown once; getvalue() then hands it over without a copy.
    region = io.BytesIO()
    region.seek(total - 1)
    region.write(b"\0")
    gunzipped = False
    with region.getbuffer() as dst, memoryview(blob) as src:
        for ph in k.loads:
            at = ph.paddr - k.pstart
            dst[at : at + ph.filesz] = src[ph.offset : ph.offset + ph.filesz]
            _zero(dst, at + ph.filesz, at + ph.memsz)
        if ramdisk is not None:
            with memoryview(ramdisk) as rd:
                if unzip:
                    with dst[kernel_bytes : kernel_bytes + unzip] as window:
                        gunzipped = _inflate(rd, unzip, _Sink(window))
                if not gunzipped:
                    dst[kernel_bytes : kernel_bytes + len(rd)] = rd
                    _zero(dst, kernel_bytes + len(rd), kernel_bytes + unzip)
    return PvhImage(
        kernel_start=k.pstart,
        kernel_size=k.pend - k.pstart,
        entry=k.entry,
        module_size=module_size,
        module_gunzipped=gunzipped,
        module_after_start_info=ramdisk is not None and k.unmapped_initrd,
        data=region.getvalue(),
    )
