"""What the product's wheel holds: sevd alone, never the simulators."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("sevd-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_product_wheel_holds_no_simulator(wheel_names: list[str]) -> None:
    assert not [n for n in wheel_names if n.startswith("sevd_sim") or "/simulated" in n], "a simulator in the wheel"
    assert not [n for n in wheel_names if n.startswith(("tests/", "bench/", "sim/"))]


def test_the_product_wheel_holds_the_product(wheel_names: list[str]) -> None:
    for needed in ("sevd/launch/core.py", "sevd/daemon/service.py", "sevd/owner/chain.py", "sevd/_psp.pyi"):
        assert needed in wheel_names
    assert any(n.startswith("sevd/_psp") and n.endswith(".so") for n in wheel_names)
    assert any(n.startswith("sevd/abi/roots/") and n.endswith(".cert") for n in wheel_names)


def test_every_cli_module_is_short_click_code() -> None:
    """The CLI is click code only (its library is sevd/toolstack and sevd/owner): no module over 500 lines."""
    long = {p.name: n for p in (REPO / "sevd" / "cli").glob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
