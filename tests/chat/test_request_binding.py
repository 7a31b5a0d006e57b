"""Request ids bound to what they asked (issue 11, item 3): "Replaying a Login's (client id,
seq) with a wrong password, or as another user with no password, returned the original user's
token. A Send replayed with other text, another recipient, or another user's token got the
first reply, and its payload was silently dropped. Any logged-in user can send a write under a
victim's client id with first_outstanding = 2^63: every later write of the victim then fails
'stale' for an hour."

The rules (DESIGN.md, Security; TRAPS.md): "A request id is bound to its content and its
session: a retry is answered from the dedup table only if it is the same request"; the
content digest covers "the client's request fields only", and "a password must never enter a
fast digest"; a client session registered with a token serves only that session's writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest

from node.chat.commands import (
    Command,
    Login,
    Register,
    RequestId,
    Send,
    encode,
    request_digest,
    session_of,
)
from node.chat.errors import ChatError, ErrorCode
from node.chat.replies import ApplyResult, LoginReply
from node.chat.state import ChatState

from .conftest import SMALL_LIMITS, Node, assert_alike, copy_of, fast_hash, read_rows

HUGE = 2**63 - 1
REUSED = "request id reused for a different request"


def restamped(node: Node, cmd: Command) -> Command:
    """The same request again, accepted by another node: stamped anew."""
    return replace(cmd, timestamp_ms=node.now_ms, log_time_ms=node.log_time_ms())


def client_row(state: ChatState, client_id: int) -> list[object]:
    """The client's row in the database, its replies beside it: [id, session,
    first_outstanding, last_used_ms, used_at, reply count, [(seq, kind, request digest,
    outcome), ...]]."""
    [row] = read_rows(state, "SELECT * FROM clients WHERE client_id = ?", client_id)
    replies = read_rows(
        state,
        "SELECT seq, kind, request_digest, outcome FROM replies WHERE client_id = ? ORDER BY seq",
        client_id,
    )
    return [*row, replies]


# --- a retry must be the same request ------------------------------------------------------


OTHER_CONTENT: dict[str, Callable[[Node, Send], Command]] = {
    "other text": lambda node, send: replace(restamped(node, send), text="transfer 1000"),
    "another recipient": lambda node, send: replace(restamped(node, send), recipient="bob"),
    "another kind (an Ack)": lambda node, send: replace(
        node.ack_cmd(send.session, 1), request=send.request
    ),
}


@pytest.mark.parametrize("change", OTHER_CONTENT.values(), ids=list(OTHER_CONTENT))
def test_a_retry_with_other_content_is_refused_and_applies_nothing(
    node: Node, change: Callable[[Node, Send], Command]
) -> None:
    """Issue 11: 'A Send replayed with other text, another recipient ... got the first reply,
    and its payload was silently dropped.' Now it is refused, and the first reply stays the
    answer to the real retry. (Before: text and recipient got the first reply as a duplicate;
    another kind was refused with another message.)"""
    alice = node.user("alice")
    node.user("bob")
    node.advance(1)
    send = node.send_cmd(alice, "alice", "hello")
    first = node.apply(send)
    assert first.ok
    node.advance(1)
    err = node.refused(change(node, send), ErrorCode.INVALID_ARGUMENT)
    assert err.message.startswith(REUSED)
    assert [m.text for m in node.state.queue("alice")] == ["hello"]
    assert node.state.queue("bob") == ()
    again = node.apply(restamped(node, send))  # the real retry: still its first reply
    assert again.duplicate and again.outcome == first.outcome


def test_a_retry_under_another_session_is_refused(node: Node) -> None:
    """Issue 11: '... or another user's token got the first reply'."""
    alice, mallory = node.user("alice"), node.user("mallory")
    send = node.send_cmd(alice, "alice", "hello")
    first = node.apply(send)
    err = node.refused(replace(restamped(node, send), session=mallory), ErrorCode.INVALID_ARGUMENT)
    assert "is bound to another session" in err.message
    assert node.state.queue("mallory") == () and node.state.queue("alice") != ()
    assert node.apply(restamped(node, send)).outcome == first.outcome


# --- passwords stay out of the digest ------------------------------------------------------


def test_the_digest_is_of_the_clients_fields_and_never_of_a_password(node: Node) -> None:
    """TRAPS.md: 'Compute the dedup content digest over the client's request fields only: the
    fields the accepting node sets (timestamp, salt, hash, token) differ on a retry through
    another node, and a password must never enter a fast digest.'"""
    rid = RequestId(1, 1, 1)
    one = Register(
        timestamp_ms=1, log_time_ms=1, request=rid, username="alice", password_hash=fast_hash("a")
    )
    other = replace(one, timestamp_ms=2, log_time_ms=2, password_hash=fast_hash("b", b"pepper"))
    assert request_digest(one) == request_digest(other)
    assert request_digest(replace(one, username="alicia")) != request_digest(one)
    login = Login(
        timestamp_ms=1,
        log_time_ms=1,
        request=rid,
        username="alice",
        session="t1",
        verified_digest=b"\x01" * 32,
    )
    retried = replace(login, timestamp_ms=2, verified_digest=b"\x02" * 32)
    assert request_digest(login) == request_digest(retried)
    assert request_digest(replace(login, username="bob")) != request_digest(login)
    assert request_digest(replace(login, session="t2")) != request_digest(login)


def test_a_register_retried_with_another_password_is_the_same_request(node: Node) -> None:
    """The accepting node hashes the password with a fresh salt, so a retry through another
    node carries another hash; and the client may have mistyped it. Neither makes it another
    request: only the username is the client's content. Another username is another request
    (before: it got the first reply, and the second account was silently not created)."""
    cmd = node.register_cmd("alice", "first")
    first = node.apply(cmd)
    assert first.ok
    retry = replace(restamped(node, cmd), password_hash=fast_hash("second", b"other-salt"))
    again = node.apply(retry)
    assert again.duplicate and again.outcome == first.outcome
    assert node.state.account_hash("alice") == cmd.password_hash  # the first one stays
    err = node.refused(replace(retry, username="bob"), ErrorCode.INVALID_ARGUMENT)
    assert err.message.startswith(REUSED)
    assert node.state.registered_name("bob") is None


def test_a_login_retry_is_judged_by_username_only_the_server_checks_the_password(
    node: Node,
) -> None:
    """At the state machine a Login's content is its username and the session it opens (the
    client chose the token); the verified hash digest is the accepting node's, and the
    password was checked there (node/server.py checks it on retries too). A Login retried as
    another user is another request: issue 11, 'or as another user with no password,
    returned the original user's token'."""
    node.register("alice")
    node.register("bob")
    login = node.login_cmd("alice")
    first = node.apply(login)
    assert isinstance(first.outcome, LoginReply)
    retry = replace(restamped(node, login), verified_digest=b"")
    again = node.apply(retry)
    assert again.duplicate and again.outcome == first.outcome  # the first session, no new one
    assert node.state.session_count == 1
    bob_hash = node.state.account_hash("bob")
    assert bob_hash is not None
    as_bob = replace(retry, username="bob", verified_digest=bob_hash.digest)
    err = node.refused(as_bob, ErrorCode.INVALID_ARGUMENT)
    assert err.message.startswith(REUSED)
    other_session = replace(retry, session=session_of("another token"))
    assert node.refused(other_session, ErrorCode.INVALID_ARGUMENT).message.startswith(REUSED)
    assert node.state.session_count == 1


# --- client sessions bound to a chat session -----------------------------------------------


def test_a_write_with_another_users_token_on_a_bound_client_leaves_that_client_alone(
    node: Node,
) -> None:
    """Issue 11: 'Any logged-in user can send a write under a victim's client id with
    first_outstanding = 2^63: every later write of the victim then fails "stale" for an
    hour.' Refused before anything of the client is touched: its first_outstanding, its
    replies and its last use stay as they were."""
    victim, mallory = node.user("victim"), node.user("mallory")
    node.advance(1)
    first = node.apply(node.send_cmd(victim, "victim", "one", request=node.rid("v", 1, 1, victim)))
    assert first.ok
    victims = node.client_id("v", victim)
    row = client_row(node.state, victims)
    node.advance(1)
    attack = node.send_cmd(mallory, "mallory", "x", request=RequestId(victims, HUGE, HUGE))
    err = node.refused(attack, ErrorCode.INVALID_ARGUMENT)
    assert err.message == f"client {victims} is bound to another session"
    assert client_row(node.state, victims) == row
    assert node.state.queue("mallory") == ()
    # Mallory cannot take over a reply either: the victim's seq 1 under her token.
    stolen = node.send_cmd(mallory, "victim", "one", request=RequestId(victims, 1, 1))
    assert not node.apply(stolen).ok
    assert client_row(node.state, victims) == row
    # The victim goes on: her retry gets its first reply, her next write is applied.
    retry = node.send_cmd(victim, "victim", "one", request=node.rid("v", 1, 1, victim))
    assert node.apply(retry).outcome == first.outcome
    later = node.apply(node.send_cmd(victim, "victim", "two", request=node.rid("v", 2, 2, victim)))
    assert later.ok and [m.text for m in node.state.queue("victim")] == ["one", "two"]


def test_an_unbound_client_serves_only_register_and_login_and_a_bound_one_only_its_session(
    node: Node,
) -> None:
    """Another user's writes must neither use a client id nor move its first_outstanding: a
    write with a token under the client of Register and Login is refused, and so are a
    Register and a Login under a session's client; neither client is touched."""
    alice = node.user("alice")
    unbound, bound = node.client_id("client"), node.client_id("client", alice)
    rows = {c: client_row(node.state, c) for c in (unbound, bound)}
    send = node.send_cmd(alice, "alice", request=RequestId(unbound, 50, 50))
    err = node.refused(send, ErrorCode.INVALID_ARGUMENT)
    assert err.message.startswith(f"client {unbound} serves only Register and Login")
    for cmd in (
        node.register_cmd("bob", request=RequestId(bound, 50, 50)),
        node.login_cmd("alice", request=RequestId(bound, 51, 51)),
    ):
        err = node.refused(cmd, ErrorCode.INVALID_ARGUMENT)
        assert err.message.startswith(f"client {bound} is bound to a session")
    assert {c: client_row(node.state, c) for c in (unbound, bound)} == rows
    assert node.state.registered_name("bob") is None and node.state.session_count == 1
    assert node.state.queue("alice") == ()
    assert node.logout(alice).ok  # under its own client: served


DEAD_TOKENS: dict[str, Callable[[Node], str]] = {
    "never issued": lambda node: "never-issued",
    "logged out": lambda node: _logged_out(node),
    "expired": lambda node: _expired_session(node),
}


def _logged_out(node: Node) -> str:
    token = node.user("alice")
    assert node.logout(token).ok
    return token


def _expired_session(node: Node) -> str:
    token = node.user("alice")
    node.advance(SMALL_LIMITS.session_idle_s + 1)
    return token


@pytest.mark.parametrize("dead", DEAD_TOKENS.values(), ids=list(DEAD_TOKENS))
def test_register_client_with_a_dead_token_is_refused(
    node: Node, dead: Callable[[Node], str]
) -> None:
    """A client session bound to a session needs that session live: the token must be a live
    session, else UNAUTHENTICATED at apply, and no client id is handed out (its index is not
    taken for an expired client either)."""
    token = dead(node)
    clients = node.state.client_count
    result = node.apply(node.register_client_cmd(token))
    assert isinstance(result.outcome, ChatError), result.outcome
    assert result.outcome.code is ErrorCode.UNAUTHENTICATED
    assert node.state.client_count <= clients  # (an expired session's clients idled out too)
    never = node.send_cmd(token, "alice", request=RequestId(result.index, 1, 1))
    err = node.refused(never, ErrorCode.INVALID_ARGUMENT)
    assert "never registered" in err.message


# --- snapshots and replicas ----------------------------------------------------------------


def bound_node() -> Node:
    """Bound and unbound clients, remembered replies of several kinds, a refused reuse."""
    node = Node()
    alice, bob = node.user("alice"), node.user("bob")
    node.sent(alice, "bob", "hi bob")
    node.sent(bob, "alice", "hi alice")
    node.ack(bob, 1)
    node.send(alice, "nobody")
    node.refused(
        node.send_cmd(bob, "bob", request=RequestId(node.client_id("client", alice), 90, 90)),
        ErrorCode.INVALID_ARGUMENT,
    )
    return node


def script(node: Node) -> list[Command]:
    """Entries to apply to a state and its copy: a retry, a reuse, another's client, a new
    binding, a binding to a dead token."""
    alice, bob = session_of("token-1"), session_of("token-2")
    alice_client = node.client_id("client", alice)
    bob_client = node.client_id("client", bob)
    # alice's latest write (seq 1 is below her first_outstanding now): refused NOT_FOUND
    latest = node.send_cmd(alice, "nobody", "hi", request=RequestId(alice_client, 2, 2))
    return [
        restamped(node, latest),  # answered from the table
        replace(restamped(node, latest), text="other"),  # reused for other content
        replace(restamped(node, latest), session=bob),  # another session
        node.send_cmd(bob, "alice", "p", request=RequestId(alice_client, HUGE, HUGE)),
        node.send_cmd(alice, "bob", "two", request=RequestId(alice_client, 3, 3)),
        node.send_cmd(bob, "alice", "b2", request=RequestId(bob_client, 3, 3)),
        node.register_client_cmd(bob),
        node.register_client_cmd("never-issued"),
        node.register_cmd("carol", request=RequestId(alice_client, 4, 4)),
    ]


def test_a_snapshot_keeps_bindings_and_digests() -> None:
    """The snapshot's client rows carry the session each client is bound to and each reply's
    request digest: a restored replica refuses and answers exactly as the original."""
    node = bound_node()
    twin = copy_of(node.state)
    assert_alike(twin, node.state)
    alice_client = node.client_id("client", session_of("token-1"))
    assert client_row(twin, alice_client) == client_row(node.state, alice_client)
    session, _, _, _, count, replies = client_row(twin, alice_client)[1:]
    assert session == session_of("token-1")  # the binding keeps the token's hash only
    assert isinstance(replies, list) and count == len(replies) > 0
    for _, kind, digest, outcome in replies:  # the request digest and outcome of each
        assert kind == "send" and len(digest) == 32 and json.loads(outcome)[0] == "send"
    index = node.index
    outcomes: list[tuple[ApplyResult, ApplyResult]] = []
    for cmd in script(node):
        index += 1
        data_i = encode(cmd)
        outcomes.append((node.state.apply(index, data_i), twin.apply(index, data_i)))
    for mine, theirs in outcomes:
        assert mine == theirs
    kinds = [(r.duplicate, r.ok) for r, _ in outcomes]
    assert kinds[:6] == [
        (True, False),
        (False, False),
        (False, False),
        (False, False),
        (False, True),
        (False, True),
    ]
    assert outcomes[1][1].outcome is not None and str(outcomes[1][1].outcome).find(REUSED) >= 0
    assert_alike(twin, node.state)


def test_replicas_with_bound_clients_agree_and_the_digest_covers_the_binding() -> None:
    """Replicas fed the same entries, bound clients and their refusals included, end with the
    same digest, also one restored from a snapshot half-way; and two states that differ only
    in what a client is bound to have different digests."""
    node = bound_node()
    cut, late = node.index, copy_of(node.state)
    for cmd in script(node):
        node.apply(cmd)
    follower = ChatState(SMALL_LIMITS)
    for index, data in node.entries:
        assert data is not None
        assert follower.apply(index, data) == node.results[index - 1]
    for index, data in node.entries[cut:]:
        assert data is not None
        late.apply(index, data)
    assert_alike(follower, late, node.state)

    bound_one, unbound_one = Node(), Node()
    for twin in (bound_one, unbound_one):
        twin.user("alice")
    assert bound_one.state.digest() == unbound_one.state.digest()
    bound_one.register_client(session_of("token-1"))
    unbound_one.register_client()
    assert bound_one.state.digest() != unbound_one.state.digest()
    for twin in (bound_one, unbound_one):
        assert twin.state.scan_digest() == twin.state.digest()
