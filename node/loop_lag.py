"""`LoopLag`: how late this node's event loop runs what is due, the figure that says whether a
blocking call (an fsync on the loop, a long apply, the GIL held by another thread) stalls
everything else the loop serves: heartbeats, votes, client calls.

A task sleeps SAMPLE_S at a time and records how much later than asked it woke; Status reports
the 99th percentile and the maximum over the last WINDOW_S (`loop_lag_p99_ms`,
`loop_lag_max_ms`), which `supervisor bench` reads under load. Its own cost is one wake-up per
SAMPLE_S. Standard library only.
"""

from __future__ import annotations

import asyncio
import collections
import math
from typing import Final

SAMPLE_S: Final = 0.01
WINDOW_S: Final = 5.0


class LoopLag:
    def __init__(self, sample_s: float = SAMPLE_S, window_s: float = WINDOW_S) -> None:
        self.sample_s = sample_s
        self._lags: collections.deque[float] = collections.deque(
            maxlen=max(1, round(window_s / sample_s))
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.sample_s)
            self.record(loop.time() - asked - self.sample_s)

    def record(self, lag_s: float) -> None:
        self._lags.append(max(0.0, lag_s))

    def figures_ms(self) -> tuple[float, float]:
        """(p99, max) of the lags in the window, in ms; (0, 0) before the first sample."""
        if not self._lags:
            return 0.0, 0.0
        ordered = sorted(self._lags)
        p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
        return round(p99 * 1000, 3), round(ordered[-1] * 1000, 3)
