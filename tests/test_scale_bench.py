"""`python -m benchmarks.scale --quick` (issue 13's scale benchmark at N = 2,000) as a real run on
a 3-node cluster: it exits 0, reports every figure, and stored exactly N messages (a follower's
database counted read-only, as many distinct ids answered and handed to subscribers), and the
follower that caught up by snapshot holds every message sent. Also `supervisor bench --scale`
refusing a bad N before starting anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scale import QUICK_MESSAGES

ROOT = Path(__file__).resolve().parents[1]

# Every figure of the "Speed and scale" section, by the key that reports it.
FIGURES = (
    "fill_sends_per_s",
    "rss_mb",
    "data_dir_mb",
    "largest_db_wal_mb",
    "largest_raft_wal_mb",
    "snapshot_mb",
    "restart_empty_sigterm_s",
    "restart_empty_sigkill_s",
    "restart_sigterm_s",
    "restart_sigkill_s",
    "restart_sigterm_minus_empty_s",
    "restart_sigkill_minus_empty_s",
    "restart_sigkill_full_interval_s",
    "restart_sigkill_full_interval_minus_empty_s",
    "restart_sigkill_full_interval_entries_since_snapshot",
    "history_1000_p50_ms",
    "history_1000_p99_ms",
    "catchup_snapshot_mb",
    "catchup_s",
    "catchup_snapshot_mb_per_s",
    "catchup_transfer_s",
    "catchup_transfer_mb_per_s",
    "status_digest_p50_ms",
    "leader_changes",
)


def _run(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.cluster
@pytest.mark.slow  # about 30 s; .ci/run runs it
@pytest.mark.timeout(300)
def test_quick_scale_stores_every_message_and_reports_every_figure() -> None:
    done = _run("benchmarks.scale", "--quick", "--json", timeout_s=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert [key for key in FIGURES if result.get(key) is None] == []
    assert result["messages"] == result["messages_stored"] == QUICK_MESSAGES
    assert result["delivered_to_subscribers"] == QUICK_MESSAGES
    assert result["catchup_by_snapshot"] is True
    assert result["catchup_messages_stored"] == QUICK_MESSAGES + result["catchup_extra_messages"]
    assert result["history_1000_messages_returned"] == 1000
    assert set(result["rss_mb"]) == set(result["data_dir_mb"]) == {"a", "b", "c"}
    assert result["fill_sends_per_s"] > 0 and result["snapshot_mb"] > 0


def test_supervisor_bench_refuses_a_bad_scale() -> None:
    done = _run("supervisor", "bench", str(ROOT / "cluster.yaml"), "--scale", "0", timeout_s=60)
    assert done.returncode == 2 and "--scale" in done.stderr
