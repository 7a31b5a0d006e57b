"""Lines of a text stream (stdin) for an event loop, read by a daemon thread: what the chat
REPL's piped mode (client/repl.py) and the supervisor's plain front end (supervisor/repl.py)
read their commands with.

A thread, because a blocked read must never hold up exit (the thread is a daemon) and because
asyncio's pipe readers (`connect_read_pipe`) refuse a regular file, which `< script` is.

Imports the standard library only: it is the one piece of the client the supervisor may use
(tests/test_layers.py holds both to that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TextIO

logger = logging.getLogger(__name__)


class LineReader:
    """The lines of `stream`, in order, without their line endings; then the end, for good.
    Make it in the event loop that reads it (`await reader.next()`, or `async for`)."""

    def __init__(self, stream: TextIO) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()  # None: the end of input
        threading.Thread(target=self._read, args=(stream,), name="line-reader", daemon=True).start()

    async def next(self) -> str | None:
        """The next line without its line ending; None at the end of input."""
        line = await self._lines.get()
        if line is None:
            self._lines.put_nowait(None)  # stay at the end
            return None
        return line.rstrip("\r\n")

    def __aiter__(self) -> LineReader:
        return self

    async def __anext__(self) -> str:
        line = await self.next()
        if line is None:
            raise StopAsyncIteration
        return line

    def _read(self, stream: TextIO) -> None:
        # The loop may be closed under this thread at exit: then nobody is reading any more.
        with contextlib.suppress(RuntimeError):
            try:
                for line in stream:
                    self._loop.call_soon_threadsafe(self._lines.put_nowait, line)
            except (OSError, ValueError) as error:
                logger.warning("reading commands failed: %s", error)
            finally:
                self._loop.call_soon_threadsafe(self._lines.put_nowait, None)
