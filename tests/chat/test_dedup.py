"""Client sessions, Raft thesis §6.3: a retried command is applied once, and the table that
makes it so stays bounded."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node.chat.commands import RequestId, encode
from node.chat.errors import ChatError, CommandDecodeError, ErrorCode
from node.chat.replies import RegisterReply
from node.chat.state import MAX_REPLIES_PER_CLIENT

from .conftest import SMALL_LIMITS, Node


def test_the_same_request_applied_twice_is_one_message_with_the_first_reply(node: Node) -> None:
    """§6.3: 'if it receives a command whose serial number has already been executed, it
    responds immediately without re-executing the request'."""
    a = node.user("a")
    cmd = node.send_cmd(a, "a", "once")
    first = node.apply(cmd)
    node.advance(3)
    retry = node.apply(replace(cmd, timestamp_ms=node.now_ms, log_time_ms=node.log_time_ms()))
    # (re-stamped by another node)
    assert retry.outcome == first.outcome and retry.duplicate
    assert node.state.queue("a") == (first.message,)
    assert node.sent(a, "a").id == 2


def test_a_retried_register_gets_its_success_not_already_exists(node: Node) -> None:
    cmd = node.register_cmd("alice")
    assert node.apply(cmd).outcome == RegisterReply("alice")
    assert node.apply(cmd).outcome == RegisterReply("alice")
    assert node.state.account_count == 1


def test_a_retried_refusal_gets_the_same_refusal_even_if_it_would_now_succeed(node: Node) -> None:
    a = node.user("a")
    cmd = node.send_cmd(a, "bob")
    first = node.apply(cmd)
    assert isinstance(first.outcome, ChatError) and first.outcome.code is ErrorCode.NOT_FOUND
    node.apply(node.register_cmd("bob", request=node.request("another-client")))
    retry = node.apply(cmd)
    assert retry.outcome == first.outcome and retry.outcome is not first.outcome
    assert node.state.queue("bob") == ()


def test_a_request_id_reused_for_another_command_is_refused(node: Node) -> None:
    a = node.user("a")
    send = node.send_cmd(a, "a")
    node.apply(send)
    reused = replace(node.ack_cmd(a, 10), request=send.request)
    err = node.refused(reused, ErrorCode.INVALID_ARGUMENT)
    assert "request id reused for a different request" in err.message
    assert len(node.state.queue("a")) == 1


def test_a_request_below_first_outstanding_is_stale_and_not_applied(node: Node) -> None:
    a = node.user("a")
    old = node.send_cmd(a, "a", request=node.rid("c", 1, 1, a))
    assert node.apply(old).ok
    node.apply(node.send_cmd(a, "a", request=node.rid("c", 3, 3, a)))  # c has answers below 3
    err = node.refused(old, ErrorCode.INVALID_ARGUMENT)
    assert "stale" in err.message
    never_applied = node.send_cmd(a, "a", request=node.rid("c", 2, 2, a))
    node.refused(never_applied, ErrorCode.INVALID_ARGUMENT)
    assert [m.id for m in node.state.queue("a")] == [1, 2]


def test_outstanding_requests_get_their_own_replies_in_any_order(node: Node) -> None:
    """A client with several writes in flight: each retry gets its own first reply."""
    a = node.user("a")
    five = node.send_cmd(a, "a", "five", request=node.rid("c", 5, 5, a))
    six = node.send_cmd(a, "a", "six", request=node.rid("c", 6, 5, a))
    r6 = node.apply(six)  # applied out of order: fine, they were concurrent
    r5 = node.apply(five)
    assert node.apply(five).outcome == r5.outcome
    assert node.apply(six).outcome == r6.outcome
    assert [m.text for m in node.state.queue("a")] == ["six", "five"]
    assert node.state.remembered_replies(node.client_id("c", a)) == 2


def test_first_outstanding_trims_the_replies_kept(node: Node) -> None:
    a = node.user("a")
    for seq in range(1, 11):
        node.apply(node.send_cmd(a, "a", request=node.rid("c", seq, 1, a)))
    assert node.state.remembered_replies(node.client_id("c", a)) == 10
    node.apply(node.send_cmd(a, "a", request=node.rid("c", 11, 8, a)))
    assert node.state.remembered_replies(node.client_id("c", a)) == 4  # 8, 9, 10, 11
    node.refused(node.send_cmd(a, "a", request=node.rid("c", 7, 7, a)), ErrorCode.INVALID_ARGUMENT)
    node.apply(node.send_cmd(a, "a", request=node.rid("c", 12, 12, a)))
    assert node.state.remembered_replies(node.client_id("c", a)) == 1


def test_a_client_that_never_says_it_has_answers_is_still_bounded(node: Node) -> None:
    a = node.user("a")
    total = MAX_REPLIES_PER_CLIENT + 20
    for seq in range(1, total + 1):
        node.apply(node.send_cmd(a, "a", "m", request=node.rid("greedy", seq, 0, a)))
        node.ack(a, seq)
    assert node.state.remembered_replies(node.client_id("greedy", a)) == MAX_REPLIES_PER_CLIENT
    # The forgotten ones are refused as stale, never applied twice.
    node.refused(
        node.send_cmd(a, "a", request=node.rid("greedy", 1, 0, a)), ErrorCode.INVALID_ARGUMENT
    )
    assert node.state.queue("a") == ()


def test_idle_clients_are_forgotten_so_the_table_stays_bounded(node: Node) -> None:
    a = node.user("a")
    peak = 0
    for round_ in range(30):
        for k in range(10):  # ten new clients per round, each writing once
            node.apply(node.send_cmd(a, "a", request=node.rid(f"c{round_}-{k}", 1, 1, a)))
            node.ack(a, 10**9)
        peak = max(peak, node.state.client_count)
        node.advance(SMALL_LIMITS.client_idle_s / 4)
    # 300 clients came and went; at most those of the last client_idle_s are remembered
    # (with the client of a's Register and Login, and the one of its session's acks).
    assert peak <= 10 * 5 + 2
    node.advance(SMALL_LIMITS.client_idle_s + 1)
    node.register("b")  # any entry moves log time on
    assert node.state.client_count == 1  # the client of that register


def test_an_active_client_is_not_forgotten(node: Node) -> None:
    a = node.user("a")
    first = node.send_cmd(a, "a", request=node.rid("steady", 1, 1, a))
    node.apply(first)
    for seq in range(2, 8):
        node.advance(SMALL_LIMITS.client_idle_s * 0.8)
        node.apply(node.send_cmd(a, "a", request=node.rid("steady", seq, 1, a)))
    assert node.apply(first).duplicate


def test_commands_without_a_request_id_are_not_remembered(node: Node) -> None:
    a = node.user("a")
    cmd = replace(node.send_cmd(a, "a"), request=None)
    clients = node.state.client_count  # with the one send_cmd registered for a's session
    node.apply(cmd)
    node.apply(cmd)
    assert node.state.client_count == clients
    assert len(node.state.queue("a")) == 2


def test_a_malformed_request_id_is_refused_and_not_remembered(node: Node) -> None:
    a = node.user("a")
    # Client ids are log indexes: 0 is never handed out, and no log entry can carry it.
    before = node.state.digest()
    no_client = encode(node.send_cmd(a, "a", request=RequestId(0, 1, 1)))
    with pytest.raises(CommandDecodeError):
        node.state.apply(node.index + 1, no_client)
    assert node.state.digest() == before
    node.refused(node.send_cmd(a, "a", request=node.rid("z", 1, 2, a)), ErrorCode.INVALID_ARGUMENT)
    assert node.state.remembered_replies(node.client_id("z", a)) == 0
    assert node.state.queue("a") == ()
