"""node/loop_lag.py: a blocked event loop shows in the figures Status reports."""

from __future__ import annotations

import asyncio
import time

from node.loop_lag import LoopLag


def test_the_figures_of_an_empty_window_are_zero() -> None:
    assert LoopLag().figures_ms() == (0.0, 0.0)


def test_p99_and_max_over_the_window_only() -> None:
    lag = LoopLag(sample_s=0.01, window_s=1.0)  # 100 samples kept
    lag.record(0.5)  # pushed out of the window below
    for _ in range(98):
        lag.record(0.001)
    lag.record(0.02)
    lag.record(0.03)
    assert lag.figures_ms() == (20.0, 30.0)
    lag.record(-0.001)  # woke early (a coarse clock): no lag, not a negative one
    assert min(lag._lags) == 0.0


async def test_a_blocking_call_on_the_loop_is_measured() -> None:
    lag = LoopLag(sample_s=0.005, window_s=2.0)
    lag.start()
    try:
        await asyncio.sleep(0.05)
        quiet_p99, _ = lag.figures_ms()
        time.sleep(0.12)  # an fsync on the loop, say
        await asyncio.sleep(0.03)
        p99, worst = lag.figures_ms()
    finally:
        await lag.stop()
    assert quiet_p99 < 50
    assert 110 <= worst < 400, worst
    assert p99 >= quiet_p99
