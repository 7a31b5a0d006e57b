"""Snapshot files: `snap/<term:016x>-<index:016x>.snap`, written atomically, newest two kept.

A file is

    magic (8 bytes) | version u32 | flags u32 | index u64 | term u64 | voter count u32
    | per voter: length u16, UTF-8 name | data length u64 | data | crc32 u32 of all before it

and is written to `<name>.tmp`, fsynced, renamed into place and the directory fsynced, so a
crash leaves the old snapshot or the new one, never a half-written one under a real name (a
torn `.tmp` is removed at open). Only then does the log record it (Storage writes the marker),
so a file the log never recorded is an interrupted save. Flag 1, REPLACES_LOG, marks a snapshot
installed from the leader: the log restarts after it. Nothing here validates the data: the
state machine must (Storage.install_snapshot's `validate`) before the snapshot is stored.

A file whose checksum fails is StorageCorruptedError naming it and the offset, saying whether it
was cut short (its size disagrees with what its header describes) or damaged in place.

Which snapshot is current is decided at open (`select`), from the write-ahead log, as etcd does:
the one its snapshot marker names. A newer file that the log never recorded is a save or an
install that a crash interrupted, and is removed. The log's own snapshot being damaged or
missing is StorageCorruptedError naming the file (falling back to an older one would lose the
entries compacted since), unless a newer valid one exists: then that one is taken, with a
warning, and the flag above says what becomes of the log.

Standard library only; must not import anything from chatbooth beyond node.raft.types and
node.storage.
"""

from __future__ import annotations

import logging
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from node.raft.types import ConfState, LogIndex, NodeId, SnapshotMeta, Term
from node.storage.errors import (
    StorageCorruptedError,
    StorageFormatError,
    StorageIOError,
    StorageMisuseError,
)
from node.storage.files import FileSystem

logger = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"\x89CBSNP\r\n"
FORMAT_VERSION = 2  # 2: the chat state keeps sessions as hashes only
KEEP = 2  # the current snapshot and the one before it

_HEAD = struct.Struct("<8sIIQQI")  # magic, version, flags, index, term, voter count
_REPLACES_LOG = 1
_VOTER = struct.Struct("<H")
_DATA_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_TMP_SUFFIX = ".tmp"


def snapshot_name(term: int, index: int) -> str:
    return f"{term:016x}-{index:016x}.snap"


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    term: int
    index: int
    path: Path

    def key(self) -> tuple[int, int]:
        return self.index, self.term


class SnapshotFiles:
    """The snapshot store of one node: the files in one directory and which one is current."""

    def __init__(self, fs: FileSystem, snap_dir: Path) -> None:
        self._fs = fs
        self._dir = snap_dir
        self._current: SnapshotFile | None = None
        self._current_meta: SnapshotMeta | None = None
        self._current_replaces_log = False

    @classmethod
    def open(cls, fs: FileSystem, snap_dir: Path) -> SnapshotFiles:
        """Open `snap_dir` (which must exist), removing leftovers of interrupted writes."""
        store = cls(fs, snap_dir)
        removed = False
        for name in fs.listdir(snap_dir):
            if name.endswith(".snap" + _TMP_SUFFIX):
                fs.remove(snap_dir / name)  # never renamed into place: never a snapshot
                removed = True
        if removed:
            fs.fsync_dir(snap_dir)
        return store

    def files(self) -> list[SnapshotFile]:
        """The snapshot files present, newest (highest index) first."""
        found: list[SnapshotFile] = []
        for name in self._fs.listdir(self._dir):
            match = _NAME.match(name)
            if match:
                found.append(SnapshotFile(int(match[1], 16), int(match[2], 16), self._dir / name))
            else:
                logger.warning("%s: ignoring %r, which is not a snapshot", self._dir, name)
        found.sort(key=SnapshotFile.key, reverse=True)
        return found

    def select(self, marker_index: int, marker_term: int, needed: int) -> SnapshotMeta | None:
        """Choose the current snapshot for a log compacted to (marker_index, marker_term) and
        missing every entry up to `needed` (>= marker_index; more only if a segment was lost).

        The log's own snapshot if it is valid and covers `needed`, else the oldest valid newer
        one that does (with a warning); None if the log needs no snapshot. Snapshot files newer
        than the choice are removed: no log recorded them. Raises StorageCorruptedError naming
        the file when no valid snapshot serves.
        """
        files = self.files()
        own = [f for f in files if f.key() == (marker_index, marker_term) and f.index >= needed]
        newer = sorted(
            (f for f in files if f.index > marker_index and f.index >= needed),
            key=SnapshotFile.key,
        )
        problems: list[StorageCorruptedError] = []
        chosen: tuple[SnapshotFile, SnapshotMeta, bool] | None = None
        for file in (own + newer) if needed > 0 else []:
            try:
                meta, replaces_log, _ = self._read(file)
            except StorageCorruptedError as exc:
                problems.append(exc)
                continue
            chosen = file, meta, replaces_log
            break
        if needed > 0 and chosen is None:
            if problems:
                first = problems[0]
                raise StorageCorruptedError(
                    first.path,
                    first.offset,
                    f"{first.reason}; the log was compacted to index {needed} and no other "
                    "valid snapshot covers that",
                )
            raise StorageCorruptedError(
                self._dir / snapshot_name(marker_term, marker_index),
                0,
                f"missing: the log was compacted to index {needed} and no snapshot file "
                "covers that",
            )
        for problem in problems:
            logger.warning("%s; using %s instead", problem, chosen[0].path.name if chosen else "")
        self._current = chosen[0] if chosen else None
        self._current_meta = chosen[1] if chosen else None
        self._current_replaces_log = chosen[2] if chosen else False
        self._drop_unrecorded(files)
        return self._current_meta

    def _drop_unrecorded(self, files: list[SnapshotFile]) -> None:
        """Remove the files newer than the current snapshot: no log recorded them."""
        floor = self._current.key() if self._current is not None else (0, 0)
        stale = [f for f in files if f.key() > floor]
        for file in stale:
            logger.warning(
                "%s: removing a snapshot the log never recorded (a crash interrupted storing it)",
                file.path,
            )
            self._fs.remove(file.path)
        if stale:
            self._fs.fsync_dir(self._dir)

    @property
    def directory(self) -> Path:
        return self._dir

    def current_path(self) -> Path | None:
        return None if self._current is None else self._current.path

    def latest(self) -> SnapshotMeta | None:
        """The current snapshot's metadata (None: there is none)."""
        return self._current_meta

    def latest_replaces_log(self) -> bool:
        """Whether the current snapshot was installed from the leader (the log restarts)."""
        return self._current_replaces_log

    def load(self) -> tuple[SnapshotMeta, bytes] | None:
        """The current snapshot, read back and verified."""
        if self._current is None:
            return None
        meta, _, data = self._read(self._current)
        return meta, data

    def save(self, meta: SnapshotMeta, data: bytes, *, replaces_log: bool = False) -> None:
        """Write a snapshot durably and make it current; the caller then prune()s.

        `replaces_log`: installed from the leader, so every stored entry is discarded.
        """
        check_meta(meta)
        file = SnapshotFile(meta.term, meta.index, self._dir / snapshot_name(meta.term, meta.index))
        tmp = file.path.with_name(file.path.name + _TMP_SUFFIX)
        flags = _REPLACES_LOG if replaces_log else 0
        head = _HEAD.pack(
            SNAPSHOT_MAGIC, FORMAT_VERSION, flags, meta.index, meta.term, len(meta.conf.voters)
        )
        for voter in meta.conf.voters:
            name = voter.encode("utf-8")
            head += _VOTER.pack(len(name)) + name
        head += _DATA_LENGTH.pack(len(data))
        crc = zlib.crc32(data, zlib.crc32(head))
        try:
            if self._fs.exists(tmp):
                self._fs.remove(tmp)
            staged = self._fs.open_append(tmp)
            try:
                staged.write(head)
                staged.write(data)
                staged.write(_CRC.pack(crc))
                staged.sync()
            finally:
                staged.close()
            self._fs.rename(tmp, file.path)
            self._fs.fsync_dir(self._dir)
        except OSError as exc:
            raise StorageIOError(f"{file.path}: writing the snapshot failed: {exc}") from exc
        self._current, self._current_meta = file, meta
        self._current_replaces_log = replaces_log

    def prune(self) -> int:
        """Delete all but the newest KEEP snapshots (never the current one); returns how many."""
        doomed = [f for f in self.files()[KEEP:] if f != self._current]
        try:
            for file in doomed:
                self._fs.remove(file.path)
            if doomed:
                # Any subset of these removals surviving a crash is fine: no fsync between them.
                self._fs.fsync_dir(self._dir)
        except OSError as exc:
            raise StorageIOError(f"{self._dir}: removing old snapshots failed: {exc}") from exc
        return len(doomed)

    def _read(self, file: SnapshotFile) -> tuple[SnapshotMeta, bool, bytes]:
        try:
            buf = self._fs.read_bytes(file.path)
        except OSError as exc:
            raise StorageIOError(f"{file.path}: reading the snapshot failed: {exc}") from exc
        meta, replaces_log, data = decode_snapshot(file.path, buf)
        if (meta.term, meta.index) != (file.term, file.index):
            raise StorageCorruptedError(
                file.path,
                16,
                f"the file holds the snapshot at index {meta.index} term {meta.term}, "
                "not the one its name says",
            )
        return meta, replaces_log, data


def _described_size(buf: bytes, voters: int) -> int | None:
    """The size of file the (unverified) header describes; None if it runs past the end."""
    offset = _HEAD.size
    for _ in range(voters):
        if offset + _VOTER.size > len(buf):
            return None
        (length,) = _VOTER.unpack_from(buf, offset)
        offset += _VOTER.size + length
    if offset + _DATA_LENGTH.size > len(buf):
        return None
    (length,) = _DATA_LENGTH.unpack_from(buf, offset)
    return int(offset + _DATA_LENGTH.size + length + _CRC.size)


def check_meta(meta: SnapshotMeta) -> None:
    """Raise StorageMisuseError if `meta` cannot be stored as a snapshot."""
    if meta.index < 1:
        raise StorageMisuseError(f"a snapshot needs an index of at least 1, not {meta.index}")
    for voter in meta.conf.voters:
        if len(voter.encode("utf-8")) > 0xFFFF:
            raise StorageMisuseError(f"voter id of {len(voter.encode('utf-8'))} bytes is too long")


def decode_snapshot(path: Path, buf: bytes) -> tuple[SnapshotMeta, bool, bytes]:
    """Parse and verify one snapshot file's bytes: (meta, replaces_log, data).

    StorageCorruptedError names what is wrong.
    """
    minimum = _HEAD.size + _DATA_LENGTH.size + _CRC.size
    if len(buf) < minimum:
        raise StorageCorruptedError(path, 0, f"file is {len(buf)} bytes, too short for a snapshot")
    magic, version, flags, index, term, voters = _HEAD.unpack_from(buf, 0)
    if magic != SNAPSHOT_MAGIC:
        raise StorageCorruptedError(path, 0, f"bad magic number {magic!r} (not a snapshot)")
    if version != FORMAT_VERSION:
        raise StorageFormatError(path, version, FORMAT_VERSION)
    body_end = len(buf) - _CRC.size
    (crc,) = _CRC.unpack_from(buf, body_end)
    if zlib.crc32(buf[:body_end]) != crc:
        described = _described_size(buf, voters)
        if described is None:
            raise StorageCorruptedError(
                path,
                len(buf),
                f"the file is {len(buf)} bytes and ends inside its header: cut short, "
                "or the header is damaged",
            )
        if described != len(buf):
            raise StorageCorruptedError(
                path,
                min(described, len(buf)),
                f"the file is {len(buf)} bytes but its header describes {described}: "
                "cut short (or extended), or the header is damaged",
            )
        raise StorageCorruptedError(path, body_end, "snapshot checksum mismatch")
    # The checksum holds, so what follows fails only on a file written by a broken writer.
    if flags & ~_REPLACES_LOG:
        raise StorageCorruptedError(path, 12, f"unknown snapshot flags {flags:#x}")
    offset = _HEAD.size
    names: list[NodeId] = []
    for _ in range(voters):
        if offset + _VOTER.size > body_end:
            raise StorageCorruptedError(path, offset, "voter list runs past the end")
        (length,) = _VOTER.unpack_from(buf, offset)
        offset += _VOTER.size
        if offset + length > body_end:
            raise StorageCorruptedError(path, offset, "voter id runs past the end")
        try:
            names.append(NodeId(buf[offset : offset + length].decode("utf-8")))
        except UnicodeDecodeError:
            raise StorageCorruptedError(path, offset, "voter id is not UTF-8") from None
        offset += length
    if offset + _DATA_LENGTH.size > body_end:
        raise StorageCorruptedError(path, offset, "data length runs past the end")
    (length,) = _DATA_LENGTH.unpack_from(buf, offset)
    offset += _DATA_LENGTH.size
    if offset + length != body_end:
        raise StorageCorruptedError(
            path, offset, f"data length {length} disagrees with the file size"
        )
    meta = SnapshotMeta(LogIndex(index), Term(term), ConfState(tuple(names)))
    return meta, bool(flags & _REPLACES_LOG), buf[offset:body_end]
