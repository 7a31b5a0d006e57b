"""Snapshot files: `snap/<term:016x>-<index:016x>.snap`, written atomically, newest two kept.

A file is

    magic (8 bytes) | version u32 | flags u32 | index u64 | term u64 | member count u32
    | per member: role u8 (0 voter, 1 learner), incarnation u64, length u16, UTF-8 name
    | data length u64 | data | crc32 u32 of all before it

(Version 4 had no incarnation: it is read as every member's being 0, an initial member's.)

and is written to `<name>.tmp`, fsynced, renamed into place and the directory fsynced, so a
crash leaves the old snapshot or the new one, never a half-written one under a real name (a
torn `.tmp` is removed at open). Only then does the log record it (Storage writes the marker),
so a file the log never recorded is an interrupted save. Flag 1, REPLACES_LOG, marks a snapshot
installed from the leader: the log restarts after it. Flag 2, HELD_BY_STATE (version 6), marks
a compaction of the node's own: the state machine keeps its data durably itself (at the index
or later), so the file holds the metadata only, with a data length of 0; copying a whole
database for every compaction made the cost of compaction grow with the state. Nothing here
validates the data: the state machine must (Storage.install_snapshot's `validate`) before the
snapshot is stored.

A file whose checksum fails is StorageCorruptedError naming it and the offset, saying whether it
was cut short (its size disagrees with what its header describes) or damaged in place.

The data is a SQLite database of up to hundreds of MB, so nothing here holds it whole: save()
streams it in from the caller's file, select() verifies checksums by streaming, and a
SnapshotReader streams it back out (verifying the checksum as it goes), CHUNK_BYTES at a time.

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

import contextlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from node.raft.types import ConfState, LogIndex, NodeId, SnapshotMeta, Term
from node.storage.errors import (
    StorageCorruptedError,
    StorageFormatError,
    StorageIOError,
    StorageMisuseError,
)
from node.storage.files import AppendFile, FileSystem, ReadFile

logger = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"\x89CBSNP\r\n"
# 2: sessions as hashes only; 3: the data is SQLite; 4: learners; 5: incarnations; 6: a
# snapshot may be held by the state machine (HELD_BY_STATE)
FORMAT_VERSION = 6
READABLE_VERSIONS = (4, 5, 6)
CHUNK_BYTES = 1 << 20  # what a snapshot is read and written in: never held whole
KEEP = 2  # the current snapshot and the one before it

_HEAD = struct.Struct("<8sIIQQI")  # magic, version, flags, index, term, member count
_REPLACES_LOG = 1
_HELD_BY_STATE = 2
# role, incarnation, then the id's length in bytes; then the id (UTF-8)
_MEMBER = struct.Struct("<BQH")
_MEMBER_V4 = struct.Struct("<BH")  # role, length: no incarnation
_VOTER, _LEARNER = 0, 1
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
        self._current_layout: _Layout | None = None  # what its header says

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
        chosen: tuple[SnapshotFile, _Layout] | None = None
        for file in (own + newer) if needed > 0 else []:
            try:
                layout = self._read(file)
            except StorageCorruptedError as exc:
                problems.append(exc)
                continue
            chosen = file, layout
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
        self._current, self._current_layout = chosen if chosen else (None, None)
        self._drop_unrecorded(files)
        return self.latest()

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
        return None if self._current_layout is None else self._current_layout.meta

    def latest_replaces_log(self) -> bool:
        """Whether the current snapshot was installed from the leader (the log restarts)."""
        return self._current_layout is not None and self._current_layout.replaces_log

    def latest_held_by_state(self) -> bool:
        """Whether the current snapshot's data is held by the state machine (no data here)."""
        return self._current_layout is not None and self._current_layout.held_by_state

    def open_current(self) -> SnapshotReader | None:
        """The current snapshot, open for reading (None: there is none, or the state machine
        holds its data). Its header is checked here; its data's checksum while it is read."""
        if self._current is None or self.latest_held_by_state():
            return None
        file = self._current
        try:
            stream = self._fs.open_read(file.path)
        except OSError as exc:
            raise StorageIOError(f"{file.path}: opening the snapshot failed: {exc}") from exc
        try:
            layout = _layout(file.path, stream, verify=False)
            _check_name(file, layout.meta)
            stream.seek(layout.data_offset)
        except OSError as exc:
            stream.close()
            raise StorageIOError(f"{file.path}: reading the snapshot failed: {exc}") from exc
        except BaseException:
            stream.close()
            raise
        return SnapshotReader(file.path, stream, layout)

    def save(self, meta: SnapshotMeta, source: Path, *, replaces_log: bool = False) -> None:
        """Write a snapshot whose data is the file `source` durably and make it current; the
        caller then prune()s.

        `source` is read (with plain open(): SQLite wrote it, outside this file layer) a chunk
        at a time, so a snapshot of any size costs CHUNK_BYTES of memory; it is left in place.
        `replaces_log`: installed from the leader, so every stored entry is discarded.
        """
        check_meta(meta)
        with _open_source(source) as data:
            try:
                length = os.fstat(data.fileno()).st_size
            except OSError as exc:
                raise StorageIOError(f"{source}: cannot read the snapshot data: {exc}") from exc

            def write_data(staged: AppendFile, crc: int) -> int:
                return _stream_into(staged, data, source, length, crc)

            self._write(meta, _REPLACES_LOG if replaces_log else 0, write_data, length)

    def save_held(self, meta: SnapshotMeta) -> None:
        """Write, durably, a snapshot whose data the state machine holds itself (at meta.index
        or later): the metadata only. Makes it current; the caller then prune()s."""
        check_meta(meta)
        self._write(meta, _HELD_BY_STATE, lambda staged, crc: crc, 0)

    def _write(
        self,
        meta: SnapshotMeta,
        flags: int,
        write_data: Callable[[AppendFile, int], int],
        length: int,
    ) -> None:
        """Stage, fsync and rename into place one snapshot file; `write_data(staged, crc)`
        writes its `length` bytes of data and returns the crc continued over them."""
        file = SnapshotFile(meta.term, meta.index, self._dir / snapshot_name(meta.term, meta.index))
        tmp = file.path.with_name(file.path.name + _TMP_SUFFIX)
        head = _encode_header(meta, flags, length)
        head_crc = zlib.crc32(head)
        try:
            if self._fs.exists(tmp):
                self._fs.remove(tmp)
            staged = self._fs.open_append(tmp)
            try:
                staged.write(head)
                crc = write_data(staged, head_crc)
                staged.write(_CRC.pack(crc))
                staged.sync()
            finally:
                staged.close()
            self._fs.rename(tmp, file.path)
            self._fs.fsync_dir(self._dir)
        except OSError as exc:
            raise StorageIOError(f"{file.path}: writing the snapshot failed: {exc}") from exc
        self._current = file
        self._current_layout = _Layout(
            meta,
            bool(flags & _REPLACES_LOG),
            bool(flags & _HELD_BY_STATE),
            len(head),
            length,
            head_crc,
        )

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

    def _read(self, file: SnapshotFile) -> _Layout:
        """Verify one snapshot file whole, streaming it."""
        try:
            stream = self._fs.open_read(file.path)
        except OSError as exc:
            raise StorageIOError(f"{file.path}: reading the snapshot failed: {exc}") from exc
        try:
            layout = _layout(file.path, stream, verify=True)
        except OSError as exc:
            raise StorageIOError(f"{file.path}: reading the snapshot failed: {exc}") from exc
        finally:
            stream.close()
        _check_name(file, layout.meta)
        return layout


class SnapshotReader:
    """The data of one snapshot file, read sequentially, its checksum verified on the way.

    It owns its file handle, so it may be used from any thread while the storage goes on: a
    later prune may remove the file, and an open handle still reads it to the end. The
    checksum covers the whole file, so it is known only at the end: the read that returns the
    last byte (and any read after it) raises StorageCorruptedError if it fails, before handing
    that byte out, so that a sender never streams a damaged snapshot to the end silently. Not
    thread-safe itself: one reader, one user at a time.
    """

    def __init__(self, path: Path, stream: ReadFile, layout: _Layout) -> None:
        self.path = path
        self.meta: SnapshotMeta = layout.meta
        self.size: int = layout.data_length  # bytes of data
        self._stream = stream
        self._data_offset = layout.data_offset
        self._head_crc = layout.head_crc
        self._crc = layout.head_crc  # of the file's bytes before the position
        self._position = 0  # in the data region
        self._verified = False
        self._failed: StorageCorruptedError | None = None

    def read(self, n: int) -> bytes:
        """Up to `n` bytes of data from the position on; b"" at the end."""
        if self._failed is not None:
            raise self._failed
        if self._verified:
            return b""
        try:
            want = min(n, self.size - self._position)
            piece = self._read_exact(want, self._position) if want > 0 else b""
            self._crc = zlib.crc32(piece, self._crc)
            self._position += len(piece)
            if self._position == self.size:
                self._verify(self._crc)
                self._verified = True
        except StorageCorruptedError as exc:
            self._failed = exc  # every later read says so too, not "cut short" at the trailer
            raise
        return piece

    def copy_to(self, dest: Path) -> None:
        """Write the data into a new file `dest` (plain open(): it is for SQLite, outside the
        file layer) and fsync it; the checksum is verified on the way. On failure `dest` is
        removed. Independent of read(): its position is where it was."""
        try:
            out = _create_copy(dest)
        except OSError as exc:
            raise StorageIOError(f"{dest}: cannot create the snapshot copy: {exc}") from exc
        try:
            with out:
                self._seek(self._data_offset)
                crc, copied = self._head_crc, 0
                while copied < self.size:
                    piece = self._read_exact(min(CHUNK_BYTES, self.size - copied), copied)
                    crc = zlib.crc32(piece, crc)
                    out.write(piece)
                    copied += len(piece)
                self._verify(crc)
                out.flush()
                os.fsync(out.fileno())
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.remove(dest)
            if isinstance(exc, OSError):
                raise StorageIOError(f"{dest}: copying the snapshot failed: {exc}") from exc
            raise
        finally:
            with contextlib.suppress(OSError):
                self._seek(self._data_offset + self._position)

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _seek(self, offset: int) -> None:
        try:
            self._stream.seek(offset)
        except OSError as exc:
            raise StorageIOError(f"{self.path}: reading the snapshot failed: {exc}") from exc

    def _read_exact(self, n: int, position: int) -> bytes:
        try:
            piece = self._stream.read(n)
        except OSError as exc:
            raise StorageIOError(f"{self.path}: reading the snapshot failed: {exc}") from exc
        if len(piece) < n:
            end = self._data_offset + position + len(piece)
            raise StorageCorruptedError(
                self.path,
                end,
                f"the file ends at byte {end}, inside its {self.size} bytes of data: cut short",
            )
        return piece

    def _verify(self, crc: int) -> None:
        body_end = self._data_offset + self.size
        try:
            trailer = self._stream.read(_CRC.size)
        except OSError as exc:
            raise StorageIOError(f"{self.path}: reading the snapshot failed: {exc}") from exc
        if len(trailer) < _CRC.size:
            raise StorageCorruptedError(
                self.path, body_end, "the file ends before its checksum: cut short"
            )
        if _CRC.unpack(trailer)[0] != crc:
            raise StorageCorruptedError(self.path, body_end, "snapshot checksum mismatch")


@dataclass(frozen=True, slots=True)
class _Header:
    """A snapshot file's header as read, before it is trusted."""

    members: list[tuple[int, int, int, bytes]]  # (offset, role, incarnation, UTF-8 id)
    data_length: int
    data_offset: int  # where the data starts: the header's size
    crc: int  # of the header's bytes


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where a snapshot file's parts are, with what its header says."""

    meta: SnapshotMeta
    replaces_log: bool
    held_by_state: bool
    data_offset: int
    data_length: int
    head_crc: int  # crc32 of the bytes before the data


def _check_name(file: SnapshotFile, meta: SnapshotMeta) -> None:
    if (meta.term, meta.index) != (file.term, file.index):
        raise StorageCorruptedError(
            file.path,
            16,
            f"the file holds the snapshot at index {meta.index} term {meta.term}, "
            "not the one its name says",
        )


def _open_source(source: Path) -> BinaryIO:
    """The caller's data file, open for reading: StorageMisuseError if there is none."""
    try:
        return open(source, "rb")
    except FileNotFoundError:
        raise StorageMisuseError(f"no snapshot data file at {source}") from None
    except OSError as exc:
        raise StorageIOError(f"{source}: cannot read the snapshot data: {exc}") from exc


def _create_copy(dest: Path) -> BinaryIO:
    """A new file `dest` (never an existing one: that may be a database in use), 0600."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb")


def _encode_header(meta: SnapshotMeta, flags: int, data_length: int) -> bytes:
    conf = meta.conf
    members = [(_VOTER, n) for n in conf.voters] + [(_LEARNER, n) for n in conf.learners]
    head = _HEAD.pack(SNAPSHOT_MAGIC, FORMAT_VERSION, flags, meta.index, meta.term, len(members))
    for role, member in members:
        name = member.encode("utf-8")
        head += _MEMBER.pack(role, conf.incarnation(member), len(name)) + name
    return head + _DATA_LENGTH.pack(data_length)


def _stream_into(staged: AppendFile, data: BinaryIO, source: Path, length: int, crc: int) -> int:
    """Copy `length` bytes of `data` into `staged` a chunk at a time; returns the crc32 of
    them, continuing `crc`. The file must not change meanwhile (the header holds its size)."""
    copied = 0
    while copied < length:
        piece = data.read(min(CHUNK_BYTES, length - copied))
        if not piece:
            raise StorageMisuseError(
                f"{source} shrank from {length} to {copied} bytes while it was being stored"
            )
        staged.write(piece)
        crc = zlib.crc32(piece, crc)
        copied += len(piece)
    if data.read(1):
        raise StorageMisuseError(f"{source} grew past {length} bytes while it was being stored")
    return crc


def _crc_of_range(stream: ReadFile, end: int) -> int:
    """The crc32 of the file's bytes [0, end), read a chunk at a time."""
    stream.seek(0)
    crc, position = 0, 0
    while position < end:
        piece = stream.read(min(CHUNK_BYTES, end - position))
        if not piece:
            break  # the file shrank under us: the checksum will not hold
        crc = zlib.crc32(piece, crc)
        position += len(piece)
    return crc


def _read_header(stream: ReadFile, head: bytes, limit: int) -> _Header | tuple[int, str]:
    """Walk the header after its fixed part `head` (the stream is just past it), reading
    nothing at or past `limit`: the header, or (offset, reason) where it runs past `limit`."""
    fields = _HEAD.unpack(head)
    version, member_count = fields[1], fields[5]
    member = _MEMBER if version >= 5 else _MEMBER_V4
    crc = zlib.crc32(head)
    offset = _HEAD.size
    # Every member takes at least its role and length: a count that cannot fit needs no walk
    # (a damaged count would otherwise cost a read per claimed member).
    if offset + member_count * member.size + _DATA_LENGTH.size > limit:
        return offset, "member list runs past the end"
    members: list[tuple[int, int, int, bytes]] = []
    for _ in range(member_count):
        if offset + member.size > limit:
            return offset, "member list runs past the end"
        field = stream.read(member.size)
        if version >= 5:
            role, incarnation, length = member.unpack(field)
        else:
            (role, length), incarnation = member.unpack(field), 0
        crc = zlib.crc32(field, crc)
        offset += member.size
        if offset + length > limit:
            return offset, "member id runs past the end"
        name = stream.read(length)
        crc = zlib.crc32(name, crc)
        members.append((offset, role, incarnation, name))
        offset += length
    if offset + _DATA_LENGTH.size > limit:
        return offset, "data length runs past the end"
    field = stream.read(_DATA_LENGTH.size)
    (data_length,) = _DATA_LENGTH.unpack(field)
    crc = zlib.crc32(field, crc)
    offset += _DATA_LENGTH.size
    return _Header(members, int(data_length), offset, crc)


def _layout(path: Path, stream: ReadFile, *, verify: bool) -> _Layout:
    """Parse one snapshot file's header, reading it from `stream`; with `verify`, check the
    whole file's checksum first, streaming it. StorageCorruptedError names what is wrong."""
    size = stream.seek(0, os.SEEK_END)
    minimum = _HEAD.size + _DATA_LENGTH.size + _CRC.size
    if size < minimum:
        raise StorageCorruptedError(path, 0, f"file is {size} bytes, too short for a snapshot")
    stream.seek(0)
    head = stream.read(_HEAD.size)
    magic, version, flags, index, term, _ = _HEAD.unpack(head)
    if magic != SNAPSHOT_MAGIC:
        raise StorageCorruptedError(path, 0, f"bad magic number {magic!r} (not a snapshot)")
    if version not in READABLE_VERSIONS:
        raise StorageFormatError(path, version, FORMAT_VERSION)
    body_end = size - _CRC.size
    if verify:
        crc = _crc_of_range(stream, body_end)
        stream.seek(body_end)
        (stored,) = _CRC.unpack(stream.read(_CRC.size))
        if crc != stored:
            stream.seek(_HEAD.size)
            described = _read_header(stream, head, size)
            if isinstance(described, tuple):
                raise StorageCorruptedError(
                    path,
                    size,
                    f"the file is {size} bytes and ends inside its header: cut short, "
                    "or the header is damaged",
                )
            whole = described.data_offset + described.data_length + _CRC.size
            if whole != size:
                raise StorageCorruptedError(
                    path,
                    min(whole, size),
                    f"the file is {size} bytes but its header describes {whole}: "
                    "cut short (or extended), or the header is damaged",
                )
            raise StorageCorruptedError(path, body_end, "snapshot checksum mismatch")
    # With `verify` the checksum holds, so what follows fails only on a file written by a
    # broken writer; without it, the data's checksum is the reader's to verify.
    known = _REPLACES_LOG | (_HELD_BY_STATE if version >= 6 else 0)
    if flags & ~known or flags == _REPLACES_LOG | _HELD_BY_STATE:
        raise StorageCorruptedError(path, 12, f"unknown snapshot flags {flags:#x}")
    stream.seek(_HEAD.size)
    header = _read_header(stream, head, body_end)
    if isinstance(header, tuple):
        raise StorageCorruptedError(path, *header)
    voters: list[NodeId] = []
    learners: list[NodeId] = []
    incarnations: list[tuple[NodeId, int]] = []
    for offset, role, incarnation, raw in header.members:
        if role not in (_VOTER, _LEARNER):
            field = (_MEMBER if version >= 5 else _MEMBER_V4).size
            raise StorageCorruptedError(path, offset - field, f"unknown member role {role}")
        try:
            name = NodeId(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise StorageCorruptedError(path, offset, "member id is not UTF-8") from None
        (voters if role == _VOTER else learners).append(name)
        if incarnation:
            incarnations.append((name, incarnation))
    if header.data_offset + header.data_length != body_end:
        raise StorageCorruptedError(
            path,
            header.data_offset,
            f"data length {header.data_length} disagrees with the file size",
        )
    try:
        conf = ConfState(tuple(voters), tuple(learners), tuple(sorted(incarnations)))
    except ValueError as exc:
        raise StorageCorruptedError(path, _HEAD.size, f"impossible member list: {exc}") from None
    held = bool(flags & _HELD_BY_STATE)
    if held and header.data_length:
        raise StorageCorruptedError(
            path,
            header.data_offset - _DATA_LENGTH.size,
            f"a snapshot held by the state machine has no data, not {header.data_length} bytes",
        )
    meta = SnapshotMeta(LogIndex(index), Term(term), conf)
    return _Layout(
        meta,
        bool(flags & _REPLACES_LOG),
        held,
        header.data_offset,
        header.data_length,
        header.crc,
    )


def check_meta(meta: SnapshotMeta) -> None:
    """Raise StorageMisuseError if `meta` cannot be stored as a snapshot."""
    if meta.index < 1:
        raise StorageMisuseError(f"a snapshot needs an index of at least 1, not {meta.index}")
    for member in meta.conf.members():
        if len(member.encode("utf-8")) > 0xFFFF:
            raise StorageMisuseError(
                f"member id of {len(member.encode('utf-8'))} bytes is too long"
            )
