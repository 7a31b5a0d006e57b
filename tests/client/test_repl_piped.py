"""`python -m client` with stdin not a terminal: every command and its errors, as a script
would use them. The fake cluster runs as a separate process (the launcher in fakechat.py);
the client is a real subprocess.

What piped mode promises (client/repl.py): commands line by line, a password on the line
after login / delete-account and on both lines after register (or --password-file), plain
lines out, errors on
stderr, received messages printed as lines, a non-zero exit status if any command failed, and
no prompt_toolkit noise ("Input is not a terminal", escape codes).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from tests.client.conftest import ROOT, FakeServers, run_client

TIME = r"\d\d:\d\d:\d\d"
DATE_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_every_command_and_its_errors(fake_servers: FakeServers) -> None:
    servers = ["--servers", fake_servers.servers, "--plaintext"]  # the fakes: no TLS
    alice = run_client(
        servers,
        "\n".join(
            [
                "help",
                "help send",
                "help nope",
                "register alice",
                "pw",
                "pw",
                "logout",
                "register bob",
                "pw",
                "pw",
                "logout",
                "register ALICE",
                "pw",
                "pw",
                "register bad/name",
                "pw",
                "pw",
                "register two words",
                "register carl",
                "pw",
                "typo",
                "login alice",
                "wrong",
                "login alice",
                "pw",
                "login bob",
                "register dave",
                "whoami",
                "users",
                "users b*",
                "users zz*",
                "send bob hello   there",
                "send nobody hi",
                "send bob",
                "history bob",
                "history bob 1",
                "history bob x",
                "history",
                "servers",
                "bogus",
                "",
                "# a comment",
                "logout",
                "logout",
                "send bob not logged in",
                "quit",
                "whoami",  # after quit: never run
            ]
        )
        + "\n",
    )
    out, err = lines(alice.stdout), lines(alice.stderr)
    assert alice.returncode == 1, alice
    assert "Input is not a terminal" not in alice.stdout + alice.stderr
    assert "\x1b" not in alice.stdout + alice.stderr

    help_lines = [line for line in out if line.startswith("  ")]
    for usage in (
        "register NAME",
        "login NAME",
        "logout",
        "users [PATTERN]",
        "send NAME TEXT...",
        "history NAME [N]",
        "delete-account",
        "whoami",
        "servers",
        "help [COMMAND]",
        "quit",
    ):
        assert any(line.strip().startswith(usage) for line in help_lines), usage
    assert "send NAME TEXT...: send a message; shown pending until committed" in out
    assert out[out.index("registered alice") :][:6] == [
        "registered alice",
        "logged in as alice",  # register logs in
        "logged out",
        "registered bob",
        "logged in as bob",
        "logged out",
    ]
    logged_in = out.index("logged in as alice", out.index("registered bob"))
    assert out[logged_in + 1].startswith("alice; node a")  # whoami
    users = out.index("alice", logged_in + 2)
    # users; users b*: carl's passwords differed and dave's register was refused: no accounts
    assert out[users : users + 3] == ["alice", "bob", "bob"]
    assert "no accounts match 'zz*'" in out
    assert any(re.fullmatch(rf"sent to bob: #1 at {TIME}", line) for line in out)
    history = [line for line in out if re.match(rf"\[{DATE_TIME}\] alice: ", line)]
    assert [h.split("] ", 1)[1] for h in history] == ["alice: hello   there"] * 2
    servers_out = [line for line in out if re.match(r"[abc] 127\.0\.0\.1:\d+: ", line)]
    assert len(servers_out) == 3
    assert any(line.startswith("a ") and "leader, term" in line for line in servers_out)
    assert "logged out" in out
    last_logout = len(out) - 1 - out[::-1].index("logged out")
    assert not any(line.startswith("alice; ") for line in out[last_logout:])

    assert err == [
        "error: no command 'nope'; `help` lists the commands",
        "error: username 'ALICE' is already taken (as 'alice'); names are unique ignoring case",
        "error: username 'bad/name' may only contain letters, digits, '_', '.' and '-' "
        "(ASCII only; '/' is not allowed)",
        "error: usage: register NAME "
        "(the password is asked for on its own, never on the command line)",
        "error: the passwords differ: carl was not registered",
        "error: wrong username or password",
        "error: already logged in as alice: logout first",  # login bob
        "error: already logged in as alice: logout first",  # register dave
        "error: no account named 'nobody'",
        "error: usage: send NAME TEXT...",
        "error: usage: history NAME [N] (N must be a positive number, got 'x')",
        "error: usage: history NAME [N]",
        "error: unknown command 'bogus'; `help` lists the commands",
        "error: not logged in",
        "error: not logged in: log in first",
    ]

    bob = run_client(
        servers,
        "login bob\npw\nsleep 0.3\ndelete-account\nwrong\ndelete-account\npw\nwhoami\n",
    )
    out, err = lines(bob.stdout), lines(bob.stderr)
    assert bob.returncode == 1, bob
    assert out[0] == "logged in as bob"
    assert re.fullmatch(rf"\[{TIME}\] alice: hello   there", out[1])  # queued, then printed
    assert "account bob deleted" in out
    assert out[-1].startswith("not logged in; node ")
    assert err == ["error: wrong password"]

    # The message was shown and acknowledged: it is not delivered a second time.
    again = run_client(servers, "login alice\npw\nsleep 0.3\n")
    assert again.returncode == 0, again
    assert lines(again.stdout) == ["logged in as alice"]


def test_a_script_that_succeeds_exits_zero_with_a_password_file(
    fake_servers: FakeServers, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n", encoding="utf-8")
    config = fake_servers.cluster_yaml(tmp_path)
    result = run_client(
        ["--cluster", str(config), "--password-file", str(password)],
        "register carol\nsend carol note to self\nsleep 0.3\nhistory carol 5\n",
    )
    assert result.returncode == 0, result
    out = lines(result.stdout)
    assert out[:2] == ["registered carol", "logged in as carol"]
    assert re.fullmatch(rf"\[{TIME}\] carol: note to self", out[3]) or re.fullmatch(
        rf"\[{TIME}\] carol: note to self", out[2]
    )
    assert re.fullmatch(rf"\[{DATE_TIME}\] carol: note to self", out[-1])
    assert result.stderr == ""


def test_register_logs_in_once_the_password_is_typed_twice_alike(
    fake_servers: FakeServers,
) -> None:
    servers = ["--servers", fake_servers.servers, "--plaintext"]
    result = run_client(
        servers,
        "register erin\ns3cret\ns3cret\nwhoami\nsend erin note to self\nsleep 0.3\nlogout\n"
        "register frank\nfirst\nsecond\nwhoami\nlogin frank\nfirst\n",
    )
    out, err = lines(result.stdout), lines(result.stderr)
    assert result.returncode == 1, result
    assert out[:3] == ["registered erin", "logged in as erin", out[2]]
    assert out[2].startswith("erin; node ")  # whoami: logged in, no `login` needed
    shown, sent = sorted(out[3:5])  # the reply and the message itself, in either order
    assert re.fullmatch(rf"sent to erin: #\d+ at {TIME}", sent)
    assert re.fullmatch(rf"\[{TIME}\] erin: note to self", shown)  # erin's own inbox
    assert out[5] == "logged out"
    assert out[6].startswith("not logged in; node ")  # frank's passwords differed
    assert len(out) == 7
    assert err == [
        "error: the passwords differ: frank was not registered",
        "error: wrong username or password",  # so no account frank exists
    ]

    # `login` is for an account that exists: erin's, with the password register was given.
    again = run_client(servers, "login erin\ns3cret\nwhoami\n")
    assert again.returncode == 0, again
    assert lines(again.stdout)[0] == "logged in as erin"


def test_no_majority_is_reported_clearly_and_the_exit_status_says_so(
    fake_servers: FakeServers, tmp_path: Path
) -> None:
    config = fake_servers.cluster_yaml(tmp_path)
    fake_servers.command("isolate a b")
    fake_servers.command("kill c")
    started = time.monotonic()
    result = run_client(["--cluster", str(config), "--timeout", "0.6"], "register zed\npw\npw\n")
    assert time.monotonic() - started < 8
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert lines(result.stderr) == [
        "error: no leader: a, b answer 'no majority reachable'; c unreachable; "
        "register zed (request 1) is still pending: it is resent with the same request id "
        "until it is answered",
        "error: 1 write(s) still pending, outcome unknown: register zed (request 1)",
    ]
    assert "Traceback" not in result.stderr


def test_a_pinned_client_reports_its_node_and_does_not_fail_over(
    fake_servers: FakeServers,
) -> None:
    b = fake_servers.addresses["b"]
    a = fake_servers.addresses["a"]
    result = run_client(
        ["--server", b, "--plaintext", "--timeout", "0.6"], "register yves\npw\npw\nwhoami\n"
    )
    assert result.returncode == 1, result
    err = lines(result.stderr)
    assert err[0].startswith(
        f"error: cannot reach the leader: {b} answers 'not the leader' (leader: a at {a}) "
        f"(pinned to {b}: no failover); register yves (request 1) is still pending"
    )
    assert lines(result.stdout)[-1].endswith(", pinned, 1 pending")


CALL_TIMEOUT = ["--call-timeout", "0.8"]


def test_a_slow_send_shows_pending_then_sent(fake_servers: FakeServers) -> None:
    setup = run_client(
        ["--servers", fake_servers.servers, "--plaintext"],
        "register pat\npw\npw\nlogout\nregister quinn\npw\npw\n",
    )
    assert setup.returncode == 0, setup
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client",
            "--servers",
            fake_servers.servers,
            "--plaintext",
            *CALL_TIMEOUT,
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("login pat\npw\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "logged in as pat"
        fake_servers.command("pause a")  # a hangs; b takes over after the call deadline
        out, err = process.communicate("send quinn are you there\n", timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        fake_servers.command("resume a")
    assert process.returncode == 0, err
    out_lines = lines(out)
    assert out_lines[0] == "pending: to quinn: are you there"
    assert re.fullmatch(rf"sent to quinn: #\d+ at {TIME}", out_lines[1])


def test_bad_arguments_exit_2_with_a_readable_message(tmp_path: Path) -> None:
    missing = run_client(["--cluster", str(tmp_path / "nope.yaml")], "")
    assert missing.returncode == 2
    assert missing.stderr.startswith("chatbooth: ") and "no such file" in missing.stderr
    bad = run_client(["--servers", "localhost", "--plaintext"], "")
    assert bad.returncode == 2
    assert bad.stderr == "chatbooth: 'localhost' is not host:port\n"
