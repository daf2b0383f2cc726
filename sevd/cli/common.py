"""What the CLIs share: output in text or JSON, and exit codes (0 ok, 1 failure reported, 2 usage/input)."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from sevd.abi.status import FirmwareError
from sevd.errors import DeviceError, InputError, SevdError, VerificationError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SOFTWARE = 70  # sysexits' EX_SOFTWARE: a bug in sevd, not in what it was asked


def json_requested(ctx: click.Context | None = None) -> bool:
    """--json given, before or after the verb: the root's flag once parsed, else the command line itself
    (a usage error stops click before the flag is stored)."""
    if ctx is not None:
        obj = ctx.find_root().obj
        if isinstance(obj, dict) and "json" in obj:
            return bool(obj["json"])
    args = sys.argv[1:]
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def fail(message: str, status: int, ctx: click.Context | None = None) -> NoReturn:
    """One error: `error: MESSAGE` on stderr, or with --json one object on stdout,
    `{"ok": false, "error": "input"|"failed", "message": MESSAGE, "exit": N}` ("input": exit 2)."""
    if json_requested(ctx):
        kind = "input" if status == EXIT_USAGE else "failed"
        click.echo(json.dumps({"ok": False, "error": kind, "message": message, "exit": status}, sort_keys=True))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(status)


def run_cli(group: click.Command) -> None:
    """An entry point: click's own handling (its usage errors as JSON too when --json is given), then one
    line for anything unforeseen instead of a traceback (SEVD_DEBUG=1 shows it)."""
    try:
        try:
            group.main(standalone_mode=False)
        except click.exceptions.Abort:
            fail("aborted", EXIT_FAILED)
        except click.ClickException as exc:
            if not json_requested():
                exc.show()
                sys.exit(exc.exit_code)
            fail(exc.format_message(), exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence before a user's terminal
        if os.environ.get("SEVD_DEBUG"):
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc} (SEVD_DEBUG=1 shows where)", err=True)
        sys.exit(EXIT_SOFTWARE)


def emit(ctx: click.Context, data: Any, text: str) -> None:
    if json_requested(ctx):
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(text)


def reports_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn sevd's errors into one line on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as err:
            fail(str(err), EXIT_USAGE, click.get_current_context(silent=True))
        except (FirmwareError, DeviceError, VerificationError, SevdError) as err:
            fail(str(err), EXIT_FAILED, click.get_current_context(silent=True))

    return wrapper
