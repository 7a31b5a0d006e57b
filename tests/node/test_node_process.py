"""Three real node processes: the chat service end to end, failover with a retried request id,
a full cold restart, and every start-up refusal. Timing bounds are generous (5x the maximum
election timeout); speed is the benchmark's business."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from pathlib import Path

import grpc
import pytest

from node.config import load_config, read_cluster_key
from protos import chat_pb2 as pb
from protos import chat_pb2_grpc as pbg
from protos import raft_pb2, raft_pb2_grpc
from protos.vocabulary import CLUSTER_ID_KEY, CLUSTER_KEY_KEY, new_session_token
from supervisor.cluster import NodeExitedError
from tests.conftest import peer_channel
from tests.node.conftest import NodeProcesses

pytestmark = pytest.mark.cluster

ELECTION_BOUND_S = 5 * 0.4  # 5x the default maximum election timeout


class Session:
    """A bare client with a request-id counter (the real client library is client/api.py)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel  # to a node's client port (NodeProcesses.channel: TLS)
        self.stub = pbg.ChatStub(self.channel)
        self.client_id = 0  # the client id writes use: bound to the session once logged in
        self.anon_id = 0  # the one for Register and Login
        self.seq = 0
        self.token = ""

    @classmethod
    async def open(cls, channel: grpc.aio.Channel) -> Session:
        """A session with a client id registered in the log (thesis §6.3)."""
        session = cls(channel)
        deadline = time.monotonic() + 10
        while True:
            try:
                reply = await session.stub.RegisterClient(pb.RegisterClientRequest(), timeout=5)
                break
            except grpc.aio.AioRpcError as err:  # a node that just started may know no leader
                if err.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        session.client_id = session.anon_id = reply.client_id
        return session

    def rid(self, seq: int | None = None, *, anon: bool = False) -> pb.RequestId:
        """The next request id; `anon` for Register and Login, whose client id must not be
        bound to a session."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        client_id = self.anon_id if anon else self.client_id
        return pb.RequestId(client_id=client_id, seq=seq, first_outstanding=seq)

    async def register_and_login(self, name: str) -> None:
        await self.stub.Register(
            pb.RegisterRequest(request=self.rid(anon=True), username=name, password="pw"),
            timeout=10,
        )
        token = new_session_token()
        await self.stub.Login(
            pb.LoginRequest(request=self.rid(anon=True), username=name, password="pw", token=token),
            timeout=10,
        )
        await self.bind(token)

    async def bind(self, token: str) -> None:
        """From here on write as the session `token`: with a client id bound to it (issue 11:
        a session's writes use a client id registered with its token)."""
        self.token = token
        reply = await self.stub.RegisterClient(pb.RegisterClientRequest(token=token), timeout=10)
        self.client_id = reply.client_id

    async def send(self, to: str, text: str, seq: int | None = None) -> pb.SendReply:
        return await self.stub.Send(
            pb.SendRequest(request=self.rid(seq), token=self.token, recipient=to, text=text),
            timeout=10,
        )

    async def close(self) -> None:
        await self.channel.close()


async def _drain(
    channel: grpc.aio.Channel, token: str, after: int = 0, wait_s: float = 1.0
) -> list[pb.ChatMessage]:
    async with channel as ch:
        call = pbg.ChatStub(ch).Subscribe(
            pb.SubscribeRequest(token=token, after_id=after), timeout=wait_s
        )
        got: list[pb.ChatMessage] = []
        try:
            async for m in call:
                got.append(m)
        except grpc.aio.AioRpcError as err:
            if err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        return got


def test_register_login_send_subscribe_ack(nodes: NodeProcesses) -> None:
    async def scenario() -> None:
        nodes.start_all()
        leader = await nodes.wait_leader()
        follower = next(n for n in nodes.ids if n != leader)
        alice, bob = (
            await Session.open(nodes.channel(follower)),
            await Session.open(nodes.channel(leader)),
        )
        await alice.register_and_login("alice")  # through a follower: forwarded
        await bob.register_and_login("bob")
        ids = [(await alice.send("bob", f"m{i}")).message_id for i in range(5)]
        assert ids == sorted(ids) and len(set(ids)) == 5
        got = await _drain(nodes.channel(leader), bob.token)
        assert [m.text for m in got] == [f"m{i}" for i in range(5)]
        assert all(m.sender == "alice" for m in got)
        await bob.stub.Ack(
            pb.AckRequest(request=bob.rid(), token=bob.token, up_to_id=ids[2]), timeout=10
        )
        got = await _drain(nodes.channel(leader), bob.token)
        assert [m.text for m in got] == ["m3", "m4"]
        # live delivery: a stream open before the send gets it at once
        async with nodes.channel(leader) as ch:
            call = pbg.ChatStub(ch).Subscribe(
                pb.SubscribeRequest(token=bob.token, after_id=ids[-1]), timeout=10
            )
            await asyncio.sleep(0.3)
            await alice.send("bob", "live")
            first = await asyncio.wait_for(call.read(), 5)
            assert first.text == "live"
            call.cancel()
        listed = await alice.stub.ListAccounts(
            pb.ListAccountsRequest(token=alice.token), timeout=10
        )
        assert list(listed.usernames) == ["alice", "bob"]
        hist = await alice.stub.History(
            pb.HistoryRequest(token=alice.token, other="bob"), timeout=10
        )
        assert [m.text for m in hist.messages][-1] == "live"
        await alice.close()
        await bob.close()

    asyncio.run(scenario())


def test_errors_are_status_codes_a_person_can_read(nodes: NodeProcesses) -> None:
    async def scenario() -> None:
        nodes.start_all()
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("carol")
        cases = [
            (lambda: s.send("nobody", "hi"), grpc.StatusCode.NOT_FOUND, "nobody"),
            (lambda: s.send("carol", ""), grpc.StatusCode.INVALID_ARGUMENT, ""),
            (lambda: s.send("carol", "x" * 4097), grpc.StatusCode.INVALID_ARGUMENT, "4096"),
            (
                lambda: s.stub.Register(
                    pb.RegisterRequest(request=s.rid(anon=True), username="Carol", password="x"),
                    timeout=10,
                ),
                grpc.StatusCode.ALREADY_EXISTS,
                "",
            ),
            (
                lambda: s.stub.Login(
                    pb.LoginRequest(
                        request=s.rid(anon=True),
                        username="carol",
                        password="wrong",
                        token=new_session_token(),
                    ),
                    timeout=10,
                ),
                grpc.StatusCode.UNAUTHENTICATED,
                "password",
            ),
            (
                lambda: s.stub.Send(
                    pb.SendRequest(request=s.rid(), token="bogus", recipient="carol", text="x"),
                    timeout=10,
                ),
                grpc.StatusCode.UNAUTHENTICATED,
                "",
            ),
            (
                lambda: s.stub.Register(
                    pb.RegisterRequest(
                        request=s.rid(anon=True), username="bad name!", password="x"
                    ),
                    timeout=10,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad name!",
            ),
        ]
        for call, code, words in cases:  # one at a time: request ids in order
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call()
            assert err.value.code() is code, err.value.details()
            assert words in (err.value.details() or "")
        await s.close()

    asyncio.run(scenario())


def test_leader_sigkill_then_retry_with_the_same_request_id_applies_once(
    nodes: NodeProcesses,
) -> None:
    async def scenario() -> None:
        nodes.start_all()
        leader = await nodes.wait_leader()
        others = [n for n in nodes.ids if n != leader]
        a = await Session.open(nodes.channel(others[0]))
        await a.register_and_login("dave")
        first = await a.send("dave", "once")
        nodes.kill(leader)
        started = time.monotonic()
        new_leader = await nodes.wait_leader(among=others)
        assert time.monotonic() - started < ELECTION_BOUND_S
        # The same request id, retried on whichever node leads now (leadership may move
        # again on a loaded machine: UNAVAILABLE means "try again", never "failed").
        retry = await Session.open(nodes.channel(new_leader))
        retry.client_id, retry.token = a.client_id, a.token
        deadline = time.monotonic() + 10
        while True:
            try:
                again = await retry.send("dave", "once", seq=a.seq)
                break
            except grpc.aio.AioRpcError as err:
                assert err.code() is grpc.StatusCode.UNAVAILABLE, err.details()
                assert time.monotonic() < deadline
                await retry.close()
                retry = await Session.open(nodes.channel(await nodes.wait_leader(among=others)))
                retry.client_id, retry.token = a.client_id, a.token
        assert again.message_id == first.message_id
        leader_now = await nodes.wait_leader(among=others)
        got = await _drain(nodes.channel(leader_now), a.token)
        assert [m.text for m in got] == ["once"]
        await a.close()
        await retry.close()

    asyncio.run(scenario())


def test_full_stop_and_cold_restart_keeps_every_acknowledged_message(
    nodes: NodeProcesses,
) -> None:
    async def scenario() -> list[int]:
        nodes.start_all()
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("erin")
        acked = [(await s.send("erin", f"keep {i}")).message_id for i in range(20)]
        await s.close()
        return acked

    acked = asyncio.run(scenario())
    for n in list(nodes.ids):
        assert nodes.stop(n) == 0, nodes.log(n)

    async def after() -> None:
        nodes.start_all()
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        token = new_session_token()
        await s.stub.Login(
            pb.LoginRequest(request=s.rid(anon=True), username="erin", password="pw", token=token),
            timeout=10,
        )
        got = await _drain(nodes.channel(leader), token)
        assert [m.id for m in got] == acked
        deadline = time.monotonic() + 10
        while True:
            statuses = [await nodes.status(n, digest=True) for n in nodes.ids]
            applied = {st.applied_index for st in statuses if st}
            digests = {st.state_digest for st in statuses if st}
            if len(applied) == 1 and len(digests) == 1 and len(statuses) == 3:
                break
            assert time.monotonic() < deadline, statuses
            await asyncio.sleep(0.1)
        await s.close()

    asyncio.run(after())


def test_no_majority_answers_unavailable_within_an_election_timeout(nodes: NodeProcesses) -> None:
    async def scenario() -> None:
        nodes.start_all()
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("fred")
        for n in nodes.ids:
            if n != leader:
                nodes.kill(n)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.send("fred", "nobody hears this")
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < ELECTION_BOUND_S
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.send("fred", "still nobody")
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no majority reachable" in (err.value.details() or "")
        await s.close()

    asyncio.run(scenario())


def test_raft_rpcs_without_the_cluster_key_are_refused(nodes: NodeProcesses) -> None:
    async def scenario() -> None:
        nodes.start_all()
        await nodes.wait_serving("a")
        # On the peer port with b's own certificate: the key is a second check.
        async with peer_channel(nodes.config, "a", certificate="b") as ch:
            stub = raft_pb2_grpc.RaftStub(ch)

            async def batches():  # type: ignore[no-untyped-def]
                yield raft_pb2.MessageBatch(cluster="test")

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Stream(batches(), timeout=5)
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED

    asyncio.run(scenario())


def test_a_second_node_on_a_used_port_or_data_dir_refuses_to_start(nodes: NodeProcesses) -> None:
    nodes.start_all()
    second = nodes.spawn_raw("a")  # same id: same port and same data directory
    assert second.wait(15) == 3  # the data directory lock is checked first
    assert "in use by another process" in nodes.raw_log("a")
    # a different data dir but the same port
    other = dataclasses.replace(
        load_config(nodes.config),
        data_dir=nodes.tmp / "data2",
        tls_dir=nodes.tmp / "data" / "tls",  # the same certificates
    )
    # (a new data directory: it forms a cluster of its own, as --bootstrap says, or it would
    # exit as a member that lost its data before it tried the port)
    third = nodes.spawn_raw("a", config=other, flags=("--bootstrap", "another"))
    assert third.wait(15) == 4
    assert "cannot listen on" in nodes.raw_log("a")


def test_a_node_whose_data_was_wiped_exits_naming_replace_and_the_others_serve_on(
    nodes: NodeProcesses,
) -> None:
    """Issue 14: a member that lost its data never comes back silently as the member it was
    (it may have voted, and acknowledged entries, that its empty disk no longer holds)."""

    async def scenario() -> None:
        nodes.start_all()
        leader = await nodes.wait_leader()
        follower = next(n for n in nodes.ids if n != leader)
        nodes.stop(follower)
        shutil.rmtree(nodes.tmp / "data" / follower)
        with pytest.raises(NodeExitedError) as exited:
            nodes.start(follower)
        assert exited.value.exit.exit_code == 5
        assert "not a member" in exited.value.exit.describe()
        log = nodes.log(follower)
        assert f"replace {follower}" in log and "lost its data" in log
        assert not (nodes.tmp / "data" / follower / "MEMBER").exists()
        # The other two still commit writes.
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("hal")
        reply = await s.send("hal", "still here")
        assert reply.message_id > 0
        await s.close()

    asyncio.run(scenario())


def test_a_data_directory_of_another_cluster_refuses_to_start(nodes: NodeProcesses) -> None:
    nodes.start_all()
    nodes.stop("b")
    member = (nodes.tmp / "data" / "b" / "MEMBER").read_text()
    assert nodes.cluster is not None and nodes.cluster.cluster_id in member
    raw = nodes.spawn_raw("b", flags=("--bootstrap", "0123456789abcdef"))
    assert raw.wait(15) == 2
    assert "belongs to the cluster with id" in nodes.raw_log("b")
    nodes.start("b")  # with no flag, as a member of the cluster its directory records


def test_raft_calls_from_another_cluster_id_are_refused(nodes: NodeProcesses) -> None:
    """Same name, CA and key, another cluster id (a data directory of an earlier `up --fresh`
    with the key in cluster.yaml): no Raft message is taken from it."""

    async def scenario() -> None:
        nodes.start_all()
        await nodes.wait_serving("a")
        key = read_cluster_key(load_config(nodes.config)).decode()
        async with peer_channel(nodes.config, "a", certificate="b") as ch:
            stub = raft_pb2_grpc.RaftStub(ch)

            async def batches():  # type: ignore[no-untyped-def]
                yield raft_pb2.MessageBatch(cluster="test")

            metadata = ((CLUSTER_KEY_KEY, key), (CLUSTER_ID_KEY, "0123456789abcdef"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Stream(batches(), metadata=metadata, timeout=5)
            assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "different clusters" in (err.value.details() or "")

    asyncio.run(scenario())


def test_a_corrupted_log_stops_its_node_with_a_clear_error(nodes: NodeProcesses) -> None:
    async def scenario() -> None:
        nodes.start_all()
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("gina")
        for i in range(10):
            await s.send("gina", f"m{i}")
        await s.close()

    asyncio.run(scenario())
    for n in list(nodes.ids):
        nodes.stop(n)
    wal_dir = nodes.tmp / "data" / "b" / "wal"
    segment = sorted(wal_dir.iterdir())[-1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 3] ^= 0xFF  # a flipped bit with valid records after it
    segment.write_bytes(bytes(data))
    with pytest.raises(NodeExitedError) as exited:
        nodes.start("b")
    assert exited.value.exit.exit_code == 3
    log = nodes.log("b")
    assert segment.name in log and "offset" in log


def test_a_follower_behind_the_compacted_log_is_restored_by_install_snapshot(
    tmp_path: Path,
) -> None:
    nodes = NodeProcesses(tmp_path, extra_yaml="snapshot: {entries: 20}\n")

    async def scenario() -> None:
        nodes.start_all()
        leader = await nodes.wait_leader()
        lagging = next(n for n in nodes.ids if n != leader)
        nodes.kill(lagging)
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("hank")
        for i in range(60):
            await s.send("hank", f"m{i}")
        st = await nodes.status(leader)
        assert st is not None and st.snapshot_index > 20  # the log was compacted
        nodes.start(lagging)
        deadline = time.monotonic() + 15
        while True:
            mine = await nodes.status(lagging, digest=True)
            theirs = await nodes.status(leader, digest=True)
            if mine and theirs and mine.applied_index == theirs.applied_index:
                assert mine.state_digest == theirs.state_digest
                break
            assert time.monotonic() < deadline, (mine, theirs)
            await asyncio.sleep(0.1)
        assert "installed snapshot" in nodes.log(lagging)
        await s.close()

    try:
        asyncio.run(scenario())
    finally:
        nodes.close()


def test_subscription_ends_with_unavailable_when_the_leader_steps_down(
    nodes: NodeProcesses,
) -> None:
    async def scenario() -> None:
        nodes.start_all()
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("ivy")
        async with nodes.channel(leader) as ch:
            call = pbg.ChatStub(ch).Subscribe(pb.SubscribeRequest(token=s.token), timeout=20)
            await s.send("ivy", "the stream is live")  # once it arrives, the stream is open
            first = await asyncio.wait_for(call.read(), 10)
            assert first.text == "the stream is live"
            for n in nodes.ids:
                if n != leader:
                    nodes.kill(n)  # CheckQuorum: the leader steps down
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while True:  # the stream must end with a status, never a clean EOF
                    assert await call.read() is not grpc.aio.EOF
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "resubscribe" in (err.value.details() or "")
        await s.close()

    asyncio.run(scenario())


def test_sigterm_exits_zero_and_logs_role_changes(nodes: NodeProcesses) -> None:
    async def scenario() -> str:
        nodes.start_all()
        return await nodes.wait_leader()

    leader = asyncio.run(scenario())
    assert f"{leader} became leader at term" in nodes.log(leader)
    for n in list(nodes.ids):
        assert nodes.stop(n) == 0


def test_retried_delete_account_and_login_get_their_first_answer(nodes: NodeProcesses) -> None:
    """Thesis §6.3: a retry of an applied request gets the first reply, even when the first
    attempt changed what the accepting node would pre-check (the account is gone)."""

    async def scenario() -> None:
        nodes.start_all()
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("jill")
        login = pb.LoginRequest(
            request=s.rid(anon=True), username="jill", password="pw", token=new_session_token()
        )
        first = await s.stub.Login(login, timeout=10)
        again = await s.stub.Login(login, timeout=10)  # the retry opens the same one session
        assert again == first
        rid = s.rid()
        request = pb.DeleteAccountRequest(request=rid, token=s.token, password="pw")
        await s.stub.DeleteAccount(request, timeout=10)
        await s.stub.DeleteAccount(request, timeout=10)  # the retry: OK again, not refused
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.Login(
                pb.LoginRequest(
                    request=s.rid(anon=True),
                    username="jill",
                    password="pw",
                    token=new_session_token(),
                ),
                timeout=10,
            )
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        await s.close()

    asyncio.run(scenario())
