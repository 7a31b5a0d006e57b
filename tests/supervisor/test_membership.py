"""Membership changes on real node processes through supervisor.membership (issue 14): grow 3
to 5 with the new members behind proxies (a partition cuts them too), shrink, remove the
leader, replace a member that lost its disk, and `up` resuming the added members; the REPL's
commands on a live supervisor."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from client.api import ChatClient
from client.router import MEMBERS_REFRESH_S
from node.config import read_peers_file, write_peers_file
from supervisor.cluster import Cluster, NodeExitedError
from supervisor.events import EventKind
from supervisor.membership import Membership, MembershipError
from supervisor.ports import free_port
from tests.conftest import node_channel
from tests.node.test_node_process import Session
from tests.supervisor.conftest import (
    Supervisor,
    assert_gone,
    needs_real_node,
    poll,
    write_config,
)

pytestmark = [pytest.mark.cluster, needs_real_node]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(write_config(tmp_path, key=True), stop_grace_s=3)
    started.start()
    try:
        yield started
    finally:
        pids = set(started.pids().values())
        started.close()
        assert_gone(sorted(pids))


def writes(cluster: Cluster, count: int, tag: str) -> None:
    """`count` sends through the leader, each acknowledged."""

    async def run() -> None:
        leader = cluster.wait_leader(15)
        s = await Session.open(node_channel(cluster.config, cluster.address(leader)))
        try:
            await s.register_and_login(f"u{tag}")
            for i in range(count):
                await s.send(f"u{tag}", f"{tag} {i}")
        finally:
            await s.close()

    asyncio.run(run())


def test_grow_to_five_behind_the_proxies_and_a_partition_cuts_an_added_member(
    cluster: Cluster,
) -> None:
    membership = Membership(cluster)
    writes(cluster, 20, "before")
    started = time.monotonic()
    view = membership.add("d")
    took_s = time.monotonic() - started
    assert view.voters() == ("a", "b", "c", "d")
    d = view.member("d")
    assert d is not None and d.incarnation > 0
    # what the web view's feed shows of it, in order
    news = [e.text for e in cluster.events.recent() if e.kind is EventKind.MEMBER]
    assert news == [
        "d is being added",
        f"d joined the configuration as a learner (incarnation {d.incarnation})",
        "d was promoted to voter: voters a, b, c, d",
    ]
    view = membership.add("e")
    assert set(view.voters()) == set("abcde")
    assert took_s < 30
    # The added members dial and are dialled through proxies: the supervisor's links.
    assert cluster.network is not None
    assert set(cluster.network.nodes) == set("abcde")
    peers = (cluster.data_dir / "a" / "peers").read_text()
    assert cluster.network.address("a", "d") in peers and cluster.network.address("a", "e") in peers
    d_pid = cluster.pid("d")
    assert d_pid is not None and "--join" in psutil.Process(d_pid).cmdline()  # its first start
    writes(cluster, 10, "five")

    cluster.isolate("d")  # an added member is cut like any other
    writes(cluster, 10, "cut")  # four of five commit without it
    cut = membership.members().member("d")
    assert cut is not None and cut.lag is not None and cut.lag > 0
    cluster.heal()

    def d_caught_up() -> bool:
        member = membership.members().member("d")
        return member is not None and member.lag == 0

    poll(d_caught_up, 20, "d catches up after heal")
    status = {s.id: s for s in cluster.status()}
    assert set(status) == set("abcde")
    assert status["d"].role is not None


def test_a_client_from_cluster_yaml_follows_the_members_to_added_nodes(cluster: Cluster) -> None:
    """A client knows cluster.yaml's a, b and c. d and e are added while it sends, then a, b
    and c (the leader among them) are removed: its sends go on through d and e, and a
    subscription that was on the removed leader moves on, every message delivered once, in
    order."""
    membership = Membership(cluster)
    sent: list[str] = []

    def client() -> ChatClient:  # from cluster.yaml's nodes, as `python -m client` is
        return ChatClient(
            cluster.config, call_timeout_s=1.0, overall_timeout_s=20.0, no_majority_grace_s=5.0
        )

    async def send_for(alice: ChatClient, seconds: float, tag: str) -> None:
        deadline = time.monotonic() + seconds
        while not sent or time.monotonic() < deadline:
            text = f"{tag} {len(sent)}"
            await alice.send("bob", text)
            sent.append(text)
            await asyncio.sleep(0.05)

    async def run() -> list[str]:
        async with client() as alice, client() as bob:
            for user, name in ((alice, "alice"), (bob, "bob")):
                await user.register(name, "pw")
                await user.login(name, "pw")
            received: list[str] = []

            async def read() -> None:
                async for message in bob.subscribe():
                    received.append(message.text)

            reader = asyncio.create_task(read())
            await send_for(alice, 0.5, "three")
            for node in ("d", "e"):
                await membership.join_from_loop(node, membership.prepare_add)
            # Longer than MEMBERS_REFRESH_S: the clients, being served, ask who the members are.
            await send_for(alice, MEMBERS_REFRESH_S + 1, "five")
            leader = cluster.wait_leader(15)
            for node in sorted("abc", key=lambda n: n == leader):  # the leader last
                await asyncio.to_thread(membership.remove, node)
            assert set(cluster.node_ids) == {"d", "e"}
            await send_for(alice, 1.0, "two")
            assert {n.name for n in alice.nodes} == {"d", "e"}

            async def delivered() -> None:
                while len(received) < len(sent):
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(delivered(), 20)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            return received

    received = asyncio.run(run())
    assert received == sent  # once each, in order


@pytest.mark.slow  # about 15 s; .ci/run runs it
def test_a_member_on_another_machine_joins_with_the_member_command(
    cluster: Cluster, tmp_path: Path
) -> None:
    """README, "Growing to another machine", step by step, with a node the supervisor does not
    run: its certificate (`supervisor cert`), its addresses in every member's peers file,
    `supervisor member add-learner`, `python -m node --join ID --incarnation N --address
    --peer-address`, and `supervisor member promote` once it caught up."""
    path = cluster.config.path
    assert path is not None
    writes(cluster, 10, "before")
    host = "127.0.0.1"
    port = free_port()
    peer_port = free_port(avoid=[port])
    tool = [sys.executable, "-m", "supervisor"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*tool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("cert", "d", "--host", host, "--config", str(path))
    for node in cluster.node_ids:  # what an operator writes on each member's machine
        peers_file = cluster.config.node_dir(node) / "peers"
        peers = read_peers_file(peers_file)
        peers["d"] = (f"{host}:{peer_port}", f"{host}:{port}")
        write_peers_file(peers_file, peers)
    added = run("member", "add-learner", "d", "--config", str(path))
    found = re.search(r"^\s+d\s+learner\s+incarnation (\d+)", added, re.MULTILINE)
    assert found is not None, added
    cluster_id = (cluster.config.data_dir / "cluster.id").read_text().strip()
    d = subprocess.Popen(
        [
            sys.executable, "-m", "node", "--config", str(path), "--id", "d",
            "--join", cluster_id, "--incarnation", found[1],
            "--address", f"{host}:{port}", "--peer-address", f"{host}:{peer_port}",
            "--log-file", str(tmp_path / "d.log"), "--exit-with-parent",
        ],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        extra = ["--config", str(path), "--node", f"d={host}:{peer_port}"]

        def caught_up() -> bool:
            listed = run("member", "list", *extra)
            return re.search(r"^\s+d\s+learner\s+.*lag 0$", listed, re.MULTILINE) is not None

        poll(caught_up, 30, "d catches up as a learner")
        promoted = run("member", "promote", "d", *extra)
        assert re.search(r"^\s+d\s+voter\s+incarnation", promoted, re.MULTILINE), promoted
        writes(cluster, 10, "four")  # committed by four voters now

        def d_holds_everything() -> bool:
            member = Membership(cluster).members().member("d")
            return member is not None and member.role == "voter" and member.lag == 0

        poll(d_holds_everything, 20, "d, a voter, holds every entry")
    finally:
        d.kill()
        d.wait(10)


def test_the_member_command_says_what_is_wrong(tmp_path: Path) -> None:
    config = write_config(tmp_path, key=True)
    tool = [sys.executable, "-m", "supervisor", "member"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*tool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
        )

    done = run("promote", "--config", str(config))
    assert done.returncode == 2 and "needs a node id" in done.stderr
    done = run("list", "--config", str(config), "--node", "d=nowhere")
    assert done.returncode == 2 and "expected ID=HOST:PORT" in done.stderr
    done = run("list", "--config", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "missing.yaml" in done.stderr
    done = run("list", "--config", str(config))  # never `up`: no CA, no tool certificate
    assert done.returncode == 2 and "ca.pem" in done.stderr, done.stderr


def test_shrink_and_remove_the_leader(cluster: Cluster) -> None:
    membership = Membership(cluster)
    leader = cluster.wait_leader(15)
    follower = next(n for n in "abc" if n != leader)
    view = membership.remove(follower)
    assert follower not in view.voters() and len(view.voters()) == 2
    news = [e.text for e in cluster.events.recent() if e.kind is EventKind.MEMBER]
    remaining = ", ".join(view.voters())
    assert news[-2:] == [
        f"{follower} left the configuration: voters {remaining}",
        f"{follower} was removed",
    ]
    # stopped once removed, and no longer one of the cluster's nodes (nor of `up`'s)
    assert follower in cluster.removed() and follower not in cluster.node_ids
    assert cluster.wait_leader(15) == leader
    writes(cluster, 5, "two")
    view = membership.remove(leader)  # it steps down once the removal commits, and hands over
    (last,) = view.voters()
    assert last not in (leader, follower)

    def new_leader() -> bool:
        return any(s.role == "leader" and s.id == last for s in cluster.status())

    poll(new_leader, 20, f"{last} leads alone")
    writes(cluster, 5, "one")
    with pytest.raises(MembershipError, match="only voter"):
        membership.remove(last)


def test_a_member_that_lost_its_disk_is_replaced_and_up_resumes_the_added_ones(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, key=True)
    with Cluster(config, stop_grace_s=3) as cluster:
        membership = Membership(cluster)
        writes(cluster, 20, "old")
        leader = cluster.wait_leader(15)
        lost = next(n for n in "abc" if n != leader)
        cluster.kill(lost)
        shutil.rmtree(cluster.data_dir / lost)
        with pytest.raises(NodeExitedError) as exited:
            cluster.start_node(lost)  # it will not come back as the member it was
        assert exited.value.exit.exit_code == 5
        view = membership.replace(lost)
        replaced = view.member(lost)
        assert replaced is not None and replaced.role == "voter" and replaced.incarnation > 0
        membership.add("d")
        writes(cluster, 10, "new")
        pids = set(cluster.pids().values())
    assert_gone(sorted(pids))
    # `up` again (no --fresh): every member comes back, none with --join any more
    with Cluster(config, stop_grace_s=3) as again:
        assert set(again.pids()) == {"a", "b", "c", "d"}
        for node_id, pid in again.pids().items():
            assert "--join" not in psutil.Process(pid).cmdline(), node_id
        view = Membership(again).members()
        assert set(view.voters()) == set("abcd")
        resumed = view.member(lost)
        assert resumed is not None and resumed.incarnation == replaced.incarnation
        writes(again, 5, "resumed")


def test_the_repl_commands(tmp_path: Path, supervisors: Callable[..., Supervisor]) -> None:
    supervisor = supervisors(write_config(tmp_path), real=True)
    supervisor.wait_up(45)
    supervisor.command("members", r"^members \(as a sees them; leader a\)")
    supervisor.command("add d", r"^added d in \d+\.\ds", timeout_s=60)
    supervisor.command("members", r"^  d +voter +incarnation \d+")
    supervisor.command("remove d", r"^removed d", timeout_s=30)
    supervisor.command("add a", r"^error: a is already a node of this cluster")
    supervisor.command("replace b", r"^replaced b in \d+\.\ds", timeout_s=60)
    supervisor.command("members", r"^  b +voter +incarnation \d+")
    supervisor.send("quit")
    assert supervisor.wait() == 1  # `add a` failed on purpose


def test_up_does_not_start_a_removed_member_and_fresh_forgets_the_added_ones(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, key=True)
    with Cluster(config, stop_grace_s=3) as cluster:
        membership = Membership(cluster)
        leader = cluster.wait_leader(15)
        gone = next(n for n in "abc" if n != leader)
        membership.remove(gone)
        membership.add("d")
        pids = set(cluster.pids().values())
    assert_gone(sorted(pids))
    with Cluster(config, stop_grace_s=3) as again:
        assert gone not in again.node_ids and set(again.pids()) == {*"abc", "d"} - {gone}
        writes(again, 3, "without")
        pids = set(again.pids().values())
    assert_gone(sorted(pids))
    with Cluster(config, stop_grace_s=3, fresh=True) as fresh:
        assert set(fresh.pids()) == set("abc")  # a new cluster: its initial members only
        assert not (fresh.data_dir / "d").exists()
        pids = set(fresh.pids().values())
    assert_gone(sorted(pids))
