"""A stand-in for `supervisor.cluster.Cluster` with just what the web view uses (events,
config name, node ids, status, groups, network), its answers set by the test."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from supervisor.cluster import NodeStatus
from supervisor.events import EventFeed
from supervisor.processes import ProcessState
from supervisor.web.server import CommandResult


def node_status(node: str, role: str | None = "follower", **extra: Any) -> NodeStatus:
    answered = role is not None
    fields: dict[str, Any] = {
        "id": node,
        "address": f"127.0.0.1:{8000 + ord(node) - ord('a')}",
        "pid": 1000 + ord(node),
        "process": ProcessState.UP,
        "role": role,
        "term": 3 if answered else None,
        "leader": "a" if answered else None,
        "commit_index": 7 if answered else None,
        "applied_index": 7 if answered else None,
        "last_index": 7 if answered else None,
        "snapshot_index": 0 if answered else None,
        "digest": None,
        "last_contact_s": 0.05 if answered else None,
        "error": None if answered else "deadline exceeded",
        "group": None,
        "slow_ms": 0.0,
        "last_exit": None,
        "voters": ("a", "b", "c") if answered else None,
        "learners": () if answered else None,
        "leader_contact_ms": (0 if role == "leader" else 12) if answered else None,
        "leader_changes": 1 if answered else None,
    }
    fields.update(extra)
    return NodeStatus(**fields)


@dataclass
class FakeConfig:
    cluster: str = "fake"


@dataclass
class FakeCluster:
    statuses: list[NodeStatus] = field(
        default_factory=lambda: [
            node_status("a", "leader"),
            node_status("b"),
            node_status("c"),
        ]
    )
    events: EventFeed = field(default_factory=EventFeed)
    config: FakeConfig = field(default_factory=FakeConfig)
    groups: Any = None
    network: Any = None
    status_calls: int = 0

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.statuses)

    @property
    def size(self) -> int:
        return len(self.statuses)

    def status(self, *, timeout_s: float | None = None, digest: bool = False) -> list[NodeStatus]:
        self.status_calls += 1
        return list(self.statuses)

    def set(self, node: str, **changes: Any) -> None:
        self.statuses = [
            dataclasses.replace(s, **changes) if s.id == node else s for s in self.statuses
        ]


class RecordingRunner:
    """A command runner that records the lines the page sent and answers each as done."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> concurrent.futures.Future[CommandResult]:
        self.lines.append(line)
        future: concurrent.futures.Future[CommandResult] = concurrent.futures.Future()
        future.set_result(CommandResult(line, True, f"did {line}"))
        return future
