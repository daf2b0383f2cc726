"""What an adversarial run broke, each reproduced: a journal that cannot be written, a domain that dies
mid-launch, teardown failures, a second daemon, secrets left behind (issue "Reliability and scale")."""

from __future__ import annotations

import pytest
from daemon_harness import Harness, wait_for

from sevd.daemon.records import RecordStore
from sevd.platform import Platform
from sevd.xen import protocol as proto

IMAGE = bytes(range(256)) * (300 * 4096 // 256)  # 300 pages: several physically discontiguous ranges

# Run first in the daemon's process: once the command named by SEVD_TEST_ARM has run, the journal's
# filesystem turns read-only (as a remount would) until the test removes the flag file.
JOURNAL_FAULT = """
import errno, os, types
import sevd.daemon.records as records
import sevd.daemon.service as service
_flag, _arm = os.environ["SEVD_TEST_FLAG"], os.environ["SEVD_TEST_ARM"]
_fault, _armed = service.fault_point, []
def fault_point(when, step):
    if f"{when}:{step}" == _arm and not _armed:
        _armed.append(1)
        open(_flag, "w").close()
    _fault(when, step)
service.fault_point = fault_point
def pwrite(fd, data, offset):
    if os.path.exists(_flag):
        raise OSError(errno.EROFS, "Read-only file system")
    return os.pwrite(fd, data, offset)
records.os = types.SimpleNamespace(**{**vars(os), "pwrite": pwrite})
"""


def poke(h: Harness, domid: int) -> None:
    """Any node written under the guest makes the daemon reconcile it (as the attack's `xenstore-write` did)."""
    h.xs.write(proto.guest_path(domid, "poke"), "1")
    h.xs.rm(proto.guest_path(domid, "poke"))


def journal_handles(h: Harness) -> list[int]:
    return [r.handle for r in RecordStore(h.root / "sevd-state").load_all() if r.handle]


@pytest.fixture
def host(tmp_path):
    h = Harness(tmp_path / "host", max_asid=6, min_sev_asid=5)
    yield h
    h.close()


# The step after which the journal stops taking writes × how the launch must end.  LAUNCH_UPDATE_DATA
# encrypted a range in place: the range cannot be measured again, so the launch fails INTERRUPTED, as
# after a crash.  LAUNCH_START and ACTIVATE are settled by GUEST_STATUS and the launch goes on.
JOURNAL_CASES = {
    "LAUNCH_START": "running",
    "ACTIVATE": "running",
    "LAUNCH_UPDATE_DATA": "error",
    "LAUNCH_MEASURE": "error",
}


@pytest.mark.parametrize("step", list(JOURNAL_CASES))
def test_a_journal_write_failing_after_a_psp_command_never_reissues_it_blind(host, step):
    flag = host.root / "journal-readonly"
    host.start_daemon({"SEVD_TEST_FLAG": str(flag), "SEVD_TEST_ARM": f"after:{step}"}, prelude=JOURNAL_FAULT)
    domid = host.toolstack.create("ro", 4, IMAGE)
    host.request(domid)
    wait_for(flag.exists, 30, f"the journal failing after {step}")
    # An unwritable journal is published, not left as `launching` with a promise in the log.
    error = wait_for(lambda: host.field(domid, "error"), 10, "the journal error in the summary")
    assert error.startswith("JOURNAL_EROFS:"), error
    flag.unlink()
    poke(host, domid)
    final = host.wait_state(domid, "running", "error", "measured")
    assert final == JOURNAL_CASES[step], host.logs()[-4000:]
    if final == "error":
        assert host.field(domid, "error").startswith("INTERRUPTED:"), host.field(domid, "error")
    else:
        assert host.field(domid, "error") is None
    # No PSP context the journal does not know (the handle of a LAUNCH_START it could not record).
    assert Platform(host.host.client()).status().guests == len(journal_handles(host)), host.logs()[-4000:]
    assert "ASID_OWNED" not in host.logs()
