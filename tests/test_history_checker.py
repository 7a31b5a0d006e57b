"""The history checker is itself checked: handmade bad histories it must reject, and good
ones (with redelivery and unknown outcomes) it must accept."""

from __future__ import annotations

from supervisor.history import Delivery, Outcome, ReadRecord, SendRecord, check, render


def send(
    text: str,
    start: float,
    end: float,
    outcome: Outcome = Outcome.OK,
    mid: int | None = None,
    sender: str = "ann",
    to: str = "bob",
) -> SendRecord:
    return SendRecord(sender, to, text, start, end, outcome, mid)


def got(text: str, mid: int, sender: str = "ann", to: str = "bob") -> Delivery:
    return Delivery(to, mid, sender, text)


GOOD_SENDS = [send("a#1", 0, 1, mid=1), send("a#2", 2, 3, mid=2), send("a#3", 4, 5, mid=5)]
GOOD_INBOX = [got("a#1", 1), got("a#2", 2), got("a#3", 5)]


def test_a_good_history_passes() -> None:
    verdict = check(GOOD_SENDS, GOOD_INBOX)
    assert verdict.ok, render(verdict)
    assert verdict.counts["acknowledged"] == 3 and verdict.counts["delivered"] == 3


def test_redelivery_of_the_same_message_id_is_not_a_duplicate() -> None:
    assert check(GOOD_SENDS, [*GOOD_INBOX, got("a#2", 2)]).ok


def test_a_lost_acknowledged_send_is_rejected() -> None:
    verdict = check(GOOD_SENDS, GOOD_INBOX[:2])
    assert not verdict.ok
    assert "'a#3'" in verdict.violations[0] and "lost" in verdict.violations[0]


def test_a_duplicate_is_rejected() -> None:
    verdict = check(GOOD_SENDS, [*GOOD_INBOX, got("a#3", 6)])
    assert not verdict.ok
    assert any("delivered 2 times" in v for v in verdict.violations)


def test_a_reorder_is_rejected() -> None:
    inbox = [got("a#1", 1), got("a#2", 7), got("a#3", 5)]
    sends = [send("a#1", 0, 1), send("a#2", 2, 3), send("a#3", 4, 5)]
    verdict = check(sends, inbox)
    assert not verdict.ok
    assert any(v.startswith("order:") and "'a#3'" in v for v in verdict.violations)


def test_concurrent_sends_may_arrive_in_either_order() -> None:
    sends = [send("a#1", 0, 3), send("a#2", 1, 2)]
    assert check(sends, [got("a#2", 1), got("a#1", 2)]).ok


def test_a_message_never_sent_is_rejected() -> None:
    verdict = check(GOOD_SENDS, [*GOOD_INBOX, got("forged", 9)])
    assert any("never sent" in v for v in verdict.violations)


def test_unknown_outcomes_may_be_delivered_once_but_not_twice() -> None:
    sends = [*GOOD_SENDS, send("a#4", 6, 7, Outcome.UNKNOWN)]
    assert check(sends, GOOD_INBOX).ok
    assert check(sends, [*GOOD_INBOX, got("a#4", 8)]).ok
    assert not check(sends, [*GOOD_INBOX, got("a#4", 8), got("a#4", 9)]).ok


def test_a_failed_send_must_never_be_delivered() -> None:
    sends = [*GOOD_SENDS, send("a#4", 6, 7, Outcome.FAILED)]
    assert not check(sends, [*GOOD_INBOX, got("a#4", 8)]).ok


def test_an_ack_with_a_different_message_id_is_rejected() -> None:
    verdict = check(GOOD_SENDS, [got("a#1", 1), got("a#2", 2), got("a#3", 4)])
    assert any("acknowledged as message 5" in v for v in verdict.violations)


def test_reads_never_go_back_in_time_for_a_client() -> None:
    reads = [ReadRecord("c1", 0, 1, 5), ReadRecord("c1", 0.5, 3, 9), ReadRecord("c1", 2, 4, 4)]
    verdict = check([], [], reads)
    assert any("stale read" in v for v in verdict.violations)
    overlapping = [ReadRecord("c1", 0, 3, 9), ReadRecord("c1", 1, 4, 6)]
    assert check([], [], overlapping).ok
