"""sevd: AMD SEV for Xen — the Dom0 PSP daemon, the xl-style host CLI and the guest-owner tools."""

__version__ = "0.1.0"

# Debian's package bundles pyxs and ioctl-opt, which Debian does not ship, in a private directory; it goes
# last on the path so that a system-wide copy, where one exists, is the one imported.
_VENDOR = "/usr/lib/sevd/vendor"


def _use_vendored() -> None:
    import os
    import sys

    if os.path.isdir(_VENDOR) and _VENDOR not in sys.path:
        sys.path.append(_VENDOR)


_use_vendored()
