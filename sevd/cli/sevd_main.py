"""`sevd`: the daemon and the simulated-host commands."""

from __future__ import annotations

import click

from sevd import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sevd")
def cli() -> None:
    """sevd: the Dom0 daemon that drives the AMD Secure Processor for SEV guests on Xen."""


@cli.command()
@click.option("--host", "host_dir", type=click.Path(file_okay=False), default=None, help="Simulated host directory.")
def demo(host_dir: str | None) -> None:
    """Run the demo SEV launch on a simulated host (simulated PSP, simulated Xen)."""
    from sevd.demo import run_demo

    raise SystemExit(run_demo(host_dir))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
