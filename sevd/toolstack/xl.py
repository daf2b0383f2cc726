"""The stock `xl` as `xl-sev`'s toolstack on a real Xen host: `xl create -p`, `xl unpause`, `xl destroy`.

No toolstack patch: `xl` ignores the sev* keys; sevd makes the paused domain an SEV domain.  Whatever
would make xl rebuild an SEV guest from its cfg by itself (a reboot: `on_reboot = "restart"`) is
overridden on xl's command line to destroy the domain instead (`sev_overrides`).  For a PVH
guest, where libxenguest loaded the kernel and ramdisk comes from its own log of `xl -vvv create`
(sevd.toolstack.xllog).
"""

from __future__ import annotations

import subprocess

from sevd.abi.units import DomId, Gpa
from sevd.errors import InputError, SevdError
from sevd.toolstack.xllog import measured_ranges, parse_domain_builder_log
from sevd.xen import xlcfg

FOUR_GIB = 1 << 32
# xl's defaults for the events a cfg does not name (xl.cfg(5)): reboot and soft reset recreate the domain.
XL_DEFAULT_ACTIONS = {"on_poweroff": "destroy", "on_reboot": "restart", "on_watchdog": "destroy",
                      "on_crash": "destroy", "on_soft_reset": "soft-reset"}  # fmt: skip
OVMF_ALIGN = 1 << 20  # hvmloader places OVMF at 4 GiB minus its size rounded up to 1 MiB


def sev_overrides(guest: xlcfg.GuestConfig) -> list[str]:
    """The `key="value"` arguments after the cfg on `xl create` (xl applies them after the file, so they win)
    that keep xl from ever rebuilding an SEV guest from its cfg by itself.

    xl's `restart` actions (on_reboot's default) and soft reset make a new domain from the cfg, which stock
    xl creates without SEV.  Each such action becomes its `destroy` form: the guest's reboot ends the
    domain, sevd decommissions its PSP context, and a new launch is `xl-sev create` again (attested again,
    by its owner).  Other actions (`destroy`, `preserve`, `coredump-destroy`) stay as the cfg says.
    """
    if not guest.sev:
        return []
    actions = XL_DEFAULT_ACTIONS | dict(guest.actions)
    out = []
    for key, value in actions.items():
        if "restart" in value or value == "soft-reset":
            safe = "coredump-destroy" if value.startswith("coredump") else "destroy"
            out.append(f'{key}="{safe}"')
    return out


class XlToolstack:
    """A real Xen host: the stock `xl` does what it always does; sevd adds SEV to the paused domain."""

    def __init__(self, xl: str = "xl") -> None:
        self.xl = xl
        # PVH: where libxenguest put the kernel and ramdisk, from its own log of `xl -vvv create`.
        self.pvh_ranges: dict[DomId, list[tuple[Gpa, int]]] = {}

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run([self.xl, *args], capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise SevdError(f"`{self.xl}` not found: xl-sev needs Xen's xl (package xen-utils) on a Xen host") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise SevdError(f"xl {' '.join(args)} failed (exit {proc.returncode}): {' / '.join(detail[-3:])}")
        return proc

    def _xl(self, *args: str) -> str:
        return self._run(*args).stdout

    def create(self, guest: xlcfg.GuestConfig, image: bytes | None) -> DomId:
        log = ""
        if guest.sev and guest.pvh:
            # -vvv makes libxenguest log each segment it allocates: the only account of where it
            # loaded the kernel and ramdisk (their place depends on the kernel's ELF headers).
            proc = self._run("-vvv", "create", "-p", guest.path, *sev_overrides(guest))
            log = proc.stderr + proc.stdout
        else:
            self._xl("create", "-p", guest.path, *sev_overrides(guest))
        out = self._xl("domid", guest.name).strip()
        if not out.isdigit():
            raise SevdError(f"xl domid {guest.name}: unexpected answer {out[:40]!r}")
        domid = DomId(int(out))
        if guest.sev and guest.pvh:
            try:
                self.pvh_ranges[domid] = measured_ranges(parse_domain_builder_log(log))
            except InputError as exc:
                self.destroy(domid)
                raise SevdError(f"xl create {guest.path}: cannot tell where the kernel was loaded: {exc}") from None
        return domid

    def image_location(self, domid: DomId, image_size: int) -> list[tuple[Gpa, int]]:
        """(gpa, size) pieces holding the image, in the order they are measured."""
        if domid in self.pvh_ranges:
            pieces = self.pvh_ranges[domid]
            loaded = sum(size for _, size in pieces)
            if loaded != image_size:
                where = ", ".join(f"{size} at {gpa:#x}" for gpa, size in pieces)
                raise SevdError(
                    f"domain {domid}: the toolstack loaded the kernel and ramdisk as {where} ({loaded} bytes), "
                    f"but the owner's image of the same files is {image_size} bytes: refusing to measure"
                )
            return pieces
        # hvmloader's OVMF_BEGIN: the image ends at 4 GiB, its start rounded down to 1 MiB.
        span = -(-image_size // OVMF_ALIGN) * OVMF_ALIGN
        return [(Gpa(FOUR_GIB - span), image_size)]

    def unpause(self, domid: DomId) -> None:
        self._xl("unpause", str(domid))

    def destroy(self, domid: DomId) -> None:
        self._xl("destroy", str(domid))
