"""The chat state machine, kept in SQLite: what the committed log builds, and the reads served
from it.

`ChatState.apply_batch(entries)` applies committed entries in one transaction, with the applied
index written in that same transaction. It is deterministic: the state after a sequence of
entries depends on those entries alone. There is no clock (log time is the largest
`log_time_ms` applied so far; session and client expiry are measured in it), no randomness,
and no order that SQLite chooses: every row is found by its key, every order that reaches a
reply or an eviction is an ORDER BY on a unique key, and the least recently used session or
client is the one with the smallest `used_at`, the log index of its last use. Two replicas fed
the same entries have the same rows and the same `digest()`. The limits (ChatLimits) take part
in apply, so every node of a cluster must run with the same ones.

The digest is kept as the state changes, inside the apply transaction: the sum, modulo 2**256,
of the SHA-256 of every row (an order-free multiset hash), with the counters of the meta row
beside it. Reading it costs one row, however large the state (TRAPS: a scan of a million rows
costs seconds, and `check` polls it).

Log time is stamped by the leader (node.logclock): it moves at most as fast as the leader's
monotonic clock, so a wall clock that jumps ahead cannot expire anything early. Client sessions
are registered in the log (thesis §6.3): a client id is the index of its RegisterClient entry,
and a request from an id that was issued but is no longer remembered (idle past client_idle_s,
or evicted) is refused as expired, never applied as new.

Threads: the writer connection is used by one thread at a time, in order (the driver's apply
executor has one worker); reads (`authenticate`, `list_accounts`, `history`, `queue`, ...) go
through a connection per reading thread and see only committed transactions, so a reader never
sees half a batch. No read transaction is held across an await: every read runs to its end in
one call.

Imports node.config, node.chat.* and the standard library only: no grpc, asyncio or protos.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import shutil
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from fnmatch import fnmatchcase
from json.encoder import encode_basestring_ascii as _json_string
from pathlib import Path
from typing import Any, NoReturn

import node.chat.database as db
from node.chat.commands import (
    MAX_INT64,
    Ack,
    Command,
    CommandKind,
    DeleteAccount,
    Login,
    Logout,
    Register,
    RegisterClient,
    RequestId,
    Send,
    Tick,
    canonical_json,
    decode,
    password_hash_from_json,
    password_hash_json,
    request_digest,
    session_used,
)
from node.chat.database import DatabaseError, DatabaseFormatError, DatabaseFullError
from node.chat.errors import (
    ChatError,
    CommandDecodeError,
    ErrorCode,
    InvariantError,
    Reason,
)
from node.chat.passwords import PasswordHash
from node.chat.replies import (
    AckReply,
    ApplyResult,
    ChatMessage,
    DeleteAccountReply,
    LoginReply,
    LogoutReply,
    Outcome,
    RegisterClientReply,
    RegisterReply,
    Reply,
    SendReply,
    TickReply,
)
from node.chat.validation import (
    check_request_id,
    is_session,
    show,
    username_key,
    validate_history_limit,
    validate_message_id,
    validate_page_size,
    validate_pattern,
    validate_text,
    validate_username,
)
from node.config import ChatLimits

__all__ = [
    "CLIENT_EXPIRED_TEXT",
    "ChatState",
    "DatabaseError",
    "DatabaseFormatError",
    "DatabaseFullError",
]

# Bounds that keep one misbehaving client or user from growing the state without limit.
MAX_SESSIONS_PER_ACCOUNT = 64  # a login beyond it ends that account's least recently used one
# The dedup table (thesis §6.3) is bounded in total and per session; past a bound the least
# recently used client session goes (in log order, so alike on every replica), and its next
# request is refused as expired (client-expired) rather than applied twice.
MAX_REPLIES_PER_CLIENT = 256  # outstanding requests remembered per client
MAX_REPLIES = 262_144  # replies remembered in all
MAX_CLIENTS = 65_536  # client sessions in all
MAX_CLIENTS_PER_SESSION = 128  # client sessions bound to one chat session (bench: 64 at once)
MAX_UNBOUND_CLIENTS = 4_096  # client sessions for Register and Login, which anyone may open
CLIENT_EXPIRED_TEXT = "client session expired: the outcome of earlier requests is unknown"
QUEUE_PAGE = 1000  # messages a queue read returns at most (Subscribe pages through the rest)
WAL_CHECKPOINT_BYTES = 16 << 20  # the database's WAL is checkpointed once past this

_WILDCARDS = "*?["
_MOD = 1 << 256
_UNKNOWN_SESSION = "session unknown or ended (logged out, expired or account deleted): log in again"
_WRONG_LOGIN = "wrong username or password"

# table -> (columns, how many of the first columns are the primary key)
_TABLES: dict[str, tuple[tuple[str, ...], int]] = {
    "accounts": (("user_key", "username", "password_hash", "queued"), 1),
    "sessions": (("hash", "user_key", "last_used_ms", "used_at"), 1),
    "clients": (
        ("client_id", "session", "first_outstanding", "last_used_ms", "used_at", "replies"),
        1,
    ),
    "replies": (("client_id", "seq", "kind", "request_digest", "outcome"), 2),
    "messages": (("id", "sender", "recipient", "text", "timestamp_ms"), 1),
    "views": (("owner", "other", "message_id"), 3),
    "view_sizes": (("owner", "other", "size"), 2),
    "queue": (("recipient", "message_id"), 2),
}


def _statements(table: str) -> tuple[str, str, str]:
    columns, keys = _TABLES[table]
    where = " AND ".join(f"{c} = ?" for c in columns[:keys])
    insert = f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})"
    delete = f"DELETE FROM {table} WHERE {where}"
    sets = ", ".join(f"{c} = ?" for c in columns[keys:]) or "1 = 1"
    update = f"UPDATE {table} SET {sets} WHERE {where}"
    return insert, delete, update


_SQL = {table: _statements(table) for table in _TABLES}
_TABLE_JSON = {table: "[" + json.dumps(table) for table in _TABLES}
_META_COLUMNS = (
    "applied_index, conf, log_time_ms, next_message_id, highest_client_id, client_count, "
    "reply_count, row_sum"
)


def _row_json(table: str, row: tuple[object, ...]) -> str:
    """`json.dumps([table, *row], ensure_ascii=True, separators=(",", ":"))`, the encoding
    the digest hashes, written out for the two types a row holds: json.dumps builds an encoder
    per call, and this runs some fifteen times per applied Send."""
    parts = [_TABLE_JSON[table]]
    for value in row:
        kind = type(value)
        if kind is str:
            parts.append(_json_string(value))  # type: ignore[arg-type]
        elif kind is int:
            parts.append(int.__repr__(value))
        else:  # not written by this module; the general encoder gives the same bytes
            parts.append(json.dumps(value, ensure_ascii=True, separators=(",", ":")))
    return ",".join(parts) + "]"


def _row_hash(table: str, row: tuple[object, ...]) -> int:
    encoded = _row_json(table, row).encode("ascii")
    return int.from_bytes(hashlib.sha256(encoded).digest(), "big")


class _Meta:
    """The meta row, as the writer holds it between statements: written once per batch."""

    __slots__ = (
        "applied_index",
        "client_count",
        "conf",
        "highest_client_id",
        "log_time_ms",
        "next_message_id",
        "reply_count",
        "row_sum",
    )

    def __init__(self, row: Sequence[Any]) -> None:
        (
            self.applied_index,
            self.conf,
            self.log_time_ms,
            self.next_message_id,
            self.highest_client_id,
            self.client_count,
            self.reply_count,
            row_sum,
        ) = row
        self.row_sum = int(row_sum, 16)

    def values(self) -> tuple[Any, ...]:
        return (
            self.applied_index,
            self.conf,
            self.log_time_ms,
            self.next_message_id,
            self.highest_client_id,
            self.client_count,
            self.reply_count,
            f"{self.row_sum:064x}",
        )

    def restore(self, values: tuple[Any, ...]) -> None:
        _Meta.__init__(self, values)


def digest_of(meta: Sequence[Any]) -> str:
    """The state digest from a meta row (`_META_COLUMNS`): the rows' sum and the counters."""
    return hashlib.sha256(canonical_json(list(meta))).hexdigest()


def _unauthenticated(message: str) -> ChatError:
    return ChatError(ErrorCode.UNAUTHENTICATED, message)


class ChatState:
    """Accounts, sessions, queues, histories and client sessions, in one SQLite database.

    `directory` holds the database (created 0700 if need be); None makes a private temporary
    one, deleted by close() (tests and tools). `voters` is the membership a new database
    starts with.
    """

    _sessions_used_since: int | None  # see _forget_expiry_bounds
    _clients_used_since: int | None

    def __init__(
        self,
        limits: ChatLimits,
        directory: Path | None = None,
        *,
        voters: Sequence[str] = (),
    ) -> None:
        self._limits = limits
        self._session_idle_ms = limits.session_idle_s * 1000
        self._client_idle_ms = limits.client_idle_s * 1000
        self._cleanup: weakref.finalize[Any, Any] | None = None
        if directory is None:
            made = tempfile.mkdtemp(prefix="chatbooth-state-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, made, True)
            directory = Path(made)
        self._dir = Path(directory)
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._generation, self._path = self._open_newest(voters)
        self._wal = Path(f"{self._path}-wal")
        self._db = db.connect(self._path, writer=True)
        db.check_schema(self._db, self._path)
        self._meta = _Meta(self._db.execute(f"SELECT {_META_COLUMNS} FROM meta").fetchone())
        self._forget_expiry_bounds()
        self._closed = False

    def _open_newest(self, voters: Sequence[str]) -> tuple[int, Path]:
        """The newest complete generation (older ones and interrupted installs removed), or a
        new database if there is none."""
        for name in [n for n in _listdir(self._dir) if n.endswith(".tmp")]:
            db.remove_database(self._dir / name)  # an install a crash interrupted
        found = db.generations(self._dir)
        for older in found[:-1]:
            db.remove_database(self._dir / db.db_name(older))
        if found:
            return found[-1], self._dir / db.db_name(found[-1])
        path = self._dir / db.db_name(1)
        db.create_private(path)
        db.set_incremental_vacuum(path)
        conn = db.connect(path, writer=True)
        try:
            conf = json.dumps(
                {"learners": [], "voters": list(voters)}, separators=(",", ":"), sort_keys=True
            )
            initial = (db.SCHEMA_VERSION, 0, conf, 0, 1, 0, 0, 0, "0" * 64)
            db.create_schema(conn, initial)
        finally:
            conn.close()
        db.fsync_file(path)
        db.fsync_dir(self._dir)
        return 1, path

    def close(self) -> None:
        """Close every connection (a private temporary database is deleted)."""
        if self._closed:
            return
        self._closed = True
        self._db.close()
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        if self._cleanup is not None:
            self._cleanup()

    # --- properties -----------------------------------------------------------------------

    @property
    def limits(self) -> ChatLimits:
        return self._limits

    @property
    def path(self) -> Path:
        """The database file in use."""
        return self._path

    @property
    def applied_index(self) -> int:
        """Index of the last entry applied (or skipped, or installed from a snapshot)."""
        return int(self._meta.applied_index)

    @property
    def log_time_ms(self) -> int:
        return int(self._meta.log_time_ms)

    @property
    def conf(self) -> str:
        """The membership as of the applied index, as stored with it (JSON: voters and
        learners)."""
        return str(self._meta.conf)

    @property
    def voters(self) -> tuple[str, ...]:
        """The voters as of the applied index."""
        return tuple(json.loads(self._meta.conf)["voters"])

    @property
    def account_count(self) -> int:
        return self._count("SELECT count(*) FROM accounts")

    @property
    def session_count(self) -> int:
        return self._count("SELECT count(*) FROM sessions")

    @property
    def client_count(self) -> int:
        """Clients remembered for deduplication."""
        return self._count("SELECT client_count FROM meta")

    def remembered_replies(self, client_id: int) -> int:
        """How many replies are kept for `client_id` (0 if it is not remembered)."""
        return self._count("SELECT count(*) FROM replies WHERE client_id = ?", client_id)

    # --- applying -------------------------------------------------------------------------

    def apply(self, index: int, data: bytes) -> ApplyResult:
        """Apply committed entry `index` alone (a batch of one). A refused command is an
        outcome, never raised. Raises CommandDecodeError (the state untouched) for bytes that
        are no command, and InvariantError if `index` is not past `applied_index`."""
        self._check_next(index)
        result = self.apply_batch([(index, data)])[0]
        if result is None:
            raise InvariantError(f"entry {index} gave no result")
        return result

    def skip(self, index: int) -> None:
        """Record that entry `index` carries nothing for the chat (a leader's no-op, a
        membership change), so that `applied_index` follows the log."""
        self._check_next(index)
        self.apply_batch([(index, None)])

    def _check_next(self, index: int) -> None:
        if index <= self._meta.applied_index:
            raise InvariantError(
                f"entry {index} applied after entry {self._meta.applied_index}: entries must be "
                "applied once each, in log order"
            )

    def apply_batch(
        self, entries: Sequence[tuple[int, bytes | None]], conf: str | None = None
    ) -> list[ApplyResult | None]:
        """Apply committed entries (index, data; None for an entry with nothing for the chat)
        in one transaction, the applied index and `conf` (the membership as of the last
        entry, as the driver encodes it; None: unchanged) written in it. Entries at or below
        the applied index are skipped (the state already holds them: a restart replays from
        the log).

        One result per entry, None for one skipped or without data. Whatever is raised (a
        command that does not decode: CommandDecodeError; the disk: DatabaseError) leaves the
        state as it was before the batch.
        """
        meta = self._meta
        saved = meta.values()
        results: list[ApplyResult | None] = []
        conn = self._db
        try:
            conn.execute("BEGIN IMMEDIATE")
            for index, data in entries:
                if index <= meta.applied_index:
                    results.append(None)
                    continue
                if data is None:
                    meta.applied_index = index
                    results.append(None)
                    continue
                cmd = decode(data)
                meta.applied_index = index
                results.append(self._apply(index, cmd))
            if conf is not None:
                meta.conf = conf
            conn.execute(
                "UPDATE meta SET applied_index = ?, conf = ?, log_time_ms = ?, "
                "next_message_id = ?, highest_client_id = ?, client_count = ?, reply_count = ?, "
                "row_sum = ? WHERE id = 1",
                meta.values(),
            )
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            meta.restore(saved)
            self._forget_expiry_bounds()
            if isinstance(exc, sqlite3.Error):
                raise self._database_error(exc, "applying committed entries") from exc
            raise
        try:
            self._bound_wal()
        except sqlite3.Error as exc:
            raise self._database_error(exc, "a checkpoint") from exc
        return results

    def _bound_wal(self) -> None:
        """Checkpoint once the WAL passes WAL_CHECKPOINT_BYTES. Every COMMIT appends each page
        it changed (a Send changes some fifteen), so between snapshots the WAL would grow by
        tens of KiB an entry; a checkpoint here (on the apply thread, between batches) keeps
        it bounded. It compacts nothing: only the driver's checkpoint before a snapshot does."""
        try:
            size = self._wal.stat().st_size
        except FileNotFoundError:
            return
        if size > WAL_CHECKPOINT_BYTES:
            db.checkpoint(self._db)

    def _database_error(self, exc: sqlite3.Error, doing: str) -> DatabaseError:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return DatabaseFullError(
                f"{self._path}: the disk is full ({doing}): free space, then restart the node"
            )
        return DatabaseError(f"{self._path}: {doing} failed: {exc}")

    def _apply(self, index: int, cmd: Command) -> ApplyResult:
        meta = self._meta
        now = meta.log_time_ms = max(meta.log_time_ms, cmd.log_time_ms)
        ended: list[str] = []
        self._expire(now, ended)
        request = cmd.request
        if request is not None:
            try:
                check_request_id(request.client_id, request.seq, request.first_outstanding)
            except ChatError as exc:
                return ApplyResult(index, exc.copy(), request, ended_sessions=tuple(ended))
            client = self._client(request.client_id)
            if client is None:
                refusal = _unknown_client(request.client_id, meta.highest_client_id)
                return ApplyResult(index, refusal, request, ended_sessions=tuple(ended))
            foreign = _foreign_client(client, request.client_id, cmd)
            if foreign is not None:  # before anything of the client's is touched
                return ApplyResult(index, foreign, request, ended_sessions=tuple(ended))
            early = self._answer_again(client, request, cmd, now, index)
            if early is not None:
                return ApplyResult(index, early[0], request, early[1], None, tuple(ended))
        message: ChatMessage | None = None
        outcome: Outcome
        saved, mark = meta.values(), len(ended)
        self._db.execute("SAVEPOINT command")
        try:
            outcome, message = self._execute(index, cmd, now, ended)
        except ChatError as exc:
            outcome = exc.copy()  # no traceback kept alive by the dedup table
        except (OverflowError, UnicodeEncodeError, sqlite3.InterfaceError):
            # A value SQLite cannot bind (an integer past 2**63 - 1, a string with a lone
            # surrogate, which JSON can spell): the same on every replica, so a refusal,
            # with whatever the command had written undone.
            self._db.execute("ROLLBACK TO command")
            meta.restore(saved)
            del ended[mark:]
            outcome = ChatError(
                ErrorCode.INVALID_ARGUMENT, "a value of the request does not fit a signed 64-bit"
            )
            message = None
        self._db.execute("RELEASE command")
        if request is not None:
            self._remember(request, cmd, outcome, now, index)
        return ApplyResult(index, outcome, request, False, message, tuple(ended))

    # Row writes: every change of a row goes through these three, which keep the digest's sum.

    def _insert(self, table: str, row: tuple[Any, ...]) -> None:
        self._db.execute(_SQL[table][0], row)
        self._meta.row_sum = (self._meta.row_sum + _row_hash(table, row)) % _MOD

    def _delete(self, table: str, row: tuple[Any, ...]) -> None:
        keys = _TABLES[table][1]
        self._db.execute(_SQL[table][1], row[:keys])
        self._meta.row_sum = (self._meta.row_sum - _row_hash(table, row)) % _MOD

    def _update(self, table: str, old: tuple[Any, ...], new: tuple[Any, ...]) -> None:
        keys = _TABLES[table][1]
        if old[:keys] != new[:keys]:
            raise InvariantError(f"{table}: an update may not change the key {old[:keys]}")
        self._db.execute(_SQL[table][2], (*new[keys:], *new[:keys]))
        change = _row_hash(table, new) - _row_hash(table, old)
        self._meta.row_sum = (self._meta.row_sum + change) % _MOD

    def _one(self, sql: str, *args: object) -> tuple[Any, ...] | None:
        row = self._db.execute(sql, args).fetchone()
        return None if row is None else tuple(row)

    def _all(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._db.execute(sql, args).fetchall()]

    # The dedup table (thesis §6.3).

    def _client(self, client_id: int) -> tuple[Any, ...] | None:
        return self._one("SELECT * FROM clients WHERE client_id = ?", client_id)

    def _register_client(self, index: int, cmd: RegisterClient, now: int) -> Reply:
        session = ""
        if cmd.session:
            self._use_session(cmd.session, now, index)  # UNAUTHENTICATED unless it is live
            session = cmd.session
        self._meta.highest_client_id = index
        self._add_client((index, session, 0, now, index, 0))
        return RegisterClientReply(index)

    def _add_client(self, row: tuple[Any, ...]) -> None:
        self._insert("clients", row)
        self._meta.client_count += 1
        session = row[1]
        bound = MAX_CLIENTS_PER_SESSION if session else MAX_UNBOUND_CLIENTS
        same = self._one("SELECT count(*) FROM clients WHERE session = ?", session)
        if same is not None and same[0] > bound:
            oldest = self._one(
                "SELECT * FROM clients WHERE session = ? ORDER BY used_at LIMIT 1", session
            )
            if oldest is not None:
                self._drop_client(oldest)
        while self._meta.client_count > MAX_CLIENTS:
            self._drop_least_recent_client()

    def _drop_least_recent_client(self) -> None:
        oldest = self._one("SELECT * FROM clients ORDER BY used_at LIMIT 1")
        if oldest is None:
            raise InvariantError("the dedup table's count says clients remain, but none do")
        self._drop_client(oldest)

    def _drop_client(self, client: tuple[Any, ...]) -> None:
        for reply in self._all("SELECT * FROM replies WHERE client_id = ?", client[0]):
            self._delete("replies", reply)
        self._meta.reply_count -= client[5]
        self._delete("clients", client)
        self._meta.client_count -= 1

    def _touch_client(self, client: tuple[Any, ...], now: int, index: int) -> tuple[Any, ...]:
        touched = (*client[:3], now, index, client[5])
        self._update("clients", client, touched)
        return touched

    def _answer_again(
        self, client: tuple[Any, ...], request: RequestId, cmd: Command, now: int, index: int
    ) -> tuple[Outcome, bool] | None:
        """The outcome of a request that must not be applied again (thesis §6.3), or None."""
        first_outstanding = client[2]
        if request.seq < first_outstanding:
            return (
                ChatError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"request {request.seq} of client {request.client_id} is stale: the "
                    f"client said it holds replies for every request below {first_outstanding}",
                ),
                False,
            )
        stored = self._one(
            "SELECT kind, request_digest, outcome FROM replies WHERE client_id = ? AND seq = ?",
            request.client_id,
            request.seq,
        )
        if stored is None:
            return None
        self._touch_client(client, now, index)
        stored_kind, stored_digest, outcome_json = stored
        if stored_kind != cmd.KIND.value or stored_digest != request_digest(cmd):
            # Thesis §6.3 answers a retry from the table; only the same request is a retry.
            return (
                ChatError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"request id reused for a different request: request {request.seq} of "
                    f"client {request.client_id} was a {stored_kind} with other content",
                ),
                False,
            )
        return _outcome_from_json(json.loads(outcome_json))[1], True

    def _remember(
        self, request: RequestId, cmd: Command, outcome: Outcome, now: int, index: int
    ) -> None:
        client = self._client(request.client_id)
        if client is None:  # _apply refuses unknown clients before executing anything
            raise InvariantError(f"client {request.client_id} is not registered")
        client_id, held = client[0], client[5]
        stored = canonical_json(_outcome_json(cmd.KIND, outcome)).decode("utf-8")
        self._insert(
            "replies", (client_id, request.seq, cmd.KIND.value, request_digest(cmd), stored)
        )
        replies = held + 1
        first = max(client[2], request.first_outstanding)
        if replies > 1:
            for old in self._all(
                "SELECT * FROM replies WHERE client_id = ? AND seq < ? ORDER BY seq",
                client_id,
                first,
            ):
                self._delete("replies", old)
                replies -= 1
        if replies > MAX_REPLIES_PER_CLIENT:
            # Forget the oldest, and refuse it as stale from now on rather than apply it twice.
            oldest = self._one(
                "SELECT * FROM replies WHERE client_id = ? ORDER BY seq LIMIT 1", client_id
            )
            if oldest is not None:
                self._delete("replies", oldest)
                replies -= 1
                first = max(first, oldest[1] + 1)
        self._update("clients", client, (client_id, client[1], first, now, index, replies))
        self._meta.reply_count += replies - held
        while self._meta.reply_count > MAX_REPLIES:  # this client is the most recent: never it
            self._drop_least_recent_client()

    # Sessions.

    def _expire(self, now: int, ended: list[str]) -> None:
        """End sessions idle past session_idle_s and forget clients idle past client_idle_s.
        Log time never decreases, so last_used_ms grows with used_at: the oldest go first."""
        horizon = now - self._session_idle_ms
        if self._sessions_used_since is None or self._sessions_used_since < horizon:
            while True:
                session = self._one("SELECT * FROM sessions ORDER BY used_at LIMIT 1")
                if session is None or session[2] >= horizon:
                    break
                self._end_session(session, ended)
            self._sessions_used_since = now if session is None else session[2]
        horizon = now - self._client_idle_ms
        if self._clients_used_since is None or self._clients_used_since < horizon:
            while True:
                client = self._one("SELECT * FROM clients ORDER BY used_at LIMIT 1")
                if client is None or client[3] >= horizon:
                    break
                self._drop_client(client)
            self._clients_used_since = now if client is None else client[3]

    def _forget_expiry_bounds(self) -> None:
        """`_expire` skips its two queries while it knows that nothing can be idle yet: every
        session (client) was used at or after `_sessions_used_since` (`_clients_used_since`).
        They stay true lower bounds as rows change (a row is written with last_used_ms = log
        time, which never decreases, and a savepoint's rollback puts back rows that were there
        when the bound was taken); a rolled-back batch or another database makes them unknown.
        So skipping changes no outcome: it only avoids queries that would find nothing."""
        self._sessions_used_since = None
        self._clients_used_since = None

    def _end_session(self, session: tuple[Any, ...], ended: list[str]) -> None:
        self._delete("sessions", session)
        ended.append(session[0])

    def _use_session(self, key: str, now: int, index: int) -> tuple[Any, ...]:
        """The account row of the live session `key` (a hash), whose use (an applied command)
        refreshes it."""
        session = self._one("SELECT * FROM sessions WHERE hash = ?", key)
        if session is None:  # expired sessions were ended by _expire at this log time
            raise _unauthenticated(_UNKNOWN_SESSION)
        self._update("sessions", session, (key, session[1], now, index))
        account = self._account(session[1])
        if account is None:
            raise InvariantError(f"a session of {session[1]!r}, which has no account")
        return account

    # Accounts and messages.

    def _account(self, key: str) -> tuple[Any, ...] | None:
        return self._one("SELECT * FROM accounts WHERE user_key = ?", key)

    def _account_named(self, username: str) -> tuple[Any, ...]:
        validate_username(username, self._limits)
        account = self._account(username_key(username))
        if account is None:
            raise ChatError(ErrorCode.NOT_FOUND, f"no account named {show(username)}")
        return account

    def _execute(
        self, index: int, cmd: Command, now: int, ended: list[str]
    ) -> tuple[Reply, ChatMessage | None]:
        if isinstance(cmd, Tick):
            return TickReply(), None
        if isinstance(cmd, RegisterClient):
            return self._register_client(index, cmd, now), None
        if isinstance(cmd, Send):
            return self._send(cmd, now, index)
        if isinstance(cmd, Ack):
            return self._ack(cmd, now, index), None
        if isinstance(cmd, Register):
            return self._register(cmd), None
        if isinstance(cmd, Login):
            return self._login(cmd, now, ended, index), None
        if isinstance(cmd, Logout):
            return self._logout(cmd, now, ended, index), None
        return self._delete_account(cmd, now, ended, index), None

    def _register(self, cmd: Register) -> Reply:
        username = validate_username(cmd.username, self._limits)
        key = username_key(username)
        taken = self._account(key)
        if taken is not None:
            also = "" if taken[1] == username else f" (as {show(taken[1])})"
            raise ChatError(
                ErrorCode.ALREADY_EXISTS,
                f"username {show(username)} is already taken{also}; names are unique ignoring case",
            )
        stored = canonical_json(password_hash_json(cmd.password_hash)).decode("utf-8")
        self._insert("accounts", (key, username, stored, 0))
        return RegisterReply(username)

    def _login(self, cmd: Login, now: int, ended: list[str], index: int) -> Reply:
        validate_username(cmd.username, self._limits)
        key = cmd.session
        if not is_session(key):
            raise ChatError(ErrorCode.INVALID_ARGUMENT, "login: malformed session hash")
        account = self._account(username_key(cmd.username))
        # The accepting node verified the password against the hash it read; if the account
        # is gone, or was deleted and registered again, that check no longer holds.
        if account is None or not hmac.compare_digest(
            _password_hash(account[2]).digest, cmd.verified_digest
        ):
            raise _unauthenticated(_WRONG_LOGIN)
        if self._one("SELECT 1 FROM sessions WHERE hash = ?", key) is not None:
            raise ChatError(ErrorCode.ALREADY_EXISTS, "session token already in use")
        self._insert("sessions", (key, account[0], now, index))
        held = self._one("SELECT count(*) FROM sessions WHERE user_key = ?", account[0])
        if held is not None and held[0] > MAX_SESSIONS_PER_ACCOUNT:
            oldest = self._one(
                "SELECT * FROM sessions WHERE user_key = ? ORDER BY used_at LIMIT 1", account[0]
            )
            if oldest is not None:
                self._end_session(oldest, ended)
        return LoginReply(account[1])

    def _logout(self, cmd: Logout, now: int, ended: list[str], index: int) -> Reply:
        account = self._use_session(cmd.session, now, index)
        self._end_session((cmd.session, account[0], now, index), ended)
        return LogoutReply(account[1])

    def _send(self, cmd: Send, now: int, index: int) -> tuple[Reply, ChatMessage]:
        sender = self._use_session(cmd.session, now, index)
        validate_text(cmd.text, self._limits)
        recipient = self._account_named(cmd.recipient)
        if recipient[3] >= self._limits.queue_limit:
            raise ChatError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{show(recipient[1])} has {recipient[3]} undelivered messages, "
                "the most a queue holds; try again once some are read",
            )
        meta = self._meta
        message = ChatMessage(
            meta.next_message_id, sender[1], recipient[1], cmd.text, cmd.timestamp_ms
        )
        self._insert("messages", (message.id, sender[1], recipient[1], cmd.text, cmd.timestamp_ms))
        meta.next_message_id += 1
        self._insert("queue", (recipient[0], message.id))
        self._update("accounts", recipient, (*recipient[:3], recipient[3] + 1))
        self._add_view(sender[0], recipient[0], message.id)
        if recipient[0] != sender[0]:
            self._add_view(recipient[0], sender[0], message.id)
        return SendReply(message.id, message.timestamp_ms), message

    def _add_view(self, owner: str, other: str, message_id: int) -> None:
        """`message_id` joins `owner`'s view of its conversation with `other`; past
        history_per_pair (retention) the oldest in that view leaves it."""
        self._insert("views", (owner, other, message_id))
        size = self._one("SELECT * FROM view_sizes WHERE owner = ? AND other = ?", owner, other)
        if size is None:
            self._insert("view_sizes", (owner, other, 1))
            return
        count = size[2] + 1
        if count > self._limits.history_per_pair:
            oldest = self._one(
                "SELECT * FROM views WHERE owner = ? AND other = ? ORDER BY message_id LIMIT 1",
                owner,
                other,
            )
            if oldest is not None:
                self._delete("views", oldest)
                count -= 1
                self._collect(oldest[2])
        self._update("view_sizes", size, (owner, other, count))

    def _collect(self, message_id: int) -> None:
        """Delete message `message_id` if no queue and no view holds it any more."""
        message = self._one("SELECT * FROM messages WHERE id = ?", message_id)
        if message is None:
            return
        sender, recipient = username_key(message[1]), username_key(message[2])
        held = self._one(
            "SELECT EXISTS (SELECT 1 FROM views WHERE owner = ? AND other = ? AND message_id = ?)"
            " OR EXISTS (SELECT 1 FROM views WHERE owner = ? AND other = ? AND message_id = ?)"
            " OR EXISTS (SELECT 1 FROM queue WHERE recipient = ? AND message_id = ?)",
            sender,
            recipient,
            message_id,
            recipient,
            sender,
            message_id,
            recipient,
            message_id,
        )
        if held is not None and not held[0]:
            self._delete("messages", message)

    def _ack(self, cmd: Ack, now: int, index: int) -> Reply:
        account = self._use_session(cmd.session, now, index)
        up_to_id = validate_message_id(cmd.up_to_id, "ack up_to_id")
        acked = self._all(
            "SELECT * FROM queue WHERE recipient = ? AND message_id <= ? ORDER BY message_id",
            account[0],
            up_to_id,
        )
        if not acked:
            return AckReply(0)
        for row in acked:
            self._delete("queue", row)
        self._update("accounts", account, (*account[:3], account[3] - len(acked)))
        for row in acked:
            self._collect(row[1])
        return AckReply(len(acked))

    def _delete_account(self, cmd: DeleteAccount, now: int, ended: list[str], index: int) -> Reply:
        account = self._use_session(cmd.session, now, index)
        key = account[0]
        for session in self._all("SELECT * FROM sessions WHERE user_key = ? ORDER BY used_at", key):
            self._end_session(session, ended)
        self._delete("accounts", account)
        # Messages it sent stay in their recipients' queues and views of history; its own
        # queue and views go with it.
        gone: list[int] = []
        for row in self._all("SELECT * FROM queue WHERE recipient = ? ORDER BY message_id", key):
            self._delete("queue", row)
            gone.append(row[1])
        for row in self._all("SELECT * FROM views WHERE owner = ? ORDER BY other, message_id", key):
            self._delete("views", row)
            gone.append(row[2])
        for row in self._all("SELECT * FROM view_sizes WHERE owner = ? ORDER BY other", key):
            self._delete("view_sizes", row)
        for message_id in sorted(set(gone)):
            self._collect(message_id)
        return DeleteAccountReply(account[1])

    # --- reads (committed state only, through this thread's reader connection) -----------

    def _reader(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.generation != self._generation:
            if conn is not None:
                conn.close()
                with self._readers_lock:
                    self._readers = [c for c in self._readers if c is not conn]
            conn = db.connect(self._path, writer=False)
            local.conn, local.generation = conn, self._generation
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _read_one(self, sql: str, *args: object) -> tuple[Any, ...] | None:
        row = self._reader().execute(sql, args).fetchone()
        return None if row is None else tuple(row)

    def _count(self, sql: str, *args: object) -> int:
        row = self._read_one(sql, *args)
        return 0 if row is None else int(row[0])

    def answered(self, request: RequestId) -> bool:
        """Whether this request id already has a stored reply (a retry): the accepting node
        then proposes it without re-checking the session or password, so the log answers it
        with its first reply (a retried delete-account must not fail for the deleted account)."""
        if not (0 <= request.client_id <= MAX_INT64 and 0 <= request.seq <= MAX_INT64):
            return False
        found = self._read_one(
            "SELECT 1 FROM replies WHERE client_id = ? AND seq = ?", request.client_id, request.seq
        )
        return found is not None

    def check_client(self, request: RequestId) -> None:
        """Raises the ChatError apply would give a request of an unknown client (expired, or
        never registered). For a caller whose state is caught up with the commit index."""
        check_request_id(request.client_id, request.seq, request.first_outstanding)
        row = self._read_one(
            "SELECT (SELECT count(*) FROM clients WHERE client_id = ?), highest_client_id "
            "FROM meta",
            request.client_id,
        )
        if row is not None and not row[0]:
            raise _unknown_client(request.client_id, row[1])

    def admit(self, request: RequestId, session_key: str) -> None:
        """The checks of a write that needs a session, before it is proposed, in one read
        (three on every Send cost the event loop a tenth of a millisecond): nothing if the
        dedup table already answered `request` (a retry: the log gives its first reply);
        else check_client's refusal, then authenticate's. For a caught-up caller."""
        check_request_id(request.client_id, request.seq, request.first_outstanding)
        row = self._read_one(
            "SELECT EXISTS(SELECT 1 FROM replies WHERE client_id = ?1 AND seq = ?2), "
            "EXISTS(SELECT 1 FROM clients WHERE client_id = ?1), m.highest_client_id, "
            "m.log_time_ms, s.last_used_ms, a.username "
            "FROM meta m LEFT JOIN sessions s ON s.hash = ?3 "
            "LEFT JOIN accounts a ON a.user_key = s.user_key",
            request.client_id,
            request.seq,
            session_key,
        )
        if row is None:
            raise InvariantError("the meta row is missing")
        answered, known, highest, log_time_ms, last_used_ms, username = row
        if answered:
            return
        if not known:
            raise _unknown_client(request.client_id, highest)
        self._check_session(username, last_used_ms, log_time_ms)

    def _check_session(self, username: object, last_used_ms: object, now_ms: int) -> str:
        if username is None or not isinstance(last_used_ms, int):
            raise _unauthenticated(_UNKNOWN_SESSION)
        if now_ms - last_used_ms > self._session_idle_ms:
            raise _unauthenticated(
                f"session expired after {self._limits.session_idle_s} s without use: log in again"
            )
        return str(username)

    def authenticate(self, session_key: str, now_ms: int | None = None) -> str:
        """The registered username of the live session `session_key` (a token's hash,
        commands.session_of), judged at `now_ms` (default: log time). UNAUTHENTICATED for
        unknown, logged-out and idle-expired sessions."""
        row = self._read_one(
            "SELECT s.last_used_ms, a.username, m.log_time_ms FROM sessions s "
            "JOIN accounts a ON a.user_key = s.user_key, meta m WHERE s.hash = ?",
            session_key,
        )
        if row is None:
            raise _unauthenticated(_UNKNOWN_SESSION)
        last_used_ms, username, log_time_ms = row
        now = log_time_ms if now_ms is None else now_ms
        return self._check_session(username, last_used_ms, now)

    def account_hash(self, username: str) -> PasswordHash | None:
        """The password hash of `username` (any case), for verifying a login; None if none."""
        row = self._read_one(
            "SELECT password_hash FROM accounts WHERE user_key = ?", username_key(username)
        )
        return None if row is None else _password_hash(row[0])

    def registered_name(self, username: str) -> str | None:
        """`username` as registered (usernames are unique ignoring case); None if none."""
        row = self._read_one(
            "SELECT username FROM accounts WHERE user_key = ?", username_key(username)
        )
        return None if row is None else str(row[0])

    def list_accounts(
        self, pattern: str = "", page_token: str = "", page_size: int = 0
    ) -> tuple[tuple[str, ...], str]:
        """Usernames matching the shell-style `pattern` (ignoring case), sorted ignoring case,
        one page at a time: returns (names, next_page_token), the token empty on the last page.

        The wildcard is matched here with fnmatchcase (SQLite's GLOB is another language),
        over the range of the index that its literal prefix allows.
        """
        wanted = validate_pattern(pattern).lower()
        size = validate_page_size(page_size, self._limits)
        after = _decode_page_token(page_token) if page_token else ""
        cut = min((i for i in (wanted.find(c) for c in _WILDCARDS) if i >= 0), default=None)
        prefix = wanted if cut is None else wanted[:cut]
        # Keys are ASCII, so every key with the prefix sorts below prefix + DEL.
        sql = "SELECT user_key, username FROM accounts WHERE user_key > ? AND user_key >= ?"
        args: list[object] = [after, prefix]
        if prefix:
            sql += " AND user_key < ?"
            args.append(prefix + "\x7f")
        cursor = self._reader().execute(sql + " ORDER BY user_key", args)
        found: list[tuple[str, str]] = []
        try:
            for key, username in cursor:
                if fnmatchcase(key, wanted):
                    if len(found) == size:
                        return tuple(n for _, n in found), _encode_page_token(found[-1][0])
                    found.append((key, username))
        finally:
            cursor.close()  # ends the statement's read transaction at once
        return tuple(n for _, n in found), ""

    @contextlib.contextmanager
    def _reading_account(self, username: str) -> Iterator[tuple[sqlite3.Connection, str]]:
        """One read transaction on this thread's reader, for the account `username` (NOT_FOUND
        if there is none): yields the connection and the account's key. Ended on return, so
        the caller must read everything it needs inside (no await in it)."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            key = username_key(username)
            if conn.execute("SELECT 1 FROM accounts WHERE user_key = ?", (key,)).fetchone() is None:
                raise ChatError(ErrorCode.NOT_FOUND, f"no account named {show(username)}")
            yield conn, key
        finally:
            conn.execute("COMMIT")

    def history(self, username: str, other: str, limit: int = 0) -> tuple[ChatMessage, ...]:
        """The most recent `limit` messages between `username` and `other` (either way), oldest
        first, as `username` sees them (`other` need not exist any more)."""
        validate_username(username, self._limits)
        validate_username(other, self._limits)
        count = validate_history_limit(limit, self._limits)
        with self._reading_account(username) as (conn, key):
            rows = conn.execute(
                "SELECT m.id, m.sender, m.recipient, m.text, m.timestamp_ms FROM views v "
                "JOIN messages m ON m.id = v.message_id WHERE v.owner = ? AND v.other = ? "
                "ORDER BY v.message_id DESC LIMIT ?",
                (key, username_key(other), count),
            ).fetchall()
        return tuple(ChatMessage(*r) for r in reversed(rows))

    def queue(
        self, username: str, after_id: int = 0, limit: int = QUEUE_PAGE
    ) -> tuple[ChatMessage, ...]:
        """The unacked messages to `username` with an id above `after_id`, in order, at most
        `limit` of them."""
        return self.queue_at(username, after_id, limit)[0]

    def queue_at(
        self, username: str, after_id: int = 0, limit: int = QUEUE_PAGE
    ) -> tuple[tuple[ChatMessage, ...], int]:
        """queue() and the applied index it was read at, in one read transaction."""
        validate_username(username, self._limits)
        validate_message_id(after_id, "after_id")
        with self._reading_account(username) as (conn, key):
            rows = conn.execute(
                "SELECT m.id, m.sender, m.recipient, m.text, m.timestamp_ms FROM queue q "
                "JOIN messages m ON m.id = q.message_id WHERE q.recipient = ? "
                "AND q.message_id > ? ORDER BY q.message_id LIMIT ?",
                (key, after_id, max(1, limit)),
            ).fetchall()
            applied = conn.execute("SELECT applied_index FROM meta").fetchone()[0]
        return tuple(ChatMessage(*r) for r in rows), int(applied)

    # --- digest, checkpoints and snapshots ------------------------------------------------

    def digest(self) -> str:
        """sha256 (hex) of the rows and counters: equal on replicas that applied the same
        entries. Read from one row, kept up to date by apply."""
        return self.digest_at()[1]

    def digest_at(self) -> tuple[int, str]:
        """(applied index, digest) of the committed state, read together."""
        row = self._read_one(f"SELECT {_META_COLUMNS} FROM meta")
        if row is None:
            raise DatabaseError(f"{self._path}: the meta row is missing")
        return int(row[0]), digest_of(row)

    def scan_digest(self) -> str:
        """The digest recomputed from every row (a full scan: for tests, never for Status)."""
        conn = self._reader()
        total = 0
        conn.execute("BEGIN")
        try:
            for table, (columns, keys) in _TABLES.items():
                order = ", ".join(columns[:keys])
                for row in conn.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                    total = (total + _row_hash(table, tuple(row))) % _MOD
            meta = list(conn.execute(f"SELECT {_META_COLUMNS} FROM meta").fetchone())
        finally:
            conn.execute("COMMIT")
        meta[-1] = f"{total:064x}"
        return digest_of(meta)

    def checkpoint(self) -> int | None:
        """On the apply thread, between batches: write the WAL into the database file and
        fsync it. Returns the applied index it made durable, or None if the checkpoint was
        partial (a reader held it back): then nothing may be compacted on its account."""
        applied = self._meta.applied_index  # read just before: no batch runs meanwhile
        try:
            complete = db.checkpoint(self._db)
        except sqlite3.Error as exc:
            raise self._database_error(exc, "the checkpoint") from exc
        return int(applied) if complete else None

    def copy_to(self, dest: Path) -> int:
        """A consistent copy of the committed state in the new file `dest`, fsynced with its
        directory; returns the applied index it holds. Runs on any thread but the apply one,
        from a connection of its own: applies go on meanwhile."""
        db.copy_database(self._path, dest)
        try:
            return int(db.read_copy_meta(dest)[0])
        except ValueError as exc:
            raise DatabaseError(f"{dest}: the copy just made does not read back: {exc}") from exc

    def validate_copy(self, path: Path) -> int:
        """Raises ValueError, saying why, unless `path` is a sound copy of a chat database of
        this schema; returns its applied index. Touches nothing of ours."""
        return int(db.read_copy_meta(path)[0])

    def install(self, path: Path) -> None:
        """On the apply thread: replace the whole state by the copy at `path` (from copy_to,
        validated), which this takes over.

        It becomes the next generation: renamed under its new name and fsynced, then the
        connections move to it and the old generation's files are deleted. A crash anywhere
        leaves either generation whole."""
        generation = self._generation + 1
        target = self._dir / db.db_name(generation)
        staged = Path(str(target) + ".tmp")
        db.remove_database(staged)
        shutil.move(path, staged)
        db.fsync_file(staged)
        staged.rename(target)
        db.fsync_dir(self._dir)
        old = self._path
        self._db.close()
        self._generation, self._path = generation, target
        self._wal = Path(f"{target}-wal")
        self._db = db.connect(target, writer=True)
        db.check_schema(self._db, target)
        self._meta = _Meta(self._db.execute(f"SELECT {_META_COLUMNS} FROM meta").fetchone())
        self._forget_expiry_bounds()
        db.remove_database(old)  # readers still on it reopen at their next read
        db.fsync_dir(self._dir)

    def sizes(self) -> dict[str, int]:
        """Bytes of the database file and of its WAL."""
        wal = Path(str(self._path) + "-wal")
        return {
            "database_bytes": self._path.stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        }


def _listdir(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _password_hash(stored: str) -> PasswordHash:
    try:
        return password_hash_from_json(json.loads(stored), "stored password hash")
    except (CommandDecodeError, ValueError) as exc:
        raise InvariantError(f"a stored password hash does not decode: {exc}") from None


def _foreign_client(client: tuple[Any, ...], client_id: int, cmd: Command) -> ChatError | None:
    """A client session bound to a chat session serves that session's writes only, and an
    unbound one only the writes that need no session (issue 11: another user's writes
    must neither use a client id nor move its first_outstanding)."""
    bound = client[1]
    wanted = session_used(cmd)  # None: the write needs no session
    if (bound == "" and wanted is None) or (wanted and bound == wanted):
        return None
    if not bound:
        why = "serves only Register and Login: register a client with the session token"
    elif not wanted:
        why = "is bound to a session: Register and Login need a client without one"
    else:
        why = "is bound to another session"
    return ChatError(ErrorCode.INVALID_ARGUMENT, f"client {client_id} {why}")


def _unknown_client(client_id: int, highest_client_id: int) -> ChatError:
    if client_id <= highest_client_id:
        return ChatError(
            ErrorCode.FAILED_PRECONDITION,
            f"{CLIENT_EXPIRED_TEXT} (client {client_id}); register a new client session",
            Reason.CLIENT_EXPIRED,
        )
    return ChatError(
        ErrorCode.INVALID_ARGUMENT,
        f"client id {client_id} was never registered: call RegisterClient first",
    )


def _encode_page_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode("ascii")).decode("ascii").rstrip("=")


def _decode_page_token(page_token: str) -> str:
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        key = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        key = ""
    if not key or key != username_key(key) or len(key) > 256:
        raise ChatError(
            ErrorCode.INVALID_ARGUMENT,
            f"page token {show(page_token)} is not one this service handed out",
        )
    return key


# --- stored replies ---------------------------------------------------------------------------


def _outcome_json(kind: CommandKind, outcome: Outcome) -> list[Any]:
    if isinstance(outcome, ChatError):
        return [kind.value, "error", outcome.code.value, outcome.message]
    if isinstance(outcome, SendReply):
        return [kind.value, "send", outcome.message_id, outcome.timestamp_ms]
    if isinstance(outcome, AckReply):
        return [kind.value, "ack", outcome.removed]
    if isinstance(outcome, LoginReply):
        return [kind.value, "login", outcome.username]
    if isinstance(outcome, RegisterReply):
        return [kind.value, "register", outcome.username]
    if isinstance(outcome, LogoutReply):
        return [kind.value, "logout", outcome.username]
    if isinstance(outcome, DeleteAccountReply):
        return [kind.value, "delete_account", outcome.username]
    # RegisterClient and Tick carry no request id, so the dedup table never holds their replies
    raise InvariantError(f"no stored form for {outcome!r}")


def _bad(what: str) -> NoReturn:
    raise InvariantError(f"a stored reply does not decode: {what}")


_REPLY_DECODERS: dict[str, tuple[int, Callable[[list[Any]], Outcome]]] = {
    "error": (2, lambda a: ChatError(ErrorCode(a[0]), str(a[1]))),
    "send": (2, lambda a: SendReply(int(a[0]), int(a[1]))),
    "ack": (1, lambda a: AckReply(int(a[0]))),
    "login": (1, lambda a: LoginReply(str(a[0]))),
    "register": (1, lambda a: RegisterReply(str(a[0]))),
    "logout": (1, lambda a: LogoutReply(str(a[0]))),
    "delete_account": (1, lambda a: DeleteAccountReply(str(a[0]))),
}


def _outcome_from_json(row: list[Any]) -> tuple[CommandKind, Outcome]:
    if type(row) is not list or len(row) < 2:
        _bad("too short")
    try:
        kind = CommandKind(row[0])
        arity, build = _REPLY_DECODERS[row[1]]
    except (ValueError, KeyError, TypeError):
        _bad(f"unknown kind {row[:2]!r}")
    if len(row) != 2 + arity:
        _bad(f"{row[1]!r}: expected {arity} values")
    try:
        return kind, build(row[2:])
    except ValueError:
        _bad(f"{row[1]!r}: bad value")
