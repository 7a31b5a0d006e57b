"""`python -m supervisor check`: the history checker run end to end on a real cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_cluster_yaml

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path) -> Path:
    return write_cluster_yaml(tmp_path, name="check")


def _check(config: Path, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "check", str(config), *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_a_bad_nemesis_is_refused(tmp_path: Path) -> None:
    result = _check(_config(tmp_path), "--nemesis", "flood", timeout_s=60)
    assert result.returncode == 2
    assert "--nemesis takes kill, pause, partition, membership" in result.stderr


@pytest.mark.cluster
@pytest.mark.slow  # about 20 s; .ci/run runs it (the default run keeps under 10 minutes)
def test_a_short_check_with_every_nemesis_passes(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = _check(
        config,
        "--duration",
        "8",
        "--clients",
        "3",
        "--interval",
        "2",
        "--seed",
        "7",
        timeout_s=110,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS: sends" in result.stdout and "violations 0" in result.stdout
    assert "seed 7" in result.stdout
    assert not (tmp_path / "data").exists()  # the cluster's own data dir is never touched


@pytest.mark.cluster
@pytest.mark.slow  # about 40 s
@pytest.mark.timeout(240)
def test_a_check_that_changes_members_under_load_passes(tmp_path: Path) -> None:
    """Issue 14: membership changes under load lose and double nothing. Each step removes a
    member (and the next adds it back) or wipes a member's disk and replaces it, while the
    clients send; every member serves again at the end, with every node's digest alike."""
    config = _config(tmp_path)
    result = _check(
        config,
        "--duration",
        "12",
        "--nemesis",
        "membership",
        "--clients",
        "4",
        "--interval",
        "3",
        "--seed",
        "2",  # replace a (the leader), remove c, add c back
        timeout_s=220,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS: sends" in result.stdout and "violations 0" in result.stdout
    assert result.stdout.count("is a voter again, incarnation") >= 2, result.stdout[-3000:]
    assert "remove " in result.stdout and "replace " in result.stdout, result.stdout[-3000:]
    assert "one digest" in result.stdout


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sixty_second_check_with_all_three_nemeses_passes(tmp_path: Path) -> None:
    """Issue 6: `check` passes a 60-second run with kill, pause and partition."""
    config = _config(tmp_path)
    result = _check(
        config,
        "--duration",
        "60",
        "--nemesis",
        "kill,pause,partition",
        "--clients",
        "8",
        "--seed",
        "2",  # its schedule holds every kind: kill, pause and partition, three times each
        timeout_s=280,
    )
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sixty_second_check_with_the_membership_nemesis_passes(tmp_path: Path) -> None:
    """Issue 14: a 60-second `check` with kill, pause, partition and membership changes
    (removals added back, replaces) loses, doubles and reorders nothing, and every change
    completes."""
    config = _config(tmp_path)
    result = _check(
        config,
        "--duration",
        "60",
        "--nemesis",
        "kill,pause,partition,membership",
        "--clients",
        "8",
        "--seed",
        "11",
        timeout_s=280,
    )
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS: sends" in result.stdout and "violations 0" in result.stdout
    assert "is a voter again, incarnation" in result.stdout, result.stdout[-3000:]
    assert "one digest" in result.stdout
