"""The SEV-SNP firmware model: platform and guest state machines, RMP checks, the launch digest, guest requests.

Sans-I/O like `firmware.py`: methods take Python values and bytes, change `self.state` (the "snp" part of the
PSP's JSON state, saved by the device layer under the mailbox lock) and the RMP (`sevd_sim.rmp`, Xen's), and
return outputs or raise the spec-named `FirmwareError`.  Legality is in the two tables below; docs/snp.md lists
the sources and the check order.  Guests are named by the system-physical address of their context page.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sevd.abi import snp, snp_msg, status
from sevd.abi.snp import PageType, Product, SnpGuestState, SnpPlatformState, TcbVersion
from sevd.abi.snp import SnpCommand as S
from sevd.errors import InputError, VerificationError
from sevd_sim.psp import snp_keys
from sevd_sim.psp.memory import MachineMemory, PhysicalMemory
from sevd_sim.rmp import PAGE, Rmp

SNP_API_MAJOR, SNP_API_MINOR, SNP_BUILD = 1, 55, 21
DEFAULT_TCB = TcbVersion(boot_loader=4, tee=0, snp=22, microcode=213)

U, I = SnpPlatformState.UNINIT, SnpPlatformState.INIT  # noqa: E741
G_INIT, G_LAUNCH, G_RUNNING = SnpGuestState.INIT, SnpGuestState.LAUNCH, SnpGuestState.RUNNING

# Command × SNP platform state: where the command is legal (else INVALID_PLATFORM_STATE).
PLATFORM_STATES: dict[S, frozenset[SnpPlatformState]] = {
    S.SNP_INIT: frozenset({U}),
    S.SNP_INIT_EX: frozenset({U}),
    S.SNP_SHUTDOWN_EX: frozenset({U, I}),
    S.SNP_PLATFORM_STATUS: frozenset({U, I}),
    S.SNP_DF_FLUSH: frozenset({I}),
    S.SNP_CONFIG: frozenset({I}),
    S.SNP_COMMIT: frozenset({I}),
    S.SNP_VLEK_LOAD: frozenset({I}),
    S.SNP_GCTX_CREATE: frozenset({I}),
    S.SNP_LAUNCH_START: frozenset({I}),
    S.SNP_LAUNCH_UPDATE: frozenset({I}),
    S.SNP_LAUNCH_FINISH: frozenset({I}),
    S.SNP_ACTIVATE: frozenset({I}),
    S.SNP_GUEST_STATUS: frozenset({I}),
    S.SNP_GUEST_REQUEST: frozenset({I}),
    S.SNP_DECOMMISSION: frozenset({I}),
    S.SNP_PAGE_RECLAIM: frozenset({I}),
}

# Command × guest state: where the command is legal (else INVALID_GUEST_STATE), and the state after success.
GUEST_STATES: dict[S, frozenset[SnpGuestState]] = {
    S.SNP_LAUNCH_START: frozenset({G_INIT}),
    S.SNP_LAUNCH_UPDATE: frozenset({G_LAUNCH}),
    S.SNP_LAUNCH_FINISH: frozenset({G_LAUNCH}),
    S.SNP_ACTIVATE: frozenset({G_LAUNCH, G_RUNNING}),
    S.SNP_GUEST_REQUEST: frozenset({G_RUNNING}),
    S.SNP_GUEST_STATUS: frozenset({G_INIT, G_LAUNCH, G_RUNNING}),
    S.SNP_DECOMMISSION: frozenset({G_INIT, G_LAUNCH, G_RUNNING}),
}
GUEST_NEXT: dict[S, SnpGuestState] = {S.SNP_LAUNCH_START: G_LAUNCH, S.SNP_LAUNCH_FINISH: G_RUNNING}

# CPUID leaves the chip pins: a CPUID page entry for one of these must report exactly the chip's values.
# (eax_in, ecx_in) → (eax, ebx, ecx, edx).  Other leaves are accepted as given (a documented simplification).
CPUID_TABLE_MAX = 64
CPUID_ENTRY_SIZE = 0x30
CPUID_HEADER_SIZE = 0x10


def new_snp_state(chip_secret: bytes | None = None) -> dict[str, Any]:
    return {
        "platform": int(U),
        "chip_secret": (chip_secret or os.urandom(48)).hex(),
        "current_tcb": int(DEFAULT_TCB),
        "reported_tcb": int(DEFAULT_TCB),
        "committed_tcb": int(DEFAULT_TCB),
        "committed_version": [SNP_BUILD, SNP_API_MINOR, SNP_API_MAJOR],
        "mask_chip_id": False,
        "mask_chip_key": False,
        "vlek": None,
        "guests": {},
        "asids": {},
    }


class SnpFirmware:
    """The SNP half of the simulated PSP.  `sev_platform` reads the legacy SEV platform state (0 = UNINIT)."""

    def __init__(
        self,
        state: dict[str, Any],
        rmp: Rmp,
        memory: PhysicalMemory | MachineMemory,
        *,
        chip_id: bytes,
        product: Product,
        cpuid: dict[tuple[int, int], tuple[int, int, int, int]],
        cpuid_fms: tuple[int, int, int],
        min_sev_asid: int,
        sev_platform: int = 0,
    ):
        self.state = state
        self.rmp = rmp
        self.memory = memory
        self.chip_id = chip_id
        self.product = product
        self.cpuid = cpuid
        self.cpuid_fms = cpuid_fms
        self.min_sev_asid = min_sev_asid
        self.sev_platform = sev_platform

    # -- helpers -------------------------------------------------------------------------------------------

    @property
    def platform(self) -> SnpPlatformState:
        return SnpPlatformState(self.state["platform"])

    def _tcb(self, key: str) -> TcbVersion:
        return TcbVersion.from_int(self.state[key], self.product.tcb_layout)

    def _check_platform(self, cmd: S) -> None:
        if self.platform not in PLATFORM_STATES[cmd]:
            raise status.InvalidPlatformState(cmd.name, detail=f"SNP platform is {self.platform.name}")

    def _guest(self, cmd: S, gctx: int) -> dict[str, Any]:
        """The guest whose context page is at `gctx`: INVALID_GUEST unless that page is a live context page."""
        guest = self.state["guests"].get(str(gctx))
        if guest is None or self.rmp.firmware_use(gctx) != "context":
            raise status.InvalidGuest(cmd.name, detail=f"no guest context at {gctx:#x}")
        return guest

    def _enter(self, cmd: S, gctx: int) -> dict[str, Any]:
        self._check_platform(cmd)
        guest = self._guest(cmd, gctx)
        allowed = GUEST_STATES.get(cmd)
        if allowed is not None and SnpGuestState(guest["state"]) not in allowed:
            raise status.InvalidGuestState(cmd.name, detail=f"guest is {SnpGuestState(guest['state']).name}")
        return guest

    def _transition(self, cmd: S, guest: dict[str, Any]) -> None:
        if cmd in GUEST_NEXT:
            guest["state"] = int(GUEST_NEXT[cmd])

    def _page(self, cmd: S, spa: int) -> None:
        if spa % PAGE:
            raise status.InvalidAddress(cmd.name, detail=f"{spa:#x} is not 4 KiB aligned")
        if not self.memory.contains(spa, PAGE):
            raise status.InvalidAddress(cmd.name, detail=f"{spa:#x} is outside memory")

    # -- platform --------------------------------------------------------------------------------------------

    def init(self, cmd: S = S.SNP_INIT, *, init_rmp: bool = True) -> None:
        """SNP_INIT / SNP_INIT_EX: Xen must have set the RMP up; the SEV platform must still be UNINIT."""
        self._check_platform(cmd)
        if self.sev_platform != 0:
            raise status.InvalidPlatformState(cmd.name, detail="SEV INIT ran first: SNP_INIT must come before INIT")
        if not self.rmp.initialised:
            raise status.RmpInitRequired(cmd.name, detail="the hypervisor has not set the RMP up (SNPEn, RMP base)")
        self.state["platform"] = int(I)

    def shutdown(self) -> None:
        """SNP_SHUTDOWN_EX: the SEV platform must be shut down first; every SNP guest context is dropped."""
        self._check_platform(S.SNP_SHUTDOWN_EX)
        if self.sev_platform != 0:
            raise status.ShutdownRequired(S.SNP_SHUTDOWN_EX.name, detail="SHUT DOWN the SEV platform first")
        for gctx in list(self.state["guests"]):
            self.rmp.firmware_set(int(gctx), firmware_use="")
        self.state.update(platform=int(U), guests={}, asids={}, vlek=None)

    def platform_status(self) -> dict[str, Any]:
        self._check_platform(S.SNP_PLATFORM_STATUS)
        return {
            "api_major": SNP_API_MAJOR,
            "api_minor": SNP_API_MINOR,
            "state": int(self.platform),
            "rmp_initialized": self.rmp.initialised,
            "build_id": SNP_BUILD,
            "mask_chip_id": bool(self.state["mask_chip_id"]),
            "mask_chip_key": bool(self.state["mask_chip_key"]),
            "vlek_en": self.state["vlek"] is not None,
            "guest_count": len(self.state["guests"]),
            "current_tcb": self.state["current_tcb"],
            "reported_tcb": self.state["reported_tcb"],
        }

    def df_flush(self) -> None:
        self._check_platform(S.SNP_DF_FLUSH)

    def set_config(self, reported_tcb: int, mask_chip_id: bool, mask_chip_key: bool, reserved: bytes = b"") -> None:
        """SNP_CONFIG: the TCB reports carry (not above the current TCB) and the chip id/key masks."""
        self._check_platform(S.SNP_CONFIG)
        if any(reserved):
            raise status.InvalidParam(S.SNP_CONFIG.name, detail="reserved bytes are not zero")
        wanted, current = TcbVersion.from_int(reported_tcb, self.product.tcb_layout), self._tcb("current_tcb")
        if any(getattr(wanted, f) > getattr(current, f) for f in ("boot_loader", "tee", "snp", "microcode")) or (
            (wanted.fmc or 0) > (current.fmc or 0)
        ):
            raise status.InvalidParam(S.SNP_CONFIG.name, detail="REPORTED_TCB is above the current TCB")
        self.state.update(reported_tcb=reported_tcb, mask_chip_id=mask_chip_id, mask_chip_key=mask_chip_key)

    def commit(self) -> None:
        """SNP_COMMIT: the current firmware and TCB become the committed (anti-rollback) ones."""
        self._check_platform(S.SNP_COMMIT)
        self.state["committed_tcb"] = self.state["current_tcb"]
        self.state["committed_version"] = [SNP_BUILD, SNP_API_MINOR, SNP_API_MAJOR]

    def vlek_load(self, version: int, hashstick: bytes) -> None:
        self._check_platform(S.SNP_VLEK_LOAD)
        if version != 0 or len(hashstick) != snp.WRAPPED_VLEK_HASHSTICK_SIZE:
            raise status.InvalidParam(S.SNP_VLEK_LOAD.name, detail="wrapped VLEK version 0, 432 bytes")
        self.state["vlek"] = hashstick.hex()

    # -- guests ----------------------------------------------------------------------------------------------

    def gctx_create(self, gctx: int) -> None:
        """SNP_GCTX_CREATE: the page must be in the Firmware state (assigned to ASID 0, immutable, 4 KiB)."""
        cmd = S.SNP_GCTX_CREATE
        self._check_platform(cmd)
        self._page(cmd, gctx)
        entry = self.rmp.entry(gctx)
        if entry.page_size != snp.PAGE_SIZE_4K:
            raise status.InvalidPageSize(cmd.name, detail=f"{gctx:#x} is part of a 2 MiB RMP entry")
        if not entry.firmware_owned or entry.firmware_use:
            raise status.InvalidPageState(cmd.name, detail=f"{gctx:#x} is not in the Firmware page state")
        self.memory.write(gctx, bytes(PAGE))
        self.rmp.firmware_set(gctx, firmware_use="context")
        self.state["guests"][str(gctx)] = {"state": int(G_INIT), "policy": 0, "asid": 0, "digest": bytes(48).hex()}

    def launch_start(self, gctx: int, policy: int, gosvw: bytes = bytes(16), ma_en: bool = False) -> None:
        cmd = S.SNP_LAUNCH_START
        guest = self._enter(cmd, gctx)
        try:
            parsed = snp.SnpPolicy(policy)
        except InputError as exc:
            raise status.PolicyFailure(cmd.name, detail=str(exc)) from None
        if parsed.requires_abi_newer_than(SNP_API_MAJOR, SNP_API_MINOR):
            raise status.PolicyFailure(cmd.name, detail=f"policy needs ABI {parsed.abi_major}.{parsed.abi_minor}")
        if parsed.has(snp.SnpPolicyFlag.CIPHERTEXT_HIDING) or parsed.has(snp.SnpPolicyFlag.RAPL_DIS):
            raise status.PolicyFailure(cmd.name, detail="ciphertext hiding / RAPL disable are not enabled at SNP_INIT")
        if ma_en and not parsed.has(snp.SnpPolicyFlag.MIGRATE_MA):
            raise status.PolicyFailure(cmd.name, detail="a migration agent without MIGRATE_MA")
        if ma_en:
            raise status.Unsupported(cmd.name, detail="migration agents are not modelled")
        vmpcks = [os.urandom(32).hex() for _ in range(4)]
        guest.update(policy=policy, gosvw=gosvw.hex(), vmpcks=vmpcks, seqnos=[0, 0, 0, 0])
        guest["report_id"] = os.urandom(32).hex()
        self._transition(cmd, guest)

    def activate(self, gctx: int, asid: int) -> None:
        """SNP_ACTIVATE: an ASID of the SEV-ES/SNP range (1..min_sev_asid-1), not another guest's."""
        cmd = S.SNP_ACTIVATE
        self._check_platform(cmd)
        if not 0 < asid < self.min_sev_asid:
            raise status.InvalidAsid(cmd.name, detail=f"ASID {asid} is not in the SNP range 1..{self.min_sev_asid - 1}")
        owner = self.state["asids"].get(str(asid))
        if owner is not None and owner != str(gctx):
            raise status.AsidOwned(cmd.name, detail=f"ASID {asid} is bound to another guest")
        guest = self._enter(cmd, gctx)
        if guest["asid"]:
            raise status.Active(cmd.name, detail=f"already bound to ASID {guest['asid']}")
        guest["asid"] = asid
        self.state["asids"][str(asid)] = str(gctx)

    def launch_update(
        self,
        gctx: int,
        spa: int,
        page_type: int,
        *,
        page_size: int = snp.PAGE_SIZE_4K,
        imi_page: bool = False,
        vmpl_perms: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        """SNP_LAUNCH_UPDATE of one page: RMP checks, then the page type's effect and the digest extension."""
        cmd = S.SNP_LAUNCH_UPDATE
        guest = self._enter(cmd, gctx)
        if not guest["asid"]:
            raise status.Inactive(cmd.name)
        if page_type not in PageType._value2member_map_:
            raise status.InvalidParam(cmd.name, detail=f"page type {page_type}")
        kind = PageType(page_type)
        self._page(cmd, spa)
        entry = self.rmp.entry(spa)
        if page_size != entry.page_size:
            raise status.InvalidPageSize(cmd.name, detail=f"page size {page_size}, the RMP says {entry.page_size}")
        if page_size != snp.PAGE_SIZE_4K:
            raise status.Unsupported(cmd.name, detail="2 MiB launch pages are not modelled")
        if entry.assigned and entry.asid not in (0, guest["asid"]):
            raise status.InvalidPageOwner(cmd.name, detail=f"{spa:#x} is assigned to ASID {entry.asid}")
        if not entry.pre_guest:
            raise status.InvalidPageState(cmd.name, detail=f"{spa:#x} is not in the Pre-Guest state")
        if kind is PageType.VMSA and entry.gpa != snp.VMSA_GPA:
            raise status.InvalidParam(cmd.name, detail=f"a VMSA page is mapped at {snp.VMSA_GPA:#x} in the RMP")
        page: bytes | None = None
        if kind is PageType.CPUID:
            self._check_cpuid_page(cmd, spa)
        elif kind is PageType.ZERO:
            self.memory.write(spa, bytes(PAGE))
        elif kind is PageType.SECRETS:
            self.memory.write(spa, self._secrets_page(guest))
        elif kind in (PageType.NORMAL, PageType.VMSA):
            page = self.memory.read(spa, PAGE)
        v1, v2, v3 = vmpl_perms
        digest = snp.extend(
            bytes.fromhex(guest["digest"]), kind, entry.gpa, page, imi_page=imi_page,
            vmpl1_perms=v1, vmpl2_perms=v2, vmpl3_perms=v3,
        )  # fmt: skip
        guest["digest"] = digest.hex()
        self.rmp.firmware_set(spa, validated=True, vmsa=kind is PageType.VMSA, immutable=kind is PageType.VMSA)

    def _secrets_page(self, guest: dict[str, Any]) -> bytes:
        fam, mod, step = self.cpuid_fms
        fms = (fam & 0xF) << 8 | max(0, fam - 0xF) << 20 | (mod & 0xF) << 4 | (mod >> 4) << 16 | step
        keys = tuple(bytes.fromhex(k) for k in guest["vmpcks"])
        return snp_msg.secrets_page((keys[0], keys[1], keys[2], keys[3]), fms, bytes.fromhex(guest["gosvw"]))

    def _check_cpuid_page(self, cmd: S, spa: int) -> None:
        """The CPUID page: COUNT(u32) ‖ rsvd(12) ‖ entries of 0x30 bytes (EAX_IN, ECX_IN, XCR0_IN, XSS_IN, EAX,
        EBX, ECX, EDX, rsvd).  An entry the chip does not allow is corrected in place and the command fails."""
        raw = bytearray(self.memory.read(spa, PAGE))
        (count,) = struct.unpack_from("<I", raw)
        if count > CPUID_TABLE_MAX:
            raise status.InvalidParam(cmd.name, detail=f"{count} CPUID entries, at most {CPUID_TABLE_MAX}")
        bad = False
        for i in range(count):
            off = CPUID_HEADER_SIZE + i * CPUID_ENTRY_SIZE
            eax_in, ecx_in, _xcr0, _xss, *regs = struct.unpack_from("<IIQQIIII", raw, off)
            allowed = self.cpuid.get((eax_in, ecx_in))
            if allowed is not None and tuple(regs) != allowed:
                struct.pack_into("<IIII", raw, off + 0x18, *allowed)
                bad = True
        if bad:
            self.memory.write(spa, bytes(raw))
            raise status.InvalidParam(cmd.name, detail="CPUID entries the chip does not allow; corrected table written")

    def launch_finish(
        self,
        gctx: int,
        *,
        id_block: bytes | None = None,
        id_auth: bytes | None = None,
        auth_key_en: bool = False,
        vcek_disabled: bool = False,
        host_data: bytes = bytes(32),
    ) -> None:
        cmd = S.SNP_LAUNCH_FINISH
        guest = self._enter(cmd, gctx)
        if not guest["asid"]:
            raise status.Inactive(cmd.name)
        fields: dict[str, Any] = {
            "family_id": bytes(16).hex(), "image_id": bytes(16).hex(), "guest_svn": 0,
            "id_key_digest": bytes(48).hex(), "author_key_digest": bytes(48).hex(), "author_key_en": False,
        }  # fmt: skip
        if id_block is not None:
            if id_auth is None:
                raise status.InvalidParam(cmd.name, detail="an ID block needs its ID authentication structure")
            block, auth = snp.IdBlock.parse(id_block), snp.IdAuth.parse(id_auth)
            if auth.id_key_algo != snp.SIG_ALGO_ECDSA_P384_SHA384 or (
                auth_key_en and auth.author_key_algo != snp.SIG_ALGO_ECDSA_P384_SHA384
            ):
                raise status.InvalidParam(cmd.name, detail="only ECDSA P-384 with SHA-384 is defined")
            if not _verify(auth.id_key, auth.id_block_sig, id_block[: snp.ID_BLOCK_SIZE]):
                raise status.BadSignature(cmd.name, detail="the ID block's signature by the ID key")
            if auth_key_en and not _verify(auth.author_key, auth.id_key_sig, auth.id_key):
                raise status.BadSignature(cmd.name, detail="the ID key's signature by the author key")
            if block.launch_digest != bytes.fromhex(guest["digest"]):
                raise status.BadMeasurement(cmd.name, detail="the ID block's launch digest is not this launch's")
            if block.policy != guest["policy"] or block.version != snp.ID_BLOCK_VERSION:
                raise status.PolicyFailure(cmd.name, detail="the ID block's policy or version")
            fields.update(
                family_id=block.family_id.hex(), image_id=block.image_id.hex(), guest_svn=block.guest_svn,
                id_key_digest=snp.key_digest(auth.id_key).hex(), author_key_en=auth_key_en,
                author_key_digest=snp.key_digest(auth.author_key).hex() if auth_key_en else bytes(48).hex(),
            )  # fmt: skip
        guest.update(fields, host_data=host_data.hex(), vcek_disabled=vcek_disabled)
        guest["launch_tcb"] = self.state["current_tcb"]
        self._transition(cmd, guest)

    def guest_status(self, gctx: int) -> tuple[int, int, int, bool]:
        guest = self._enter(S.SNP_GUEST_STATUS, gctx)
        return guest["policy"], guest["asid"], guest["state"], bool(guest.get("vcek_disabled", False))

    def decommission(self, gctx: int) -> None:
        """SNP_DECOMMISSION: the context page goes back to the Firmware state (SNP_PAGE_RECLAIM then frees it)."""
        guest = self._enter(S.SNP_DECOMMISSION, gctx)
        if guest["asid"]:
            self.state["asids"].pop(str(guest["asid"]), None)
        del self.state["guests"][str(gctx)]
        self.rmp.firmware_set(gctx, firmware_use="")

    def page_reclaim(self, spa: int, page_size: int = snp.PAGE_SIZE_4K) -> None:
        """SNP_PAGE_RECLAIM: a Firmware-state page (not a live context page) becomes mutable again; the hypervisor
        then makes it its own with RMPUPDATE."""
        cmd = S.SNP_PAGE_RECLAIM
        self._check_platform(cmd)
        self._page(cmd, spa)
        entry = self.rmp.entry(spa)
        if entry.page_size != page_size:
            raise status.InvalidPageSize(cmd.name, detail=f"page size {page_size}, the RMP says {entry.page_size}")
        if not entry.firmware_owned or entry.firmware_use:
            raise status.InvalidPageState(cmd.name, detail=f"{spa:#x} is not a free Firmware-state page")
        self.rmp.firmware_set(spa, immutable=False)

    # -- guest requests --------------------------------------------------------------------------------------

    def guest_request(self, gctx: int, request: bytes) -> bytes:
        """SNP_GUEST_REQUEST: open the guest's message with the VMPCK it names, answer, seal the response."""
        cmd = S.SNP_GUEST_REQUEST
        guest = self._enter(cmd, gctx)
        try:
            header = snp_msg.MsgHeader.parse(request)
        except InputError as exc:
            raise status.InvalidParam(cmd.name, detail=str(exc)) from None
        if (header.algo, header.hdr_version, header.hdr_size) != (
            snp_msg.AEAD_ALGO_AES_256_GCM, snp_msg.HEADER_VERSION, snp_msg.HEADER_SIZE
        ) or header.vmpck > 3 or header.msg_size > PAGE - snp_msg.HEADER_SIZE:  # fmt: skip
            raise status.InvalidParam(cmd.name, detail="message header (algorithm, version, size or VMPCK)")
        key = bytes.fromhex(guest["vmpcks"][header.vmpck])
        expected = guest["seqnos"][header.vmpck] + 1
        if header.seqno >= snp_msg.SEQNO_MAX - 1:
            raise status.AeadOflow(cmd.name, detail="the sequence number would overflow")
        if header.seqno != expected:
            raise status.InvalidParam(cmd.name, detail=f"sequence number {header.seqno}, expected {expected}")
        try:
            _hdr, payload = snp_msg.open_message(key, request)
        except VerificationError:
            raise status.InvalidParam(cmd.name, detail="the message does not authenticate under its VMPCK") from None
        if header.msg_type == snp_msg.MsgType.REPORT_REQ:
            body = self._report_response(guest, header.vmpck, snp_msg.ReportRequest.parse(payload))
        elif header.msg_type == snp_msg.MsgType.KEY_REQ:
            body = self._key_response(guest, header.vmpck, snp_msg.KeyRequest.parse(payload))
        else:
            raise status.InvalidParam(cmd.name, detail=f"message type {header.msg_type} is not modelled")
        guest["seqnos"][header.vmpck] = header.seqno + 1
        rsp = snp_msg.MsgHeader(header.seqno + 1, header.msg_type + 1, 0, header.vmpck, header.msg_version)
        return snp_msg.seal(key, rsp, body)

    def _report_response(self, guest: dict[str, Any], vmpck: int, req: snp_msg.ReportRequest) -> bytes:
        fail = struct.pack("<II24x", snp_msg.RSP_STATUS_INVALID_PARAM, 0)
        if req.vmpl > 3 or req.vmpl < vmpck:
            return fail  # a VMPL may not ask for a report of a more privileged one
        vlek = self.state["vlek"]
        if req.key_sel == snp_msg.KEY_SEL_VLEK and vlek is None:
            return struct.pack("<II24x", snp_msg.RSP_STATUS_INVALID_KEY, 0)
        use_vlek = vlek is not None and req.key_sel != snp_msg.KEY_SEL_VCEK
        if not use_vlek and guest.get("vcek_disabled"):
            return struct.pack("<II24x", snp_msg.RSP_STATUS_INVALID_KEY, 0)
        report = self.report(guest, req.report_data, req.vmpl, use_vlek)
        raw = report.to_bytes()
        return struct.pack("<II24x", snp_msg.RSP_STATUS_SUCCESS, len(raw)) + raw

    def report(self, guest: dict[str, Any], report_data: bytes, vmpl: int, use_vlek: bool) -> snp.AttestationReport:
        layout = self.product.tcb_layout
        mask_key = bool(self.state["mask_chip_key"])
        signing = snp.SigningKey.NONE if mask_key else (snp.SigningKey.VLEK if use_vlek else snp.SigningKey.VCEK)
        key_info = (snp.AUTHOR_KEY_EN if guest["author_key_en"] else 0) | (snp.MASK_CHIP_KEY if mask_key else 0)
        key_info |= int(signing) << snp.SIGNING_KEY_SHIFT
        build, minor, major = self.state["committed_version"]
        fam, mod, step = self.cpuid_fms
        report = snp.AttestationReport(
            version=snp.REPORT_VERSION, guest_svn=guest["guest_svn"], policy=guest["policy"],
            family_id=bytes.fromhex(guest["family_id"]), image_id=bytes.fromhex(guest["image_id"]), vmpl=vmpl,
            sig_algo=snp.SIG_ALGO_ECDSA_P384_SHA384, current_tcb=self._tcb("current_tcb"), platform_info=0x1,
            key_info=key_info, report_data=report_data, measurement=bytes.fromhex(guest["digest"]),
            host_data=bytes.fromhex(guest["host_data"]), id_key_digest=bytes.fromhex(guest["id_key_digest"]),
            author_key_digest=bytes.fromhex(guest["author_key_digest"]), report_id=bytes.fromhex(guest["report_id"]),
            report_id_ma=b"\xff" * 32, reported_tcb=self._tcb("reported_tcb"),
            chip_id=bytes(64) if self.state["mask_chip_id"] else self.chip_id,
            committed_tcb=self._tcb("committed_tcb"), current_build=SNP_BUILD, current_minor=SNP_API_MINOR,
            current_major=SNP_API_MAJOR, committed_build=build, committed_minor=minor, committed_major=major,
            launch_tcb=TcbVersion.from_int(guest["launch_tcb"], layout), cpuid_fam_id=fam, cpuid_mod_id=mod,
            cpuid_step=step,
        )  # fmt: skip
        if mask_key:
            return report
        if use_vlek:
            key = snp_keys.vlek_key(bytes.fromhex(self.state["vlek"]))
        else:
            key = snp_keys.vcek_key(bytes.fromhex(self.state["chip_secret"]), self._tcb("reported_tcb"))
        return snp_keys.sign_report(key, report)

    def _key_response(self, guest: dict[str, Any], vmpck: int, req: snp_msg.KeyRequest) -> bytes:
        fail = struct.pack("<I28x32x", snp_msg.RSP_STATUS_INVALID_PARAM)
        current = self._tcb("current_tcb")
        asked = TcbVersion.from_int(req.tcb_version, self.product.tcb_layout)
        too_new = any(getattr(asked, f) > getattr(current, f) for f in ("boot_loader", "tee", "snp", "microcode"))
        if req.vmpl > 3 or req.vmpl < vmpck or req.guest_svn > guest["guest_svn"] or too_new:
            return fail
        if req.root_key_select == 1 or req.guest_field_select >> 6:
            return fail  # no VMRK (no migration agent); reserved field bits
        mix = [b"key", struct.pack("<IQ", req.vmpl, req.guest_field_select)]
        picks = {
            snp_msg.GuestField.GUEST_POLICY: struct.pack("<Q", guest["policy"]),
            snp_msg.GuestField.IMAGE_ID: bytes.fromhex(guest["image_id"]),
            snp_msg.GuestField.FAMILY_ID: bytes.fromhex(guest["family_id"]),
            snp_msg.GuestField.MEASUREMENT: bytes.fromhex(guest["digest"]),
            snp_msg.GuestField.GUEST_SVN: struct.pack("<I", req.guest_svn),
            snp_msg.GuestField.TCB_VERSION: struct.pack("<Q", req.tcb_version),
        }
        mix += [value for flag, value in picks.items() if req.guest_field_select & flag]
        root = bytes.fromhex(self.state["vlek"] if req.key_sel == snp_msg.KEY_SEL_VLEK and self.state["vlek"]
                             else self.state["chip_secret"])  # fmt: skip
        derived = hmac.new(root, b"\0".join(mix), hashlib.sha384).digest()[:32]
        return struct.pack("<I28x", snp_msg.RSP_STATUS_SUCCESS) + derived


def _verify(pubkey: bytes, signature: bytes, message: bytes) -> bool:
    try:
        x, y = snp.parse_ecdsa_pubkey(pubkey)
        key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()
        r, s = snp.parse_ecdsa_sig(signature)
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
    except (InputError, ValueError, InvalidSignature):
        return False
    return True
