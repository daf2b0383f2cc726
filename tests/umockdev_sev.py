"""Run under `umockdev-wrapper`: a /dev/sev node answered by the simulated PSP, through real ioctl(2).

The client is sevd's own (DeviceFile → cffi `sevd_ioctl` → libc ioctl(2)); umockdev's preload
library intercepts the system call and hands the request to the handler below, which forwards it
to a SimulatedPsp with a CallerMemory over umockdev's IoctlData: resolve() follows the `data`
pointer (and the blob pointers inside the command buffer) exactly as the kernel would
copy_from_user them, update() is its copy_to_user.
Prints one line per check; exits non-zero on the first mismatch.
"""

import errno
import struct
import sys
import tempfile
import threading
from pathlib import Path

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import GLib, UMockdev  # noqa: E402

from sevd.abi import status  # noqa: E402
from sevd.abi.certs import verify_chain  # noqa: E402
from sevd.abi.commands import FirmwareCommand, PlatformState  # noqa: E402
from sevd.abi.policy import Policy  # noqa: E402
from sevd.guest import GuestCommands  # noqa: E402
from sevd.platform import Platform  # noqa: E402
from sevd.psp.device import SEV_ISSUE_CMD, SEV_ISSUE_GUEST_CMD, DeviceFile, PspClient  # noqa: E402
from sevd_sim.host import owner_chain  # noqa: E402
from sevd_sim.psp.device import SimulatedPsp, create_psp  # noqa: E402
from sevd_sim.psp.memory import PhysicalMemory  # noqa: E402

SEV_NODE = (
    "P: /devices/virtual/misc/sev\nN: sev\nE: DEVNAME=/dev/sev\nE: MAJOR=10\nE: MINOR=124\n"
    "E: SUBSYSTEM=misc\nA: dev=10:124\n"
)
ERROR_OFFSET = 12  # struct sev_issue_cmd {u32 cmd; u64 data; u32 error} packed
seen = []


class _Fault(Exception):
    pass


class IoctlDataCaller:
    """CallerMemory over umockdev's IoctlData: the caller's command buffer and the blobs it points to."""

    def __init__(self, issue, data: int):
        self.issue = issue
        self.data = data
        self.buffer = None
        self.size = 0

    def _buffer(self, size: int):
        if not self.data:
            raise _Fault()
        if self.buffer is None or size > self.size:
            self.buffer = self.issue.resolve(4, size)
            self.size = size
        return self.buffer

    def read_buffer(self, size: int) -> bytes:
        return bytes(self._buffer(size).retrieve())[:size]

    def write_buffer(self, data: bytes) -> None:
        self._buffer(len(data)).update(0, data)

    def _pointer(self, offset: int) -> int:
        return struct.unpack_from("<Q", self.read_buffer(max(self.size, offset + 8)), offset)[0]

    def read_at(self, pointer_offset: int, length: int) -> bytes:
        if not self._pointer(pointer_offset):
            raise _Fault()
        return bytes(self.buffer.resolve(pointer_offset, length).retrieve())

    def write_at(self, pointer_offset: int, data: bytes) -> None:
        if not self._pointer(pointer_offset):
            raise _Fault()
        self.buffer.resolve(pointer_offset, len(data)).update(0, data)


def make_handler(psp: SimulatedPsp):
    def handle_ioctl(_handler, client):
        request = client.get_request()
        issue = client.get_arg().resolve(0, 16)  # struct sev_issue_cmd, copied from the caller
        cmd, data, _error = struct.unpack("<IQI", bytes(issue.retrieve()))
        seen.append((request, cmd))
        try:
            rc, error = psp.dispatch(request, cmd, IoctlDataCaller(issue, data))
        except _Fault:
            rc, error = -errno.EFAULT, 0
        issue.update(ERROR_OFFSET, struct.pack("<I", error & 0xFFFFFFFF))
        client.complete(-1 if rc else 0, -rc)
        return True

    return handle_ioctl


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sevd-umockdev-") as tmp:
        return run(Path(tmp))


def run(host: Path) -> int:
    PhysicalMemory.create(host / "memory.img", 16 << 20).close()
    create_psp(host)
    psp = SimulatedPsp(host)

    testbed = UMockdev.Testbed.new()
    testbed.add_from_string(SEV_NODE)
    handler = UMockdev.IoctlBase()
    handler.connect("handle-ioctl", make_handler(psp))
    testbed.attach_ioctl("/dev/sev", handler)
    context = GLib.MainContext.default()
    threading.Thread(target=lambda: [context.iteration(True) for _ in iter(int, 1)], daemon=True).start()

    client = PspClient(DeviceFile("/dev/sev"))
    platform = Platform(client)
    st = platform.status()
    assert (st.api_major, st.api_minor, st.build, st.state, st.guests) == (0, 24, 7, PlatformState.INIT, 0), st
    print("status ok", st)

    export = platform.pdh_cert_export()  # probe, then two nested output pointers
    ident = host / "psp" / "identity"
    verify_chain(owner_chain(host, export, platform.get_id()))
    assert export.pdh == (ident / "pdh.cert").read_bytes()
    print("pdh export ok")

    guests = GuestCommands(client)
    try:
        guests.activate(7, 5)
    except status.InvalidPlatformState as err:  # no guest yet: the platform is INIT, ACTIVATE needs WORKING
        print("firmware error ok", err)
    else:
        print("ACTIVATE of an unknown handle did not fail")
        return 1
    handle = guests.launch_start(Policy(0))
    guests.activate(handle, 5)
    psp.memory.write(0x10000, b"through ioctl(2)" * 256)
    guests.launch_update_data(handle, 0x10000, 4096)
    measurement = guests.launch_measure(handle)
    assert len(measurement) == 0x30 and any(measurement)
    assert guests.dbg_decrypt(handle, 0x10000, 32) == b"through ioctl(2)" * 2
    try:
        guests.activate(handle + 1, 6)
    except status.InvalidGuest as err:
        print("firmware error ok", err)
    else:
        return 1
    try:
        platform.pek_gen()
    except status.InvalidPlatformState as err:  # WORKING now
        print("firmware error ok", err)
    else:
        return 1
    print("guest commands ok")
    assert (SEV_ISSUE_GUEST_CMD, FirmwareCommand.LAUNCH_MEASURE) in seen
    assert seen[0] == (SEV_ISSUE_CMD, 1), seen
    print("ioctl path ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
