"""The commands the chat log carries, and their bytes.

One frozen dataclass per command. Every command carries `timestamp_ms`, the wall clock of the
node that accepted the request (shown with a message; it takes no part in expiry),
`log_time_ms`, the one log clock, stamped by the leader (node.logclock: it never goes back and
never jumps with one machine's clock), and `request`, the client's request id (Raft thesis
§6.3) where it is a client write. A client id is the log index of the RegisterClient entry
that created it (§6.3: the log registers client sessions, so an expired one is recognised).

Encoding: one format-version byte (COMMAND_FORMAT_VERSION), then canonical JSON in UTF-8:
sorted keys, no whitespace, bytes as standard base64. The same command always gives the same
bytes. `decode` is strict (exact key sets, exact types, ranges) and raises CommandDecodeError,
which is not a ChatError: an entry this node cannot decode is a bug or a newer format.

Imports node.chat.errors, node.chat.passwords and the standard library only.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from node.chat.errors import CommandDecodeError
from node.chat.passwords import PasswordHash

COMMAND_FORMAT_VERSION = 3  # 2: log time, client ids, RegisterClient, Tick; 3: session hashes
MAX_UINT64 = 2**64 - 1
MAX_INT64 = 2**63 - 1


class CommandKind(enum.Enum):
    REGISTER = "register"
    LOGIN = "login"
    LOGOUT = "logout"
    SEND = "send"
    ACK = "ack"
    DELETE_ACCOUNT = "delete_account"
    REGISTER_CLIENT = "register_client"
    TICK = "tick"


@dataclass(frozen=True, slots=True)
class RequestId:
    """Identifies a client write so that a retry is applied once (thesis §6.3)."""

    client_id: int  # the log index of the client's RegisterClient entry
    seq: int  # increases by one per write of that client
    first_outstanding: int  # the client holds a reply for every seq below this one


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    KIND: ClassVar[CommandKind] = CommandKind.REGISTER
    timestamp_ms: int
    log_time_ms: int
    request: RequestId | None
    username: str
    password_hash: PasswordHash  # salted by the accepting node


@dataclass(frozen=True, slots=True, kw_only=True)
class Login:
    """The accepting node verified the password against `account_hash(username)`; apply
    re-checks that the account exists and still has that hash (it may have been deleted and
    registered again in between)."""

    KIND: ClassVar[CommandKind] = CommandKind.LOGIN
    timestamp_ms: int
    log_time_ms: int
    request: RequestId | None
    username: str
    session: str  # SHA-256 (hex) of the token the client chose for the new session
    verified_digest: bytes  # PasswordHash.digest the password was verified against


@dataclass(frozen=True, slots=True, kw_only=True)
class Logout:
    KIND: ClassVar[CommandKind] = CommandKind.LOGOUT
    timestamp_ms: int
    log_time_ms: int
    request: RequestId | None
    session: str  # SHA-256 (hex) of the session token; the token never enters the log


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    KIND: ClassVar[CommandKind] = CommandKind.SEND
    timestamp_ms: int
    log_time_ms: int
    request: RequestId | None
    session: str  # SHA-256 (hex) of the session token; the token never enters the log
    recipient: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    KIND: ClassVar[CommandKind] = CommandKind.ACK
    timestamp_ms: int
    log_time_ms: int
    request: RequestId | None
    session: str  # SHA-256 (hex) of the session token; the token never enters the log
    up_to_id: int  # cumulative: every queued message with id <= up_to_id leaves the queue


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteAccount:
    """Deletes the session's own account; the accepting node checked the password first."""

    KIND: ClassVar[CommandKind] = CommandKind.DELETE_ACCOUNT
    timestamp_ms: int
    log_time_ms: int
    request: RequestId | None
    session: str  # SHA-256 (hex) of the session token; the token never enters the log


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterClient:
    """Opens a client session for deduplication; its log index becomes the client id. With a
    `session`, the client session is bound to that chat session: only writes made with it may
    use the id, so another user can neither use the id nor move its first_outstanding. Without
    one it serves the writes that need no session (Register, Login)."""

    KIND: ClassVar[CommandKind] = CommandKind.REGISTER_CLIENT
    timestamp_ms: int
    log_time_ms: int
    request: None = None
    session: str = ""  # SHA-256 (hex) of the session token, or "" for none


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """Moves log time on when nothing else does, so sessions expire on a quiet cluster."""

    KIND: ClassVar[CommandKind] = CommandKind.TICK
    timestamp_ms: int
    log_time_ms: int
    request: None = None


Command = Register | Login | Logout | Send | Ack | DeleteAccount | RegisterClient | Tick


# --- encoding ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _request_json(request: RequestId | None) -> dict[str, Any] | None:
    if request is None:
        return None
    return {
        "client_id": request.client_id,
        "seq": request.seq,
        "first_outstanding": request.first_outstanding,
    }


def password_hash_json(h: PasswordHash) -> dict[str, Any]:
    """The JSON form of a password hash (shared with the snapshot format)."""
    return {"salt": _b64(h.salt), "n": h.n, "r": h.r, "p": h.p, "digest": _b64(h.digest)}


def _fields(cmd: Command) -> dict[str, Any]:
    if isinstance(cmd, Send):
        return {"session": cmd.session, "recipient": cmd.recipient, "text": cmd.text}
    if isinstance(cmd, Ack):
        return {"session": cmd.session, "up_to_id": cmd.up_to_id}
    if isinstance(cmd, Register):
        return {"username": cmd.username, "password_hash": password_hash_json(cmd.password_hash)}
    if isinstance(cmd, Login):
        return {
            "username": cmd.username,
            "session": cmd.session,
            "verified_digest": _b64(cmd.verified_digest),
        }
    if isinstance(cmd, RegisterClient):
        return {"session": cmd.session}
    if isinstance(cmd, Tick):
        return {}
    return {"session": cmd.session}  # Logout, DeleteAccount


def canonical_json(value: object) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8. Equal values give equal bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def encode(cmd: Command) -> bytes:
    """The command's log bytes: a version byte, then canonical JSON."""
    obj = _fields(cmd)
    obj["kind"] = cmd.KIND.value
    obj["timestamp_ms"] = cmd.timestamp_ms
    obj["log_time_ms"] = cmd.log_time_ms
    obj["request"] = _request_json(cmd.request)
    return bytes((COMMAND_FORMAT_VERSION,)) + canonical_json(obj)


# --- decoding ---------------------------------------------------------------------------------


_json_decode = json.JSONDecoder().decode


def _object(obj: object, where: str, keys: frozenset[str]) -> dict[str, object]:
    """`obj` as a JSON object with exactly `keys`."""
    if type(obj) is not dict:
        raise CommandDecodeError(f"{where}: expected an object, got {type(obj).__name__}")
    if obj.keys() != keys:
        raise CommandDecodeError(
            f"{where}: expected keys {sorted(keys)}, got {sorted(str(k) for k in obj)}"
        )
    return obj


def _get_int(
    obj: dict[str, object], key: str, where: str, low: int = 0, high: int = MAX_UINT64
) -> int:
    value = obj[key]
    if type(value) is not int or not low <= value <= high:
        raise CommandDecodeError(f"{where}.{key}: expected an integer in [{low}, {high}]")
    return value


def _get_str(obj: dict[str, object], key: str, where: str) -> str:
    value = obj[key]
    if type(value) is not str:
        raise CommandDecodeError(f"{where}.{key}: expected a string")
    return value


def _get_bytes(
    obj: dict[str, object], key: str, where: str, min_len: int = 0, max_len: int = 1 << 16
) -> bytes:
    text = _get_str(obj, key, where)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CommandDecodeError(f"{where}.{key}: expected base64") from None
    if not min_len <= len(data) <= max_len:
        raise CommandDecodeError(
            f"{where}.{key}: expected {min_len} to {max_len} bytes, got {len(data)}"
        )
    return data


_REQUEST_KEYS = frozenset({"client_id", "seq", "first_outstanding"})
_HASH_KEYS = frozenset({"salt", "n", "r", "p", "digest"})
_COMMON_KEYS = frozenset({"kind", "timestamp_ms", "log_time_ms", "request"})


def _decode_request(obj: object) -> RequestId | None:
    if obj is None:
        return None
    r = _object(obj, "request", _REQUEST_KEYS)
    return RequestId(
        _get_int(r, "client_id", "request", 1, MAX_INT64),
        _get_int(r, "seq", "request"),
        _get_int(r, "first_outstanding", "request"),
    )


def password_hash_from_json(obj: object, where: str = "password_hash") -> PasswordHash:
    """Inverse of password_hash_json, with sanity bounds on the cost (CommandDecodeError)."""
    h = _object(obj, where, _HASH_KEYS)
    n = _get_int(h, "n", where, 2, 2**24)
    r = _get_int(h, "r", where, 1, 64)
    p = _get_int(h, "p", where, 1, 64)
    if n & (n - 1):
        raise CommandDecodeError(f"{where}.n: expected a power of two, got {n}")
    if 128 * r * (n + p) > 1 << 31:
        raise CommandDecodeError(f"{where}: cost n={n} r={r} p={p} needs over 2 GiB")
    return PasswordHash(
        salt=_get_bytes(h, "salt", where, 1, 1024),
        n=n,
        r=r,
        p=p,
        digest=_get_bytes(h, "digest", where, 16, 1024),
    )


_Fields = dict[str, object]


def _decode_register(o: _Fields, ts: int, lt: int, req: RequestId | None) -> Command:
    return Register(
        timestamp_ms=ts,
        log_time_ms=lt,
        request=req,
        username=_get_str(o, "username", "register"),
        password_hash=password_hash_from_json(o["password_hash"]),
    )


def _decode_login(o: _Fields, ts: int, lt: int, req: RequestId | None) -> Command:
    return Login(
        timestamp_ms=ts,
        log_time_ms=lt,
        request=req,
        username=_get_str(o, "username", "login"),
        session=_get_str(o, "session", "login"),
        verified_digest=_get_bytes(o, "verified_digest", "login"),
    )


def _decode_logout(o: _Fields, ts: int, lt: int, req: RequestId | None) -> Command:
    return Logout(
        timestamp_ms=ts, log_time_ms=lt, request=req, session=_get_str(o, "session", "logout")
    )


def _decode_send(o: _Fields, ts: int, lt: int, req: RequestId | None) -> Command:
    return Send(
        timestamp_ms=ts,
        log_time_ms=lt,
        request=req,
        session=_get_str(o, "session", "send"),
        recipient=_get_str(o, "recipient", "send"),
        text=_get_str(o, "text", "send"),
    )


def _decode_ack(o: _Fields, ts: int, lt: int, req: RequestId | None) -> Command:
    return Ack(
        timestamp_ms=ts,
        log_time_ms=lt,
        request=req,
        session=_get_str(o, "session", "ack"),
        up_to_id=_get_int(o, "up_to_id", "ack"),
    )


def _decode_delete(o: _Fields, ts: int, lt: int, req: RequestId | None) -> Command:
    session = _get_str(o, "session", "delete_account")
    return DeleteAccount(timestamp_ms=ts, log_time_ms=lt, request=req, session=session)


def _decode_register_client(o: _Fields, ts: int, lt: int, req: RequestId | None) -> Command:
    if req is not None:
        raise CommandDecodeError("register_client: carries no request id")
    session = _get_str(o, "session", "register_client")
    return RegisterClient(timestamp_ms=ts, log_time_ms=lt, session=session)


def _decode_tick(o: _Fields, ts: int, lt: int, req: RequestId | None) -> Command:
    if req is not None:
        raise CommandDecodeError("tick: carries no request id")
    return Tick(timestamp_ms=ts, log_time_ms=lt)


_Decoder = Callable[[_Fields, int, int, RequestId | None], Command]
_DECODERS: dict[object, tuple[frozenset[str], _Decoder]] = {
    CommandKind.REGISTER.value: (_COMMON_KEYS | {"username", "password_hash"}, _decode_register),
    CommandKind.LOGIN.value: (
        _COMMON_KEYS | {"username", "session", "verified_digest"},
        _decode_login,
    ),
    CommandKind.LOGOUT.value: (_COMMON_KEYS | {"session"}, _decode_logout),
    CommandKind.SEND.value: (_COMMON_KEYS | {"session", "recipient", "text"}, _decode_send),
    CommandKind.ACK.value: (_COMMON_KEYS | {"session", "up_to_id"}, _decode_ack),
    CommandKind.DELETE_ACCOUNT.value: (_COMMON_KEYS | {"session"}, _decode_delete),
    CommandKind.REGISTER_CLIENT.value: (_COMMON_KEYS | {"session"}, _decode_register_client),
    CommandKind.TICK.value: (_COMMON_KEYS, _decode_tick),
}


def decode(data: bytes) -> Command:
    """Inverse of `encode`; raises CommandDecodeError for anything else."""
    if not data:
        raise CommandDecodeError("empty command")
    if data[0] != COMMAND_FORMAT_VERSION:
        raise CommandDecodeError(
            f"command format version {data[0]} is not the one this node understands "
            f"({COMMAND_FORMAT_VERSION})"
        )
    try:
        obj = _json_decode(data[1:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CommandDecodeError(f"command is not UTF-8 JSON: {exc}") from None
    kind = obj.get("kind") if type(obj) is dict else None
    entry = _DECODERS.get(kind) if type(kind) is str else None
    if entry is None:
        raise CommandDecodeError(f"unknown command kind {kind!r}")
    keys, decoder = entry
    fields = _object(obj, str(kind), keys)
    ts = _get_int(fields, "timestamp_ms", "command", 0, MAX_INT64)
    lt = _get_int(fields, "log_time_ms", "command", 0, MAX_INT64)
    return decoder(fields, ts, lt, _decode_request(fields["request"]))


def session_of(token: str) -> str:
    """All that the cluster keeps of a session token: its SHA-256, in hex. The token is
    chosen by the client at Login and never stored, logged or sent back (issue 11)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def session_used(cmd: Command) -> str | None:
    """The session (hash) a command is made with; None for those that need no session (a
    Login's session is the new one it opens, not one it is made with)."""
    if isinstance(cmd, Send | Ack | Logout | DeleteAccount):
        return cmd.session
    return None


def request_digest(cmd: Command) -> str:
    """A digest of what the client asked, to bind a request id to its content: only the fields
    the client sent (the accepting node's timestamp, salt and hash differ on a retry through
    another node), never a password, and a session token only as its hash."""
    session = session_used(cmd)
    fields: list[Any] = [] if session is None else [session]
    if isinstance(cmd, Register):
        fields.append(cmd.username)
    elif isinstance(cmd, Login):
        fields += [cmd.username, cmd.session]
    elif isinstance(cmd, Send):
        fields += [cmd.recipient, cmd.text]
    elif isinstance(cmd, Ack):
        fields.append(cmd.up_to_id)
    return hashlib.sha256(canonical_json([cmd.KIND.value, *fields])).hexdigest()[:32]
