"""`EventFeed`: what happened to a cluster, as timestamped events, for anyone watching (the web
view pushes them to the page the moment they are published).

`Cluster` publishes what it does and sees: every fault and its undoing (kill, stop, start,
pause, resume, partition, isolate, heal, slow), node exits with their exit code, members
joining and leaving. Observers of the nodes' Status (supervisor/web/observer.py) publish what
they infer: elections, step-downs, snapshots.

Thread-safe: events are published from the REPL's loop, worker threads and the process
monitor's thread; each subscriber is called in the publishing thread and must only hand the
event on (a web loop's call_soon_threadsafe), never block. Standard library only.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

logger = logging.getLogger(__name__)

KEEP: Final = 200  # the most recent events a newcomer is shown


class EventKind(enum.Enum):
    FAULT = "fault"  # a fault made: kill, stop, pause, partition, isolate, slow
    REPAIR = "repair"  # a fault undone: start, resume, heal, slow 0
    EXIT = "exit"  # a node's process ended on its own
    MEMBER = "member"  # a member joined, was promoted or removed
    ELECTION = "election"  # a node became leader (a new term)
    STEP_DOWN = "step-down"  # a leader stopped leading
    SNAPSHOT = "snapshot"  # a node compacted its log to a snapshot
    COMMAND = "command"  # a command run from the web page (its text)


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # wall-clock seconds (time.time()): the browser compares it with its own clock
    kind: EventKind
    text: str
    node: str | None = None
    seq: int = 0  # 1, 2, ... in the order published: a watcher drops one it has seen

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at_ms": round(self.at * 1000, 1),
            "kind": self.kind.value,
            "text": self.text,
            "node": self.node,
        }


Subscriber = Callable[[Event], None]


class EventFeed:
    """The events of one cluster, the last KEEP kept; subscribers hear each one as published."""

    def __init__(self, keep: int = KEEP) -> None:
        self._lock = threading.Lock()
        self._recent: collections.deque[Event] = collections.deque(maxlen=keep)
        self._subscribers: list[Subscriber] = []
        self._seq = 0

    def publish(self, kind: EventKind, text: str, node: str | None = None) -> Event:
        with self._lock:
            self._seq += 1
            event = Event(time.time(), kind, text, node, self._seq)
            self._recent.append(event)
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber(event)
            except Exception:  # one broken watcher must not break the cluster's operation
                logger.exception("event subscriber failed")
        return event

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Hear every event from now on; returns the call that stops it."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def recent(self) -> list[Event]:
        with self._lock:
            return list(self._recent)
