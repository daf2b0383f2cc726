"""`sevd`: the daemon."""

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
    from sevd.daemon.service import EXIT_ALREADY_RUNNING, AlreadyRunning
    from sevd.daemon.service import run as run_daemon
    from sevd.errors import InputError

    try:
        raise SystemExit(run_daemon(config_path))
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except AlreadyRunning as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_ALREADY_RUNNING) from None


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
