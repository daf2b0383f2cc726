"""The real ioctl(2) path: sevd's cffi client against a /dev/sev node that umockdev serves."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.umockdev
def test_cffi_ioctl_reaches_a_umockdev_handler():
    assert shutil.which("umockdev-wrapper"), "umockdev is a test dependency (make test installs it)"
    proc = subprocess.run(
        ["umockdev-wrapper", sys.executable, str(HERE / "umockdev_sev.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "status ok" in proc.stdout
    assert "firmware error ok" in proc.stdout and "INVALID_PLATFORM_STATE" in proc.stdout
