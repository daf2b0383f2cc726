"""The launch flow of `xl-sev create`: create the domain paused, request the SEV launch, follow it, and
finish it — as the local owner with `--attest`, by sevd at once without a session, or not at all (a
remote owner's session: the guest waits in state `measured`).  A failure destroys the domain.

Nothing here talks to the PSP: sevd does, on the request this writes (docs/xenstore-protocol.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sevd.abi.status import FirmwareError
from sevd.abi.units import DomId
from sevd.backends import open_toolstack
from sevd.config import Config
from sevd.errors import InputError, SevdError
from sevd.toolstack.domains import xenstore
from sevd.toolstack.guestnodes import read_summary, request_launch, send_command, send_secret
from sevd.toolstack.interface import Toolstack
from sevd.toolstack.liveness import require_daemon
from sevd.toolstack.localowner import LocalOwner, read_secret
from sevd.toolstack.waiting import Reporter, Waiter
from sevd.xen import protocol as proto
from sevd.xen import xlcfg
from sevd.xen.xsclient import Xenstore

CLEANUP_TIMEOUT = 10.0  # seconds to wait for sevd to drop a failed launch's guest


@dataclasses.dataclass(frozen=True)
class CreateOptions:
    paused: bool = False  # leave the domain paused once launched (xl create -p)
    owner_dir: Path | None = None  # --attest DIR: act as the local owner there
    secret_path: str | None = None  # with owner_dir: the secret to inject
    timeout: float = 60.0  # seconds per wait


def check_create(cfg: str, guest: xlcfg.GuestConfig, options: CreateOptions) -> None:
    """The option combinations `create` refuses (InputError), before anything is created."""
    if options.secret_path is not None and options.owner_dir is None:
        raise InputError("--secret needs --attest DIR (without it the owner sends the secret: xl-sev inject-secret)")
    if options.owner_dir is not None and guest.session is not None:
        raise InputError(f"{cfg}: names sev_session; --attest makes its own session: give one or the other")
    if options.owner_dir is not None and not guest.sev:
        raise InputError(f"{cfg}: --attest needs an SEV guest (sev = 1)")


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def create_guest(
    config: Config, guest: xlcfg.GuestConfig, options: CreateOptions, reporter: Reporter
) -> dict[str, Any]:
    """Create and launch `guest`; what `create --json` prints: domid, name, sev, state and, for an SEV guest,
    measurement, handle and asid.  On failure the domain is destroyed and the error says so."""
    # The secret is checked before anything is written: the owner's files, the domain.
    secret = read_secret(options.secret_path, options.owner_dir) if options.owner_dir is not None else None
    image: bytes | None = None
    if guest.sev:  # the measured bytes; a toolstack that loads a plain guest's image reads it itself
        xlcfg.check_image(guest.image, guest.memory_mb)
        image = guest.read_image()
    with xenstore(config) as xs:
        if guest.sev:
            require_daemon(xs)
        ts = open_toolstack(config, xs)
        waiter = Waiter(xs)
        owner = LocalOwner(options.owner_dir) if options.owner_dir is not None else None
        if owner is not None:
            owner.prepare(config, guest, reporter)
        with _signals_interrupt() as deliver:
            domid = ts.create(guest, image)  # a signal meanwhile waits until the domain is known
            try:
                deliver()
                reporter.line(f"domain {guest.name}: domid {domid}, created paused")
                return _launch(waiter, ts, guest, domid, image, owner, secret, options, reporter)
            except (SevdError, FirmwareError) as exc:
                _destroy_failed(waiter, ts, guest, domid, reporter)
                raise SevdError(f"{exc} (domain {guest.name} destroyed)") from None
            except BaseException:  # interrupted (Ctrl-C, SIGTERM, SIGHUP), or a bug: the domain goes all the same
                _destroy_failed(waiter, ts, guest, domid, reporter)
                raise


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived during a launch (as KeyboardInterrupt for Ctrl-C): the domain is destroyed."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


INTERRUPTING = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[Callable[[], None]]:
    """SIGTERM and SIGHUP raise Interrupted (as SIGINT raises KeyboardInterrupt), so a launch cut short destroys
    its half-made domain instead of leaving it paused with a PSP handle and an ASID.  They are held from the
    start until the caller calls `deliver` (once the domain it must destroy is known), and again once one has
    arrived, so the cleanup runs to its end; the handlers are restored on the way out."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield lambda: None
        return

    def interrupt(signum: int, _frame: object) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTING)
        raise Interrupted(signum)

    def deliver() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTING)

    previous = {sig: signal.signal(sig, interrupt) for sig in INTERRUPTING}
    signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTING)
    try:
        yield deliver
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTING)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTING)


def _destroy_failed(waiter: Waiter, ts: Toolstack, guest: xlcfg.GuestConfig, domid: DomId, reporter: Reporter) -> None:
    """A launch failed after the domain was created: destroy it, as `xl create` does, and let sevd drop it."""
    reporter.close()
    with contextlib.suppress(Exception):
        ts.destroy(domid)
        if guest.sev:
            waiter.gone(domid, CLEANUP_TIMEOUT, "cleanup")


def _launch(
    waiter: Waiter,
    ts: Toolstack,
    guest: xlcfg.GuestConfig,
    domid: DomId,
    image: bytes | None,
    owner: LocalOwner | None,
    secret: tuple[bytes, str] | None,
    options: CreateOptions,
    reporter: Reporter,
) -> dict[str, Any]:
    xs = waiter.xs
    result: dict[str, Any] = {"domid": domid, "name": guest.name, "sev": guest.sev}
    if not guest.sev or image is None:
        if not options.paused:
            ts.unpause(domid)
        result["state"] = "paused" if options.paused else "running"
        reporter.line(f"domain {guest.name}: not an SEV guest (sev = 0): memory NOT encrypted")
        return result
    pieces = ts.image_location(domid, len(image))
    (gpa, size), more = pieces[0], tuple(pieces[1:])
    godh: bytes | None = None
    blob: bytes | None = None
    if owner is not None:
        session = owner.session
        assert session is not None
        godh, blob = session.godh.to_bytes(), session.blob.to_bytes()
    elif guest.session is not None:
        godh, blob = guest.session.godh, guest.session.blob
    attest = godh is not None
    request = proto.LaunchRequest(
        domid=domid,
        generation=_acked(xs, domid) + 1,
        policy=guest.policy,
        es=guest.es,
        attest=attest,
        image_gpa=gpa,
        image_size=size,
        godh=godh,
        session=blob,
        image_more=more,
        name=guest.name if proto.fits_name(guest.name) else None,  # else `list` reads xl's name node
    )
    request_launch(xs, request)
    reporter.line(
        f"launch requested: policy {guest.policy} ({guest.policy.describe()}), image {guest.describe_image()} "
        f"({len(image) // 1024} KiB at GPA {', '.join(f'{g:#x}' for g, _ in pieces)}), "
        f"{'attested' if attest else 'not attested'}"
    )
    target = proto.GuestState.MEASURED if attest else proto.GuestState.RUNNING
    nodes = waiter.state(domid, target, options.timeout, reporter)
    reporter.close()
    result.update(measurement=nodes.get("measurement"), handle=_int(nodes.get("handle")), asid=_int(nodes.get("asid")))
    reporter.line(f"measurement {nodes.get('measurement')} (api {nodes.get('api')} build {nodes.get('build')})")
    if attest and owner is None:
        result["state"] = "measured"
        reporter.line(owner_hint(guest, nodes))
        return result
    if owner is not None:
        assert secret is not None
        measured = owner.verify(nodes, guest, image)
        reporter.line(f"owner: measurement verified against {guest.describe_image()}, policy {guest.policy}")
        header, data = owner.package(secret[0], measured)
        send_secret(xs, domid, proto.SecretPacket(header, data, gpa))
        waiter.command(domid, options.timeout, "the secret to be injected")
        reporter.line(f"owner: secret ({len(secret[0])} bytes, {secret[1]}) injected at GPA {gpa:#x}")
        send_command(xs, domid, proto.Command.FINISH)
        waiter.state(domid, proto.GuestState.RUNNING, options.timeout, reporter)
        reporter.close()
    if not options.paused:
        ts.unpause(domid)
    result["state"] = "running"
    return result


def _acked(xs: Xenstore, domid: DomId) -> int:
    """The request generation sevd took last for the domain (0: none)."""
    summary = read_summary(xs, domid)
    return summary.ack if summary is not None and summary.ack is not None else 0


def owner_hint(guest: xlcfg.GuestConfig, nodes: dict[str, str]) -> str:
    """What the remote owner runs on their own machine, and then the host, for a guest left in state measured.

    The transport keys stay with the owner: `sev-owner session` wrote them on the owner's machine next to
    the GODH and session blob the host received, and they never come to the host."""
    assert guest.session is not None
    if guest.session.form == "sev-tool":
        keys, package_keys, where = "--tk tmp_tk.bin", "--tk tmp_tk.bin", "tmp_tk.bin"
    else:
        name = guest.session.form[len("sevctl:") :]
        keys = f"--tik {name}_tik.bin"
        package_keys = f"--tek {name}_tek.bin --tik {name}_tik.bin"
        where = f"{name}_tek.bin and {name}_tik.bin"
    image = f"--image {guest.image.name}"
    if guest.pvh:
        image = f"--kernel {guest.image.name}" + (f" --ramdisk {guest.ramdisk.name}" if guest.ramdisk else "")
    measurement = nodes.get("measurement")
    return (
        f"domain {guest.name} waits in state measured for its owner. The owner, on their own machine, with "
        f"their copy of the boot files and the {where} that `sev-owner session` wrote there (the keys never "
        f"come to this host), checks the measurement and packages a secret:\n"
        f"  sev-owner verify-measurement {image} --policy {guest.policy} --api {nodes.get('api')} "
        f"--build {nodes.get('build')} {keys} --measurement {measurement}\n"
        f"  sev-owner package-secret --secret FILE {package_keys} --measurement {measurement} --out OUT\n"
        f"and sends OUT/packaged_secret_header.bin and OUT/packaged_secret.bin here; then on this host:\n"
        f"  xl-sev inject-secret {guest.name} --header packaged_secret_header.bin --secret packaged_secret.bin\n"
        f"  xl-sev finish {guest.name}"
    )
