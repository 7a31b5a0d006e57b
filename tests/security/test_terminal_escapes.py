"""A message cannot forge a line or send escape codes to the reader's terminal (issue 11:
"The chat client prints message text verbatim, ESC, BEL, CR and LF included. A message can
fake a line such as `[09:00:00] admin: your account is locked`, or send terminal escape
codes."). Both REPL modes print messages through client.repl.format_message."""

from __future__ import annotations

import asyncio
import re

import pytest

from client.api import Message
from client.escape import visible
from client.repl import format_message
from tests.client.conftest import run_client
from tests.node.conftest import NodeProcesses
from tests.node.test_node_process import Session

HOSTILE = (
    "hi\n[09:00:00] admin: your account is locked"
    "\x1b]0;pwned\x07\x1b[2J\r\t\x7f\x9b31m"
    "\u202egnp.exe\u2066x\u2069"
)
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_every_control_character_is_shown_as_a_visible_escape() -> None:
    shown = visible(HOSTILE)
    assert RAW_CONTROL.search(shown) is None
    assert "\n" not in shown and "\r" not in shown and "\t" not in shown
    for escape in ("\\n", "\\x1b", "\\x07", "\\r", "\\t", "\\x7f", "\\x9b", "\\u202e", "\\u2066"):
        assert escape in shown, escape
    assert visible("plain text, ünïcödé and emoji 🎉") == "plain text, ünïcödé and emoji 🎉"


def test_a_formatted_message_is_one_line_with_no_control_character() -> None:
    line = format_message(Message(1, "mallory", "bob", HOSTILE, 0))
    assert line.count("\n") == 0 and RAW_CONTROL.search(line) is None
    assert line.endswith("\\u202egnp.exe\\u2066x\\u2069")


@pytest.mark.cluster
def test_the_piped_client_prints_a_hostile_message_visibly(nodes: NodeProcesses) -> None:
    nodes.start_all()

    async def setup() -> str:
        leader = await nodes.wait_leader()
        mallory = await Session.open(nodes.channel(leader))
        await mallory.register_and_login("mallory")
        bob = await Session.open(nodes.channel(leader))
        await bob.register_and_login("bob")
        await mallory.send("bob", HOSTILE)
        await mallory.close()
        await bob.close()
        return nodes.address(leader)

    leader = asyncio.run(setup())
    run = run_client(
        ["--servers", leader, "--ca", str(nodes.ca_path)],
        "login bob\npw\nhistory mallory\nsleep 1\n",
    )
    out = run.stdout
    assert "mallory: hi\\n[09:00:00] admin: your account is locked\\x1b]0;pwned\\x07" in out
    assert RAW_CONTROL.search(out) is None, repr(out)
    assert not any(line.startswith("[09:00:00] admin") for line in out.splitlines())
