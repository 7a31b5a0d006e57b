"""Snapshots: atomic files, the newest two kept, and which one a reopened node uses."""

from __future__ import annotations

import contextlib
import logging
import struct
import zlib
from pathlib import Path

import pytest

from node.raft.types import ConfState, LogIndex, NodeId, SnapshotMeta, Term
from node.storage import RealFileSystem, Storage, StorageCorruptedError, StorageMisuseError
from node.storage.snapshots import SnapshotFiles
from tests.storage.crashfs import CrashFileSystem, PowerCut
from tests.storage.workload import (
    DATA_DIR,
    data_file,
    entry,
    hard,
    read_snapshot,
    snap,
    snapshot_data,
)


def snap_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "snap").iterdir())


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def filled(data_dir: Path, *, last: int = 20) -> Storage:
    storage = Storage.open(data_dir)
    storage.append([entry(1, i) for i in range(1, last + 1)])
    storage.set_hard_state(hard(1, "a", last))
    storage.sync()
    return storage


def write_unrecorded_snapshot(data_dir: Path, index: int, term: int) -> Path:
    """A snapshot file whose save a crash interrupted before the log recorded it."""
    store = SnapshotFiles.open(RealFileSystem(), data_dir / "snap")
    store.save(snap(index, term), data_file(snapshot_data(snap(index, term))))
    return data_dir / "snap" / f"{term:016x}-{index:016x}.snap"


def test_snapshots_round_trip_and_only_the_newest_two_are_kept(tmp_path: Path) -> None:
    with filled(tmp_path, last=30) as storage:
        for index in (10, 20, 25):
            storage.save_snapshot(snap(index, 1), data_file(snapshot_data(snap(index, 1))))
        assert snap_files(tmp_path) == [
            f"{1:016x}-{20:016x}.snap",
            f"{1:016x}-{25:016x}.snap",
        ]
        assert read_snapshot(storage) == (snap(25, 1), snapshot_data(snap(25, 1)))
    with Storage.open(tmp_path) as storage:
        state = storage.initial_state()
        assert state.snapshot == snap(25, 1)
        assert state.snapshot.conf.voters == ("a", "b", "c")
        assert [e.index for e in state.entries] == list(range(26, 31))
        assert read_snapshot(storage) == (snap(25, 1), snapshot_data(snap(25, 1)))
        assert storage.term(25) == 1


def test_install_snapshot_discards_the_whole_log(tmp_path: Path) -> None:
    with filled(tmp_path, last=10) as storage:
        storage.install_snapshot(
            snap(8, 1), data_file(b"from the leader")
        )  # even where the log agrees
        assert (storage.first_index(), storage.last_index()) == (9, 8)
        storage.append([entry(2, 9)])
    with Storage.open(tmp_path) as storage:
        state = storage.initial_state()
        assert state.snapshot == snap(8, 1)
        assert state.entries == [entry(2, 9)]
        assert read_snapshot(storage) == (snap(8, 1), b"from the leader")


def _crash_inside(operation: str) -> set[str]:
    """Crash at every operation of one save/compact/install after snapshot 10; the outcomes
    seen."""

    def prepare() -> tuple[CrashFileSystem, Storage]:
        fs = CrashFileSystem()
        storage = Storage.open(DATA_DIR, fs=fs)
        storage.append([entry(1, i) for i in range(1, 21)])
        storage.save_snapshot(snap(10, 1), data_file(b"ten"))
        return fs, storage

    def act(storage: Storage) -> None:
        if operation == "save":
            storage.save_snapshot(snap(15, 1), data_file(b"fifteen"))
        elif operation == "compact":
            storage.compact(snap(15, 1))
        else:
            storage.install_snapshot(snap(40, 3), data_file(b"forty"))

    fs, storage = prepare()
    start = fs.ops
    act(storage)
    total = fs.ops - start
    outcomes: set[str] = set()
    for cut in range(total + 1):
        fs, storage = prepare()
        fs.cut_power_after(cut)
        with contextlib.suppress(PowerCut):
            act(storage)
        fs.crash()
        reopened = Storage.open(DATA_DIR, fs=fs)
        state = reopened.initial_state()
        loaded = read_snapshot(reopened)
        if operation == "compact" and state.snapshot == snap(15, 1):
            assert loaded is None and reopened.snapshot_held_by_state(), f"cut {cut}"
            assert [e.index for e in state.entries] == list(range(16, 21))
            outcomes.add("new")
            continue
        assert loaded is not None, f"cut {cut}: no snapshot at all"
        assert loaded[0] == state.snapshot
        if loaded == (snap(10, 1), b"ten"):
            assert [e.index for e in state.entries] == list(range(11, 21))
            outcomes.add("old")
        elif operation == "save":
            assert loaded == (snap(15, 1), b"fifteen"), f"cut {cut}: {loaded}"
            assert [e.index for e in state.entries] == list(range(16, 21))
            outcomes.add("new")
        else:
            assert loaded == (snap(40, 3), b"forty"), f"cut {cut}: {loaded}"
            assert state.entries == []
            outcomes.add("new")
    return outcomes


def test_a_crash_inside_save_snapshot_leaves_the_old_snapshot_or_the_new_one() -> None:
    assert _crash_inside("save") == {"old", "new"}


def test_a_crash_inside_install_snapshot_leaves_the_old_state_or_the_new_one() -> None:
    assert _crash_inside("install") == {"old", "new"}


def test_a_damaged_snapshot_the_log_was_compacted_to_is_an_error_naming_it(
    tmp_path: Path,
) -> None:
    """An older valid snapshot is no way out: the entries between the two are gone."""
    with filled(tmp_path) as storage:
        storage.save_snapshot(snap(10, 1), data_file(b"ten"))
        storage.save_snapshot(snap(15, 1), data_file(b"fifteen"))
    newest = tmp_path / "snap" / f"{1:016x}-{15:016x}.snap"
    flip_byte(newest, newest.stat().st_size - 6)
    with pytest.raises(StorageCorruptedError, match="checksum") as err:
        Storage.open(tmp_path)
    assert err.value.path == newest
    assert str(newest) in str(err.value)


def test_bad_snapshot_magic_is_an_error(tmp_path: Path) -> None:
    with filled(tmp_path) as storage:
        storage.save_snapshot(snap(10, 1), data_file(b"ten"))
    path = tmp_path / "snap" / f"{1:016x}-{10:016x}.snap"
    path.write_bytes(b"garbage!" + path.read_bytes()[8:])
    with pytest.raises(StorageCorruptedError, match="bad magic number") as err:
        Storage.open(tmp_path)
    assert (err.value.path, err.value.offset) == (path, 0)


def test_a_missing_snapshot_the_log_was_compacted_to_is_an_error(tmp_path: Path) -> None:
    with filled(tmp_path) as storage:
        storage.save_snapshot(snap(10, 1), data_file(b"ten"))
    (tmp_path / "snap" / f"{1:016x}-{10:016x}.snap").unlink()
    with pytest.raises(StorageCorruptedError, match="missing"):
        Storage.open(tmp_path)


@pytest.mark.parametrize("damage", [False, True])
def test_a_newer_snapshot_the_log_never_recorded_is_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: bool
) -> None:
    """A crash between the snapshot file and its record in the log: the save never happened
    (as etcd does), so a damaged file there is no reason to stop."""
    with filled(tmp_path) as storage:
        storage.save_snapshot(snap(10, 1), data_file(b"ten"))
    unrecorded = write_unrecorded_snapshot(tmp_path, 15, 1)
    if damage:
        flip_byte(unrecorded, 40)
    caplog.set_level(logging.WARNING)
    with Storage.open(tmp_path) as storage:
        state = storage.initial_state()
        assert state.snapshot == snap(10, 1)
        assert [e.index for e in state.entries] == list(range(11, 21))
    assert not unrecorded.exists()
    assert "never recorded" in caplog.text


def test_a_damaged_snapshot_with_a_valid_newer_one_moves_forward(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Falling forward is safe: the newer snapshot covers everything the damaged one did."""
    with filled(tmp_path) as storage:
        storage.save_snapshot(snap(10, 1), data_file(b"ten"))
    own = tmp_path / "snap" / f"{1:016x}-{10:016x}.snap"
    write_unrecorded_snapshot(tmp_path, 15, 1)
    flip_byte(own, 40)
    caplog.set_level(logging.WARNING)
    with Storage.open(tmp_path) as storage:
        state = storage.initial_state()
        assert state.snapshot == snap(15, 1)
        assert [e.index for e in state.entries] == list(range(16, 21))
        assert state.hard_state == hard(1, "a", 20)
    assert str(own) in caplog.text
    with Storage.open(tmp_path) as storage:  # and it is recorded now
        assert storage.initial_state().snapshot == snap(15, 1)


def _reject(source: Path) -> None:
    raise ValueError(f"the state machine cannot restore {source.read_bytes()!r}")


def test_install_snapshot_validates_before_anything_is_durable() -> None:
    """A snapshot made durable before it was validated is a crash loop: every restart loads
    it again. A rejected one leaves nothing behind, not even after a power cut."""
    fs = CrashFileSystem()
    storage = Storage.open(DATA_DIR, fs=fs)
    storage.append([entry(1, i) for i in range(1, 21)])
    storage.save_snapshot(snap(10, 1), data_file(b"ten"))
    before = fs.ops
    seen: list[bytes] = []

    def reject(source: Path) -> None:
        seen.append(source.read_bytes())
        _reject(source)

    with pytest.raises(ValueError, match="cannot restore"):
        storage.install_snapshot(snap(40, 3), data_file(b"forty"), validate=reject)
    assert seen == [b"forty"]
    assert fs.ops == before  # nothing written, not even a staging file
    assert read_snapshot(storage) == (snap(10, 1), b"ten")
    fs.crash()
    storage = Storage.open(DATA_DIR, fs=fs)
    assert read_snapshot(storage) == (snap(10, 1), b"ten")
    assert [e.index for e in storage.initial_state().entries] == list(range(11, 21))
    storage.install_snapshot(  # a good one
        snap(40, 3), data_file(b"forty"), validate=lambda source: seen.append(source.read_bytes())
    )
    assert seen == [b"forty", b"forty"]
    fs.crash()
    with Storage.open(DATA_DIR, fs=fs) as reopened:
        assert read_snapshot(reopened) == (snap(40, 3), b"forty")
        assert reopened.initial_state().entries == []


def test_check_install_refuses_what_install_would_and_touches_nothing() -> None:
    fs = CrashFileSystem()
    storage = Storage.open(DATA_DIR, fs=fs)
    storage.append([entry(1, i) for i in range(1, 11)])
    storage.save_snapshot(snap(5, 1), data_file(b"five"))
    before = fs.ops
    with pytest.raises(StorageMisuseError, match="not after the current one"):
        storage.check_install(snap(5, 1))
    too_long = SnapshotMeta(LogIndex(9), Term(2), ConfState((NodeId("x" * 70_000),)))
    with pytest.raises(StorageMisuseError, match="too long"):
        storage.check_install(too_long)
    storage.check_install(snap(9, 2))
    assert fs.ops == before
    with pytest.raises(StorageMisuseError, match="too long"):  # install says the same
        storage.install_snapshot(too_long, data_file(b""), validate=_reject)


def test_a_snapshot_file_cut_short_is_an_error_naming_it(tmp_path: Path) -> None:
    """Snapshots are fsynced before they are renamed into place, so only damage cuts one
    short; the error says what happened, where, as the WAL's do."""
    with filled(tmp_path) as storage:
        storage.save_snapshot(snap(10, 1), data_file(snapshot_data(snap(10, 1))))
    path = tmp_path / "snap" / f"{1:016x}-{10:016x}.snap"
    whole = path.read_bytes()
    for size in range(len(whole)):
        path.write_bytes(whole[:size])
        with pytest.raises(StorageCorruptedError) as err:
            Storage.open(tmp_path)
        assert err.value.path == path and str(path) in str(err.value)
        assert any(
            says in err.value.reason
            for says in (
                "too short for a snapshot",
                f"the file is {size} bytes and ends inside its header: cut short",
                f"the file is {size} bytes but its header describes {len(whole)}: cut short",
            )
        ), err.value.reason
    path.write_bytes(whole)
    with Storage.open(tmp_path) as storage:
        assert read_snapshot(storage) == (snap(10, 1), snapshot_data(snap(10, 1)))


# -- compactions whose data the state machine holds (Storage.compact) ---------------------


def test_compact_records_the_metadata_only_and_a_reopen_finds_it(tmp_path: Path) -> None:
    """The state machine keeps its own data durably: a compaction copies none of it, and the
    snapshot still says where the log was compacted to and in which configuration."""
    conf = ConfState((NodeId("a"), NodeId("b")), (NodeId("d"),), ((NodeId("d"), 7),))
    meta = SnapshotMeta(LogIndex(10), Term(1), conf)
    with filled(tmp_path) as storage:
        storage.compact(meta)
        assert storage.snapshot_held_by_state()
        assert storage.open_snapshot() is None  # no data to read: it is the state's
        assert storage.first_index() == 11
    (name,) = snap_files(tmp_path)
    assert (tmp_path / "snap" / name).stat().st_size < 100
    with Storage.open(tmp_path) as storage:
        state = storage.initial_state()
        assert state.snapshot == meta
        assert [e.index for e in state.entries] == list(range(11, 21))
        assert storage.snapshot_held_by_state()
        # an install from the leader brings data again
        storage.install_snapshot(snap(30, 2), data_file(b"thirty"))
        assert not storage.snapshot_held_by_state()
        assert read_snapshot(storage) == (snap(30, 2), b"thirty")


def test_compact_follows_the_rules_of_save_snapshot(tmp_path: Path) -> None:
    with filled(tmp_path) as storage:
        storage.compact(snap(10, 1))
        with pytest.raises(StorageMisuseError, match="not after"):
            storage.compact(snap(10, 1))
        with pytest.raises(StorageMisuseError, match="log ends at 20"):
            storage.compact(snap(21, 1))
        with pytest.raises(StorageMisuseError, match="term"):
            storage.compact(snap(15, 2))


def test_a_crash_inside_compact_leaves_the_old_snapshot_or_the_new_one() -> None:
    assert _crash_inside("compact") == {"old", "new"}


_CRC_BYTES, _LENGTH_BYTES = 4, 8  # a snapshot file's trailer, and its data length field


def _rewrite_held(path: Path, *, version: int, flags: int, data: bytes) -> None:
    """Rewrite a held snapshot file (no data) with another version, flags and data, under a
    checksum that holds: only the format's own rules can refuse it."""
    raw = path.read_bytes()
    head = bytearray(raw[: len(raw) - _CRC_BYTES - _LENGTH_BYTES])  # no data: length, crc
    struct.pack_into("<II", head, 8, version, flags)
    body = bytes(head) + struct.pack("<Q", len(data)) + data
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))


@pytest.mark.parametrize(
    "version, flags, data, reason",
    [
        (6, 2, b"x", "held by the state machine has no data"),
        (5, 2, b"", "unknown snapshot flags"),
        (6, 3, b"", "unknown snapshot flags"),
    ],
)
def test_a_held_snapshot_that_breaks_its_format_is_an_error_naming_it(
    tmp_path: Path, version: int, flags: int, data: bytes, reason: str
) -> None:
    with filled(tmp_path) as storage:
        storage.compact(snap(10, 1))
    path = tmp_path / "snap" / f"{1:016x}-{10:016x}.snap"
    _rewrite_held(path, version=version, flags=flags, data=data)
    with pytest.raises(StorageCorruptedError, match=reason) as err:
        Storage.open(tmp_path)
    assert err.value.path == path
