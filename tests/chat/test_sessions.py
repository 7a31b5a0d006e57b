"""Sessions: tokens, logout, idle expiry measured in log time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node.chat.commands import Login, Tick, encode, session_of
from node.chat.errors import ChatError, CommandDecodeError, ErrorCode
from node.chat.replies import LogoutReply
from node.chat.state import MAX_SESSIONS_PER_ACCOUNT

from .conftest import SMALL_LIMITS, Node

IDLE_MS = SMALL_LIMITS.session_idle_s * 1000


def unauthenticated(node: Node, token: str, now_ms: int | None = None) -> ChatError:
    with pytest.raises(ChatError) as info:
        node.state.authenticate(token, now_ms)
    assert info.value.code is ErrorCode.UNAUTHENTICATED
    return info.value


def test_logout_revokes_the_token(node: Node) -> None:
    token = node.user("alice")
    node.register("bob")
    result = node.logout(token)
    assert result.outcome == LogoutReply("alice")
    assert result.ended_sessions == (token,)
    unauthenticated(node, token)
    node.refused(node.send_cmd(token, "bob"), ErrorCode.UNAUTHENTICATED)
    node.refused(node.logout_cmd(token), ErrorCode.UNAUTHENTICATED)
    node.refused(node.ack_cmd(token, 1), ErrorCode.UNAUTHENTICATED)
    node.refused(node.delete_cmd(token), ErrorCode.UNAUTHENTICATED)


def test_other_sessions_survive_a_logout(node: Node) -> None:
    one = node.user("alice")
    two = node.login("alice")
    node.logout(one)
    assert node.state.authenticate(two) == "alice"


def test_unknown_and_malformed_tokens_are_unauthenticated(node: Node) -> None:
    node.user("alice")
    unauthenticated(node, "never-issued")
    unauthenticated(node, "")  # an empty token is refused at the edge (test_validation)
    # A write with a token needs a client bound to that session (issue 11), and binding one
    # to a token never issued is refused, so the write never reaches the log.
    before = node.index
    with pytest.raises(ChatError) as info:
        node.send_cmd("never-issued", "alice")
    assert info.value.code is ErrorCode.UNAUTHENTICATED
    assert node.index == before + 1 and node.state.queue("alice") == ()  # RegisterClient only
    # Under a client without a session (Register and Login's) neither gets through.
    for token in ("never-issued", ""):
        send = node.send_cmd(token, "alice", request=node.request())
        err = node.refused(send, ErrorCode.INVALID_ARGUMENT)
        assert "serves only Register and Login" in err.message
    assert node.state.queue("alice") == ()


def test_a_session_expires_after_its_idle_time_in_log_time(node: Node) -> None:
    token = node.user("alice")
    login_ms = node.now_ms
    assert node.state.authenticate(token, login_ms + IDLE_MS) == "alice"
    err = unauthenticated(node, token, login_ms + IDLE_MS + 1)
    assert "expired" in err.message


def test_expiry_is_judged_by_log_time_when_applying() -> None:
    # Client sessions outlive the login session here, so that the send below is the first
    # entry past the login's idle time (otherwise the client registers again first, and that
    # entry is the one that ends the session).
    node = Node(replace(SMALL_LIMITS, client_idle_s=SMALL_LIMITS.session_idle_s * 10))
    token = node.user("alice")
    node.advance(SMALL_LIMITS.session_idle_s)
    assert node.send(token, "alice").ok  # exactly the idle time: still live, and refreshed
    node.advance(SMALL_LIMITS.session_idle_s + 0.001)
    result = node.apply(node.send_cmd(token, "alice"))
    assert isinstance(result.outcome, ChatError)
    assert result.outcome.code is ErrorCode.UNAUTHENTICATED
    assert token in result.ended_sessions  # the expired session was dropped at this log time
    assert node.state.session_count == 0


def test_log_time_not_a_clock_decides() -> None:
    """A command stamped by a node whose clock is behind does not move log time back."""
    # Client sessions outlive the login session here, so that the send below is applied
    # under the client bound to the session (not refused with a new client's RegisterClient).
    node = Node(replace(SMALL_LIMITS, client_idle_s=SMALL_LIMITS.session_idle_s * 10))
    token = node.user("alice")
    node.client_id("client", token)  # bound while the session lives
    node.advance(SMALL_LIMITS.session_idle_s * 2)
    node.register("bob")  # log time is now past the session's idle time
    node.now_ms -= SMALL_LIMITS.session_idle_s * 2 * 1000  # a node with a slow clock
    node.refused(node.send_cmd(token, "bob"), ErrorCode.UNAUTHENTICATED)


def test_an_applied_use_refreshes_the_session(node: Node) -> None:
    token = node.user("alice")
    for _ in range(5):
        node.advance(SMALL_LIMITS.session_idle_s * 0.9)
        assert node.send(token, "alice").ok
    assert node.state.authenticate(token, node.now_ms + IDLE_MS) == "alice"


def test_reads_do_not_refresh_the_session(node: Node) -> None:
    token = node.user("alice")
    login_ms = node.now_ms
    for step in range(1, 10):
        assert node.state.authenticate(token, login_ms + step * IDLE_MS // 10) == "alice"
        node.state.queue("alice")
        node.state.history("alice", "bob")
    unauthenticated(node, token, login_ms + IDLE_MS + 1)


def test_idle_sessions_leave_the_table(node: Node) -> None:
    node.register("alice")
    for _ in range(20):
        node.login("alice")
    assert node.state.session_count == 20
    node.advance(SMALL_LIMITS.session_idle_s + 1)
    node.register("bob")
    assert node.state.session_count == 0


def test_sessions_per_account_are_bounded(node: Node) -> None:
    node.register("alice")
    tokens = [node.login("alice") for _ in range(MAX_SESSIONS_PER_ACCOUNT)]
    node.advance(1)
    assert node.send(tokens[0], "alice").ok  # the first is now the most recently used
    result = node.apply(node.login_cmd("alice"))
    assert result.ended_sessions == (tokens[1],)  # the least recently used one goes
    assert node.state.session_count == MAX_SESSIONS_PER_ACCOUNT
    assert node.state.authenticate(tokens[0]) == "alice"
    unauthenticated(node, tokens[1])


def test_a_login_retried_opens_the_one_session_it_names(node: Node) -> None:
    """The client chose the session token, so its retry names the same session (issue 11:
    'a retried Login through a new leader therefore needs nothing stored'); a Login under the
    same request id naming another session is another request."""
    node.register("alice")
    login = node.login_cmd("alice")
    first = node.apply(login)
    retry = Login(
        timestamp_ms=node.now_ms + 5,
        log_time_ms=node.log_time_ms() + 5,
        request=login.request,
        username="alice",
        session=login.session,
        verified_digest=login.verified_digest,
    )
    again = node.apply(retry)
    assert again.duplicate and again.outcome == first.outcome
    assert node.state.session_count == 1
    other = node.refused(replace(retry, session=session_of("other")), ErrorCode.INVALID_ARGUMENT)
    assert other.message.startswith("request id reused for a different request")
    assert node.state.session_count == 1


def test_a_rolled_back_batch_leaves_its_expiries_to_the_next_entry(node: Node) -> None:
    """Expiry skips its queries while it knows nothing can be idle yet; a batch that is rolled
    back after ending sessions puts them back, and the next entry must end them again."""
    node.user("alice")
    node.user("bob")
    node.advance(SMALL_LIMITS.session_idle_s + 1)
    tick = encode(Tick(timestamp_ms=node.now_ms, log_time_ms=node.now_ms))
    with pytest.raises(CommandDecodeError):
        node.state.apply_batch([(node.index + 1, tick), (node.index + 2, b"not a command")])
    assert node.state.session_count == 2  # the batch, expiries included, was undone
    result = node.state.apply(node.index + 1, tick)
    assert len(result.ended_sessions) == 2
    assert node.state.session_count == 0
