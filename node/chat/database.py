"""The chat state's SQLite database: its files, schema, connections, copies and checkpoints.

    state_dir/chat-<generation>.db      the database (and SQLite's -wal and -shm beside it)

One database per node. A snapshot installed from the leader becomes the next generation: it is
written under its new name, fsynced and renamed into place, and only then are the older
generation's files deleted. So no database is ever renamed over one that has open connections
or a leftover `-wal` (TRAPS: SQLite would apply the old WAL to the new file), and a crash at any
point leaves one complete generation, the newest, which `open_database_dir` picks.

Settings (TRAPS, SQLite): WAL journal with synchronous=NORMAL, so a COMMIT writes the WAL
without an fsync. After a power cut the database returns to some commit at or after its last
complete checkpoint; the Raft log is the truth and is replayed from the database's applied index,
and it is compacted only up to what a complete checkpoint made durable. The writer connection
never checkpoints by itself (wal_autocheckpoint=0: the automatic one fsyncs inside a COMMIT);
the driver asks for `checkpoint` off the event loop. Every connection is in autocommit mode
(isolation_level=None): transactions are explicit BEGIN IMMEDIATE / COMMIT on the writer and
BEGIN / COMMIT on a reader that needs one view across several SELECTs.

Imports the standard library only (sqlite3, os for fsync and file modes): nothing of
chatbooth, no clock and no randomness.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000  # how long a connection waits for a lock another one holds
DB_NAME = re.compile(r"^chat-([0-9]{8})\.db$")
_SIDE_FILES = ("-wal", "-shm", "-journal")

SCHEMA = """
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    applied_index INTEGER NOT NULL,
    conf TEXT NOT NULL,
    log_time_ms INTEGER NOT NULL,
    next_message_id INTEGER NOT NULL,
    highest_client_id INTEGER NOT NULL,
    client_count INTEGER NOT NULL,
    reply_count INTEGER NOT NULL,
    row_sum TEXT NOT NULL
) STRICT;
CREATE TABLE accounts (
    user_key TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    queued INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    user_key TEXT NOT NULL,
    last_used_ms INTEGER NOT NULL,
    used_at INTEGER NOT NULL UNIQUE
) STRICT, WITHOUT ROWID;
CREATE INDEX sessions_of_account ON sessions (user_key, used_at);
CREATE TABLE clients (
    client_id INTEGER PRIMARY KEY,
    session TEXT NOT NULL,
    first_outstanding INTEGER NOT NULL,
    last_used_ms INTEGER NOT NULL,
    used_at INTEGER NOT NULL UNIQUE,
    replies INTEGER NOT NULL
) STRICT;
CREATE INDEX clients_of_session ON clients (session, used_at);
CREATE TABLE replies (
    client_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (client_id, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    text TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE views (
    owner TEXT NOT NULL,
    other TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    PRIMARY KEY (owner, other, message_id)
) STRICT, WITHOUT ROWID;
CREATE TABLE view_sizes (
    owner TEXT NOT NULL,
    other TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (owner, other)
) STRICT, WITHOUT ROWID;
CREATE TABLE queue (
    recipient TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    PRIMARY KEY (recipient, message_id)
) STRICT, WITHOUT ROWID;
"""
# What each table means, for a person with the sqlite3 shell (README, "Looking inside"):
#   meta        one row: the applied index (written in the transaction of the changes it
#               covers), the membership as of it, log time, counters, and the digest's sum
#   accounts    one per user: the name as registered, the scrypt hash (JSON), queue length
#   sessions    live sessions by token hash; used_at is the log index of the last use (LRU)
#   clients     client sessions of the dedup table (thesis §6.3), by RegisterClient index
#   replies     the stored reply of each outstanding request, per client and sequence number
#   messages    every message still in some queue or view
#   views       each account's view of its conversations (owner, other party, message)
#   view_sizes  how many messages each view holds (for history retention)
#   queue       unacked messages per recipient


class DatabaseError(Exception):
    """The chat database cannot be used: the message names the file and says why."""


class DatabaseFormatError(DatabaseError):
    """The database was written by another version of chatbooth."""


class DatabaseFullError(DatabaseError):
    """The disk (or a quota) is full: SQLITE_FULL. The node must stop."""


def db_name(generation: int) -> str:
    return f"chat-{generation:08d}.db"


def generations(state_dir: Path) -> list[int]:
    """The generations whose database file is present, oldest first."""
    found = []
    for name in os.listdir(state_dir):
        match = DB_NAME.match(name)
        if match:
            found.append(int(match[1]))
    return sorted(found)


def remove_database(path: Path) -> None:
    """Delete a database file and SQLite's files beside it."""
    for suffix in ("", *_SIDE_FILES):
        Path(str(path) + suffix).unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path) -> None:
    """Create an empty file readable by its owner only: SQLite gives the -wal and -shm files
    the database file's mode, and would otherwise create it 0644 & ~umask (TRAPS)."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    """A connection to an existing database, with the project's settings.

    The writer's connection may be handed to the one thread that applies (check_same_thread
    is off for it: it is opened where the state machine is built, then used only on the apply
    thread); a reader's belongs to the thread that opened it.
    """
    try:
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=not writer,
            timeout=BUSY_TIMEOUT_MS / 1000,
            cached_statements=256,
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if writer:
            conn.execute("PRAGMA wal_autocheckpoint=0")
        else:
            conn.execute("PRAGMA query_only=1")
    except sqlite3.Error as exc:
        raise DatabaseError(f"{path}: cannot open the chat database: {exc}") from exc
    return conn


def set_incremental_vacuum(path: Path) -> None:
    """On a new, empty database file: auto_vacuum=INCREMENTAL. It must come before anything
    writes the header, journal_mode=WAL included, or SQLite ignores it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
    finally:
        conn.close()


def create_schema(conn: sqlite3.Connection, initial_meta: tuple[object, ...]) -> None:
    """Make the tables of a new database (set_incremental_vacuum first)."""
    conn.execute("BEGIN IMMEDIATE")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?)", initial_meta)
    conn.execute("COMMIT")


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """DatabaseFormatError unless this database has the schema this node knows."""
    try:
        row = conn.execute("SELECT schema_version FROM meta WHERE id = 1").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DatabaseFormatError(
            f"{path}: not a chatbooth chat database ({exc}); start the cluster afresh with "
            "`python -m supervisor up --fresh` (it deletes the data)"
        ) from None
    if row is None or row[0] != SCHEMA_VERSION:
        found = None if row is None else row[0]
        raise DatabaseFormatError(
            f"{path}: chat database schema version {found}, this node reads {SCHEMA_VERSION}; "
            "start the cluster afresh with `python -m supervisor up --fresh` (it deletes the data)"
        )


def checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database file, fsync it, and empty the WAL. True only if it was
    complete (busy == 0 and every frame checkpointed): only then is everything committed
    before it durable in the database file (TRAPS: a reader can make it partial)."""
    # Without a busy timeout: a reader holding it back makes it report busy at once, rather
    # than stall the apply thread for the whole timeout.
    conn.execute("PRAGMA busy_timeout=0")
    try:
        busy, log, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return bool(busy == 0 and log == done)


def copy_database(source: Path, dest: Path) -> None:
    """A consistent copy of `source` in the new file `dest`, durable on return.

    Copies every page in one step (backup with pages=-1: a stepwise backup restarts whenever
    the source is written) from a reader connection of its own, so the writer goes on. The
    copy is left in rollback-journal mode, a self-contained file, and fsynced with its
    directory (TRAPS: SQLite does not fsync a copy for us).
    """
    create_private(dest)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        target = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(target, pages=-1)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    except sqlite3.Error as exc:
        remove_database(dest)
        raise DatabaseError(f"{source}: copying the chat database failed: {exc}") from exc
    finally:
        src.close()
    fsync_file(dest)
    fsync_dir(dest.parent)


def read_copy_meta(path: Path) -> tuple[Any, ...]:
    """The meta row of a copy (not in use by anyone), after checking it is a sound database of
    this schema. ValueError says what is wrong."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise ValueError(f"{path.name}: cannot open as a database: {exc}") from None
    try:
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path.name}: not a SQLite database: {exc}") from None
        if check is None or check[0] != "ok":
            raise ValueError(f"{path.name}: the database is damaged: {check}")
        try:
            check_schema(conn, path)
        except DatabaseFormatError as exc:
            raise ValueError(str(exc)) from None
        row = conn.execute(
            "SELECT applied_index, conf, log_time_ms, next_message_id, highest_client_id, "
            "client_count, reply_count, row_sum FROM meta WHERE id = 1"
        ).fetchone()
        if row is None:
            raise ValueError(f"{path.name}: the database has no meta row")
        return tuple(row)
    finally:
        conn.close()
