"""supervisor/chaos.py: the fault-choosing logic against a fake cluster (never more than a
minority unless unsafe, every fault undone by the next step, `stop` leaves nothing faulted, a
seed repeats a session), the `chaos` command's parsing, and one piped session of
`python -m supervisor up` with real nodes whose announced faults are seen from outside."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from supervisor.chaos import (
    ALL_KINDS,
    Chaos,
    ChaosRunner,
    FaultKind,
    Op,
    choose_fault,
    minority,
    run_sync,
)
from supervisor.links import Groups, normalize_groups
from supervisor.processes import ProcessState
from tests.supervisor.conftest import Supervisor, needs_real_node, write_config


class FakeCluster:
    """The ChaosTarget protocol over plain state, refusing what a real cluster refuses."""

    def __init__(self, ids: str = "abc") -> None:
        self.node_ids = tuple(ids)
        self.states = dict.fromkeys(self.node_ids, ProcessState.UP)
        self.groups: Groups | None = None
        self.slow_ms = dict.fromkeys(self.node_ids, 0.0)
        self.spawns = 0

    def process_state(self, node_id: str) -> ProcessState:
        return self.states[node_id]

    def kill(self, node_id: str) -> object:
        if self.states[node_id] is ProcessState.DOWN:
            raise AssertionError(f"kill {node_id}: already down")
        self.states[node_id] = ProcessState.DOWN
        return None

    def start_node(self, node_id: str, *, wait: bool = True) -> int:
        if self.states[node_id] is not ProcessState.DOWN:
            raise AssertionError(f"start {node_id}: already running")
        self.states[node_id] = ProcessState.UP
        self.spawns += 1
        return 1000 + self.spawns

    def wait_serving(self, node_id: str, timeout_s: float | None = None) -> None:
        assert self.states[node_id] is ProcessState.UP

    def pause(self, node_id: str) -> None:
        if self.states[node_id] is not ProcessState.UP:
            raise AssertionError(f"pause {node_id}: not up")
        self.states[node_id] = ProcessState.PAUSED

    def resume(self, node_id: str) -> None:
        if self.states[node_id] is not ProcessState.PAUSED:
            raise AssertionError(f"resume {node_id}: not paused")
        self.states[node_id] = ProcessState.UP

    def partition(self, *groups: Iterable[str]) -> Groups:
        self.groups = normalize_groups(groups, self.node_ids)
        return self.groups

    def heal(self) -> None:
        self.groups = None
        self.slow_ms = dict.fromkeys(self.node_ids, 0.0)

    def slow(self, node_id: str, ms: float) -> None:
        self.slow_ms[node_id] = ms

    def wait_leader(self, timeout_s: float = 30.0) -> str:
        return "a"

    # -- what the tests look at ---------------------------------------------------------------

    def faulted(self) -> set[str]:
        """Every node out of a majority now: not up, slowed, or in a minority group."""
        out = {n for n, s in self.states.items() if s is not ProcessState.UP}
        out |= {n for n, ms in self.slow_ms.items() if ms}
        if self.groups is not None:
            size = len(self.node_ids)
            out |= {n for g in self.groups if len(g) <= size // 2 for n in g}
        return out

    def whole(self) -> bool:
        return not self.faulted() and self.groups is None


def test_minority() -> None:
    assert [minority(n) for n in (1, 2, 3, 4, 5, 7)] == [0, 0, 1, 1, 2, 3]


@pytest.mark.parametrize("ids", ["abc", "abcde", "abcdefg"])
def test_never_more_than_a_minority_faulted_at_once(ids: str) -> None:
    """Without --unsafe, after every step a majority is up, unslowed and connected."""
    for seed in range(40):
        cluster = FakeCluster(ids)
        chaos = Chaos(cluster, seed=seed)
        for _ in range(30):
            run_sync(cluster, chaos.step())
            assert chaos.current is not None
            assert len(cluster.faulted()) <= minority(len(ids)), (seed, chaos.current)
            assert len(chaos.current.faulted(len(ids))) <= minority(len(ids))


def test_unsafe_may_fault_a_majority() -> None:
    worst = 0
    for seed in range(40):
        cluster = FakeCluster("abcde")
        chaos = Chaos(cluster, seed=seed, unsafe=True)
        for _ in range(20):
            run_sync(cluster, chaos.step())
            worst = max(worst, len(cluster.faulted()))
    assert worst == 5


def test_nodes_down_already_count_against_the_minority() -> None:
    """A node the user killed by hand leaves no budget in a 3-node cluster."""
    cluster = FakeCluster("abc")
    cluster.kill("b")
    chaos = Chaos(cluster, seed=1)
    for _ in range(10):
        assert run_sync(cluster, chaos.step()) == []
        assert chaos.current is None
    rng = random.Random(0)
    fault = choose_fault(rng, tuple("abcde"), ALL_KINDS, unavailable=["b"])
    assert fault is not None and len(fault.faulted(5)) == 1 and "b" not in fault.nodes


@pytest.mark.parametrize("unsafe", [False, True])
def test_every_fault_is_undone_by_the_next_step(unsafe: bool) -> None:
    """After a step, the only faults left are those of the fault it just made."""
    for seed in range(40):
        cluster = FakeCluster("abcde")
        chaos = Chaos(cluster, seed=seed, unsafe=unsafe)
        for _ in range(25):
            run_sync(cluster, chaos.step())
            fault = chaos.current
            assert fault is not None
            expected = FakeCluster("abcde")
            run_sync(expected, iter(fault.actions()))
            assert cluster.states == expected.states, (seed, fault)
            assert cluster.groups == expected.groups, (seed, fault)
            assert cluster.slow_ms == expected.slow_ms, (seed, fault)


def test_every_kind_of_fault_and_its_undo_is_made() -> None:
    cluster = FakeCluster("abc")
    chaos = Chaos(cluster, seed=5)
    ops = {a.op for _ in range(60) for a in run_sync(cluster, chaos.step())}
    assert ops == set(Op)


def test_stop_leaves_nothing_faulted_even_what_the_user_broke() -> None:
    for seed in range(40):
        cluster = FakeCluster("abcde")
        chaos = Chaos(cluster, seed=seed, unsafe=seed % 2 == 0)
        for _ in range(seed % 7):
            run_sync(cluster, chaos.step())
        if cluster.states["e"] is ProcessState.UP:
            cluster.pause("e")  # by hand, besides chaos
        run_sync(cluster, chaos.make_whole())
        assert cluster.whole(), (seed, cluster.states, cluster.groups, cluster.slow_ms)
        assert chaos.current is None


def test_an_undo_skips_what_was_undone_by_hand() -> None:
    cluster = FakeCluster("abc")
    chaos = Chaos(cluster, seed=0, kinds=[FaultKind.KILL])
    run_sync(cluster, chaos.step())
    assert chaos.current is not None
    (victim,) = chaos.current.nodes
    cluster.start_node(victim)  # the user started it again
    run_sync(cluster, chaos.step())  # no "already running"
    assert len(cluster.faulted()) == 1


def test_a_seed_repeats_the_session() -> None:
    def session(seed: int) -> list[str]:
        cluster = FakeCluster("abcde")
        chaos = Chaos(cluster, seed=seed)
        return [a.describe() for _ in range(30) for a in run_sync(cluster, chaos.step())]

    assert session(11) == session(11)
    assert session(11) != session(12)


def test_the_runner_steps_on_the_loop_and_stop_makes_whole() -> None:
    """The timer itself, on an event loop with a fast interval and the fake cluster."""
    said: list[str] = []

    async def main() -> str | None:
        cluster = FakeCluster("abc")
        runner = ChaosRunner(Chaos(cluster, seed=3), 0.2, said.append)
        runner.start()
        assert runner.running
        await asyncio.sleep(0.9)
        leader = await runner.stop()
        assert not runner.running
        assert cluster.whole()
        return leader

    assert asyncio.run(main()) == "a"
    faults = [line for line in said if re.match(r"chaos: (kill|pause|partition|slow) ", line)]
    assert 4 <= len(faults) <= 6, said


def test_chaos_start_arguments() -> None:
    from supervisor.repl import CommandError, _parse_chaos_start

    assert _parse_chaos_start([]) == (5.0, False, None)
    assert _parse_chaos_start(["2", "--unsafe", "--seed", "9"]) == (2.0, True, 9)
    assert _parse_chaos_start(["--seed", "9", "0.5"]) == (0.5, False, 9)
    for bad in (["0"], ["-1"], ["x"], ["1", "2"], ["--seed"], ["--fast"]):
        with pytest.raises(CommandError):
            _parse_chaos_start(bad)


# -- with real nodes ---------------------------------------------------------------------------

SEED = 19  # its first five faults: kill, pause, partition, partition, slow (3 nodes)
FAULT = re.compile(r"^chaos: (kill|pause|partition|slow) (.+)$")


@pytest.mark.cluster
@needs_real_node
def test_chaos_in_piped_mode_with_real_nodes(
    tmp_path: Path, supervisors: Callable[..., Supervisor]
) -> None:
    """Announced faults are seen from outside (status --json), and after `chaos stop` every
    node is up, resumed, healed, unslowed, with one leader."""
    supervisor = supervisors(write_config(tmp_path), real=True)
    first_pids = supervisor.wait_up(45)

    def status() -> dict[str, Any]:
        document: dict[str, Any] = json.loads(supervisor.command("status --json", r"^\{"))
        return document

    supervisor.command(f"chaos start 2 --seed {SEED}", rf"seed {SEED}")
    seen: dict[str, set[str]] = {"pause": set(), "partition": set(), "slow": set()}
    # Faults last 2 s, longer than a status poll that waits on a paused node.
    deadline = time.monotonic() + 40
    kinds: set[str] = set()
    while time.monotonic() < deadline and kinds != {"kill", "pause", "partition", "slow"}:
        document = status()
        for node in document["nodes"]:
            if node["process"] == "paused":
                seen["pause"].add(node["id"])
            if node["slow_ms"]:
                seen["slow"].add(node["id"])
        if document["partition"] is not None:
            seen["partition"].add(" | ".join(",".join(g) for g in document["partition"]))
        kinds = {m[1] for line in supervisor.out if (m := FAULT.match(line))}
        time.sleep(0.05)
    time.sleep(0.3)
    announced = len(supervisor.out)  # a fault announced by now lasts into the next poll
    for node in status()["nodes"]:
        if node["process"] == "paused":
            seen["pause"].add(node["id"])
        if node["slow_ms"]:
            seen["slow"].add(node["id"])
    supervisor.command("chaos stop", r"^chaos: off after \d+ faults", timeout_s=40)
    final = status()

    faults = [m.groups() for line in supervisor.out[:announced] if (m := FAULT.match(line))]
    assert {kind for kind, _ in faults} == {"kill", "pause", "partition", "slow"}, faults
    after = {n["id"]: n for n in final["nodes"]}
    for kind, what in faults:
        if kind == "kill":
            assert after[what]["pid"] != first_pids[what], (what, after[what])
        elif kind == "slow":
            assert what.split()[0] in seen["slow"], (what, seen)
        else:
            assert what in seen[kind], (kind, what, seen)
    assert "chaos: start c" in supervisor.out  # the kill was undone
    assert all(n["process"] == "up" for n in final["nodes"]), final
    assert all(n["slow_ms"] == 0 for n in final["nodes"]), final
    assert final["partition"] is None
    assert final["leader"] in after
    assert supervisor.wait(30) == 0, supervisor.output
