"""The interactive REPL in a real terminal (a pty), with PROMPT_TOOLKIT_NO_CPR=1 (TRAPS.md,
prompt_toolkit): a message from another user appears above a half-typed line, and the line
survives, still being edited; the password is typed hidden and never reaches the history
file. (The bottom toolbar needs a cursor position report, which NO_CPR turns off: its text is
tested in test_repl_units.py.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.client.conftest import ROOT, FakeServers, run_client

# CSI and OSC sequences, charset selections and keypad modes: what prompt_toolkit draws with.
ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]"
)


class Terminal:
    """A process on a pty, with `expect` over its output stripped of escape codes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        self.process = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.raw = b""
        self.text = ""
        self.position = 0

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, pattern: str, timeout_s: float = 10.0) -> re.Match[str]:
        """The next match of pattern after the previous one, waiting for output."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            match = compiled.search(self.text, self.position)
            if match is not None:
                self.position = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{pattern!r} not seen within {timeout_s} s; after the last match: "
                    f"{self.text[self.position :]!r}"
                )
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the other side is closed
                    data = b""
                if not data:
                    raise AssertionError(f"{pattern!r} not seen before the process ended")
                self.raw += data
                self.text = ANSI.sub("", self.raw.decode("utf-8", "replace")).replace("\r", "")

    def wait(self, timeout_s: float = 10.0) -> int:
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                with contextlib.suppress(OSError):
                    self.raw += os.read(self.master, 65536)
        return self.process.wait(timeout=1)

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self.master)


def test_a_message_appears_above_the_half_typed_line_which_survives(
    fake_servers: FakeServers, tmp_path: Path
) -> None:
    servers = fake_servers.servers
    setup = run_client(
        ["--servers", servers, "--plaintext"],
        "register alice\npw\npw\nlogout\nregister bob\nhunter2\nhunter2\nlogout\n",
    )
    assert setup.returncode == 0, setup
    history = tmp_path / "history"
    env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", HOME=str(tmp_path))
    terminal = Terminal(
        [
            sys.executable,
            "-m",
            "client",
            "--servers",
            servers,
            "--plaintext",
            "--history-file",
            str(history),
        ],
        env,
    )
    try:
        # (Spaces at the end of a line are drawn as cursor moves, so patterns stop before.)
        terminal.expect("chatbooth>")
        terminal.send("login bob\r")
        terminal.expect("Password for bob:")
        terminal.send("hunter2\r")
        terminal.expect("logged in as bob")
        terminal.expect("chatbooth>")
        terminal.send("send al")
        terminal.expect("send al")

        sender = run_client(
            ["--servers", servers, "--plaintext"], "login alice\npw\nsend bob hello from alice\n"
        )
        assert sender.returncode == 0, sender
        terminal.expect(r"\[\d\d:\d\d:\d\d\] alice: hello from alice\n")
        terminal.expect(r"chatbooth>\s*send al")  # redrawn under the message, unbroken

        terminal.send("ice still here\r")  # finish the same line: `send alice still here`
        terminal.expect(r"sent to alice: #\d+ at \d\d:\d\d:\d\d")
        terminal.send("\x04")  # Ctrl-D leaves
        assert terminal.wait() == 0
    finally:
        terminal.close()

    assert "hunter2" not in terminal.raw.decode("utf-8", "replace")  # typed hidden
    entries = [line[1:] for line in history.read_text().splitlines() if line.startswith("+")]
    assert entries == ["login bob", "send alice still here"]  # the password never


def test_register_asks_for_the_password_twice_hidden_and_logs_in(
    fake_servers: FakeServers, tmp_path: Path
) -> None:
    history = tmp_path / "history"
    env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", HOME=str(tmp_path))
    terminal = Terminal(
        [
            sys.executable,
            "-m",
            "client",
            "--servers",
            fake_servers.servers,
            "--plaintext",
            "--history-file",
            str(history),
        ],
        env,
    )
    try:
        terminal.expect("chatbooth>")
        terminal.send("register dan\r")
        terminal.expect("Password for dan:")
        terminal.send("hunter2\r")
        terminal.expect(r"Password for dan \(again\):")
        terminal.send("hunter2\r")
        terminal.expect("registered dan")
        terminal.expect("logged in as dan")
        terminal.expect("chatbooth>")
        terminal.send("\x04")
        assert terminal.wait() == 0
    finally:
        terminal.close()

    assert "hunter2" not in terminal.raw.decode("utf-8", "replace")  # typed hidden, both times
    entries = [line[1:] for line in history.read_text().splitlines() if line.startswith("+")]
    assert entries == ["register dan"]
