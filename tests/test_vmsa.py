"""SEV-ES: the reset-state VMSA the owner recomputes, and the daemon measuring it after the image."""

import struct

import pytest
from daemon_harness import Harness

from sevd.abi import vmsa
from sevd.abi.launch import LaunchMeasurement
from sevd.abi.policy import Policy
from sevd.owner.measurement import verify_measurement
from sevd.owner.session import make_session
from sevd.platform import Platform
from sevd.toolstack.guestnodes import request_launch
from sevd.xen import protocol as proto


def field(page, offset):
    return struct.unpack_from("<Q", page, offset)[0]


def test_bsp_reset_state():
    page = vmsa.reset_vmsa()
    assert len(page) == 4096
    selector, attrib, limit, base = struct.unpack_from("<HHIQ", page, 16)  # CS is the second segment
    assert (selector, attrib, limit, base) == (0xF000, 0x9B, 0xFFFF, 0xFFFF0000)
    assert field(page, vmsa.RIP) == 0xFFF0  # CS base + RIP = 0xFFFFFFF0, the reset vector
    assert field(page, vmsa.EFER) == vmsa.EFER_SVME
    assert field(page, vmsa.RFLAGS) == 2 and field(page, vmsa.DR6) == 0xFFFF0FF0 and field(page, vmsa.XCR0) == 1


def test_ap_vmsa_starts_at_the_given_address():
    bsp, ap = vmsa.reset_vmsas(2, ap_reset_eip=0x0080_B004)
    assert bsp == vmsa.reset_vmsa()
    assert struct.unpack_from("<Q", ap, 16 + 8)[0] == 0x0080_0000 and field(ap, vmsa.RIP) == 0xB004
    with pytest.raises(ValueError):
        vmsa.reset_vmsas(0)


@pytest.mark.parametrize("vcpus", [1, 3])
def test_es_launch_measures_each_vmsa_after_the_image(tmp_path, vcpus):
    h = Harness(tmp_path / "host")
    try:
        h.start_daemon()
        image = bytes(range(256)) * 64
        pdh = h.host.owner_chain().pdh
        policy = Policy.parse("ES|NODBG")
        session = make_session(pdh, int(policy))
        domid = h.toolstack.create("es", 2, image, vcpus=vcpus)
        gpa, size = h.toolstack.image_location(domid)
        request_launch(
            h.xs,
            proto.LaunchRequest(
                domid, 1, policy, True, True, gpa, size, session.godh.to_bytes(), session.blob.to_bytes()
            ),
        )
        assert h.wait_state(domid, "measured", "error") == "measured", h.logs()
        measured = LaunchMeasurement.from_base64(h.field(domid, "measurement"))
        st = Platform(h.host.client()).status()
        args = (measured, image, int(policy), st.api_major, st.api_minor, st.build, session.keys.tik)
        verify_measurement(*args, vmsa.reset_vmsas(vcpus))
        with pytest.raises(Exception, match="does not match"):
            verify_measurement(*args)  # without the VMSAs the digest differs
        assert int(h.field(domid, "asid")) < 5
    finally:
        h.close()
