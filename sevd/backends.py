"""One factory per seam: the PSP, the hypervisor and the toolstack that a configuration names.

The product's own backends are built in: the `/dev/sev` device (`DeviceBackend`), the patched Xen's
domctl with the stock `xl` (`XenBackend`).  Any other backend name (a simulated host's, say) is
looked up among installed entry points, so the product never imports another package's code:

    [project.entry-points."sevd.backends"]
    simulated = "package.module:backend_object"

Every backend, built in or not, answers the `Backend` protocol below; it implements only the seams
it provides (the `[psp]` ones or the `[hypervisor]` ones).  Callers ask the backend rather than
its name: what it is (`psp_presence`, `hypervisor_presence`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sevd.abi.units import DomId
from sevd.config import Config
from sevd.errors import InputError
from sevd.psp.device import PspClient, open_device
from sevd.toolstack.interface import Toolstack
from sevd.xen.hypervisor import Hypervisor
from sevd.xen.xsclient import Xenstore

ENTRY_POINT_GROUP = "sevd.backends"
BUILT_IN = {"psp": "device", "hypervisor": "xen"}


@dataclasses.dataclass(frozen=True)
class Presence:
    """What a backend says of itself for the host checks (`xl-sev ok`): is it there, and usable?

    `found` is False when there is nothing to probe further (no device node, not running under Xen);
    `hint` says what to do when not `ok`.
    """

    ok: bool
    detail: str
    hint: str = ""
    found: bool = True


class Backend(Protocol):
    def open_psp(self, config: Config, *, write: bool) -> PspClient: ...

    def psp_presence(self, config: Config) -> Presence:
        """The PSP as the host checks show it (the `/dev/sev` line)."""
        ...

    def open_hypervisor(self, config: Config, exists: Callable[[DomId], bool]) -> Hypervisor: ...

    def hypervisor_presence(self, config: Config) -> Presence:
        """The hypervisor as the host checks show it (the `Xen` line); `found` when it can be asked for
        its SEV capabilities, else the host checks read the CPU's own."""
        ...

    def bind_hypervisor(self, hypervisor: Hypervisor, config: Config) -> Hypervisor:
        """The hypervisor the daemon uses when this backend is the PSP's (a simulated PSP must hear of WBINVD)."""
        ...

    def open_toolstack(self, config: Config, xs: Xenstore) -> Toolstack: ...


class DeviceBackend:
    """The PSP through the kernel's `/dev/sev` (`[psp] path`)."""

    def open_psp(self, config: Config, *, write: bool) -> PspClient:
        return open_device(config.psp_path, write=write)

    def psp_presence(self, config: Config) -> Presence:
        path = config.psp_path
        present, writable = os.path.exists(path), os.access(path, os.W_OK)
        return Presence(
            present and writable,
            f"{path} {'present' if present else 'missing'}{', writable' if writable else ', not writable'}",
            "load ccp (modprobe ccp) with psp_init on; /dev/sev is root's: run xl-sev as root (sevd runs as root)",
            found=present,
        )

    def bind_hypervisor(self, hypervisor: Hypervisor, config: Config) -> Hypervisor:
        return hypervisor  # the real PSP sees the CPUs' WBINVD by itself


class XenBackend:
    """The patched Xen (its SEV domctl through libxencall) and the stock `xl` ($XL_SEV_XL overrides its path)."""

    CAPABILITIES = Path("/proc/xen/capabilities")

    def open_hypervisor(self, config: Config, exists: Callable[[DomId], bool]) -> Hypervisor:
        from sevd.xen.domctl import DomctlXen  # libxencall is loaded only on a Xen host

        return DomctlXen(exists=exists)

    def hypervisor_presence(self, config: Config) -> Presence:
        try:
            caps = self.CAPABILITIES.read_text()
        except OSError:
            return Presence(
                False, f"not running under Xen ({self.CAPABILITIES} missing)", "boot the host with Xen", found=False
            )
        if "control_d" not in caps:
            return Presence(False, "this is not Dom0", "run xl-sev in Dom0")
        return Presence(True, "Xen Dom0 (its SEV state: see CPU SEV)")

    def xendomains_files(self) -> tuple[Path, Path]:
        """Debian's xendomains settings and its default autostart directory (under $XL_SEV_ETC, default /etc)."""
        etc = Path(os.environ.get("XL_SEV_ETC", "/etc"))
        return etc / "default" / "xendomains", etc / "xen" / "auto"

    def open_toolstack(self, config: Config, xs: Xenstore) -> Toolstack:
        from sevd.toolstack.xl import XlToolstack

        return XlToolstack(os.environ.get("XL_SEV_XL", "xl"))


BUILT_IN_BACKENDS: dict[str, Any] = {"device": DeviceBackend(), "xen": XenBackend()}


def _backend(name: str, section: str) -> Backend:
    if name == BUILT_IN[section]:
        return BUILT_IN_BACKENDS[name]  # type: ignore[no-any-return]
    import importlib.metadata  # only for a backend that is not built in

    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise InputError(
            f"{section} backend {name!r}: not built in (those are {BUILT_IN[section]!r}) and no installed "
            f"package provides it"
        )
    return next(iter(found)).load()  # type: ignore[no-any-return]


def psp_backend(config: Config) -> Backend:
    return _backend(config.psp_backend, "psp")


def hypervisor_backend(config: Config) -> Backend:
    return _backend(config.hypervisor_backend, "hypervisor")


def open_psp(config: Config, *, write: bool = True) -> PspClient:
    """The ioctl client on the configured PSP backend; callers never ask which one it is."""
    return psp_backend(config).open_psp(config, write=write)


def open_hypervisor(config: Config, exists: Callable[[DomId], bool]) -> Hypervisor:
    """The configured hypervisor, as the PSP backend needs to see it."""
    hypervisor = hypervisor_backend(config).open_hypervisor(config, exists)
    return psp_backend(config).bind_hypervisor(hypervisor, config)


def open_toolstack(config: Config, xs: Xenstore) -> Toolstack:
    """What creates, unpauses and destroys domains: the stock `xl` on Xen, a simulated host's stand-in there."""
    return hypervisor_backend(config).open_toolstack(config, xs)


def psp_presence(config: Config) -> Presence:
    return psp_backend(config).psp_presence(config)


def hypervisor_presence(config: Config) -> Presence:
    return hypervisor_backend(config).hypervisor_presence(config)
