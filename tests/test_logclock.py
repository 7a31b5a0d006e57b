"""node.logclock.LogClock, the one log clock of issue 9:

    log time = max(previous, min(wall, previous + monotonic elapsed since previous was set))

and the first stamp of a fresh cluster takes the wall clock (TRAPS.md: "A wall-clock log time
jumps with one node's clock: stamp it on the leader as max(last, min(wall, last + monotonic
elapsed))")."""

from __future__ import annotations

from collections.abc import Awaitable

from hypothesis import given
from hypothesis import strategies as st

from node.logclock import LogClock

START_MS = 1_700_000_000_000
HOUR_MS = 3_600_000


class Clock:
    """A node.seams.Clock moved by hand: `advance` moves both clocks, `jump` the wall only."""

    def __init__(self, wall_ms: int = START_MS, mono_s: float = 100.0) -> None:
        self.wall = wall_ms
        self.mono_s = mono_s

    def monotonic(self) -> float:
        return self.mono_s

    def wall_ms(self) -> int:
        return self.wall

    def sleep(self, seconds: float) -> Awaitable[None]:
        raise NotImplementedError

    def advance(self, seconds: float) -> None:
        self.mono_s += seconds
        self.wall += round(seconds * 1000)

    def jump(self, ms: int) -> None:
        self.wall += ms


def test_the_first_stamp_of_a_fresh_cluster_takes_the_wall_clock() -> None:
    """Issue 9: 'the first stamp of a fresh cluster takes the wall clock'."""
    clock = Clock()
    log = LogClock(clock)
    assert log.last_ms == 0
    assert log.stamp() == START_MS
    assert log.last_ms == START_MS


def test_it_follows_a_wall_clock_that_runs_true() -> None:
    clock = Clock()
    log = LogClock(clock)
    log.stamp()
    clock.advance(2.5)
    assert log.stamp() == START_MS + 2_500
    clock.advance(0.125)
    assert log.stamp() == START_MS + 2_625


def test_a_wall_clock_jumping_ahead_moves_it_by_monotonic_time_only() -> None:
    """'min(wall, previous + monotonic elapsed)': a wall clock 2 h ahead expires nothing
    early."""
    clock = Clock()
    log = LogClock(clock)
    log.stamp()
    clock.jump(2 * HOUR_MS)
    clock.advance(1)
    assert log.stamp() == START_MS + 1_000
    clock.advance(3)
    assert log.stamp() == START_MS + 4_000  # still the monotonic pace, not the wall's


def test_it_never_passes_the_wall_clock() -> None:
    """'min(wall, ...)': monotonic time running ahead of the wall clock (a wall clock slewed
    back a little) does not carry log time past the wall."""
    clock = Clock()
    log = LogClock(clock)
    log.stamp()
    clock.mono_s += 10  # ten monotonic seconds, only two on the wall
    clock.wall += 2_000
    assert log.stamp() == START_MS + 2_000


def test_a_wall_clock_behind_holds_it_still_and_it_never_goes_back() -> None:
    """'max(previous, ...)': a wall clock that falls an hour behind holds log time still; it
    moves on again only once the wall clock passes it, and then no faster than monotonic time
    since it last moved."""
    clock = Clock()
    log = LogClock(clock)
    log.stamp()
    clock.advance(5)
    assert log.stamp() == START_MS + 5_000
    clock.jump(-HOUR_MS)
    for _ in range(10):
        clock.advance(1)
        assert log.stamp() == START_MS + 5_000  # held still
    clock.jump(HOUR_MS)  # the wall clock is put right: 10 s past the last stamp's time
    assert log.stamp() == START_MS + 15_000


def test_observe_takes_the_applied_log_time_and_never_goes_back() -> None:
    """A follower observes the log time of what it applies; when it leads, it stamps from the
    largest one, not from its own wall clock (here 2 h ahead), and an older one observed
    later does not move it back."""
    clock = Clock(wall_ms=START_MS + 2 * HOUR_MS)
    log = LogClock(clock)
    log.observe(START_MS)
    assert log.last_ms == START_MS
    log.observe(START_MS - 10_000)  # an older entry's time
    assert log.last_ms == START_MS
    clock.advance(1)
    assert log.stamp() == START_MS + 1_000  # not the wall clock, although none was stamped
    log.observe(START_MS + 60_000)  # a later stamp by another leader, applied here
    clock.advance(0.5)
    assert log.stamp() == START_MS + 60_500


def test_idle_s_counts_from_the_last_stamp() -> None:
    """What the leader's Tick loop waits on (issue 9: a Tick once log time stood still for a
    second)."""
    clock = Clock()
    log = LogClock(clock)
    assert log.idle_s() == float("inf")
    log.stamp()
    clock.advance(0.75)
    assert log.idle_s() == 0.75
    log.observe(START_MS + 1_000_000)  # applying is not stamping
    assert log.idle_s() == 0.75
    log.stamp()
    assert log.idle_s() == 0


steps = st.lists(
    st.tuples(
        st.integers(0, 5_000),  # monotonic ms elapsed
        st.integers(-HOUR_MS, HOUR_MS) | st.just(0),  # wall jump, ms, on top of that
    ),
    min_size=1,
    max_size=40,
)


@given(steps)
def test_stamps_never_go_back_and_are_bounded_by_wall_and_by_monotonic_time(
    moves: list[tuple[int, int]],
) -> None:
    clock = Clock()
    log = LogClock(clock)
    first = log.stamp()
    assert first == START_MS
    start_mono_s = clock.mono_s
    previous = first
    for elapsed_ms, jump_ms in moves:
        clock.advance(elapsed_ms / 1000)
        clock.jump(jump_ms)
        stamp = log.stamp()
        assert stamp >= previous  # never back
        assert stamp <= max(previous, clock.wall)  # never past the wall, unless held still
        # never faster than monotonic time, however far the wall clock ran (give or take a
        # millisecond of rounding)
        assert stamp - first <= (clock.mono_s - start_mono_s) * 1000 + 1
        previous = stamp


def test_frequent_stamps_keep_pace_with_a_wall_clock_that_runs_true() -> None:
    """With a true wall clock, 'min(wall, previous + monotonic elapsed since previous was
    set)' is the wall clock itself, however often the leader stamps: rounding each elapsed
    time down to a millisecond must not slow log time (expiry would come late by up to 2x
    under load, stamps a little under 1 ms apart)."""
    clock = Clock(mono_s=0.0)
    log = LogClock(clock)
    log.stamp()
    for step in range(1, 2_001):  # a stamp every 0.9 ms for 1.8 s
        elapsed_us = step * 900
        clock.mono_s = elapsed_us / 1_000_000
        clock.wall = START_MS + elapsed_us // 1000
        log.stamp()
    assert log.last_ms >= START_MS + 1_800 - 1
