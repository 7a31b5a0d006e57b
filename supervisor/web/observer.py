"""What the page shows of the nodes, computed from successive rounds of `Cluster.status()`:
each node's fields (the last answer kept, with its age, while a node does not answer), its lag
behind the leader, every directed link, the committed entries of each of the last 60 seconds,
and the events a change between two rounds means (a node became leader, a leader stepped down,
a node campaigned, a node compacted its log), published to the cluster's EventFeed.

Pure bookkeeping: no I/O, no threads; `observe` is given the statuses, the links and the time.
Never reads node logs: everything comes from Chat.Status and the supervisor's own state.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from supervisor.cluster import LEADER_ROLE, NodeStatus, committed_members, majority_leader
from supervisor.events import EventFeed, EventKind
from supervisor.links import LinkState, format_groups
from supervisor.processes import ProcessState

RATE_WINDOW_S: Final = 60
CANDIDATE_ROLE: Final = "candidate"


@dataclass(frozen=True, slots=True)
class _Seen:
    role: str
    term: int
    snapshot_index: int


class Observer:
    """Turns rounds of statuses into the page's `nodes` message and into events."""

    def __init__(self, events: EventFeed) -> None:
        self.events = events
        self._seen: dict[str, _Seen] = {}  # each node's last answer, for the events
        self._answers: dict[str, NodeStatus] = {}  # each node's last answer, shown while stale
        self._commits: collections.deque[tuple[float, int]] = collections.deque()
        self._highest_commit = 0
        self._first_seen: set[str] = set()  # nodes answered once: their state is known

    def observe(
        self,
        statuses: Sequence[NodeStatus],
        links: Sequence[LinkState],
        groups: Sequence[Sequence[str]] | None,
        now: float,
    ) -> dict[str, Any]:
        """One round: the events it implies are published; returns the page's message."""
        for status in statuses:
            self._note(status)
        size = len(statuses)
        leader = majority_leader(statuses, size)
        self._count_commits(statuses, now)
        members = committed_members(statuses, size)
        by_id = {s.id: s for s in statuses}
        leader_last = by_id[leader].last_index if leader is not None else None
        return {
            "type": "nodes",
            "at_ms": round(now * 1000, 1),
            "leader": leader,
            "nodes": [self._node(s, leader_last, members) for s in statuses],
            "links": [
                {
                    "source": link.source,
                    "target": link.target,
                    "blocked": link.blocked,
                    "delay_ms": round(link.delay_ms, 1),
                }
                for link in links
                if link.source in by_id and link.target in by_id
            ],
            "partition": format_groups(tuple(tuple(g) for g in groups)) if groups else None,
            "rate": self.rate(now),
        }

    def rate(self, now: float) -> list[int]:
        """Entries committed in each of the last RATE_WINDOW_S whole seconds, oldest first."""
        end = math.floor(now)
        times = [t for t, _ in self._commits]
        values = [c for _, c in self._commits]

        def committed_by(t: float) -> int | None:
            i = bisect.bisect_right(times, t)
            return values[i - 1] if i else None

        result = []
        for second in range(end - RATE_WINDOW_S, end):
            before, after = committed_by(second), committed_by(second + 1)
            result.append(after - before if before is not None and after is not None else 0)
        return result

    # -- internals ----------------------------------------------------------------------------

    def _note(self, status: NodeStatus) -> None:
        if status.process is ProcessState.DOWN:
            self._seen.pop(status.id, None)  # its next life starts afresh: no step-down news
            return
        if not status.answered or status.term is None or status.role is None:
            return
        self._answers[status.id] = status
        now = _Seen(status.role, status.term, status.snapshot_index or 0)
        before = self._seen.get(status.id)
        self._seen[status.id] = now
        node = status.id
        # What a node already was when first seen (the page connecting) is not news; after a
        # restart (before None again) its becoming leader is.
        first_sight = node not in self._first_seen
        self._first_seen.add(node)
        became_leader = now.role == LEADER_ROLE and (
            before is None or before.role != LEADER_ROLE or before.term != now.term
        )
        if became_leader and not first_sight:
            self.events.publish(EventKind.ELECTION, f"{node} is leader at term {now.term}", node)
        if before is None:
            return
        if before.role == LEADER_ROLE and now.role != LEADER_ROLE:
            self.events.publish(
                EventKind.STEP_DOWN,
                f"{node} stepped down at term {now.term}: now {now.role}",
                node,
            )
        if now.role == CANDIDATE_ROLE and (before.role != CANDIDATE_ROLE or before.term < now.term):
            self.events.publish(EventKind.ELECTION, f"{node} campaigns at term {now.term}", node)
        if now.snapshot_index > before.snapshot_index:
            self.events.publish(
                EventKind.SNAPSHOT,
                f"{node}'s log now starts from a snapshot at index {now.snapshot_index}",
                node,
            )

    def _count_commits(self, statuses: Sequence[NodeStatus], now: float) -> None:
        known = [s.commit_index for s in statuses if s.commit_index is not None]
        if known:
            self._highest_commit = max(self._highest_commit, *known)
        self._commits.append((now, self._highest_commit))
        while self._commits and self._commits[0][0] < now - RATE_WINDOW_S - 2:
            self._commits.popleft()

    def _node(
        self,
        status: NodeStatus,
        leader_last: int | None,
        members: tuple[tuple[str, ...], tuple[str, ...]] | None,
    ) -> dict[str, Any]:
        shown = status if status.answered else self._answers.get(status.id)
        stale = not status.answered and shown is not None
        lag = None
        if leader_last is not None and status.answered and status.last_index is not None:
            lag = max(0, leader_last - status.last_index)
        member = None
        if members is not None:
            voters, learners = members
            member = "voter" if status.id in voters else "learner" if status.id in learners else ""
        return {
            "id": status.id,
            "address": status.address,
            "pid": status.pid,
            "process": status.process.value,
            "up": status.process is ProcessState.UP,
            "answered": status.answered,
            "stale": stale,
            # Seconds since the supervisor last heard this node: how old the fields shown are.
            "age_s": round(status.last_contact_s, 1) if status.last_contact_s is not None else None,
            "role": shown.role if shown is not None else None,
            "term": shown.term if shown is not None else None,
            "leader": (shown.leader or None) if shown is not None else None,
            "commit": shown.commit_index if shown is not None else None,
            "applied": shown.applied_index if shown is not None else None,
            "last": shown.last_index if shown is not None else None,
            "snapshot": shown.snapshot_index if shown is not None else None,
            "lag": lag,
            "leader_contact_ms": shown.leader_contact_ms if shown is not None else None,
            "leader_changes": shown.leader_changes if shown is not None else None,
            "member": member,
            "error": status.error,
            "group": status.group,
            "slow_ms": status.slow_ms,
            "last_exit": status.last_exit,
        }
