"""A request id is bound to what it asked and to its session (issue 11): "Replaying a Login's
(client id, seq) with a wrong password, or as another user with no password, returned the
original user's token. A Send replayed with other text, another recipient, or another user's
token got the first reply, and its payload was silently dropped. Any logged-in user can send a
write under a victim's client id with first_outstanding = 2^63: every later write of the
victim then fails 'stale' for an hour." """

from __future__ import annotations

import asyncio

import grpc
import pytest

from protos import chat_pb2 as pb
from protos.vocabulary import new_session_token
from tests.node.conftest import NodeProcesses
from tests.node.test_node_process import Session, _drain
from tests.security.calls import refused

pytestmark = pytest.mark.cluster
HUGE = 2**63 - 1


def test_replays_with_other_content_or_another_session_arerefused(nodes: NodeProcesses) -> None:
    nodes.start_all()

    async def scenario() -> None:
        leader = await nodes.wait_leader()
        victim = await Session.open(nodes.channel(leader))
        await victim.register_and_login("victim")
        mallory = await Session.open(nodes.channel(leader))
        await mallory.register_and_login("mallory")

        # A Login replayed with a wrong password gets no session.
        login_rid = victim.rid(anon=True)
        victims = pb.LoginRequest(
            request=login_rid, username="victim", password="pw", token=new_session_token()
        )
        first = await victim.stub.Login(victims, timeout=5)
        assert first == pb.LoginReply(username="victim")  # a reply holds no secret to steal
        guess = pb.LoginRequest()
        guess.CopyFrom(victims)
        guess.password, guess.token = "guess", new_session_token()
        err = await refused(mallory.stub.Login(guess, timeout=5))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        # ... nor replayed as another user, nor for another session of the same user.
        for username, password in (("mallory", "pw"), ("victim", "pw")):
            replay = pb.LoginRequest(
                request=login_rid, username=username, password=password, token=new_session_token()
            )
            err = await refused(mallory.stub.Login(replay, timeout=5))
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "request id reused for a different request" in (err.details() or "")

        # A Send replayed with other text or another recipient is refused, not dropped.
        sent = victim.rid()
        await victim.stub.Send(
            pb.SendRequest(request=sent, token=victim.token, recipient="mallory", text="hi"),
            timeout=5,
        )
        for recipient, text in (("mallory", "changed"), ("victim", "hi")):
            err = await refused(
                victim.stub.Send(
                    pb.SendRequest(
                        request=sent, token=victim.token, recipient=recipient, text=text
                    ),
                    timeout=5,
                )
            )
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "request id reused for a different request" in (err.details() or "")
        # The same request again is a retry, answered from the table.
        await victim.stub.Send(
            pb.SendRequest(request=sent, token=victim.token, recipient="mallory", text="hi"),
            timeout=5,
        )

        # Mallory cannot write under the victim's client id, nor move its first_outstanding.
        foreign = pb.RequestId(client_id=victim.client_id, seq=HUGE, first_outstanding=HUGE)
        err = await refused(
            mallory.stub.Send(
                pb.SendRequest(request=foreign, token=mallory.token, recipient="victim", text="x"),
                timeout=5,
            )
        )
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "bound to another session" in (err.details() or "")
        await victim.send("mallory", "still mine")  # not refused as stale

        got = await _drain(nodes.channel(leader), mallory.token)
        assert [m.text for m in got] == ["hi", "still mine"]
        await victim.close()
        await mallory.close()

    asyncio.run(scenario())
