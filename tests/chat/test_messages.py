"""Send, queues, Ack and history (DESIGN.md, "Chat semantics")."""

from __future__ import annotations

import pytest

from node.chat.errors import ChatError, ErrorCode
from node.chat.replies import AckReply, ChatMessage, SendReply
from node.config import ChatLimits

from .conftest import SMALL_LIMITS, Node


def test_send_queues_the_message_and_replies_with_its_id_and_timestamp(node: Node) -> None:
    alice = node.user("Alice")
    node.user("bob")
    result = node.send(alice, "BOB", "hello")
    assert result.outcome == SendReply(1, node.now_ms)
    assert result.message == ChatMessage(1, "Alice", "bob", "hello", node.now_ms)
    assert node.state.queue("bob") == (result.message,)
    assert node.state.queue("alice") == ()


def test_message_ids_come_from_one_counter_in_apply_order(node: Node) -> None:
    a, b, c = node.user("a"), node.user("b"), node.user("c")
    ids = [node.sent(t, r).id for t, r in [(a, "b"), (b, "c"), (c, "a"), (a, "c"), (b, "a")]]
    assert ids == [1, 2, 3, 4, 5]


def test_log_time_never_goes_back_and_a_message_shows_its_proposers_clock(node: Node) -> None:
    """Issue 9: 'The state machine's log time is the max of applied log_time_ms' and 'the
    timestamp shown with a message is now the command's timestamp_ms (proposer's wall clock),
    not log time'."""
    a = node.user("a")
    first = node.sent(a, "a")
    node.now_ms -= 60_000  # a new leader with a slow clock, unclamped
    second = node.sent(a, "a")
    assert node.state.log_time_ms == first.timestamp_ms  # log time did not go back
    assert second.timestamp_ms == first.timestamp_ms - 60_000  # shown as that node stamped it
    assert node.state.queue("a") == (first, second)  # the order is the log's, not the clocks'


def test_text_limits_are_applied_again_and_a_refused_send_uses_no_id(node: Node) -> None:
    a = node.user("a")
    node.refused(node.send_cmd(a, "a", ""), ErrorCode.INVALID_ARGUMENT)
    err = node.refused(node.send_cmd(a, "a", "x" * 4097), ErrorCode.INVALID_ARGUMENT)
    assert "4097" in err.message
    assert node.sent(a, "a", "x" * 4096).id == 1
    assert node.state.queue("a")[0].text == "x" * 4096


def test_sending_to_nobody_is_not_found(node: Node) -> None:
    a = node.user("a")
    err = node.refused(node.send_cmd(a, "ghost"), ErrorCode.NOT_FOUND)
    assert err.message == "no account named 'ghost'"
    node.refused(node.send_cmd(a, "bad name!"), ErrorCode.INVALID_ARGUMENT)


def test_messages_to_oneself_are_allowed_and_kept_once(node: Node) -> None:
    a = node.user("a")
    m = node.sent(a, "A", "note to self")
    assert node.state.queue("a") == (m,)
    assert node.state.history("a", "a") == (m,)


def test_a_full_queue_refuses_sends_and_applies_nothing(node: Node) -> None:
    a = node.user("a")
    node.user("b")
    sent = [node.sent(a, "b", f"m{i}") for i in range(SMALL_LIMITS.queue_limit)]
    err = node.refused(node.send_cmd(a, "b", "one too many"), ErrorCode.RESOURCE_EXHAUSTED)
    assert "'b' has 5 undelivered messages" in err.message
    assert node.state.queue("b") == tuple(sent)
    assert node.state.history("b", "a", 100) == tuple(sent[-SMALL_LIMITS.history_per_pair :])
    b = node.login("b")
    node.ack(b, sent[0].id)
    assert node.sent(a, "b", "room again").id == sent[-1].id + 1


def test_ack_is_cumulative_and_touches_only_ones_own_queue(node: Node) -> None:
    a, b = node.user("a"), node.user("b")
    to_b = [node.sent(a, "b", str(i)) for i in range(4)]
    to_a = node.sent(b, "a", "for a")
    assert node.ack(b, to_b[2].id).outcome == AckReply(3)
    assert node.state.queue("b") == (to_b[3],)
    assert node.state.queue("a") == (to_a,)
    assert node.ack(b, to_b[1].id).outcome == AckReply(0)  # acking again is harmless
    too_big = node.refused(node.ack_cmd(b, 2**63), ErrorCode.INVALID_ARGUMENT)
    assert "9223372036854775807" in too_big.message  # ids are SQLite's signed 64-bit
    assert node.state.queue("b") == (to_b[3],)
    assert node.ack(b, 2**63 - 1).outcome == AckReply(1)
    assert node.state.queue("b") == ()
    later = node.sent(a, "b", "after a big ack")
    assert node.state.queue("b") == (later,)  # acks never reach ahead to future messages


def test_acked_messages_stay_in_history(node: Node) -> None:
    a, b = node.user("a"), node.user("b")
    m = node.sent(a, "b")
    node.ack(b, m.id)
    assert node.state.history("b", "a") == (m,) == node.state.history("a", "b")


def test_queue_after_id_returns_the_later_ones_in_order(node: Node) -> None:
    a = node.user("a")
    node.user("b")
    sent = [node.sent(a, "b", str(i)) for i in range(5)]
    assert node.state.queue("b") == tuple(sent)
    assert node.state.queue("b", sent[1].id) == tuple(sent[2:])
    assert node.state.queue("b", sent[-1].id) == ()
    assert node.state.queue("B", 0) == tuple(sent)


def test_history_is_oldest_first_limited_and_keeps_the_most_recent_per_pair() -> None:
    node = Node(ChatLimits(history_per_pair=3, page_size=2))
    a, b = node.user("a"), node.user("b")
    node.user("c")
    sent = [node.sent(a if i % 2 else b, "b" if i % 2 else "a", str(i)) for i in range(5)]
    node.sent(a, "c")
    assert node.state.history("a", "b", 3) == tuple(sent[-3:])  # only 3 are kept
    assert node.state.history("B", "A", 100) == tuple(sent[-3:])
    assert node.state.history("a", "b", 1) == (sent[-1],)
    assert node.state.history("a", "b") == tuple(sent[-2:])  # default: page_size
    assert node.state.history("a", "nobody") == ()


def test_reads_of_missing_accounts_are_not_found(node: Node) -> None:
    with pytest.raises(ChatError) as info:
        node.state.queue("ghost")
    assert info.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ChatError) as info:
        node.state.history("ghost", "x")
    assert info.value.code is ErrorCode.NOT_FOUND


def test_apply_result_carries_the_message_for_live_delivery_only_when_new(node: Node) -> None:
    a = node.user("a")
    cmd = node.send_cmd(a, "a")
    first = node.apply(cmd)
    assert first.message is not None and not first.duplicate
    again = node.apply(cmd)
    assert again.duplicate and again.message is None
    refused = node.apply(node.send_cmd(a, "nobody"))
    assert refused.message is None and not refused.ok
