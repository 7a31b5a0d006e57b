"""The member record (node/storage/identity.py): which cluster a data directory belongs to and
which incarnation of its member it is, kept across restarts and power cuts, damage reported."""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

import pytest

from node.raft.types import Entry, EntryKind, HardState, LogIndex, Term
from node.storage import MemberRecord, Storage, StorageCorruptedError
from node.storage.identity import MEMBER_NAME, decode_member
from tests.storage.crashfs import CrashFileSystem, PowerCut
from tests.storage.workload import DATA_DIR, open_storage

FORMED = MemberRecord("c0ffee", 0, ("a", "b", "c"))
JOINED = MemberRecord("c0ffee", 57)  # added by the CONFIG entry at index 57
TOLD = MemberRecord("c0ffee", 90)  # (a record is rewritten only by tests; still atomic)


def test_a_new_directory_holds_nothing_and_no_record(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "n") as storage:
        assert storage.member is None
        assert storage.holds_nothing()


@pytest.mark.parametrize("record", [FORMED, JOINED, TOLD])
def test_the_record_survives_a_restart(tmp_path: Path, record: MemberRecord) -> None:
    with Storage.open(tmp_path / "n") as storage:
        storage.record_member(record)
        assert storage.member == record
    with Storage.open(tmp_path / "n") as storage:
        assert storage.member == record


def test_a_directory_with_a_term_or_an_entry_holds_something(tmp_path: Path) -> None:
    with Storage.open(tmp_path / "term") as storage:
        storage.set_hard_state(HardState(term=Term(3)))
        storage.sync()
        assert not storage.holds_nothing()
    with Storage.open(tmp_path / "entry") as storage:
        storage.append([Entry(Term(1), LogIndex(1), EntryKind.NOOP, b"")])
        storage.sync()
        assert not storage.holds_nothing()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda raw: raw.replace(b"c0ffee", b"c0ffef"), "checksum mismatch"),
        (lambda raw: raw[:-3], "checksum mismatch|two lines"),
        (lambda raw: b"", "two lines"),
        (lambda raw: raw.replace(b"\n", b" "), "two lines"),
    ],
)
def test_a_damaged_record_is_corruption_named_with_its_file(
    tmp_path: Path, damage: object, reason: str
) -> None:
    with Storage.open(tmp_path / "n") as storage:
        storage.record_member(FORMED)
    path = tmp_path / "n" / MEMBER_NAME
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(StorageCorruptedError, match=reason) as raised:
        Storage.open(tmp_path / "n")
    assert MEMBER_NAME in str(raised.value)


def test_a_record_with_a_valid_checksum_but_impossible_content_is_refused() -> None:
    for doc in (
        {"cluster_id": "", "format": 1, "incarnation": 0, "initial_voters": []},
        {"cluster_id": "x", "format": 1, "incarnation": -1, "initial_voters": []},
        {"cluster_id": "x", "format": 1, "incarnation": True, "initial_voters": []},
        {"cluster_id": "x", "format": 1, "incarnation": None, "initial_voters": []},
        {"cluster_id": "x", "format": 2, "incarnation": 0, "initial_voters": []},
        {"cluster_id": "x", "format": 1, "incarnation": 0, "initial_voters": [""]},
        {"cluster_id": "x", "format": 1, "incarnation": 0},
    ):
        body = json.dumps(doc).encode()
        raw = body + b"\n" + f"{zlib.crc32(body):08x}".encode() + b"\n"
        with pytest.raises(StorageCorruptedError):
            decode_member(Path("MEMBER"), raw)


def _rewrite_with_power_cut_after(ops: int, torn: int | None) -> tuple[bool, MemberRecord | None]:
    """Record FORMED, then TOLD with the power cut after `ops` more operations; whether the
    second write returned, and what a restart reads."""
    fs = CrashFileSystem()
    storage = open_storage(fs)
    storage.record_member(JOINED)
    fs.cut_power_after(ops)
    returned = False
    try:
        storage.record_member(TOLD)
        returned = True
        storage.append([Entry(Term(1), LogIndex(1), EntryKind.NOOP, b"")])  # more operations
        storage.sync()
    except PowerCut:
        pass
    fs.crash(random.Random(torn) if torn is not None else None)
    with Storage.open(DATA_DIR, fs=fs) as reopened:
        return returned, reopened.member


@pytest.mark.parametrize("torn", [None, 1, 2, 3])
def test_a_power_cut_leaves_the_old_record_or_the_new_one_never_a_mix(torn: int | None) -> None:
    outcomes = set()
    for ops in range(12):
        returned, member = _rewrite_with_power_cut_after(ops, torn)
        assert member in (JOINED, TOLD), f"power cut after {ops} operations left {member}"
        if returned:
            assert member == TOLD, f"a record_member that returned was lost (cut at {ops})"
        outcomes.add(member)
    assert outcomes == {JOINED, TOLD}  # the cuts landed before and after the rename
