"""Accounts: registration, login, deletion (DESIGN.md, "Chat semantics")."""

from __future__ import annotations

from node.chat.commands import Login, Register, session_of
from node.chat.errors import ChatError, ErrorCode
from node.chat.passwords import verify_password
from node.chat.replies import DeleteAccountReply, LoginReply, RegisterReply

from .conftest import Node, fast_hash


def test_register_creates_an_account_with_a_salted_hash(node: Node) -> None:
    result = node.register("Alice", "pw")
    assert result.outcome == RegisterReply("Alice")
    stored = node.state.account_hash("alice")
    assert stored is not None and verify_password("pw", stored)
    assert node.state.registered_name("ALICE") == "Alice"
    assert node.state.account_count == 1


def test_usernames_are_unique_ignoring_case_and_keep_their_spelling(node: Node) -> None:
    assert node.register("Alice").ok
    err = node.refused(node.register_cmd("aLICE"), ErrorCode.ALREADY_EXISTS)
    assert err.message.startswith("username 'aLICE' is already taken (as 'Alice')")
    node.refused(node.register_cmd("Alice"), ErrorCode.ALREADY_EXISTS)
    assert node.state.account_count == 1
    assert node.state.list_accounts()[0] == ("Alice",)


def test_register_applies_the_name_rules_again(node: Node) -> None:
    """A command from a buggy node cannot put a bad name in the state."""
    for bad in ("", "x" * 33, "bob!", "jürgen"):
        node.refused(
            Register(
                timestamp_ms=node.now_ms,
                request=node.request(),
                log_time_ms=node.log_time_ms(),
                username=bad,
                password_hash=fast_hash("pw"),
            ),
            ErrorCode.INVALID_ARGUMENT,
        )
    assert node.register("x" * 32).ok
    assert node.state.account_count == 1


def test_login_opens_the_session_it_names_and_returns_the_registered_spelling(
    node: Node,
) -> None:
    """The reply carries no token (issue 11): the client chose it, the log holds its hash."""
    node.register("Alice", "pw")
    cmd = node.login_cmd("alice", "pw")
    reply = node.ok(cmd)
    assert reply == LoginReply("Alice")
    assert node.state.authenticate(cmd.session) == "Alice"


def test_a_wrong_password_fails_verification_before_proposing(node: Node) -> None:
    node.register("alice", "pw")
    stored = node.state.account_hash("alice")
    assert stored is not None
    assert not verify_password("PW", stored)
    try:
        node.login_cmd("alice", "PW")
    except ChatError as err:
        assert err.code is ErrorCode.UNAUTHENTICATED
    else:
        raise AssertionError("login with a wrong password was proposed")


def test_login_to_an_account_that_vanished_before_apply_is_refused(node: Node) -> None:
    token = node.user("alice", "pw")
    # verified while the account existed, by another client
    login = node.login_cmd("alice", "pw", request=node.request("other"))
    node.delete(token)
    node.refused(login, ErrorCode.UNAUTHENTICATED)
    assert node.state.session_count == 0


def test_login_verified_against_a_replaced_account_is_refused(node: Node) -> None:
    """Deleted and registered again between the check and the apply: the old password
    must not open the new account."""
    token = node.user("alice", "old")
    login = node.login_cmd("alice", "old", request=node.request("other"))
    node.delete(token)
    assert node.register("alice", "new").ok
    node.refused(login, ErrorCode.UNAUTHENTICATED)
    assert node.state.session_count == 0


def test_login_with_unknown_account_is_refused(node: Node) -> None:
    node.refused(
        Login(
            timestamp_ms=node.now_ms,
            request=node.request(),
            log_time_ms=node.log_time_ms(),
            username="ghost",
            session=session_of("t"),
            verified_digest=b"x" * 32,
        ),
        ErrorCode.UNAUTHENTICATED,
    )


def test_a_token_already_in_use_is_refused(node: Node) -> None:
    token = node.user("alice")
    stored = node.state.account_hash("alice")
    assert stored is not None
    login = Login(
        timestamp_ms=node.now_ms,
        request=node.request(),
        log_time_ms=node.log_time_ms(),
        username="alice",
        session=token,
        verified_digest=stored.digest,
    )
    node.refused(login, ErrorCode.ALREADY_EXISTS)


def test_delete_account_frees_the_name_ends_sessions_and_discards_the_queue(node: Node) -> None:
    bob = node.user("bob")
    bob2 = node.login("bob")
    alice = node.user("alice")
    node.sent(alice, "bob", "for old bob")
    result = node.delete(bob)
    assert result.outcome == DeleteAccountReply("bob")
    assert set(result.ended_sessions) == {bob, bob2}
    for token in (bob, bob2):
        try:
            node.state.authenticate(token)
        except ChatError as err:
            assert err.code is ErrorCode.UNAUTHENTICATED
        else:
            raise AssertionError("session outlived its account")
    assert node.state.account_hash("bob") is None
    assert node.register("BOB").ok  # the name is free again
    new_bob = node.login("bob")
    assert node.state.queue("bob") == ()
    assert node.state.history("bob", "alice") == ()
    assert node.state.authenticate(new_bob) == "BOB"


def test_messages_a_deleted_account_sent_stay_with_their_recipients(node: Node) -> None:
    alice = node.user("alice")
    bob = node.user("bob")
    sent = node.sent(bob, "alice", "remember me")
    node.delete(bob)
    assert node.state.queue("alice") == (sent,)
    assert node.state.history("alice", "bob") == (sent,)
    assert node.state.authenticate(alice) == "alice"


def test_a_recipient_deleted_mid_conversation(node: Node) -> None:
    alice = node.user("alice")
    bob = node.user("bob")
    first = node.sent(alice, "bob", "one")
    reply = node.sent(bob, "alice", "two")
    node.delete(bob)
    err = node.refused(node.send_cmd(alice, "bob", "three"), ErrorCode.NOT_FOUND)
    assert err.message == "no account named 'bob'"
    assert node.state.history("alice", "bob") == (first, reply)
    assert node.state.queue("alice") == (reply,)


def test_deleting_needs_a_live_session(node: Node) -> None:
    token = node.user("alice")
    node.logout(token)
    assert node.delete(token).outcome == ChatError(
        ErrorCode.UNAUTHENTICATED,
        "session unknown or ended (logged out, expired or account deleted): log in again",
    )
    assert node.state.account_count == 1
