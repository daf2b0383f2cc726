"""`sevd`: the daemon and the simulated-host commands."""

from __future__ import annotations

import click

from sevd import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sevd")
def cli() -> None:
    """sevd: the Dom0 daemon that drives the AMD Secure Processor for SEV guests on Xen."""


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="sevd.toml (default $SEVD_CONFIG, then /etc/sevd/sevd.toml).",
)
def run(config_path: str | None) -> None:
    """Run the daemon in the foreground (systemd: Type=notify)."""
    from sevd.daemon.service import run as run_daemon
    from sevd.errors import InputError

    try:
        raise SystemExit(run_daemon(config_path))
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


@cli.command()
@click.option("--host", "host_dir", type=click.Path(file_okay=False), default=None, help="Simulated host directory.")
def demo(host_dir: str | None) -> None:
    """Run the demo SEV launch on a simulated host (simulated PSP, simulated Xen)."""
    from sevd.demo import run_demo

    raise SystemExit(run_demo(host_dir))


@cli.command("sim-host")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--max-asid", default=64, show_default=True, help="Simulated CPUID 0x8000001F: number of ASIDs.")
@click.option("--min-sev-asid", default=5, show_default=True, help="First plain-SEV ASID (below: SEV-ES).")
@click.option("--create-only", is_flag=True, help="Create the host and exit; do not run the xenstored stand-in.")
def sim_host(directory: str, max_asid: int, min_sev_asid: int, create_only: bool) -> None:
    """Create a simulated host in DIRECTORY if missing, then run its xenstored stand-in in the foreground."""
    from pathlib import Path

    from sevd.simhost import SimulatedHost
    from sevd.xen import xenstored

    host = SimulatedHost.create(Path(directory), max_asid=max_asid, min_sev_asid=min_sev_asid)
    click.echo(f"simulated host ready: {host.root} (config {host.root / 'sevd.toml'})")
    if create_only:
        return
    sock, store = host.root / "xenstored.sock", host.root / "xenstored.json"
    raise SystemExit(xenstored.main(["--socket", str(sock), "--store", str(store), "--init-dom0"]))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
