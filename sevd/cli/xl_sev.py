"""`xl-sev`: the xl-style host CLI for SEV guests.

`create` parses an xl cfg with Xen's own parser (sevd.xen.xlcfg), creates the domain paused (the
stock `xl create -p` on Xen, the simulated toolstack on a simulated host), writes the launch
request for sevd into xenstore and follows the launch there; the other guest verbs read and write
the same xenstore nodes (sevd.xen.protocol).  Nothing here talks to the PSP for a guest launch:
sevd does.  `platform ...` and `guest-status` use the PSP directly, read-mostly, like sevctl.

Exit status: 0 success, 1 a failure reported by the firmware, sevd or Xen (the firmware's status
name leads the message), 2 a usage or input error.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from sevd import __version__
from sevd.abi.launch import LaunchMeasurement, check_secret_length
from sevd.abi.policy import Policy
from sevd.abi.status import FirmwareError
from sevd.backends import open_psp, open_toolstack
from sevd.cli.common import emit, reports_errors
from sevd.config import Config
from sevd.errors import DeviceError, InputError, SevdError
from sevd.platform import Platform
from sevd.xen import protocol as proto
from sevd.xen import xlcfg
from sevd.xen.toolstack import Toolstack

DEFAULT_TIMEOUT = 60.0
STOCK_XL_WARNING = (
    "Stock `xl create` ignores the sev* keys and starts the guest WITHOUT SEV: its memory is then "
    "not encrypted. Create SEV guests with `xl-sev create` only."
)


class LaunchError(SevdError):
    """sevd reported a failure for a guest (its `error` node: "NAME: message")."""


def _complete_domain(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion for DOM: the names and domids under /sevd/guest (nothing when unreachable)."""
    try:
        root = ctx.find_root()
        config = Config.load(root.params.get("config_path"))
        xs = _connect(config)
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        return []
    try:
        out = []
        for d in xs.list(proto.GUESTS):
            name = xs.read(f"/local/domain/{d}/name")
            out += [d] + ([name] if name else [])
        return [c for c in out if c.startswith(incomplete)]
    finally:
        xs.close()


DOM = click.argument("dom", metavar="DOM", shell_complete=_complete_domain)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xl-sev")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="sevd.toml (default $SEVD_CONFIG, then /etc/sevd/sevd.toml); a simulated host's works the same.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", count=True, help="More output.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, as_json: bool, verbose: int) -> None:
    """Create, attest and manage AMD SEV guests on a Xen host, the way `xl` manages domains.

    DOM is a domain name or domid. Shell completion: eval "$(_XL_SEV_COMPLETE=bash_source xl-sev)".
    """
    ctx.obj = {"json": as_json, "verbose": verbose, "config_path": config_path}


def _config(ctx: click.Context) -> Config:
    return Config.load(ctx.find_root().obj["config_path"])


def _platform(ctx: click.Context, *, write: bool = True) -> Platform:
    return Platform(open_psp(_config(ctx), write=write))


def _json(ctx: click.Context) -> bool:
    return bool(ctx.find_root().obj.get("json"))


def _verbose(ctx: click.Context) -> int:
    return int(ctx.find_root().obj.get("verbose", 0))


@cli.group()
def platform() -> None:
    """SEV platform management (like sevctl): status, certificate export, ownership."""


@platform.command("status")
@click.pass_context
@reports_errors
def platform_status(ctx: click.Context) -> None:
    """PLATFORM_STATUS: API version, build, state, owner, SEV-ES, guest count."""
    st = _platform(ctx, write=False).status()
    text = (
        f"api {st.api_major}.{st.api_minor} build {st.build}\nstate {st.state.name}\n"
        f"owner {'external' if st.owner else 'self'}\nes {'enabled' if st.es else 'disabled'}\nguests {st.guests}"
    )
    emit(ctx, st.as_dict(), text)


@platform.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--kds-url", help="Key server base URL (default: [keyserver] url, AMD's https://kdsintf.amd.com).")
@click.pass_context
@reports_errors
def platform_export(ctx: click.Context, directory: str, kds_url: str | None) -> None:
    """The full chain into DIRECTORY as sev-tool names the files: pdh, pek, oca (PDH_CERT_EXPORT), the CEK AMD
    signed (from the key server, by GET_ID's chip id), ark and ask .cert."""
    config = _config(ctx)
    paths = _platform(ctx, write=False).export_full_chain(directory, config.keyserver(kds_url))
    emit(ctx, {"files": [str(p) for p in paths]}, "\n".join(str(p) for p in paths))


@platform.command("pek-gen")
@click.pass_context
@reports_errors
def platform_pek_gen(ctx: click.Context) -> None:
    """PEK_GEN: new OCA, PEK and PDH; the platform becomes self-owned."""
    _platform(ctx).pek_gen()
    emit(ctx, {"ok": True}, "PEK regenerated")


@platform.command("pdh-gen")
@click.pass_context
@reports_errors
def platform_pdh_gen(ctx: click.Context) -> None:
    """PDH_GEN: a new PDH key."""
    _platform(ctx).pdh_gen()
    emit(ctx, {"ok": True}, "PDH regenerated")


@platform.command("pek-csr")
@click.argument("output", type=click.Path(dir_okay=False))
@click.pass_context
@reports_errors
def platform_pek_csr(ctx: click.Context, output: str) -> None:
    """PEK_CSR: write the unsigned PEK certificate for the owner's OCA to sign."""
    Path(output).write_bytes(_platform(ctx).pek_csr())
    emit(ctx, {"file": output}, output)


@platform.command("pek-cert-import")
@click.argument("pek", type=click.Path(exists=True, dir_okay=False))
@click.argument("oca", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
@reports_errors
def platform_pek_cert_import(ctx: click.Context, pek: str, oca: str) -> None:
    """PEK_CERT_IMPORT: take ownership with a PEK signed by your OCA."""
    _platform(ctx).pek_cert_import(Path(pek).read_bytes(), Path(oca).read_bytes())
    emit(ctx, {"ok": True}, "platform is now externally owned")


@platform.command("factory-reset")
@click.pass_context
@reports_errors
def platform_factory_reset(ctx: click.Context) -> None:
    """FACTORY_RESET: delete the owner's keys (refused while guests run)."""
    _platform(ctx).factory_reset()
    emit(ctx, {"ok": True}, "platform reset")


@platform.command("get-id")
@click.pass_context
@reports_errors
def platform_get_id(ctx: click.Context) -> None:
    """GET_ID: the chip id AMD's key server uses to serve this chip's CEK."""
    chip_id = _platform(ctx, write=False).get_id().hex()
    emit(ctx, {"id": chip_id}, chip_id)


# -- xenstore, the daemon, domains ----------------------------------------------------------------------------


def _connect(config: Config):
    from sevd.xen.xsclient import Xenstore

    return Xenstore(config.xenstore_socket)


@contextlib.contextmanager
def _xenstore(ctx: click.Context) -> Iterator[Any]:
    xs = _connect(_config(ctx))
    try:
        yield xs
    finally:
        xs.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def daemon_problem(xs: Any) -> str | None:
    """Why sevd cannot take requests now, or None when it is ready."""
    if xs.read(proto.DAEMON_READY) != "1":
        return f"sevd is not running: {proto.DAEMON_READY} missing (start it: systemctl start sevd, or sevd run)"
    pid = xs.read(proto.DAEMON_PID)
    if pid is None or not pid.isdigit() or not _pid_alive(int(pid)):
        return f"sevd is not running: {proto.DAEMON_READY} is set but its pid {pid} is gone (a stale node)"
    return None


def _require_daemon(xs: Any) -> None:
    problem = daemon_problem(xs)
    if problem:
        raise SevdError(problem)


def resolve_domain(xs: Any, dom: str) -> tuple[int, str]:
    """(domid, name) for a name or a domid; names come from /local/domain/<domid>/name, as xl keeps them."""
    if dom.isdigit():
        domid = int(dom)
        name = xs.read(f"/local/domain/{domid}/name")
        if name is None and xs.read(proto.guest_path(domid)) is None:
            raise InputError(f"domain {dom}: no such domain")
        return domid, name or ""
    for d in xs.list("/local/domain"):
        if d.isdigit() and xs.read(f"/local/domain/{d}/name") == dom:
            return int(d), dom
    raise InputError(f"domain {dom!r}: no domain of that name (xl-sev list shows the SEV guests)")


def _sev_guest(xs: Any, dom: str) -> tuple[int, str, dict[str, str]]:
    from sevd.xen.toolstack import read_guest

    domid, name = resolve_domain(xs, dom)
    nodes = read_guest(xs, domid)
    if not nodes:
        raise InputError(f"domain {dom!r} (domid {domid}) is not an SEV guest: sevd has no request for it")
    return domid, name, nodes


class Progress:
    """Launch steps as they happen: one line each when stdout is not a terminal, one updating line when it is.

    With --json, progress goes to stderr and stdout carries only the JSON result.
    """

    def __init__(self, ctx: click.Context):
        self.to_stderr = _json(ctx)
        self.stream = sys.stderr if self.to_stderr else sys.stdout
        self.tty = self.stream.isatty()
        self._open = False
        self.shown: tuple[str | None, str | None] = (None, None)

    def line(self, text: str) -> None:
        self.close()
        click.echo(text, file=self.stream)

    def step(self, text: str) -> None:
        if self.tty:
            self.stream.write(f"\r\033[K  {text}")
            self.stream.flush()
            self._open = True
        else:
            click.echo(f"  {text}", file=self.stream)

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def wait_for(
    xs: Any,
    domid: int,
    done: Callable[[dict[str, str]], bool],
    timeout: float,
    what: str,
    progress: Progress | None = None,
    fail_on_error_state: bool = True,
) -> dict[str, str]:
    """Follow /sevd/guest/<domid> (watch + a short poll) until `done(nodes)`; show state/step changes.

    `nodes` is toolstack.read_guest's view: the guest's node names overlaid with its summary's keys.
    """
    from sevd.xen.toolstack import read_guest

    base = proto.guest_path(domid)
    watched = xs.__dict__.setdefault("_xl_sev_watched", set())
    if base not in watched:
        xs.watch([base])
        watched.add(base)
    deadline = time.monotonic() + timeout
    while True:
        nodes = read_guest(xs, domid)
        shown = (nodes.get("state"), nodes.get("step"))
        if progress is not None and shown != progress.shown and shown[0]:
            step = f": {shown[1]}" if shown[1] and shown[0] == "launching" else ""
            if (shown[0], step) != (progress.shown[0], progress.shown[1] and step):
                progress.step(f"{shown[0]}{step}")
            progress.shown = shown
        if done(nodes):
            return nodes  # one summary: the state waited for comes with everything published with it
        if fail_on_error_state and nodes.get("state") == proto.GuestState.ERROR.value:
            if progress is not None:
                progress.close()
            raise LaunchError(f"domain {domid}: {nodes.get('error') or 'failed (no reason given)'}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if progress is not None:
                progress.close()
            state = nodes.get("state", "absent")
            problem = daemon_problem(xs)
            hint = f"; {problem}" if problem else ""
            raise LaunchError(f"domain {domid}: timed out after {timeout:g} s waiting for {what} (state {state}){hint}")
        xs.next_event(min(remaining, 0.25))


def _wait_state(xs: Any, domid: int, state: proto.GuestState, timeout: float, progress: Progress | None = None):
    return wait_for(xs, domid, lambda n: n.get("state") == state.value, timeout, f"state {state.value}", progress)


def _run_command(xs: Any, domid: int, timeout: float, what: str) -> dict[str, str]:
    """Wait until sevd has taken the command node (it removes it when done); fail if the summary has an `error`.

    sevd removes the command and publishes its outcome in one transaction, so the summary read after the
    command is gone says how it went.
    """
    nodes = wait_for(xs, domid, lambda n: "command" not in n, timeout, what, fail_on_error_state=False)
    if "error" in nodes:
        raise LaunchError(f"domain {domid}: {nodes['error']}")
    return nodes


# -- toolstacks ---------------------------------------------------------------------------------------------------


def toolstack(config: Config, xs: Any) -> Toolstack:
    return open_toolstack(config, xs)


# -- the local owner (create --attest) ------------------------------------------------------------------------------


@dataclasses.dataclass
class LocalOwner:
    """`--attest DIR`: the guest owner's steps, done here with the owner library on files in DIR."""

    directory: Path
    session: Any = None

    def prepare(self, config: Config, guest: xlcfg.GuestConfig, progress: Progress) -> None:
        from sevd.owner.chain import verify_chain_dir
        from sevd.owner.session import make_session, write_session

        self.directory.mkdir(parents=True, exist_ok=True)
        platform = Platform(open_psp(config, write=False))
        platform.export_full_chain(self.directory, config.keyserver())
        report = verify_chain_dir(self.directory, config.owner_roots or None)
        progress.line(
            f"owner: platform chain verified: PDH <- PEK <- (OCA, CEK <- ASK <- ARK), roots: {report.describe_roots()}"
        )
        if report.warning:
            progress.line(f"owner: {report.warning}")
        self.session = make_session(report.chain.pdh, int(guest.policy))
        write_session(self.directory, self.session, guest.name)
        progress.line(
            f"owner: launch session for policy {guest.policy} written to {self.directory} (sev-tool + sevctl)"
        )

    def verify(self, nodes: dict[str, str], guest: xlcfg.GuestConfig, image: bytes) -> LaunchMeasurement:
        from sevd.abi.vmsa import reset_vmsas
        from sevd.owner.measurement import verify_measurement

        measured = LaunchMeasurement.from_base64(nodes["measurement"], "measurement node")
        api_major, api_minor = (int(x) for x in nodes["api"].split("."))
        # SEV-ES: each vCPU's VMSA is measured after the image; the owner knows them (reset state).
        vmsas = reset_vmsas(guest.vcpus) if guest.es else []
        verify_measurement(
            measured,
            image,
            int(guest.policy),
            api_major,
            api_minor,
            int(nodes["build"]),
            self.session.keys.tik,
            vmsas,
        )
        return measured

    def package(self, secret: bytes, measured: LaunchMeasurement) -> tuple[bytes, bytes]:
        from sevd.owner.secret import package_secret, write_packaged_secret

        packaged = package_secret(self.session.keys, secret, measured)
        write_packaged_secret(self.directory, packaged)
        return packaged.header.to_bytes(), packaged.ciphertext


def _read_secret(path: str | None, owner_dir: Path) -> tuple[bytes, str]:
    from sevd.owner import files

    if path is not None:
        secret = files.read_bytes(path, "secret")
        check_secret_length(len(secret), f"--secret {path}")
        return secret, path
    secret = os.urandom(32)
    target = owner_dir / "secret.bin"
    files.write_private(target, secret)
    return secret, str(target)


# -- create ---------------------------------------------------------------------------------------------------------


@cli.command(epilog=STOCK_XL_WARNING)
@click.argument("cfg", metavar="CFG", type=click.Path(dir_okay=False))
@click.option("-p", "paused", is_flag=True, help="Leave the domain paused after the launch (like xl create -p).")
@click.option(
    "--attest",
    "owner_dir",
    type=click.Path(file_okay=False),
    help="Act as a local guest owner in DIR: verify the platform, make the session, check the measurement, "
    "send the secret.",
)
@click.option(
    "--secret",
    "secret_path",
    type=click.Path(dir_okay=False),
    help="With --attest: the secret to inject (a multiple of 16 bytes); default 32 random bytes in DIR/secret.bin.",
)
@click.option(
    "--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(min=0.1), help="Seconds per wait."
)
@click.pass_context
@reports_errors
def create(
    ctx: click.Context, cfg: str, paused: bool, owner_dir: str | None, secret_path: str | None, timeout: float
) -> None:
    """Create a guest from an xl cfg and launch it as an SEV guest through sevd.

    The cfg is read by Xen's own parser (libxlutil). SEV keys: sev = 1, sev_policy = 0x...,
    sev_es = 1, sev_session = "DIR" (the owner's godh.cert + launch_blob.bin, or sevctl's
    NAME_godh.b64 + NAME_session.b64). The domain is created paused; sevd measures it; with
    --attest this command is the owner too and finishes the launch; with sev_session it stops at
    `measured` for the remote owner; with neither, sevd finishes at once. Unless -p, the guest is
    unpaused once running.
    """
    guest = xlcfg.load(cfg)
    if secret_path is not None and owner_dir is None:
        raise InputError("--secret needs --attest DIR (without it the owner sends the secret: xl-sev inject-secret)")
    if owner_dir is not None and guest.session is not None:
        raise InputError(f"{cfg}: names sev_session; --attest makes its own session: give one or the other")
    if owner_dir is not None and not guest.sev:
        raise InputError(f"{cfg}: --attest needs an SEV guest (sev = 1)")
    config = _config(ctx)
    progress = Progress(ctx)
    progress.line(f"Parsing config from {cfg}")
    image = b""
    if guest.sev or config.hypervisor_backend == "simulated":
        xlcfg.check_image(guest.image, guest.memory_mb)
        image = guest.read_image()
    with _xenstore(ctx) as xs:
        if guest.sev:
            _require_daemon(xs)
        ts = toolstack(config, xs)
        owner = LocalOwner(Path(owner_dir)) if owner_dir is not None else None
        secret: tuple[bytes, str] | None = None
        if owner is not None:
            owner.prepare(config, guest, progress)
            secret = _read_secret(secret_path, owner.directory)
        domid = ts.create(guest, image)
        progress.line(f"domain {guest.name}: domid {domid}, created paused")
        try:
            result = _launch(ctx, xs, ts, guest, domid, image, owner, secret, paused, timeout, progress)
        except BaseException as exc:
            progress.close()
            with contextlib.suppress(Exception):
                ts.destroy(domid)
                if guest.sev:
                    wait_for(xs, domid, lambda n: not n, 10, "cleanup", fail_on_error_state=False)
            if isinstance(exc, SevdError | FirmwareError):
                raise SevdError(f"{exc} (domain {guest.name} destroyed)") from None
            raise
    progress.close()
    if result["state"] == "measured":
        text = f"domain {guest.name}: domid {domid}, measured, paused until its owner finishes the launch"
    elif result["state"] == "running" and not paused:
        text = f"domain {guest.name}: domid {domid}, running, unpaused"
    else:
        text = f"domain {guest.name}: domid {domid}, {result['state']}, paused"
    emit(ctx, result, text)


def _launch(
    ctx: click.Context,
    xs: Any,
    ts: Any,
    guest: xlcfg.GuestConfig,
    domid: int,
    image: bytes,
    owner: LocalOwner | None,
    secret: tuple[bytes, str] | None,
    paused: bool,
    timeout: float,
    progress: Progress,
) -> dict[str, Any]:
    result: dict[str, Any] = {"domid": domid, "name": guest.name, "sev": guest.sev}
    if not guest.sev:
        if not paused:
            ts.unpause(domid)
        result["state"] = "paused" if paused else "running"
        progress.line(f"domain {guest.name}: not an SEV guest (sev = 0): memory NOT encrypted")
        return result
    pieces = ts.image_location(domid, len(image))
    (gpa, size), more = pieces[0], tuple(pieces[1:])
    if owner is not None:
        godh, blob, attest = owner.session.godh.to_bytes(), owner.session.blob.to_bytes(), True
    elif guest.session is not None:
        godh, blob, attest = guest.session.godh, guest.session.blob, True
    else:
        godh = blob = None
        attest = False
    from sevd.xen.toolstack import request_launch, send_command, send_secret

    generation = _acked(xs, domid) + 1
    request = proto.LaunchRequest(
        domid=domid,
        generation=generation,
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
    progress.line(
        f"launch requested: policy {guest.policy} ({guest.policy.describe()}), image {guest.describe_image()} "
        f"({len(image) // 1024} KiB at GPA {', '.join(f'{g:#x}' for g, _ in pieces)}), "
        f"{'attested' if attest else 'not attested'}"
    )
    target = proto.GuestState.MEASURED if attest else proto.GuestState.RUNNING
    nodes = _wait_state(xs, domid, target, timeout, progress)
    progress.close()
    result.update(measurement=nodes.get("measurement"), handle=_int(nodes.get("handle")), asid=_int(nodes.get("asid")))
    progress.line(f"measurement {nodes.get('measurement')} (api {nodes.get('api')} build {nodes.get('build')})")
    if attest and owner is None:
        assert guest.session is not None
        result["state"] = "measured"
        progress.line(_owner_hint(guest, domid, nodes))
        return result
    if owner is not None:
        assert secret is not None
        measured = owner.verify(nodes, guest, image)
        progress.line(f"owner: measurement verified against {guest.describe_image()}, policy {guest.policy}")
        header, data = owner.package(secret[0], measured)
        send_secret(xs, domid, proto.SecretPacket(header, data, gpa))
        _run_command(xs, domid, timeout, "the secret to be injected")
        progress.line(f"owner: secret ({len(secret[0])} bytes, {secret[1]}) injected at GPA {gpa:#x}")
        send_command(xs, domid, proto.Command.FINISH)
        _wait_state(xs, domid, proto.GuestState.RUNNING, timeout, progress)
        progress.close()
    if not paused:
        ts.unpause(domid)
    result["state"] = "running"
    return result


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _acked(xs: Any, domid: int) -> int:
    """The request generation sevd took last for the domain (0: none)."""
    from sevd.xen.toolstack import read_summary

    summary = read_summary(xs, domid)
    return summary.ack if summary is not None and summary.ack is not None else 0


def _owner_hint(guest: xlcfg.GuestConfig, domid: int, nodes: dict[str, str]) -> str:
    assert guest.session is not None
    d = guest.session.directory
    keys = f"--tk {d}/tmp_tk.bin" if guest.session.form == "sev-tool" else f"--tik {d}/{guest.session.form[7:]}_tik.bin"
    image = f"--image {guest.image}"
    if guest.pvh:
        image = f"--kernel {guest.image}" + (f" --ramdisk {guest.ramdisk}" if guest.ramdisk else "")
    return (
        f"domain {guest.name} waits in state measured for its owner, who checks the measurement and sends a secret:\n"
        f"  sev-owner verify-measurement {image} --policy {guest.policy} --api {nodes.get('api')} "
        f"--build {nodes.get('build')} {keys} --measurement {nodes.get('measurement')}\n"
        f"  sev-owner package-secret --secret FILE {keys.replace('--tik', '--tek ... --tik')} "
        f"--measurement {nodes.get('measurement')} --out OUT\n"
        f"then on this host:\n"
        f"  xl-sev inject-secret {guest.name} --header OUT/packaged_secret_header.bin "
        f"--secret OUT/packaged_secret.bin\n"
        f"  xl-sev finish {guest.name}"
    )


# -- the other guest verbs --------------------------------------------------------------------------------------------


def guest_rows(xs: Any) -> list[dict[str, Any]]:
    """What `list` shows: one summary per guest, all read in one pipelined batch.  A guest sevd has not
    taken yet has no summary: its request (read in a second batch) gives the name and policy; xl's
    name node is read only for a guest named by neither."""
    from sevd.xen.toolstack import parse_summary

    domids = sorted(int(x) for x in xs.list(proto.GUESTS) if x.isdigit())
    texts = xs.read_many([proto.guest_path(d, "summary") for d in domids])
    summaries = {d: parse_summary(d, text) or proto.GuestSummary() for d, text in zip(domids, texts, strict=True)}
    names = {d: s.name for d, s in summaries.items() if s.name is not None}
    policies = {d: str(s.policy) for d, s in summaries.items() if s.policy is not None}
    untaken = [d for d in domids if d not in names or d not in policies]
    for domid, request in zip(untaken, xs.read_many([proto.guest_path(d, "request") for d in untaken]), strict=True):
        with contextlib.suppress(InputError):  # shown as the toolstack wrote it; sevd judges it
            fields = proto.parse_pairs("request", request) if request is not None else {}
            names.setdefault(domid, fields.get("name"))
            policies.setdefault(domid, fields.get("policy"))
    unnamed = [d for d in domids if names.get(d) is None]
    names |= dict(zip(unnamed, xs.read_many([f"/local/domain/{d}/name" for d in unnamed]), strict=True))
    return [
        {
            "domid": domid,
            "name": names.get(domid) or "",
            "handle": summary.handle,
            "asid": summary.asid,
            "state": summary.state.value if summary.state else "requested",
            "policy": policies.get(domid),
            "_measured": summary.measurement is not None,
        }
        for domid, summary in summaries.items()
    ]


@cli.command("list")
@click.pass_context
@reports_errors
def list_cmd(ctx: click.Context) -> None:
    """SEV guests sevd knows: domid, name, PSP handle, ASID, state, policy, measurement present."""
    with _xenstore(ctx) as xs:
        rows = guest_rows(xs)
    lines = [f"{'Name':<20} {'ID':>5} {'Handle':>6} {'ASID':>5} {'State':<10} {'Measured':<8} Policy"]
    for r in rows:
        try:
            pol = Policy.parse(r["policy"]) if r["policy"] else None
        except InputError:
            pol = None
        policy_text = f"{pol} {pol.describe()}" if pol else (r["policy"] or "-")
        lines.append(
            f"{r['name']:<20} {r['domid']:>5} {_dash(r['handle']):>6} {_dash(r['asid']):>5} {r['state']:<10} "
            f"{'yes' if r['_measured'] else 'no':<8} {policy_text}"
        )
    emit(ctx, [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "\n".join(lines))


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


@cli.command("launch-measure")
@DOM
@click.pass_context
@reports_errors
def launch_measure(ctx: click.Context, dom: str) -> None:
    """The launch measurement sevd published (base64 of measure||mnonce) with API version, build and policy."""
    with _xenstore(ctx) as xs:
        domid, _, nodes = _sev_guest(xs, dom)
    if "measurement" not in nodes:
        state = nodes.get("state", "requested")
        detail = f": {nodes['error']}" if state == "error" and "error" in nodes else ""
        raise LaunchError(f"domain {dom}: no measurement (state {state}{detail})")
    measured = LaunchMeasurement.from_base64(nodes["measurement"], "measurement node")
    api_major, api_minor = (int(x) for x in nodes["api"].split("."))
    data = {
        "measurement": measured.to_base64(),
        "api_major": api_major,
        "api_minor": api_minor,
        "build": int(nodes["build"]),
        "policy": nodes["policy"],
    }
    text = (
        f"measurement {measured.to_base64()}\napi {api_major}.{api_minor}\nbuild {data['build']}\n"
        f"policy {nodes['policy']} ({Policy.parse(nodes['policy']).describe()})"
    )
    emit(ctx, data, text)


@cli.command("inject-secret")
@DOM
@click.option(
    "--header", "header_path", required=True, type=click.Path(dir_okay=False), help="packaged_secret_header.bin"
)
@click.option("--secret", "secret_path", required=True, type=click.Path(dir_okay=False), help="packaged_secret.bin")
@click.option("--gpa", default=None, help="Guest physical address, 16-aligned (default: the boot image's first page).")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(min=0.1))
@click.pass_context
@reports_errors
def inject_secret(
    ctx: click.Context, dom: str, header_path: str, secret_path: str, gpa: str | None, timeout: float
) -> None:
    """LAUNCH_SECRET: send the owner's packaged secret (sev-tool's files) to a measured guest."""
    from sevd.owner import files
    from sevd.xen.toolstack import read_request, send_secret

    header = files.read_bytes(header_path, "secret header")
    data = files.read_bytes(secret_path, "packaged secret")
    with _xenstore(ctx) as xs:
        domid, _, nodes = _sev_guest(xs, dom)
        _require_daemon(xs)
        if gpa is None:
            request = read_request(xs, domid)
            gpa_value = request.image_gpa if request is not None else 0
        else:
            try:
                gpa_value = int(gpa, 0)
            except ValueError:
                raise InputError(f"--gpa {gpa!r}: not a number") from None
        try:
            packet = proto.SecretPacket.parse(
                {
                    "header": base64.b64encode(header).decode(),
                    "data": base64.b64encode(data).decode(),
                    "gpa": f"0x{gpa_value:x}",
                }
            )
        except InputError as exc:
            raise InputError(
                str(exc).replace("secret/header", header_path).replace("secret/data", secret_path)
            ) from None
        if nodes.get("state") != proto.GuestState.MEASURED.value:
            raise LaunchError(f"domain {dom}: INVALID_REQUEST: needs state measured, it is {nodes.get('state')}")
        send_secret(xs, domid, packet)
        _run_command(xs, domid, timeout, "the secret to be injected")
    emit(
        ctx,
        {"domid": domid, "gpa": packet.gpa, "length": len(data)},
        f"secret injected: {len(data)} bytes at GPA {packet.gpa:#x}",
    )


@cli.command()
@DOM
@click.option("-p", "paused", is_flag=True, help="Leave the domain paused.")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(min=0.1))
@click.pass_context
@reports_errors
def finish(ctx: click.Context, dom: str, paused: bool, timeout: float) -> None:
    """LAUNCH_FINISH for a measured guest; then unpause it (unless -p)."""
    from sevd.xen.toolstack import send_command

    config = _config(ctx)
    with _xenstore(ctx) as xs:
        domid, name, nodes = _sev_guest(xs, dom)
        _require_daemon(xs)
        if nodes.get("state") != proto.GuestState.MEASURED.value:
            raise LaunchError(f"domain {dom}: INVALID_REQUEST: finish needs state measured, it is {nodes.get('state')}")
        send_command(xs, domid, proto.Command.FINISH)
        _wait_state(xs, domid, proto.GuestState.RUNNING, timeout)
        if not paused:
            toolstack(config, xs).unpause(domid)
    emit(ctx, {"domid": domid, "state": "running", "paused": paused}, f"domain {name or domid}: running")


@cli.command()
@DOM
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(min=0.1))
@click.pass_context
@reports_errors
def destroy(ctx: click.Context, dom: str, timeout: float) -> None:
    """Destroy the domain (xl destroy); sevd decommissions its PSP context on @releaseDomain."""
    config = _config(ctx)
    with _xenstore(ctx) as xs:
        domid, name = resolve_domain(xs, dom)
        sev = xs.read(proto.guest_path(domid)) is not None
        toolstack(config, xs).destroy(domid)
        if sev:
            if daemon_problem(xs) is None:
                wait_for(xs, domid, lambda n: not n, timeout, "sevd to decommission it", fail_on_error_state=False)
            else:
                click.echo(f"warning: {daemon_problem(xs)}; sevd decommissions the guest when it starts", err=True)
    emit(ctx, {"domid": domid, "destroyed": True}, f"domain {name or domid} (domid {domid}) destroyed")


@cli.command("guest-status")
@DOM
@click.pass_context
@reports_errors
def guest_status(ctx: click.Context, dom: str) -> None:
    """GUEST_STATUS from the PSP for the guest's handle (read from xenstore)."""
    from sevd.guest import GuestCommands

    with _xenstore(ctx) as xs:
        domid, _, nodes = _sev_guest(xs, dom)
    handle = _int(nodes.get("handle"))
    if not handle:
        raise LaunchError(f"domain {dom}: no PSP handle yet (state {nodes.get('state', 'requested')})")
    st = GuestCommands(open_psp(_config(ctx), write=True)).guest_status(handle)
    policy = Policy(st.policy)
    data = {"domid": domid, "handle": handle, "state": st.state.name, "asid": st.asid, "policy": str(policy)}
    emit(ctx, data, f"handle {handle}\nstate {st.state.name}\nasid {st.asid}\npolicy {policy} ({policy.describe()})")


# -- ok ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = True  # a failed optional check is a WARN: plain SEV works without it


def _cpuid_8000001f() -> tuple[int, int, int, int] | None:
    """CPUID leaf 0x8000001F through the cpuid driver (/dev/cpu/0/cpuid, root), or None."""
    try:
        fd = os.open("/dev/cpu/0/cpuid", os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.pread(fd, 16, 0x8000001F)
    except OSError:
        return None
    finally:
        os.close(fd)
    return tuple(int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4))  # type: ignore[return-value]


def _cpu_checks(config: Config) -> list[Check]:
    if config.hypervisor_backend == "simulated":
        from sevd.durable import read_json

        try:
            state = read_json(Path(config.hypervisor_path) / "xen" / "domains.json")
        except OSError as exc:
            return [Check("CPU SEV", False, f"simulated host unreadable: {exc}", "check [hypervisor] path")]
        lo, hi = state["min_sev_asid"], state["max_asid"]
        return [
            Check("CPU SEV", True, f"simulated: SEV ASIDs {lo}..{hi}"),
            Check(
                "CPU SEV-ES",
                lo > 1,
                f"simulated: SEV-ES ASIDs 1..{lo - 1}",
                "min_sev_asid is 1: no ES ASIDs",
                required=False,
            ),
        ]
    if config.hypervisor_backend == "xen" and Path("/proc/xen/capabilities").exists():
        return _xen_sev_checks()
    leaf = _cpuid_8000001f()
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if leaf is not None:
        eax, _ebx, ecx, edx = leaf
        sev, es = bool(eax & 2), bool(eax & 8)
        ranges = f"ASIDs 1..{ecx}, plain SEV from {edx}" if sev else ""
    else:
        sev, es = "sev" in flags, "sev_es" in flags
        ranges = "ASID ranges unknown (load the cpuid module for CPUID 0x8000001F)"
    return [
        Check(
            "CPU SEV",
            sev,
            f"SEV {'supported' if sev else 'not reported'}; {ranges}".rstrip("; "),
            "an AMD EPYC with SEV enabled in the BIOS (SMEE, SEV ASIDs > 0)",
        ),
        Check(
            "CPU SEV-ES",
            es,
            f"SEV-ES {'supported' if es else 'not reported'}",
            "SEV-ES needs EPYC 7xx2 or later and SEV-ES ASIDs in the BIOS",
            required=False,
        ),
    ]


def _xen_sev_checks(info_source: Callable[[], Any] | None = None) -> list[Check]:
    """On a Xen host SEV is Xen's: Dom0's own CPUID does not show leaf 0x8000001F, so ask Xen (domctl INFO)."""
    from sevd.xen.hypervisor import HypervisorError

    try:
        if info_source is None:
            from sevd.xen.domctl import DomctlXen

            xen = DomctlXen()
            try:
                info = xen.info()
            finally:
                xen.close()
        else:
            info = info_source()
    except HypervisorError as exc:
        return [Check("CPU SEV", False, f"Xen's SEV domctl: {exc}", "boot the patched Xen (xen-patches/)")]
    if not info.available:
        return [
            Check("CPU SEV", False, "Xen reports SEV not available", "see `xl dmesg | grep SEV` for Xen's reason"),
            Check("CPU SEV-ES", False, "SEV-ES not available", "", required=False),
        ]
    mode = " — TEST MODE (sev=test), NOT SECURE: nothing is encrypted" if info.test_mode else ""
    es_range = f"SEV-ES ASIDs 1..{info.min_sev_asid - 1}" if info.min_sev_asid > 1 else "no SEV-ES ASIDs"
    return [
        Check(
            "CPU SEV",
            True,
            f"Xen: SEV ASIDs {info.min_sev_asid}..{info.max_asid}, C-bit {info.cbit}, "
            f"{len(info.dirty)} awaiting DF_FLUSH{mode}",
        ),
        # The CPU may have SEV-ES, but xen-patches/ does not run SEV-ES guests yet (VMSA, #VC).
        Check(
            "CPU SEV-ES",
            False,
            f"Xen: SEV-ES {'reported' if info.es else 'not reported'} ({es_range}), but this Xen launches "
            "plain SEV guests only (no SEV-ES VMSA or #VC handling)",
            "SEV-ES guests are refused at ENABLE; use sev_es = 0",
            required=False,
        ),
    ]


def _psp_checks(config: Config) -> tuple[list[Check], Any]:
    from sevd.guest import GuestCommands

    checks = []
    if config.psp_backend == "simulated":
        checks.append(Check("/dev/sev", True, f"simulated PSP at {config.psp_path}"))
    else:
        path = config.psp_path
        present, writable = os.path.exists(path), os.access(path, os.W_OK)
        checks.append(
            Check(
                "/dev/sev",
                present and writable,
                f"{path} {'present' if present else 'missing'}{', writable' if writable else ', not writable'}",
                "load ccp (modprobe ccp) with psp_init on; run as root or give the sevd user write access",
            )
        )
        if not present:
            return checks, None
    try:
        client = open_psp(config, write=True)
    except (SevdError, OSError) as exc:
        checks.append(Check("guest-command ioctl", False, str(exc), "open /dev/sev for writing"))
        return checks, None
    try:
        GuestCommands(client).guest_status(0)
        checks.append(Check("guest-command ioctl", True, "SEV_ISSUE_GUEST_CMD answers (GUEST_STATUS probe)"))
    except FirmwareError:
        checks.append(Check("guest-command ioctl", True, "SEV_ISSUE_GUEST_CMD answers (the firmware ran)"))
    except DeviceError as exc:
        missing = exc.errno in (errno.EINVAL, errno.ENOTTY)  # a stock sev-dev.c answers EINVAL
        checks.append(
            Check(
                "guest-command ioctl",
                False,
                "missing: the kernel does not know SEV_ISSUE_GUEST_CMD" if missing else str(exc),
                "boot a Dom0 kernel with the xen-patches/linux patch" if missing else "",
            )
        )
    return checks, client


def _firmware_check(client: Any) -> Check:
    if client is None:
        return Check("firmware", False, "not checked: no PSP", "fix /dev/sev first")
    try:
        st = Platform(client).status()
    except (FirmwareError, SevdError) as exc:
        return Check("firmware", False, str(exc), "see dmesg for ccp/psp messages")
    ok = (st.api_major, st.api_minor) >= (0, 17)
    return Check(
        "firmware",
        ok,
        f"SEV API {st.api_major}.{st.api_minor} build {st.build}, {st.state.name}, {st.guests} guests",
        "update the SEV firmware (API 0.17 or later)",
    )


def _xen_check(config: Config) -> Check:
    if config.hypervisor_backend == "simulated":
        return Check("Xen", True, f"simulated Xen at {config.hypervisor_path}")
    try:
        caps = Path("/proc/xen/capabilities").read_text()
    except OSError:
        return Check("Xen", False, "not running under Xen (/proc/xen/capabilities missing)", "boot the host with Xen")
    if "control_d" not in caps:
        return Check("Xen", False, "this is not Dom0", "run xl-sev in Dom0")
    return Check("Xen", True, "Xen Dom0 (its SEV state: see CPU SEV)")


@cli.command()
@click.pass_context
@reports_errors
def ok(ctx: click.Context) -> None:
    """Readiness checks, one line each (like sevctl ok): CPU, /dev/sev, guest ioctl, firmware, Xen, xenstore, sevd."""
    config = _config(ctx)
    checks = _cpu_checks(config)
    psp_checks, client = _psp_checks(config)
    checks += psp_checks
    checks.append(_firmware_check(client))
    checks.append(_xen_check(config))
    try:
        xs = _connect(config)
    except SevdError as exc:
        checks.append(Check("xenstore", False, str(exc), "start xenstored (xencommons)"))
        checks.append(Check("sevd", False, "not checked: no xenstore", "fix xenstore first"))
    else:
        try:
            xs.read("/")
            checks.append(Check("xenstore", True, f"reachable at {config.xenstore_socket}"))
            problem = daemon_problem(xs)
            pid = xs.read(proto.DAEMON_PID)
            checks.append(
                Check("sevd", problem is None, problem or f"running, pid {pid}", "systemctl start sevd (or sevd run)")
            )
        finally:
            xs.close()
    lines = []
    for c in checks:
        line = f"[ {'PASS' if c.ok else 'FAIL' if c.required else 'WARN'} ] {c.name}: {c.detail}"
        if not c.ok and c.hint:
            line += f"\n         hint: {c.hint}"
        lines.append(line)
    emit(ctx, [dataclasses.asdict(c) for c in checks], "\n".join(lines))
    if not all(c.ok for c in checks if c.required):
        sys.exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
