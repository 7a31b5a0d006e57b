"""The history checker: did the cluster keep its promises to every client?

A run records every send (its start, end and outcome: ok, failed or unknown), every message
delivered to each recipient, and every read a client made. `check` then proves, or refutes:

1. every acknowledged send is delivered exactly once;
2. nothing is delivered that was never sent;
3. each sender's sequential sends reach each recipient in the order they were sent;
4. a send whose outcome is unknown is delivered at most once (a failed one never);
5. reads never go back in time for a client.

Pure data in, a Verdict out: no I/O, no grpc, nothing of the node.
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    OK = "ok"  # acknowledged: the cluster promised it is committed
    FAILED = "failed"  # a definite refusal: it must never be delivered
    UNKNOWN = "unknown"  # deadline, lost connection...: may or may not have happened


@dataclass(frozen=True, slots=True)
class SendRecord:
    sender: str
    recipient: str
    text: str  # unique per send in a run (e.g. "c3#17")
    start: float
    end: float
    outcome: Outcome
    message_id: int | None = None  # the id the cluster acknowledged with (OK only)


@dataclass(frozen=True, slots=True)
class Delivery:
    recipient: str
    message_id: int
    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """A read whose answer only grows in a correct system (e.g. the newest message id seen)."""

    client: str
    start: float
    end: float
    value: int


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


def check(
    sends: Iterable[SendRecord],
    deliveries: Iterable[Delivery],
    reads: Iterable[ReadRecord] = (),
    *,
    max_reported: int = 20,
) -> Verdict:
    sends = list(sends)
    deliveries = _dedup_by_id(deliveries)
    reads = list(reads)
    v = Verdict()

    def violation(text: str) -> None:
        if len(v.violations) < max_reported:
            v.violations.append(text)
        v.counts["violations"] = v.counts.get("violations", 0) + 1

    by_text = {s.text: s for s in sends}
    delivered = Counter(d.text for d in deliveries)
    v.counts.update(
        sends=len(sends),
        acknowledged=sum(s.outcome is Outcome.OK for s in sends),
        failed=sum(s.outcome is Outcome.FAILED for s in sends),
        unknown=sum(s.outcome is Outcome.UNKNOWN for s in sends),
        delivered=len(deliveries),
        unknown_delivered=sum(
            1 for s in sends if s.outcome is Outcome.UNKNOWN and delivered[s.text] > 0
        ),
        reads=len(reads),
        violations=0,
    )

    for s in sends:
        n = delivered[s.text]
        if s.outcome is Outcome.OK and n != 1:
            what = "lost" if n == 0 else f"delivered {n} times"
            violation(f"acknowledged send {s.text!r} ({s.sender} -> {s.recipient}) was {what}")
        elif s.outcome is Outcome.UNKNOWN and n > 1:
            violation(f"send {s.text!r} of unknown outcome was delivered {n} times")
        elif s.outcome is Outcome.FAILED and n > 0:
            violation(f"send {s.text!r} was reported failed but delivered")

    for d in deliveries:
        sent = by_text.get(d.text)
        if sent is None:
            violation(f"message {d.message_id} {d.text!r} to {d.recipient} was never sent")
        elif (sent.sender, sent.recipient) != (d.sender, d.recipient):
            violation(
                f"message {d.message_id} {d.text!r} went {d.sender} -> {d.recipient}, "
                f"sent {sent.sender} -> {sent.recipient}"
            )
        elif sent.outcome is Outcome.OK and sent.message_id not in (None, d.message_id):
            violation(
                f"{d.text!r} was acknowledged as message {sent.message_id}, delivered as "
                f"{d.message_id}"
            )

    # Per-sender order: if send A ended before send B started (same sender and recipient),
    # and both were delivered, A's message id must be smaller.
    id_of = {d.text: d.message_id for d in deliveries}
    pairs: dict[tuple[str, str], list[SendRecord]] = defaultdict(list)
    for s in sends:
        if s.text in id_of:
            pairs[(s.sender, s.recipient)].append(s)
    for (sender, recipient), group in pairs.items():
        group.sort(key=lambda s: s.start)
        latest_end_id: tuple[float, int, str] | None = None  # among sends finished so far
        finished = sorted(group, key=lambda s: s.end)
        k = 0
        for s in group:
            while k < len(finished) and finished[k].end < s.start:
                f = finished[k]
                if latest_end_id is None or id_of[f.text] > latest_end_id[1]:
                    latest_end_id = (f.end, id_of[f.text], f.text)
                k += 1
            if latest_end_id is not None and id_of[s.text] < latest_end_id[1]:
                violation(
                    f"order: {sender} -> {recipient}: {s.text!r} (id {id_of[s.text]}) was sent "
                    f"after {latest_end_id[2]!r} (id {latest_end_id[1]}) completed, "
                    "but arrived before it"
                )

    by_client: dict[str, list[ReadRecord]] = defaultdict(list)
    for r in reads:
        by_client[r.client].append(r)
    for client, rs in by_client.items():
        # Each read must see at least the largest value of every read that ended before it
        # started (reads that overlap may be ordered either way).
        rs.sort(key=lambda r: r.start)
        finished_reads = sorted(rs, key=lambda r: r.end)
        k, floor = 0, None
        for r in rs:
            while k < len(finished_reads) and finished_reads[k].end < r.start:
                if floor is None or finished_reads[k].value > floor:
                    floor = finished_reads[k].value
                k += 1
            if floor is not None and r.value < floor:
                violation(f"stale read: {client} read {r.value} after it had read {floor}")
    return v


def _dedup_by_id(deliveries: Iterable[Delivery]) -> list[Delivery]:
    """A recipient may be handed a message twice (redelivery after a failover); the client
    drops duplicates by message id, as the checker does."""
    seen: dict[tuple[str, int], Delivery] = {}
    for d in deliveries:
        seen.setdefault((d.recipient, d.message_id), d)
    return sorted(seen.values(), key=lambda d: (d.recipient, d.message_id))


def render(verdict: Verdict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in verdict.counts.items())
    head = "PASS" if verdict.ok else "FAIL"
    lines = [f"{head}: {counts}"]
    lines += [f"  - {v}" for v in verdict.violations]
    return "\n".join(lines)
