"""`xl-sev`: the xl-style host CLI for SEV guests — argument parsing and output only.

`create` parses an xl cfg with Xen's own parser (sevd.xen.xlcfg) and runs the launch flow of
sevd.toolstack.launch: the domain created paused by the host's toolstack, the launch request for sevd
in xenstore, the launch followed there.  The other guest verbs (sevd.toolstack.guests) read and write
the same xenstore nodes (sevd.xen.protocol).  Nothing here talks to the PSP for a guest launch: sevd
does.  `platform ...` and `guest-status` use the PSP directly, read-mostly, like sevctl; `ok` runs
sevd.toolstack.hostcheck.

Exit status: 0 success, 1 a failure reported by the firmware, sevd or Xen (the firmware's status
name leads the message), 2 a usage or input error.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from sevd import __version__
from sevd.abi.policy import Policy
from sevd.backends import open_psp
from sevd.cli import xl_sev_snp
from sevd.cli.common import emit, reports_errors, run_cli
from sevd.config import Config
from sevd.errors import InputError, SevdError
from sevd.platform import Platform
from sevd.toolstack import autostart, domains, guests, hostcheck
from sevd.toolstack.export import export_chain
from sevd.toolstack.launch import CreateOptions, Interrupted, check_create, create_guest
from sevd.toolstack.liveness import require_daemon
from sevd.xen import xlcfg

DEFAULT_TIMEOUT = 60.0
STOCK_XL_WARNING = (
    "Stock `xl create` ignores the sev* keys and starts the guest WITHOUT SEV: its memory is then "
    "not encrypted. Create SEV guests with `xl-sev create` only."
)


def _complete_domain(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion for DOM: the names and domids under /sevd/guest (nothing when unreachable)."""
    try:
        root = ctx.find_root()
        with domains.xenstore(Config.load(root.params.get("config_path"))) as xs:
            return [c for c in domains.domain_names(xs) if c.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        return []


DOM = click.argument("dom", metavar="DOM", shell_complete=_complete_domain)
TIMEOUT = click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(min=0.1))


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().ensure_object(dict)["json"] = True


class Verb(click.Command):
    """Every verb takes --json after its name too (`xl-sev list --json` = `xl-sev --json list`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["--json"], is_flag=True, expose_value=False, callback=_set_json, help="Machine-readable output."
            )
        )


class VerbGroup(click.Group):
    command_class = Verb
    group_class = type  # subgroups are VerbGroups too


@click.group(cls=VerbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xl-sev")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="sevd.toml (default $SEVD_CONFIG, then /etc/sevd/sevd.toml); a simulated host's works the same.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, errors included (also after the verb).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Create, attest and manage AMD SEV guests on a Xen host, the way `xl` manages domains.

    DOM is a domain name or domid. Shell completion: eval "$(_XL_SEV_COMPLETE=bash_source xl-sev)".
    """
    ctx.obj = {"json": as_json, "config_path": config_path}


def _config(ctx: click.Context) -> Config:
    return Config.load(ctx.find_root().obj["config_path"])


def _platform(ctx: click.Context, *, write: bool = True) -> Platform:
    return Platform(open_psp(_config(ctx), write=write))


def _json(ctx: click.Context) -> bool:
    return bool(ctx.find_root().obj.get("json"))


@cli.group()
def platform() -> None:
    """SEV platform management (like sevctl): status, certificate export, ownership; SEV-SNP's snp-*, vlek-load."""


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


xl_sev_snp.register(platform, _config)


@platform.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--kds-url", help="Key server base URL (default: [keyserver] url, AMD's https://kdsintf.amd.com).")
@click.pass_context
@reports_errors
def platform_export(ctx: click.Context, directory: str, kds_url: str | None) -> None:
    """The full chain into DIRECTORY as sev-tool names the files: pdh, pek, oca (PDH_CERT_EXPORT), the CEK AMD
    signed (from the key server, by GET_ID's chip id), ark and ask .cert."""
    paths = export_chain(_config(ctx), directory, kds_url)
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
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@reports_errors
def platform_factory_reset(ctx: click.Context, yes: bool) -> None:
    """FACTORY_RESET: delete the platform's keys and its owner's certificates (refused while guests run).

    Asks for confirmation unless --yes."""
    if not yes:
        if not sys.stdin.isatty():
            raise InputError("platform factory-reset deletes the platform's keys: confirm with --yes")
        click.confirm(
            "FACTORY_RESET deletes the platform's keys (PDH, PEK, OCA) and any owner's certificate; "
            "guest owners must fetch and verify the new chain. Reset?",
            abort=True,
            err=True,
        )
    platform = _platform(ctx)
    st = platform.status()
    if st.guests:  # the driver would answer a bare EBUSY
        raise SevdError(
            f"FACTORY_RESET refused: {st.guests} SEV guest(s) running (platform {st.state.name}): "
            "destroy them first (xl-sev list, xl-sev destroy DOM)"
        )
    platform.factory_reset()
    emit(ctx, {"ok": True}, "platform reset")


@platform.command("get-id")
@click.pass_context
@reports_errors
def platform_get_id(ctx: click.Context) -> None:
    """GET_ID: the chip id AMD's key server uses to serve this chip's CEK."""
    chip_id = _platform(ctx, write=False).get_id().hex()
    emit(ctx, {"id": chip_id}, chip_id)


# -- create ---------------------------------------------------------------------------------------------------------


class Progress:
    """Launch steps as they happen: one line each when the stream is not a terminal, one updating line when
    it is.  With --json, progress goes to stderr and stdout carries only the JSON result."""

    def __init__(self, ctx: click.Context) -> None:
        self.stream: TextIO = sys.stderr if _json(ctx) else sys.stdout
        self.tty = self.stream.isatty()
        self._open = False

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
    options = CreateOptions(paused, Path(owner_dir) if owner_dir is not None else None, secret_path, timeout)
    check_create(cfg, guest, options)
    config = _config(ctx)
    progress = Progress(ctx)
    progress.line(f"Parsing config from {cfg}")
    try:
        result = create_guest(config, guest, options, progress)
    except Interrupted as exc:  # the half-made domain is destroyed, as on Ctrl-C
        progress.close()
        click.echo(f"error: {exc}: launch interrupted (domain {guest.name} destroyed)", err=True)
        sys.exit(128 + exc.signum)
    progress.close()
    where = f"domain {guest.name}: domid {result['domid']}"
    if result["state"] == "measured":
        text = f"{where}, measured, paused until its owner finishes the launch"
    elif result["state"] == "running" and not paused:
        text = f"{where}, running, unpaused"
    else:
        text = f"{where}, {result['state']}, paused"
    emit(ctx, result, text)


# -- the other guest verbs --------------------------------------------------------------------------------------------


@cli.command("list")
@click.argument("doms", metavar="[DOM]...", nargs=-1, shell_complete=_complete_domain)
@click.option("-l", "--long", "long_", is_flag=True, help="Also the firmware build, step, measurement and last error.")
@click.pass_context
@reports_errors
def list_cmd(ctx: click.Context, doms: tuple[str, ...], long_: bool) -> None:
    """SEV guests sevd knows (or only DOM...): name, domid, PSP handle, ASID, state, measurement present, policy.

    -l adds the firmware API and build, the launch step, the measurement and the last error."""
    with domains.xenstore(_config(ctx)) as xs:
        require_daemon(xs)  # sevd down: its rows would be stale, so say so (exit 1) instead
        rows = domains.guest_rows(xs, long=long_)
        if doms:
            wanted = {domains.resolve_domain(xs, d)[0] for d in doms}
            unknown = wanted - {r["domid"] for r in rows}
            if unknown:
                raise InputError(f"domain {min(unknown)}: not an SEV guest sevd knows (xl list shows every domain)")
            rows = [r for r in rows if r["domid"] in wanted]
    lines = domains.list_lines(rows, long=long_)
    emit(ctx, [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "\n".join(lines))


@cli.command("launch-measure")
@DOM
@click.pass_context
@reports_errors
def launch_measure(ctx: click.Context, dom: str) -> None:
    """The launch measurement sevd published (base64 of measure||mnonce) with API version, build and policy."""
    data = guests.published_measurement(_config(ctx), dom)
    text = (
        f"measurement {data['measurement']}\napi {data['api_major']}.{data['api_minor']}\nbuild {data['build']}\n"
        f"policy {data['policy']} ({Policy.parse(data['policy']).describe()})"
    )
    emit(ctx, data, text)


@cli.command("inject-secret")
@DOM
@click.option(
    "--header", "header_path", required=True, type=click.Path(dir_okay=False), help="packaged_secret_header.bin"
)
@click.option("--secret", "secret_path", required=True, type=click.Path(dir_okay=False), help="packaged_secret.bin")
@click.option("--gpa", default=None, help="Guest physical address, 16-aligned (default: the boot image's first page).")
@TIMEOUT
@click.pass_context
@reports_errors
def inject_secret(
    ctx: click.Context, dom: str, header_path: str, secret_path: str, gpa: str | None, timeout: float
) -> None:
    """LAUNCH_SECRET: send the owner's packaged secret (sev-tool's files) to a measured guest."""
    data = guests.inject_secret(_config(ctx), dom, header_path, secret_path, gpa, timeout)
    emit(ctx, data, f"secret injected: {data['length']} bytes at GPA {data['gpa']:#x}")


@cli.command()
@DOM
@click.option("-p", "paused", is_flag=True, help="Leave the domain paused.")
@TIMEOUT
@click.pass_context
@reports_errors
def finish(ctx: click.Context, dom: str, paused: bool, timeout: float) -> None:
    """LAUNCH_FINISH for a measured guest; then unpause it (unless -p)."""
    domid, name = guests.finish(_config(ctx), dom, paused, timeout)
    emit(ctx, {"domid": domid, "state": "running", "paused": paused}, f"domain {name or domid}: running")


@cli.command()
@DOM
@TIMEOUT
@click.pass_context
@reports_errors
def destroy(ctx: click.Context, dom: str, timeout: float) -> None:
    """Destroy the domain (xl destroy); sevd decommissions its PSP context on @releaseDomain."""
    gone = guests.destroy(_config(ctx), dom, timeout)
    if gone.warning:
        click.echo(f"warning: {gone.warning}", err=True)
    emit(
        ctx,
        {"domid": gone.domid, "destroyed": True},
        f"domain {gone.name or gone.domid} (domid {gone.domid}) destroyed",
    )


@cli.command("guest-status")
@DOM
@click.pass_context
@reports_errors
def guest_status(ctx: click.Context, dom: str) -> None:
    """GUEST_STATUS from the PSP for the guest's handle (read from xenstore)."""
    st = guests.guest_status(_config(ctx), dom)
    policy: Policy = st["policy"]
    data: dict[str, Any] = st | {"policy": str(policy)}
    emit(
        ctx,
        data,
        f"handle {st['handle']}\nstate {st['state']}\nasid {st['asid']}\npolicy {policy} ({policy.describe()})",
    )


# -- what an SEV guest cannot do ----------------------------------------------------------------------------------


def _refuse(verb: str) -> None:
    @cli.command(verb, context_settings={"ignore_unknown_options": True}, epilog=REFUSED_WHY)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_context
    @reports_errors
    def refused(ctx: click.Context, args: tuple[str, ...]) -> None:
        raise InputError(f"{verb}: refused: {REFUSED_WHY}")

    refused.help = (
        f"Refused: an SEV guest cannot be {verb}d (the patched Xen refuses stock `xl save` and `xl migrate` "
        "of one). Says why; exit 2."
    )


REFUSED_WHY = (
    "an SEV guest cannot be saved, restored or migrated: its memory is encrypted with a key that only "
    "this platform's PSP holds for this one launch, and sevd has no SEV SEND/RECEIVE support, so an image "
    "would be ciphertext nothing can restore. Shut the guest down and create it again with `xl-sev create` "
    "(a new launch, attested again by its owner)."
)
for _verb in ("save", "restore", "migrate"):
    _refuse(_verb)


# -- autostart ------------------------------------------------------------------------------------------------------


@cli.command("autostart")
@click.option(
    "--dir",
    "directory",
    default=autostart.AUTO_DIR,
    show_default=True,
    type=click.Path(file_okay=False),
    help="The cfgs to start.",
)
@TIMEOUT
@click.pass_context
@reports_errors
def autostart_cmd(ctx: click.Context, directory: str, timeout: float) -> None:
    """Create every cfg in DIR through sevd (what sevd-autostart.service runs at boot), not yet running ones.

    SEV cfgs belong here, never in /etc/xen/auto: xendomains would start them with stock `xl create`, without
    SEV. A cfg with sev_session stops at `measured` for its owner; one without is launched unattested."""
    progress = Progress(ctx)
    results = autostart.start_all(_config(ctx), Path(directory), timeout, progress)
    progress.close()
    emit(ctx, [dataclasses.asdict(r) for r in results], "\n".join(r.line() for r in results))
    if any(r.status == "failed" for r in results):
        sys.exit(1)


@cli.command()
@click.pass_context
@reports_errors
def ok(ctx: click.Context) -> None:
    """Readiness checks, one line each (like sevctl ok): CPU, /dev/sev, guest ioctl, firmware, Xen, xenstore, sevd."""
    checks = hostcheck.host_checks(_config(ctx))
    lines = []
    for c in checks:
        line = f"[ {c.verdict} ] {c.name}: {c.detail}"
        if not c.ok and c.hint:
            line += f"\n         hint: {c.hint}"
        lines.append(line)
    emit(ctx, [dataclasses.asdict(c) for c in checks], "\n".join(lines))
    if not hostcheck.ready(checks):
        sys.exit(1)


def main() -> None:
    run_cli(cli)


if __name__ == "__main__":
    main()
