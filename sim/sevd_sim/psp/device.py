"""The simulated /dev/sev: the Linux driver's behaviour in front of the firmware model.

`SimulatedPsp` is an IoctlTarget: it takes the same `struct sev_issue_cmd` the real device takes
and follows its `data` pointer through a `CallerMemory`, the way the kernel copies from user
space.  In front of the firmware it does what drivers/crypto/ccp/sev-dev.c does: EPERM for a
read-only fd on write commands, EINVAL for unknown ids, lazy INIT (with WBINVD + DF_FLUSH) for the
commands that need it, the length probe, the 16 KiB blob cap, EIO with the status in `error` when
the firmware fails.  Guest commands arrive through SEV_ISSUE_GUEST_CMD, the ioctl of our Dom0
kernel patch.  Every command runs under the host's mailbox lock and loads and saves the firmware
state, so several processes can share one simulated PSP and it outlives them all.

Its memory is the simulated host's memory file, or (memory kind "xen") the machine memory of the Xen
host it runs on, read through Xen under sev=test: a measure-only TEST MODE for emulated hardware.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from sevd._psp import ffi
from sevd.abi import status
from sevd.abi.commands import (
    CERT_SIZE,
    GET_ID_SIZE,
    GUEST_COMMANDS,
    MEASUREMENT_SIZE,
    PDH_CHAIN_SIZE,
    USER_BLOB_MAX,
    WRITE_COMMANDS,
    FirmwareCommand,
    UserCommand,
)
from sevd.abi.commands import PlatformState as P
from sevd.durable import atomic_write, exclusive, read_json, write_json
from sevd.psp.device import SEV_ISSUE_CMD, SEV_ISSUE_GUEST_CMD
from sevd_sim.psp import tables
from sevd_sim.psp.firmware import DEFAULT_CCXS, DEFAULT_CORES_PER_CCX, MAX_HANDLES, Firmware, new_state
from sevd_sim.psp.identity import Identity
from sevd_sim.psp.memory import MachineMemory, PhysicalMemory

C = FirmwareCommand
_SECRET_TRANSPORT_MAX = 0x5000  # the guest patch lets LAUNCH_SECRET's transport buffer reach the firmware's limit


class CallerMemory(Protocol):
    """The caller's side of an ioctl, as the kernel sees it: the command buffer and the blobs it points to."""

    def read_buffer(self, size: int) -> bytes: ...

    def write_buffer(self, data: bytes) -> None: ...

    def read_at(self, pointer_offset: int, length: int) -> bytes:
        """Follow the pointer stored at `pointer_offset` in the command buffer; copy `length` bytes."""
        ...

    def write_at(self, pointer_offset: int, data: bytes) -> None: ...


class InProcessCaller:
    """The caller lives in this process: addresses are ours to dereference."""

    def __init__(self, data_address: int):
        self.address = data_address

    def read_buffer(self, size: int) -> bytes:
        return bytes(ffi.buffer(ffi.cast("uint8_t *", self.address), size))

    def write_buffer(self, data: bytes) -> None:
        ffi.memmove(ffi.cast("uint8_t *", self.address), data, len(data))

    def _pointer(self, offset: int) -> int:
        return int(ffi.cast("uint64_t *", self.address + offset)[0])

    def read_at(self, pointer_offset: int, length: int) -> bytes:
        pointer = self._pointer(pointer_offset)
        if not pointer:
            raise _Errno(errno.EFAULT)
        return bytes(ffi.buffer(ffi.cast("uint8_t *", pointer), length))

    def write_at(self, pointer_offset: int, data: bytes) -> None:
        pointer = self._pointer(pointer_offset)
        if not pointer:
            raise _Errno(errno.EFAULT)
        ffi.memmove(ffi.cast("uint8_t *", pointer), data, len(data))


class _Errno(Exception):
    def __init__(self, value: int):
        self.value = value


# config.json's memory kind for machine memory read through Xen (DomctlXen.read_spa); otherwise a file path.
XEN_MACHINE_MEMORY = "xen"

log = logging.getLogger("sevd.sim.psp")  # under "sevd": the daemon that opens it logs its lines
_warned: set[Path] = set()  # PSP directories whose test mode this process has announced


# Simulated CPU defaults (CPUID 0x8000001F): ASIDs 1..4 for SEV-ES, 5..max for SEV.
DEFAULT_MAX_ASID = 64
DEFAULT_MIN_SEV_ASID = 5
DEFAULT_BUILD = 7


def psp_dir(host: Path) -> Path:
    return Path(host) / "psp"


def create_psp(
    host: Path,
    *,
    max_asid: int = DEFAULT_MAX_ASID,
    min_sev_asid: int = DEFAULT_MIN_SEV_ASID,
    build: int = DEFAULT_BUILD,
    memory: Path | str | None = None,
    es: bool = False,
    max_guests: int = MAX_HANDLES,
    encrypt: bool = True,
    pv_dom0: bool = False,
    topology: tuple[int, int] = (DEFAULT_CCXS, DEFAULT_CORES_PER_CCX),
) -> None:
    """A new simulated chip in `host`/psp; the kernel INITs it at probe time, as Linux does.

    `memory`: the memory file (default `host`/memory.img), or XEN_MACHINE_MEMORY ("xen"): the machine
    memory of the Xen host this runs on, measure-only, so `encrypt` must then be False.
    `es`: the CPU supports SEV-ES, so the kernel INITs the firmware with the ES flag (Linux does
    when it could allocate the TMR).  `max_guests`: the firmware's guest-handle limit (1024).
    `pv_dom0`: the kernel is a PV Dom0 on Xen, so its `wbinvd_on_all_cpus()` runs WBINVD only on the physical
    CPU its vCPU is on: the DF_FLUSH after INIT fails (WBINVD_REQUIRED) and every ASID stays dirty.
    `topology`: (CCXs, cores per CCX), over which the firmware keeps ASID states and WBINVD_DONE.
    """
    kind = str(memory or Path(host) / "memory.img")
    if kind == XEN_MACHINE_MEMORY and encrypt:
        raise ValueError("machine memory read through Xen cannot be encrypted: create the PSP with encrypt=False")
    directory = psp_dir(host)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "digests").mkdir(exist_ok=True)
    Identity(directory / "identity").create()
    config: dict[str, Any] = {"memory": kind, "es": es, "encrypt": encrypt}
    if pv_dom0:
        config["dom0"] = "pv"
    write_json(directory / "config.json", config)
    ccxs, cores_per_ccx = topology
    state = new_state(
        build, max_asid, min_sev_asid, os.urandom(64), max_guests=max_guests, ccxs=ccxs, cores_per_ccx=cores_per_ccx
    )
    write_json(directory / "state.json", state)
    psp = SimulatedPsp(host)
    try:
        with psp.firmware() as fw:
            psp._kernel_init(fw)
    except status.FirmwareError as err:  # sev_pci_init logs it and goes on: the firmware stays INIT
        log.error("SEV: failed to INIT error %#x (%s)", err.code, err.name)


class SimulatedPsp:
    """An open simulated /dev/sev.  `writable` is the fd's mode, as the driver checks it.

    `encrypt`: None follows config.json; False measures without encrypting (the test mode for emulated
    hardware); True is refused for machine memory, which cannot be encrypted.
    """

    def __init__(self, host: Path | str, *, writable: bool = True, encrypt: bool | None = None):
        self.host = Path(host)
        self.dir = psp_dir(self.host)
        if not (self.dir / "state.json").exists():
            raise FileNotFoundError(f"{self.dir}: no simulated PSP here (create the simulated host first)")
        self.writable = writable
        config = read_json(self.dir / "config.json")
        configured = bool(config.get("encrypt", True))
        self.encrypt = configured if encrypt is None else encrypt
        self._xen: Any = None
        self.memory: PhysicalMemory | MachineMemory
        if config["memory"] == XEN_MACHINE_MEMORY:
            if self.encrypt:
                raise ValueError(f"{self.dir}: machine memory read through Xen cannot be encrypted")
            self.memory = MachineMemory(self._read_spa, close=self._close_xen)
            if self.dir.resolve() not in _warned:
                _warned.add(self.dir.resolve())
                log.warning(
                    "%s: this is the SIMULATED PSP in measure-only TEST MODE: guest memory is NOT encrypted "
                    "(machine memory read through Xen's sev=test READ_SPA)",
                    self.dir,
                )
        else:
            self.memory = PhysicalMemory(Path(config["memory"]))
        self.es = bool(config.get("es", False))
        self.pv_dom0 = config.get("dom0") == "pv"

    def _read_spa(self, asid: int, spa: int, length: int) -> bytes:
        # Xen is opened on the first read, so a PSP that never touches guest memory needs no libxencall.
        if self._xen is None:
            from sevd.xen.domctl import DomctlXen

            self._xen = DomctlXen()
        return self._xen.read_spa(asid, spa, length)

    def _close_xen(self) -> None:
        if self._xen is not None:
            self._xen.close()
            self._xen = None

    def close(self) -> None:
        self.memory.close()

    # -- the mailbox -------------------------------------------------------------------------------------------

    class _Session:
        def __init__(self, psp: SimulatedPsp):
            self.psp = psp

        def __enter__(self) -> Firmware:
            self.lock = exclusive(self.psp.dir / "lock")
            self.lock.__enter__()
            self.before = (self.psp.dir / "state.json").read_bytes()
            state = json.loads(self.before)
            self.fw = Firmware(
                state,
                Identity(self.psp.dir / "identity"),
                self.psp.memory,
                self.psp.dir / "digests",
                encrypt=self.psp.encrypt,
            )
            return self.fw

        def __exit__(self, *exc: object) -> None:
            try:
                after = json.dumps(self.fw.state, indent=1, sort_keys=True).encode()  # as write_json writes it
                if after != self.before:
                    atomic_write(self.psp.dir / "state.json", after)  # the bytes compared: not encoded twice
            finally:
                self.lock.__exit__(None, None, None)

    def firmware(self) -> SimulatedPsp._Session:
        """Hold the mailbox and get the firmware model; its state is saved on exit (also after a failure)."""
        return SimulatedPsp._Session(self)

    def wbinvd_all_cpus(self) -> None:
        """The hypervisor's signal that WBINVD ran on every CPU (Xen does it when an SEV domain dies)."""
        with self.firmware() as fw:
            fw.wbinvd_all_cpus()

    # -- IoctlTarget -------------------------------------------------------------------------------------------

    def ioctl(self, request: int, arg: Any) -> int:
        rc, error = self.dispatch(request, int(arg.cmd), InProcessCaller(int(arg.data)))
        arg.error = error
        return rc

    def dispatch(self, request: int, cmd: int, caller: CallerMemory) -> tuple[int, int]:
        """(return code, firmware status) for one ioctl: 0 or -errno, and the `error` field."""
        try:
            if request == SEV_ISSUE_CMD:
                if cmd not in UserCommand._value2member_map_:
                    return -errno.EINVAL, 0
                user = UserCommand(cmd)
                if user in WRITE_COMMANDS and not self.writable:
                    return -errno.EPERM, 0
                with self.firmware() as fw:
                    self._injected_failure(fw, user.name)
                    self._user_command(fw, user, caller)
            elif request == SEV_ISSUE_GUEST_CMD:
                if cmd not in GUEST_COMMANDS:
                    return -errno.EINVAL, 0
                if not self.writable:
                    return -errno.EPERM, 0
                with self.firmware() as fw:
                    self._injected_failure(fw, FirmwareCommand(cmd).name)
                    self._guest_command(fw, FirmwareCommand(cmd), caller)
            else:
                return -errno.EINVAL, 0  # sev_ioctl answers EINVAL to any other ioctl
        except status.FirmwareError as err:
            return -errno.EIO, err.code
        except _Errno as err:
            return -err.value, 0
        return 0, 0

    # -- failure injection (tests and operators rehearsing failures) ------------------------------------------

    def inject_failure(self, command: str, outcome: str, count: int = 1) -> None:
        """Make the next `count` `command`s (a firmware or /dev/sev command name) fail with `outcome`.

        `outcome` is a status's spec name (the firmware answers it; the driver returns EIO), or
        TIMEOUT: the command never completes, the driver gives up (ETIMEDOUT) and, as Linux does,
        disables the PSP, so every later command gets EBUSY until the host is restarted.
        """
        if outcome != "TIMEOUT" and outcome not in status.FirmwareStatus.__members__:
            raise ValueError(f"unknown outcome {outcome!r}: a status name (e.g. INVALID_ASID) or TIMEOUT")
        with exclusive(self.dir / "lock"):
            path = self.dir / "inject.json"
            table = read_json(path) if path.exists() else {}
            table[command] = {"outcome": outcome, "count": count}
            write_json(path, table)

    def clear_failures(self) -> None:
        with exclusive(self.dir / "lock"):
            (self.dir / "inject.json").unlink(missing_ok=True)
            (self.dir / "disabled").unlink(missing_ok=True)

    def _injected_failure(self, fw: Firmware, name: str) -> None:
        if (self.dir / "disabled").exists():
            raise _Errno(errno.EBUSY)
        path = self.dir / "inject.json"
        if not path.exists():
            return
        table = read_json(path)
        entry = table.get(name)
        if entry is None:
            return
        entry["count"] -= 1
        if entry["count"] <= 0:
            del table[name]
        write_json(path, table)
        if entry["outcome"] == "TIMEOUT":
            (self.dir / "disabled").touch()
            raise _Errno(errno.ETIMEDOUT)
        raise status.error_class(status.FirmwareStatus[entry["outcome"]])(name)

    # -- the driver's platform commands (SEV_ISSUE_CMD) -----------------------------------------------------

    def _kernel_init(self, fw: Firmware) -> None:
        """__sev_platform_init_locked: INIT (with ES if the CPU has it), then `wbinvd_on_all_cpus()` and DF_FLUSH.

        In a PV Dom0 that WBINVD reaches only the physical CPU the vCPU runs on (CPU 0 here), so the DF_FLUSH
        answers WBINVD_REQUIRED, which the kernel returns; the firmware stays INIT with every ASID dirty.
        """
        fw.init(es=self.es)
        fw.wbinvd([0] if self.pv_dom0 else None)
        fw.df_flush()

    def _lazy_init(self, fw: Firmware) -> None:
        if fw.platform == P.UNINIT:
            self._kernel_init(fw)

    def _user_command(self, fw: Firmware, cmd: UserCommand, caller: CallerMemory) -> None:
        U = UserCommand
        if cmd == U.PLATFORM_STATUS:
            out = ffi.new("struct sev_user_data_status *")
            st = fw.platform_status()
            out.api_major, out.api_minor, out.state, out.build = (
                st["api_major"],
                st["api_minor"],
                st["state"],
                st["build"],
            )
            out.flags = st["owner"] | (0x100 if st["es"] else 0)
            out.guest_count = st["guest_count"]
            caller.write_buffer(bytes(ffi.buffer(out)))
        elif cmd == U.FACTORY_RESET:
            if fw.platform == P.WORKING:
                raise _Errno(errno.EBUSY)
            if fw.platform == P.INIT:
                fw.shutdown()
            fw.platform_reset()
        elif cmd in (U.PEK_GEN, U.PDH_GEN):
            self._lazy_init(fw)
            fw.pek_gen() if cmd == U.PEK_GEN else fw.pdh_gen()
        elif cmd == U.PEK_CSR:
            self._lazy_init(fw)
            self._probe_or_copy(caller, "struct sev_user_data_pek_csr", "address", "length", fw.pek_csr, CERT_SIZE)
        elif cmd in (U.GET_ID2, U.GET_ID):
            if cmd == U.GET_ID:  # deprecated form: two inline 64-byte fields
                out = ffi.new("struct sev_user_data_get_id *")
                ffi.memmove(out.socket1, fw.get_id(64), 64)
                caller.write_buffer(bytes(ffi.buffer(out)))
                return
            # GET_ID works in every state: the driver does not INIT for it.
            self._probe_or_copy(caller, "struct sev_user_data_get_id2", "address", "length", fw.get_id, GET_ID_SIZE)
        elif cmd == U.PEK_CERT_IMPORT:
            req = self._read(caller, "struct sev_user_data_pek_cert_import")
            if req.pek_cert_len > USER_BLOB_MAX or req.oca_cert_len > USER_BLOB_MAX:
                raise _Errno(errno.EFAULT)
            pek = caller.read_at(_off(req, "pek_cert_address"), req.pek_cert_len)
            oca = caller.read_at(_off(req, "oca_cert_address"), req.oca_cert_len)
            self._lazy_init(fw)
            fw.pek_cert_import(pek, oca)
        elif cmd == U.PDH_CERT_EXPORT:
            self._pdh_cert_export(fw, caller)

    def _read(self, caller: CallerMemory, ctype: str) -> Any:
        req = ffi.new(ctype + " *")
        size = ffi.sizeof(ctype)
        ffi.memmove(req, caller.read_buffer(size), size)
        return req

    @staticmethod
    def _write(caller: CallerMemory, req: Any) -> None:
        caller.write_buffer(bytes(ffi.buffer(req)))

    def _probe_or_copy(
        self, caller: CallerMemory, ctype: str, addr: str, length: str, command: Any, needed: int
    ) -> None:
        """A zero address or length asks the firmware for the size it needs (INVALID_LEN, length written back)."""
        req = self._read(caller, ctype)
        probe = not getattr(req, addr) or not getattr(req, length)
        if not probe and getattr(req, length) > USER_BLOB_MAX:
            raise _Errno(errno.EFAULT)
        try:
            data = command(0 if probe else getattr(req, length))
        except status.InvalidLen:
            setattr(req, length, needed)
            self._write(caller, req)
            raise
        setattr(req, length, len(data))
        caller.write_at(_off(req, addr), data)
        self._write(caller, req)

    def _pdh_cert_export(self, fw: Firmware, caller: CallerMemory) -> None:
        req = self._read(caller, "struct sev_user_data_pdh_cert_export")
        if fw.platform == P.UNINIT:
            if not self.writable:
                raise _Errno(errno.EPERM)
            self._kernel_init(fw)
        probe = not req.pdh_cert_address or not req.pdh_cert_len or not req.cert_chain_address
        if not probe and (req.pdh_cert_len > USER_BLOB_MAX or req.cert_chain_len > USER_BLOB_MAX):
            raise _Errno(errno.EFAULT)
        try:
            pdh, chain = fw.pdh_cert_export(0 if probe else req.pdh_cert_len, 0 if probe else req.cert_chain_len)
        except status.InvalidLen:
            req.pdh_cert_len, req.cert_chain_len = CERT_SIZE, PDH_CHAIN_SIZE
            self._write(caller, req)
            raise
        caller.write_at(_off(req, "pdh_cert_address"), pdh)
        caller.write_at(_off(req, "cert_chain_address"), chain)
        req.pdh_cert_len, req.cert_chain_len = len(pdh), len(chain)
        self._write(caller, req)

    # -- guest commands (SEV_ISSUE_GUEST_CMD, the Dom0 kernel patch) ------------------------------------------

    def _guest_command(self, fw: Firmware, cmd: FirmwareCommand, caller: CallerMemory) -> None:
        if cmd == C.DF_FLUSH:
            fw.df_flush()
            return
        if cmd in tables.UNSUPPORTED:
            handle = int(ffi.cast("uint32_t *", ffi.from_buffer(caller.read_buffer(4)))[0])
            fw.unsupported(cmd, handle)
            return
        handler = _GUEST_HANDLERS[cmd]
        req = self._read(caller, handler[0])
        handler[1](self, fw, req, caller)

    def _launch_start(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        godh = session = None
        if req.dh_cert_address:
            if req.dh_cert_len > USER_BLOB_MAX or req.session_len > USER_BLOB_MAX:
                raise _Errno(errno.EFAULT)
            godh = caller.read_at(_off(req, "dh_cert_address"), req.dh_cert_len)
            session = caller.read_at(_off(req, "session_address"), req.session_len) if req.session_address else b""
        req.handle = fw.launch_start(req.handle, req.policy, godh, session)
        self._write(caller, req)  # only on success: no handle comes back on failure

    def _activate(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        fw.activate(req.handle, req.asid)

    def _deactivate(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        fw.deactivate(req.handle)

    def _decommission(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        fw.decommission(req.handle)

    def _guest_status(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        req.policy, req.asid, req.state = fw.guest_status(req.handle)
        self._write(caller, req)

    def _update_data(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        fw.launch_update_data(req.handle, req.address, req.len)

    def _update_vmsa(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        fw.launch_update_vmsa(req.handle, req.address, req.len)

    def _measure(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        probe = not req.address or not req.len
        try:
            blob = fw.launch_measure(req.handle, 0 if probe else req.len)
        except status.InvalidLen:
            req.len = MEASUREMENT_SIZE
            self._write(caller, req)
            raise
        caller.write_at(_off(req, "address"), blob)
        req.len = len(blob)
        self._write(caller, req)

    def _secret(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        if req.hdr_len > USER_BLOB_MAX or req.trans_len > _SECRET_TRANSPORT_MAX:
            raise _Errno(errno.EFAULT)
        header = caller.read_at(_off(req, "hdr_address"), req.hdr_len)
        trans = caller.read_at(_off(req, "trans_address"), req.trans_len)
        fw.launch_update_secret(req.handle, header, req.guest_address, req.guest_len, trans)

    def _finish(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        fw.launch_finish(req.handle)

    def _dbg_decrypt(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        # src is guest memory (an SPA); dst is the caller's buffer, copied out by the kernel.
        if req.len > USER_BLOB_MAX:
            raise _Errno(errno.EFAULT)
        caller.write_at(_off(req, "dst_addr"), fw.dbg_decrypt(req.handle, req.src_addr, req.len))

    def _dbg_encrypt(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        # src is the caller's buffer; dst is guest memory (an SPA).
        if req.len > USER_BLOB_MAX:
            raise _Errno(errno.EFAULT)
        fw.dbg_encrypt(req.handle, req.dst_addr, caller.read_at(_off(req, "src_addr"), req.len))


def _off(req: Any, field: str) -> int:
    return ffi.offsetof(ffi.typeof(req).item, field)


_GUEST_HANDLERS = {
    C.LAUNCH_START: ("struct sev_data_launch_start", SimulatedPsp._launch_start),
    C.ACTIVATE: ("struct sev_data_activate", SimulatedPsp._activate),
    C.DEACTIVATE: ("struct sev_data_deactivate", SimulatedPsp._deactivate),
    C.DECOMMISSION: ("struct sev_data_decommission", SimulatedPsp._decommission),
    C.GUEST_STATUS: ("struct sev_data_guest_status", SimulatedPsp._guest_status),
    C.LAUNCH_UPDATE_DATA: ("struct sev_data_launch_update_data", SimulatedPsp._update_data),
    C.LAUNCH_UPDATE_VMSA: ("struct sev_data_launch_update_vmsa", SimulatedPsp._update_vmsa),
    C.LAUNCH_MEASURE: ("struct sev_data_launch_measure", SimulatedPsp._measure),
    C.LAUNCH_UPDATE_SECRET: ("struct sev_data_launch_secret", SimulatedPsp._secret),
    C.LAUNCH_FINISH: ("struct sev_data_launch_finish", SimulatedPsp._finish),
    C.DBG_DECRYPT: ("struct sev_data_dbg", SimulatedPsp._dbg_decrypt),
    C.DBG_ENCRYPT: ("struct sev_data_dbg", SimulatedPsp._dbg_encrypt),
}
