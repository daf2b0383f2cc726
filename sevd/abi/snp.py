"""SEV-SNP: the one definition of the firmware ABI both the host and the guest owner use.

Sources: AMD's "SEV Secure Nested Paging Firmware ABI Specification" (publication 56860; chapters
and tables named below), Linux `include/linux/psp-sev.h` (`enum sev_cmd`, the SNP command buffers,
the TCB structures) and `include/uapi/linux/psp-sev.h` (status codes, the user ioctl buffers), and
virtee's `sev`, `snpguest` and `sev-snp-measure` (report parsing, KDS paths, the launch digest).

What is here, and nothing else:
- firmware command ids (`SnpCommand`), the user ioctl ids (`SnpUserCommand`), platform and guest
  states, page types; the SNP status codes are in `sevd.abi.status` with the SEV ones;
- the guest policy (`SnpPolicy`), the TCB version (`TcbVersion`, per generation);
- the attestation report (`AttestationReport`: parse/to_bytes, the signed range);
- the launch digest rule (`page_info`, `extend`);
- the ID block and ID authentication structure (`IdBlock`, `IdAuth`) and the ECDSA P-384 encodings;
- the key server's paths for VCEKs (`kds_vcek_path`, `kds_chain_path`) and the VCEK's X.509
  extension OIDs.
The buffer layouts the ioctl carries are in `cffi_build.py`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import struct

from sevd.errors import InputError

# ---------------------------------------------------------------------------------------------------------------------
# Commands, states, page types


class SnpCommand(enum.IntEnum):
    """SNP firmware command ids (SNP ABI chapter 4, "Command identifiers"; Linux `enum sev_cmd`)."""

    SNP_INIT = 0x81
    SNP_SHUTDOWN = 0x82
    SNP_PLATFORM_STATUS = 0x83
    SNP_DF_FLUSH = 0x84
    SNP_INIT_EX = 0x85
    SNP_SHUTDOWN_EX = 0x86
    SNP_DECOMMISSION = 0x90
    SNP_ACTIVATE = 0x91
    SNP_GUEST_STATUS = 0x92
    SNP_GCTX_CREATE = 0x93
    SNP_GUEST_REQUEST = 0x94
    SNP_ACTIVATE_EX = 0x95
    SNP_LAUNCH_START = 0xA0
    SNP_LAUNCH_UPDATE = 0xA1
    SNP_LAUNCH_FINISH = 0xA2
    SNP_DBG_DECRYPT = 0xB0
    SNP_DBG_ENCRYPT = 0xB1
    SNP_PAGE_SWAP_OUT = 0xC0
    SNP_PAGE_SWAP_IN = 0xC1
    SNP_PAGE_MOVE = 0xC2
    SNP_PAGE_MD_INIT = 0xC3
    SNP_PAGE_SET_STATE = 0xC6
    SNP_PAGE_RECLAIM = 0xC7
    SNP_PAGE_UNSMASH = 0xC8
    SNP_CONFIG = 0xC9
    SNP_DOWNLOAD_FIRMWARE_EX = 0xCA
    SNP_COMMIT = 0xCB
    SNP_VLEK_LOAD = 0xCD
    SNP_FEATURE_INFO = 0xCE


class SnpUserCommand(enum.IntEnum):
    """`cmd` values of SEV_ISSUE_CMD for SNP (uapi `psp-sev.h`, after SEV_GET_ID2 = 8; Linux 6.11+)."""

    SNP_PLATFORM_STATUS = 9
    SNP_COMMIT = 10
    SNP_SET_CONFIG = 11
    SNP_VLEK_LOAD = 12


class SnpPlatformState(enum.IntEnum):
    """SNP platform states (SNP ABI "Platform state machine")."""

    UNINIT = 0
    INIT = 1


class SnpGuestState(enum.IntEnum):
    """SNP guest states (SNP ABI "Guest state machine"), as SNP_GUEST_STATUS reports them."""

    INIT = 0  # after SNP_GCTX_CREATE
    LAUNCH = 1  # after SNP_LAUNCH_START
    RUNNING = 2  # after SNP_LAUNCH_FINISH


class PageType(enum.IntEnum):
    """SNP_LAUNCH_UPDATE page types (SNP ABI "SNP_LAUNCH_UPDATE"; Linux SNP_PAGE_TYPE_*)."""

    NORMAL = 0x1
    VMSA = 0x2
    ZERO = 0x3
    UNMEASURED = 0x4
    SECRETS = 0x5
    CPUID = 0x6


PAGE_SIZE_4K = 0  # the page_size bit of the command buffers and the RMP
PAGE_SIZE_2M = 1

# Bits of the flag words in the command buffers (`cffi_build.py` declares each as one integer).
LAUNCH_UPDATE_PAGE_SIZE = 1 << 0  # sev_data_snp_launch_update.flags: bit 0 page size (1 = 2 MiB)
LAUNCH_UPDATE_PAGE_TYPE_SHIFT = 1  # bits 3:1 the PageType
LAUNCH_UPDATE_PAGE_TYPE_MASK = 0x7 << 1
LAUNCH_UPDATE_IMI_PAGE = 1 << 4
LAUNCH_START_MA_EN = 1 << 0  # sev_data_snp_launch_start.flags
LAUNCH_START_IMI_EN = 1 << 1
LAUNCH_FINISH_ID_BLOCK_EN = 1 << 0  # sev_data_snp_launch_finish.flags
LAUNCH_FINISH_AUTH_KEY_EN = 1 << 1
LAUNCH_FINISH_VCEK_DISABLED = 1 << 2
INIT_EX_INIT_RMP = 1 << 0  # sev_data_snp_init_ex.flags
INIT_EX_LIST_PADDR_EN = 1 << 1
INIT_EX_RAPL_DIS = 1 << 2
INIT_EX_CIPHERTEXT_HIDING_EN = 1 << 3
SHUTDOWN_EX_IOMMU_SNP_SHUTDOWN = 1 << 0  # sev_data_snp_shutdown_ex.flags
SHUTDOWN_EX_X86_SNP_SHUTDOWN = 1 << 1
STATUS_RMP_INITIALIZED = 1 << 0  # sevd_snp_platform_status.rmp_flags
STATUS_MASK_CHIP_ID = 1 << 0  # sevd_snp_platform_status.flags
STATUS_MASK_CHIP_KEY = 1 << 1
STATUS_VLEK_EN = 1 << 2
STATUS_FEATURE_INFO = 1 << 3
STATUS_RAPL_DIS = 1 << 4
STATUS_CIPHERTEXT_HIDING_CAP = 1 << 5
STATUS_CIPHERTEXT_HIDING_EN = 1 << 6
CONFIG_MASK_CHIP_ID = 1 << 0  # sevd_snp_config.flags
CONFIG_MASK_CHIP_KEY = 1 << 1
GUEST_STATUS_VCEK_DIS = 1 << 0  # sev_data_snp_guest_status_page.flags
PAGE_RECLAIM_2M = 1 << 0  # sev_data_snp_page_reclaim.paddr: bit 0 is the page size
WRAPPED_VLEK_HASHSTICK_SIZE = 432


def launch_update_flags(page_type: PageType, *, page_size: int = PAGE_SIZE_4K, imi_page: bool = False) -> int:
    """The flags word of SNP_LAUNCH_UPDATE's buffer."""
    return page_size | int(page_type) << LAUNCH_UPDATE_PAGE_TYPE_SHIFT | (LAUNCH_UPDATE_IMI_PAGE if imi_page else 0)


# Sizes.
GCTX_PAGE_SIZE = 4096
DIGEST_SIZE = 48  # SHA-384
HOST_DATA_SIZE = 32
REPORT_DATA_SIZE = 64
CHIP_ID_SIZE = 64
FAMILY_ID_SIZE = 16
IMAGE_ID_SIZE = 16
# A VMSA has no GPA of its own: the RMP records it as GPA (u64)-1, page-aligned and cut to 52 bits; the
# launch digest measures it at that address.
VMSA_GPA = 0xFFFFFFFFF000

# ---------------------------------------------------------------------------------------------------------------------
# Guest policy


class SnpPolicyFlag(enum.IntFlag):
    """Bits 16.. of the 64-bit SNP guest policy (SNP ABI "Guest Policy"; Linux SNP_POLICY_MASK_*)."""

    SMT = 1 << 16  # SMT allowed
    RESERVED_MBO = 1 << 17  # reserved, must be one
    MIGRATE_MA = 1 << 18  # association with a migration agent allowed
    DEBUG = 1 << 19  # debugging allowed
    SINGLE_SOCKET = 1 << 20  # the guest may run on one socket only
    CXL_ALLOW = 1 << 21  # CXL may be populated with guest memory
    MEM_AES_256_XTS = 1 << 22  # AES-256-XTS required for memory encryption
    RAPL_DIS = 1 << 23  # running average power limit must be disabled
    CIPHERTEXT_HIDING = 1 << 24  # ciphertext hiding for DRAM must be enabled
    PAGE_SWAP_DISABLE = 1 << 25  # SNP_PAGE_SWAP_OUT/IN are refused


SNP_POLICY_RESERVED_MASK = ~((1 << 26) - 1) & 0xFFFFFFFFFFFFFFFF  # bits 26-63 must be zero


@dataclasses.dataclass(frozen=True)
class SnpPolicy:
    """A validated 64-bit SNP guest policy: ABI minor in bits 0-7, major in 8-15, flags from bit 16."""

    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value <= 0xFFFFFFFFFFFFFFFF:
            raise InputError(f"SNP policy 0x{self.value:x} does not fit in 64 bits")
        if not self.value & SnpPolicyFlag.RESERVED_MBO:
            raise InputError(f"SNP policy 0x{self.value:x}: bit 17 is reserved and must be 1")
        if self.value & SNP_POLICY_RESERVED_MASK:
            raise InputError(
                f"SNP policy 0x{self.value:x} sets reserved bits 0x{self.value & SNP_POLICY_RESERVED_MASK:x} "
                "(bits 26-63 must be 0)"
            )

    @classmethod
    def make(cls, *flags: SnpPolicyFlag, abi_major: int = 0, abi_minor: int = 0) -> SnpPolicy:
        """A policy with RESERVED_MBO set, the given flags and minimum ABI version."""
        value = int(SnpPolicyFlag.RESERVED_MBO) | (abi_major & 0xFF) << 8 | (abi_minor & 0xFF)
        for flag in flags:
            value |= int(flag)
        return cls(value)

    @classmethod
    def parse(cls, text: str | int) -> SnpPolicy:
        """From an int, a hex/decimal string, or flag names joined by "|" or "," (RESERVED_MBO added)."""
        if isinstance(text, int):
            return cls(text)
        words = [w.strip() for w in text.replace("|", ",").split(",") if w.strip()]
        if not words:
            raise InputError("SNP policy is empty")
        value = 0
        named = False
        for word in words:
            try:
                value |= int(word, 0)
            except ValueError:
                try:
                    value |= SnpPolicyFlag[word.upper()]
                except KeyError:
                    known = ", ".join(f.name for f in SnpPolicyFlag if f.name)
                    raise InputError(f"SNP policy: unknown flag {word!r} (known: {known})") from None
                named = True
        if named:
            value |= SnpPolicyFlag.RESERVED_MBO
        return cls(int(value))

    @property
    def abi_minor(self) -> int:
        return self.value & 0xFF

    @property
    def abi_major(self) -> int:
        return (self.value >> 8) & 0xFF

    @property
    def flags(self) -> SnpPolicyFlag:
        return SnpPolicyFlag(self.value & 0x3FF0000)

    def has(self, flag: SnpPolicyFlag) -> bool:
        return bool(self.value & flag)

    def requires_abi_newer_than(self, major: int, minor: int) -> bool:
        """True when the policy's minimum firmware ABI is above `major.minor`."""
        return (self.abi_major, self.abi_minor) > (major, minor)

    def describe(self) -> str:
        names = [f.name for f in SnpPolicyFlag if f.name and f != SnpPolicyFlag.RESERVED_MBO and self.value & f]
        return f"{'|'.join(names) or 'none'} abi>={self.abi_major}.{self.abi_minor}"

    def __int__(self) -> int:
        return self.value

    def __str__(self) -> str:
        return f"0x{self.value:016x}"


# ---------------------------------------------------------------------------------------------------------------------
# TCB version


class TcbLayout(enum.Enum):
    """Which byte holds which SVN in a TCB_VERSION (SNP ABI "TCB_VERSION"; Linux sev_snp_tcb_version_*)."""

    MILAN_GENOA = "milan-genoa"  # boot_loader, tee, reserved[4], snp, microcode
    TURIN = "turin"  # fmc, boot_loader, tee, snp, reserved[3], microcode

    @classmethod
    def for_cpuid(cls, family: int) -> TcbLayout:
        """Family 0x1A (Turin) has the FMC layout; family 0x19 (Milan, Genoa) the older one."""
        return cls.TURIN if family >= 0x1A else cls.MILAN_GENOA


@dataclasses.dataclass(frozen=True)
class TcbVersion:
    """The security version numbers of each TCB component; `fmc` is None on Milan and Genoa."""

    boot_loader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def __post_init__(self) -> None:
        for name in ("boot_loader", "tee", "snp", "microcode", "fmc"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 0xFF:
                raise InputError(f"TCB {name} SVN {value} does not fit in a byte")

    @property
    def layout(self) -> TcbLayout:
        return TcbLayout.MILAN_GENOA if self.fmc is None else TcbLayout.TURIN

    @classmethod
    def from_bytes(cls, raw: bytes, layout: TcbLayout = TcbLayout.MILAN_GENOA) -> TcbVersion:
        if len(raw) != 8:
            raise InputError(f"a TCB_VERSION is 8 bytes, not {len(raw)}")
        if layout is TcbLayout.TURIN:
            return cls(boot_loader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(boot_loader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    @classmethod
    def from_int(cls, value: int, layout: TcbLayout = TcbLayout.MILAN_GENOA) -> TcbVersion:
        return cls.from_bytes(value.to_bytes(8, "little"), layout)

    def to_bytes(self) -> bytes:
        if self.fmc is not None:
            return bytes([self.fmc, self.boot_loader, self.tee, self.snp, 0, 0, 0, self.microcode])
        return bytes([self.boot_loader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def __int__(self) -> int:
        return int.from_bytes(self.to_bytes(), "little")

    def describe(self) -> str:
        fmc = f"fmc={self.fmc} " if self.fmc is not None else ""
        return f"{fmc}bl={self.boot_loader} tee={self.tee} snp={self.snp} ucode={self.microcode}"


# ---------------------------------------------------------------------------------------------------------------------
# Attestation report (SNP ABI "ATTESTATION_REPORT Structure"; version 3 adds the CPUID fields, 5 the mitigation
# vectors; laid out as snpguest and virtee's `sev` parse it)

REPORT_SIZE = 0x4A0
SIGNATURE_OFFSET = 0x2A0  # the signature covers bytes [0, SIGNATURE_OFFSET)
SIGNED_RANGE = (0, SIGNATURE_OFFSET)
REPORT_VERSION = 5  # what current firmware writes
SIG_ALGO_ECDSA_P384_SHA384 = 1
EC_COORD_SIZE = 72  # r, s, Qx, Qy: little-endian, zero-padded to 72 bytes


class SigningKey(enum.IntEnum):
    """Bits 4:2 of the report's key-info word: which key signed it."""

    VCEK = 0
    VLEK = 1
    NONE = 7


# name, offset, struct format (little-endian) or byte length
_REPORT_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("version", 0x000, "<I"),
    ("guest_svn", 0x004, "<I"),
    ("policy", 0x008, "<Q"),
    ("family_id", 0x010, "16s"),
    ("image_id", 0x020, "16s"),
    ("vmpl", 0x030, "<I"),
    ("sig_algo", 0x034, "<I"),
    ("current_tcb", 0x038, "8s"),
    ("platform_info", 0x040, "<Q"),
    ("key_info", 0x048, "<I"),
    ("report_data", 0x050, "64s"),
    ("measurement", 0x090, "48s"),
    ("host_data", 0x0C0, "32s"),
    ("id_key_digest", 0x0E0, "48s"),
    ("author_key_digest", 0x110, "48s"),
    ("report_id", 0x140, "32s"),
    ("report_id_ma", 0x160, "32s"),
    ("reported_tcb", 0x180, "8s"),
    ("cpuid_fam_id", 0x188, "B"),
    ("cpuid_mod_id", 0x189, "B"),
    ("cpuid_step", 0x18A, "B"),
    ("chip_id", 0x1A0, "64s"),
    ("committed_tcb", 0x1E0, "8s"),
    ("current_build", 0x1E8, "B"),
    ("current_minor", 0x1E9, "B"),
    ("current_major", 0x1EA, "B"),
    ("committed_build", 0x1EC, "B"),
    ("committed_minor", 0x1ED, "B"),
    ("committed_major", 0x1EE, "B"),
    ("launch_tcb", 0x1F0, "8s"),
    ("launch_mit_vector", 0x1F8, "<Q"),
    ("current_mit_vector", 0x200, "<Q"),
    ("signature_r", 0x2A0, "72s"),
    ("signature_s", 0x2E8, "72s"),
)
_TCB_FIELDS = ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")

# key_info bits
AUTHOR_KEY_EN = 1 << 0
MASK_CHIP_KEY = 1 << 1
SIGNING_KEY_SHIFT = 2


@dataclasses.dataclass(frozen=True)
class AttestationReport:
    """An SNP attestation report, 0x4A0 bytes; TCB fields decoded for the chip's generation."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    sig_algo: int
    current_tcb: TcbVersion
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    chip_id: bytes
    committed_tcb: TcbVersion
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: TcbVersion
    cpuid_fam_id: int = 0
    cpuid_mod_id: int = 0
    cpuid_step: int = 0
    launch_mit_vector: int = 0
    current_mit_vector: int = 0
    signature_r: bytes = bytes(EC_COORD_SIZE)
    signature_s: bytes = bytes(EC_COORD_SIZE)

    @property
    def tcb_layout(self) -> TcbLayout:
        return TcbLayout.for_cpuid(self.cpuid_fam_id) if self.version >= 3 else TcbLayout.MILAN_GENOA

    @property
    def author_key_en(self) -> bool:
        return bool(self.key_info & AUTHOR_KEY_EN)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.key_info & MASK_CHIP_KEY)

    @property
    def signing_key(self) -> int:
        """A `SigningKey` value (0 VCEK, 1 VLEK, 7 none); other values as the int found."""
        return (self.key_info >> SIGNING_KEY_SHIFT) & 0x7

    @classmethod
    def parse(cls, data: bytes, name: str = "attestation report") -> AttestationReport:
        if len(data) != REPORT_SIZE:
            raise InputError(f"{name}: {len(data)} bytes, an SNP attestation report is {REPORT_SIZE}")
        raw: dict[str, object] = {}
        for field, offset, fmt in _REPORT_FIELDS:
            (raw[field],) = struct.unpack_from(fmt, data, offset)
        version = raw["version"]
        assert isinstance(version, int)
        if version < 2:
            raise InputError(f"{name}: report version {version} is older than any SNP firmware writes")
        if version < 3:  # no CPUID fields before version 3
            raw["cpuid_fam_id"] = raw["cpuid_mod_id"] = raw["cpuid_step"] = 0
        if version < 5:
            raw["launch_mit_vector"] = raw["current_mit_vector"] = 0
        fam = raw["cpuid_fam_id"]
        assert isinstance(fam, int)
        layout = TcbLayout.for_cpuid(fam) if version >= 3 else TcbLayout.MILAN_GENOA
        for field in _TCB_FIELDS:
            value = raw[field]
            assert isinstance(value, bytes)
            raw[field] = TcbVersion.from_bytes(value, layout)
        return cls(**raw)  # type: ignore[arg-type]

    def to_bytes(self) -> bytes:
        out = bytearray(REPORT_SIZE)
        for field, offset, fmt in _REPORT_FIELDS:
            value = getattr(self, field)
            if isinstance(value, TcbVersion):
                value = value.to_bytes()
            struct.pack_into(fmt, out, offset, value)
        return bytes(out)

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: [0, 0x2A0)."""
        return self.to_bytes()[:SIGNATURE_OFFSET]

    def signature_rs(self) -> tuple[int, int]:
        """The ECDSA signature as integers (stored little-endian in 72 bytes each)."""
        return int.from_bytes(self.signature_r, "little"), int.from_bytes(self.signature_s, "little")

    def with_signature(self, r: int, s: int) -> AttestationReport:
        return dataclasses.replace(self, signature_r=le72(r), signature_s=le72(s))


def le72(value: int) -> bytes:
    """An ECDSA scalar or coordinate as the SNP ABI stores it: little-endian, zero-padded to 72 bytes."""
    return value.to_bytes(EC_COORD_SIZE, "little")


# ---------------------------------------------------------------------------------------------------------------------
# Launch digest (SNP ABI "SNP_LAUNCH_UPDATE" and "PAGE_INFO Structure")

PAGE_INFO_SIZE = 0x70
ZERO_DIGEST = bytes(DIGEST_SIZE)
_MEASURED_CONTENTS = frozenset({PageType.NORMAL, PageType.VMSA})
# Copying a fresh SHA-384 context is several times cheaper than `hashlib.sha384()`, which looks the algorithm up
# in OpenSSL 3's provider tables on every call; a launch hashes two short inputs per page.
_SHA384 = hashlib.sha384()


def _sha384(data: bytes) -> bytes:
    h = _SHA384.copy()
    h.update(data)
    return h.digest()


def page_contents(page_type: PageType, page: bytes | None) -> bytes:
    """PAGE_INFO.CONTENTS: SHA-384 of the page for NORMAL and VMSA pages, 48 zero bytes for the others."""
    if page_type in _MEASURED_CONTENTS:
        if page is None:
            raise InputError(f"a {page_type.name} page is measured: its contents are needed")
        return _sha384(page)
    return ZERO_DIGEST


def page_info(
    digest: bytes,
    contents: bytes,
    page_type: PageType,
    gpa: int,
    *,
    imi_page: bool = False,
    vmpl1_perms: int = 0,
    vmpl2_perms: int = 0,
    vmpl3_perms: int = 0,
) -> bytes:
    """The 0x70-byte PAGE_INFO: DIGEST_CUR(48) ‖ CONTENTS(48) ‖ LENGTH(u16 = 0x70) ‖ PAGE_TYPE(u8) ‖
    IMI_PAGE(u8) ‖ VMPL3_PERMS ‖ VMPL2_PERMS ‖ VMPL1_PERMS ‖ reserved(u8) ‖ GPA(u64), little-endian."""
    if len(digest) != DIGEST_SIZE or len(contents) != DIGEST_SIZE:
        raise InputError("PAGE_INFO digest and contents are 48 bytes each (SHA-384)")
    info = (
        digest
        + contents
        + struct.pack(
            "<HBBBBBBQ", PAGE_INFO_SIZE, int(page_type), int(imi_page), vmpl3_perms, vmpl2_perms, vmpl1_perms, 0, gpa
        )
    )
    assert len(info) == PAGE_INFO_SIZE
    return info


def extend(
    digest: bytes,
    page_type: PageType,
    gpa: int,
    page: bytes | None = None,
    *,
    imi_page: bool = False,
    vmpl1_perms: int = 0,
    vmpl2_perms: int = 0,
    vmpl3_perms: int = 0,
) -> bytes:
    """One SNP_LAUNCH_UPDATE of one 4 KiB page: digest_new = SHA-384(PAGE_INFO(digest_old, ...)).

    Every page type extends the digest; only NORMAL and VMSA pages contribute their contents (the VMSA
    at `VMSA_GPA`). The launch digest starts as 48 zero bytes (`ZERO_DIGEST`).
    """
    info = page_info(
        digest,
        page_contents(page_type, page),
        page_type,
        gpa,
        imi_page=imi_page,
        vmpl1_perms=vmpl1_perms,
        vmpl2_perms=vmpl2_perms,
        vmpl3_perms=vmpl3_perms,
    )
    return _sha384(info)


# ---------------------------------------------------------------------------------------------------------------------
# ID block and ID authentication (SNP ABI "SNP_LAUNCH_FINISH": ID_BLOCK and ID_AUTH_INFO structures)

ID_BLOCK_SIZE = 0x60
ID_BLOCK_VERSION = 1
ID_AUTH_SIZE = 0x1000
ECDSA_PUBKEY_SIZE = 0x404  # CURVE(u32) ‖ QX(72) ‖ QY(72) ‖ reserved
ECDSA_SIG_SIZE = 0x200  # R(72) ‖ S(72) ‖ reserved
CURVE_P384 = 2
# ID_AUTH_INFO offsets
ID_AUTH_ID_KEY_ALGO = 0x00
ID_AUTH_AUTHOR_KEY_ALGO = 0x04
ID_AUTH_ID_BLOCK_SIG = 0x40
ID_AUTH_ID_KEY = 0x240
ID_AUTH_ID_KEY_SIG = 0x680
ID_AUTH_AUTHOR_KEY = 0x880


@dataclasses.dataclass(frozen=True)
class IdBlock:
    """ID_BLOCK: the launch digest the owner expects, family/image ids, guest SVN and policy (0x60 bytes)."""

    launch_digest: bytes
    family_id: bytes = bytes(FAMILY_ID_SIZE)
    image_id: bytes = bytes(IMAGE_ID_SIZE)
    guest_svn: int = 0
    policy: int = int(SnpPolicyFlag.RESERVED_MBO)
    version: int = ID_BLOCK_VERSION

    @classmethod
    def parse(cls, data: bytes) -> IdBlock:
        if len(data) < ID_BLOCK_SIZE:
            raise InputError(f"an ID block is {ID_BLOCK_SIZE} bytes, not {len(data)}")
        ld, family, image, version, svn, policy = struct.unpack_from("<48s16s16sIIQ", data)
        return cls(ld, family, image, svn, policy, version)

    def to_bytes(self) -> bytes:
        return struct.pack(
            "<48s16s16sIIQ",
            self.launch_digest,
            self.family_id,
            self.image_id,
            self.version,
            self.guest_svn,
            self.policy,
        )


def ecdsa_pubkey_bytes(x: int, y: int) -> bytes:
    """A P-384 public key as the SNP ABI lays it out (0x404 bytes); its SHA-384 is the key's digest."""
    return struct.pack("<I", CURVE_P384) + le72(x) + le72(y) + bytes(ECDSA_PUBKEY_SIZE - 4 - 2 * EC_COORD_SIZE)


def parse_ecdsa_pubkey(data: bytes) -> tuple[int, int]:
    """(x, y) of a 0x404-byte SNP public key; InputError if it is not a P-384 key."""
    if len(data) < ECDSA_PUBKEY_SIZE:
        raise InputError(f"an SNP public key is {ECDSA_PUBKEY_SIZE} bytes, not {len(data)}")
    (curve,) = struct.unpack_from("<I", data)
    if curve != CURVE_P384:
        raise InputError(f"SNP public key: curve {curve}, only P-384 ({CURVE_P384}) is defined")
    x = int.from_bytes(data[4 : 4 + EC_COORD_SIZE], "little")
    y = int.from_bytes(data[4 + EC_COORD_SIZE : 4 + 2 * EC_COORD_SIZE], "little")
    return x, y


def ecdsa_sig_bytes(r: int, s: int) -> bytes:
    """An ECDSA signature as the SNP ABI lays it out (0x200 bytes)."""
    return le72(r) + le72(s) + bytes(ECDSA_SIG_SIZE - 2 * EC_COORD_SIZE)


def parse_ecdsa_sig(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[:EC_COORD_SIZE], "little"), int.from_bytes(
        data[EC_COORD_SIZE : 2 * EC_COORD_SIZE], "little"
    )


def key_digest(pubkey: bytes) -> bytes:
    """ID_KEY_DIGEST / AUTHOR_KEY_DIGEST of the report: SHA-384 of the 0x404-byte public key."""
    return hashlib.sha384(pubkey[:ECDSA_PUBKEY_SIZE]).digest()


@dataclasses.dataclass(frozen=True)
class IdAuth:
    """ID_AUTH_INFO (0x1000 bytes): the ID key signs the ID block; the author key (optional) signs the ID key."""

    id_block_sig: bytes  # 0x200, signed by the ID key over the 0x60-byte ID block
    id_key: bytes  # 0x404
    id_key_sig: bytes = bytes(ECDSA_SIG_SIZE)  # by the author key over the 0x404-byte ID key
    author_key: bytes = bytes(ECDSA_PUBKEY_SIZE)
    id_key_algo: int = SIG_ALGO_ECDSA_P384_SHA384
    author_key_algo: int = SIG_ALGO_ECDSA_P384_SHA384

    @classmethod
    def parse(cls, data: bytes) -> IdAuth:
        if len(data) < ID_AUTH_SIZE:
            raise InputError(f"an ID authentication structure is {ID_AUTH_SIZE} bytes, not {len(data)}")
        id_algo, author_algo = struct.unpack_from("<II", data)
        return cls(
            id_block_sig=data[ID_AUTH_ID_BLOCK_SIG : ID_AUTH_ID_BLOCK_SIG + ECDSA_SIG_SIZE],
            id_key=data[ID_AUTH_ID_KEY : ID_AUTH_ID_KEY + ECDSA_PUBKEY_SIZE],
            id_key_sig=data[ID_AUTH_ID_KEY_SIG : ID_AUTH_ID_KEY_SIG + ECDSA_SIG_SIZE],
            author_key=data[ID_AUTH_AUTHOR_KEY : ID_AUTH_AUTHOR_KEY + ECDSA_PUBKEY_SIZE],
            id_key_algo=id_algo,
            author_key_algo=author_algo,
        )

    def to_bytes(self) -> bytes:
        out = bytearray(ID_AUTH_SIZE)
        struct.pack_into("<II", out, 0, self.id_key_algo, self.author_key_algo)
        out[ID_AUTH_ID_BLOCK_SIG : ID_AUTH_ID_BLOCK_SIG + ECDSA_SIG_SIZE] = self.id_block_sig
        out[ID_AUTH_ID_KEY : ID_AUTH_ID_KEY + ECDSA_PUBKEY_SIZE] = self.id_key
        out[ID_AUTH_ID_KEY_SIG : ID_AUTH_ID_KEY_SIG + ECDSA_SIG_SIZE] = self.id_key_sig
        out[ID_AUTH_AUTHOR_KEY : ID_AUTH_AUTHOR_KEY + ECDSA_PUBKEY_SIZE] = self.author_key
        return bytes(out)


# ---------------------------------------------------------------------------------------------------------------------
# The key distribution server (AMD KDS, "VCEK Certificate and KDS Interface Specification", 57230) and the VCEK


class Product(enum.Enum):
    """KDS product names; the VCEK URL names the chip by its hwID and the reported TCB."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def tcb_layout(self) -> TcbLayout:
        return TcbLayout.TURIN if self is Product.TURIN else TcbLayout.MILAN_GENOA

    def hwid(self, chip_id: bytes) -> str:
        """The hwID in the URL: all 64 bytes of CHIP_ID in hex; Turin's is its first 8 bytes."""
        return (chip_id[:8] if self is Product.TURIN else chip_id).hex()


def kds_vcek_path(product: Product, chip_id: bytes, tcb: TcbVersion) -> str:
    """`/vcek/v1/{product}/{hwid}?[fmcSPL=..&]blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..` (decimal SPLs)."""
    query = f"blSPL={tcb.boot_loader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if product is Product.TURIN:
        query = f"fmcSPL={tcb.fmc or 0}&{query}"
    return f"/vcek/v1/{product.value}/{product.hwid(chip_id)}?{query}"


def kds_chain_path(product: Product) -> str:
    """`/vcek/v1/{product}/cert_chain`: the ASK then the ARK, PEM."""
    return f"/vcek/v1/{product.value}/cert_chain"


# VCEK X.509 extensions (AMD 57230, "VCEK certificate extensions"): SPLs are INTEGERs, hwID an OCTET STRING.
OID_STRUCT_VERSION = "1.3.6.1.4.1.3704.1.1"
OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
OID_BL_SPL = "1.3.6.1.4.1.3704.1.3.1"
OID_TEE_SPL = "1.3.6.1.4.1.3704.1.3.2"
OID_SNP_SPL = "1.3.6.1.4.1.3704.1.3.3"
OID_UCODE_SPL = "1.3.6.1.4.1.3704.1.3.8"
OID_FMC_SPL = "1.3.6.1.4.1.3704.1.3.9"
OID_HWID = "1.3.6.1.4.1.3704.1.4"
OID_CSP_ID = "1.3.6.1.4.1.3704.1.5"  # VLEK certificates: the cloud provider's name instead of a hwID
