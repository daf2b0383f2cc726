"""`xl-sev`: the xl-style host CLI for SEV guests."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from sevd import __version__
from sevd.cli.common import emit, reports_errors
from sevd.config import Config
from sevd.platform import Platform


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
    """Create, attest and manage AMD SEV guests on a Xen host, the way `xl` manages domains."""
    ctx.obj = {"json": as_json, "verbose": verbose, "config_path": config_path}


def _platform(ctx: click.Context, *, write: bool = True) -> Platform:
    config = Config.load(ctx.find_root().obj["config_path"])
    return Platform(config.open_psp(write=write))


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
@click.pass_context
@reports_errors
def platform_export(ctx: click.Context, directory: str) -> None:
    """PDH_CERT_EXPORT into DIRECTORY as sev-tool names the files (pdh, pek, oca, cek .cert).

    On a simulated host, the simulated AMD ark.cert and ask.cert are written too.
    """
    config = Config.load(ctx.find_root().obj["config_path"])
    paths = Platform(config.open_psp(write=False)).pdh_cert_export().write(directory)
    if config.psp_backend == "simulated":
        for name in ("ark.cert", "ask.cert"):
            target = Path(directory) / name
            shutil.copyfile(Path(config.psp_path) / "psp" / "identity" / name, target)
            paths.append(target)
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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
