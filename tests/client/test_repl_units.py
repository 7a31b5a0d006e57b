"""Small pieces of the client checked on their own: address parsing, the typed stub against
the service descriptor, completion, the toolbar text, message formatting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc.aio
import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from client.api import ChatClient, Message, parse_address, parse_servers
from client.errors import AddressError
from client.repl import (
    COMMANDS,
    _completer,
    _history,
    format_message,
    may_hold_password,
    toolbar_text,
)
from client.stub import SERVICE, ChatStub
from tests.client.conftest import logged_in, make_client
from tests.client.fakechat import FakeCluster


def test_addresses_are_checked_with_readable_errors() -> None:
    assert parse_servers("localhost:8001, 127.0.0.1:8002,") == [
        "localhost:8001",
        "127.0.0.1:8002",
    ]
    assert parse_address("[::1]:8001") == "[::1]:8001"
    for bad, problem in [
        ("localhost", "is not host:port"),
        (":8001", "is not host:port"),
        ("host:http", "port must be a number"),
        ("host:70000", "port must be a number"),
        ("::1:8001", "IPv6 host in brackets"),
    ]:
        with pytest.raises(AddressError, match=problem):
            parse_address(bad)
    with pytest.raises(AddressError, match="no server addresses"):
        parse_servers(" , ")
    with pytest.raises(AddressError, match="pinned client talks to one server"):
        ChatClient(["a:1", "b:2"], pinned=True)


async def test_the_typed_stub_has_every_method_of_the_service() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    try:
        stub = ChatStub(channel)
        for method in SERVICE.methods:
            assert hasattr(stub, method.name), method.name
    finally:
        await channel.close()


def completions(text: str, users: set[str]) -> list[str]:
    completer = _completer(SimpleNamespace(known_users=users))  # type: ignore[arg-type]
    found: Any = completer.get_completions(Document(text), CompleteEvent())
    return [completion.text for completion in found]


def test_completion_offers_commands_then_usernames() -> None:
    users = {"alice", "Albert", "bob"}
    assert completions("", users) == list(COMMANDS)
    assert completions("h", users) == ["history", "help"]
    assert completions("send al", users) == ["Albert", "alice"]
    assert completions("history ", users) == ["Albert", "alice", "bob"]
    assert completions("help de", users) == ["delete-account"]
    assert completions("send bob hel", users) == []
    assert completions("login al", users) == []


def test_a_line_that_may_hold_a_password_stays_out_of_the_history_file(tmp_path: Path) -> None:
    assert may_hold_password("login bob hunter2")
    assert may_hold_password("REGISTER bob hunter2")
    assert may_hold_password("delete-account hunter2")
    assert not may_hold_password("login bob")
    assert not may_hold_password("send bob my password is hunter2")
    history = _history(tmp_path / "history")
    for line in ("login bob", "login bob hunter2", "send bob hi"):
        history.append_string(line)
    text = (tmp_path / "history").read_text()
    assert "hunter2" not in text
    assert list(history.load_history_strings()) == ["send bob hi", "login bob"]


def test_messages_read_with_time_and_sender() -> None:
    message = Message(7, "alice", "bob", "hi there", 1_700_000_000_000)
    assert format_message(message).endswith("] alice: hi there")
    assert format_message(message, date=True).startswith("[2023-11-1")


async def test_the_toolbar_shows_user_node_leader_and_state() -> None:
    async with FakeCluster() as cluster:
        client = make_client(cluster)
        try:
            assert toolbar_text(client) == (" not logged in | node - | leader unknown | connecting")
            await client.close()
            alice = await logged_in(cluster, "alice")
            try:
                await alice.status("a")
                assert toolbar_text(alice) == " alice | node a | leader a | ok"
                await cluster.isolate("a", "b", "c")
                alice.start_send("alice", "later")
                wanted = " alice | node a | leader unknown | no majority | 1 pending"
                deadline = asyncio.get_running_loop().time() + 5
                while toolbar_text(alice) != wanted:  # poll: a loaded machine takes longer
                    assert asyncio.get_running_loop().time() < deadline, toolbar_text(alice)
                    await asyncio.sleep(0.05)
            finally:
                await alice.close()
        finally:
            await client.close()
