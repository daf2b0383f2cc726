"""What every sev-owner verb shares: --json, the result it prints, and the exit status (0 success, 1 verification
failure, 2 unusable input)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from sevd.errors import SevdError, VerificationError

EXIT_OK = 0
EXIT_VERIFY = 1
EXIT_INPUT = 2

__all__ = ["EXIT_INPUT", "EXIT_OK", "EXIT_VERIFY", "_Result", "_verb"]


class _Result:
    """What a verb reports: a dict for --json and lines for people."""

    def __init__(self, lines: list[str] | None = None, **data: Any):
        self.lines = lines or []
        self.data = data


def _verb(fn: Callable[..., _Result]) -> Callable[..., None]:
    """Add --json, run the verb, print its result, and map errors to exit status 1 or 2."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> None:
        try:
            result = fn(*args, **kwargs)
        except VerificationError as exc:
            _fail(as_json, EXIT_VERIFY, "verification", str(exc))
        except SevdError as exc:
            _fail(as_json, EXIT_INPUT, "input", str(exc))
        if as_json:
            click.echo(json.dumps({"ok": True, **result.data}, sort_keys=True))
        else:
            for line in result.lines:
                click.echo(line)

    return wrapper


def _fail(as_json: bool, code: int, kind: str, message: str) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"ok": False, "error": kind, "message": message}, sort_keys=True))
    else:
        click.echo(f"sev-owner: {message}", err=True)
    sys.exit(code)
