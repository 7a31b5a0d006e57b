"""The chat state machine: what the committed log builds, and the reads served from it.

`ChatState.apply(index, data)` is deterministic: the state after a sequence of entries depends
on those entries alone. There is no clock (log time is the largest `log_time_ms` applied so
far; session and client expiry are measured in it), no randomness, no set iteration, and every
dict is iterated in an order the applied commands fixed. Two replicas fed the same entries have
equal `snapshot()` bytes and equal `digest()`. The limits (ChatLimits) take part in apply, so
every node of a cluster must run with the same ones.

Log time is stamped by the leader (node.logclock): it moves at most as fast as the leader's
monotonic clock, so a wall clock that jumps ahead cannot expire anything early. Client sessions
are registered in the log (thesis §6.3): a client id is the index of its RegisterClient entry,
and a request from an id that was issued but is no longer remembered (idle past client_idle_s,
or evicted) is refused as expired, never applied as new.

Reads (`authenticate`, `list_accounts`, `history`, `queue`, `account_hash`) never mutate.

Imports node.config, node.chat.* and the standard library only: no grpc, asyncio or protos.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import json
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from fnmatch import fnmatchcase
from itertools import islice, pairwise
from typing import Any, NoReturn

from node.chat.commands import (
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
from node.chat.errors import (
    ChatError,
    CommandDecodeError,
    ErrorCode,
    InvariantError,
    Reason,
    SnapshotDecodeError,
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

SNAPSHOT_FORMAT_VERSION = 3  # 2: registered client ids; 3: sessions by hash only
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

_WILDCARDS = "*?["


class _Account:
    """One account and everything that is its own."""

    __slots__ = ("history", "password_hash", "queue", "sessions", "username")

    def __init__(self, username: str, password_hash: PasswordHash) -> None:
        self.username = username  # as registered
        self.password_hash = password_hash
        # unacked messages to this account; ids strictly increase left to right
        self.queue: deque[ChatMessage] = deque()
        # key of the other party -> the most recent messages between the two, oldest first
        # (this account's own view: deleting it leaves the other party's view alone)
        self.history: dict[str, deque[ChatMessage]] = {}
        # this account's live sessions (hashes), least recently used first (as in _sessions)
        self.sessions: dict[str, None] = {}


class _Session:
    __slots__ = ("last_used_ms", "user_key")

    def __init__(self, user_key: str, last_used_ms: int) -> None:
        self.user_key = user_key  # always a key of ChatState._accounts
        self.last_used_ms = last_used_ms  # log time of the last applied command using it


class _Client:
    """A client session of the thesis, §6.3: the replies a retry must get back."""

    __slots__ = ("first_outstanding", "last_used_ms", "replies", "session")

    def __init__(self, first_outstanding: int, last_used_ms: int, session: str = "") -> None:
        self.first_outstanding = first_outstanding  # seqs below it are answered and forgotten
        self.last_used_ms = last_used_ms
        self.session = session  # the session (hash) it is bound to; "" for none
        # seq -> (kind, request digest, outcome); every seq >= first_outstanding applied
        self.replies: dict[int, tuple[CommandKind, str, Outcome]] = {}


def _unauthenticated(message: str) -> ChatError:
    return ChatError(ErrorCode.UNAUTHENTICATED, message)


_UNKNOWN_SESSION = "session unknown or ended (logged out, expired or account deleted): log in again"
_WRONG_LOGIN = "wrong username or password"


class ChatState:
    """Accounts, sessions, queues, histories and client sessions, built by `apply`."""

    def __init__(self, limits: ChatLimits) -> None:
        self._limits = limits
        self._session_idle_ms = limits.session_idle_s * 1000
        self._client_idle_ms = limits.client_idle_s * 1000
        self._applied_index = 0
        self._log_time_ms = 0  # the largest log_time_ms applied so far
        self._next_message_id = 1
        self._accounts: dict[str, _Account] = {}  # username_key -> account
        self._names: list[str] = []  # sorted keys of _accounts
        # session hash -> session, least recently used first (log time never decreases, so
        # last_used_ms is non-decreasing along this order and expiry pops from the front)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        # client id -> client session, least recently active first (same argument)
        self._clients: OrderedDict[int, _Client] = OrderedDict()
        # chat session hash ("" for none) -> ids of the clients bound to it, in _clients order
        self._clients_of: dict[str, dict[int, None]] = {}
        self._reply_count = 0  # replies held by all clients together
        self._highest_client_id = 0  # every id at or below it was issued or never existed
        self._digest: str | None = None  # cache of digest(); None when stale

    # --- properties -----------------------------------------------------------------------

    @property
    def limits(self) -> ChatLimits:
        return self._limits

    @property
    def applied_index(self) -> int:
        """Index of the last entry applied (or skipped, or restored from a snapshot)."""
        return self._applied_index

    @property
    def log_time_ms(self) -> int:
        return self._log_time_ms

    @property
    def account_count(self) -> int:
        return len(self._accounts)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def client_count(self) -> int:
        """Clients remembered for deduplication."""
        return len(self._clients)

    def remembered_replies(self, client_id: int) -> int:
        """How many replies are kept for `client_id` (0 if it is not remembered)."""
        client = self._clients.get(client_id)
        return 0 if client is None else len(client.replies)

    # --- applying -------------------------------------------------------------------------

    def _check_next(self, index: int) -> None:
        if index <= self._applied_index:
            raise InvariantError(
                f"entry {index} applied after entry {self._applied_index}: entries must be "
                "applied once each, in log order"
            )

    def _advance(self, index: int) -> None:
        self._check_next(index)
        self._applied_index = index
        self._digest = None

    def skip(self, index: int) -> None:
        """Record that entry `index` carries nothing for the chat (a leader's no-op, a
        membership change), so that `applied_index` follows the log."""
        self._advance(index)

    def apply(self, index: int, data: bytes) -> ApplyResult:
        """Apply committed entry `index`. A refused command is an outcome, never raised.

        Raises CommandDecodeError (the state untouched) for bytes that are no command, and
        InvariantError if `index` is not past `applied_index`.
        """
        self._check_next(index)
        cmd = decode(data)
        self._advance(index)
        return self._apply(index, cmd)

    def _apply(self, index: int, cmd: Command) -> ApplyResult:
        now = self._log_time_ms = max(self._log_time_ms, cmd.log_time_ms)
        ended: list[str] = []
        self._expire(now, ended)
        request = cmd.request
        if request is not None:
            try:
                check_request_id(request.client_id, request.seq, request.first_outstanding)
            except ChatError as exc:
                return ApplyResult(index, exc.copy(), request, ended_sessions=tuple(ended))
            client = self._clients.get(request.client_id)
            if client is None:
                refusal = self._unknown_client(request.client_id)
                return ApplyResult(index, refusal, request, ended_sessions=tuple(ended))
            foreign = self._foreign_client(client, request.client_id, cmd)
            if foreign is not None:  # before anything of the client's is touched
                return ApplyResult(index, foreign, request, ended_sessions=tuple(ended))
            early = self._answer_again(client, request, cmd, now)
            if early is not None:
                return ApplyResult(index, early[0], request, early[1], None, tuple(ended))
        message: ChatMessage | None = None
        outcome: Outcome
        try:
            outcome, message = self._execute(index, cmd, now, ended)
        except ChatError as exc:
            outcome = exc.copy()  # no traceback kept alive by the dedup table
        if request is not None:
            self._remember(request, cmd, outcome, now)
        return ApplyResult(index, outcome, request, False, message, tuple(ended))

    @staticmethod
    def _foreign_client(client: _Client, client_id: int, cmd: Command) -> ChatError | None:
        """A client session bound to a chat session serves that session's writes only, and an
        unbound one only the writes that need no session (issue 11: another user's writes
        must neither use a client id nor move its first_outstanding)."""
        wanted = session_used(cmd)  # None: the write needs no session
        if (client.session == "" and wanted is None) or (wanted and client.session == wanted):
            return None
        if not client.session:
            why = "serves only Register and Login: register a client with the session token"
        elif not wanted:
            why = "is bound to a session: Register and Login need a client without one"
        else:
            why = "is bound to another session"
        return ChatError(ErrorCode.INVALID_ARGUMENT, f"client {client_id} {why}")

    def _unknown_client(self, client_id: int) -> ChatError:
        if client_id <= self._highest_client_id:
            return ChatError(
                ErrorCode.FAILED_PRECONDITION,
                f"{CLIENT_EXPIRED_TEXT} (client {client_id}); register a new client session",
                Reason.CLIENT_EXPIRED,
            )
        return ChatError(
            ErrorCode.INVALID_ARGUMENT,
            f"client id {client_id} was never registered: call RegisterClient first",
        )

    def _register_client(self, index: int, cmd: RegisterClient, now: int) -> Reply:
        session = ""
        if cmd.session:
            self._use_session(cmd.session, now)  # UNAUTHENTICATED unless the session is live
            session = cmd.session
        self._highest_client_id = index
        self._add_client(index, _Client(0, now, session))
        return RegisterClientReply(index)

    # The dedup table's bookkeeping: _clients, _clients_of and _reply_count change together.

    def _add_client(self, client_id: int, client: _Client) -> None:
        self._clients[client_id] = client
        self._reply_count += len(client.replies)  # none but for a client restored
        same = self._clients_of.setdefault(client.session, {})
        same[client_id] = None
        bound = MAX_CLIENTS_PER_SESSION if client.session else MAX_UNBOUND_CLIENTS
        if len(same) > bound:
            self._drop_client(next(iter(same)))
        while len(self._clients) > MAX_CLIENTS:
            self._drop_client(next(iter(self._clients)))

    def _touch_client(self, client_id: int, client: _Client, now: int) -> None:
        client.last_used_ms = now
        self._clients.move_to_end(client_id)
        same = self._clients_of[client.session]
        del same[client_id]
        same[client_id] = None

    def _drop_client(self, client_id: int) -> None:
        client = self._clients.pop(client_id)
        self._reply_count -= len(client.replies)
        same = self._clients_of[client.session]
        del same[client_id]
        if not same:
            del self._clients_of[client.session]

    def _answer_again(
        self, client: _Client, request: RequestId, cmd: Command, now: int
    ) -> tuple[Outcome, bool] | None:
        """The outcome of a request that must not be applied again (thesis §6.3), or None."""
        if request.seq < client.first_outstanding:
            return (
                ChatError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"request {request.seq} of client {request.client_id} is stale: the "
                    f"client said it holds replies for every request below "
                    f"{client.first_outstanding}",
                ),
                False,
            )
        stored = client.replies.get(request.seq)
        if stored is None:
            return None
        self._touch_client(request.client_id, client, now)
        stored_kind, stored_digest, outcome = stored
        if stored_kind is not cmd.KIND or stored_digest != request_digest(cmd):
            # Thesis §6.3 answers a retry from the table; only the same request is a retry.
            return (
                ChatError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"request id reused for a different request: request {request.seq} of "
                    f"client {request.client_id} was a {stored_kind.value} with other content",
                ),
                False,
            )
        if isinstance(outcome, ChatError):
            outcome = outcome.copy()
        return outcome, True

    def _remember(self, request: RequestId, cmd: Command, outcome: Outcome, now: int) -> None:
        client = self._clients.get(request.client_id)
        if client is None:  # _apply refuses unknown clients before executing anything
            raise InvariantError(f"client {request.client_id} is not registered")
        self._touch_client(request.client_id, client, now)
        replies = client.replies
        held = len(replies)
        replies[request.seq] = (cmd.KIND, request_digest(cmd), outcome)
        if request.first_outstanding > client.first_outstanding:
            client.first_outstanding = request.first_outstanding
        if len(replies) > 1:
            for seq in [s for s in replies if s < client.first_outstanding]:
                del replies[seq]
        if len(replies) > MAX_REPLIES_PER_CLIENT:
            # Forget the oldest, and refuse it as stale from now on rather than apply it twice.
            oldest = min(replies)
            del replies[oldest]
            client.first_outstanding = max(client.first_outstanding, oldest + 1)
        self._reply_count += len(replies) - held
        while self._reply_count > MAX_REPLIES:  # this client is the most recent: never itself
            self._drop_client(next(iter(self._clients)))

    def _expire(self, now: int, ended: list[str]) -> None:
        """End sessions idle past session_idle_s and forget clients idle past client_idle_s."""
        horizon = now - self._session_idle_ms
        sessions = self._sessions
        while sessions:
            key, session = next(iter(sessions.items()))
            if session.last_used_ms >= horizon:
                break
            self._end_session(key, ended)
        horizon = now - self._client_idle_ms
        clients = self._clients
        while clients and next(iter(clients.values())).last_used_ms < horizon:
            self._drop_client(next(iter(clients)))

    def _end_session(self, key: str, ended: list[str]) -> None:
        session = self._sessions.pop(key)
        del self._accounts[session.user_key].sessions[key]
        ended.append(key)

    def _use_session(self, key: str, now: int) -> _Account:
        """The account of the live session `key` (a hash), whose use (an applied command)
        refreshes it."""
        session = self._sessions.get(key)
        if session is None:  # expired sessions were ended by _expire at this log time
            raise _unauthenticated(_UNKNOWN_SESSION)
        session.last_used_ms = now
        self._sessions.move_to_end(key)
        account = self._accounts[session.user_key]
        del account.sessions[key]
        account.sessions[key] = None
        return account

    def _account_named(self, username: str) -> _Account:
        validate_username(username, self._limits)
        account = self._accounts.get(username_key(username))
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
            return self._send(cmd, now)
        if isinstance(cmd, Ack):
            return self._ack(cmd, now), None
        if isinstance(cmd, Register):
            return self._register(cmd), None
        if isinstance(cmd, Login):
            return self._login(cmd, now, ended), None
        if isinstance(cmd, Logout):
            return self._logout(cmd, now, ended), None
        return self._delete_account(cmd, now, ended), None

    def _register(self, cmd: Register) -> Reply:
        username = validate_username(cmd.username, self._limits)
        key = username_key(username)
        taken = self._accounts.get(key)
        if taken is not None:
            also = "" if taken.username == username else f" (as {show(taken.username)})"
            raise ChatError(
                ErrorCode.ALREADY_EXISTS,
                f"username {show(username)} is already taken{also}; names are unique ignoring case",
            )
        self._accounts[key] = _Account(username, cmd.password_hash)
        bisect.insort(self._names, key)
        return RegisterReply(username)

    def _login(self, cmd: Login, now: int, ended: list[str]) -> Reply:
        validate_username(cmd.username, self._limits)
        key = cmd.session
        if not is_session(key):
            raise ChatError(ErrorCode.INVALID_ARGUMENT, "login: malformed session hash")
        account = self._accounts.get(username_key(cmd.username))
        # The accepting node verified the password against the hash it read; if the account
        # is gone, or was deleted and registered again, that check no longer holds.
        if account is None or not hmac.compare_digest(
            account.password_hash.digest, cmd.verified_digest
        ):
            raise _unauthenticated(_WRONG_LOGIN)
        if key in self._sessions:
            raise ChatError(ErrorCode.ALREADY_EXISTS, "session token already in use")
        self._sessions[key] = _Session(username_key(account.username), now)
        account.sessions[key] = None
        if len(account.sessions) > MAX_SESSIONS_PER_ACCOUNT:
            self._end_session(next(iter(account.sessions)), ended)
        return LoginReply(account.username)

    def _logout(self, cmd: Logout, now: int, ended: list[str]) -> Reply:
        account = self._use_session(cmd.session, now)
        self._end_session(cmd.session, ended)
        return LogoutReply(account.username)

    def _send(self, cmd: Send, now: int) -> tuple[Reply, ChatMessage]:
        sender = self._use_session(cmd.session, now)
        validate_text(cmd.text, self._limits)
        recipient = self._account_named(cmd.recipient)
        if len(recipient.queue) >= self._limits.queue_limit:
            raise ChatError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{show(recipient.username)} has {len(recipient.queue)} undelivered messages, "
                "the most a queue holds; try again once some are read",
            )
        message = ChatMessage(
            self._next_message_id, sender.username, recipient.username, cmd.text, cmd.timestamp_ms
        )
        self._next_message_id += 1
        recipient.queue.append(message)
        self._history(sender, username_key(recipient.username)).append(message)
        if recipient is not sender:
            self._history(recipient, username_key(sender.username)).append(message)
        return SendReply(message.id, message.timestamp_ms), message

    def _history(self, account: _Account, other_key: str) -> deque[ChatMessage]:
        history = account.history.get(other_key)
        if history is None:
            history = account.history[other_key] = deque(maxlen=self._limits.history_per_pair)
        return history

    def _ack(self, cmd: Ack, now: int) -> Reply:
        account = self._use_session(cmd.session, now)
        up_to_id = validate_message_id(cmd.up_to_id, "ack up_to_id")
        queue = account.queue
        removed = 0
        while queue and queue[0].id <= up_to_id:
            queue.popleft()
            removed += 1
        return AckReply(removed)

    def _delete_account(self, cmd: DeleteAccount, now: int, ended: list[str]) -> Reply:
        account = self._use_session(cmd.session, now)
        for key in list(account.sessions):
            self._end_session(key, ended)
        key = username_key(account.username)
        del self._accounts[key]
        del self._names[bisect.bisect_left(self._names, key)]
        # Messages it sent stay in their recipients' queues and views of history; its own
        # queue and views go with it.
        return DeleteAccountReply(account.username)

    # --- reads ----------------------------------------------------------------------------

    def answered(self, request: RequestId) -> bool:
        """Whether this request id already has a stored reply (a retry): the accepting node
        then proposes it without re-checking the session or password, so the log answers it
        with its first reply (a retried delete-account must not fail for the deleted account)."""
        client = self._clients.get(request.client_id)
        return client is not None and request.seq in client.replies

    def check_client(self, request: RequestId) -> None:
        """Raises the ChatError apply would give a request of an unknown client (expired, or
        never registered). For a caller whose state is caught up with the commit index."""
        if request.client_id not in self._clients:
            raise self._unknown_client(request.client_id)

    def authenticate(self, session_key: str, now_ms: int | None = None) -> str:
        """The registered username of the live session `session_key` (a token's hash,
        commands.session_of), judged at `now_ms` (default: log time). UNAUTHENTICATED for
        unknown, logged-out and idle-expired sessions."""
        session = self._sessions.get(session_key)
        if session is None:
            raise _unauthenticated(_UNKNOWN_SESSION)
        now = self._log_time_ms if now_ms is None else now_ms
        if now - session.last_used_ms > self._session_idle_ms:
            raise _unauthenticated(
                f"session expired after {self._limits.session_idle_s} s without use: log in again"
            )
        return self._accounts[session.user_key].username

    def account_hash(self, username: str) -> PasswordHash | None:
        """The password hash of `username` (any case), for verifying a login; None if none."""
        account = self._accounts.get(username_key(username))
        return None if account is None else account.password_hash

    def registered_name(self, username: str) -> str | None:
        """`username` as registered (usernames are unique ignoring case); None if none."""
        account = self._accounts.get(username_key(username))
        return None if account is None else account.username

    def list_accounts(
        self, pattern: str = "", page_token: str = "", page_size: int = 0
    ) -> tuple[tuple[str, ...], str]:
        """Usernames matching the shell-style `pattern` (ignoring case), sorted ignoring case,
        one page at a time: returns (names, next_page_token), the token empty on the last page.
        """
        wanted = validate_pattern(pattern).lower()
        size = validate_page_size(page_size, self._limits)
        names = self._names
        start = 0
        if page_token:
            start = bisect.bisect_right(names, _decode_page_token(page_token))
        cut = min((i for i in (wanted.find(c) for c in _WILDCARDS) if i >= 0), default=None)
        prefix = wanted if cut is None else wanted[:cut]
        if prefix:
            start = max(start, bisect.bisect_left(names, prefix))
        found: list[str] = []
        for i in range(start, len(names)):
            key = names[i]
            if not key.startswith(prefix):
                break
            if fnmatchcase(key, wanted):
                if len(found) == size:
                    return (
                        tuple(self._accounts[k].username for k in found),
                        _encode_page_token(found[-1]),
                    )
                found.append(key)
        return tuple(self._accounts[k].username for k in found), ""

    def history(self, username: str, other: str, limit: int = 0) -> tuple[ChatMessage, ...]:
        """The most recent `limit` messages between `username` and `other` (either way), oldest
        first, as `username` sees them (`other` need not exist any more)."""
        account = self._account_named(username)
        validate_username(other, self._limits)
        count = validate_history_limit(limit, self._limits)
        messages = account.history.get(username_key(other))
        if messages is None:
            return ()
        return tuple(islice(messages, max(0, len(messages) - count), None))

    def queue(self, username: str, after_id: int = 0) -> tuple[ChatMessage, ...]:
        """The unacked messages to `username` with an id above `after_id`, in order."""
        account = self._account_named(username)
        validate_message_id(after_id, "after_id")
        queue = account.queue
        start = bisect.bisect_right(queue, after_id, key=_message_id)
        return tuple(islice(queue, start, None))

    # --- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as canonical bytes: equal states give equal bytes.

        Not safe to run while another thread applies: take it on the applying thread, or
        hold applies until it returns.
        """
        return b"".join(self._snapshot_chunks())

    def _snapshot_chunks(self) -> Iterator[bytes]:
        """snapshot() in pieces: canonical JSON with sorted keys, written row by row, each row
        encoded by one short json.dumps and dropped at once. Nothing as big as the state is
        built, so a thread taking a large snapshot or digest neither holds the GIL in one long
        C call nor promotes a state's worth of new objects into a full garbage collection,
        either of which stalls the event loop's heartbeats (TRAPS: "off the event loop" is not
        "off the GIL"). The rows are those `_load_snapshot` reads."""
        yield bytes((SNAPSHOT_FORMAT_VERSION,))
        # Filled by account_row as the accounts are written, read when the messages are:
        # "accounts" comes before "messages" in the canonical (sorted) order of keys.
        messages: dict[int, ChatMessage] = {}  # referenced by a queue or a history

        def account_row(account: _Account) -> list[Any]:
            for m in account.queue:
                messages[m.id] = m
            for kept in account.history.values():
                for m in kept:
                    messages[m.id] = m
            return [
                account.username,
                password_hash_json(account.password_hash),
                [m.id for m in account.queue],
                {other: [m.id for m in kept] for other, kept in account.history.items()},
            ]

        def client_row(client_id: int, c: _Client) -> list[Any]:
            replies = [
                [seq, c.replies[seq][1], *_outcome_json(c.replies[seq][0], c.replies[seq][2])]
                for seq in sorted(c.replies)
            ]
            return [client_id, c.session, c.first_outstanding, c.last_used_ms, replies]

        # Keys in sorted order, as canonical_json writes them.
        yield b'{"accounts":'
        yield from _json_rows(account_row(self._accounts[key]) for key in self._names)
        yield b',"applied_index":' + canonical_json(self._applied_index)
        yield b',"clients":'
        yield from _json_rows(client_row(i, c) for i, c in self._clients.items())
        yield b',"highest_client_id":' + canonical_json(self._highest_client_id)
        yield b',"log_time_ms":' + canonical_json(self._log_time_ms)
        yield b',"messages":'
        yield from _json_rows(
            [m.id, m.sender, m.recipient, m.text, m.timestamp_ms]
            for m in (messages[i] for i in sorted(messages))
        )
        yield b',"next_message_id":' + canonical_json(self._next_message_id)
        yield b',"sessions":'
        yield from _json_rows([k, v.user_key, v.last_used_ms] for k, v in self._sessions.items())
        yield b"}"

    def digest(self) -> str:
        """sha256 (hex) of snapshot(): equal on replicas that applied the same entries."""
        if self._digest is None:
            hasher = hashlib.sha256()
            for chunk in self._snapshot_chunks():  # pieces of up to 256 rows (_json_rows)
                hasher.update(chunk)
            self._digest = hasher.hexdigest()
        return self._digest

    def validate_snapshot(self, data: bytes) -> None:
        """Raises ValueError, saying why, if restore(data) would fail. Touches nothing."""
        try:
            _load_snapshot(data, self._limits)
        except SnapshotDecodeError as exc:
            raise ValueError(str(exc)) from None

    def restore(self, data: bytes) -> None:
        """Replace the whole state by the one `data` (from snapshot()) describes.

        Raises SnapshotDecodeError, the state untouched, for anything else.
        """
        fresh = _load_snapshot(data, self._limits)
        for name in _STATE_FIELDS:
            setattr(self, name, getattr(fresh, name))
        self._digest = None


_STATE_FIELDS = (
    "_applied_index",
    "_log_time_ms",
    "_highest_client_id",
    "_next_message_id",
    "_accounts",
    "_names",
    "_sessions",
    "_clients",
    "_clients_of",
    "_reply_count",
)


def _json_rows(rows: Iterable[object], batch: int = 256) -> Iterator[bytes]:
    """A JSON list of `rows`, canonical, each row encoded alone, `batch` rows to a piece."""
    pending: list[bytes] = []
    first = True
    yield b"["
    for row in rows:
        pending.append(canonical_json(row))
        if len(pending) == batch:
            yield (b"" if first else b",") + b",".join(pending)
            pending, first = [], False
    if pending:
        yield (b"" if first else b",") + b",".join(pending)
    yield b"]"


def _message_id(message: ChatMessage) -> int:
    return message.id


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


# --- snapshot codec ---------------------------------------------------------------------------


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
    raise SnapshotDecodeError(f"chat snapshot: {what}")


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        _bad(f"{what}: expected a non-negative integer")
    return value


def _str(value: object, what: str) -> str:
    if type(value) is not str:
        _bad(f"{what}: expected a string")
    return value


def _list(value: object, what: str, length: int | None = None) -> list[Any]:
    if type(value) is not list or (length is not None and len(value) != length):
        _bad(f"{what}: expected a list" + ("" if length is None else f" of {length}"))
    return value


_REPLY_DECODERS: dict[str, tuple[int, Callable[[list[Any]], Outcome]]] = {
    "error": (2, lambda a: ChatError(ErrorCode(_str(a[0], "code")), _str(a[1], "message"))),
    "send": (2, lambda a: SendReply(_int(a[0], "message id"), _int(a[1], "timestamp"))),
    "ack": (1, lambda a: AckReply(_int(a[0], "removed"))),
    "login": (1, lambda a: LoginReply(_str(a[0], "username"))),
    "register": (1, lambda a: RegisterReply(_str(a[0], "username"))),
    "logout": (1, lambda a: LogoutReply(_str(a[0], "username"))),
    "delete_account": (1, lambda a: DeleteAccountReply(_str(a[0], "username"))),
}


def _outcome_from_json(row: list[Any]) -> tuple[CommandKind, Outcome]:
    if len(row) < 2:
        _bad("client reply: too short")
    try:
        kind = CommandKind(row[0])
        arity, build = _REPLY_DECODERS[row[1]]
    except (ValueError, KeyError, TypeError):
        _bad(f"client reply: unknown kind {row[:2]!r}")
    if len(row) != 2 + arity:
        _bad(f"client reply {row[1]!r}: expected {arity} values")
    try:
        return kind, build(row[2:])
    except ValueError:
        _bad(f"client reply {row[1]!r}: bad error code")


def _load_snapshot(data: bytes, limits: ChatLimits) -> ChatState:
    if not data or data[0] != SNAPSHOT_FORMAT_VERSION:
        _bad(
            f"format version {data[0] if data else None} is not the one this node understands "
            f"({SNAPSHOT_FORMAT_VERSION})"
        )
    try:
        doc = json.loads(data[1:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        _bad(f"not UTF-8 JSON: {exc}")
    keys = {
        "applied_index",
        "log_time_ms",
        "highest_client_id",
        "next_message_id",
        "messages",
        "accounts",
        "sessions",
        "clients",
    }
    if type(doc) is not dict or doc.keys() != keys:
        _bad(f"expected an object with keys {sorted(keys)}")
    state = ChatState(limits)
    state._applied_index = _int(doc["applied_index"], "applied_index")
    state._log_time_ms = _int(doc["log_time_ms"], "log_time_ms")
    state._highest_client_id = _int(doc["highest_client_id"], "highest_client_id")
    state._next_message_id = _int(doc["next_message_id"], "next_message_id")

    messages: dict[int, ChatMessage] = {}
    next_id = state._next_message_id
    for row in _list(doc["messages"], "messages"):
        if type(row) is not list or len(row) != 5:
            _bad("message: expected a list of 5")
        mid, sender, recipient, text, ts = row
        if not (
            type(mid) is int
            and type(sender) is str
            and type(recipient) is str
            and type(text) is str
            and type(ts) is int
            and 0 < mid < next_id
            and ts >= 0
            and mid not in messages
        ):
            _bad(f"message {mid!r}: bad field types, or id repeated or not below next_message_id")
        messages[mid] = ChatMessage(mid, sender, recipient, text, ts)

    def referenced(ids: object, what: str) -> list[ChatMessage]:
        ids = _list(ids, what)
        try:
            found = [messages[i] for i in ids]
        except (KeyError, TypeError):
            found = []
        if len(found) != len(ids) or not all(type(i) is int for i in ids):
            _bad(f"{what}: a reference to an unknown message")
        return found

    for row in _list(doc["accounts"], "accounts"):
        username, hash_json, queue_ids, history = _list(row, "account", 4)
        username = _str(username, "username")
        try:
            validate_username(username, limits)
            password_hash = password_hash_from_json(hash_json, f"account {username!r}")
        except (ChatError, CommandDecodeError) as exc:
            _bad(f"account {username!r}: {exc}")
        key = username_key(username)
        if key in state._accounts or (state._names and key <= state._names[-1]):
            _bad(f"account {username!r}: repeated or out of order")
        account = _Account(username, password_hash)
        account.queue.extend(referenced(queue_ids, f"account {username!r}: queue"))
        if any(a.id >= b.id for a, b in pairwise(account.queue)):
            _bad(f"account {username!r}: queue ids not increasing")
        if type(history) is not dict:
            _bad(f"account {username!r}: history: expected an object")
        for other, ids in sorted(history.items()):
            if other != username_key(other):
                _bad(f"account {username!r}: history with {other!r}: not a username key")
            account.history[other] = deque(
                referenced(ids, f"account {username!r}: history with {other!r}"),
                maxlen=limits.history_per_pair,
            )
        state._accounts[key] = account
        state._names.append(key)

    last_used = 0
    for row in _list(doc["sessions"], "sessions"):
        key, user_key, used = _list(row, "session", 3)
        key, used = _str(key, "session hash"), _int(used, "session last_used_ms")
        owner = state._accounts.get(_str(user_key, "session user"))
        if owner is None or key in state._sessions or used < last_used or not is_session(key):
            _bad(f"session of {user_key!r}: unknown user, bad or repeated hash, or out of order")
        state._sessions[key] = _Session(user_key, used)
        owner.sessions[key] = None
        last_used = used

    last_used = 0
    for row in _list(doc["clients"], "clients"):
        client_id, session, first_outstanding, used, replies = _list(row, "client", 5)
        client_id, used = _int(client_id, "client id"), _int(used, "client last_used_ms")
        if (
            client_id in state._clients
            or used < last_used
            or not 0 < client_id <= state._highest_client_id
        ):
            _bad(f"client {client_id!r}: repeated or out of order")
        first = _int(first_outstanding, "first_outstanding")
        client = _Client(first, used, _str(session, "client session"))
        for reply in _list(replies, "client replies"):
            reply = _list(reply, "client reply")
            seq = _int(reply[0] if reply else None, "client reply seq")
            if seq in client.replies or seq < client.first_outstanding or len(reply) < 2:
                _bad(f"client {client_id!r}: reply {seq} repeated, stale or short")
            kind, outcome = _outcome_from_json(reply[2:])
            client.replies[seq] = (kind, _str(reply[1], "client reply digest"), outcome)
        if len(client.replies) > MAX_REPLIES_PER_CLIENT:
            _bad(f"client {client_id!r}: more than {MAX_REPLIES_PER_CLIENT} replies")
        state._add_client(client_id, client)
        last_used = used
    if len(state._clients) != len(doc["clients"]) or state._reply_count > MAX_REPLIES:
        _bad("the dedup table is over its bounds")  # _add_client dropped one, or too many replies
    return state
