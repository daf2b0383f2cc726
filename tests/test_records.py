"""The daemon's journal: two checksummed slots, so a torn write never loses the previous record."""

import pytest

from sevd.daemon.records import SLOT, GuestRecord, JournalCorrupt, RecordStore


def record(**changes):
    base = GuestRecord(domid=7, generation=1, policy=1, es=False, attest=True, image_gpa=0x1000, image_size=4096)
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_latest_record_wins_and_survives_a_new_store(tmp_path):
    store = RecordStore(tmp_path)
    store.save(record(step="LAUNCH_START", handle=3))
    store.save(record(step="ACTIVATE", handle=3, asid=5))
    again = RecordStore(tmp_path)  # as after a restart
    assert again.load(7) == record(step="ACTIVATE", handle=3, asid=5)
    again.save(record(step="MEASURE", handle=3, asid=5))
    assert RecordStore(tmp_path).load(7).step == "MEASURE"


def test_torn_write_falls_back_to_the_previous_record(tmp_path):
    store = RecordStore(tmp_path)
    store.save(record(pending="ACTIVATE", handle=3))
    store.save(record(step="ACTIVATE", handle=3, asid=5))  # sequence 2: slot 0
    path = tmp_path / "guests" / "7.journal"
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # corrupt the newest slot's body, as a write cut short by a crash would
    path.write_bytes(bytes(data))
    assert RecordStore(tmp_path).load(7) == record(pending="ACTIVATE", handle=3)


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
