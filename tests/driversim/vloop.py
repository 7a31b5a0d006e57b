"""A virtual-time asyncio event loop: time stands still while callbacks run and jumps to the
next timer when nothing is ready (trio's MockClock with autojump). Drivers that take a Clock
built on it, a MemoryNetwork and inline executors run deterministically from a seed, and a
minute of cluster time passes in well under a second when little happens.

Real I/O still works (the selector is polled without waiting), but a test that uses it gives
up determinism: none here does.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or self.loop is None:
            return events
        if timeout is None:
            raise RuntimeError("virtual-time loop: nothing scheduled and nothing ready (deadlock)")
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


def run(main: Awaitable[T]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class SkewedClock:
    """A node's clocks on the virtual loop: its monotonic clock runs at `rate`, and its wall
    clock is that plus `offset_ms` (which a test may change: a clock jump)."""

    def __init__(self, rate: float = 1.0, offset_ms: int = 0) -> None:
        self.rate = rate
        self.offset_ms = offset_ms

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time() * self.rate

    def wall_ms(self) -> int:
        return int(self.monotonic() * 1000) + self.offset_ms

    def sleep(self, seconds: float) -> Awaitable[Any]:
        return asyncio.sleep(max(seconds, 0) / self.rate)
