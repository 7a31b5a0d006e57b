"""The Membership service on real node processes (issue 14): Members from any member, changes
from the tool certificate on the leader only, and the two ways a member comes back after it
was removed: with its old disk (another incarnation: refused, it never catches up) and empty,
with --join (it learns its incarnation, catches up and is promoted)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest

from node.config import PEERS_FILE, load_config, write_peers_file
from protos import membership_pb2 as pb
from protos import membership_pb2_grpc as pbg
from protos.vocabulary import LEADER_ID_KEY, RETRY_AFTER_KEY, metadata_value
from supervisor.certs import issue
from supervisor.ports import free_port
from tests.conftest import peer_channel
from tests.node.conftest import NodeProcesses
from tests.node.test_node_process import Session

pytestmark = pytest.mark.cluster


async def members(nodes: NodeProcesses, n: str) -> pb.MembersReply:
    async with peer_channel(nodes.config, n) as ch:
        return await pbg.MembershipStub(ch).Members(pb.MembersRequest(), timeout=5)


async def change(
    nodes: NodeProcesses, n: str, op: pb.ChangeOp.ValueType, node: str, certificate: str = "tool"
) -> pb.ChangeReply:
    async with peer_channel(nodes.config, n, certificate=certificate) as ch:
        return await pbg.MembershipStub(ch).ChangeMembership(
            pb.ChangeRequest(op=op, node_id=node), timeout=10
        )


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.1)


def roles(reply: pb.MembersReply) -> dict[str, str]:
    return {m.id: pb.Role.Name(m.role) for m in reply.members}


async def change_on_leader(
    nodes: NodeProcesses,
    op: pb.ChangeOp.ValueType,
    node: str,
    done: Callable[[pb.MembersReply], bool],
    timeout_s: float = 30,
) -> tuple[str, pb.MembersReply, bool]:
    """A change made as a tool must make it: on the leader, and when leadership moved
    meanwhile (a loaded machine), Members first, as the error says, then again on the new
    leader unless `done` says it took effect. Returns the leader, its membership, and whether
    that is the change's own answer (not Members after leadership moved)."""
    deadline = time.monotonic() + timeout_s
    while True:
        leader = await nodes.wait_leader()
        try:
            return leader, (await change(nodes, leader, op, node)).members, True
        except grpc.aio.AioRpcError as error:
            moved = error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
            if not moved or time.monotonic() > deadline:
                raise
        leader = await nodes.wait_leader()
        current = await members(nodes, leader)
        if done(current):
            return leader, current, False


async def test_members_from_any_member_and_changes_only_from_the_tool_on_the_leader(
    nodes: NodeProcesses,
) -> None:
    nodes.start_all()
    leader = await nodes.wait_leader()
    follower = next(n for n in nodes.ids if n != leader)

    async def follower_knows_the_leader() -> bool:  # a majority does; this one may lag
        return (await members(nodes, follower)).leader_id == leader

    await until(follower_knows_the_leader, f"{follower} hears from {leader}")
    seen = await members(nodes, follower)
    assert seen.node_id == follower and seen.leader_id == leader
    assert roles(seen) == {"a": "VOTER", "b": "VOTER", "c": "VOTER"}
    assert all(not m.has_progress for m in seen.members)  # progress is the leader's to know
    on_leader = await members(nodes, leader)
    assert all(m.has_progress and m.incarnation == 0 for m in on_leader.members)
    assert {m.id: m.client_address for m in on_leader.members} == {
        n: nodes.address(n) for n in nodes.ids
    }

    error = await refused(change(nodes, leader, pb.REMOVE, follower, certificate=follower))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED and "tool" in (error.details() or "")
    error = await refused(change(nodes, follower, pb.REMOVE, follower))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert metadata_value(error.trailing_metadata(), LEADER_ID_KEY) == leader
    error = await refused(change(nodes, leader, pb.REMOVE, "no such"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = await refused(change(nodes, leader, pb.PROMOTE, follower))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert f"{follower} is already a voter" in (error.details() or "")


async def test_a_removed_member_back_with_its_old_disk_is_another_incarnation_and_refused(
    nodes: NodeProcesses,
) -> None:
    """Remove c and add it again while the old c runs on: the configuration's c is a new
    incarnation (the index of the entry that added it), and the old c, with its old log and
    votes, is refused both ways: it never catches up, and it never counts."""
    nodes.start_all()
    first_leader = await nodes.wait_leader()
    gone = next(n for n in nodes.ids if n != first_leader)
    leader, after, _ = await change_on_leader(
        nodes, pb.REMOVE, gone, lambda m: gone not in roles(m)
    )
    assert gone not in roles(after)
    leader, after, answered = await change_on_leader(
        nodes, pb.ADD_LEARNER, gone, lambda m: gone in roles(m)
    )
    added = {m.id: m for m in after.members}[gone]
    assert added.role == pb.LEARNER and added.incarnation > 0
    if answered:  # the add's own answer: its entry is the last one
        assert added.incarnation == after.last_index
    s = await Session.open(nodes.channel(leader))
    await s.register_and_login("ida")
    await s.send("ida", "after the replace")
    await s.close()
    await asyncio.sleep(1.0)  # many heartbeats
    now = {m.id: m for m in (await members(nodes, leader)).members}[gone]
    assert now.match_index < added.incarnation  # the old c got nothing of the new c's log
    assert "refused" in nodes.log(leader) or "refused" in nodes.log(gone)
    error = await refused(change(nodes, leader, pb.ADD_LEARNER, gone))
    assert "already a learner" in (error.details() or "")


async def test_a_wiped_member_is_replaced_by_remove_then_join_then_add_and_promote(
    nodes: NodeProcesses,
) -> None:
    """The replace of a member that lost its disk, by hand: remove it, add it as a learner,
    start it empty with --join and the incarnation the add answered, wait until it caught up,
    promote it. The cluster commits with it as a voter."""
    nodes.start_all()
    leader = await nodes.wait_leader()
    lost = next(n for n in nodes.ids if n != leader)
    assert nodes.cluster is not None
    cluster_id = nodes.cluster.cluster_id
    s = await Session.open(nodes.channel(leader))
    await s.register_and_login("jo")
    for i in range(20):
        await s.send("jo", f"before {i}")
    nodes.kill(lost)
    shutil.rmtree(nodes.tmp / "data" / lost)
    await change(nodes, leader, pb.REMOVE, lost)
    reply = await change(nodes, leader, pb.ADD_LEARNER, lost)
    incarnation = {m.id: m for m in reply.members.members}[lost].incarnation
    assert incarnation == reply.members.last_index
    join = ("--join", cluster_id, "--incarnation", str(incarnation))
    refused_old = nodes.spawn_raw(lost, flags=("--join", cluster_id))  # no incarnation
    assert refused_old.wait(15) == 2
    raw = nodes.spawn_raw(lost, flags=join)

    async def caught_up() -> bool:
        view = {m.id: m for m in (await members(nodes, leader)).members}
        return view[lost].lag == 0

    await until(caught_up, f"{lost} catches up")
    reply = await change(nodes, leader, pb.PROMOTE, lost)
    assert roles(reply.members)[lost] == "VOTER"
    for i in range(5):
        await s.send("jo", f"after {i}")
    await s.close()
    assert "--join and --incarnation go together" in nodes.raw_log(lost)
    assert f'"incarnation":{incarnation}' in (nodes.tmp / "data" / lost / "MEMBER").read_text()
    assert raw.poll() is None
    raw.terminate()
    assert raw.wait(15) == 0


async def test_a_second_change_while_one_is_uncommitted_is_busy(nodes: NodeProcesses) -> None:
    """Thesis §4.1: one change at a time. With both followers frozen the first change cannot
    commit; a second one is refused as busy, with a hint to retry, before it reaches the log."""
    nodes.start_all()
    leader = await nodes.wait_leader()
    assert nodes.cluster is not None
    others = [n for n in nodes.ids if n != leader]
    for n in others:
        nodes.cluster.pause(n)
    try:
        first = asyncio.ensure_future(change(nodes, leader, pb.REMOVE, others[0]))
        await asyncio.sleep(0.05)  # well inside the election timeout: still the leader
        error = await refused(change(nodes, leader, pb.REMOVE, others[1]))
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert "not yet committed" in (error.details() or "")
        assert metadata_value(error.trailing_metadata(), RETRY_AFTER_KEY) is not None
    finally:
        for n in others:
            nodes.cluster.resume(n)
    # The first may commit, or the leader stepped down meanwhile (CheckQuorum): either way
    # it answered, and the membership holds at most one change.
    with contextlib.suppress(grpc.aio.AioRpcError):
        await first
    await nodes.wait_leader()
    assert len((await members(nodes, others[1])).members) >= 2


async def test_a_new_member_outside_cluster_yaml_joins_catches_up_and_votes(
    nodes: NodeProcesses,
) -> None:
    """Grow 3 to 4 by hand, as an operator would without the supervisor: a certificate from
    the cluster's CA, the new member's addresses in every node's peers file, the add as a
    learner, the node started empty with --join, the add's index as its incarnation and its
    own --address/--peer-address (it is in no cluster.yaml), then wait until it caught up and
    promote. The old members dial it from their peers
    file (reread at the configuration change), and writes commit with it as a voter."""
    nodes.start_all()
    leader = await nodes.wait_leader()
    assert nodes.cluster is not None
    config = load_config(nodes.config)
    files = config.tls
    assert files is not None
    issue(config, "d", ["127.0.0.1"], files.directory)
    port, peer_port = free_port(), free_port()
    d_peer, d_client = f"127.0.0.1:{peer_port}", f"127.0.0.1:{port}"
    for n in nodes.ids:
        write_peers_file(config.node_dir(n) / PEERS_FILE, {"d": (d_peer, d_client)})
    s = await Session.open(nodes.channel(leader))
    await s.register_and_login("kim")
    for i in range(30):
        await s.send("kim", f"before d {i}")
    reply = await change(nodes, leader, pb.ADD_LEARNER, "d")
    added = {m.id: m for m in reply.members.members}["d"]
    assert added.client_address == d_client
    raw = nodes.spawn_raw(
        "d",
        flags=(
            "--join",
            nodes.cluster.cluster_id,
            "--incarnation",
            str(added.incarnation),
            "--address",
            d_client,
            "--peer-address",
            d_peer,
        ),
    )

    async def caught_up() -> bool:
        view = {m.id: m for m in (await members(nodes, leader)).members}
        return view["d"].lag == 0 and view["d"].match_index > 30

    await until(caught_up, "d catches up")
    reply = await change(nodes, leader, pb.PROMOTE, "d")
    assert roles(reply.members) == {"a": "VOTER", "b": "VOTER", "c": "VOTER", "d": "VOTER"}
    for i in range(5):
        await s.send("kim", f"with d {i}")
    await s.close()
    view = {m.id: m for m in (await members(nodes, leader)).members}
    assert view["d"].lag == 0
    # d serves Members itself, and knows the leader
    async with peer_channel(nodes.config, "d", address=d_peer) as ch:
        seen = await pbg.MembershipStub(ch).Members(pb.MembersRequest(), timeout=5)
    assert seen.node_id == "d" and seen.leader_id == leader
    raw.terminate()
    assert raw.wait(15) == 0


def test_a_member_outside_cluster_yaml_must_say_where_it_serves(nodes: NodeProcesses) -> None:
    nodes.start_all()  # makes the CA
    config = load_config(nodes.config)
    assert config.tls is not None
    issue(config, "d", ["127.0.0.1"], config.tls.directory)
    raw = nodes.spawn_raw("d", flags=("--join", "x", "--incarnation", "9"))
    assert raw.wait(15) == 2
    assert "--address and --peer-address" in nodes.raw_log("d")
    raw = nodes.spawn_raw(
        "d", flags=("--bootstrap", "x", "--address", "127.0.0.1:1", "--peer-address", "127.0.0.1:2")
    )
    assert raw.wait(15) == 2
    assert "--bootstrap is for the members in" in nodes.raw_log("d")
