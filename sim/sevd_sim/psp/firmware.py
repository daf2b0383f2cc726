"""The SEV firmware model: platform and guest state machines, ASIDs, launch crypto, memory encryption.

Sans-I/O over its inputs: methods take Python values, change `self.state` (a JSON-able dict the
device layer loads and saves under the mailbox lock) and return outputs, or raise the spec-named
FirmwareError.  Legality comes from tables.py; check order follows docs/simulated-psp.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from sevd.abi import status
from sevd.abi.certs import Algo, SevCert, Usage
from sevd.abi.commands import (
    CERT_SIZE,
    GET_ID_SIZE,
    MEASUREMENT_SIZE,
    PACKET_HEADER_SIZE,
    PDH_CHAIN_SIZE,
    SECRET_MAX_LEN,
    SESSION_SIZE,
    VMSA_SIZE,
)
from sevd.abi.commands import FirmwareCommand as C
from sevd.abi.commands import FirmwareGuestState as G
from sevd.abi.commands import PlatformState as P
from sevd.abi.launch import (
    LaunchSession,
    SecretHeader,
    TransportKeys,
    measurement,
    open_secret,
    open_session,
)
from sevd.abi.policy import RESERVED_MASK, PolicyFlag
from sevd.abi.units import MAX_HANDLES
from sevd.errors import InputError, VerificationError
from sevd_sim.psp import tables
from sevd_sim.psp.digest import LaunchDigest
from sevd_sim.psp.identity import API_MAJOR, API_MINOR, Identity
from sevd_sim.psp.memory import BLOCK, MachineMemory, MemoryFault, OutOfRange, PhysicalMemory, crypt

SECRET_FLAG_COMPRESSED = 0x1

# ASID states, one per CCX: clean → allocated (pending ACTIVATE) → in_use; DEACTIVATE of an
# in_use ASID → dirty, which only WBINVD on every core of the CCX + DF_FLUSH make clean again.
# `asids[a]` is one state when every CCX agrees (the common case, and compact) or a list per CCX.
CLEAN, ALLOCATED, IN_USE, DIRTY = "clean", "allocated", "in_use", "dirty"

# The simulated chip's default topology: 2 CCXs of 4 cores (sevd_sim.cpu has each EPYC generation's).
DEFAULT_CCXS = 2
DEFAULT_CORES_PER_CCX = 4


def new_state(
    build: int,
    max_asid: int,
    min_sev_asid: int,
    chip_id: bytes,
    *,
    max_guests: int = MAX_HANDLES,
    ccxs: int = DEFAULT_CCXS,
    cores_per_ccx: int = DEFAULT_CORES_PER_CCX,
) -> dict[str, Any]:
    return {
        "ccxs": ccxs,
        "cores_per_ccx": cores_per_ccx,
        "max_guests": max_guests,
        "platform": int(P.UNINIT),
        "owner": False,
        "es": False,
        "build": build,
        "chip_id": chip_id.hex(),
        "max_asid": max_asid,
        "min_sev_asid": min_sev_asid,
        "wbinvd_done": [False] * (ccxs * cores_per_ccx),  # WBINVD_DONE, one per core
        "asids": {str(a): DIRTY for a in range(1, max_asid + 1)},
        "guests": {},
    }


class Firmware:
    def __init__(
        self,
        state: dict[str, Any],
        identity: Identity,
        memory: PhysicalMemory | MachineMemory,
        digests: Path,
        *,
        encrypt: bool = True,
    ):
        # encrypt=False is the test mode for emulated hardware that cannot decrypt guest memory:
        # everything is measured, nothing is encrypted in place.
        if encrypt and not memory.can_encrypt:
            raise ValueError("this memory cannot be encrypted (machine memory read through Xen): use encrypt=False")
        self.state = state
        self.identity = identity
        self.memory = memory
        self.digests = digests
        self.encrypt = encrypt

    # -- helpers -------------------------------------------------------------------------------------------

    @property
    def platform(self) -> P:
        return P(self.state["platform"])

    def _check_platform(self, cmd: C) -> None:
        if self.platform not in tables.PLATFORM_STATES[cmd]:
            raise status.InvalidPlatformState(cmd.name, detail=f"platform is {self.platform.name}")

    def _guest(self, cmd: C, handle: int) -> dict[str, Any]:
        guest = self.state["guests"].get(str(handle))
        if guest is None:
            raise status.InvalidGuest(cmd.name, detail=f"handle {handle}")
        return guest

    def _check_guest_state(self, cmd: C, guest: dict[str, Any]) -> None:
        allowed = tables.GUEST_STATES.get(cmd)
        if allowed is not None and G(guest["state"]) not in allowed:
            raise status.InvalidGuestState(cmd.name, detail=f"guest is {G(guest['state']).name}")

    def _check_activated(self, cmd: C, guest: dict[str, Any]) -> None:
        if guest["activation"] == "none":
            raise status.Inactive(cmd.name)

    def _enter(self, cmd: C, handle: int) -> dict[str, Any]:
        """The default check order: platform state, handle, guest state."""
        self._check_platform(cmd)
        guest = self._guest(cmd, handle)
        self._check_guest_state(cmd, guest)
        return guest

    def _transition(self, cmd: C, guest: dict[str, Any]) -> None:
        if cmd in tables.GUEST_NEXT:
            guest["state"] = int(tables.GUEST_NEXT[cmd])

    def _digest_path(self, handle: int) -> Path:
        return self.digests / f"{handle}.measured"

    def _check_range(self, cmd: C, spa: int, length: int) -> None:
        if not self.memory.contains(spa, length):
            raise status.InvalidAddress(cmd.name, detail=f"[{spa:#x}, +{length:#x}) is outside memory")

    def _touch(self, cmd: C, access: Any, *args: Any, **kwargs: Any) -> Any:
        """A guest-memory access; machine memory can still be refused by Xen after the range check."""
        try:
            return access(*args, **kwargs)
        except OutOfRange as exc:
            raise status.InvalidAddress(cmd.name, detail=str(exc)) from None
        except MemoryFault as exc:
            raise status.HwerrorPlatform(cmd.name, detail=str(exc)) from None

    @staticmethod
    def _keys(guest: dict[str, Any]) -> TransportKeys:
        return TransportKeys(bytes.fromhex(guest["tek"]), bytes.fromhex(guest["tik"]))

    # -- ASIDs per CCX, WBINVD_DONE per core ---------------------------------------------------------------

    @property
    def ccxs(self) -> int:
        return int(self.state.get("ccxs", 1))

    @property
    def cores(self) -> int:
        return self.ccxs * int(self.state.get("cores_per_ccx", 1))

    def asid_states(self, asid: int) -> list[str]:
        """The ASID's state on each CCX."""
        value = self.state["asids"][str(asid)]
        return list(value) if isinstance(value, list) else [value] * self.ccxs

    def _set_asid(self, asid: int, states: list[str]) -> None:
        self.state["asids"][str(asid)] = states[0] if len(set(states)) == 1 else states

    def _all_asids(self, value: str) -> None:
        self.state["asids"] = {a: value for a in self.state["asids"]}

    def dirty_asids(self) -> list[int]:
        """ASIDs dirty on at least one CCX (what DF_FLUSH still has to clean)."""
        return sorted(int(a) for a in self.state["asids"] if DIRTY in self.asid_states(int(a)))

    def _wbinvd_done(self) -> list[bool]:
        done = self.state["wbinvd_done"]
        if isinstance(done, bool):  # a state saved before WBINVD_DONE was kept per core
            done = self.state["wbinvd_done"] = [done] * self.cores
        return done

    def _clear_wbinvd_done(self) -> None:
        self.state["wbinvd_done"] = [False] * self.cores

    # -- platform ------------------------------------------------------------------------------------------

    def init(self, es: bool = False) -> None:
        self._check_platform(C.INIT)
        snp = self.state.get("snp")  # present on a host whose BIOS enables SEV-SNP (sevd_sim.psp.snp)
        if snp is not None and snp["platform"] == 0:
            raise status.InvalidPlatformState(C.INIT.name, detail="SNP is enabled: SNP_INIT must run before INIT")
        if not self.identity.path("pdh.cert").exists():
            self.identity.pek_gen()  # OCA/PEK/PDH are created if a reset deleted them
        # Every ASID invalid and dirty on every CCX; WBINVD_DONE cleared on every core.
        self.state.update(platform=int(P.INIT), es=es)
        self._clear_wbinvd_done()
        self._all_asids(DIRTY)

    def shutdown(self) -> None:
        for handle in list(self.state["guests"]):
            self._digest_path(int(handle)).unlink(missing_ok=True)
        self.state["guests"] = {}
        self._all_asids(DIRTY)
        self._clear_wbinvd_done()
        self.state.update(platform=int(P.UNINIT), es=False)

    def platform_reset(self) -> None:
        self._check_platform(C.PLATFORM_RESET)
        for name in ("oca", "pek", "pdh"):
            self.identity.path(f"{name}.cert").unlink(missing_ok=True)
            self.identity.path(f"{name}.key").unlink(missing_ok=True)
        self.state["owner"] = False

    def platform_status(self) -> dict[str, int]:
        uninit = self.platform == P.UNINIT
        return {
            "api_major": API_MAJOR,
            "api_minor": API_MINOR,
            "state": int(self.platform),
            "owner": 0 if uninit else int(self.state["owner"]),
            "es": 0 if uninit else int(self.state["es"]),
            "build": self.state["build"],
            "guest_count": 0 if uninit else len(self.state["guests"]),
        }

    def pek_gen(self) -> None:
        self._check_platform(C.PEK_GEN)
        self.identity.pek_gen()
        self.state["owner"] = False

    def pdh_gen(self) -> None:
        self._check_platform(C.PDH_GEN)
        self.identity.pdh_gen()

    def pek_csr(self, length: int) -> bytes:
        self._check_platform(C.PEK_CSR)
        if length < CERT_SIZE:
            raise status.InvalidLen(C.PEK_CSR.name, detail=f"needs {CERT_SIZE}")
        return self.identity.pek_csr()

    def pek_cert_import(self, pek: bytes, oca: bytes) -> None:
        self._check_platform(C.PEK_CERT_IMPORT)
        if self.state["owner"]:
            raise status.AlreadyOwned(C.PEK_CERT_IMPORT.name)
        if len(pek) != CERT_SIZE or len(oca) != CERT_SIZE:
            raise status.InvalidLen(C.PEK_CERT_IMPORT.name, detail="certificates are 0x824 bytes")
        try:
            oca_cert = SevCert.parse(oca, "OCA")
            pek_cert = SevCert.parse(pek, "PEK")
        except InputError as exc:
            raise status.InvalidCertificate(C.PEK_CERT_IMPORT.name, detail=str(exc)) from None
        if oca_cert.usage != Usage.OCA or pek_cert.usage != Usage.PEK:
            raise status.InvalidCertificate(C.PEK_CERT_IMPORT.name, detail="wrong key usage")
        if not oca_cert.is_signed_by(oca_cert) or not pek_cert.is_signed_by(oca_cert):
            raise status.BadSignature(C.PEK_CERT_IMPORT.name)
        current = SevCert.parse(self.identity.cert("pek"), "PEK")
        if pek_cert.signed_bytes() != current.signed_bytes():
            raise status.InvalidCertificate(C.PEK_CERT_IMPORT.name, detail="not this platform's PEK")
        self.identity.import_owner(pek_cert, oca_cert)
        self.state["owner"] = True

    def pdh_cert_export(self, pdh_len: int, chain_len: int) -> tuple[bytes, bytes]:
        self._check_platform(C.PDH_CERT_EXPORT)
        if pdh_len < CERT_SIZE or chain_len < PDH_CHAIN_SIZE:
            raise status.InvalidLen(C.PDH_CERT_EXPORT.name, detail=f"needs {CERT_SIZE} and {PDH_CHAIN_SIZE}")
        chain = self.identity.cert("pek") + self.identity.cert("oca") + self.identity.cert("cek")
        return self.identity.cert("pdh"), chain

    def get_id(self, length: int) -> bytes:
        if length < GET_ID_SIZE:
            raise status.InvalidLen(C.GET_ID.name, detail=f"needs {GET_ID_SIZE}")
        return bytes.fromhex(self.state["chip_id"])

    def wbinvd(self, cpus: list[int] | None = None) -> None:
        """Not a command: WBINVD ran on these physical CPUs (None: on every one), which the PSP learns from the
        cores.  Only Xen reaches every CPU; a PV Dom0's `wbinvd_on_all_cpus()` reaches one."""
        done = self._wbinvd_done()
        for cpu in range(len(done)) if cpus is None else cpus:
            done[cpu] = True

    def wbinvd_all_cpus(self) -> None:
        """Not a command: the hypervisor ran WBINVD on every CPU (Xen does when an SEV domain dies)."""
        self.wbinvd(None)

    def df_flush(self) -> None:
        """Dirty → clean on every CCX whose cores have all done WBINVD; WBINVD_REQUIRED if any core has not,
        answered after the CCXs that were ready have been cleaned (as the firmware does)."""
        per_ccx = self.cores // self.ccxs
        done = self._wbinvd_done()
        ready = [all(done[c * per_ccx : (c + 1) * per_ccx]) for c in range(self.ccxs)]
        if any(ready):
            for asid in self.dirty_asids():
                states = self.asid_states(asid)
                self._set_asid(asid, [CLEAN if s == DIRTY and ready[i] else s for i, s in enumerate(states)])
        if not all(ready):
            waiting = [i for i, r in enumerate(ready) if not r]
            raise status.WbinvdRequired(C.DF_FLUSH.name, detail=f"CCX {waiting} lack WBINVD on every core")

    # -- guests --------------------------------------------------------------------------------------------

    def launch_start(self, handle: int, policy: int, godh: bytes | None, session: bytes | None) -> int:
        cmd = C.LAUNCH_START
        self._check_platform(cmd)
        keys = TransportKeys(bytes(16), bytes(16))
        if godh is not None or session is not None:
            if godh is None or session is None or len(session) != SESSION_SIZE or len(godh) != CERT_SIZE:
                raise status.InvalidLen(cmd.name, detail="session is 0x80 and the GODH certificate 0x824 bytes")
            try:
                godh_cert = SevCert.parse(godh, "GODH certificate")
                if godh_cert.usage != Usage.PDH or godh_cert.algo != Algo.ECDH_SHA256:
                    raise InputError("GODH certificate: must be a PDH-usage ECDH-SHA256 key")
                godh_key = godh_cert.public_key()
                if not isinstance(godh_key, ec.EllipticCurvePublicKey):
                    raise InputError("GODH certificate: must hold an elliptic-curve key")
            except InputError as exc:
                raise status.InvalidCertificate(cmd.name, detail=str(exc)) from None
            try:
                keys = open_session(LaunchSession.parse(session), self.identity.key("pdh"), godh_key, policy)
            except VerificationError as exc:
                raise status.BadMeasurement(cmd.name, detail=str(exc)) from None
        # Decision (docs/simulated-psp.md): the policy's API version and reserved bits are checked with
        # or without a session.  Genoa firmware checks them only when a GODH is given; we never accept
        # a policy the firmware could not honour.
        if (policy >> 16 & 0xFF, policy >> 24 & 0xFF) > (API_MAJOR, API_MINOR):
            raise status.PolicyFailure(cmd.name, detail="policy requires a newer firmware API")
        if policy & RESERVED_MASK:
            raise status.PolicyFailure(cmd.name, detail="reserved policy bits are set")
        if handle:
            other = self._guest(cmd, handle)
            if other["policy"] != policy or other["policy"] & PolicyFlag.NOKS:
                raise status.PolicyFailure(cmd.name, detail="key sharing needs an identical policy without NOKS")
            vek = other["vek"]
        else:
            vek = os.urandom(16).hex()
        used = {int(h) for h in self.state["guests"]}
        limit = self.state.get("max_guests", MAX_HANDLES)
        free = next((h for h in range(1, limit + 1) if h not in used), None)
        if free is None:
            raise status.ResourceLimit(cmd.name, detail="no free guest handle")
        if policy & PolicyFlag.ES and not self.state["es"]:
            raise status.Unsupported(cmd.name, detail="SEV-ES policy on a platform initialised without ES")
        self.state["guests"][str(free)] = {
            "state": int(G.LUPDATE),
            "policy": policy,
            "asid": 0,
            "activation": "none",
            "vek": vek,
            "tek": keys.tek.hex(),
            "tik": keys.tik.hex(),
            "measure": None,
            "digest": LaunchDigest(None, self._digest_path(free)).state,
        }
        self.state["platform"] = int(P.WORKING)
        return free

    def activate(self, handle: int, asid: int) -> None:
        cmd = C.ACTIVATE
        self._check_platform(cmd)
        guest = self._guest(cmd, handle)
        if not 1 <= asid <= self.state["max_asid"]:
            raise status.InvalidAsid(cmd.name, detail=f"ASID {asid} is outside 1..{self.state['max_asid']}")
        states = self.asid_states(asid)
        if IN_USE in states or ALLOCATED in states:
            raise status.AsidOwned(cmd.name, detail=f"ASID {asid}")
        if guest["activation"] != "none":
            raise status.Active(cmd.name, detail=f"guest already holds ASID {guest['asid']}")
        self._check_guest_state(cmd, guest)
        if DIRTY in states:
            raise status.DfflushRequired(cmd.name, detail=f"ASID {asid}")
        if any(s != CLEAN for s in states):
            raise status.AsidOwned(cmd.name, detail=f"ASID {asid} is not clean on every CCX")
        es_asid = asid < self.state["min_sev_asid"]
        if es_asid != bool(guest["policy"] & PolicyFlag.ES):
            kind = "SEV-ES" if es_asid else "SEV"
            raise status.InvalidAsid(cmd.name, detail=f"ASID {asid} is in the {kind} range")
        running = G(guest["state"]) in (G.RUNNING, G.SUPDATE)
        guest["asid"] = asid
        guest["activation"] = "active" if running else "pending"
        self._set_asid(asid, [IN_USE if running else ALLOCATED] * self.ccxs)

    def deactivate(self, handle: int) -> None:
        cmd = C.DEACTIVATE
        guest = self._enter(cmd, handle)
        self._check_activated(cmd, guest)
        was_in_use = guest["activation"] == "active"
        self._set_asid(guest["asid"], [DIRTY if was_in_use else CLEAN] * self.ccxs)
        if was_in_use:
            self._clear_wbinvd_done()
        guest.update(asid=0, activation="none")

    def decommission(self, handle: int) -> None:
        cmd = C.DECOMMISSION
        guest = self._enter(cmd, handle)
        if guest["activation"] != "none":
            raise status.Active(cmd.name, detail=f"DEACTIVATE first (ASID {guest['asid']})")
        del self.state["guests"][str(handle)]
        self._digest_path(handle).unlink(missing_ok=True)
        if not self.state["guests"]:
            self.state["platform"] = int(P.INIT)

    def guest_status(self, handle: int) -> tuple[int, int, int]:
        """(policy, asid, state); an unknown handle is SUCCESS with state 0."""
        self._check_platform(C.GUEST_STATUS)
        guest = self.state["guests"].get(str(handle))
        if guest is None:
            return 0, 0, int(G.INVALID)
        return guest["policy"], guest["asid"], guest["state"]

    def _measure_in_place(self, cmd: C, guest: dict[str, Any], handle: int, spa: int, length: int) -> None:
        """Hash the plaintext into the launch digest, then encrypt it in place (one pass each, no copies)."""
        spill = self._digest_path(handle)
        digest = LaunchDigest(guest["digest"], spill)
        vek = bytes.fromhex(guest["vek"]) if self.encrypt else None
        # A refusal part-way must not leave part of the range measured (the midstate is simply not saved).
        mark = spill.stat().st_size if digest.state == "file" else None
        try:
            self._touch(cmd, self.memory.in_place, spa, length, digest.update, vek, asid=guest["asid"])
        except status.FirmwareError:
            if mark is not None:
                os.truncate(spill, mark)
            raise
        guest["digest"] = digest.state

    def launch_update_data(self, handle: int, spa: int, length: int) -> None:
        cmd = C.LAUNCH_UPDATE_DATA
        guest = self._enter(cmd, handle)
        self._check_activated(cmd, guest)
        if spa % BLOCK:
            raise status.InvalidAddress(cmd.name, detail=f"{spa:#x} is not 16-byte aligned")
        if length == 0 or length % BLOCK:
            raise status.InvalidLen(cmd.name, detail=f"{length} is not a non-zero multiple of 16")
        self._check_range(cmd, spa, length)
        self._measure_in_place(cmd, guest, handle, spa, length)

    def launch_update_vmsa(self, handle: int, spa: int, length: int) -> None:
        cmd = C.LAUNCH_UPDATE_VMSA
        if length != VMSA_SIZE:
            raise status.InvalidLen(cmd.name, detail=f"a VMSA is {VMSA_SIZE} bytes")
        guest = self._enter(cmd, handle)
        if not guest["policy"] & PolicyFlag.ES:
            raise status.Unsupported(cmd.name, detail="not an SEV-ES guest")
        self._check_activated(cmd, guest)
        if spa % BLOCK:
            raise status.InvalidAddress(cmd.name, detail=f"{spa:#x} is not 16-byte aligned")
        self._check_range(cmd, spa, length)
        self._measure_in_place(cmd, guest, handle, spa, length)

    def launch_measure(self, handle: int, length: int) -> bytes:
        cmd = C.LAUNCH_MEASURE
        guest = self._enter(cmd, handle)
        if length < MEASUREMENT_SIZE:
            raise status.InvalidLen(cmd.name, detail=f"needs {MEASUREMENT_SIZE}")
        digest = LaunchDigest(guest.pop("digest"), self._digest_path(handle))
        mnonce = os.urandom(16)
        policy = guest["policy"]
        mac = measurement(
            bytes.fromhex(guest["tik"]), API_MAJOR, API_MINOR, self.state["build"], policy, digest.final(), mnonce
        )
        guest["measure"] = mac.hex()
        self._transition(cmd, guest)
        return mac + mnonce

    def launch_update_secret(
        self, handle: int, header: bytes, guest_spa: int, guest_len: int, ciphertext: bytes
    ) -> None:
        cmd = C.LAUNCH_UPDATE_SECRET
        self._check_platform(cmd)
        guest = self._guest(cmd, handle)
        if guest_spa % BLOCK:
            raise status.InvalidAddress(cmd.name, detail=f"{guest_spa:#x} is not 16-byte aligned")
        if (
            len(header) != PACKET_HEADER_SIZE
            or guest_len == 0
            or guest_len % BLOCK
            or guest_len > SECRET_MAX_LEN
            or guest_len != len(ciphertext)
        ):
            raise status.InvalidLen(cmd.name, detail="header 0x34; secret non-zero, 16-aligned, <= 0x5000, = trans")
        self._check_guest_state(cmd, guest)
        self._check_activated(cmd, guest)
        hdr = SecretHeader.parse(header)
        try:
            plaintext = open_secret(self._keys(guest), hdr, ciphertext, bytes.fromhex(guest["measure"]), guest_len)
        except (VerificationError, InputError):
            raise status.BadMeasurement(cmd.name, detail="packet header MAC does not verify") from None
        if hdr.flags & SECRET_FLAG_COMPRESSED:
            raise status.Unsupported(cmd.name, detail="compressed secrets")
        self._check_range(cmd, guest_spa, guest_len)
        vek = bytes.fromhex(guest["vek"])
        data = crypt(vek, guest_spa, plaintext) if self.encrypt else plaintext
        self._touch(cmd, self.memory.write, guest_spa, data, asid=guest["asid"], what="the secret")

    def launch_finish(self, handle: int) -> None:
        cmd = C.LAUNCH_FINISH
        guest = self._enter(cmd, handle)
        if guest["activation"] == "pending":
            guest["activation"] = "active"
            self._set_asid(guest["asid"], [IN_USE] * self.ccxs)
        self._transition(cmd, guest)

    def _debug_guest(self, cmd: C, handle: int, spa: int, length: int) -> dict[str, Any]:
        self._check_platform(cmd)
        if spa % BLOCK:
            raise status.InvalidAddress(cmd.name, detail=f"{spa:#x} is not 16-byte aligned")
        if length % BLOCK:
            raise status.InvalidLen(cmd.name, detail=f"{length} is not a multiple of 16")
        guest = self._guest(cmd, handle)
        if guest["policy"] & PolicyFlag.NODBG:
            raise status.PolicyFailure(cmd.name, detail="the guest policy forbids debugging (NODBG)")
        self._check_activated(cmd, guest)
        self._check_range(cmd, spa, length)
        return guest

    def dbg_decrypt(self, handle: int, spa: int, length: int) -> bytes:
        guest = self._debug_guest(C.DBG_DECRYPT, handle, spa, length)
        data = self._touch(C.DBG_DECRYPT, self.memory.read, spa, length, asid=guest["asid"])
        return crypt(bytes.fromhex(guest["vek"]), spa, data) if self.encrypt else data

    def dbg_encrypt(self, handle: int, spa: int, plaintext: bytes) -> None:
        guest = self._debug_guest(C.DBG_ENCRYPT, handle, spa, len(plaintext))
        vek = bytes.fromhex(guest["vek"])
        data = crypt(vek, spa, plaintext) if self.encrypt else plaintext
        self._touch(C.DBG_ENCRYPT, self.memory.write, spa, data, asid=guest["asid"], what="DBG_ENCRYPT data")

    def unsupported(self, cmd: C, handle: int) -> None:
        """Migration and firmware download: state checks as the tables say, then UNSUPPORTED."""
        self._check_platform(cmd)
        if cmd in tables.GUEST_STATES:
            self._enter(cmd, handle)
        raise status.Unsupported(cmd.name, detail="not modelled by the simulated PSP")


__all__ = ["Firmware", "new_state", "OutOfRange"]
