"""The core benchmark runs and reports its figures (speed itself is never asserted)."""

from __future__ import annotations

from benchmarks.core import bench_commit, bench_ticks


def test_core_benchmark_commits_everything_it_proposes() -> None:
    result = bench_commit(total=2_000, batch=100)
    assert result["committed_entries_per_s"] > 0


def test_tick_benchmark_runs_a_simulated_cluster() -> None:
    assert bench_ticks(200)["simulated_ticks_per_s"] > 0
