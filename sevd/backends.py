"""One factory per seam: the PSP, the hypervisor and the toolstack that a configuration names.

The product's own backends are built in: the `/dev/sev` device, the patched Xen's domctl, the stock
`xl`.  Any other backend name (a simulated host's, say) is looked up among installed entry points,
so the product never imports another package's code:

    [project.entry-points."sevd.backends"]
    simulated = "package.module:backend_object"

The object answers the `Backend` protocol below; it implements only the seams it provides.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from typing import Any, Protocol

from sevd.abi.units import DomId
from sevd.config import Config
from sevd.errors import InputError
from sevd.psp.device import PspClient, open_device
from sevd.xen.hypervisor import Hypervisor
from sevd.xen.toolstack import Toolstack

ENTRY_POINT_GROUP = "sevd.backends"
BUILT_IN = {"psp": "device", "hypervisor": "xen"}


class Backend(Protocol):
    def open_psp(self, config: Config, *, write: bool) -> PspClient: ...

    def open_hypervisor(self, config: Config, exists: Callable[[DomId], bool]) -> Hypervisor: ...

    def bind_hypervisor(self, hypervisor: Hypervisor, config: Config) -> Hypervisor:
        """The hypervisor the daemon uses when this backend is the PSP's (a simulated PSP must hear of WBINVD)."""
        ...

    def open_toolstack(self, config: Config, xs: Any) -> Toolstack: ...


def _plugin(name: str, section: str) -> Backend:
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise InputError(
            f"{section} backend {name!r}: not built in (those are {BUILT_IN[section]!r}) and no installed "
            f"package provides it"
        )
    backend: Backend = next(iter(found)).load()
    return backend


def open_psp(config: Config, *, write: bool = True) -> PspClient:
    """The ioctl client on the configured PSP backend; callers never ask which one it is."""
    if config.psp_backend == BUILT_IN["psp"]:
        return open_device(config.psp_path, write=write)
    return _plugin(config.psp_backend, "psp").open_psp(config, write=write)


def open_hypervisor(config: Config, exists: Callable[[DomId], bool]) -> Hypervisor:
    """The configured hypervisor, as the PSP backend needs to see it."""
    if config.hypervisor_backend == BUILT_IN["hypervisor"]:
        from sevd.xen.domctl import DomctlXen  # libxencall is loaded only on a Xen host

        hypervisor: Hypervisor = DomctlXen(exists=exists)
    else:
        hypervisor = _plugin(config.hypervisor_backend, "hypervisor").open_hypervisor(config, exists)
    if config.psp_backend == BUILT_IN["psp"]:
        return hypervisor
    return _plugin(config.psp_backend, "psp").bind_hypervisor(hypervisor, config)


def open_toolstack(config: Config, xs: Any) -> Toolstack:
    """What creates, unpauses and destroys domains: the stock `xl` on Xen ($XL_SEV_XL overrides its path)."""
    if config.hypervisor_backend == BUILT_IN["hypervisor"]:
        from sevd.xen.toolstack import XlToolstack

        return XlToolstack(os.environ.get("XL_SEV_XL", "xl"))
    return _plugin(config.hypervisor_backend, "hypervisor").open_toolstack(config, xs)
