"""`make demo`'s main job end to end, as a user runs it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

OVMF = Path("/usr/share/ovmf/OVMF.fd")


@pytest.mark.skipif(not OVMF.exists(), reason="Debian's ovmf package provides the demo's boot image")
def test_demo_launches_attests_and_tears_down(tmp_path):
    sevd = shutil.which("sevd", path=str(Path(sys.executable).parent))
    proc = subprocess.run([sevd, "demo", "--host", str(tmp_path / "host")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for line in (
        "PDH <- PEK <- (OCA, CEK <- ASK <- ARK) verified",
        "measurement matches the expected OVMF launch digest",
        "guest sees its secret: True; host memory holds ciphertext: True",
        "platform: INIT, guests 0",
    ):
        assert line in out, out
    assert "LAUNCH_UPDATE_DATA x" in out and "x1 " not in out  # several ranges: coalescing exercised
