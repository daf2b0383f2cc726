"""The daemon's journal: two checksummed slots, so a torn write never loses the previous record."""

import pytest

from sevd.daemon.records import SLOT, GuestRecord, JournalCorrupt, RecordStore
from sevd.launch import GuestState, Step


def record(**changes):
    base = GuestRecord(domid=7, generation=1, policy=1, es=False, attest=True, image_gpa=0x1000, image_size=4096)
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_latest_record_wins_and_survives_a_new_store(tmp_path):
    store = RecordStore(tmp_path)
    store.save(record(step=Step.LAUNCH_START, handle=3))
    store.save(record(step=Step.ACTIVATE, handle=3, asid=5))
    again = RecordStore(tmp_path)  # as after a restart
    assert again.load(7) == record(step=Step.ACTIVATE, handle=3, asid=5)
    again.save(record(step=Step.LAUNCH_MEASURE, handle=3, asid=5))
    assert RecordStore(tmp_path).load(7).step == Step.LAUNCH_MEASURE


def test_torn_write_falls_back_to_the_previous_record(tmp_path):
    store = RecordStore(tmp_path)
    store.save(record(pending=Step.ACTIVATE, handle=3))
    store.save(record(step=Step.ACTIVATE, handle=3, asid=5))  # sequence 2: slot 0
    path = tmp_path / "guests" / "7.journal"
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # corrupt the newest slot's body, as a write cut short by a crash would
    path.write_bytes(bytes(data))
    assert RecordStore(tmp_path).load(7) == record(pending=Step.ACTIVATE, handle=3)


def test_both_slots_bad_is_reported(tmp_path):
    path = tmp_path / "guests"
    path.mkdir()
    (path / "9.journal").write_bytes(b"\0" * 2 * SLOT)
    with pytest.raises(JournalCorrupt, match="9.journal"):
        RecordStore(tmp_path).load(9)


def test_delete_and_load_all(tmp_path):
    store = RecordStore(tmp_path)
    store.save(record())
    store.save(record(domid=8))
    assert [r.domid for r in store.load_all()] == [7, 8]
    store.delete(7)
    assert store.load(7) is None and [r.domid for r in store.load_all()] == [8]


def test_a_record_of_the_previous_version_loads_with_the_new_names(tmp_path):
    """A journal written before the steps were named after the firmware commands still recovers."""
    old = {
        "domid": 7, "generation": 1, "policy": 1, "es": False, "attest": True, "image_gpa": 4096,
        "image_size": 4096, "state": "launching", "image_more": [], "step": "SEV_ENABLED", "pending": "UPDATE_DATA",
        "handle": 3, "asid": 5, "ranges_done": 0, "vmsas_done": 0, "measurement": None, "error": None,
    }  # fmt: skip
    store = RecordStore(tmp_path)
    store.save(GuestRecord(**old))
    loaded = RecordStore(tmp_path).load(7)
    assert (loaded.state, loaded.step, loaded.pending) == (
        GuestState.LAUNCHING,
        Step.SEV_ENABLE,
        Step.LAUNCH_UPDATE_DATA,
    )
    assert GuestRecord(**{**old, "step": "NEW", "pending": "SEV_DOMAIN"}).step is None
    assert GuestRecord(**{**old, "step": "NEW", "pending": "SEV_DOMAIN"}).pending == Step.MAKE_SEV
    for legacy, new in [("MEASURE", "LAUNCH_MEASURE"), ("SECRET", "LAUNCH_UPDATE_SECRET"), ("FINISH", "LAUNCH_FINISH"),
                        ("UPDATE_VMSA", "LAUNCH_UPDATE_VMSA")]:  # fmt: skip
        assert GuestRecord(**{**old, "step": legacy}).step == new


def test_the_journal_holds_names_not_numbers(tmp_path):
    store = RecordStore(tmp_path)
    store.save(record(state=GuestState.MEASURED, step=Step.LAUNCH_MEASURE, pending=Step.LAUNCH_FINISH))
    text = (tmp_path / "guests" / "7.journal").read_bytes()
    assert b'"state": "measured"' in text and b'"pending": "LAUNCH_FINISH"' in text
