"""Shared fixtures: a simulated host directory (physical memory + a simulated PSP, INITed as at boot)."""

from __future__ import annotations

import pathlib

import pytest

from sevd_sim.psp.device import create_psp
from sevd_sim.psp.memory import PhysicalMemory

SIM_MEMORY = 64 << 20


@pytest.fixture
def sim_host(tmp_path: pathlib.Path) -> pathlib.Path:
    """A host directory holding memory.img (64 MiB, sparse) and psp/ (a new chip in state INIT)."""
    host = tmp_path / "host"
    host.mkdir()
    PhysicalMemory.create(host / "memory.img", SIM_MEMORY).close()
    create_psp(host)
    return host
