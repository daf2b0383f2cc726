"""Man pages for sevd, xl-sev and sev-owner, written from their click definitions at package build time.

    python3 debian/manpages.py OUTDIR     → OUTDIR/sevd.1, xl-sev.1, sev-owner.1
"""

import datetime
import sys
from pathlib import Path

import click

from sevd import __version__
from sevd.cli.owner import main as owner
from sevd.cli.sevd_main import cli as sevd
from sevd.cli.xl_sev import cli as xl_sev

COMMANDS = {"sevd": sevd, "xl-sev": xl_sev, "sev-owner": owner}
SEE_ALSO = "/usr/share/doc/sevd/install.md, /usr/share/doc/sevd/operations.md, /usr/share/doc/sevd/cli.md"


def esc(text: str) -> str:
    out = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in out.splitlines())


def options(cmd: click.Command, ctx: click.Context) -> list[str]:
    lines = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record:
            lines += [".TP", f"\\fB{esc(record[0])}\\fR", esc(record[1])]
    return lines


def walk(cmd: click.Command, ctx: click.Context, path: list[str]) -> list[str]:
    lines = []
    if path:
        lines += [".SS " + esc(" ".join(path)), f".B {esc(' '.join(path))}", esc(" ".join(cmd.collect_usage_pieces(ctx))), ".PP"]
        lines += [esc(cmd.help or ""), ".PP"]
        lines += options(cmd, ctx)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            lines += walk(sub, click.Context(sub, info_name=name, parent=ctx), [*path, name])
    return lines


def page(name: str, cmd: click.Command) -> str:
    ctx = click.Context(cmd, info_name=name)
    summary = (cmd.help or "").strip().splitlines()[0] if cmd.help else name
    date = datetime.date.today().isoformat()
    lines = [
        f'.TH {esc(name.upper())} 1 "{date}" "sevd {__version__}" "sevd"',
        ".SH NAME",
        f"{esc(name)} \\- {esc(summary.rstrip('.'))}",
        ".SH SYNOPSIS",
        f".B {esc(name)}",
        esc(" ".join(cmd.collect_usage_pieces(ctx))),
        ".SH DESCRIPTION",
        esc(cmd.help or ""),
        ".SH OPTIONS",
        *options(cmd, ctx),
    ]
    if isinstance(cmd, click.Group):
        lines += [".SH COMMANDS", *walk(cmd, ctx, [])]
    lines += [".SH FILES", "/etc/sevd/sevd.toml, /var/lib/sevd, /var/cache/sevd, /run/sevd", ".SH SEE ALSO", esc(SEE_ALSO)]
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, cmd in COMMANDS.items():
        (out / f"{name}.1").write_text(page(name, cmd))


if __name__ == "__main__":
    main()
