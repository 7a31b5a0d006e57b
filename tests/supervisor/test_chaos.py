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
        self.all_ids = self.node_ids = tuple(ids)  # node_ids: the members (FakeMembers)
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
        out |= set(self.all_ids) - set(self.node_ids)  # removed
        out |= {n for n, ms in self.slow_ms.items() if ms}
        if self.groups is not None:
            size = len(self.node_ids)
            out |= {n for g in self.groups if len(g) <= size // 2 for n in g}
        return out

    def whole(self) -> bool:
        return not self.faulted() and self.groups is None


class FakeMembers:
    """The MemberChanges protocol over a FakeCluster: a removed member leaves node_ids (its
    process stopped), an added one comes back up, a replace keeps it a member."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.changes: list[str] = []

    def _members(self, ids: Iterable[str]) -> None:
        kept = set(ids)
        self.cluster.node_ids = tuple(n for n in self.cluster.all_ids if n in kept)

    def remove(self, node_id: str) -> object:
        if node_id not in self.cluster.node_ids:
            raise AssertionError(f"remove {node_id}: not a member")
        self._members(set(self.cluster.node_ids) - {node_id})
        self.cluster.states[node_id] = ProcessState.DOWN
        self.changes.append(f"remove {node_id}")
        return None

    def prepare_add(self, node_id: str) -> None:
        if node_id in self.cluster.node_ids:
            raise AssertionError(f"add {node_id}: a member already")
        self._members({*self.cluster.node_ids, node_id})

    def prepare_replace(self, node_id: str) -> None:
        if node_id not in self.cluster.node_ids:
            raise AssertionError(f"replace {node_id}: not a member")
        self.cluster.states[node_id] = ProcessState.DOWN  # killed and wiped

    def _join(self, node_id: str, prepare: Callable[[str], None]) -> None:
        prepare(node_id)
        self.cluster.start_node(node_id, wait=False)
        self.changes.append(f"{'add' if prepare == self.prepare_add else 'replace'} {node_id}")

    def add(self, node_id: str) -> object:
        self._join(node_id, self.prepare_add)
        return None

    def replace(self, node_id: str) -> object:
        self._join(node_id, self.prepare_replace)
        return None

    async def join_from_loop(self, node_id: str, prepare: Callable[[str], None]) -> object:
        self._join(node_id, prepare)
        return None


WITH_MEMBERSHIP = (*ALL_KINDS, FaultKind.MEMBERSHIP)


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
    assert ops == set(Op) - {Op.REMOVE, Op.ADD, Op.REPLACE}  # only with --membership
    cluster = FakeCluster("abc")
    members = FakeMembers(cluster)
    chaos = Chaos(cluster, seed=5, kinds=WITH_MEMBERSHIP, members=members)
    ops = {a.op for _ in range(80) for a in run_sync(cluster, chaos.step(), members)}
    assert ops == set(Op)


@pytest.mark.parametrize("ids", ["abc", "abcde"])
def test_membership_changes_one_member_at_a_time_and_a_removed_one_comes_back(ids: str) -> None:
    """A membership fault names one member; a removed one is added back by the next step (and
    by stop), so the members are never more than a minority short, and stop leaves them all."""
    for seed in range(30):
        cluster = FakeCluster(ids)
        members = FakeMembers(cluster)
        chaos = Chaos(cluster, seed=seed, kinds=WITH_MEMBERSHIP, members=members)
        for _ in range(20):
            run_sync(cluster, chaos.step(), members)
            fault = chaos.current
            assert fault is not None
            if fault.kind is FaultKind.MEMBERSHIP:
                assert len(fault.nodes) == 1
                gone = set(cluster.all_ids) - set(cluster.node_ids)
                assert gone == (set() if fault.replace else set(fault.nodes)), (seed, fault)
            assert len(cluster.faulted()) <= minority(len(ids)), (seed, fault)
        run_sync(cluster, chaos.make_whole(), members)
        assert cluster.node_ids == cluster.all_ids and cluster.whole(), (seed, members.changes)
    assert {c.split()[0] for c in members.changes} == {"remove", "add", "replace"}


def test_membership_changes_need_someone_to_make_them() -> None:
    with pytest.raises(ValueError, match="MemberChanges"):
        Chaos(FakeCluster("abc"), seed=1, kinds=WITH_MEMBERSHIP)


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
    from supervisor.repl import ChaosStart, CommandError, _parse_chaos_start

    assert _parse_chaos_start([]) == ChaosStart(5.0, False, None, False)
    assert _parse_chaos_start(["2", "--unsafe", "--seed", "9"]) == ChaosStart(2.0, True, 9)
    assert _parse_chaos_start(["--seed", "9", "0.5"]) == ChaosStart(0.5, False, 9)
    start = _parse_chaos_start(["--membership", "3"])
    assert start == ChaosStart(3.0, False, None, True)
    assert start.command(7) == "chaos start 3 --membership --seed 7"
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


MEMBERSHIP_SEED = 101  # on a, b, c: remove a (the first leader), then replace b
CHANGE = re.compile(r"^chaos: (remove|add|replace) (\w+)$")


@pytest.mark.cluster
@needs_real_node
@pytest.mark.slow  # about 15 s; .ci/run runs it
def test_chaos_with_membership_changes_on_real_nodes(
    tmp_path: Path, supervisors: Callable[..., Supervisor]
) -> None:
    """`chaos start --membership`: the leader is removed and added back at the next step as a
    new incarnation, a follower is replaced, and after `chaos stop` every node is a voter of
    one membership again, with one leader."""
    supervisor = supervisors(write_config(tmp_path), real=True)
    supervisor.wait_up(45)
    supervisor.command(f"chaos start 1 --membership --seed {MEMBERSHIP_SEED}", r"membership\)?")
    deadline = time.monotonic() + 60

    def changes() -> list[tuple[str, str]]:
        return [(m[1], m[2]) for line in supervisor.out if (m := CHANGE.match(line))]

    while time.monotonic() < deadline:
        joined = [line for line in supervisor.out if re.match(r"chaos: \w+ is a voter again", line)]
        if {"remove", "add", "replace"} <= {op for op, _ in changes()} and len(joined) >= 2:
            break  # a added back, b replaced
        time.sleep(0.1)
    supervisor.command("chaos stop", r"^chaos: off after \d+ faults", timeout_s=60)
    made = changes()
    assert made[:3] == [("remove", "a"), ("add", "a"), ("replace", "b")], made
    assert not [line for line in supervisor.out if re.match(r"chaos: .* failed", line)], (
        supervisor.output
    )
    start = len(supervisor.out)
    supervisor.command("members", r"^members ", timeout_s=20)
    time.sleep(0.3)  # the rest of the table
    member_row = re.compile(r"^\s+(\w+)\s+(voter|learner)\s+(.*)$")
    rows = {m[1]: m for line in supervisor.out[start:] if (m := member_row.match(line))}
    table = supervisor.out[start:]
    assert set(rows) == {"a", "b", "c"}, table
    assert all(m[2] == "voter" for m in rows.values()), table
    assert rows["a"][3].startswith("incarnation ") and rows["b"][3].startswith("incarnation ")
    assert rows["c"][3].startswith("initial"), table
    assert supervisor.wait(30) == 0, supervisor.output
