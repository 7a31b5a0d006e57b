"""`WebView`: the live page `supervisor up` serves (aiohttp, on a thread and event loop of its
own, never the proxies' or the REPL's).

    web = WebView(cluster, port=0)           # binds 127.0.0.1 now; the socket is kept
    web.start()
    print(web.new_url())                     # http://127.0.0.1:PORT/?secret=... (one use)
    web.serve_commands(runner)               # the page's buttons run REPL commands
    ...
    web.close()

Routes: `/` (the page; with `?secret=` the one-time secret is exchanged for a session
cookie), `/static/NAME` (its script and style), `/events` (Server-Sent Events: a `hello` with
the recent events, then every event of the cluster's EventFeed the moment it is published and
a `nodes` message every POLL_INTERVAL_S), `/api/command` (POST: one of WEB_COMMANDS).

The nodes are polled (Cluster.status in a worker thread, so a slow answer never stalls the
page) only while a page is connected. A command from the page is handed to the runner given
to serve_commands, which runs it as the REPL would, on the REPL's loop (nodes are spawned on
the main thread only: TRAPS, PR_SET_PDEATHSIG) under the lock the REPL's own commands take, and
which echoes it to the REPL's output.

Security (supervisor/web/guard.py): every request needs this run's session cookie, Host must
name this server (DNS rebinding), an action must be a POST with the X-Chatbooth header and this
server's Origin; no CORS header is ever sent.

Imports the supervisor library (cluster, events, links) and aiohttp; never node internals,
client or the REPL (the REPL hands in its runner).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from supervisor.cluster import Cluster, ClusterClosedError
from supervisor.errors import SupervisorError
from supervisor.events import Event
from supervisor.links import LinkState
from supervisor.web.guard import Guard, host_header
from supervisor.web.observer import Observer

logger = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).parent / "static"
STATIC_FILES: Final = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}
POLL_INTERVAL_S: Final = 0.1
# One round of Status must fit the 250 ms from a change to the screen: a node that does not
# answer within this shows its last fields, with their age.
STATUS_TIMEOUT_S: Final = 0.1
KEEPALIVE_S: Final = 15.0
# Messages waiting for a page that does not read them (a stuck tab): past this it is dropped.
STREAM_BACKLOG: Final = 600
# What the page may run: the REPL's faults and their undoing, nothing else.
WEB_COMMANDS: Final = (
    "kill",
    "stop",
    "start",
    "restart",
    "pause",
    "resume",
    "partition",
    "isolate",
    "heal",
    "slow",
)
MAX_COMMAND_CHARS: Final = 200


class WebError(SupervisorError):
    """The web view cannot start (its port is taken, say)."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    command: str  # the REPL command line it ran
    ok: bool
    output: str  # what the REPL printed for it


CommandRunner = Callable[[str], "concurrent.futures.Future[CommandResult]"]


class _Stream:
    """One connected page's event stream: what is queued for it, written by its handler."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(STREAM_BACKLOG)
        self.task: asyncio.Task[Any] | None = None  # its handler, cancelled if it falls behind


class WebView:
    def __init__(
        self,
        cluster: Cluster,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        if host in ("0.0.0.0", "::", ""):
            raise WebError(
                f"web view: --web-host {host or '(empty)'}: name the one address browsers will "
                "use (the page checks Host against it), not a wildcard"
            )
        self.cluster = cluster
        self.host = host
        self.poll_interval_s = poll_interval_s
        self._sock = _bind(host, port)  # kept: no bind-and-close race for --web 0
        self.port: int = self._sock.getsockname()[1]
        self.guard = Guard(host, self.port)
        self._runner: CommandRunner | None = None
        self._observer = Observer(cluster.events)
        self._streams: set[_Stream] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="web-view", daemon=True)
        self._app_runner: web.AppRunner | None = None
        self._poller: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        self._unsubscribe = self.cluster.events.subscribe(self._published)

    def new_url(self) -> str:
        """The page's address with a new one-time secret (each use needs a new one)."""
        where = host_header(self.host, self.port)
        return f"http://{where}/?secret={self.guard.new_secret()}"

    def serve_commands(self, runner: CommandRunner | None) -> None:
        """The page's buttons run their commands through runner (None: they are refused)."""
        self._runner = runner

    def close(self) -> None:
        """End every stream (the pages say "supervisor gone"), stop serving; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                future.result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()
        self._sock.close()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self.guard.middleware])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/events", self._events)
        app.router.add_post("/api/command", self._command)
        app.on_response_prepare.append(self.guard.add_headers)
        self._app_runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._app_runner.setup()
        site = web.SockSite(self._app_runner, self._sock)
        await site.start()

    async def _shutdown(self) -> None:
        for stream in list(self._streams):
            stream.queue.put_nowait(None)
        await asyncio.sleep(0.05)  # the streams write their end
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._app_runner is not None:
            await self._app_runner.cleanup()

    # -- routes -------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound(text=f"no such file: {name}")
        return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": STATIC_FILES[name]})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        stream = _Stream()
        stream.task = asyncio.current_task()
        hello = {
            "type": "hello",
            "at_ms": round(time.time() * 1000, 1),
            "cluster": self.cluster.config.cluster,
            "nodes": list(self.cluster.node_ids),
            "commands": list(WEB_COMMANDS),
            "actions": self._runner is not None,
            "events": [e.as_dict() for e in self.cluster.events.recent()],
            "poll_ms": round(self.poll_interval_s * 1000),
        }
        self._streams.add(stream)
        self._ensure_polling()
        try:
            await _write(response, hello)
            while True:
                try:
                    item = await asyncio.wait_for(stream.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if item is None:
                    await _write(response, {"type": "bye", "at_ms": round(time.time() * 1000)})
                    break
                await _write(response, item)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the page left, fell too far behind, or the server is closing
        finally:
            self._streams.discard(stream)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _command(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _refuse(400, 'the body must be JSON: {"command": "kill b"}')
        line = body.get("command") if isinstance(body, dict) else None
        if not isinstance(line, str) or not line.strip():
            return _refuse(400, 'the body must be {"command": "..."} with a command line')
        if not line.isprintable():
            return _refuse(400, "a command line holds printable characters only")
        if len(line) > MAX_COMMAND_CHARS:
            return _refuse(400, f"a command line is at most {MAX_COMMAND_CHARS} characters")
        word = line.split()[0]
        if word not in WEB_COMMANDS:
            allowed = ", ".join(WEB_COMMANDS)
            return _refuse(400, f"{word!r} cannot be run from the page (it runs: {allowed})")
        runner = self._runner
        if runner is None:
            return _refuse(503, "this supervisor takes no commands from the page")
        try:
            result = await asyncio.wrap_future(runner(line.strip()))
        except SupervisorError as error:
            return _refuse(503, str(error))
        except RuntimeError:  # the REPL's loop has ended: the supervisor is stopping
            return _refuse(503, "the supervisor is stopping")
        return web.json_response(
            {"command": result.command, "ok": result.ok, "output": result.output},
            status=200 if result.ok else 422,
        )

    # -- live data ----------------------------------------------------------------------------

    def _published(self, event: Event) -> None:
        """An event of the cluster (any thread): pushed to every page at once."""
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._broadcast, {"type": "event", **event.as_dict()})

    def _broadcast(self, message: dict[str, Any]) -> None:
        for stream in list(self._streams):
            try:
                stream.queue.put_nowait(message)
            except asyncio.QueueFull:  # a page that stopped reading: let it go
                self._streams.discard(stream)
                if stream.task is not None:
                    stream.task.cancel()

    def _ensure_polling(self) -> None:
        if self._poller is None or self._poller.done():
            # What changed while no page watched is not news now, nor a burst in the chart.
            self._observer = Observer(self.cluster.events)
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        """Every poll_interval_s while a page is connected: the nodes' fields to every page."""
        while self._streams:
            started = time.monotonic()
            asked_at = time.time()  # the fields are as of (at least) this moment
            try:
                statuses = await asyncio.to_thread(self.cluster.status, timeout_s=STATUS_TIMEOUT_S)
                links = await asyncio.to_thread(self._link_states)
                groups = self.cluster.groups
                message = self._observer.observe(statuses, links, groups, asked_at)
            except ClusterClosedError:
                return
            except Exception as error:  # the page must go on: a round is lost, not the poller
                logger.warning("web view: a round of Status failed: %s", error)
            else:
                self._broadcast(message)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.poll_interval_s - elapsed))

    def _link_states(self) -> list[LinkState]:
        network = self.cluster.network
        return network.states() if network is not None else []


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise WebError(
                f"web view: {host}:{port} is in use; choose another with --web PORT "
                "(--web 0: any free port), or --no-web"
            ) from None
        raise WebError(f"web view: cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


async def _write(response: web.StreamResponse, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":"))
    await response.write(f"data: {data}\n\n".encode())


def _refuse(status: int, reason: str) -> web.Response:
    return web.json_response({"ok": False, "error": reason}, status=status)
