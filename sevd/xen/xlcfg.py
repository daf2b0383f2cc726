"""xl domain configuration files, parsed by Xen's own parser (libxlutil) and checked for an SEV launch.

The file is read by `libxlutil.so.4.17` (Debian package libxenmisc4.17) through cffi in ABI mode:
the same lexer and grammar `xl create` uses, so a file `xl-sev` accepts is one `xl` accepts, and
syntax errors are reported in xl's words (`guest.cfg:2: config parsing error near ...`).  The
library needs no running Xen: it only parses.

libxlutil answers "what is the value of key K"; it does not say on which line K was set except in
its own warnings.  For our value checks the line is found by scanning the file for the last
`K = ...` assignment, which is the one libxlutil keeps (later settings override earlier ones).

SEV keys (stock `xl create` ignores all of them and starts the guest WITHOUT SEV):

    sev = 1                 make the guest an SEV guest (default 0)
    sev_policy = 0x1        the guest policy word (default 0x1, NODBG; plus ES with sev_es = 1)
    sev_es = 1              SEV-ES: the policy's ES bit (default: what sev_policy says)
    sev_session = "DIR"     the owner's launch session: godh.cert + launch_blob.bin (sev-tool) or
                            NAME_godh.b64 + NAME_session.b64 (sevctl); without it the firmware
                            makes its own keys and nobody can attest the launch

An SEV guest is either type = "hvm" with bios = "ovmf" (the measured image is the firmware,
bios_path_override or Debian's OVMF) or type = "pvh" with kernel = and optionally ramdisk = (the
measured image is the kernel and the ramdisk as the toolstack loads them: see sevd.owner.pvh).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
from pathlib import Path

from cffi import FFI

from sevd.abi.commands import CERT_SIZE, SESSION_SIZE
from sevd.abi.policy import Policy, PolicyFlag
from sevd.abi.units import MAX_VCPUS
from sevd.errors import InputError
from sevd.owner import files

LIBXLUTIL = "libxlutil.so.4.17"
DEFAULT_OVMF = "/usr/share/ovmf/OVMF.fd"
DEFAULT_POLICY = int(PolicyFlag.NODBG)
SEV_KEYS = ("sev", "sev_policy", "sev_es", "sev_session")
ON_EVENTS = ("on_poweroff", "on_reboot", "on_watchdog", "on_crash", "on_soft_reset")

_CDEF = """
typedef struct XLU_Config XLU_Config;
typedef struct XLU_ConfigList XLU_ConfigList;
typedef struct _IO_FILE FILE;

XLU_Config *xlu_cfg_init(FILE *report, const char *report_filename);
int xlu_cfg_readfile(XLU_Config *cfg, const char *real_filename);
void xlu_cfg_destroy(XLU_Config *cfg);
int xlu_cfg_get_string(const XLU_Config *cfg, const char *n, const char **value_r, int dont_warn);
int xlu_cfg_get_long(const XLU_Config *cfg, const char *n, long *value_r, int dont_warn);
int xlu_cfg_get_list(const XLU_Config *cfg, const char *n, XLU_ConfigList **list_r, int *entries_r,
                     int dont_warn);
const char *xlu_cfg_get_listitem(const XLU_ConfigList *list, int entry);

FILE *open_memstream(char **ptr, size_t *sizeloc);
int fflush(FILE *stream);
int fclose(FILE *stream);
void free(void *ptr);
"""

ffi = FFI()
ffi.cdef(_CDEF)
_lib = None
_libc = None


def _text(raw: bytes | str) -> str:
    """A C string libxlutil returned, as text (cffi gives bytes for `char *`; str only for `wchar_t *`)."""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def _libs():
    global _lib, _libc
    if _lib is None:
        try:
            _lib = ffi.dlopen(LIBXLUTIL)
        except OSError as exc:
            raise InputError(
                f"cannot load Xen's config parser {LIBXLUTIL} ({exc}): install Debian's libxenmisc4.17"
            ) from None
        _libc = ffi.dlopen(None)
    return _lib, _libc


class XlConfig:
    """A parsed xl configuration file; `report` collects libxlutil's messages, as xl prints them."""

    def __init__(self, path: str | os.PathLike[str]):
        lib, libc = _libs()
        self.path = str(path)
        self._buf = ffi.new("char **")
        self._size = ffi.new("size_t *")
        self._stream = libc.open_memstream(self._buf, self._size)
        if self._stream == ffi.NULL:
            raise OSError(ffi.errno, "open_memstream failed")
        self._cfg = lib.xlu_cfg_init(self._stream, self.path.encode())
        if self._cfg == ffi.NULL:
            self.close()
            raise MemoryError("xlu_cfg_init failed")
        rc = lib.xlu_cfg_readfile(self._cfg, self.path.encode())
        if rc:
            messages = self.report()
            self.close()
            if rc == errno.EINVAL and messages:
                raise InputError(messages)
            raise InputError(messages or f"{self.path}: cannot read: {os.strerror(rc)}")
        try:
            self._text = Path(self.path).read_text(errors="replace")
        except OSError:  # pragma: no cover - libxlutil just read it
            self._text = ""

    def close(self) -> None:
        lib, libc = _libs()
        if getattr(self, "_cfg", ffi.NULL) != ffi.NULL:
            lib.xlu_cfg_destroy(self._cfg)
            self._cfg = ffi.NULL
        if getattr(self, "_stream", ffi.NULL) != ffi.NULL:
            libc.fclose(self._stream)
            self._stream = ffi.NULL
            if self._buf[0] != ffi.NULL:
                libc.free(self._buf[0])
                self._buf[0] = ffi.NULL

    def __enter__(self) -> XlConfig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def report(self) -> str:
        """What libxlutil wrote to its report stream so far (its errors and warnings), stripped."""
        _, libc = _libs()
        libc.fflush(self._stream)
        if self._buf[0] == ffi.NULL:
            return ""
        return _text(ffi.string(self._buf[0], self._size[0])).strip()

    def _take_warning(self, fallback: str) -> str:
        """libxlutil's newest warning line (it names file, line and key), or `fallback`."""
        lines = self.report().splitlines()
        return lines[-1].replace(": warning: ", ": ", 1) if lines else fallback

    # -- values ---------------------------------------------------------------------------------------------

    def line_of(self, key: str) -> int | None:
        """The line of the assignment libxlutil keeps for `key` (the last one in the file)."""
        found = None
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for number, line in enumerate(self._text.splitlines(), 1):
            if pattern.match(line):
                found = number
        return found

    def where(self, key: str) -> str:
        line = self.line_of(key)
        return f"{self.path}:{line}" if line else self.path

    def assignments(self) -> list[tuple[str, int]]:
        """Every `key = ` assignment in the file, with its line (lines inside lists never start with a key)."""
        out = []
        for number, line in enumerate(self._text.splitlines(), 1):
            m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
            if m:
                out.append((m.group(1), number))
        return out

    def has(self, key: str) -> bool:
        lib, _ = _libs()
        out = ffi.new("const char **")
        if lib.xlu_cfg_get_string(self._cfg, key.encode(), out, 1) == 0:
            return True
        return lib.xlu_cfg_get_list(self._cfg, key.encode(), ffi.NULL, ffi.NULL, 1) == 0

    def string(self, key: str) -> str | None:
        lib, _ = _libs()
        out = ffi.new("const char **")
        rc = lib.xlu_cfg_get_string(self._cfg, key.encode(), out, 0)
        if rc == errno.ESRCH:
            return None
        if rc:
            raise InputError(self._take_warning(f"{self.where(key)}: `{key}' must be a single value"))
        return _text(ffi.string(out[0]))

    def long(self, key: str) -> int | None:
        lib, _ = _libs()
        out = ffi.new("long *")
        rc = lib.xlu_cfg_get_long(self._cfg, key.encode(), out, 0)
        if rc == errno.ESRCH:
            return None
        if rc:
            raise InputError(self._take_warning(f"{self.where(key)}: `{key}' is not a valid number"))
        return int(out[0])

    def list(self, key: str) -> list[str] | None:
        lib, _ = _libs()
        lst = ffi.new("XLU_ConfigList **")
        count = ffi.new("int *")
        rc = lib.xlu_cfg_get_list(self._cfg, key.encode(), lst, count, 0)
        if rc == errno.ESRCH:
            return None
        if rc:
            raise InputError(self._take_warning(f"{self.where(key)}: `{key}' must be a list"))
        items = []
        for i in range(count[0]):
            item = lib.xlu_cfg_get_listitem(lst[0], i)
            items.append("" if item == ffi.NULL else _text(ffi.string(item)))
        return items


# -- the guest an xl-sev cfg describes ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SessionFiles:
    """The owner's launch session as given by sev_session: the GODH certificate and the launch blob."""

    directory: Path
    godh: bytes
    blob: bytes
    form: str  # "sev-tool" or "sevctl:NAME"


@dataclasses.dataclass(frozen=True)
class GuestConfig:
    path: str
    name: str
    type: str
    memory_mb: int
    vcpus: int
    bios: str | None
    image: Path
    sev: bool
    policy: Policy
    es: bool
    session: SessionFiles | None
    # PVH direct boot: `image` is the kernel; the measured bytes are built from both files.
    ramdisk: Path | None = None
    # What the cfg says xl does on each guest event (ON_EVENTS keys it sets: on_reboot = "restart", ...).
    actions: tuple[tuple[str, str], ...] = ()

    @property
    def pvh(self) -> bool:
        return self.type == "pvh"

    def describe_image(self) -> str:
        if not self.pvh:
            return str(self.image)
        return f"kernel {self.image}" + (f" + ramdisk {self.ramdisk}" if self.ramdisk else "")

    def read_image(self) -> bytes:
        """The bytes the launch measures: the firmware file, or a PVH kernel and ramdisk as loaded."""
        if not self.pvh:
            return files.read_bytes(self.image, "boot image (bios_path_override)")
        from sevd.owner.pvh import load_pvh_image

        kernel = files.read_bytes(self.image, "kernel")
        ramdisk = files.read_bytes(self.ramdisk, "ramdisk") if self.ramdisk else None
        return load_pvh_image(kernel, ramdisk, kernel_name=str(self.image), ramdisk_name=str(self.ramdisk)).data


def read_session_dir(directory: Path, where: str = "sev_session") -> SessionFiles:
    """sev-tool's godh.cert + launch_blob.bin, else one sevctl NAME_godh.b64 + NAME_session.b64 pair."""
    if not directory.is_dir():
        raise InputError(f"{where}: {directory} is not a directory")
    if (directory / files.GODH).exists() or (directory / files.LAUNCH_BLOB).exists():
        godh = files.read_bytes(directory / files.GODH, "GODH certificate")
        blob = files.read_bytes(directory / files.LAUNCH_BLOB, "launch blob")
        form = "sev-tool"
    else:
        pairs = sorted(p.name[: -len("_godh.b64")] for p in directory.glob("*_godh.b64"))
        pairs = [n for n in pairs if (directory / files.sevctl_names(n)["session"]).exists()]
        if not pairs:
            raise InputError(
                f"{where}: {directory} holds neither godh.cert + launch_blob.bin (sev-tool) "
                "nor NAME_godh.b64 + NAME_session.b64 (sevctl)"
            )
        if len(pairs) > 1:
            raise InputError(f"{where}: {directory} holds several sevctl sessions ({', '.join(pairs)}); keep one")
        names = files.sevctl_names(pairs[0])
        godh = files.read_base64(directory / names["godh"], "GODH certificate")
        blob = files.read_base64(directory / names["session"], "launch session")
        form = f"sevctl:{pairs[0]}"
    if len(godh) != CERT_SIZE:
        raise InputError(f"{where}: the GODH certificate is {len(godh)} bytes, expected {CERT_SIZE}")
    if len(blob) != SESSION_SIZE:
        raise InputError(f"{where}: the launch blob is {len(blob)} bytes, expected {SESSION_SIZE}")
    return SessionFiles(directory, godh, blob, form)


def _flag(cfg: XlConfig, key: str) -> bool | None:
    value = cfg.long(key)
    if value is None:
        return None
    if value not in (0, 1):
        raise InputError(f"{cfg.where(key)}: `{key}' must be 0 or 1, got {value}")
    return bool(value)


def check_image(image: Path, memory_mb: int, cfg: XlConfig | None = None, key: str = "bios_path_override") -> None:
    where = cfg.where(key) if cfg else key
    if not image.is_file():
        raise InputError(f"{where}: boot image {image} does not exist")
    size = image.stat().st_size
    if size == 0 or size > memory_mb * 1024 * 1024:
        where = cfg.where("memory") if cfg else "memory"
        raise InputError(f"{where}: the boot image {image} ({size} bytes) does not fit in {memory_mb} MiB")


def load(path: str | os.PathLike[str]) -> GuestConfig:
    """Parse and check an xl cfg for `xl-sev create`; InputError names the file, line and key."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such configuration file")
    with XlConfig(path) as cfg:
        return _guest(cfg)


def _guest(cfg: XlConfig) -> GuestConfig:
    for key, line in cfg.assignments():
        if key.startswith("sev") and key not in SEV_KEYS:
            raise InputError(f"{cfg.path}:{line}: unknown key `{key}' (the SEV keys are {', '.join(SEV_KEYS)})")

    name = cfg.string("name")
    if not name:
        raise InputError(f"{cfg.where('name')}: `name' is missing or empty")
    if not re.fullmatch(r"[A-Za-z0-9_.+-][A-Za-z0-9_.+@:-]*", name) or name.isdigit():
        raise InputError(f"{cfg.where('name')}: `name' {name!r} is not a usable domain name")
    memory = cfg.long("memory")
    if memory is None:
        raise InputError(f"{cfg.path}: `memory' is missing (MiB)")
    if memory <= 0:
        raise InputError(f"{cfg.where('memory')}: `memory' must be positive, got {memory}")
    vcpus = cfg.long("vcpus")
    if vcpus is not None and vcpus <= 0:
        raise InputError(f"{cfg.where('vcpus')}: `vcpus' must be positive, got {vcpus}")
    if vcpus is not None and vcpus > MAX_VCPUS:
        raise InputError(f"{cfg.where('vcpus')}: `vcpus' is {vcpus}; Xen runs at most {MAX_VCPUS} in a guest")
    dom_type = cfg.string("type") or ("hvm" if cfg.string("builder") == "hvm" else "pv")
    bios = cfg.string("bios")
    kernel = cfg.string("kernel")
    ramdisk = cfg.string("ramdisk")
    image = kernel if dom_type == "pvh" and kernel else cfg.string("bios_path_override") or DEFAULT_OVMF

    sev = bool(_flag(cfg, "sev"))
    es = _flag(cfg, "sev_es")
    raw_policy = cfg.long("sev_policy")
    session = None
    if not sev:
        for key in ("sev_policy", "sev_es", "sev_session"):
            if cfg.has(key):
                raise InputError(f"{cfg.where(key)}: `{key}' needs sev = 1")
        policy = Policy(0)
        es = False
    else:
        if dom_type not in ("hvm", "pvh"):
            raise InputError(f'{cfg.where("type")}: an SEV guest needs type = "hvm" or "pvh", got {dom_type!r}')
        if dom_type == "hvm" and bios != "ovmf":
            raise InputError(f'{cfg.where("bios")}: an SEV HVM guest needs bios = "ovmf", got {bios!r}')
        if dom_type == "pvh" and not kernel:
            raise InputError(
                f"{cfg.where('kernel')}: an SEV PVH guest needs `kernel' (direct boot is what is measured)"
            )
        if raw_policy is None:
            value = DEFAULT_POLICY | (int(PolicyFlag.ES) if es else 0)
        elif not 0 <= raw_policy <= 0xFFFFFFFF:
            raise InputError(f"{cfg.where('sev_policy')}: `sev_policy' {raw_policy:#x} does not fit in 32 bits")
        else:
            value = raw_policy
        try:
            policy = Policy(value)
        except InputError as exc:
            raise InputError(f"{cfg.where('sev_policy')}: `sev_policy': {exc}") from None
        if es is None:
            es = policy.is_es()
        elif es != policy.is_es():
            raise InputError(
                f"{cfg.where('sev_es')}: `sev_es' = {int(es)} but sev_policy {policy} "
                f"{'lacks' if es else 'sets'} the ES bit (0x4)"
            )
        session_dir = cfg.string("sev_session")
        if session_dir is not None:
            session = read_session_dir(Path(session_dir), f"{cfg.where('sev_session')}: `sev_session'")
    image_path = Path(image)
    ramdisk_path = Path(ramdisk) if dom_type == "pvh" and ramdisk else None
    if sev and dom_type == "pvh":
        check_image(image_path, memory, cfg, "kernel")
        if ramdisk_path is not None:
            check_image(ramdisk_path, memory, cfg, "ramdisk")
    elif sev:
        check_image(image_path, memory, cfg)
    return GuestConfig(
        path=cfg.path,
        name=name,
        type=dom_type,
        memory_mb=memory,
        vcpus=vcpus or 1,
        bios=bios,
        image=image_path,
        sev=sev,
        policy=policy,
        es=bool(es),
        session=session,
        ramdisk=ramdisk_path,
        actions=tuple((key, act) for key in ON_EVENTS if (act := cfg.string(key)) is not None),
    )
