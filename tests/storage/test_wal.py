"""The write-ahead log: torn tails, corruption, rotation, compaction, group commit, errors.

DESIGN.md: "A bad record is a torn tail only if no valid record follows it (it is then cut
back); anything else is corruption and stops the node with a clear error, never silent loss."
Since a power cut may write an unsynced batch's pages in any order (TRAPS.md), "follows" is
read at the grain of what fsync makes durable: damage is a torn tail when no whole batch (closed
by its BATCH_END, checksum over the batch intact) follows it, and corruption when one does.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import pytest

from node.raft.types import LogIndex, Term
from node.storage import (
    CompactedError,
    Storage,
    StorageClosedError,
    StorageCorruptedError,
    StorageIOError,
    StorageMisuseError,
    UnavailableError,
)
from node.storage import files as files_module
from node.storage.errors import StorageFormatError
from node.storage.records import (
    SEGMENT_HEADER_SIZE,
    BatchEnd,
    Decoded,
    decode_at,
    encode_record,
)
from tests.storage.crashfs import CrashFileSystem
from tests.storage.workload import (
    DATA_DIR,
    Model,
    State,
    data_file,
    entry,
    hard,
    open_storage,
    read_snapshot,
    run_steps,
    snap,
    workload,
)

WAL_DIR = DATA_DIR / "wal"


def build(steps_done: int | None = None) -> tuple[CrashFileSystem, Model]:
    """The workload's first `steps_done` steps, stored and closed (so all of it is durable)."""
    steps = workload()[:steps_done]
    fs = CrashFileSystem()
    run_steps(open_storage(fs), steps, fs, lambda _: None).close()
    return fs, Model.of(steps)


def segments(fs: CrashFileSystem) -> list[Path]:
    return [WAL_DIR / name for name in fs.listdir(WAL_DIR) if name.endswith(".wal")]


def record_spans(buf: bytes) -> list[tuple[int, int]]:
    """(start, end) of every record of a well-formed segment."""
    spans = []
    offset = SEGMENT_HEADER_SIZE
    while offset < len(buf):
        decoded = decode_at(buf, offset)
        assert isinstance(decoded, Decoded)
        spans.append((offset, decoded.end))
        offset = decoded.end
    return spans


def batch_spans(buf: bytes) -> list[list[tuple[int, int]]]:
    """The record spans of a well-formed segment, grouped by batch (each ends in its
    BATCH_END)."""
    batches: list[list[tuple[int, int]]] = [[]]
    for start, end in record_spans(buf):
        batches[-1].append((start, end))
        decoded = decode_at(buf, start)
        if isinstance(decoded, Decoded) and isinstance(decoded.record, BatchEnd):
            batches.append([])
    assert batches[-1] == [], "a closed segment ends with a whole batch"
    return batches[:-1]


def with_version(buf: bytes, version: int) -> bytes:
    """A segment's bytes with its header rewritten to claim another format version."""
    head = bytearray(buf[: SEGMENT_HEADER_SIZE - 4])
    head[8:12] = version.to_bytes(4, "little")
    return bytes(head) + zlib.crc32(head).to_bytes(4, "little") + buf[SEGMENT_HEADER_SIZE:]


def damaged(fs: CrashFileSystem, path: Path, data: bytes) -> CrashFileSystem:
    twin = fs.clone()
    twin.put_bytes(path, data)
    return twin


def flip(data: bytes, offset: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 1 << (offset % 8)
    return bytes(changed)


# -- torn tails ---------------------------------------------------------------------------


def position_of(state: State, model: Model, since: int) -> int | None:
    """The first model state at or after `since` that `state` is, or stands for.

    Standing for: the truncation took the snapshot marker that let older segments (and their
    entries) be deleted. The snapshot file still covers them, so the best state left is an
    earlier state's hard state and log, with that snapshot in place of the deleted entries.
    """
    snapshots = {s.snapshot for s in model.states}
    for position in range(since, len(model.states)):
        candidate = model.states[position]
        if state == candidate:
            return position
        if state.snapshot in snapshots and state.snapshot is not None:
            after = tuple(e for e in candidate.entries if e.index > state.snapshot.index)
            covered = candidate.snapshot is None or candidate.snapshot.index <= state.snapshot.index
            if covered and (candidate.hard_state, after) == (state.hard_state, state.entries):
                return position
    return None


@pytest.mark.parametrize("steps_done", [12, 17, 33, 36])
def test_truncating_the_newest_segment_at_every_byte_leaves_a_prefix(steps_done: int) -> None:
    """However short the newest segment is cut, reopening gives a state the log went through,
    the longer the cut the later the state, and the whole file gives the last state."""
    fs, model = build(steps_done)
    newest = segments(fs)[-1]
    assert len(segments(fs)) >= 2
    full = fs.durable_bytes(newest)
    position = 0
    for size in range(len(full) + 1):
        state = State.of(open_storage(damaged(fs, newest, full[:size])))
        found = position_of(state, model, position)
        assert found is not None, f"cut to {size} bytes: {state.describe()} is not a later state"
        position = found
    assert state == model.states[-1]


def test_truncating_the_only_segment_keeps_a_prefix_after_its_head() -> None:
    """After a snapshot deleted every older segment, cutting the newest one anywhere past its
    head records keeps a prefix of the log; inside them the hard state is gone: an error."""
    fs, model = build(22)  # just after SaveSnapshot(15) removed the older segments
    assert len(segments(fs)) == 1
    (only,) = segments(fs)
    full = fs.durable_bytes(only)
    head_end = record_spans(full)[1][1]
    final = model.states[-1]
    for size in range(len(full) + 1):
        twin = damaged(fs, only, full[:size])
        if size < head_end:
            with pytest.raises(
                StorageCorruptedError, match="hard state cannot be recovered"
            ) as err:
                open_storage(twin)
            assert err.value.path == only
            continue
        state = State.of(open_storage(twin))
        assert state.hard_state == final.hard_state
        assert state.snapshot == final.snapshot
        assert state.entries == final.entries[: len(state.entries)]


def test_a_torn_tail_is_cut_back_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Storage.open(tmp_path) as storage:
        storage.append([entry(1, i) for i in range(1, 6)])
        storage.set_hard_state(hard(1, "a", 3))
        storage.sync()
    (segment,) = sorted((tmp_path / "wal").iterdir())
    good = segment.read_bytes()
    # A new batch never closed: a copy of the last entry's record, then half of one.
    start, end = batch_spans(good)[-1][-3]  # [entries 1-5, hard state, batch end]
    record = good[start:end]
    segment.write_bytes(good + record + record[: len(record) // 2])
    caplog.set_level(logging.WARNING)
    with Storage.open(tmp_path) as storage:
        state = storage.initial_state()
        assert [e.index for e in state.entries] == [1, 2, 3, 4, 5]
        assert state.hard_state == hard(1, "a", 3)
    assert "cut back a torn tail" in caplog.text
    assert str(segment) in caplog.text
    # The copied record was whole and valid, so only the half record went, and what was kept
    # of the unfinished batch got the BATCH_END the crash kept it from.
    closed = segment.read_bytes()
    assert closed[: len(good) + len(record)] == good + record
    assert closed[len(good) + len(record) :] == encode_record(
        BatchEnd(len(record), zlib.crc32(record))
    )


def test_a_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    """What a file system that extended the file but lost the data blocks leaves behind."""
    with Storage.open(tmp_path) as storage:
        storage.append([entry(1, 1), entry(1, 2)])
    (segment,) = sorted((tmp_path / "wal").iterdir())
    segment.write_bytes(segment.read_bytes() + bytes(4096))
    with Storage.open(tmp_path) as storage:
        assert storage.last_index() == 2
        storage.append([entry(1, 3)])
    with Storage.open(tmp_path) as storage:
        assert [e.index for e in storage.entries(1, 4)] == [1, 2, 3]


def test_truncation_on_real_files_at_many_offsets(tmp_path: Path) -> None:
    """The same on the real file system, through its truncate and fsync."""
    source = tmp_path / "source"
    with Storage.open(source, segment_bytes=400) as storage:
        for i in range(1, 21):
            storage.append([entry(1, i)])
            storage.set_hard_state(hard(1, "a", i - 1))
            storage.sync()
    newest = sorted((source / "wal").iterdir())[-1]
    full = newest.read_bytes()
    for size in range(0, len(full) + 1, 7):
        newest.write_bytes(full[:size])
        with Storage.open(source, segment_bytes=400) as storage:
            state = storage.initial_state()
            last = state.entries[-1].index
            assert [e.index for e in state.entries] == list(range(1, last + 1))
            assert state.hard_state.commit in (last - 1, last - 2)  # written just after it
        for leftover in sorted((source / "wal").iterdir()):
            if leftover.name > newest.name:
                leftover.unlink()  # the segment recovery started; put the original back


# -- corruption ---------------------------------------------------------------------------


def test_a_flipped_bit_before_a_whole_batch_is_corruption_at_that_record() -> None:
    """Every byte of every record that has a whole batch after it (or is in a segment that is
    not the newest, which was synced before the next one was cut)."""
    fs, _ = build()
    checked = 0
    for path in segments(fs):
        buf = fs.durable_bytes(path)
        batches = batch_spans(buf)
        newest = path == segments(fs)[-1]
        for batch in batches[:-1] if newest else batches:
            for start, end in batch:
                for offset in range(start, end):
                    with pytest.raises(StorageCorruptedError) as err:
                        open_storage(damaged(fs, path, flip(buf, offset)))
                    assert (err.value.path, err.value.offset) == (path, start)
                    assert str(path) in str(err.value) and f"offset {start}" in str(err.value)
                    checked += 1
    assert checked > 500


def test_a_flipped_bit_in_the_last_batch_is_a_torn_tail(caplog: pytest.LogCaptureFixture) -> None:
    """The last batch's fsync may not have finished: with its pages written in any order, a
    damaged last batch is what a power cut leaves, even with its BATCH_END on disk. Reopening
    keeps the records before the damage, loses nothing the sync before it made durable, and
    warns."""
    fs, model = build()
    path = segments(fs)[-1]
    buf = fs.durable_bytes(path)
    lo, hi = model.allowed(len(workload()) - 1)  # a crash inside the last step's sync
    checked = 0
    caplog.set_level(logging.WARNING)
    for start, end in batch_spans(buf)[-1]:
        for offset in range(start, end):
            caplog.clear()
            state = State.of(open_storage(damaged(fs, path, flip(buf, offset))))
            assert state in model.states[lo : hi + 1], f"flip at {offset}: {state.describe()}"
            assert "cut back a torn tail" in caplog.text and str(path) in caplog.text
            checked += 1
    assert checked > 40


def unsynced_batch_with_a_hole() -> tuple[CrashFileSystem, Path, int]:
    """Entries 1-3 synced, then 4-10 written as one batch that a power cut tore out of order:
    entry 6's record is zeros, the records after it reached the disk. Returns the file system,
    the segment and the offset of the hole."""
    fs = CrashFileSystem()
    storage = Storage.open(DATA_DIR, fs=fs)
    storage.append([entry(1, i) for i in range(1, 4)])
    storage.sync()
    (path,) = segments(fs)
    storage.append([entry(1, i) for i in range(4, 11)])
    buf = bytearray(fs.read_bytes(path))
    hole_start, hole_end = record_spans(bytes(buf))[-5]  # entry 6 of 4..10: no batch end yet
    buf[hole_start:hole_end] = bytes(hole_end - hole_start)
    fs.crash_process()  # the writer is gone ...
    fs.put_bytes(path, bytes(buf))  # ... and this is what the disk holds after the power cut
    return fs, path, hole_start


def test_zeros_inside_the_unsynced_batch_before_valid_records_are_a_torn_tail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """TRAPS.md, "A power cut tears out of order": nothing synced was lost, so the node must
    start, with what came before the hole."""
    fs, path, hole = unsynced_batch_with_a_hole()
    caplog.set_level(logging.WARNING)
    storage = Storage.open(DATA_DIR, fs=fs)
    assert [e.index for e in storage.initial_state().entries] == [1, 2, 3, 4, 5]
    assert f"{path}: cut back a torn tail at byte offset {hole}" in caplog.text
    storage.append([entry(2, 6)])
    storage.sync()
    fs.crash()
    with Storage.open(DATA_DIR, fs=fs) as reopened:
        assert [(e.index, e.term) for e in reopened.initial_state().entries] == [
            *((i, 1) for i in range(1, 6)),
            (6, 2),
        ]


def test_damage_followed_by_a_whole_later_batch_is_corruption() -> None:
    """A whole batch after the damage was written after the damaged one's fsync returned: the
    damaged bytes had been synced, and dropping them would lose acknowledged entries."""
    fs, path, hole = unsynced_batch_with_a_hole()
    record = encode_record(entry(2, 6))
    later = record + encode_record(BatchEnd(len(record), zlib.crc32(record)))
    fs.put_bytes(path, fs.durable_bytes(path) + later)
    with pytest.raises(StorageCorruptedError, match="a later batch, synced after this one") as err:
        open_storage(fs)
    assert (err.value.path, err.value.offset) == (path, hole)


def test_a_flipped_bit_in_a_segment_header_is_corruption() -> None:
    fs, _ = build()
    for path in segments(fs):
        buf = fs.durable_bytes(path)
        for offset in range(SEGMENT_HEADER_SIZE):
            with pytest.raises(StorageCorruptedError) as err:
                open_storage(damaged(fs, path, flip(buf, offset)))
            assert err.value.path == path


def test_bad_magic_is_corruption() -> None:
    fs, _ = build()
    path = segments(fs)[-1]
    buf = fs.durable_bytes(path)
    with pytest.raises(StorageCorruptedError, match="bad magic number") as err:
        open_storage(damaged(fs, path, b"NOTAWAL!" + buf[8:]))
    assert (err.value.path, err.value.offset) == (path, 0)


def test_a_data_dir_of_an_older_format_is_refused_naming_the_way_out() -> None:
    """Version 1 (no batch framing; its data dirs may hold plaintext tokens) is not read."""
    fs, _ = build()
    path = segments(fs)[0]
    with pytest.raises(StorageFormatError, match="version 1") as err:
        open_storage(damaged(fs, path, with_version(fs.durable_bytes(path), 1)))
    assert err.value.path == path
    assert "older chatbooth" in str(err.value)
    assert "python -m supervisor up --fresh" in str(err.value)


def test_a_newer_format_version_is_refused() -> None:
    fs, _ = build()
    path = segments(fs)[0]
    with pytest.raises(StorageFormatError, match="version 9") as err:
        open_storage(damaged(fs, path, with_version(fs.durable_bytes(path), 9)))
    assert "newer chatbooth" in str(err.value)


def test_a_flipped_bit_in_the_version_is_corruption_not_an_old_format() -> None:
    fs, _ = build()
    path = segments(fs)[0]
    buf = bytearray(fs.durable_bytes(path))
    buf[8] ^= 3
    with pytest.raises(StorageCorruptedError, match="header checksum") as err:
        open_storage(damaged(fs, path, bytes(buf)))
    assert err.value.path == path


def test_the_last_record_of_an_older_segment_is_never_a_torn_tail() -> None:
    """Older segments were synced before the next one was cut: damage there is corruption."""
    fs, _ = build()
    path = segments(fs)[0]
    buf = fs.durable_bytes(path)
    start = record_spans(buf)[-1][0]
    with pytest.raises(StorageCorruptedError, match="not the newest") as err:
        open_storage(damaged(fs, path, buf[:-1]))
    assert (err.value.path, err.value.offset) == (path, start)


def test_a_missing_segment_is_corruption() -> None:
    fs, _ = build()
    _first, middle, last = segments(fs)
    fs.remove(middle)
    with pytest.raises(StorageCorruptedError, match="segments are missing") as err:
        open_storage(fs)
    assert err.value.path == last


def test_a_lost_log_beside_snapshots_is_corruption() -> None:
    fs, _ = build()
    for path in segments(fs):
        fs.remove(path)
    for _ in range(2):  # and still on the second try: the first must not paper over it
        with pytest.raises(StorageCorruptedError, match="the log and the hard state were lost"):
            open_storage(fs)


# -- rotation, compaction, overwrite -------------------------------------------------------


def test_an_overwritten_suffix_survives_reopen(tmp_path: Path) -> None:
    with Storage.open(tmp_path) as storage:
        storage.append([entry(1, i) for i in range(1, 8)])
        storage.append([entry(2, 5, b"new five"), entry(2, 6, b"new six")])
        storage.sync()
    with Storage.open(tmp_path) as storage:
        assert storage.initial_state().entries == [
            *(entry(1, i) for i in range(1, 5)),
            entry(2, 5, b"new five"),
            entry(2, 6, b"new six"),
        ]
        storage.append([entry(3, 3)])
    with Storage.open(tmp_path) as storage:
        assert [(e.index, e.term) for e in storage.initial_state().entries] == [
            (1, 1),
            (2, 1),
            (3, 3),
        ]


def test_segments_rotate_and_a_snapshot_deletes_the_covered_ones(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    with Storage.open(tmp_path, segment_bytes=1024) as storage:
        for i in range(1, 201):
            storage.append([entry(1, i)])
        storage.sync()
        names = sorted(p.name for p in wal_dir.iterdir())
        assert len(names) >= 6
        firsts = [int(name.split("-")[1].split(".")[0], 16) for name in names]
        assert firsts == sorted(firsts) and firsts[0] == 1

        storage.save_snapshot(snap(150, 1), data_file(b"state at 150"))
        remaining = sorted(p.name for p in wal_dir.iterdir())
        remaining_firsts = [int(name.split("-")[1].split(".")[0], 16) for name in remaining]
        # Every segment whose entries all lie at or below 150 went; the one holding 150 stays.
        assert remaining_firsts == [
            f for f in firsts if f > 150 or f == max(x for x in firsts if x <= 150)
        ]
        assert len(remaining) < len(names)
        with pytest.raises(CompactedError):
            storage.entries(100, 110)
    with Storage.open(tmp_path, segment_bytes=1024) as storage:
        state = storage.initial_state()
        assert state.snapshot == snap(150, 1)
        assert [e.index for e in state.entries] == list(range(151, 201))
        assert read_snapshot(storage) == (snap(150, 1), b"state at 150")


def test_sync_is_one_fsync_for_everything_written() -> None:
    """Group commit: many appends and a hard state, then one fsync."""
    fs = CrashFileSystem()
    storage = Storage.open(DATA_DIR, fs=fs)
    before = len(fs.log)
    for i in range(1, 51):
        storage.append([entry(1, i)])
    storage.set_hard_state(hard(1, "a", 10))
    assert not any(op.startswith("fsync") for op in fs.log[before:])
    storage.sync()
    assert [op for op in fs.log[before:] if op.startswith("fsync")] == [f"fsync {segments(fs)[-1]}"]
    storage.sync()  # nothing new: nothing to do
    assert sum(op.startswith("fsync") for op in fs.log[before:]) == 1


def test_sync_flushes_before_it_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the real file system, fsync must see every byte written through Python's buffer."""
    seen: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        seen.append(os.fstat(fd).st_size)
        real_fsync(fd)

    storage = Storage.open(tmp_path)
    monkeypatch.setattr("node.storage.files.os.fsync", recording_fsync)
    storage.append([entry(1, i, b"x" * 10) for i in range(1, 4)])
    storage.sync()
    (segment,) = (tmp_path / "wal").iterdir()
    assert seen == [segment.stat().st_size]
    storage.close()


# -- the contract -------------------------------------------------------------------------


def test_breaking_the_contract_raises_misuse() -> None:
    storage = Storage.open(DATA_DIR, fs=CrashFileSystem())
    storage.append([entry(1, i) for i in range(1, 11)])
    with pytest.raises(StorageMisuseError, match="ends at 10"):
        storage.append([entry(1, 12)])
    with pytest.raises(StorageMisuseError, match="not contiguous"):
        storage.append([entry(1, 11), entry(1, 13)])
    with pytest.raises(StorageMisuseError, match="ends at 10"):
        storage.save_snapshot(snap(11, 1), data_file(b""))
    with pytest.raises(StorageMisuseError, match="term 2"):
        storage.save_snapshot(snap(5, 2), data_file(b""))
    storage.save_snapshot(snap(5, 1), data_file(b"five"))
    with pytest.raises(StorageMisuseError, match="compacted through 5"):
        storage.append([entry(2, 5)])
    with pytest.raises(StorageMisuseError, match="not after the current one"):
        storage.save_snapshot(snap(5, 1), data_file(b""))
    with pytest.raises(StorageMisuseError, match="not after the current one"):
        storage.install_snapshot(snap(4, 1), data_file(b""))
    with pytest.raises(CompactedError):
        storage.entries(5, 7)
    with pytest.raises(UnavailableError):
        storage.entries(6, 12)
    with pytest.raises(StorageMisuseError):
        storage.entries(8, 7)
    assert storage.term(5) == Term(1) and storage.first_index() == LogIndex(6)
    assert [e.index for e in storage.entries(6, 11)] == [6, 7, 8, 9, 10]


class FailingSyncFileSystem(CrashFileSystem):
    """fsync fails (EIO) once `failing` is set."""

    failing = False

    def open_append(self, path: Path) -> files_module.AppendFile:
        handle = super().open_append(path)
        fs = self

        class Failing:
            def write(self, data: bytes) -> None:
                handle.write(data)

            def sync(self) -> None:
                if fs.failing:
                    raise OSError(5, "Input/output error")
                handle.sync()

            def truncate(self, size: int) -> None:
                handle.truncate(size)

            def close(self) -> None:
                handle.close()

        return Failing()


def test_a_failed_fsync_refuses_every_later_write() -> None:
    """After fsync fails nothing is known about the disk (the page cache may have dropped the
    data): the storage must not carry on as if it were written."""
    fs = FailingSyncFileSystem()
    storage = Storage.open(DATA_DIR, fs=fs)
    storage.append([entry(1, 1)])
    storage.sync()
    fs.failing = True
    storage.append([entry(1, 2)])
    with pytest.raises(StorageIOError, match="Input/output error"):
        storage.sync()
    fs.failing = False
    with pytest.raises(StorageIOError, match="reopen"):
        storage.append([entry(1, 3)])
    with pytest.raises(StorageIOError):
        storage.sync()
    storage.close()  # releases the lock even so
    fs.crash()
    with Storage.open(DATA_DIR, fs=fs) as reopened:
        assert [e.index for e in reopened.initial_state().entries] == [1]


def test_a_closed_storage_refuses_calls() -> None:
    storage = Storage.open(DATA_DIR, fs=CrashFileSystem())
    storage.close()
    storage.close()  # idempotent
    with pytest.raises(StorageClosedError):
        storage.append([entry(1, 1)])
    with pytest.raises(StorageClosedError):
        storage.initial_state()
