"""The write-ahead log's byte format (version 4): segment headers, checksummed records, and
the batch-end records that frame what each fsync made durable.

A segment file is a header followed by batches of records:

    segment = header | batch | batch ...
    header  = magic (8 bytes) | version u32 | command_format u32 | seq u64 | first_index u64
              | crc32 u32
    batch   = record ... | BATCH_END record
    record  = length u32 | crc32 u32 | type u8 | payload        (little-endian)

`length` counts the type byte and the payload; the crc covers the length field, the type and
the payload, so a damaged length is caught too. Payloads:

    ENTRY       term u64 | index u64 | kind u8 | data
    HARD_STATE  term u64 | commit u64 | has_vote u8 | vote (UTF-8, present iff has_vote)
    SNAPSHOT    index u64 | term u64 | flags u8            (flag 1: RESET, the log restarts)
    BATCH_END   length u64 | crc32 u32  of the batch's bytes before it (back to the end of the
                previous BATCH_END, or of the header)

`command_format` is the encoding of the commands in the entries' data. The storage never
decodes them: its caller names the format it reads, and a log in another one is refused
(wal.py). Versions 1 to 3 had no command_format: their header ended after first_index, and
segment_version() reads both layouts, so an older segment is told from a damaged one.

A batch is everything written between two fsyncs: the log writes BATCH_END just before each
fsync, so a BATCH_END whose checksum covers its batch proves that every batch before it was
synced (fsyncs happen in order). That is what tells a torn tail from corruption when a power cut
wrote an unsynced batch's pages out of order (TRAPS.md). Version 1 had no BATCH_END.

Decoding separates two kinds of damage: a record whose framing or checksum fails (`Torn`: what a
write cut short by a crash leaves, or a flipped bit; the log decides which) and a record whose
checksum holds but whose content is impossible (`Malformed`: never a torn write).

Imports only the standard library and node.raft.types.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from node.raft.types import Entry, EntryKind, HardState, LogIndex, NodeId, Term

SEGMENT_MAGIC = b"\x89CBWAL\r\n"  # the \r\n catches a file mangled by newline translation
# 2: batch framing (BATCH_END); 3: sessions kept as hashes only (a version 2 data dir may
# hold plaintext session tokens in its Login entries and snapshots); 4: the header records the
# entries' command format
FORMAT_VERSION = 4
MAX_COMMAND_FORMAT = (1 << 32) - 1

_SEGMENT_HEADER = struct.Struct("<8sIIQQ")  # magic, version, command_format, seq, first_index
_SEGMENT_HEADER_V1_TO_3 = struct.Struct("<8sIQQ")  # magic, version, seq, first_index
_CRC = struct.Struct("<I")
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size + _CRC.size
_SEQ_OFFSET = 16  # of seq in the header, for error reports

_RECORD_HEADER = struct.Struct("<II")  # length, crc32
RECORD_HEADER_SIZE = _RECORD_HEADER.size
_LENGTH = struct.Struct("<I")
MAX_RECORD_BYTES = 1 << 30  # far above any entry the driver accepts; bounds a damaged length

_ENTRY = struct.Struct("<QQB")
_HARD_STATE = struct.Struct("<QQB")
_SNAPSHOT = struct.Struct("<QQB")
_BATCH_END = struct.Struct("<QI")
_RESET_FLAG = 1
BATCH_END_SIZE = RECORD_HEADER_SIZE + 1 + _BATCH_END.size
# Every BATCH_END record starts with these bytes: candidates are found with bytes.find.
_BATCH_END_PREFIX = _LENGTH.pack(1 + _BATCH_END.size)


class RecordType(enum.IntEnum):
    ENTRY = 1
    HARD_STATE = 2
    SNAPSHOT = 3
    BATCH_END = 4


@dataclass(frozen=True, slots=True)
class SnapshotMarker:
    """Entries up to `index` (of term `term`) are compacted into a snapshot.

    With `reset`, every stored entry is discarded as well: the log restarts after `index`
    (a snapshot installed from the leader replaces the follower's log).
    """

    index: LogIndex
    term: Term
    reset: bool = False


@dataclass(frozen=True, slots=True)
class BatchEnd:
    """Closes a batch: the `length` bytes just before this record, whose crc32 is `crc`."""

    length: int
    crc: int


Record = Entry | HardState | SnapshotMarker


@dataclass(frozen=True, slots=True)
class Decoded:
    record: Record | BatchEnd
    end: int  # offset just past the record


@dataclass(frozen=True, slots=True)
class Torn:
    """The framing or checksum is bad: a torn write, or damage."""

    reason: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """The checksum holds but the content is impossible: always corruption."""

    reason: str


def encode_segment_header(seq: int, first_index: int, command_format: int) -> bytes:
    head = _SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, command_format, seq, first_index)
    return head + _CRC.pack(zlib.crc32(head))


def segment_version(buf: bytes) -> int | None:
    """The format version of a segment whose header has our magic number and a checksum that
    holds, in this version's layout or in that of versions 1 to 3 (magic and version lead in
    both), else None. A newer version is recognised if it keeps this version's layout."""
    if buf[: len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
        return None
    for layout in (_SEGMENT_HEADER, _SEGMENT_HEADER_V1_TO_3):
        if len(buf) < layout.size + _CRC.size:
            continue
        (crc,) = _CRC.unpack_from(buf, layout.size)
        if crc == zlib.crc32(buf[: layout.size]):
            version: int = layout.unpack_from(buf, 0)[1]
            return version
    return None


def segment_command_format(buf: bytes) -> int:
    """The command format in the header of a segment that check_segment_header() accepted."""
    command_format: int = _SEGMENT_HEADER.unpack_from(buf, 0)[2]
    return command_format


def check_segment_header(buf: bytes, seq: int, first_index: int) -> tuple[int, str] | None:
    """None if `buf` starts with a good header for this segment, else (offset, reason)."""
    if len(buf) < SEGMENT_HEADER_SIZE:
        return 0, f"file is {len(buf)} bytes, shorter than the {SEGMENT_HEADER_SIZE}-byte header"
    magic, version, _, got_seq, got_first = _SEGMENT_HEADER.unpack_from(buf, 0)
    if magic != SEGMENT_MAGIC:
        return 0, f"bad magic number {magic!r} (not a chatbooth WAL segment)"
    (crc,) = _CRC.unpack_from(buf, _SEGMENT_HEADER.size)
    if crc != zlib.crc32(buf[: _SEGMENT_HEADER.size]):
        return _SEGMENT_HEADER.size, "segment header checksum mismatch"
    if version != FORMAT_VERSION:
        return 8, f"unsupported format version {version} (this build reads {FORMAT_VERSION})"
    if (got_seq, got_first) != (seq, first_index):
        return _SEQ_OFFSET, (
            f"header says segment {got_seq:#x} starting at index {got_first}, "
            f"the file name says segment {seq:#x} starting at index {first_index}"
        )
    return None


def encode_record(record: Record | BatchEnd) -> bytes:
    if isinstance(record, BatchEnd):
        body = bytes((RecordType.BATCH_END,)) + _BATCH_END.pack(record.length, record.crc)
    elif isinstance(record, Entry):
        body = (
            bytes((RecordType.ENTRY,))
            + _ENTRY.pack(record.term, record.index, record.kind.value)
            + record.data
        )
    elif isinstance(record, HardState):
        vote = b"" if record.vote is None else record.vote.encode("utf-8")
        has_vote = 0 if record.vote is None else 1
        body = (
            bytes((RecordType.HARD_STATE,))
            + _HARD_STATE.pack(record.term, record.commit, has_vote)
            + vote
        )
    else:
        flags = _RESET_FLAG if record.reset else 0
        body = bytes((RecordType.SNAPSHOT,)) + _SNAPSHOT.pack(record.index, record.term, flags)
    length = _LENGTH.pack(len(body))
    return _RECORD_HEADER.pack(len(body), zlib.crc32(body, zlib.crc32(length))) + body


def decode_at(buf: bytes, offset: int) -> Decoded | Torn | Malformed:
    """Decode the record starting at `offset` of `buf`."""
    remaining = len(buf) - offset
    if remaining < RECORD_HEADER_SIZE:
        return Torn(f"short read: {remaining} bytes where a record header needs 8")
    length, crc = _RECORD_HEADER.unpack_from(buf, offset)
    if length < 1 or length > MAX_RECORD_BYTES:
        return Torn(f"bad record length {length}")
    end = offset + RECORD_HEADER_SIZE + length
    if end > len(buf):
        return Torn(f"short read: record of {length} bytes, only {remaining - 8} remain")
    body = buf[offset + RECORD_HEADER_SIZE : end]
    if zlib.crc32(body, zlib.crc32(_LENGTH.pack(length))) != crc:
        return Torn("record checksum mismatch")
    decoded = _decode_body(body)
    if isinstance(decoded, str):
        return Malformed(decoded)
    return Decoded(decoded, end)


def batch_end_for(batch: bytes | memoryview) -> bytes:
    """The BATCH_END record that closes a batch of these bytes."""
    return encode_record(BatchEnd(len(batch), zlib.crc32(batch)))


def closes_batch(buf: bytes, offset: int, end: BatchEnd, start: int) -> str | None:
    """None if the BATCH_END at `offset` closes the batch that began at `start`, else why not."""
    if end.length != offset - start:
        return (
            f"batch end says the batch is {end.length} bytes, but it began {offset - start} "
            f"bytes before, at offset {start}"
        )
    if zlib.crc32(memoryview(buf)[start:offset]) != end.crc:
        return f"batch checksum mismatch for the batch from offset {start}"
    return None


def next_complete_batch(buf: bytes, start: int, floor: int) -> int | None:
    """The offset of the first BATCH_END at or after `start` that proves its batch whole (its
    own checksum and its batch's both hold, the batch starting at or after `floor`), if any.

    One after damage means the damage was in a batch that had been synced: corruption.
    """
    offset = buf.find(_BATCH_END_PREFIX, start)
    while offset != -1:
        decoded = decode_at(buf, offset)
        if isinstance(decoded, Decoded) and isinstance(decoded.record, BatchEnd):
            batch_start = offset - decoded.record.length
            if (
                batch_start >= floor
                and closes_batch(buf, offset, decoded.record, batch_start) is None
            ):
                return offset
        offset = buf.find(_BATCH_END_PREFIX, offset + 1)
    return None


def _decode_body(body: bytes) -> Record | BatchEnd | str:
    """The record in `body` (type byte and payload), or why it is impossible."""
    kind, payload = body[0], body[1:]
    if kind == RecordType.ENTRY:
        if len(payload) < _ENTRY.size:
            return f"entry record of {len(payload)} bytes is too short"
        term, index, entry_kind = _ENTRY.unpack_from(payload, 0)
        try:
            decoded_kind = EntryKind(entry_kind)
        except ValueError:
            return f"unknown entry kind {entry_kind}"
        if index < 1:
            return "entry index 0"
        return Entry(Term(term), LogIndex(index), decoded_kind, bytes(payload[_ENTRY.size :]))
    if kind == RecordType.HARD_STATE:
        if len(payload) < _HARD_STATE.size:
            return f"hard state record of {len(payload)} bytes is too short"
        term, commit, has_vote = _HARD_STATE.unpack_from(payload, 0)
        rest = payload[_HARD_STATE.size :]
        if has_vote not in (0, 1) or (has_vote == 0 and rest):
            return "hard state record has a malformed vote"
        vote: NodeId | None = None
        if has_vote:
            try:
                vote = NodeId(bytes(rest).decode("utf-8"))
            except UnicodeDecodeError:
                return "hard state vote is not UTF-8"
        return HardState(Term(term), vote, LogIndex(commit))
    if kind == RecordType.SNAPSHOT:
        if len(payload) != _SNAPSHOT.size:
            return f"snapshot marker record of {len(payload)} bytes, expected {_SNAPSHOT.size}"
        index, term, flags = _SNAPSHOT.unpack_from(payload, 0)
        if flags & ~_RESET_FLAG:
            return f"snapshot marker has unknown flags {flags:#x}"
        return SnapshotMarker(LogIndex(index), Term(term), bool(flags & _RESET_FLAG))
    if kind == RecordType.BATCH_END:
        if len(payload) != _BATCH_END.size:
            return f"batch end record of {len(payload)} bytes, expected {_BATCH_END.size}"
        length, crc = _BATCH_END.unpack_from(payload, 0)
        if length == 0:
            return "batch end of an empty batch"
        return BatchEnd(length, crc)
    return f"unknown record type {kind}"
