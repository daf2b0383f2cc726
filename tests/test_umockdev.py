"""The real ioctl(2) path: sevd's cffi client against a /dev/sev node that umockdev serves."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.umockdev
def test_cffi_ioctl_reaches_the_simulated_psp_through_umockdev():
    assert shutil.which("umockdev-wrapper"), "umockdev is a test dependency (make test installs it)"
    proc = subprocess.run(
        ["umockdev-wrapper", sys.executable, str(HERE / "umockdev_sev.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("status ok", "pdh export ok", "guest commands ok", "ioctl path ok"):
        assert line in proc.stdout, proc.stdout
    for name in ("INVALID_PLATFORM_STATE", "INVALID_GUEST (0x10)"):
        assert name in proc.stdout, proc.stdout
