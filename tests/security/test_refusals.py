"""Refusals that cost the cluster nothing, against real nodes (issue 11):

- "Requests with an unknown token still reach the Raft log: 10,200 Logouts with random tokens
  added 10,200 entries": now a write that needs a session is refused before the log.
- "No limit on failed logins (30 wrong passwords in 1.7 s)": now the leader slows them down.
- "Subscribe buffers without bound ... There is no cap on streams per session."
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from client.api import ChatClient
from protos import chat_pb2 as pb
from protos import chat_pb2_grpc as pbg
from protos.vocabulary import new_session_token
from tests.node.conftest import NodeProcesses
from tests.node.test_node_process import Session

pytestmark = pytest.mark.cluster


def _metadata(err: grpc.aio.AioRpcError, key: str) -> list[str]:
    return [str(v) for k, v in err.trailing_metadata() or () if k == key]


def test_writes_with_unknown_sessions_never_reach_the_log(nodes: NodeProcesses) -> None:
    nodes.start_all()

    async def scenario() -> None:
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("victim")
        before = await nodes.status(leader)
        assert before is not None
        refused = 0
        for i in range(300):
            token = new_session_token()  # well formed, never issued
            calls = [
                s.stub.Logout(pb.LogoutRequest(request=s.rid(), token=token), timeout=5),
                s.stub.Send(
                    pb.SendRequest(request=s.rid(), token=token, recipient="victim", text=f"{i}"),
                    timeout=5,
                ),
                s.stub.Ack(pb.AckRequest(request=s.rid(), token=token, up_to_id=1), timeout=5),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
                refused += 1
        after = await nodes.status(leader)
        assert after is not None
        # Only the leader's own Ticks (one a second at most) may have been appended.
        assert after.last_index - before.last_index < 15, (refused, before, after)
        await s.close()

    asyncio.run(scenario())


def test_failed_logins_are_slowed_down_never_locked_out(nodes: NodeProcesses) -> None:
    nodes.start_all()

    async def scenario() -> None:
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("alice")
        wrong = pb.LoginRequest(username="alice", password="guess", token=new_session_token())
        for _ in range(5):
            wrong.request.CopyFrom(s.rid(anon=True))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await s.stub.Login(wrong, timeout=5)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        wrong.request.CopyFrom(s.rid(anon=True))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.stub.Login(wrong, timeout=5)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many failed logins" in (caught.value.details() or "")
        (retry_after,) = _metadata(caught.value, "x-chatbooth-retry-after-s")
        assert 1 <= int(retry_after) <= 60
        # Not a lock-out: after the wait the right password logs in.
        await asyncio.sleep(int(retry_after) + 0.2)
        login = pb.LoginRequest(
            request=s.rid(anon=True), username="alice", password="pw", token=new_session_token()
        )
        ok = await s.stub.Login(login, timeout=5)
        assert ok.username == "alice"
        await s.close()

    asyncio.run(scenario())


def test_a_client_cannot_name_its_own_host_to_dodge_the_login_limit(tmp_path: Path) -> None:
    """A follower forwarding a Login names the client's host in metadata; under `tls:
    plaintext` there is no certificate to tell a member from a client, so only a caller that
    presents the cluster key is believed. A client naming a new host each time is still
    limited as the host it is."""
    nodes = NodeProcesses(tmp_path, extra_yaml="tls: plaintext\n")
    try:
        nodes.start_all()

        async def scenario() -> None:
            leader = await nodes.wait_leader()
            s = await Session.open(nodes.channel(leader))  # plaintext
            await s.register_and_login("alice")
            codes = []
            for i in range(7):
                wrong = pb.LoginRequest(
                    request=s.rid(anon=True),
                    username="alice",
                    password="guess",
                    token=new_session_token(),
                )
                forged = (
                    ("x-chatbooth-forwarded", "1"),
                    ("x-chatbooth-client-peer", f"10.9.8.{i}"),
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await s.stub.Login(wrong, timeout=5, metadata=forged)
                codes.append(caught.value.code())
            assert codes[:5] == [grpc.StatusCode.UNAUTHENTICATED] * 5
            assert codes[5:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
            await s.close()
            # A member's forwarding, which presents the key, still works.
            follower = next(n for n in nodes.ids if n != leader)
            via = await Session.open(nodes.channel(follower))
            await via.register_and_login("bob")
            assert (await via.send("bob", "forwarded")).message_id > 0
            await via.close()

        asyncio.run(scenario())
    finally:
        nodes.close()


def test_a_session_may_hold_only_a_few_streams(nodes: NodeProcesses) -> None:
    nodes.start_all()

    async def scenario() -> None:
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("streamer")
        streams = [s.stub.Subscribe(pb.SubscribeRequest(token=s.token)) for _ in range(4)]
        await s.send("streamer", "hello")
        for stream in streams:
            assert (await stream.read()).text == "hello"
        fifth = s.stub.Subscribe(pb.SubscribeRequest(token=s.token))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await fifth.read()
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        for stream in streams:
            stream.cancel()
        await s.close()

    asyncio.run(scenario())


def test_a_subscriber_that_does_not_read_is_ended_and_the_client_resumes(
    nodes: NodeProcesses,
) -> None:
    """etcd ends slow watchers; so does a node, with where to resume, instead of buffering
    without bound. The client library resumes from its last acked id and loses nothing."""
    nodes.start_all()
    count = 1500

    async def scenario() -> None:
        leader = await nodes.wait_leader()
        s = await Session.open(nodes.channel(leader))
        await s.register_and_login("slow")
        # Its own channel with a fixed flow-control window (no BDP probing), so that what the
        # node cannot send really waits on the node, as with a slow reader far away.
        channel = nodes.channel(leader, options=[("grpc.http2.bdp_probe", 0)])
        stalled = pbg.ChatStub(channel).Subscribe(pb.SubscribeRequest(token=s.token))
        await s.send("slow", "0 opening")
        first = await stalled.read()  # the stream is open; from here on nobody reads it
        assert first is not grpc.aio.EOF
        text = "x" * 1000
        for i in range(1, count):
            await s.send("slow", f"{i} {text}")
        got = 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while True:
                message = await asyncio.wait_for(stalled.read(), 10)
                assert message is not grpc.aio.EOF
                got += 1
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _metadata(caught.value, "x-chatbooth-reason") == ["slow-consumer"]
        assert got < count  # it was cut off, not handed everything
        # The library's subscription resumes by itself and delivers each message once.
        ca = nodes.ca_path.read_bytes()
        async with ChatClient([nodes.address(n) for n in nodes.ids], ca=ca) as client:
            await client.login("slow", "pw")
            seen: list[int] = []
            async for m in client.subscribe():
                seen.append(int(m.text.split()[0]))
                if len(seen) == count:
                    break
            assert seen == list(range(count))
        await s.close()
        await channel.close()

    asyncio.run(scenario())
