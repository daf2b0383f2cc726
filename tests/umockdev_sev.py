"""Run under `umockdev-wrapper`: a /dev/sev node whose ioctls a handler in this process answers.

The client below is sevd's own (DeviceFile → cffi `sevd_ioctl` → libc ioctl(2)); umockdev's
preload library intercepts the real system call and hands the request to the handler, which
follows the `data` pointer with resolve() exactly as the kernel would copy_from_user it.
Prints one line per check; exits non-zero on the first mismatch.
"""

import struct
import sys
import threading

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import GLib, UMockdev  # noqa: E402

from sevd.abi import status  # noqa: E402
from sevd.abi.commands import UserCommand  # noqa: E402
from sevd.platform import Platform  # noqa: E402
from sevd.psp.device import SEV_ISSUE_CMD, DeviceFile, PspClient  # noqa: E402

SEV_NODE = (
    "P: /devices/virtual/misc/sev\nN: sev\nE: DEVNAME=/dev/sev\nE: MAJOR=10\nE: MINOR=124\n"
    "E: SUBSYSTEM=misc\nA: dev=10:124\n"
)
EIO = 5
seen = []


def handle_ioctl(_handler, client):
    request = client.get_request()
    issue = client.get_arg().resolve(0, 16)  # struct sev_issue_cmd, copied from the caller
    cmd, data, _error = struct.unpack("<IQI", bytes(issue.retrieve()))
    seen.append((request, cmd, data))
    if request != SEV_ISSUE_CMD:
        client.complete(-1, 25)  # ENOTTY, as a kernel without the ioctl
    elif cmd == UserCommand.PLATFORM_STATUS:
        # api 0.24, state INIT, flags ES, build 7, 3 guests
        issue.resolve(4, 12).update(0, struct.pack("<BBBIBI", 0, 24, 1, 0x100, 7, 3))
        client.complete(0, 0)
    else:
        issue.update(12, struct.pack("<I", status.FirmwareStatus.INVALID_PLATFORM_STATE))
        client.complete(-1, EIO)
    return True


def main() -> int:
    testbed = UMockdev.Testbed.new()
    testbed.add_from_string(SEV_NODE)
    handler = UMockdev.IoctlBase()
    handler.connect("handle-ioctl", handle_ioctl)
    testbed.attach_ioctl("/dev/sev", handler)
    context = GLib.MainContext.default()
    threading.Thread(target=lambda: [context.iteration(True) for _ in iter(int, 1)], daemon=True).start()

    platform = Platform(PspClient(DeviceFile("/dev/sev")))
    st = platform.status()
    assert (st.api_major, st.api_minor, st.build, st.es, st.guests) == (0, 24, 7, True, 3), st
    print("status ok", st)
    try:
        platform.pek_gen()
    except status.InvalidPlatformState as err:
        print("firmware error ok", err)
    else:
        print("PEK_GEN did not fail")
        return 1
    assert [s[:2] for s in seen] == [(SEV_ISSUE_CMD, 1), (SEV_ISSUE_CMD, 2)], seen
    print("ioctl path ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
