"""`sevd`: the daemon.

`sevd run` exits with a status that tells systemd whether starting again can help (the unit's
RestartPreventExitStatus= lists the two that cannot):
    78 (EX_CONFIG)       the configuration is wrong: fix /etc/sevd/sevd.toml
    69 (EX_UNAVAILABLE)  no /dev/sev, not a Xen Dom0, or a PSP that refuses to start: fix the host
    70 (EX_SOFTWARE)     anything unforeseen (a bug): systemd may restart it, within its start limit
Each comes with one line on stderr (the journal), never a traceback (SEVD_DEBUG=1 shows one).
"""

from __future__ import annotations

import os

import click

from sevd import __version__

EXIT_CONFIG = 78
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70


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
    help="sevd.toml (default $SEVD_CONFIG, then /etc/sevd/sevd.toml; no file there means the defaults).",
)
def run(config_path: str | None) -> None:
    """Run the daemon in the foreground (systemd: Type=notify)."""
    from sevd.daemon.service import EXIT_ALREADY_RUNNING, AlreadyRunning
    from sevd.daemon.service import run as run_daemon
    from sevd.errors import InputError, SevdError

    try:
        raise SystemExit(run_daemon(config_path))
    except InputError as exc:
        click.echo(f"sevd: configuration error: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None
    except AlreadyRunning as exc:
        click.echo(f"sevd: {exc}", err=True)
        raise SystemExit(EXIT_ALREADY_RUNNING) from None
    except (SevdError, OSError) as exc:
        hint = getattr(exc, "hint", "")
        click.echo(f"sevd: cannot start: {exc}{f' ({hint})' if hint else ''}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    except Exception as exc:
        if os.environ.get("SEVD_DEBUG"):
            raise
        click.echo(f"sevd: internal error: {type(exc).__name__}: {exc} (SEVD_DEBUG=1 shows where)", err=True)
        raise SystemExit(EXIT_SOFTWARE) from None


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
