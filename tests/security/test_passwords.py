"""Passwords on real nodes (issue 11):
- "Login and DeleteAccount skip the password length limit (a 7 MB password gets hashed)":
  every call that takes a password now refuses one over the limit before hashing it.
- "Login for an unknown user answers in 1.7 ms, for an existing one with a wrong password in
  43 ms": an unknown user's login now costs one hash at the configured cost too.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import grpc
import pytest

from node.chat.validation import MAX_PASSWORD_CHARS
from protos import chat_pb2 as pb
from protos.vocabulary import new_session_token
from tests.node.conftest import NodeProcesses
from tests.node.test_node_process import Session
from tests.security.calls import refused

pytestmark = pytest.mark.cluster


def test_every_call_that_takes_a_password_refuses_an_oversized_one(nodes: NodeProcesses) -> None:
    nodes.start_all()

    async def scenario() -> None:
        s = await Session.open(nodes.channel(await nodes.wait_leader()))
        await s.register_and_login("alice")
        huge = "p" * (7 * 2**20)  # the 7 MB
        over = "p" * (MAX_PASSWORD_CHARS + 1)
        options = [("grpc.max_send_message_length", 16 * 2**20)]
        big = await Session.open(nodes.channel(await nodes.wait_leader(), options))
        for password in (over, huge):
            started = time.monotonic()
            calls = [
                big.stub.Register(
                    pb.RegisterRequest(request=s.rid(anon=True), username="bob", password=password),
                    timeout=10,
                ),
                big.stub.Login(
                    pb.LoginRequest(
                        request=s.rid(anon=True),
                        username="alice",
                        password=password,
                        token=new_session_token(),
                    ),
                    timeout=10,
                ),
                big.stub.DeleteAccount(
                    pb.DeleteAccountRequest(request=s.rid(), token=s.token, password=password),
                    timeout=10,
                ),
            ]
            for call in calls:
                err = await refused(call)
                assert err.code() in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,  # gRPC's own message limit, for 7 MB
                ), err
                if err.code() is grpc.StatusCode.INVALID_ARGUMENT:
                    assert str(MAX_PASSWORD_CHARS) in (err.details() or "")
            assert time.monotonic() - started < 5
        # alice is still there, with her own password
        assert (await s.send("alice", "still here")).message_id > 0
        await big.close()
        await s.close()

    asyncio.run(scenario())


def test_an_unknown_users_login_costs_as_much_as_a_wrong_password(tmp_path: Path) -> None:
    nodes = NodeProcesses(tmp_path)
    # A real cost (16 MiB a hash), so that a hash is far slower than a lookup.
    text = nodes.config.read_text()
    assert "scrypt: {n: 16, r: 8, p: 1}" in text
    nodes.config.write_text(text.replace("scrypt: {n: 16, r: 8", "scrypt: {n: 16384, r: 8"))
    try:
        nodes.start_all()

        async def scenario() -> tuple[list[float], list[float]]:
            s = await Session.open(nodes.channel(await nodes.wait_leader()))
            names = [f"user{i}" for i in range(5)]
            for name in names:
                await s.stub.Register(
                    pb.RegisterRequest(request=s.rid(anon=True), username=name, password="pw"),
                    timeout=30,
                )

            async def timed(username: str) -> float:
                started = time.perf_counter()
                login = pb.LoginRequest(
                    request=s.rid(anon=True),
                    username=username,
                    password="wrong",
                    token=new_session_token(),
                )
                err = await refused(s.stub.Login(login, timeout=30))
                assert err.code() is grpc.StatusCode.UNAUTHENTICATED
                assert err.details() == "wrong username or password"  # the same words too
                return time.perf_counter() - started

            known, unknown = [], []
            for name in names:  # one attempt per user: the failed-login limit stays out of it
                known.append(await timed(name))
                unknown.append(await timed(f"ghost-{name}"))
            await s.close()
            return known, unknown

        known, unknown = asyncio.run(scenario())
    finally:
        nodes.close()
    k, u = statistics.median(known), statistics.median(unknown)
    assert k > 0.005, f"a hash at this cost takes more than 5 ms ({k * 1000:.1f} ms)"
    assert u > 0.5 * k, f"unknown {u * 1000:.1f} ms against known {k * 1000:.1f} ms"
