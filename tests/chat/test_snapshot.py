"""Snapshots are copies of the database (copy_to, validate_copy, install), digests are kept
by apply, and the contract of apply: exact round trips, replicas provably equal."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.chat.commands import (
    COMMAND_FORMAT_VERSION,
    Command,
    canonical_json,
    encode,
    password_hash_json,
    session_of,
)
from node.chat.database import SCHEMA_VERSION
from node.chat.errors import CommandDecodeError, InvariantError
from node.chat.state import ChatState, _row_hash, _row_json
from node.config import ChatLimits

from .conftest import SMALL_LIMITS, Node, assert_alike, copy_of, fast_hash

REPO = Path(__file__).resolve().parents[2]


def busy_node() -> Node:
    """A state with something of everything: accounts, deleted ones, sessions, queues, acks,
    histories, dedup replies (good and refused)."""
    node = Node()
    alice, bob, carol = node.user("Alice"), node.user("bob"), node.user("carol")
    node.login("bob")
    for i in range(6):
        node.send(alice, "bob", f"a{i} ✓")
        node.send(bob, "alice", f"b{i}")
        node.advance(1)
    node.send(carol, "carol", "self")
    node.ack(bob, 3)
    node.send(alice, "nobody")
    node.delete(carol)
    node.logout(alice)
    return node


def reads(state: ChatState) -> tuple[object, ...]:
    """Every read a node serves, on busy_node's state."""
    bob = session_of("token-2")  # bob's first login in busy_node
    return (
        state.applied_index,
        state.log_time_ms,
        state.voters,
        state.account_count,
        state.session_count,
        state.client_count,
        state.list_accounts(),
        state.list_accounts("*o*", page_size=1),
        state.registered_name("ALICE"),
        state.account_hash("bob"),
        state.authenticate(bob),
        state.history("alice", "bob", 100),
        state.history("bob", "alice", 2),
        state.queue("bob"),
        state.queue_at("alice", 3, 2),
        [state.remembered_replies(c) for c in range(1, state.applied_index + 1)],
        state.digest_at(),
    )


def test_a_copy_installed_elsewhere_keeps_the_digest_and_every_read(tmp_path: Path) -> None:
    node = busy_node()
    copy = tmp_path / "copy.db"
    assert node.state.copy_to(copy) == node.state.applied_index
    assert copy.stat().st_mode & 0o777 == 0o600
    other = ChatState(SMALL_LIMITS, tmp_path / "other")
    assert other.validate_copy(copy) == node.state.applied_index
    other.install(copy)
    assert not copy.exists()  # install takes the file over
    assert reads(other) == reads(node.state)
    assert_alike(other, node.state)
    assert other.sizes()["database_bytes"] > 0


def test_a_copy_made_while_applies_go_on_is_one_committed_state(tmp_path: Path) -> None:
    """copy_to runs on another thread than the apply one: the copy holds one commit, whole."""
    node = busy_node()
    a = node.login("alice")
    stop = threading.Event()
    copies: list[tuple[Path, int]] = []

    def copier() -> None:
        for i in range(5):
            path = tmp_path / f"copy-{i}.db"
            copies.append((path, node.state.copy_to(path)))
        stop.set()

    thread = threading.Thread(target=copier)
    thread.start()
    while not stop.is_set():
        node.send(a, "bob", "during")
    thread.join()
    for path, applied in copies:
        twin = ChatState(SMALL_LIMITS)
        twin.install(path)
        assert twin.applied_index == applied
        assert twin.scan_digest() == twin.digest()
        twin.close()


def test_install_while_this_threads_reader_is_open_then_reads_see_the_new_state(
    tmp_path: Path,
) -> None:
    node = busy_node()
    other = Node()
    other.user("zed")
    assert other.state.registered_name("zed") == "zed"  # this thread's reader is open now
    old_path = other.state.path
    seen: list[object] = []
    ready, go = threading.Event(), threading.Event()

    def reader_elsewhere() -> None:  # another thread's reader, open across the install
        seen.append(other.state.registered_name("zed"))
        ready.set()
        go.wait(10)
        seen.append(other.state.registered_name("zed"))
        seen.append(other.state.digest())

    thread = threading.Thread(target=reader_elsewhere)
    thread.start()
    assert ready.wait(10)
    copy = tmp_path / "copy.db"
    node.state.copy_to(copy)
    other.state.install(copy)
    go.set()
    thread.join()
    assert other.state.path != old_path and not old_path.exists()
    assert not Path(f"{old_path}-wal").exists() and not Path(f"{old_path}-shm").exists()
    assert other.state.registered_name("zed") is None
    assert seen == ["zed", None, node.state.digest()]
    assert reads(other.state) == reads(node.state)
    assert_alike(other.state, node.state)
    # and it goes on from there: the next entry applies on top of the installed state
    empty = ChatState(SMALL_LIMITS)
    empty_copy = tmp_path / "empty.db"
    empty.copy_to(empty_copy)
    other.state.install(empty_copy)
    assert other.state.account_count == 0 and other.state.applied_index == 0


def test_a_replica_that_installed_a_copy_goes_on_exactly_like_the_original() -> None:
    node = busy_node()
    twin = copy_of(node.state)
    bob = session_of("token-2")  # bob's first login in busy_node
    node.advance(1)
    commands: list[Callable[[], Command]] = [
        lambda: node.send_cmd(bob, "alice", "after"),
        lambda: node.register_cmd("carol"),
        lambda: node.ack_cmd(bob, 100),
        lambda: node.login_cmd("carol"),  # reads the state, as the accepting node does
    ]
    for command in commands:
        index, data = node.state.applied_index + 1, encode(command())
        assert node.state.apply(index, data) == twin.apply(index, data)
    assert_alike(twin, node.state)
    assert twin.session_count == node.state.session_count == 3


def test_equal_states_have_equal_digests_and_different_ones_do_not() -> None:
    a, b = busy_node(), busy_node()
    assert_alike(a.state, b.state)
    a.register("dave")
    assert a.state.digest() != b.state.digest()
    assert a.state.scan_digest() == a.state.digest()
    b.register("dave")
    assert_alike(a.state, b.state)
    assert len(a.state.digest()) == 64


@given(
    st.sampled_from(["accounts", "sessions", "clients", "replies", "messages", "views"]),
    st.lists(st.one_of(st.integers(), st.text(), st.booleans()), min_size=1, max_size=6),
)
def test_a_row_is_hashed_as_the_json_of_its_table_and_values(table: str, row: list[object]) -> None:
    """The digest's encoding of a row is json.dumps of [table, *row] (ASCII, no spaces), byte
    for byte: written out by hand for speed, it must stay that encoding, lone surrogates,
    quotes, control characters and integers past 64 bits included."""
    expected = json.dumps([table, *row], ensure_ascii=True, separators=(",", ":"))
    assert _row_json(table, tuple(row)) == expected


def test_the_digest_covers_every_table() -> None:
    """A row changed behind apply's back (with the sqlite3 shell, say) leaves the kept digest
    as it was, but the full scan sees it: the scan covers every table."""
    node = busy_node()
    kept = node.state.digest()
    edits = [
        "UPDATE accounts SET queued = queued + 1 WHERE user_key = 'bob'",
        "UPDATE sessions SET last_used_ms = last_used_ms + 1",
        "UPDATE clients SET first_outstanding = first_outstanding + 1",
        "UPDATE replies SET outcome = outcome || ' '",
        "UPDATE messages SET text = text || '!'",
        "DELETE FROM views WHERE message_id = (SELECT max(message_id) FROM views)",
        "UPDATE view_sizes SET size = size + 1",
        "DELETE FROM queue WHERE message_id = (SELECT max(message_id) FROM queue)",
    ]
    for edit in edits:
        before = node.state.scan_digest()
        conn = sqlite3.connect(node.state.path, isolation_level=None)
        try:
            assert conn.execute(edit).rowcount > 0, edit
        finally:
            conn.close()
        assert node.state.scan_digest() != before, edit
        assert node.state.digest() == kept


def _edit_copy(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql)
    finally:
        conn.close()


def test_validate_copy_refuses_what_is_not_a_sound_copy_and_says_why(tmp_path: Path) -> None:
    node = busy_node()
    good = tmp_path / "good.db"
    node.state.copy_to(good)
    size = good.stat().st_size
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(good.read_bytes()[: size // 2])
    noise = tmp_path / "noise.db"
    noise.write_bytes(os.urandom(size))
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    other_version = tmp_path / "other-version.db"
    shutil.copy(good, other_version)
    _edit_copy(other_version, f"UPDATE meta SET schema_version = {SCHEMA_VERSION + 1}")
    other_schema = tmp_path / "other-schema.db"
    _edit_copy(other_schema, "CREATE TABLE t (x)")
    cases = {
        truncated: "malformed",
        noise: "not a SQLite database",
        other_version: f"schema version {SCHEMA_VERSION + 1}, this node reads {SCHEMA_VERSION}",
        other_schema: "not a chatbooth chat database",
    }
    before = node.state.digest()
    for path, why in cases.items():
        with pytest.raises(ValueError) as info:
            node.state.validate_copy(path)
        assert path.name in str(info.value)
        assert why in str(info.value), info.value
    with pytest.raises(ValueError):
        node.state.validate_copy(empty)
    assert node.state.validate_copy(good) == node.state.applied_index
    assert node.state.digest() == before  # touches nothing of ours


def test_an_entry_cannot_be_applied_twice_or_out_of_order() -> None:
    node = Node()
    cmd = node.register_cmd("alice")
    node.state.apply(5, encode(cmd))
    for index in (5, 4):
        with pytest.raises(InvariantError):
            node.state.apply(index, encode(node.register_cmd("bob")))
    assert node.state.applied_index == 5 and node.state.account_count == 1


def test_skip_moves_applied_index_for_entries_without_chat_data() -> None:
    state = ChatState(SMALL_LIMITS)
    before = state.digest()
    state.skip(1)
    assert state.applied_index == 1
    assert state.digest() != before  # the digest is of the state *at* an applied index
    with pytest.raises(InvariantError):
        state.skip(1)


def test_undecodable_entries_raise_and_leave_the_state_alone() -> None:
    node = busy_node()
    before, index = node.state.digest(), node.state.applied_index
    with pytest.raises(CommandDecodeError):
        node.state.apply(index + 1, bytes([COMMAND_FORMAT_VERSION]) + b"{}")
    assert node.state.digest() == before and node.state.applied_index == index


_SCRIPT = """
import random
from node.chat.commands import Login, Register, RegisterClient, RequestId, Send, encode
from node.chat.commands import session_of
from node.chat.passwords import hash_password
from node.chat.state import ChatState
from node.config import ChatLimits, ScryptCost

rng = random.Random(7)
state = ChatState(ChatLimits(queue_limit=8, history_per_pair=5, session_idle_s=30))
names = [f"user{i}" for i in range(12)]
h = hash_password("pw", ScryptCost(n=16, r=1, p=1), b"salt")
index, now, tokens, clients = 0, 0, [], {}
for step in range(3000):
    now += rng.randrange(0, 2000)
    roll = rng.random()
    client = f"c{rng.randrange(30)}"
    tok = rng.choice(tokens or ["x"]) if roll >= 0.3 else ""
    if (client, tok) not in clients:  # a Send's client is bound to its session (issue 11)
        index += 1
        cmd = RegisterClient(timestamp_ms=now, log_time_ms=now, session=tok)
        if state.apply(index, encode(cmd)).ok:
            clients[(client, tok)] = index
    req = RequestId(clients.get((client, tok), index), step, step)
    if roll < 0.1:
        cmd = Register(timestamp_ms=now, log_time_ms=now, request=req,
                       username=rng.choice(names), password_hash=h)
    elif roll < 0.3:
        tok = session_of(f"t{step}")
        tokens.append(tok)
        cmd = Login(timestamp_ms=now, log_time_ms=now, request=req, username=rng.choice(names),
                    session=tok, verified_digest=h.digest)
    else:
        cmd = Send(timestamp_ms=now, log_time_ms=now, request=req,
                   session=tok, recipient=rng.choice(names), text=str(step))
    index += 1
    state.apply(index, encode(cmd))
print(state.digest(), state.session_count, state.client_count, len(state.queue("user1")))
"""


def test_apply_does_not_depend_on_the_hash_seed() -> None:
    """TRAPS.md, Determinism: replay under two PYTHONHASHSEED values and compare."""
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].split()[1] != "0"  # the script did build sessions
    assert outputs[0].split()[3] != "0"  # ... and sent messages under them


def _large_state(messages: int, directory: Path) -> ChatState:
    """A state holding `messages` queued 100-byte messages from alice to bob, its rows written
    straight into the database (building it by apply would take far longer), with the digest's
    sum of row hashes as apply keeps it."""
    limits = ChatLimits(queue_limit=messages, history_per_pair=messages)
    ChatState(limits, directory).close()  # a new, empty database
    stored = canonical_json(password_hash_json(fast_hash("pw"))).decode()
    rows: dict[str, list[tuple[object, ...]]] = {
        "accounts": [("alice", "alice", stored, 0), ("bob", "bob", stored, messages)],
        "view_sizes": [("alice", "bob", messages), ("bob", "alice", messages)],
    }
    ids = range(1, messages + 1)
    rows["messages"] = [(i, "alice", "bob", "x" * 100, 1) for i in ids]
    rows["queue"] = [("bob", i) for i in ids]
    rows["views"] = [("alice", "bob", i) for i in ids] + [("bob", "alice", i) for i in ids]
    total = 0
    [path] = directory.glob("chat-*.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for table, table_rows in rows.items():
            marks = ", ".join("?" * len(table_rows[0]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", table_rows)
            for row in table_rows:
                total = (total + _row_hash(table, row)) % (1 << 256)
        conn.execute(
            "UPDATE meta SET applied_index = ?, log_time_ms = 1, next_message_id = ?, row_sum = ?",
            (messages, messages + 1, f"{total:064x}"),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    del rows
    return ChatState(limits, directory)


def test_a_large_state_reads_its_digest_in_one_row_and_copies_without_loading_it(
    tmp_path: Path,
) -> None:
    """Issue 13: the digest never stalls the node (one row, however large the state), and no
    whole-state Python structure is built for a snapshot: at 100,000 messages, digest_at()
    takes a few milliseconds at most, and copy_to's Python allocations peak far below
    the database's size."""
    state = _large_state(100_000, tmp_path / "big")
    assert state.scan_digest() == state.digest()  # the rows were written as apply would
    db_bytes = state.sizes()["database_bytes"]
    assert db_bytes > 15_000_000
    started = time.perf_counter()
    for _ in range(100):
        applied, _digest = state.digest_at()
    each = (time.perf_counter() - started) / 100
    assert applied == 100_000
    assert each < 0.005, f"digest_at took {each * 1000:.1f} ms"

    copy = tmp_path / "copy.db"
    tracemalloc.start()
    try:
        assert state.copy_to(copy) == 100_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < db_bytes / 50, f"copy_to held {peak} bytes of Python objects"

    twin = ChatState(state.limits, tmp_path / "twin")
    tracemalloc.start()
    try:
        assert twin.validate_copy(copy) == 100_000
        twin.install(copy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < db_bytes / 50, f"validate_copy and install held {peak} bytes"
    assert twin.digest_at() == state.digest_at()
    page = twin.queue("bob", after_id=99_990)
    assert [m.id for m in page] == list(range(99_991, 100_001))
    assert len(twin.queue("bob")) == 1000  # one page (QUEUE_PAGE), not the whole queue
    twin.close()
    state.close()
