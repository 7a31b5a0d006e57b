"""`python -m supervisor bench`: --quick --json end to end on real nodes (every expected key),
the table, and a bad config file refused with a clear error and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.bench import EXPECTED_KEYS, render_table
from tests.conftest import write_cluster_yaml

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path) -> Path:
    return write_cluster_yaml(tmp_path, name="bench-test")


def _bench(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "bench", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_a_bad_config_file_is_refused_with_exit_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_text("cluster: x\nnodes: [1, 2\n")
    result = _bench(str(bad), "--quick", timeout_s=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("bench: ") and str(bad) in result.stderr
    assert "Traceback" not in result.stderr
    missing = _bench(str(tmp_path / "nowhere.yaml"), timeout_s=60)
    assert missing.returncode == 2 and "nowhere.yaml" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_bad_counts_are_refused(tmp_path: Path) -> None:
    result = _bench(str(_config(tmp_path)), "--count", "0", timeout_s=60)
    assert result.returncode == 2 and "--count" in result.stderr


@pytest.mark.cluster
@pytest.mark.slow  # about 20 s; .ci/run runs it (the default run keeps under 10 minutes)
def test_quick_json_runs_end_to_end_with_every_key(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = _bench(str(config), "--quick", "--json", "--client-processes", "2", timeout_s=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert [k for k in EXPECTED_KEYS if k not in document] == []
    assert document["quick"] is True and document["nodes"] == 3
    for key in ("sends_per_s_1_sender", "sends_per_s_64_inflight", "echo_calls_per_s"):
        assert document[key] > 0, key
    assert 0 < document["send_p50_ms"] <= document["send_p99_ms"]
    assert document["failover_rounds"] == 3
    assert set(document["failover_kill_to_commit"]) == {"median_ms", "p90_ms", "max_ms"}
    assert len(document["failover_breakdown"]) == 3
    assert document["leader_changes_under_load"] is None  # no stability window in --quick
    assert not (tmp_path / "data").exists()  # the cluster's own data_dir is never touched
    # CPU per send of every node and of the client, with one client process and with two
    assert set(document["cpu_ms_per_send"]) == {"a", "b", "c", "client"}
    assert all(v > 0 for v in document["cpu_ms_per_send"].values())
    assert set(document["cpu_ms_per_send_processes"]) == {"a", "b", "c", "load-0", "load-1"}
    assert document["sends_per_s_inflight_processes"] > 0
    assert document["echo_calls_per_s_processes"] > 0
    assert document["throughput_vs_echo_processes"] > 0
    assert set(document["echo_cpu_ms_per_call"]) == {"echo", "client"}
    assert document["echo_tls"] is True  # the yardstick speaks the same TLS
    # every node's event loop lag over the loaded window
    lags = document["loop_lag_ms"]
    assert set(lags) == {"a", "b", "c"}
    assert all(0 <= v["p99"] <= v["max"] for v in lags.values())
    table = render_table(document)
    assert "sends/s, 64 in flight" in table and "the next send commits" in table
    assert "from client processes" in table and "event loop lag under load" in table
