"""Linux driver generations: how drivers/crypto/ccp/sev-dev.c treats the platform, per kernel.

One row per generation, read from the driver's source (docs/simulated-psp.md, "Linux driver
generations", names the functions):

- 6.1 (Debian 12's 6.1.192): `sev_pci_init` INITs at probe (`psp_init_on_probe` defaults to true);
  a platform ioctl that needs INIT and finds UNINIT (after FACTORY_RESET) INITs and leaves it INIT
  (`__sev_platform_init_locked`).  PDH_CERT_EXPORT checks the state (EPERM on a read-only fd) before
  it copies the request.
- 6.12 (Debian 13's 6.12.117): `sev_pci_init` no longer INITs; KVM's `sev_hardware_setup` does, and
  without KVM (a Xen Dom0) nothing does, so the platform rests in UNINIT.  The platform ioctls use
  `sev_move_to_init_state`: INIT, the command, then `__sev_firmware_shutdown` (SHUTDOWN), so the
  platform is UNINIT again afterwards.  A failed INIT reports the firmware's own status.
  PDH_CERT_EXPORT checks the state after the request's lengths.
- 6.16 (mainline, read in a v6.17-rc3 tree): as 6.12, but `sev_move_to_init_state` goes through
  `_sev_platform_init_locked` and a failed INIT reports INVALID_PLATFORM_STATE; the PDH_CERT_EXPORT
  length query no longer looks at cert_chain_len.

Facts only: the rows are data for the simulated driver in sevd_sim.psp.device.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LinuxDriver:
    version: str
    # sev_pci_init (6.1) INITs the platform when the module loads; later kernels leave that to KVM.
    init_at_probe: bool
    # sev_move_to_init_state + __sev_firmware_shutdown: an INIT done for a platform ioctl is undone after it.
    shutdown_after_ioctl: bool
    # 6.16: a failed implicit INIT answers INVALID_PLATFORM_STATE instead of the firmware's status.
    init_failure_is_invalid_platform_state: bool
    # 6.1: sev_ioctl_do_pdh_export checks the platform state (and EPERM) before copying the request.
    export_checks_state_first: bool
    # 6.1 and 6.12: a zero cert_chain_len is a length query too (6.16 looks at three fields only).
    export_query_on_zero_chain_len: bool


GENERATIONS: dict[str, LinuxDriver] = {
    "6.1": LinuxDriver("6.1", True, False, False, True, True),
    "6.12": LinuxDriver("6.12", False, True, False, False, True),
    "6.16": LinuxDriver("6.16", False, True, True, False, False),
}

# Debian 12 (bookworm) ships 6.1, which is what the simulated host followed before generations existed.
DEFAULT_LINUX = "6.1"


def driver(version: str) -> LinuxDriver:
    try:
        return GENERATIONS[version]
    except KeyError:
        raise ValueError(f"unknown Linux driver generation {version!r}: one of {', '.join(GENERATIONS)}") from None
