"""What a leader knows about each follower's log (etcd's tracker.Progress).

Pure data: imports only node.raft.types.
"""

from __future__ import annotations

import enum
from collections import deque

from node.raft.types import LogIndex


class ProgressState(enum.Enum):
    PROBE = "probe"  # one append in flight until the follower's log position is known
    REPLICATE = "replicate"  # streaming: next is optimistic, up to max_inflight messages
    SNAPSHOT = "snapshot"  # waiting for an InstallSnapshot to be applied


class Progress:
    __slots__ = (
        "inflight",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_id",
        "probe_sent",
        "read_ack",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match: LogIndex = LogIndex(0)  # highest index known replicated on the follower
        self.next: LogIndex = LogIndex(next_index)  # next index to send; match < next
        self.state = ProgressState.PROBE
        self.probe_sent = False  # PROBE: an append is in flight, wait for its answer
        self.probe_id = 0  # PROBE: the id of the last probe sent (its answer echoes it)
        self.pending_snapshot: LogIndex = LogIndex(0)  # SNAPSHOT: the index being installed
        self.inflight: deque[int] = deque()  # REPLICATE: last index of each unacked append
        self.max_inflight = max_inflight
        self.recent_active = False  # heard from within the current CheckQuorum period
        self.read_ack = 0  # the highest ReadIndex round this follower acknowledged

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = LogIndex(max(self.match + 1, self.pending_snapshot + 1))
        else:
            self.next = LogIndex(self.match + 1)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = LogIndex(0)
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = LogIndex(self.match + 1)
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = LogIndex(index)
        self.probe_sent = False
        self.inflight.clear()

    def maybe_update(self, index: int) -> bool:
        """An append was acknowledged up to `index`; False if that is old news."""
        updated = index > self.match
        if updated:
            self.match = LogIndex(index)
            self.probe_sent = False
        self.next = LogIndex(max(self.next, index + 1))
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """An append at `rejected` was refused; back off to the hint. False if stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = LogIndex(self.match + 1)
            return True
        if self.next - 1 != rejected:
            return False
        self.next = LogIndex(max(min(rejected, match_hint + 1), self.match + 1))
        self.probe_sent = False
        return True

    def reset_below_match(self, hint: int) -> None:
        """The follower lost entries it had acknowledged: forget that match, probe at hint."""
        self.match = LogIndex(hint)
        self.next = LogIndex(hint + 1)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = LogIndex(0)
        self.inflight.clear()

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def sent(self, last_index: int) -> None:
        """Record an append that carried entries up to `last_index` (or none)."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next:
                self.next = LogIndex(last_index + 1)
                self.inflight.append(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True
