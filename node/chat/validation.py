"""Checks made on a request before it is proposed, so bad input never reaches the log.

The state machine runs the same checks again when it applies a command (they are
deterministic), so an entry from a buggy node cannot break the state's invariants. Every
failure is a `ChatError` whose message a person can read.

Imports node.config, node.chat.errors, node.chat.commands and the standard library only.
"""

from __future__ import annotations

import re

from node.chat.commands import MAX_INT64, RequestId
from node.chat.errors import ChatError, ErrorCode
from node.config import ChatLimits

MAX_PASSWORD_CHARS = 1024
MAX_PATTERN_CHARS = 128
MAX_HISTORY_LIMIT = 10_000  # messages one History reply carries at most
# protos.vocabulary.TOKEN_BYTES, which node/chat may not import (a test ties the two)
TOKEN_BYTES = 32

_USERNAME_CHAR = re.compile(r"[A-Za-z0-9_.\-]")
_USERNAME = re.compile(r"[A-Za-z0-9_.\-]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")  # a session token, and its SHA-256
_SHOWN_CHARS = 40


def show(value: str) -> str:
    """`value` quoted for an error message, shortened if long, control characters escaped."""
    shown = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…"
    if shown.isprintable() and "'" not in shown:
        return f"'{shown}'"
    return repr(shown)


def _invalid(message: str) -> ChatError:
    return ChatError(ErrorCode.INVALID_ARGUMENT, message)


def _check_utf8(what: str, value: str) -> None:
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(f"{what} is not valid Unicode text (it holds a lone surrogate)") from None


def validate_username(username: str, limits: ChatLimits) -> str:
    """A username: 1 to `limits.max_username_chars` characters of [A-Za-z0-9_.-]."""
    if not username:
        raise _invalid("username must not be empty")
    if len(username) > limits.max_username_chars:
        raise _invalid(
            f"username {show(username)} is {len(username)} characters long; "
            f"the limit is {limits.max_username_chars}"
        )
    if _USERNAME.fullmatch(username) is None:
        bad = next(c for c in username if _USERNAME_CHAR.fullmatch(c) is None)
        raise _invalid(
            f"username {show(username)} may only contain letters, digits, '_', '.' and '-' "
            f"(ASCII only; {show(bad)} is not allowed)"
        )
    return username


def username_key(username: str) -> str:
    """The form usernames are compared in: unique ignoring case. Usernames are ASCII."""
    return username.lower()


def validate_password(password: str) -> str:
    """A password: 1 to MAX_PASSWORD_CHARS characters."""
    if not password:
        raise _invalid("password must not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise _invalid(
            f"password is {len(password)} characters long; the limit is {MAX_PASSWORD_CHARS}"
        )
    _check_utf8("password", password)
    return password


def validate_text(text: str, limits: ChatLimits) -> str:
    """A message text: 1 to `limits.max_text_chars` characters (code points)."""
    if not text:
        raise _invalid("message text must not be empty")
    if len(text) > limits.max_text_chars:
        raise _invalid(
            f"message text is {len(text)} characters long; the limit is {limits.max_text_chars}"
        )
    _check_utf8("message text", text)
    return text


def validate_pattern(pattern: str) -> str:
    """A shell-style wildcard (`al*`, `?ob`, `[ab]*`); empty means "*"."""
    if not pattern:
        return "*"
    if len(pattern) > MAX_PATTERN_CHARS:
        raise _invalid(
            f"pattern {show(pattern)} is {len(pattern)} characters long; "
            f"the limit is {MAX_PATTERN_CHARS}"
        )
    _check_utf8("pattern", pattern)
    return pattern


def validate_page_size(page_size: int, limits: ChatLimits) -> int:
    """0 means `limits.page_size`; more than `limits.max_page_size` is cut to it."""
    if page_size < 0:
        raise _invalid(f"page size must not be negative (got {page_size})")
    if page_size == 0:
        return limits.page_size
    return min(page_size, limits.max_page_size)


def validate_history_limit(limit: int, limits: ChatLimits) -> int:
    """0 means `limits.page_size`; more than MAX_HISTORY_LIMIT (what one reply carries; the
    history kept is a retention setting, far larger) or than the history kept per pair is cut
    to it."""
    if limit < 0:
        raise _invalid(f"history limit must not be negative (got {limit})")
    if limit == 0:
        return min(limits.page_size, limits.history_per_pair)
    return min(limit, MAX_HISTORY_LIMIT, limits.history_per_pair)


def validate_message_id(message_id: int, what: str = "message id") -> int:
    """A message id as a bound (`up_to_id`, `after_id`): 0 to 2**63 - 1, what SQLite's
    signed 64-bit integers hold (a larger one would fail at apply, on every replica)."""
    if not 0 <= message_id <= MAX_INT64:
        raise _invalid(f"{what} must be between 0 and {MAX_INT64} (got {message_id})")
    return message_id


def validate_token(token: str) -> str:
    """A session token's shape (64 lowercase hex digits, 32 bytes the client drew); whether it
    is live is `ChatState.authenticate`'s question, asked of its hash."""
    if not token:
        raise ChatError(ErrorCode.UNAUTHENTICATED, "no session token given: log in first")
    if _HEX64.fullmatch(token) is None:
        raise ChatError(ErrorCode.UNAUTHENTICATED, "malformed session token: log in again")
    return token


def validate_new_token(token: str) -> str:
    """The token a Login opens a session with: INVALID_ARGUMENT unless it has a token's shape."""
    if _HEX64.fullmatch(token) is None:
        raise _invalid(
            f"login: the session token must be {TOKEN_BYTES} random bytes as "
            f"{2 * TOKEN_BYTES} lowercase hex digits (got {len(token)} characters)"
        )
    return token


def is_session(session: str) -> bool:
    """Whether `session` has the shape of a session hash (SHA-256, 64 lowercase hex digits)."""
    return _HEX64.fullmatch(session) is not None


def check_request_id(client_id: int, seq: int, first_outstanding: int) -> None:
    """Raises INVALID_ARGUMENT unless this is a well-formed request id (thesis §6.3):
    a registered client id (positive: the log index of its RegisterClient entry, which the
    state machine checks), `first_outstanding <= seq`, all within int64."""
    if not 0 < client_id <= MAX_INT64:
        raise _invalid(
            f"request id: client id {client_id} is not one the cluster handed out: "
            "call RegisterClient first"
        )
    if not 0 <= seq <= MAX_INT64:
        raise _invalid(f"request id: sequence number {seq} is out of range")
    if not 0 <= first_outstanding <= seq:
        raise _invalid(
            f"request id: first outstanding {first_outstanding} must be between 0 and "
            f"the sequence number {seq}"
        )


def validate_request_id(client_id: int, seq: int, first_outstanding: int) -> RequestId:
    """A client's request id, checked (see check_request_id)."""
    check_request_id(client_id, seq, first_outstanding)
    return RequestId(client_id=client_id, seq=seq, first_outstanding=first_outstanding)
