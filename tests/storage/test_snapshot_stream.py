"""Snapshots as files, streamed: a snapshot (a SQLite database of up to hundreds of MB) is never
held whole in memory, neither stored, nor verified at open, nor read back; its checksum is
verified on the way; the spool directory is where temporary snapshot files live."""

from __future__ import annotations

import os
import threading
import tracemalloc
import zlib
from pathlib import Path

import pytest

from node.raft.types import ConfState, LogIndex, NodeId, SnapshotMeta, Term
from node.storage import (
    RealFileSystem,
    Storage,
    StorageCorruptedError,
    StorageFormatError,
    StorageMisuseError,
)
from node.storage.files import ReadFile
from node.storage.snapshots import CHUNK_BYTES
from tests.storage.crashfs import CrashFileSystem
from tests.storage.workload import DATA_DIR, data_file, entry, read_snapshot, snap


class StreamingOnly(RealFileSystem):
    """The real file system, except that reading a snapshot file whole is a test failure,
    and every read of one through open_read is recorded."""

    def __init__(self) -> None:
        self.snapshot_reads: list[int] = []

    def read_bytes(self, path: Path) -> bytes:
        if ".snap" in path.name:
            raise AssertionError(f"{path} was read whole")
        return super().read_bytes(path)

    def open_read(self, path: Path) -> ReadFile:
        inner = super().open_read(path)
        if ".snap" not in path.name:
            return inner
        return _Recording(inner, self.snapshot_reads)


class _Recording:
    def __init__(self, inner: ReadFile, reads: list[int]) -> None:
        self._inner = inner
        self._reads = reads

    def read(self, n: int) -> bytes:
        piece = self._inner.read(n)
        self._reads.append(len(piece))
        return piece

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def close(self) -> None:
        self._inner.close()


def filled(data_dir: Path, fs: RealFileSystem | None = None, last: int = 30) -> Storage:
    storage = Storage.open(data_dir, fs=fs)
    storage.append([entry(1, i) for i in range(1, last + 1)])
    storage.sync()
    return storage


def source_file(directory: Path, data: bytes, name: str = "snapshot.db") -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def snap_path(data_dir: Path, meta: SnapshotMeta) -> Path:
    return data_dir / "snap" / f"{meta.term:016x}-{meta.index:016x}.snap"


def test_a_snapshot_is_stored_verified_and_read_back_in_chunks(tmp_path: Path) -> None:
    """Save, reopen (which verifies the checksum), read and copy: never read_bytes of the
    snapshot file, never a read larger than a chunk."""
    data = os.urandom(CHUNK_BYTES * 7 // 2)
    fs = StreamingOnly()
    with filled(tmp_path / "node", fs) as storage:
        source = source_file(tmp_path, data)
        storage.save_snapshot(snap(20, 1), source)
        assert source.read_bytes() == data  # left in place: the caller deletes it
    fs.snapshot_reads.clear()
    with Storage.open(tmp_path / "node", fs=fs) as storage:
        assert storage.initial_state().snapshot == snap(20, 1)
        assert sum(fs.snapshot_reads) >= len(data)  # select() read it all, in pieces
        reader = storage.open_snapshot()
        assert reader is not None
        with reader:
            assert (reader.meta, reader.size) == (snap(20, 1), len(data))
            copy = tmp_path / "copy.db"
            reader.copy_to(copy)
            assert copy.read_bytes() == data
            pieces = []
            while piece := reader.read(CHUNK_BYTES):
                pieces.append(piece)
            assert b"".join(pieces) == data
            assert reader.read(CHUNK_BYTES) == b""  # and stays at the end
    assert max(fs.snapshot_reads) <= CHUNK_BYTES


def test_storing_and_reading_a_large_snapshot_takes_a_few_chunks_of_memory(
    tmp_path: Path,
) -> None:
    """tracemalloc counts every bytes object: a 32 MiB snapshot saved, verified at open,
    copied and read must peak at a few chunks, not at the snapshot's size."""
    data_dir = tmp_path / "node"
    source = source_file(tmp_path, os.urandom(CHUNK_BYTES * 32))
    with filled(data_dir):
        pass
    tracemalloc.start()
    try:
        with Storage.open(data_dir) as storage:
            storage.save_snapshot(snap(20, 1), source)
        with Storage.open(data_dir) as storage:
            reader = storage.open_snapshot()
            assert reader is not None
            with reader:
                reader.copy_to(tmp_path / "copy.db")
                while reader.read(CHUNK_BYTES):
                    pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * CHUNK_BYTES, f"peak {peak} bytes"
    assert (tmp_path / "copy.db").stat().st_size == source.stat().st_size


def test_a_damaged_snapshot_fails_at_its_last_read_and_its_copy_is_removed(
    tmp_path: Path,
) -> None:
    """The checksum covers the whole file, so it is known at the end: the read that would
    hand out the last byte raises instead, naming the file (a sender never streams rotten
    bytes to the end), and so does copy_to, which leaves no copy behind."""
    data = os.urandom(CHUNK_BYTES * 5 // 2)
    with filled(tmp_path / "node") as storage:
        storage.save_snapshot(snap(20, 1), source_file(tmp_path, data))
        path = snap_path(tmp_path / "node", snap(20, 1))
        flip(path, 100 + CHUNK_BYTES)  # rot after the save, in the second chunk's data
        reader = storage.open_snapshot()
        assert reader is not None
        with reader:
            assert len(reader.read(CHUNK_BYTES)) == CHUNK_BYTES
            assert len(reader.read(CHUNK_BYTES)) == CHUNK_BYTES  # not known to be bad yet
            with pytest.raises(StorageCorruptedError, match="checksum mismatch") as err:
                reader.read(CHUNK_BYTES)
            assert err.value.path == path
            with pytest.raises(StorageCorruptedError, match="checksum mismatch"):
                reader.read(CHUNK_BYTES)  # and it keeps saying so
            copy = tmp_path / "copy.db"
            with pytest.raises(StorageCorruptedError, match="checksum mismatch") as err:
                reader.copy_to(copy)
            assert err.value.path == path and str(path) in str(err.value)
            assert not copy.exists()


def test_a_snapshot_file_cut_short_after_open_is_an_error_while_reading(tmp_path: Path) -> None:
    data = os.urandom(256 * 1024)  # past what the open file has buffered
    with filled(tmp_path / "node") as storage:
        storage.save_snapshot(snap(20, 1), source_file(tmp_path, data))
        path = snap_path(tmp_path / "node", snap(20, 1))
        reader = storage.open_snapshot()
        assert reader is not None
        with reader:
            os.truncate(path, path.stat().st_size - len(data) // 2)
            with pytest.raises(StorageCorruptedError, match="cut short") as err:
                reader.read(len(data))
            assert err.value.path == path


def test_a_reader_outlives_the_prune_of_its_file_and_reads_from_another_thread(
    tmp_path: Path,
) -> None:
    """It owns its file handle: the storage goes on (newer snapshots prune the file) while
    another thread still reads the old one to the end."""
    data = os.urandom(CHUNK_BYTES + 123)
    with filled(tmp_path / "node") as storage:
        storage.save_snapshot(snap(10, 1), source_file(tmp_path, data))
        reader = storage.open_snapshot()
        assert reader is not None
        for index in (15, 20, 25):
            storage.save_snapshot(snap(index, 1), data_file(f"state at {index}".encode()))
        assert not snap_path(tmp_path / "node", snap(10, 1)).exists()
        pieces: list[bytes] = []

        def drain() -> None:
            with reader:
                while piece := reader.read(1000):
                    pieces.append(piece)

        thread = threading.Thread(target=drain)
        thread.start()
        storage.append([entry(1, 31)])
        storage.sync()
        thread.join(timeout=30)
        assert b"".join(pieces) == data
        assert read_snapshot(storage) == (snap(25, 1), b"state at 25")


def test_open_snapshot_is_none_without_a_snapshot(tmp_path: Path) -> None:
    with filled(tmp_path) as storage:
        assert storage.open_snapshot() is None


def test_the_spool_directory_is_made_and_emptied_at_open(tmp_path: Path) -> None:
    with filled(tmp_path / "node") as storage:
        spool = storage.spool_dir
        assert spool == tmp_path / "node" / "spool" and spool.is_dir()
        for name in ("snapshot-x1.part", "copy.db", "copy.db-wal"):
            (spool / name).write_bytes(b"left by a killed transfer")
        storage.save_snapshot(snap(10, 1), source_file(spool, b"from the spool"))
        assert read_snapshot(storage) == (snap(10, 1), b"from the spool")
    with Storage.open(tmp_path / "node") as storage:
        assert list(storage.spool_dir.iterdir()) == []
        assert read_snapshot(storage) == (snap(10, 1), b"from the spool")


def test_the_spool_directory_goes_through_the_file_layer() -> None:
    """Under the crash-model file system too: made durable at open like the others."""
    fs = CrashFileSystem()
    with Storage.open(DATA_DIR, fs=fs) as storage:
        assert fs.exists(storage.spool_dir)
    fs.crash()
    assert fs.exists(DATA_DIR / "spool")


def test_a_missing_source_is_misuse_and_the_storage_goes_on(tmp_path: Path) -> None:
    with filled(tmp_path / "node") as storage:
        with pytest.raises(StorageMisuseError, match="no snapshot data file at"):
            storage.save_snapshot(snap(10, 1), tmp_path / "absent.db")
        storage.save_snapshot(snap(10, 1), source_file(tmp_path, b"ten"))
        assert read_snapshot(storage) == (snap(10, 1), b"ten")


def test_a_snapshot_file_of_a_format_before_learners_is_refused(tmp_path: Path) -> None:
    """Format 3 had no learners (and 2 held JSON): an older chatbooth's."""
    with filled(tmp_path / "node") as storage:
        storage.save_snapshot(snap(10, 1), source_file(tmp_path, b"ten"))
    path = snap_path(tmp_path / "node", snap(10, 1))
    with open(path, "r+b") as f:
        f.seek(8)
        f.write((3).to_bytes(4, "little"))
    with pytest.raises(StorageFormatError, match="version 3") as err:
        Storage.open(tmp_path / "node")
    assert err.value.path == path


def _as_format_4(path: Path) -> None:
    """Rewrite a format-5 snapshot file as format 4 wrote it: no incarnation per member."""
    raw = path.read_bytes()
    head = bytearray(raw[:36])
    head[8:12] = (4).to_bytes(4, "little")
    count = int.from_bytes(raw[32:36], "little")
    out, offset = bytes(head), 36
    for _ in range(count):
        role, incarnation = raw[offset], int.from_bytes(raw[offset + 1 : offset + 9], "little")
        assert incarnation == 0, "format 4 cannot hold an incarnation"
        length = int.from_bytes(raw[offset + 9 : offset + 11], "little")
        out += bytes([role]) + raw[offset + 9 : offset + 11 + length]
        offset += 11 + length
    out += raw[offset:-4]
    path.write_bytes(out + zlib.crc32(out).to_bytes(4, "little"))


def test_a_snapshot_of_format_4_is_read_with_every_member_an_initial_one(tmp_path: Path) -> None:
    """Format 5 added incarnations; a format-4 file (learners, no incarnations) is read as
    every member's incarnation being 0, as it was then, and its data streams as before."""
    meta = SnapshotMeta(
        LogIndex(10), Term(1), ConfState((NodeId("a"), NodeId("b")), (NodeId("d"),))
    )
    with filled(tmp_path / "node") as storage:
        storage.save_snapshot(meta, source_file(tmp_path, b"ten"))
    _as_format_4(snap_path(tmp_path / "node", meta))
    with Storage.open(tmp_path / "node") as storage:
        assert storage.initial_state().snapshot == meta
        assert read_snapshot(storage) == (meta, b"ten")


def test_a_snapshot_keeps_the_members_incarnations(tmp_path: Path) -> None:
    conf = ConfState(
        (NodeId("a"), NodeId("d")), (NodeId("e"),), ((NodeId("d"), 7), (NodeId("e"), 9))
    )
    meta = SnapshotMeta(LogIndex(10), Term(1), conf)
    with filled(tmp_path / "node") as storage:
        storage.save_snapshot(meta, source_file(tmp_path, b"ten"))
    with Storage.open(tmp_path / "node") as storage:
        got = storage.initial_state().snapshot
        assert got is not None and got.conf == conf and got.conf.incarnation(NodeId("d")) == 7
