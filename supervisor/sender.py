"""A small leader-following chat client over raw gRPC, for the supervisor's tools: `check`
(supervisor/check.py) judges the cluster's history with it and `bench` (supervisor/bench.py)
measures the cluster with it.

It is not the chat client (client/api.py) and does not import it: the supervisor and the client
stand side by side in DESIGN.md's layer map, and a tool that proves or measures the cluster
must not lean on the library whose behaviour it would then be judging too. What it keeps of the
client's promises is what the history check needs (DESIGN.md, "Chat semantics"):

- every write carries a request id, and a write whose outcome is unknown (a deadline passed,
  the connection was lost, UNAVAILABLE, UNKNOWN, INTERNAL, anything but a definite refusal) is
  resent with the *same* id until some node answers it or the caller's deadline passes; then it
  raises `OutcomeUnknownError`, never "failed". Only a definite code (`DEFINITE_CODES`) raises
  `RefusedError`, and only then was the write certainly not applied;
- one write at a time per `Sender`, in the order they were asked for, so a later write of a
  sender never overtakes an earlier one;
- it follows the leader: the leader named in an answer's trailing metadata is asked next, else
  the next node in turn, after a short pause;
- every call has a deadline (TRAPS, "gRPC").

Request ids are made in one place, `RequestIds`: the client id, which the cluster's log
assigns (RegisterClient, before the first write; thesis §6.3), the sequence number and
first_outstanding. If the cluster forgot the client session (Reason.CLIENT_EXPIRED), a write
sent only once under it is sent again under a new one (nothing can have happened), and a write
sent more than once raises `OutcomeUnknownError`.

Answers are judged by their status code, their `Reason` and their metadata (protos/vocabulary.py),
never by the wording of a message; the channels are the vocabulary's client channels.

Imports grpc, protos, supervisor.certs (channel credentials) and supervisor.errors only: never
client, never node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final, TypeVar

import grpc
import grpc.aio

from protos import chat_pb2 as pb
from protos import chat_pb2_grpc as pbg
from protos.vocabulary import (
    CLIENT_CHANNEL_OPTIONS,
    LEADER_ID_KEY,
    Reason,
    metadata_value,
    new_session_token,
    reason_of,
)
from supervisor.certs import Credentials, channel_credentials
from supervisor.errors import SupervisorError

R = TypeVar("R")

# Answers that settle a request: the node looked at it and refused it, so it was not applied
# and resending it would get the same answer. Anything else may mean "applied, answer lost".
DEFINITE_CODES: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)

CALL_TIMEOUT_S: Final = 2.0  # one attempt on one node
RETRY_PAUSE_S: Final = 0.005  # before asking a node no answer pointed to

if TYPE_CHECKING:  # the async stub's type exists in the type stubs only
    Stub = pbg.ChatAsyncStub
    WriteCall = Callable[[Stub, pb.RequestId, float], Awaitable[R]]
    ReadCall = Callable[[Stub, float], Awaitable[R]]


class SenderError(SupervisorError):
    """A chat call of a supervisor tool did not get the answer it needed."""


class RefusedError(SenderError):
    """A definite refusal (one of DEFINITE_CODES): the request was not applied."""

    def __init__(
        self, what: str, code: grpc.StatusCode, details: str, reason: Reason | None = None
    ) -> None:
        super().__init__(f"{what}: refused: {code.name}: {details}")
        self.code = code
        self.details = details
        self.reason = reason


class OutcomeUnknownError(SenderError):
    """The deadline passed before any node answered the write: it may have been applied (once,
    at most: it always carried one request id), or not."""

    def __init__(self, what: str, seq: int, last_error: str) -> None:
        super().__init__(f"{what} (request {seq}): outcome unknown; last: {last_error}")
        self.seq = seq


class NoAnswerError(SenderError):
    """A read (or a subscription) that no node served before the deadline."""


class RequestIds:
    """The request ids of one client, made here and nowhere else: the client id the log gave
    (None until registered), a sequence number one higher for each write, and the lowest
    sequence number still without an answer (first_outstanding), so the cluster may forget the
    answers below it (thesis §6.3)."""

    def __init__(self) -> None:
        # "" -> the client session for Register and Login; token -> the one bound to that chat
        # session (the cluster refuses a session's writes under any other client id).
        self.client_ids: dict[str, int] = {}
        self._next_seq = 1
        self._unanswered: set[int] = set()  # seqs begun and neither answered nor refused

    def begin(self) -> int:
        """A new write's sequence number; it stays outstanding until `answered`."""
        seq = self._next_seq
        self._next_seq += 1
        self._unanswered.add(seq)
        return seq

    @property
    def client_id(self) -> int | None:
        """The client id of the writes made without a session."""
        return self.client_ids.get("")

    def request_id(self, seq: int, session: str = "") -> pb.RequestId:
        """The id of one attempt of write seq made with `session` (a token, or "" for none):
        the same (client id, seq) on every attempt; first_outstanding as of now."""
        client_id = self.client_ids.get(session)
        if client_id is None:
            raise SenderError("no client id: register the client first")
        return pb.RequestId(
            client_id=client_id, seq=seq, first_outstanding=min(self._unanswered, default=seq)
        )

    def answered(self, seq: int) -> None:
        """Write seq has its answer (a reply or a definite refusal). A write whose outcome
        stayed unknown is never answered: first_outstanding stays at it."""
        self._unanswered.discard(seq)


class Sender:
    """Chat calls to one cluster that follow its leader. Make it and use it in one event loop;
    `close()` it (or `async with`).

    addresses: node id -> host:port, in the order nodes are tried. leader: the node asked
    first (default: the first). retry_pause_s: the pause before asking a node that no answer
    pointed to."""

    def __init__(
        self,
        addresses: Mapping[str, str],
        *,
        leader: str | None = None,
        call_timeout_s: float = CALL_TIMEOUT_S,
        retry_pause_s: float = RETRY_PAUSE_S,
        ids: RequestIds | None = None,
        tls: Credentials | None,
    ) -> None:
        """tls: the cluster's CA (Cluster.credentials); None only for a plaintext cluster."""
        if not addresses:
            raise SenderError("no node addresses given")
        if leader is not None and leader not in addresses:
            raise SenderError(f"no node {leader!r} (nodes are {', '.join(addresses)})")
        self.addresses = dict(addresses)
        self.order = list(self.addresses)
        self.target = leader or self.order[0]  # the node asked next
        self.ids = ids or RequestIds()
        self.call_timeout_s = call_timeout_s
        self.retry_pause_s = retry_pause_s
        self._tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Stub] = {}
        self._write_lock = asyncio.Lock()
        self._turn = 0  # where the next node in turn is taken from

    # -- the calls the tools make -------------------------------------------------------------

    async def register(self, username: str, password: str, *, timeout_s: float) -> None:
        async def call(stub: Stub, rid: pb.RequestId, timeout: float) -> None:
            request = pb.RegisterRequest(request=rid, username=username, password=password)
            await stub.Register(request, timeout=timeout)

        await self.write(f"register {username}", call, timeout_s=timeout_s)

    async def login(self, username: str, password: str, *, timeout_s: float) -> str:
        """The session token (drawn here; the cluster keeps only its hash)."""
        token = new_session_token()

        async def call(stub: Stub, rid: pb.RequestId, timeout: float) -> str:
            request = pb.LoginRequest(
                request=rid, username=username, password=password, token=token
            )
            await stub.Login(request, timeout=timeout)
            return token

        return await self.write(f"login as {username}", call, timeout_s=timeout_s)

    async def send(
        self, token: str, recipient: str, text: str, *, timeout_s: float
    ) -> pb.SendReply:
        """The reply (message id, timestamp) once the message is committed."""

        async def call(stub: Stub, rid: pb.RequestId, timeout: float) -> pb.SendReply:
            request = pb.SendRequest(request=rid, token=token, recipient=recipient, text=text)
            return await stub.Send(request, timeout=timeout)

        return await self.write(f"send to {recipient}", call, timeout_s=timeout_s, session=token)

    async def history(self, token: str, other: str, *, timeout_s: float) -> list[pb.ChatMessage]:
        """The messages between the session's user and other, oldest first."""

        async def call(stub: Stub, timeout: float) -> pb.HistoryReply:
            return await stub.History(pb.HistoryRequest(token=token, other=other), timeout=timeout)

        return list((await self.read(f"history with {other}", call, timeout_s=timeout_s)).messages)

    async def messages(
        self, token: str, *, after_id: int = 0, idle_s: float, timeout_s: float
    ) -> list[pb.ChatMessage]:
        """Every message Subscribe hands the session's user after after_id, until the stream
        stays quiet for idle_s; from the leader, resubscribing from the last id handed out when
        a stream breaks (so each message once). Acks nothing: it changes no state."""
        deadline = time.monotonic() + timeout_s
        received: list[pb.ChatMessage] = []
        last = after_id
        last_error = "not asked"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAnswerError(f"subscribe: not served within {timeout_s:g} s: {last_error}")
            call = self._stub(self.target).Subscribe(
                pb.SubscribeRequest(token=token, after_id=last), timeout=remaining
            )
            try:
                while True:
                    try:
                        message = await asyncio.wait_for(call.read(), idle_s)
                    except TimeoutError:
                        call.cancel()
                        return received
                    if not isinstance(message, pb.ChatMessage):  # grpc.aio.EOF
                        last_error = f"{self.target}: the stream ended"
                        await asyncio.sleep(self.retry_pause_s)
                        break
                    if message.id > last:
                        received.append(message)
                        last = message.id
            except grpc.aio.AioRpcError as error:
                last_error = self._settle_attempt("subscribe", error)
                await self._next_node(error)

    # -- writes and reads ---------------------------------------------------------------------

    async def write(
        self, what: str, call: WriteCall[R], *, timeout_s: float, session: str = ""
    ) -> R:
        """Make call, a write, with a new request id; resend it with that id until a node
        answers, following the leader. RefusedError on a definite refusal; OutcomeUnknownError
        once timeout_s has passed without an answer."""
        async with self._write_lock:
            seq = self.ids.begin()
            deadline = time.monotonic() + timeout_s
            last_error = "not sent"
            attempts = 0  # under the current client id
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OutcomeUnknownError(what, seq, last_error)
                if session not in self.ids.client_ids:
                    try:
                        client_id = await self._register_client(session, remaining)
                    except NoAnswerError as error:
                        # Nothing of this write was sent; "unknown" is the safe side of that.
                        raise OutcomeUnknownError(what, seq, str(error)) from None
                    self.ids.client_ids[session] = client_id
                    attempts = 0
                    continue
                attempt_s = min(self.call_timeout_s, remaining)
                rid = self.ids.request_id(seq, session)
                attempts += 1
                try:
                    result = await call(self._stub(self.target), rid, attempt_s)
                except grpc.aio.AioRpcError as error:
                    try:
                        last_error = self._settle_attempt(what, error)
                    except RefusedError as refused:
                        if refused.reason is Reason.CLIENT_EXPIRED:
                            self.ids.client_ids.pop(session, None)
                            if attempts == 1:
                                continue  # never sent before: send it anew
                            raise OutcomeUnknownError(what, seq, refused.details) from None
                        self.ids.answered(seq)
                        raise
                    await self._next_node(error)
                    continue
                self.ids.answered(seq)
                return result

    async def _register_client(self, session: str, timeout_s: float) -> int:
        """A client session from the log, bound to the chat session `session` if given (not
        deduplicated: a lost answer costs one unused client session, which expires)."""

        async def call(stub: Stub, timeout: float) -> pb.RegisterClientReply:
            request = pb.RegisterClientRequest(token=session)
            return await stub.RegisterClient(request, timeout=timeout)

        reply = await self.read("register the client", call, timeout_s=timeout_s)
        return reply.client_id

    async def read(self, what: str, call: ReadCall[R], *, timeout_s: float) -> R:
        """Make call, a read, on the leader, following it, until a node answers;
        RefusedError on a definite refusal, NoAnswerError once timeout_s has passed."""
        deadline = time.monotonic() + timeout_s
        last_error = "not asked"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAnswerError(f"{what}: no answer within {timeout_s:g} s: {last_error}")
            try:
                return await call(self._stub(self.target), min(self.call_timeout_s, remaining))
            except grpc.aio.AioRpcError as error:
                last_error = self._settle_attempt(what, error)
                await self._next_node(error)

    # -- lifecycle ----------------------------------------------------------------------------

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals ----------------------------------------------------------------------------

    def _stub(self, node_id: str) -> Stub:
        stub = self._stubs.get(node_id)
        if stub is None:
            channel = self._channels[node_id] = client_channel(self.addresses[node_id], self._tls)
            stub = self._stubs[node_id] = pbg.ChatStub(channel)
        return stub

    def _settle_attempt(self, what: str, error: grpc.aio.AioRpcError) -> str:
        """RefusedError for a definite answer; else what the attempt ended with, for people."""
        code = error.code()
        if code in DEFINITE_CODES:
            reason = reason_of(error.trailing_metadata())
            raise RefusedError(what, code, error.details() or "", reason)
        return f"{self.target}: {code.name}: {error.details() or ''}".rstrip(": ")

    async def _next_node(self, error: grpc.aio.AioRpcError) -> None:
        """After an attempt without an answer: the leader the node named, at once, else the
        next node in turn after a pause."""
        hint = _leader_hint(error)
        if hint and hint in self.addresses and hint != self.target:
            self.target = hint
            return
        self._turn += 1
        self.target = self.order[self._turn % len(self.order)]
        await asyncio.sleep(self.retry_pause_s)


def client_channel(address: str, tls: Credentials | None) -> grpc.aio.Channel:
    """A channel to a node's client port with the vocabulary's client options: TLS with the
    cluster's CA (Cluster.credentials), or plaintext when tls is None."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CLIENT_CHANNEL_OPTIONS)
    credentials = channel_credentials(tls)
    return grpc.aio.secure_channel(address, credentials, options=CLIENT_CHANNEL_OPTIONS)


def _leader_hint(error: grpc.aio.AioRpcError) -> str:
    """The leader's id the answering node named in its trailing metadata; "" if none."""
    return metadata_value(error.trailing_metadata(), LEADER_ID_KEY) or ""
