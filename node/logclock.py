"""The one log clock: the time every expiry is measured in, stamped by the leader.

    log time = max(previous, min(wall clock, previous + monotonic time elapsed since then))

where "previous" is the newest log time this node stamped or applied, and "then" is when it
did. So log time never goes back; it never runs faster than the leader's monotonic clock, so
a wall clock that jumps an hour ahead expires nothing early; and it never passes the leader's
wall clock, so a leader whose clock is behind holds it still rather than racing ahead. The
first stamp of a fresh cluster takes the wall clock as it is.

Every command carries its stamp (node.chat.commands), and the state machine takes the largest
applied: replicas agree on it whatever their own clocks say. The timestamp shown with a
message is the accepting node's wall clock, and takes no part in expiry.

Imports node.seams only.
"""

from __future__ import annotations

from node.seams import Clock


class LogClock:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last_ms = 0  # the newest log time stamped or applied here
        self._at = 0.0  # clock.monotonic() when _last_ms was set
        self._stamped_at: float | None = None

    @property
    def last_ms(self) -> int:
        return self._last_ms

    def observe(self, applied_ms: int) -> None:
        """An entry with log time `applied_ms` was applied here."""
        if applied_ms > self._last_ms:
            self._last_ms = applied_ms
            self._at = self._clock.monotonic()

    def stamp(self) -> int:
        """The log time of a command this leader is about to propose."""
        now = self._clock.monotonic()
        wall = self._clock.wall_ms()
        if self._last_ms == 0:
            stamped = max(wall, 0)
        else:
            # Round the two instants, not their difference: rounding each difference down
            # would lose up to 1 ms a stamp, and log time would fall behind under load.
            elapsed_ms = int(now * 1000) - int(self._at * 1000)
            stamped = max(self._last_ms, min(wall, self._last_ms + elapsed_ms))
        if stamped != self._last_ms:
            self._last_ms = stamped
            self._at = now
        self._stamped_at = now
        return stamped

    def idle_s(self) -> float:
        """Seconds since this node last stamped a command (infinite if it never did)."""
        if self._stamped_at is None:
            return float("inf")
        return self._clock.monotonic() - self._stamped_at
