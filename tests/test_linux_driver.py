"""The simulated /dev/sev driver per Linux generation, and the guest-command ioctl of xen-patches/linux.

Expected answers come from the kernel source, cited per test: drivers/crypto/ccp/sev-dev.c of Debian 12's
6.1.192 ("6.1"), Debian 13's 6.12.117 ("6.12") and mainline read in a v6.17-rc3 tree ("6.16"), and the
patch xen-patches/linux/0001-crypto-ccp-add-SEV_ISSUE_GUEST_CMD.patch (sev_ioctl_do_guest_cmd).
"""

from __future__ import annotations

import errno

import pytest
from daemon_harness import OVMF, Harness

from sevd._psp import ffi
from sevd.abi import status
from sevd.abi.commands import CERT_SIZE, USER_BLOB_MAX, UserCommand
from sevd.abi.commands import FirmwareCommand as C
from sevd.abi.commands import PlatformState as P
from sevd.abi.policy import Policy
from sevd.errors import DeviceError
from sevd.guest import GuestCommands
from sevd.platform import Platform
from sevd.psp.device import SEV_ISSUE_GUEST_CMD, PspClient
from sevd.toolstack.guestnodes import request_launch
from sevd.xen import protocol as proto
from sevd_sim.host import SimulatedHost
from sevd_sim.psp.device import SimulatedPsp, create_psp
from sevd_sim.psp.memory import PhysicalMemory

GENERATIONS = ["6.1", "6.12", "6.16"]
LATER = ["6.12", "6.16"]


def _addr(buf) -> int:
    return int(ffi.cast("uintptr_t", buf))


def _host(tmp_path, linux: str):
    host = tmp_path / f"host-{linux}"
    host.mkdir()
    PhysicalMemory.create(host / "memory.img", 16 << 20).close()
    create_psp(host, linux=linux, es=True)
    return host


def _open(host, *, writable: bool = True) -> tuple[Platform, GuestCommands, PspClient]:
    client = PspClient(SimulatedPsp(host, writable=writable))
    return Platform(client), GuestCommands(client), client


def _state(host) -> P:
    return _open(host, writable=False)[0].status().state


# -- at rest ------------------------------------------------------------------------------------------------


def test_6_1_inits_at_probe(tmp_path):
    """6.1 sev_pci_init: `if (!psp_init_on_probe) return;` then sev_platform_init (psp_init_on_probe = true)."""
    assert _state(_host(tmp_path, "6.1")) == P.INIT


@pytest.mark.parametrize("linux", LATER)
def test_later_kernels_leave_the_platform_uninit_without_kvm(tmp_path, linux):
    """6.12 and 6.16 sev_pci_init only reads the API version and updates the firmware; INIT is KVM's
    (sev_hardware_setup -> sev_platform_init), and a Xen Dom0 has no KVM."""
    host = _host(tmp_path, linux)
    st = _open(host, writable=False)[0].status()
    assert (st.state, st.es, st.owner) == (P.UNINIT, False, False)  # the firmware reports no ES in UNINIT


def test_the_generation_belongs_to_the_host(tmp_path):
    host = _host(tmp_path, "6.16")
    assert SimulatedPsp(host).driver.version == SimulatedPsp(host, writable=False).driver.version == "6.16"


# -- what each platform ioctl does to the state -------------------------------------------------------------

NEEDS_INIT = ["PEK_GEN", "PDH_GEN", "PEK_CSR", "PDH_CERT_EXPORT"]


def _issue(platform: Platform, name: str) -> None:
    {
        "PEK_GEN": platform.pek_gen,
        "PDH_GEN": platform.pdh_gen,
        "PEK_CSR": platform.pek_csr,
        "PDH_CERT_EXPORT": platform.pdh_cert_export,
        "GET_ID2": platform.get_id,
        "PLATFORM_STATUS": platform.status,
    }[name]()


@pytest.mark.parametrize("name", NEEDS_INIT)
def test_6_1_implicit_init_stays(tmp_path, name):
    """6.1 sev_ioctl_do_pek_pdh_gen / _pek_csr / _pdh_export: __sev_platform_init_locked when UNINIT, no SHUTDOWN."""
    host = _host(tmp_path, "6.1")
    platform = _open(host)[0]
    platform.factory_reset()
    assert _state(host) == P.UNINIT
    _issue(platform, name)
    assert _state(host) == P.INIT


@pytest.mark.parametrize("linux", LATER)
@pytest.mark.parametrize("name", NEEDS_INIT)
def test_later_kernels_init_run_and_shut_down(tmp_path, linux, name):
    """6.12 and 6.16: sev_move_to_init_state, the command, then __sev_firmware_shutdown (shutdown_required)."""
    host = _host(tmp_path, linux)
    _issue(_open(host)[0], name)
    assert _state(host) == P.UNINIT


@pytest.mark.parametrize("linux", LATER)
def test_later_kernels_pek_cert_import_inits_and_shuts_down(tmp_path, linux):
    """sev_ioctl_do_pek_import: INIT when sev->state != INIT, then SHUTDOWN; the firmware's answer comes back
    (here INVALID_CERTIFICATE for an all-zero OCA) and the platform is UNINIT again."""
    host = _host(tmp_path, linux)
    with pytest.raises(status.FirmwareError):
        _open(host)[0].pek_cert_import(bytes(CERT_SIZE), bytes(CERT_SIZE))
    assert _state(host) == P.UNINIT


@pytest.mark.parametrize("linux", GENERATIONS)
@pytest.mark.parametrize("name", ["GET_ID2", "PLATFORM_STATUS"])
def test_get_id_and_status_never_init(tmp_path, linux, name):
    """sev_ioctl_do_get_id2 and sev_ioctl_do_platform_status issue their command in any state (every version)."""
    host = _host(tmp_path, linux)
    platform = _open(host)[0]
    platform.factory_reset()
    _issue(platform, name)
    assert _state(host) == P.UNINIT


@pytest.mark.parametrize("linux", LATER)
def test_an_inited_platform_is_left_inited(tmp_path, linux):
    """shutdown_required is set only by sev_move_to_init_state: a platform already INIT stays INIT."""
    host = _host(tmp_path, linux)
    platform, guests, _ = _open(host)
    guests.guest_status(0)  # the Dom0 patch's implicit INIT
    assert _state(host) == P.INIT
    platform.pdh_gen()
    platform.pdh_cert_export()
    assert _state(host) == P.INIT


# -- read-only fds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("linux", GENERATIONS)
def test_read_only_export_of_an_uninit_platform_is_eperm(tmp_path, linux):
    """sev_ioctl_do_pdh_export: `if (!writable) return -EPERM` when sev->state != INIT (every version)."""
    host = _host(tmp_path, linux)
    _open(host)[0].factory_reset()
    with pytest.raises(DeviceError) as info:
        _open(host, writable=False)[0].pdh_cert_export()
    assert info.value.errno == errno.EPERM
    assert "start sevd" in str(info.value)


@pytest.mark.parametrize("linux, expected", [("6.1", errno.EPERM), ("6.12", errno.EFAULT), ("6.16", errno.EFAULT)])
def test_read_only_export_order_of_checks(tmp_path, linux, expected):
    """6.1 checks the state (EPERM) before copy_from_user; 6.12/6.16 check the 16 KiB lengths (EFAULT) first."""
    host = _host(tmp_path, linux)
    _open(host)[0].factory_reset()
    big = ffi.new("uint8_t[]", 16)
    req = ffi.new("struct sev_user_data_pdh_cert_export *")
    req.pdh_cert_address, req.pdh_cert_len = _addr(big), USER_BLOB_MAX + 1
    req.cert_chain_address, req.cert_chain_len = _addr(big), 16
    with pytest.raises(DeviceError) as info:
        _open(host, writable=False)[2].platform_command(UserCommand.PDH_CERT_EXPORT, req)
    assert info.value.errno == expected


@pytest.mark.parametrize("linux", LATER)
def test_read_only_reads_once_sevd_has_initialised(tmp_path, linux):
    """With the platform INIT (sevd's start-up), a read-only fd exports without INIT (no EPERM)."""
    host = _host(tmp_path, linux)
    assert _open(host)[0].ensure_initialised().state == P.INIT
    ro = _open(host, writable=False)[0]
    assert len(ro.pdh_cert_export().pdh) == CERT_SIZE
    assert ro.ensure_initialised().state == P.INIT


def test_ensure_initialised_needs_a_writable_fd(tmp_path):
    host = _host(tmp_path, "6.12")
    assert _open(host, writable=False)[0].ensure_initialised().state == P.UNINIT


# -- the guest-command ioctl (xen-patches/linux, sev_ioctl_do_guest_cmd) ------------------------------------


def _raw(psp: SimulatedPsp, cmd: int, data: int = 0) -> tuple[int, int]:
    arg = ffi.new("struct sev_issue_cmd *")
    arg.cmd, arg.data = cmd, data
    return psp.ioctl(SEV_ISSUE_GUEST_CMD, arg), arg.error


@pytest.mark.parametrize("linux", GENERATIONS)
def test_guest_command_implicit_init_stays(tmp_path, linux):
    """`if (sev->state == SEV_STATE_UNINIT) __sev_platform_init_locked(...)`; nothing shuts it down."""
    host = _host(tmp_path, linux)
    platform, guests, _ = _open(host)
    platform.factory_reset()
    handle = guests.launch_start(Policy(0))
    assert _state(host) == P.WORKING and handle == 1


def test_read_only_fd_is_eperm_before_the_command_id(tmp_path):
    """`if (!writable || !capable(CAP_SYS_ADMIN)) return -EPERM;` comes before sev_guest_cmd_allowed."""
    host = _host(tmp_path, "6.12")
    assert _raw(SimulatedPsp(host, writable=False), 0x99)[0] == -errno.EPERM
    assert _raw(SimulatedPsp(host), 0x99)[0] == -errno.EINVAL


@pytest.mark.parametrize("cmd", [C.SEND_START, C.RECEIVE_START, C.INIT, C.PDH_GEN])
def test_commands_outside_the_patch_list_are_einval(tmp_path, cmd):
    """sev_guest_cmd_allowed: no SEND_*/RECEIVE_* (migration), no platform commands."""
    assert _raw(SimulatedPsp(_host(tmp_path, "6.1")), int(cmd))[0] == -errno.EINVAL


def test_null_command_buffer_is_efault(tmp_path):
    """`if (len && (!udata || copy_from_user(...))) return -EFAULT;` (DF_FLUSH has no buffer: fine)."""
    psp = SimulatedPsp(_host(tmp_path, "6.1"))
    assert _raw(psp, int(C.GUEST_STATUS))[0] == -errno.EFAULT
    assert _raw(psp, int(C.DF_FLUSH)) == (0, 0)


def _einval(fn, *args) -> None:
    with pytest.raises(DeviceError) as info:
        fn(*args)
    assert info.value.errno == errno.EINVAL


def test_blob_limits_are_einval(tmp_path):
    """sev_bounce_in: `if (len > max) return -EINVAL;` 16 KiB for blobs, 0x5000 for the secret's transport."""
    host = _host(tmp_path, "6.1")
    _, guests, client = _open(host)
    big = ffi.new("uint8_t[]", 0x5010)
    req = ffi.new("struct sev_data_launch_start *")
    req.dh_cert_address, req.dh_cert_len = _addr(big), USER_BLOB_MAX + 1
    req.session_address, req.session_len = _addr(big), 0x80
    _einval(client.guest_command, C.LAUNCH_START, req)
    handle = guests.launch_start(Policy(0))
    guests.activate(handle, 5)
    _einval(guests.dbg_decrypt, handle, 0x100000, USER_BLOB_MAX + 16)
    guests.launch_measure(handle)
    secret = ffi.new("struct sev_data_launch_secret *")
    secret.handle = handle
    secret.hdr_address, secret.hdr_len = _addr(big), 0x34
    secret.guest_address, secret.guest_len = 0x200000, 0x5010
    secret.trans_address, secret.trans_len = _addr(big), 0x5010
    _einval(client.guest_command, C.LAUNCH_UPDATE_SECRET, secret)


def test_guest_memory_of_an_unactivated_handle_is_einval(tmp_path):
    """sev_guest_memory_ok: GUEST_STATUS first; `if (!status.asid) return -EINVAL;` (before the firmware's
    INACTIVE or INVALID_GUEST).  A zero length is left to the firmware."""
    host = _host(tmp_path, "6.1")
    _, guests, _ = _open(host)
    handle = guests.launch_start(Policy(0))
    _einval(guests.launch_update_data, handle, 0x100000, 4096)
    _einval(guests.launch_update_data, 99, 0x100000, 4096)
    with pytest.raises(status.Inactive):  # length 0: the firmware answers
        guests.launch_update_data(handle, 0x100000, 0)


def test_an_address_xen_refuses_is_eperm(tmp_path):
    """sev_xen_check_spa: CHECK_SPA refused (not RAM of the SEV domain with that ASID) -> -EPERM."""
    # An HVM/PVH Dom0, whose WBINVD after the implicit INIT reaches every CPU (the PV-Dom0 case, where the
    # kernel's DF_FLUSH fails and sevd must flush through Xen, is tests/test_cpu_caches.py's).
    host = SimulatedHost.create(tmp_path / "xen-host", linux="6.12", pv_dom0=False)
    xen = host.xen()
    domid = xen.create_domain("g", 16, b"\x01" * 8192)
    sev = xen.make_sev_domain(domid, es=False)
    guests = GuestCommands(host.client())
    handle = guests.launch_start(Policy(0))
    guests.activate(handle, sev.asid)
    (spa, length), *_ = xen.boot_image_ranges(domid)
    guests.launch_update_data(handle, spa, 4096)  # the guest's own RAM
    with pytest.raises(DeviceError) as info:
        guests.launch_update_data(handle, 0x1000, 4096)  # Xen's first MiB
    assert info.value.errno == errno.EPERM


# -- a launch on each generation ----------------------------------------------------------------------------


@pytest.mark.skipif(not OVMF.exists(), reason="Debian's ovmf package provides the boot image")
@pytest.mark.parametrize("linux", GENERATIONS)
def test_daemon_launches_a_guest_on_each_generation(tmp_path, linux):
    """sevd on a host made with each --linux: start-up INITs an UNINIT platform, the launch runs."""
    h = Harness(tmp_path / "host", linux=linux)
    try:
        h.start_daemon()
        image = OVMF.read_bytes()
        domid = h.toolstack.create("g", 16, image)
        gpa, size = h.toolstack.image_location(domid)
        request_launch(
            h.xs,
            proto.LaunchRequest(
                domid=domid, generation=1, policy=Policy(0), es=False, attest=False, image_gpa=gpa, image_size=size
            ),
        )
        assert h.wait_state(domid, "running", "error") == "running", h.logs()
        assert Platform(h.host.client()).status().state == P.WORKING
    finally:
        h.close()
