"""The simulated /dev/sev: the Linux driver's behaviour in front of the firmware model.

`SimulatedPsp` is an IoctlTarget: it takes the same `struct sev_issue_cmd` the real device takes
and follows its `data` pointer through a `CallerMemory`, the way the kernel copies from user
space.  In front of the firmware it does what drivers/crypto/ccp/sev-dev.c does, in the Linux
generation the host was made with (sevd_sim.psp.linux): INIT at probe or not, implicit INIT (with
WBINVD + DF_FLUSH) for the platform ioctls that need it and, from 6.12, SHUTDOWN after them; EPERM
for a read-only fd on write commands, EINVAL for unknown ids and bad blobs, the length probe, EIO
with the status in `error` when the firmware fails.  Guest commands arrive through
SEV_ISSUE_GUEST_CMD, the ioctl of our Dom0 kernel patch (xen-patches/linux), answered as that patch
answers: implicit INIT, the bounce-buffer limits, and EPERM unless the hypervisor confirms that guest
memory named by address belongs to the guest.  Every command runs under the host's mailbox lock and
loads and saves the firmware state, so several processes can share one simulated PSP and it outlives them all.

Its memory is the simulated host's memory file, or (memory kind "xen") the machine memory of the Xen
host it runs on, read through Xen under sev=test: a measure-only TEST MODE for emulated hardware.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from sevd._psp import ffi
from sevd.abi import status
from sevd.abi.certs import SevCert
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
from sevd.abi.platform_status import status_flags
from sevd.abi.snp import Product, SnpCommand, SnpUserCommand, TcbVersion
from sevd.abi.units import MAX_HANDLES, Asid, Spa
from sevd.durable import atomic_write, encode_json, exclusive, read_json, write_json
from sevd.psp.device import SEV_ISSUE_CMD, SEV_ISSUE_GUEST_CMD
from sevd_sim import kds
from sevd_sim.psp import tables
from sevd_sim.psp.firmware import DEFAULT_CCXS, DEFAULT_CORES_PER_CCX, Firmware, new_state
from sevd_sim.psp.identity import Identity
from sevd_sim.psp.linux import DEFAULT_LINUX, LinuxDriver, driver
from sevd_sim.psp.memory import MachineMemory, PhysicalMemory
from sevd_sim.psp.snp import new_snp_state

C = FirmwareCommand
_SECRET_TRANSPORT_MAX = 0x5000  # SEV_GUEST_TRANS_MAX: the patch lets LAUNCH_SECRET's transport buffer reach 0x5000


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
        if not self.address:
            raise _Errno(errno.EFAULT)  # copy_from_user from NULL
        return bytes(ffi.buffer(ffi.cast("uint8_t *", self.address), size))

    def write_buffer(self, data: bytes) -> None:
        if not self.address:
            raise _Errno(errno.EFAULT)
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


# kzalloc's limit on x86-64 (1 << (PAGE_SHIFT + MAX_PAGE_ORDER), 4 MiB): GET_ID2's only bound on a length.
_KMALLOC_MAX = 4 << 20

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
    linux: str = DEFAULT_LINUX,
    pv_dom0: bool = False,
    topology: tuple[int, int] = (DEFAULT_CCXS, DEFAULT_CORES_PER_CCX),
    snp: str | None = None,
) -> None:
    """A new simulated chip in `host`/psp, behind the driver of Linux `linux` (6.1, 6.12 or 6.16).

    6.1 INITs the platform at probe time; 6.12 and 6.16 leave it UNINIT (sevd_sim.psp.linux).

    `memory`: the memory file (default `host`/memory.img), or XEN_MACHINE_MEMORY ("xen"): the machine
    memory of the Xen host this runs on, measure-only, so `encrypt` must then be False.
    `es`: the CPU supports SEV-ES, so the kernel INITs the firmware with the ES flag (Linux does
    when it could allocate the TMR).  `max_guests`: the firmware's guest-handle limit (1024).
    `pv_dom0`: the kernel is a PV Dom0 on Xen, so its `wbinvd_on_all_cpus()` runs WBINVD only on the physical
    CPU its vCPU is on: the DF_FLUSH after INIT fails (WBINVD_REQUIRED) and every ASID stays dirty.
    `topology`: (CCXs, cores per CCX), over which the firmware keeps ASID states and WBINVD_DONE.
    `snp`: the BIOS enables SEV-SNP on a chip of this KDS product ("Milan", "Genoa", "Turin"; docs/snp.md):
    legacy INIT then fails until SNP_INIT has run, which needs the RMP Xen sets up.
    """
    kind = str(memory or Path(host) / "memory.img")
    if kind == XEN_MACHINE_MEMORY and encrypt:
        raise ValueError("machine memory read through Xen cannot be encrypted: create the PSP with encrypt=False")
    directory = psp_dir(host)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "digests").mkdir(exist_ok=True)
    identity = Identity(directory / "identity")
    identity.create()
    generation = driver(linux)
    config: dict[str, Any] = {"memory": kind, "es": es, "encrypt": encrypt, "linux": linux}
    if pv_dom0:
        config["dom0"] = "pv"
    if snp is not None:
        config["snp"] = Product(snp).value
    write_json(directory / "config.json", config)
    ccxs, cores_per_ccx = topology
    chip_id = os.urandom(GET_ID_SIZE)
    state = new_state(
        build, max_asid, min_sev_asid, chip_id, max_guests=max_guests, ccxs=ccxs, cores_per_ccx=cores_per_ccx
    )
    if snp is not None:
        state["snp"] = new_snp_state()
    write_json(directory / "state.json", state)
    # AMD signs the CEK outside the chip and serves it by chip id: the simulated host is that key server.
    kds.publish(host, chip_id, SevCert.parse(identity.cert("cek"), "simulated CEK"))
    if snp is not None:
        tcb = TcbVersion.from_int(state["snp"]["reported_tcb"], Product(snp).tcb_layout)
        kds.publish_vcek(host, Product(snp), chip_id, bytes.fromhex(state["snp"]["chip_secret"]), tcb)
    if generation.init_at_probe:  # sev_pci_init -> sev_platform_init (6.1)
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

    def __init__(
        self, host: Path | str, *, writable: bool = True, encrypt: bool | None = None, kernel_caller: bool = False
    ):
        self.host = Path(host)
        # kernel_caller: guest commands reach the firmware as an in-kernel user's do (KVM through
        # sev_issue_cmd_external_user): every guest command, none of the Dom0 patch's checks or its
        # implicit INIT.  The firmware conformance tests use it to reach every cell of the SEV API's tables.
        self.kernel_caller = kernel_caller
        self.dir = psp_dir(self.host)
        if not (self.dir / "state.json").exists():
            raise FileNotFoundError(f"{self.dir}: no simulated PSP here (create the simulated host first)")
        self.writable = writable
        config = read_json(self.dir / "config.json")
        configured = bool(config.get("encrypt", True))
        self.encrypt = configured if encrypt is None else encrypt
        self._xen: Any = None
        self.memory: PhysicalMemory | MachineMemory
        self._xen_machine_memory = config["memory"] == XEN_MACHINE_MEMORY
        if self._xen_machine_memory:
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
        # The Linux generation is the host's, so every process opening it sees the same driver.
        self.driver: LinuxDriver = driver(config.get("linux", DEFAULT_LINUX))
        self.pv_dom0 = config.get("dom0") == "pv"
        # The BIOS enables SEV-SNP (config "snp": the KDS product), else None: the host is as it always was.
        self.snp: Product | None = Product(config["snp"]) if config.get("snp") else None

    def _domctl(self) -> Any:
        # Xen is opened on first use, so a PSP that never touches guest memory needs no libxencall.
        if self._xen is None:
            from sevd.xen.domctl import DomctlXen

            self._xen = DomctlXen()
        return self._xen

    def _read_spa(self, asid: int, spa: int, length: int) -> bytes:
        return self._domctl().read_spa(asid, spa, length)

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
                after = encode_json(self.fw.state)  # as write_json writes it
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
            if self.snp is not None and self._snp_dispatch(request, cmd, caller):
                return 0, 0
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
                # sev_ioctl_do_guest_cmd (xen-patches/linux): the fd's mode first, then the command id.
                if not self.writable:
                    return -errno.EPERM, 0
                allowed = _KERNEL_GUEST_COMMANDS if self.kernel_caller else GUEST_COMMANDS
                if cmd not in allowed:
                    return -errno.EINVAL, 0
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

    def _snp_dispatch(self, request: int, cmd: int, caller: CallerMemory) -> bool:
        """An SNP command on an SNP host (sevd_sim.psp.snp_device); False for anything else."""
        from sevd_sim.psp import snp_device

        assert self.snp is not None
        if request == SEV_ISSUE_CMD and cmd in SnpUserCommand._value2member_map_:
            user = SnpUserCommand(cmd)
            if user != SnpUserCommand.SNP_PLATFORM_STATUS and not self.writable:
                raise _Errno(errno.EPERM)
            run: Any = snp_device.user_command
            command: Any = user
        elif request == SEV_ISSUE_GUEST_CMD and cmd in snp_device.GUEST_IOCTL_COMMANDS:
            if not self.writable:
                raise _Errno(errno.EPERM)
            run, command = snp_device.guest_command, SnpCommand(cmd)
        else:
            return False
        with self.firmware() as fw:
            self._injected_failure(fw, command.name)
            try:
                run(self, fw, self.snp, command, caller)
            except snp_device.SnpErrno as err:
                raise _Errno(err.value) from None
        return True

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

    @contextlib.contextmanager
    def _initialised(self, fw: Firmware, needed: bool) -> Any:
        """The platform INIT for one platform ioctl, as this generation does it.

        6.1: __sev_platform_init_locked, and the platform stays INIT.  6.12 and 6.16:
        sev_move_to_init_state, then __sev_firmware_shutdown after the command (also after a failure),
        so the platform is UNINIT again.  `needed`: the driver found it not INIT.
        """
        if not needed:
            yield
            return
        try:
            self._kernel_init(fw)
        except status.FirmwareError:
            if self.driver.init_failure_is_invalid_platform_state:  # 6.16: argp->error = INVALID_PLATFORM_STATE
                raise status.InvalidPlatformState("INIT", detail="the implicit INIT failed") from None
            raise
        try:
            yield
        finally:
            if self.driver.shutdown_after_ioctl:
                fw.shutdown()
                fw.wbinvd_all_cpus()  # __sev_firmware_shutdown flushes the TMR it frees

    def _user_command(self, fw: Firmware, cmd: UserCommand, caller: CallerMemory) -> None:
        U = UserCommand
        uninit = fw.platform == P.UNINIT  # the driver's sev->state: it never records WORKING
        if cmd == U.PLATFORM_STATUS:
            out = ffi.new("struct sev_user_data_status *")
            st = fw.platform_status()
            out.api_major, out.api_minor, out.state, out.build = (
                st["api_major"],
                st["api_minor"],
                st["state"],
                st["build"],
            )
            out.flags = status_flags(owner=bool(st["owner"]), es=bool(st["es"]))
            out.guest_count = st["guest_count"]
            caller.write_buffer(bytes(ffi.buffer(out)))
        elif cmd == U.FACTORY_RESET:
            # sev_ioctl_do_reset: PLATFORM_STATUS, EBUSY in WORKING, SHUTDOWN from INIT, then FACTORY_RESET.
            if fw.platform == P.WORKING:
                raise _Errno(errno.EBUSY)
            if fw.platform == P.INIT:
                fw.shutdown()
            fw.platform_reset()
        elif cmd in (U.PEK_GEN, U.PDH_GEN):
            with self._initialised(fw, uninit):
                fw.pek_gen() if cmd == U.PEK_GEN else fw.pdh_gen()
        elif cmd == U.PEK_CSR:
            self._pek_csr(fw, caller, uninit)
        elif cmd == U.GET_ID:  # deprecated form: two inline 64-byte fields
            ids = ffi.new("struct sev_user_data_get_id *")
            ffi.memmove(ids.socket1, fw.get_id(GET_ID_SIZE), GET_ID_SIZE)
            caller.write_buffer(bytes(ffi.buffer(ids)))
        elif cmd == U.GET_ID2:
            self._get_id2(fw, caller)
        elif cmd == U.PEK_CERT_IMPORT:
            # sev_ioctl_do_pek_import: both blobs through psp_copy_user_blob, then INIT if needed.
            req = self._read(caller, "struct sev_user_data_pek_cert_import")
            pek = _copy_user_blob(caller, req, "pek_cert_address", req.pek_cert_len)
            oca = _copy_user_blob(caller, req, "oca_cert_address", req.oca_cert_len)
            with self._initialised(fw, uninit):
                fw.pek_cert_import(pek, oca)
        elif cmd == U.PDH_CERT_EXPORT:
            self._pdh_cert_export(fw, caller, uninit)

    def _read(self, caller: CallerMemory, ctype: str) -> Any:
        req = ffi.new(ctype + " *")
        size = ffi.sizeof(ctype)
        ffi.memmove(req, caller.read_buffer(size), size)
        return req

    @staticmethod
    def _write(caller: CallerMemory, req: Any) -> None:
        caller.write_buffer(bytes(ffi.buffer(req)))

    def _pek_csr(self, fw: Firmware, caller: CallerMemory, uninit: bool) -> None:
        """sev_ioctl_do_pek_csr: a zero address or length is a length query; over 16 KiB is EFAULT."""
        req = self._read(caller, "struct sev_user_data_pek_csr")
        probe = not req.address or not req.length
        if not probe and req.length > USER_BLOB_MAX:
            raise _Errno(errno.EFAULT)
        with self._initialised(fw, uninit):
            try:
                data = fw.pek_csr(0 if probe else req.length)
            except status.InvalidLen:
                req.length = CERT_SIZE
                self._write(caller, req)
                raise
        req.length = len(data)
        self._write(caller, req)
        if not probe:
            caller.write_at(_off(req, "address"), data)

    def _get_id2(self, fw: Firmware, caller: CallerMemory) -> None:
        """sev_ioctl_do_get_id2: no INIT, no 16 KiB cap (the buffer is kzalloc'd at the caller's length)."""
        req = self._read(caller, "struct sev_user_data_get_id2")
        probe = not req.address or not req.length
        if not probe and req.length > _KMALLOC_MAX:
            raise _Errno(errno.ENOMEM)  # kzalloc(..., __GFP_NOWARN) fails: "simply return ENOMEM"
        try:
            data = fw.get_id(0 if probe else req.length)
        except status.InvalidLen:
            req.length = GET_ID_SIZE
            self._write(caller, req)
            raise
        req.length = len(data)
        self._write(caller, req)
        caller.write_at(_off(req, "address"), data)

    def _pdh_cert_export(self, fw: Firmware, caller: CallerMemory, uninit: bool) -> None:
        """sev_ioctl_do_pdh_export; a read-only fd may export only from an INITed platform (EPERM)."""
        if self.driver.export_checks_state_first and uninit:  # 6.1: before copy_from_user
            if not self.writable:
                raise _Errno(errno.EPERM)
            self._kernel_init(fw)
            uninit = False
        req = self._read(caller, "struct sev_user_data_pdh_cert_export")
        probe = not req.pdh_cert_address or not req.pdh_cert_len or not req.cert_chain_address
        if self.driver.export_query_on_zero_chain_len:
            probe = probe or not req.cert_chain_len
        if not probe and (req.pdh_cert_len > USER_BLOB_MAX or req.cert_chain_len > USER_BLOB_MAX):
            raise _Errno(errno.EFAULT)
        if uninit and not self.writable:  # 6.12, 6.16: after the lengths
            raise _Errno(errno.EPERM)
        with self._initialised(fw, uninit):
            try:
                pdh, chain = fw.pdh_cert_export(0 if probe else req.pdh_cert_len, 0 if probe else req.cert_chain_len)
            except status.InvalidLen:
                req.pdh_cert_len, req.cert_chain_len = CERT_SIZE, PDH_CHAIN_SIZE
                self._write(caller, req)
                raise
        req.pdh_cert_len, req.cert_chain_len = len(pdh), len(chain)
        self._write(caller, req)
        caller.write_at(_off(req, "pdh_cert_address"), pdh)
        caller.write_at(_off(req, "cert_chain_address"), chain)

    # -- guest commands (SEV_ISSUE_GUEST_CMD, the Dom0 kernel patch) ------------------------------------------

    def _guest_command(self, fw: Firmware, cmd: FirmwareCommand, caller: CallerMemory) -> None:
        """sev_ioctl_do_guest_cmd: copy the command buffer, INIT an UNINIT platform (it stays INIT), then run."""
        if self.kernel_caller and cmd in tables.UNSUPPORTED:
            fw.unsupported(cmd, int.from_bytes(caller.read_buffer(4), "little"))
            return
        handler = _GUEST_HANDLERS.get(cmd)
        req = self._read(caller, handler[0]) if handler is not None else None  # DF_FLUSH has no buffer
        if fw.platform == P.UNINIT and not self.kernel_caller:
            self._kernel_init(fw)  # __sev_platform_init_locked: a failure is EIO with INIT's status
        if handler is None:
            fw.df_flush()
            return
        handler[1](self, fw, req, caller)

    def _guest_memory_ok(self, fw: Firmware, handle: int, spa: int, length: int) -> None:
        """sev_guest_memory_ok: GUEST_STATUS names the ASID; Xen must confirm the range is that guest's RAM."""
        if not length or self.kernel_caller:
            return  # nothing to touch; the firmware judges the length
        _policy, asid, _state = fw.guest_status(handle)
        if not asid:
            raise _Errno(errno.EINVAL)  # not activated: no guest to check against
        if not self._hypervisor_confirms(asid, spa, length):
            raise _Errno(errno.EPERM)

    def _hypervisor_confirms(self, asid: int, spa: int, length: int) -> bool:
        """XEN_DOMCTL_sev_op CHECK_SPA: the patched Xen (machine memory), the simulated Xen, or none.

        A PSP without a hypervisor beside it (a bare `sevd-sim psp`, the firmware tests' rig) has no
        one to ask; it confirms every address (docs/simulated-psp.md, "The driver layer").
        """
        from sevd.xen.hypervisor import HypervisorError

        if self._xen_machine_memory:
            try:
                self._domctl().check_spa(asid, spa, length)
            except (HypervisorError, OSError):
                return False
            return True
        if (self.host / "xen" / "domains.json").exists():
            from sevd_sim.xen import SimulatedXen

            try:
                SimulatedXen(self.host).check_spa(Asid(asid), Spa(spa), length)
            except HypervisorError:
                return False
        return True

    def _bounce(self, caller: CallerMemory, req: Any, field: str, length: int, maximum: int) -> bytes | None:
        """sev_bounce_in with copy: None for a zero address or length (the firmware gets 0), EINVAL over `maximum`."""
        if not getattr(req, field) or not length:
            return None
        if length > maximum:
            raise _Errno(errno.EINVAL)
        return caller.read_at(_off(req, field), length)

    @staticmethod
    def _out_buffer(req: Any, field: str, length: int, maximum: int) -> bool:
        """sev_bounce_in without copy: is there a kernel buffer for the firmware to fill?"""
        if not getattr(req, field) or not length:
            return False
        if length > maximum:
            raise _Errno(errno.EINVAL)
        return True

    def _launch_start(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        godh = self._bounce(caller, req, "dh_cert_address", req.dh_cert_len, USER_BLOB_MAX)
        session = self._bounce(caller, req, "session_address", req.session_len, USER_BLOB_MAX)
        if godh is not None and session is None:
            session = b""  # the firmware sees a session address of 0: its length check answers
        req.handle = fw.launch_start(req.handle, req.policy, godh, session if godh is not None else None)
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
        self._guest_memory_ok(fw, req.handle, req.address, req.len)
        fw.launch_update_data(req.handle, req.address, req.len)

    def _update_vmsa(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        self._guest_memory_ok(fw, req.handle, req.address, req.len)
        fw.launch_update_vmsa(req.handle, req.address, req.len)

    def _measure(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        out = self._out_buffer(req, "address", req.len, USER_BLOB_MAX)
        try:
            blob = fw.launch_measure(req.handle, req.len if out else 0)
        except status.InvalidLen:
            req.len = MEASUREMENT_SIZE
            self._write(caller, req)
            raise
        caller.write_at(_off(req, "address"), blob)
        req.len = len(blob)
        self._write(caller, req)

    def _secret(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        self._guest_memory_ok(fw, req.handle, req.guest_address, req.guest_len)
        header = self._bounce(caller, req, "hdr_address", req.hdr_len, USER_BLOB_MAX)
        trans = self._bounce(caller, req, "trans_address", req.trans_len, _SECRET_TRANSPORT_MAX)
        fw.launch_update_secret(req.handle, header or b"", req.guest_address, req.guest_len, trans or b"")

    def _finish(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        fw.launch_finish(req.handle)

    def _dbg_decrypt(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        # src is guest memory (an SPA); dst is the caller's buffer, copied out by the kernel.
        self._guest_memory_ok(fw, req.handle, req.src_addr, req.len)
        out = self._out_buffer(req, "dst_addr", req.len, USER_BLOB_MAX)
        plain = fw.dbg_decrypt(req.handle, req.src_addr, req.len)
        if out:
            caller.write_at(_off(req, "dst_addr"), plain)

    def _dbg_encrypt(self, fw: Firmware, req: Any, caller: CallerMemory) -> None:
        # src is the caller's buffer; dst is guest memory (an SPA).
        self._guest_memory_ok(fw, req.handle, req.dst_addr, req.len)
        plain = self._bounce(caller, req, "src_addr", req.len, USER_BLOB_MAX)
        fw.dbg_encrypt(req.handle, req.dst_addr, plain or bytes(req.len))


def _off(req: Any, field: str) -> int:
    return ffi.offsetof(ffi.typeof(req).item, field)


def _copy_user_blob(caller: CallerMemory, req: Any, field: str, length: int) -> bytes:
    """psp_copy_user_blob: EINVAL for a null address, a zero length or more than 16 KiB; then memdup_user."""
    if not getattr(req, field) or not length or length > USER_BLOB_MAX:
        raise _Errno(errno.EINVAL)
    return caller.read_at(_off(req, field), length)


_KERNEL_GUEST_COMMANDS = GUEST_COMMANDS | tables.UNSUPPORTED

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
