"""Failed logins, remembered by the leader to slow down password guessing (issue 11).

Keyed by (username, the client's host): after FREE_FAILURES wrong passwords within WINDOW_S,
each further try from that host for that user is refused at once, without hashing, until a
wait that doubles with every failure (at most MAX_WAIT_S) has passed. It never locks an
account out (another host, or the right password after the wait, still logs in), it is held
in memory on the leader only and bounded in size, and it starts afresh on failover: a
guesser gains at most FREE_FAILURES tries per leader change.

Imports the standard library only.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

FREE_FAILURES = 5
WINDOW_S = 300.0
MAX_WAIT_S = 60.0
MAX_ENTRIES = 10_000


@dataclass
class _Failures:
    count: int
    last: float


class LoginLimiter:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        self._failures: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def retry_after(self, user: str, host: str, now: float) -> float:
        """Seconds until (user, host) may try again; 0 if it may now."""
        entry = self._failures.get((user, host))
        if entry is None:
            return 0.0
        if now - entry.last > WINDOW_S:
            del self._failures[(user, host)]
            return 0.0
        if entry.count < FREE_FAILURES:
            return 0.0
        wait = min(2.0 ** (entry.count - FREE_FAILURES), MAX_WAIT_S)
        return max(entry.last + wait - now, 0.0)

    def failed(self, user: str, host: str, now: float) -> None:
        key = (user, host)
        entry = self._failures.pop(key, None)
        if entry is None or now - entry.last > WINDOW_S:
            entry = _Failures(0, now)
        entry.count += 1
        entry.last = now
        self._failures[key] = entry
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)

    def succeeded(self, user: str, host: str) -> None:
        self._failures.pop((user, host), None)

    def __len__(self) -> int:
        return len(self._failures)


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer


def ceil_s(seconds: float) -> int:
    return max(math.ceil(seconds), 1)
