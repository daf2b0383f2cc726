"""sevd: AMD SEV for Xen — the Dom0 PSP daemon, the xl-style host CLI and the guest-owner tools."""

__version__ = "0.1.0"
