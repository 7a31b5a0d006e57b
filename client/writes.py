"""The write pipeline: every write a client makes, with its request id, until a node answers it.

A request id is a client id the cluster's log assigned (RegisterClient, asked for before the
first write; Raft thesis §6.3), a sequence number (+1 per write) and the lowest sequence number
still without an answer. Writes leave one at a time, in the order they were made (so a user's
messages keep their order, and a logout never overtakes the send before it). A write whose
outcome is unknown (deadline, lost connection, UNKNOWN, INTERNAL, UNAVAILABLE) is resent with
the same id until some node answers it; the cluster applies it once (thesis ch. 6). Only a
definite refusal fails it. If the cluster forgot the client session (reason "client-expired"),
a write sent before fails with OutcomeUnknownError, never resent, and a new client session is
registered; a write never sent under the old one is sent anew.

Client ids are kept per chat session: "" for the writes made without one (Register, Login), a
session token for the writes made in that session (another user's writes cannot use it).

Imports client.router (routing, through its public methods), client.errors, client.stub and
protos; never the subscriptions or the facade (client/api.py) that use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, Generic, TypeVar

from client.errors import (
    ChatClientError,
    ClientClosedError,
    ClientExpiredError,
    OutcomeUnknownError,
    ServerError,
    UnauthenticatedError,
)
from client.router import Router
from client.stub import ChatStub
from protos import chat_pb2

logger = logging.getLogger(__name__)

R = TypeVar("R")

# invoke(stub, request id, timeout_s): one attempt of a write, under the request id given.
WriteInvoke = Callable[[ChatStub, chat_pb2.RequestId, float], Awaitable[R]]


class PendingWrite(Generic[R]):
    """A write on its way: resent with the same request id until some node answers it.

    Await it (no time limit) or `wait(timeout_s)` for its result. It fails only with a
    definite `ServerError`, or `ClientClosedError` if the client closes first (outcome unknown).

    Made by WritePipeline.submit, which alone settles it.
    """

    def __init__(
        self,
        router: Router,
        client_ids: Mapping[str, int],
        seq: int,
        what: str,
        session: str | None,
    ) -> None:
        self._router = router
        self._client_ids = client_ids  # the pipeline's, by session: read, never written here
        self.seq = seq
        self.session = session  # the token whose writes it is; None for Register, Login
        self.what = what  # "send to bob", for messages
        self.attempts = 0  # sent under the current client id
        self._future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # An error nobody waits for must not be reported as "never retrieved".
        self._future.add_done_callback(retrieve_exception)

    @property
    def request_id(self) -> tuple[int | None, int]:
        """(client id, sequence number): the same on every attempt (client id None until the
        cluster assigned one)."""
        return (self._client_ids.get(self.session or ""), self.seq)

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> R:
        """The answer; the ServerError if refused; InvalidStateError if still pending."""
        return self._future.result()

    def add_done_callback(self, callback: Callable[[PendingWrite[R]], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))

    async def wait(self, timeout_s: float | None = None) -> R:
        """The answer, waiting at most timeout_s (default: the client's overall timeout).

        UnavailableError / NoMajorityError (with `pending` = self) if there is none by then;
        the write is still pending and keeps being resent."""
        summary = await self._router.wait_answered(self._future, timeout_s)
        if summary is not None:
            raise summary.error_type(summary.text, self)
        return self._future.result()

    async def wait_done(self, timeout_s: float) -> bool:
        """Whether the write was answered within timeout_s (never raises for its outcome)."""
        await asyncio.wait({self._future}, timeout=timeout_s)
        return self._future.done()

    def __await__(self) -> Generator[Any, None, R]:
        return asyncio.shield(self._future).__await__()

    def _settle(self, result: R) -> None:
        if not self._future.done():
            self._future.set_result(result)

    def _fail(self, error: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(error)


def retrieve_exception(future: asyncio.Future[Any]) -> None:
    """A done callback that retrieves a future's exception, so that asyncio does not report
    one nobody waited for as "never retrieved"."""
    if not future.cancelled():
        future.exception()


class WritePipeline:
    """The writes of one client: request ids, client sessions, one write in flight at a time.

    router: where the writes go (Router.call, with no deadline: a write is tried until it is
        answered or the client closes).
    session_refused(token): called when a write made with token=token (see submit) is refused
        UNAUTHENTICATED: that chat session has ended, and the client forgets it (including
        its client id here, with forget_session).
    """

    def __init__(self, router: Router, session_refused: Callable[[str], None]) -> None:
        self._router = router
        self._session_refused = session_refused
        # Client sessions the log assigned: "" -> the one for Register and Login, token -> the
        # one bound to that chat session.
        self._client_ids: dict[str, int] = {}
        self._next_seq = 1
        self._unanswered: set[int] = set()  # seqs of writes without an answer
        self._pending: dict[int, PendingWrite[Any]] = {}  # seq -> the write, while unanswered
        self._write_lock = asyncio.Lock()  # one write in flight, in order
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> list[PendingWrite[Any]]:
        """Writes without an answer yet, oldest first."""
        return [self._pending[seq] for seq in sorted(self._pending)]

    def client_id(self, session: str = "") -> int | None:
        """The client id of the writes made in `session` ("" for none), once assigned."""
        return self._client_ids.get(session)

    def forget_session(self, token: str) -> None:
        """The chat session `token` ended: its client id is of no more use."""
        self._client_ids.pop(token, None)

    def submit(
        self,
        what: str,
        invoke: WriteInvoke[R],
        *,
        token: str | None = None,
        session: str | None = None,
    ) -> PendingWrite[R]:
        """Queue a write behind the ones before it. token: the session ends if the write is
        refused UNAUTHENTICATED; session: the token the write is made with (default: token),
        which chooses its client id."""
        self._router.check_open()
        seq = self._next_seq
        self._next_seq += 1
        self._unanswered.add(seq)
        pending: PendingWrite[R] = PendingWrite(
            self._router, self._client_ids, seq, what, session or token
        )
        self._pending[seq] = pending
        task = asyncio.get_running_loop().create_task(self._run(pending, invoke, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pending

    async def close(self) -> None:
        """Stop every write still pending; whoever awaits one gets ClientClosedError."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- one write -----------------------------------------------------------------------

    async def _run(
        self, pending: PendingWrite[R], invoke: WriteInvoke[R], token: str | None
    ) -> None:
        try:
            async with self._write_lock:
                result = await self._write(pending, invoke)
        except OutcomeUnknownError as error:
            self._answered(pending.seq)
            pending._fail(error)
        except ServerError as error:
            self._answered(pending.seq)
            if token is not None and isinstance(error, UnauthenticatedError):
                self._session_refused(token)
            pending._fail(error)
        except asyncio.CancelledError:
            pending._fail(
                ClientClosedError(
                    f"{pending.what}: the client closed with the write still pending "
                    f"(request {pending.seq}); its outcome is unknown"
                )
            )
            raise
        except ChatClientError as error:
            pending._fail(error)
        except Exception as error:
            # A bug or a request that cannot even be encoded: nothing will resend it.
            logger.exception("%s failed", pending.what)
            self._answered(pending.seq)
            pending._fail(ChatClientError(f"{pending.what}: {error!r}"))
        else:
            self._answered(pending.seq)
            pending._settle(result)

    async def _write(self, pending: PendingWrite[R], invoke: WriteInvoke[R]) -> R:
        """Send one write until it is answered, registering a client session when there is
        none (at the first write, or after the old one expired)."""
        key = pending.session or ""
        while True:
            if key not in self._client_ids:
                self._client_ids[key] = await self._register_client(key)
                pending.attempts = 0
            client_id = self._client_ids[key]

            def attempt(stub: ChatStub, timeout: float, client_id: int = client_id) -> Awaitable[R]:
                pending.attempts += 1
                return invoke(stub, self._request_id(client_id, pending.seq), timeout)

            try:
                return await self._router.call(pending.what, attempt, deadline=None)
            except ClientExpiredError as error:
                if self._client_ids.get(key) == client_id:
                    del self._client_ids[key]
                if pending.attempts > 1:
                    # An earlier attempt may have been applied; the cluster cannot say now.
                    raise OutcomeUnknownError(
                        f"{pending.what}: {error.message}; it was sent before, so it may or "
                        "may not have been applied, and it is not sent again"
                    ) from None
                # Never sent under the old session: nothing can have happened. Send it anew.

    async def _register_client(self, session: str) -> int:
        """A new client session from the log, bound to the chat session `session` (a token)
        if given. Not deduplicated: a retry after a lost answer registers another, and the
        unused one expires."""

        async def invoke(stub: ChatStub, timeout: float) -> int:
            request = chat_pb2.RegisterClientRequest(token=session)
            reply = await stub.RegisterClient(request, timeout=timeout)
            return reply.client_id

        client_id = await self._router.call("register the client", invoke, deadline=None)
        logger.info("registered as client %d%s", client_id, " (session)" if session else "")
        return client_id

    def _request_id(self, client_id: int, seq: int) -> chat_pb2.RequestId:
        # Computed per attempt: first_outstanding may have moved on since the first one.
        return chat_pb2.RequestId(
            client_id=client_id, seq=seq, first_outstanding=min(self._unanswered)
        )

    def _answered(self, seq: int) -> None:
        self._unanswered.discard(seq)
        self._pending.pop(seq, None)
