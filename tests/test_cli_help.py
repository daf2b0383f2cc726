"""The three installed entry points answer --help (run as a user would, as subprocesses)."""

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command,expect",
    [
        ("sevd", "AMD Secure Processor"),
        ("xl-sev", "AMD SEV guests on a Xen host"),
        ("sev-owner", "verify-chain"),
    ],
)
def test_entry_point_help(command, expect):
    proc = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout
