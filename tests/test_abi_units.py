"""The single definitions in sevd/abi: PLATFORM_STATUS's flags against the kernel's header, CPUID 0x8000001F's
fields as AMD's manual lays them out, and the typed stub of sevd._psp against the cffi declarations."""

import importlib.util
from pathlib import Path

import pytest

from sevd._psp import ffi, lib
from sevd.abi.cpuid import Feature, MemoryEncryption
from sevd.abi.platform_status import StatusFlag, status_flags
from sevd.platform import Platform
from sevd.psp.device import PspClient
from sevd_sim.psp.device import SimulatedPsp, create_psp
from sevd_sim.psp.memory import PhysicalMemory

ROOT = Path(__file__).parent.parent


def test_config_es_is_the_kernel_headers_flag():
    assert StatusFlag.CONFIG_ES == lib.SEV_STATUS_FLAGS_CONFIG_ES == 0x100
    assert StatusFlag.OWNER == 0x1  # byte 3 bit 0 of PLATFORM_STATUS (SEV API 5.5.2)


@pytest.mark.parametrize(
    "owner,es,flags", [(False, False, 0), (True, False, 0x1), (False, True, 0x100), (True, True, 0x101)]
)
def test_status_flags_word(owner, es, flags):
    assert status_flags(owner=owner, es=es) == flags


@pytest.mark.parametrize("es", [False, True])
def test_platform_status_reads_the_flags_the_simulated_firmware_sets(tmp_path, es):
    PhysicalMemory.create(tmp_path / "memory.img", 1 << 20).close()
    create_psp(tmp_path, es=es)
    status = Platform(PspClient(SimulatedPsp(tmp_path))).status()
    assert (status.es, status.owner) == (es, False)


def test_cpuid_8000001f_of_an_epyc_milan():
    # EAX SME|SEV|PAGE_FLUSH_MSR|SEV_ES|SEV_SNP..., EBX C-bit 47 with 5 address bits lost, 509 ASIDs, SEV from 100.
    leaf = MemoryEncryption.decode(0x0001_781F, 0x0000_016F, 509, 100)
    assert (leaf.sev, leaf.es, leaf.snp) == (True, True, True)
    assert (leaf.cbit, leaf.phys_reduction, leaf.max_asid, leaf.min_sev_asid) == (47, 5, 509, 100)
    assert leaf.features == Feature.SME | Feature.SEV | Feature.PAGE_FLUSH_MSR | Feature.SEV_ES | Feature.SEV_SNP


def test_cpuid_8000001f_without_es_and_from_the_cpuid_driver():
    raw = (
        (0x3).to_bytes(4, "little")
        + (0x6F).to_bytes(4, "little")
        + (15).to_bytes(4, "little")
        + (1).to_bytes(4, "little")
    )
    leaf = MemoryEncryption.from_bytes(raw)
    assert (leaf.sev, leaf.es, leaf.cbit, leaf.phys_reduction, leaf.max_asid, leaf.min_sev_asid) == (
        True, False, 47, 1, 15, 1,
    )  # fmt: skip
    assert leaf.encode() == (0x3, 0x6F, 15, 1)
    with pytest.raises(ValueError, match="16 bytes"):
        MemoryEncryption.from_bytes(raw[:12])


def test_psp_stub_is_generated_from_the_cffi_declarations():
    spec = importlib.util.spec_from_file_location("cffi_build", ROOT / "cffi_build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    stub = (ROOT / "sevd" / "_psp.pyi").read_text()
    assert stub == build.stub_text(ffi, lib), "regenerate it: python cffi_build.py --stub > sevd/_psp.pyi"
    assert "class sev_data_launch_update_data(Protocol):\n    handle: int  # uint32_t\n" in stub
