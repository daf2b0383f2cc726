"""The `Toolstack` protocol: what `xl-sev` asks of the host's toolstack.

The stock `xl` on Xen (sevd.toolstack.xl.XlToolstack) or a simulated host's stand-in, opened by
`sevd.backends.open_toolstack` from the configuration; callers never ask which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sevd.abi.units import DomId, Gpa

if TYPE_CHECKING:  # the daemon, which imports this through sevd.backends, never parses a cfg (libxlutil)
    from sevd.xen import xlcfg


class Toolstack(Protocol):
    def create(self, guest: xlcfg.GuestConfig, image: bytes | None) -> DomId:
        """The domain created paused with its boot image loaded (`xl create -p`); its domid.

        `image` is the measured boot image when the caller has read it (an SEV guest's); a toolstack
        that loads the image itself reads the cfg's files when it is None.
        """
        ...

    def image_location(self, domid: DomId, image_size: int) -> list[tuple[Gpa, int]]:
        """(gpa, size) pieces holding the boot image, in the order they are measured."""
        ...

    def unpause(self, domid: DomId) -> None: ...

    def destroy(self, domid: DomId) -> None: ...
