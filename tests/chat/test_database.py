"""The chat state's SQLite database (issue 13): its files and settings, checkpoints, batches
that are all or nothing, refusals of what SQLite cannot bind, a full disk, retention, indexed
reads, and restarts on the same directory."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import node.chat.commands as commands
import node.chat.state as chat_state
from node.chat.commands import RegisterClient, Send, decode, encode
from node.chat.database import DatabaseFullError, db_name
from node.chat.errors import ChatError, CommandDecodeError, ErrorCode
from node.chat.state import ChatState
from node.config import ChatLimits

from .conftest import SMALL_LIMITS, Node, assert_alike, copy_of, dump, read_rows


@pytest.fixture
def no_umask() -> Iterator[None]:
    """umask 0: a file SQLite made itself would be 0644, so only the state's own care keeps
    the database private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def on_disk(directory: Path, limits: ChatLimits = SMALL_LIMITS) -> Node:
    node = Node(limits)
    node.state.close()
    node.state = ChatState(limits, directory)
    return node


def busy(node: Node) -> tuple[str, str]:
    alice, bob = node.user("alice"), node.user("bob")
    for i in range(3):
        node.sent(alice, "bob", f"a{i}")
        node.sent(bob, "alice", f"b{i}")
    return alice, bob


# --- files and settings ------------------------------------------------------------------


def test_the_database_and_its_wal_and_shm_are_private(tmp_path: Path, no_umask: None) -> None:
    node = on_disk(tmp_path / "state")
    busy(node)
    node.state.history("alice", "bob")  # a reader connection too
    path = node.state.path
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    for file in files:
        assert file.exists(), file
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    copy = tmp_path / "copy.db"
    node.state.copy_to(copy)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


def test_the_writer_uses_wal_synchronous_normal_and_never_checkpoints_by_itself() -> None:
    state = ChatState(SMALL_LIMITS)
    writer = state._db
    assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert writer.isolation_level is None  # explicit BEGIN IMMEDIATE / COMMIT
    state.close()


def test_a_new_database_has_incremental_auto_vacuum() -> None:
    """Issue 13: auto_vacuum=INCREMENTAL at schema creation. SQLite ignores the setting once
    the file's header is written, which journal_mode=WAL does: it must come first."""
    state = ChatState(SMALL_LIMITS)
    assert state._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    state.close()


def test_the_wal_grows_until_a_checkpoint_empties_it() -> None:
    node = Node()
    busy(node)
    assert node.state.sizes()["wal_bytes"] > 0  # no automatic checkpoint emptied it
    assert node.state.checkpoint() == node.state.applied_index
    assert node.state.sizes()["wal_bytes"] == 0  # TRUNCATE


def test_the_wal_is_checkpointed_once_past_its_bound_without_compacting_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every COMMIT appends every page it changed, so between snapshots the WAL would grow by
    tens of KiB an entry (measured: 140 MB for 2,000 sends): apply checkpoints it once it
    passes WAL_CHECKPOINT_BYTES."""
    monkeypatch.setattr(chat_state, "WAL_CHECKPOINT_BYTES", 64 << 10)
    node = Node(ChatLimits(queue_limit=10_000))
    alice, _ = busy(node)
    largest = 0
    for i in range(200):
        node.sent(alice, "bob", f"more {i}")
        largest = max(largest, node.state.sizes()["wal_bytes"])
    assert largest < (64 << 10) + (256 << 10)  # the bound and one batch's pages past it
    # and without the bound it does grow well past that
    monkeypatch.setattr(chat_state, "WAL_CHECKPOINT_BYTES", 1 << 40)
    for i in range(200):
        node.sent(alice, "bob", f"again {i}")
    assert node.state.sizes()["wal_bytes"] > 1 << 20


def test_a_checkpoint_returns_the_applied_index_when_complete() -> None:
    node = Node()
    alice, _ = busy(node)
    assert node.state.checkpoint() == node.state.applied_index
    node.sent(alice, "alice", "more")
    assert node.state.checkpoint() == node.state.applied_index


def test_a_checkpoint_held_back_by_a_reader_returns_none_at_once() -> None:
    """A reader's open transaction on an older snapshot makes the checkpoint partial: it says
    so (None, so nothing is compacted on its account), and says it at once. It runs on the
    apply thread between batches, so waiting out the writer's 30 s busy timeout would stall
    every apply for that long."""
    node = Node()
    alice, _ = busy(node)
    reader = sqlite3.connect(node.state.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM messages").fetchone()
    node.sent(alice, "bob", "after the reader began")
    got: list[int | None] = []
    worker = threading.Thread(target=lambda: got.append(node.state.checkpoint()))
    worker.start()
    worker.join(3.0)
    waited = worker.is_alive()
    reader.execute("COMMIT")  # lets a checkpoint stuck waiting finish
    reader.close()
    worker.join(60)
    assert not waited, "checkpoint() blocked on the reader (the busy timeout) instead of None"
    assert got == [None]
    assert node.state.checkpoint() == node.state.applied_index  # the reader is gone


# --- batches -----------------------------------------------------------------------------


def test_a_batch_that_raises_midway_leaves_nothing_of_itself() -> None:
    """apply_batch is one transaction: an entry that does not decode, in the middle, undoes
    the entries before it (rows, digest, applied index), and a reader sees none of them."""
    node = Node()
    alice, _ = busy(node)
    before, applied, digest = dump(node.state), node.state.applied_index, node.state.digest()
    first = encode(node.send_cmd(alice, "bob", "first of the batch"))
    last = encode(node.send_cmd(alice, "bob", "last of the batch"))
    bad = bytes([commands.COMMAND_FORMAT_VERSION]) + b"{}"
    with pytest.raises(CommandDecodeError):
        node.state.apply_batch([(applied + 1, first), (applied + 2, bad), (applied + 3, last)])
    assert node.state.applied_index == applied
    assert node.state.digest() == digest == node.state.scan_digest()
    assert dump(node.state) == before
    assert [m.text for m in node.state.queue("bob")] == ["a0", "a1", "a2"]
    # and the same entries apply afterwards as if nothing had happened
    results = node.state.apply_batch([(applied + 1, first), (applied + 2, None)])
    assert results[0] is not None and results[0].ok and results[1] is None
    assert node.state.applied_index == applied + 2


def test_a_batch_skips_entries_already_applied() -> None:
    """A restart replays the log from the database's applied index: entries at or below it
    give None and change nothing."""
    node = Node()
    busy(node)
    digest = node.state.digest()
    results = node.state.apply_batch(node.entries)
    assert results == [None] * len(node.entries)
    assert node.state.digest() == digest


# --- what SQLite cannot bind -------------------------------------------------------------


def test_decode_refuses_a_timestamp_sqlite_cannot_hold() -> None:
    node = Node()
    alice, _ = busy(node)
    cmd = node.send_cmd(alice, "bob", "far future")
    big = encode(cmd).replace(
        f'"timestamp_ms":{cmd.timestamp_ms}'.encode(), f'"timestamp_ms":{2**64 - 1}'.encode()
    )
    assert big != encode(cmd)
    with pytest.raises(CommandDecodeError):
        decode(big)


def test_a_value_sqlite_cannot_bind_at_apply_is_a_refusal_alike_on_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Send whose timestamp_ms is 2**64 - 1 reaches apply (from a node whose decoder lets
    it through): the insert cannot bind it, and every replica refuses it INVALID_ARGUMENT
    with nothing of the command written (its SAVEPOINT rolled back)."""
    node = Node()
    alice, _ = busy(node)
    replica = ChatState(SMALL_LIMITS)
    for index, data in node.entries:
        assert data is not None
        replica.apply(index, data)
    messages_before = read_rows(node.state, "SELECT * FROM messages ORDER BY id")
    sessions_before = read_rows(node.state, "SELECT * FROM sessions ORDER BY hash")
    [(next_id,)] = read_rows(node.state, "SELECT next_message_id FROM meta")
    cmd = Send(
        timestamp_ms=2**64 - 1,
        request=node.request(session=alice),
        log_time_ms=node.log_time_ms(),
        session=alice,
        recipient="bob",
        text="far future",
    )
    data = encode(cmd)
    monkeypatch.setattr(commands, "MAX_INT64", commands.MAX_UINT64)
    assert decode(data) == cmd
    index = node.index + 1
    results = [state.apply(index, data) for state in (node.state, replica)]
    monkeypatch.undo()
    assert results[0] == results[1]
    outcome = results[0].outcome
    assert isinstance(outcome, ChatError) and outcome.code is ErrorCode.INVALID_ARGUMENT
    assert results[0].message is None
    for state in (node.state, replica):
        assert state.applied_index == index
        assert read_rows(state, "SELECT * FROM messages ORDER BY id") == messages_before
        assert read_rows(state, "SELECT * FROM sessions ORDER BY hash") == sessions_before
        assert read_rows(state, "SELECT next_message_id FROM meta") == [(next_id,)]
        assert [m.text for m in state.queue("bob")] == ["a0", "a1", "a2"]
    assert_alike(node.state, replica)


def test_a_string_sqlite_cannot_bind_at_apply_is_a_refusal_not_a_crash() -> None:
    """JSON can carry a lone surrogate (the escape \\ud800), which decode accepts and SQLite
    cannot bind (UnicodeEncodeError). A RegisterClient with such a session reaches a SELECT
    at apply: it must be refused alike on every replica, not raise out of apply (every node
    would stop at the same entry)."""
    data = encode(RegisterClient(timestamp_ms=1, log_time_ms=1, session="SURROGATE"))
    data = data.replace(b"SURROGATE", b"\\ud800")
    assert decode(data).session == "\ud800"  # type: ignore[attr-defined]
    states = [ChatState(SMALL_LIMITS), ChatState(SMALL_LIMITS)]
    results = [state.apply(1, data) for state in states]
    assert results[0] == results[1]
    assert isinstance(results[0].outcome, ChatError)
    assert results[0].outcome.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.UNAUTHENTICATED)
    assert_alike(*states)


# --- a full disk -------------------------------------------------------------------------


def test_a_full_disk_stops_with_database_full_error_and_changes_nothing() -> None:
    node = Node(ChatLimits(queue_limit=10_000, history_per_pair=10_000))
    alice, _ = busy(node)
    node.state.checkpoint()
    before, digest = dump(node.state), node.state.digest()
    applied = node.state.applied_index
    [(pages,)] = node.state._db.execute("PRAGMA page_count").fetchall()
    node.state._db.execute(f"PRAGMA max_page_count = {pages}")
    batch = [(applied + 1 + i, encode(node.send_cmd(alice, "bob", "y" * 4000))) for i in range(50)]
    with pytest.raises(DatabaseFullError) as info:
        node.state.apply_batch(batch)
    assert "disk is full" in str(info.value) and str(node.state.path) in str(info.value)
    assert node.state.applied_index == applied
    assert node.state.digest() == digest == node.state.scan_digest()
    assert dump(node.state) == before


# --- retention ---------------------------------------------------------------------------


def count(state: ChatState, table: str) -> int:
    return int(read_rows(state, f"SELECT count(*) FROM {table}")[0][0])


def test_history_retention_removes_messages_no_view_or_queue_holds() -> None:
    limits = ChatLimits(queue_limit=100, history_per_pair=3)
    node = Node(limits)
    alice, bob = node.user("alice"), node.user("bob")
    sent = [node.sent(alice, "bob", f"m{i}") for i in range(6)]
    assert count(node.state, "messages") == 6  # bob's queue holds every one
    assert [m.text for m in node.state.history("alice", "bob", 10)] == ["m3", "m4", "m5"]
    node.ack(bob, sent[-1].id)
    assert count(node.state, "queue") == 0
    ids = [r[0] for r in read_rows(node.state, "SELECT id FROM messages ORDER BY id")]
    assert ids == [m.id for m in sent[3:]]  # the views keep the last 3
    assert read_rows(node.state, "SELECT size FROM view_sizes ORDER BY owner") == [(3,), (3,)]
    assert_alike(node.state)


def test_a_deleted_accounts_messages_go_once_nothing_holds_them() -> None:
    node = Node(ChatLimits(queue_limit=100, history_per_pair=100))
    alice, bob = node.user("alice"), node.user("bob")
    to_bob = node.sent(alice, "bob", "to bob")
    node.ack(bob, to_bob.id)  # only the views hold it now
    to_alice = node.sent(bob, "alice", "to alice")  # in alice's queue and both views
    to_self = node.sent(alice, "alice", "to self")  # alice's own: queue and one view
    node.delete(alice)
    ids = [r[0] for r in read_rows(node.state, "SELECT id FROM messages ORDER BY id")]
    assert ids == [to_bob.id, to_alice.id]  # bob's views still hold these two
    assert count(node.state, "queue") == 0
    assert read_rows(node.state, "SELECT DISTINCT owner FROM views") == [("bob",)]
    node.delete(bob)
    assert count(node.state, "messages") == 0 and count(node.state, "views") == 0
    assert count(node.state, "view_sizes") == 0
    assert to_self.id > to_alice.id
    assert_alike(node.state)


# --- indexed reads -----------------------------------------------------------------------


def test_queue_pages_from_an_id() -> None:
    node = Node(ChatLimits(queue_limit=100))
    alice, _ = node.user("alice"), node.user("bob")
    sent = [node.sent(alice, "bob", f"m{i}") for i in range(10)]
    pages, after = [], 0
    while True:
        page, applied = node.state.queue_at("bob", after, limit=3)
        assert applied == node.state.applied_index
        if not page:
            break
        pages.append([m.id for m in page])
        after = page[-1].id
    ids = [m.id for m in sent]
    assert pages == [ids[0:3], ids[3:6], ids[6:9], ids[9:]]
    assert node.state.queue("bob", ids[4], 2) == tuple(sent[5:7])
    with pytest.raises(ChatError):
        node.state.queue("bob", 2**63)  # after_id is checked against 2**63 - 1
    assert node.state.queue("bob", 2**63 - 1) == ()


NAME_CHARS = "abAB_.-z0"
names = st.lists(st.text(NAME_CHARS, min_size=1, max_size=4), max_size=25, unique_by=str.lower)
patterns = st.sampled_from(["*", "?", "a*", "[ab]*", "[!a]*", "*_*", "?.*", "-*", "*b", "A?"])


@settings(max_examples=40, deadline=None)
@given(names=names, pattern=patterns | st.text("ab*?[]!_.-", max_size=5), size=st.integers(1, 4))
def test_list_accounts_matches_fnmatch_over_sorted_names_page_by_page(
    names: list[str], pattern: str, size: int
) -> None:
    node = Node(ChatLimits(page_size=3, max_page_size=4))
    for name in names:
        assert node.register(name).ok
    wanted = (pattern or "*").lower()
    expected = sorted((n for n in names if fnmatchcase(n.lower(), wanted)), key=str.lower)
    found: list[str] = []
    token = ""
    for _ in range(len(names) + 2):
        try:
            page, token = node.state.list_accounts(pattern, token, size)
        except ChatError as exc:  # a pattern fnmatch reads but the service refuses
            pytest.fail(f"{pattern!r}: {exc}")
        assert len(page) <= size
        found.extend(page)
        if not token:
            break
    assert found == expected
    node.state.close()


# --- restarts ----------------------------------------------------------------------------


def test_a_restart_on_the_same_directory_keeps_the_state(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    node = on_disk(directory)
    alice, _ = busy(node)
    digest, applied = node.state.digest(), node.state.applied_index
    node.state.close()
    again = ChatState(SMALL_LIMITS, directory)
    assert again.digest() == digest and again.applied_index == applied
    assert again.scan_digest() == digest
    assert [m.text for m in again.queue("bob")] == ["a0", "a1", "a2"]
    # and it goes on: the next entry applies on top
    node.state = again
    node.sent(alice, "bob", "after the restart")
    assert again.applied_index == applied + 1


def test_a_restart_keeps_the_newest_complete_generation_and_drops_an_interrupted_install(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "state"
    old = on_disk(directory)
    busy(old)
    newer = Node()
    newer.user("zed")
    old.state.close()
    # a crash after the install's rename, before the old generation was deleted ...
    newer.state.copy_to(directory / db_name(2))
    # ... and the leftover of a later install a crash interrupted
    (directory / f"{db_name(3)}.tmp").write_bytes(b"half a database")
    Path(f"{directory / db_name(3)}.tmp-wal").write_bytes(b"")
    state = ChatState(SMALL_LIMITS, directory)
    assert state.path == directory / db_name(2)
    assert state.digest() == newer.state.digest()
    assert state.registered_name("zed") == "zed" and state.registered_name("alice") is None
    databases = sorted(p.name for p in directory.iterdir() if p.name.endswith(".db"))
    assert databases == [db_name(2)]
    assert not (directory / db_name(1)).exists()
    assert not any(p.name.startswith(db_name(3)) for p in directory.iterdir())
    state.close()


def test_an_install_then_a_restart_opens_the_installed_generation(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    node = on_disk(directory)
    busy(node)
    source = Node()
    source.user("zed")
    incoming = tmp_path / "incoming.db"
    source.state.copy_to(incoming)
    node.state.install(incoming)
    assert node.state.path == directory / db_name(2)
    node.state.close()
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".db")) == [db_name(2)]
    again = ChatState(SMALL_LIMITS, directory)
    assert again.digest() == source.state.digest()
    twin = copy_of(again)
    assert_alike(twin, again, source.state)
    again.close()


def test_reads_see_a_committed_batch_whole_from_another_thread() -> None:
    """A reader on another thread, reading while batches commit, sees every batch whole: the
    queue length it reads is always a multiple of the batch size."""
    node = Node(ChatLimits(queue_limit=10_000, history_per_pair=10_000))
    alice, _ = node.user("alice"), node.user("bob")
    node.client_id("client", alice)  # registered now, not inside a batch
    base = node.state.applied_index
    seen: list[int] = []
    done = threading.Event()

    def reader() -> None:
        deadline = time.monotonic() + 20
        while not done.is_set() and time.monotonic() < deadline:
            seen.append(len(node.state.queue("bob", limit=10_000)))

    thread = threading.Thread(target=reader)
    thread.start()
    index = base
    for _ in range(20):
        batch = []
        for _ in range(5):
            index += 1
            batch.append((index, encode(node.send_cmd(alice, "bob", "x"))))
        node.state.apply_batch(batch)
    done.set()
    thread.join()
    assert seen and all(n % 5 == 0 for n in seen), sorted(set(seen))
