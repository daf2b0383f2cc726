"""`xl-sev`: the xl-style host CLI for SEV guests."""

from __future__ import annotations

import click

from sevd import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xl-sev")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", count=True, help="More output.")
@click.pass_context
def cli(ctx: click.Context, as_json: bool, verbose: int) -> None:
    """Create, attest and manage AMD SEV guests on a Xen host, the way `xl` manages domains."""
    ctx.obj = {"json": as_json, "verbose": verbose}


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
