"""What the CLIs share: output in text or JSON, and exit codes (0 ok, 1 failure reported, 2 usage/input)."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from sevd.abi.status import FirmwareError
from sevd.errors import DeviceError, InputError, SevdError, VerificationError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SOFTWARE = 70  # sysexits' EX_SOFTWARE: a bug in sevd, not in what it was asked


def run_cli(group: click.Command) -> None:
    """An entry point: click's own handling, then one line for anything unforeseen instead of a traceback
    (SEVD_DEBUG=1 shows it)."""
    try:
        group()
    except Exception as exc:  # noqa: BLE001 - the last line of defence before a user's terminal
        if os.environ.get("SEVD_DEBUG"):
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc} (SEVD_DEBUG=1 shows where)", err=True)
        sys.exit(EXIT_SOFTWARE)


def emit(ctx: click.Context, data: Any, text: str) -> None:
    if ctx.find_root().obj and ctx.find_root().obj.get("json"):
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
            click.echo(f"error: {err}", err=True)
            sys.exit(EXIT_USAGE)
        except (FirmwareError, DeviceError, VerificationError, SevdError) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper
