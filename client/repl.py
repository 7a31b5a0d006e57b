"""The chat REPL behind `python -m client`: commands over a ChatClient, in two front ends.

- In a terminal: prompt_toolkit (`prompt_async` inside `patch_stdout`), so that messages
  arriving while the user types are printed above the prompt and the half-typed line survives;
  completion of commands and usernames; a persistent FileHistory; a bottom toolbar with the
  user, the node, the leader and the connection state. Passwords are read with
  `is_password=True` by a separate prompt whose history is never written anywhere.
- Piped (stdin not a terminal): the same commands, one per line, with a password on the line
  after `login` and `delete-account`, and on each of the two lines after `register` (or every
  one from --password-file); plain lines out, errors on stderr, and a non-zero exit status if
  any command failed. No prompt_toolkit object is created in this mode (the caller decides the
  mode first).

`register NAME` creates the account and logs in to it (the password asked twice, and nothing
done unless both agree); `login NAME` is for an account that exists.

A wrong command prints its usage; a server's refusal prints its message; nothing escapes a
command to crash the REPL.

Imports client.api, client.errors, client.escape and client.lines, prompt_toolkit (terminal
mode only); never node.*.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from client.api import ChatClient, Message, PendingWrite, SendResult, Subscription
from client.errors import ChatClientError, ServerError, UnavailableError
from client.escape import visible
from client.lines import LineReader

if TYPE_CHECKING:
    from prompt_toolkit.completion import CompleteEvent, Completion
    from prompt_toolkit.document import Document

logger = logging.getLogger(__name__)

PROMPT = "chatbooth> "
# How long a send may take before it is shown as pending (it is still awaited after that).
SHOW_PENDING_AFTER_S = 0.5
HISTORY_DEFAULT = 20
# How long stopping the message stream waits for the ack of what was shown.
ACK_FLUSH_S = 3.0


@dataclass(frozen=True, slots=True)
class CommandHelp:
    usage: str
    summary: str


COMMANDS: dict[str, CommandHelp] = {
    "register": CommandHelp(
        "register NAME", "create an account and log in (asks for a password twice)"
    ),
    "login": CommandHelp("login NAME", "log in to an account (asks for the password, hidden)"),
    "logout": CommandHelp("logout", "log out"),
    "users": CommandHelp("users [PATTERN]", "list accounts, optionally matching al*, ?ob, [ab]*"),
    "send": CommandHelp("send NAME TEXT...", "send a message; shown pending until committed"),
    "history": CommandHelp(
        "history NAME [N]", f"the last N (default {HISTORY_DEFAULT}) messages with NAME"
    ),
    "delete-account": CommandHelp("delete-account", "delete your account (asks for the password)"),
    "whoami": CommandHelp("whoami", "who you are, the node you talk to, the leader"),
    "servers": CommandHelp("servers", "every node with its role, term, leader and indexes"),
    "help": CommandHelp("help [COMMAND]", "list the commands, or explain one"),
    "quit": CommandHelp("quit", "leave (Ctrl-D does too)"),
    "sleep": CommandHelp("sleep SECONDS", "wait, printing messages that arrive (for scripts)"),
}


class UsageError(Exception):
    """A command given the wrong arguments; the message says which, if more than its usage."""


def format_time(timestamp_ms: int, *, date: bool = False) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def format_message(message: Message, *, date: bool = False) -> str:
    """One message as a line; what other users wrote is shown with visible escapes, so it can
    neither send codes to the terminal nor fake a line of its own (client/escape.py)."""
    when = format_time(message.timestamp_ms, date=date)
    return f"[{when}] {visible(message.sender)}: {visible(message.text)}"


class Output:
    """Where the REPL writes: stdout for results and messages; errors to stderr when piped.

    Streams are looked up at every write, so that patch_stdout's replacements are used."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive

    def info(self, text: str) -> None:
        self._write(sys.stdout, text)

    def error(self, text: str) -> None:
        self._write(sys.stdout if self.interactive else sys.stderr, f"error: {text}")

    def message(self, message: Message) -> None:
        self._write(sys.stdout, format_message(message))

    def _write(self, stream: TextIO, text: str) -> None:
        print(text, file=stream, flush=True)


PasswordReader = Callable[[str], Awaitable[str | None]]


class Repl:
    """The commands, whatever reads the lines. `execute(line)` never raises (but for
    cancellation); `failed` says whether any command failed."""

    def __init__(
        self,
        client: ChatClient,
        out: Output,
        read_password: PasswordReader,
        *,
        pending_report_s: float = SHOW_PENDING_AFTER_S,
    ) -> None:
        self.client = client
        self.out = out
        self.read_password = read_password
        self.pending_report_s = pending_report_s
        self.failed = False
        self.known_users: set[str] = set()
        self._subscription: Subscription | None = None
        self._printer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Callable[[str, list[str]], Awaitable[bool | None]]] = {
            "register": self._register,
            "login": self._login,
            "logout": self._logout,
            "users": self._users,
            "send": self._send,
            "history": self._history,
            "delete-account": self._delete_account,
            "whoami": self._whoami,
            "servers": self._servers,
            "help": self._help,
            "quit": self._quit,
            "exit": self._quit,
            "sleep": self._sleep,
        }

    async def execute(self, line: str) -> bool:
        """Run one command line; False once the user asked to quit."""
        words = line.split()
        if not words or words[0].startswith("#"):
            return True
        name = words[0].lower()
        handler = self._handlers.get(name)
        if handler is None:
            self._fail(f"unknown command {words[0]!r}; `help` lists the commands")
            return True
        try:
            return await handler(line, words[1:]) is not False
        except UsageError as error:
            usage = COMMANDS["quit" if name == "exit" else name].usage
            self._fail(f"usage: {usage}" + (f" ({error})" if str(error) else ""))
        except ChatClientError as error:
            self._fail(str(error))
        except Exception as error:
            logger.exception("command %r failed", line)
            self._fail(f"internal error in {name}: {error!r}")
        return True

    async def finish(self, timeout_s: float | None = None) -> None:
        """Before leaving: ack what was shown, wait (a while) for pending writes, close."""
        await self._stop_messages(ack=True)
        try:
            still = await self.client.flush(timeout_s)
        except ChatClientError:
            still = self.client.pending_writes
        if still:
            self._fail(
                f"{len(still)} write(s) still pending, outcome unknown: "
                + ", ".join(f"{p.what} (request {p.seq})" for p in still)
            )
        if self._background:
            # Let reports of writes that the flush settled print, then stop the rest.
            await asyncio.wait(set(self._background), timeout=0.1)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.client.close()

    def _fail(self, text: str) -> None:
        self.failed = True
        self.out.error(text)

    def _background_task(self, coroutine: Awaitable[None]) -> None:
        async def run() -> None:
            await coroutine

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- messages ------------------------------------------------------------------------

    def _start_messages(self) -> None:
        if self._subscription is not None or not self.client.logged_in:
            return
        subscription = self.client.subscribe()
        self._subscription = subscription
        self._printer = asyncio.get_running_loop().create_task(self._print(subscription))

    async def _print(self, subscription: Subscription) -> None:
        try:
            async for message in subscription:
                # Printed before the next message is asked for: asking acks this one.
                self.known_users.add(message.sender)
                self.out.message(message)
        except ChatClientError as error:
            self.out.error(f"message stream ended: {error}")
            if self._subscription is subscription:
                self._subscription = None
        except Exception as error:
            logger.exception("message stream failed")
            self.out.error(f"message stream failed: {error!r}")

    async def _stop_messages(self, *, ack: bool) -> None:
        printer, self._printer = self._printer, None
        subscription, self._subscription = self._subscription, None
        if printer is not None:
            printer.cancel()
            await asyncio.gather(printer, return_exceptions=True)
        if subscription is not None:
            await subscription.aclose(ack=ack, timeout_s=ACK_FLUSH_S)

    async def _learn_users(self) -> None:
        try:
            self.known_users.update(await self.client.list_accounts(limit=1000))
        except ChatClientError as error:
            logger.info("could not list accounts for completion: %s", error)

    # --- commands ------------------------------------------------------------------------

    async def _password(self, prompt: str) -> str:
        password = await self.read_password(prompt)
        if not password:
            raise UsageError("no password given")
        return password

    async def _register(self, line: str, args: list[str]) -> None:
        """Create the account and log in to it: the password twice (a typo in a hidden
        password would otherwise lock its owner out of the new account), then Register and
        Login with it."""
        if len(args) != 1:
            raise UsageError("the password is asked for on its own, never on the command line")
        username = args[0]
        if self.client.logged_in:
            self._fail(f"already logged in as {self.client.username}: logout first")
            return
        password = await self._password(f"Password for {username}: ")
        again = await self._password(f"Password for {username} (again): ")
        if again != password:
            self._fail(f"the passwords differ: {username} was not registered")
            return
        try:
            await self.client.register(username, password)
        except UnavailableError as error:
            self._when_settled(error, f"registered {username}; log in with: login {username}")
            raise
        self.known_users.add(username)
        self.out.info(f"registered {username}")
        await self._log_in(username, password)

    async def _login(self, line: str, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError("the password is asked for on its own, never on the command line")
        if self.client.logged_in:
            self._fail(f"already logged in as {self.client.username}: logout first")
            return
        await self._log_in(args[0], await self._password(f"Password for {args[0]}: "))

    async def _log_in(self, username: str, password: str) -> None:
        try:
            name = await self.client.login(username, password)
        except UnavailableError as error:
            self._when_settled(error, f"logged in as {username}", self._start_messages)
            raise
        self.out.info(f"logged in as {name}")
        self._start_messages()
        self._background_task(self._learn_users())

    async def _logout(self, line: str, args: list[str]) -> None:
        if args:
            raise UsageError
        if not self.client.logged_in:
            self._fail("not logged in")
            return
        await self._stop_messages(ack=True)
        try:
            await self.client.logout()
        except ServerError:
            self._start_messages()
            raise
        except UnavailableError as error:
            self._when_settled(error, "logged out")
            raise
        self.out.info("logged out")

    async def _delete_account(self, line: str, args: list[str]) -> None:
        if args:
            raise UsageError
        if not self.client.logged_in:
            self._fail("not logged in")
            return
        username = self.client.username
        password = await self._password(f"Password for {username} (the account is deleted): ")
        await self._stop_messages(ack=True)
        try:
            await self.client.delete_account(password)
        except ServerError:
            self._start_messages()
            raise
        except UnavailableError as error:
            self._when_settled(error, f"account {username} deleted")
            raise
        self.out.info(f"account {username} deleted")

    async def _users(self, line: str, args: list[str]) -> None:
        if len(args) > 1:
            raise UsageError
        pattern = args[0] if args else ""
        names = await self.client.list_accounts(pattern)
        self.known_users.update(names)
        if not names:
            self.out.info(f"no accounts match {pattern!r}" if pattern else "no accounts")
        for name in names:
            self.out.info(name)

    async def _send(self, line: str, args: list[str]) -> None:
        parts = line.split(maxsplit=2)
        if len(parts) < 3:
            raise UsageError
        recipient, text = parts[1], parts[2]
        pending = self.client.start_send(recipient, text)
        self.known_users.add(recipient)
        if not await pending.wait_done(self.pending_report_s):
            self.out.info(f"pending: to {recipient}: {text}")
            if self.out.interactive:
                # The prompt comes back at once; the outcome is printed when it is known.
                self._background_task(self._report_later(pending, recipient))
                return
        result = await pending.wait()
        self.out.info(self._sent(recipient, result))

    def _sent(self, recipient: str, result: SendResult) -> str:
        return f"sent to {recipient}: #{result.message_id} at {format_time(result.timestamp_ms)}"

    async def _report_later(self, pending: PendingWrite[SendResult], recipient: str) -> None:
        try:
            result = await pending
        except ChatClientError as error:
            self._fail(f"send to {recipient}: {error}")
        else:
            self.out.info(self._sent(recipient, result))

    def _when_settled(
        self, error: UnavailableError, done: str, then: Callable[[], None] | None = None
    ) -> None:
        """A write that outlived its command (still pending): print its outcome once known."""
        pending = error.pending
        if pending is None:
            return

        async def report() -> None:
            try:
                await pending
            except ChatClientError as failure:
                self._fail(f"{pending.what}: {failure}")
                return
            self.out.info(f"{done} (the pending {pending.what} went through)")
            if then is not None:
                then()

        self._background_task(report())

    async def _history(self, line: str, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            raise UsageError
        limit = HISTORY_DEFAULT
        if len(args) == 2:
            if not args[1].isdigit() or int(args[1]) < 1:
                raise UsageError(f"N must be a positive number, got {args[1]!r}")
            limit = int(args[1])
        messages = await self.client.history(args[0], limit)
        if not messages:
            self.out.info(f"no messages with {args[0]}")
        for message in messages:
            self.out.info(format_message(message, date=True))

    async def _whoami(self, line: str, args: list[str]) -> None:
        if args:
            raise UsageError
        client = self.client
        who = client.username or "not logged in"
        pending = len(client.pending_writes)
        self.out.info(
            f"{who}; node {client.current_node or '-'}, leader {client.leader or 'unknown'}, "
            f"connection {client.state.value}"
            + (", pinned" if client.pinned else "")
            + (f", {pending} pending" if pending else "")
        )

    async def _servers(self, line: str, args: list[str]) -> None:
        if args:
            raise UsageError
        for info in await self.client.servers():
            node = info.node
            marks = [
                m for m, on in (("current", node.is_current), ("leader", node.is_leader)) if on
            ]
            where = f"{node.name} {node.address}" if node.name != node.address else node.name
            if info.status is None:
                self.out.info(f"{where}: {info.error}")
                continue
            s = info.status
            self.out.info(
                f"{where}: {s.role or '?'}, term {s.term}, leader {s.leader_id or 'unknown'}, "
                f"commit {s.commit_index}, applied {s.applied_index}"
                + (f" ({', '.join(marks)})" if marks else "")
            )

    async def _help(self, line: str, args: list[str]) -> None:
        if len(args) > 1:
            raise UsageError
        if args:
            entry = COMMANDS.get(args[0].lower())
            if entry is None:
                self._fail(f"no command {args[0]!r}; `help` lists the commands")
                return
            self.out.info(f"{entry.usage}: {entry.summary}")
            return
        width = max(len(entry.usage) for entry in COMMANDS.values())
        for entry in COMMANDS.values():
            self.out.info(f"  {entry.usage.ljust(width)}  {entry.summary}")

    async def _quit(self, line: str, args: list[str]) -> bool:
        return False

    async def _sleep(self, line: str, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError
        try:
            seconds = float(args[0])
        except ValueError:
            raise UsageError(f"not a number: {args[0]!r}") from None
        if not 0 <= seconds <= 3600:
            raise UsageError("SECONDS must be between 0 and 3600")
        await asyncio.sleep(seconds)


def toolbar_text(client: ChatClient) -> str:
    """The bottom toolbar: user, node asked last, leader, connection state, pending writes.

    (prompt_toolkit draws it only once it knows the terminal's height, which takes a cursor
    position report: not with PROMPT_TOOLKIT_NO_CPR=1.)"""
    pending = len(client.pending_writes)
    return (
        f" {client.username or 'not logged in'} | node {client.current_node or '-'}"
        f" | leader {client.leader or 'unknown'} | {client.state.value}"
        + (" | pinned" if client.pinned else "")
        + (f" | {pending} pending" if pending else "")
    )


# --- piped mode ----------------------------------------------------------------------------


async def run_piped(client: ChatClient, password: str | None = None) -> int:
    """Commands from stdin, line by line; 0 if every one succeeded, else 1."""
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="replace")  # a stray byte is not the end of the script
    lines = LineReader(sys.stdin)

    async def read_password(prompt: str) -> str | None:
        return password if password is not None else await lines.next()

    repl = Repl(client, Output(interactive=False), read_password)
    try:
        while (line := await lines.next()) is not None:
            if not await repl.execute(line):
                break
    finally:
        await repl.finish()
    return 1 if repl.failed else 0


# --- terminal mode -------------------------------------------------------------------------


# Commands after which the REPL asks for a password: a line giving them more words may hold one.
_PASSWORD_COMMANDS = {"register": 1, "login": 1, "delete-account": 0}


def may_hold_password(line: str) -> bool:
    """Whether a command line has more words than its command takes before the password
    prompt (`login bob hunter2`): such a line is kept out of the history file."""
    words = line.split()
    if not words:
        return False
    allowed = _PASSWORD_COMMANDS.get(words[0].lower())
    return allowed is not None and len(words) > 1 + allowed


def _history(path: Path) -> Any:
    from prompt_toolkit.history import FileHistory

    class CommandHistory(FileHistory):
        """FileHistory that never stores a line that may hold a password."""

        def append_string(self, string: str) -> None:
            if not may_hold_password(string):
                super().append_string(string)

    return CommandHistory(str(path))


def _completer(repl: Repl) -> Any:
    from prompt_toolkit.completion import Completer, Completion

    class ChatCompleter(Completer):
        """Command names first; then usernames after send and history, commands after help."""

        def get_completions(
            self, document: Document, complete_event: CompleteEvent
        ) -> Iterable[Completion]:
            before = document.text_before_cursor
            words = before.split()
            if not words or before[-1].isspace():
                words.append("")
            word = words[-1]
            candidates: Iterable[str]
            if len(words) == 1:
                candidates = COMMANDS
            elif len(words) == 2 and words[0] in ("send", "history"):
                candidates = sorted(repl.known_users, key=str.lower)
            elif len(words) == 2 and words[0] == "help":
                candidates = COMMANDS
            else:
                return
            for candidate in candidates:
                if candidate.lower().startswith(word.lower()):
                    yield Completion(candidate, start_position=-len(word))

    return ChatCompleter()


async def run_terminal(client: ChatClient, history_file: Path, password: str | None = None) -> int:
    """The interactive REPL. Only called with a terminal on stdin and stdout."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    # A separate session for passwords: its history is in memory and never used.
    password_session: PromptSession[str] = PromptSession(history=InMemoryHistory())

    async def read_password(prompt: str) -> str | None:
        if password is not None:
            return password
        try:
            return await password_session.prompt_async(prompt, is_password=True)
        except (EOFError, KeyboardInterrupt):
            return None

    repl = Repl(client, Output(interactive=True), read_password)

    def toolbar() -> str:
        return toolbar_text(client)

    session: PromptSession[str] = PromptSession(
        history=_history(history_file),
        completer=_completer(repl),
        bottom_toolbar=toolbar,
        refresh_interval=0.5,
    )
    with patch_stdout(raw=True):
        print("chatbooth: `help` lists the commands; Tab completes; Ctrl-D leaves.")
        try:
            while True:
                try:
                    line = await session.prompt_async(PROMPT)
                except KeyboardInterrupt:
                    continue  # Ctrl-C clears the line
                except EOFError:
                    break
                if not await repl.execute(line):
                    break
        finally:
            await repl.finish()
    return 0
