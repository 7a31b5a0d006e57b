"""Randomized simulation of whole clusters, checked for Raft's safety properties at every
step and for liveness once the faults stop.

The default run covers DEFAULT_SEEDS seeds across every fault profile in turn, on 3, 5 and 7
nodes (half of them 3: most bugs need the fewest coincidences there; the aimed profiles run on
3 only), on 2 worker processes. More:
CHATBOOTH_SIM_SEEDS=20000 (and CHATBOOTH_SIM_FIRST=N to start elsewhere); 100,000 seeds is the
`slow` test, or:

    CHATBOOTH_SIM_SEEDS=100000 .venv/bin/python -m pytest tests/raft/test_simulation.py \
        -k random_seeds --timeout 0

A failure prints its seed and the one-line command that replays it. How sharp the search is:
tests/raft/test_broken_cores.py.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.simulator import random_sim
from tests.simulator.checker import SafetyViolation
from tests.simulator.random_sim import PROFILES, SimulationFailure, run_seed

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SEEDS = 2000
NAMES = sorted(PROFILES)


SIZES = (3, 5, 3, 7, 3, 5)
SLOW_SEEDS = 100_000


def shape(seed: int) -> tuple[int, str]:
    """The cluster size and fault profile of a seed in the default run."""
    profile = NAMES[(seed // len(SIZES)) % len(NAMES)]
    sizes = PROFILES[profile].sizes or SIZES
    return sizes[seed % len(sizes)], profile


def _one(seed: int) -> str | None:
    logging.disable(logging.CRITICAL)  # the core's ERROR logs are not failures; the checker is
    nodes, profile = shape(seed)
    try:
        run_seed(seed, nodes, profile)
    except SimulationFailure as exc:
        return str(exc)
    return None


def _run_seeds(count: int) -> None:
    first = int(os.environ.get("CHATBOOTH_SIM_FIRST", 0))
    seeds = range(first, first + count)
    workers = min(os.cpu_count() or 1, 2)
    # spawn, not fork: earlier tests in this process loaded gRPC, which is not fork-safe
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        failures = [f for f in pool.imap_unordered(_one, seeds, chunksize=25) if f]
    assert not failures, f"{len(failures)} of {count} seeds failed; first:\n{failures[0]}"


@pytest.mark.timeout(600)  # about a minute alone on 2 cores; generous for a loaded machine
def test_random_seeds_keep_every_safety_property_and_recover() -> None:
    _run_seeds(int(os.environ.get("CHATBOOTH_SIM_SEEDS", DEFAULT_SEEDS)))


@pytest.mark.soak  # about 40 minutes on 2 cores: by hand, not in CI (`python -m pytest -m soak`)
@pytest.mark.timeout(6 * 3600)
def test_100000_random_seeds() -> None:
    _run_seeds(int(os.environ.get("CHATBOOTH_SIM_SEEDS", SLOW_SEEDS)))


@pytest.mark.parametrize("profile", NAMES)
def test_every_profile_runs_on_every_size(profile: str) -> None:
    for nodes in (3, 5, 7):
        result = run_seed(10_000 + nodes, nodes, profile)
        assert result.committed > 0
        assert result.elections >= 1


def test_a_seed_replays_identically_under_other_hash_seeds() -> None:
    """TRAPS: set and dict-of-set order changes with PYTHONHASHSEED; the simulation must not."""
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-m", "tests.simulator", "--seed", "7", "--nodes", "5"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outputs.append(out.stdout)
    assert "trace_digest='" in outputs[0]
    assert outputs[0] == outputs[1]


def test_a_failure_names_its_seed_and_the_replay_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise SafetyViolation("t=5: election safety: a and b both leaders of term 3")

    monkeypatch.setattr(random_sim, "_run", failing)
    with pytest.raises(SimulationFailure) as err:
        run_seed(42, 5, "all")
    assert "seed 42" in str(err.value)
    assert "replay: python -m tests.simulator --seed 42 --nodes 5 --profile all" in str(err.value)


def test_a_failure_the_search_finds_replays_from_its_printed_command() -> None:
    """No seed is picked by hand: take the first default-run seed on which a broken core
    fails, and run the replay command its failure printed."""
    for seed in range(300):
        nodes, profile = shape(seed)
        try:
            run_seed(seed, nodes, profile, broken="append-without-term-check")
        except SimulationFailure as exc:
            failure = str(exc)
            break
    else:
        raise AssertionError("300 seeds never caught append-without-term-check")
    replay = failure.split("replay: ", 1)[1].split()
    assert replay[:3] == ["python", "-m", "tests.simulator"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    broken = subprocess.run(
        [sys.executable, *replay[1:]], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert broken.returncode == 1
    assert failure.splitlines()[0] in broken.stderr
    fixed = [a for a in replay[1:] if a not in ("--broken", "append-without-term-check")]
    ok = subprocess.run([sys.executable, *fixed], cwd=ROOT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
