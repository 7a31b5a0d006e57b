"""Subscriptions: the messages to one user, queued then live, as an async iterator that
survives failover.

When the stream ends (the node lost leadership, died, or froze: a watchdog asks it for its
Status while the stream is quiet) the subscription resubscribes on the leader from the last
acked id, and drops messages it has already handed out (by id). A node that ends the stream
because the consumer fell behind (reason "slow-consumer") is asked again at once, from the last
acked id. Asking for the next message acknowledges the one before (cumulatively, in the
background): a message is acked only once the consumer is done with it, so a crash between
delivery and display loses nothing (it is delivered again).

A Subscription routes through the Router's public methods, and asks everything else of the
client that opened it through `SubscriptionHooks`.

Imports grpc, protos, client.router, client.writes (the type of an ack write), client.values
and client.errors; never the facade (client/api.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio

from client.errors import ChatClientError, ServerError, UnauthenticatedError
from client.router import Backoff, Node, Round, Router
from client.values import Message
from client.writes import PendingWrite, retrieve_exception
from protos import chat_pb2
from protos.vocabulary import Reason, describe_rpc_error, reason_of

logger = logging.getLogger(__name__)

_StreamCall = grpc.aio.UnaryStreamCall[chat_pb2.SubscribeRequest, chat_pb2.ChatMessage]


@dataclass(frozen=True, slots=True)
class SubscriptionHooks:
    """What a Subscription asks of the client that opened it, besides routing (the Router).

    ack(token, up_to_id): submit a cumulative ack in session `token`, as a write.
    handled(user, up_to_id): the consumer is done with user's messages up to that id: where
        the client's next subscription for user starts.
    session_ended(token): the stream was refused UNAUTHENTICATED: the session has ended.
    closed(subscription): the subscription closed: the client need not close it.
    """

    ack: Callable[[str, int], PendingWrite[None]]
    handled: Callable[[str, int], None]
    session_ended: Callable[[str], None]
    closed: Callable[[Subscription], None]


class _StreamStalled(Exception):
    """The node of a quiet stream did not answer a Status call: treat the stream as dead."""


class Subscription:
    """Messages to one user, queued then live, across failovers. Use `async for`.

    Asking for the next message acknowledges the one handed out before it: the consumer is done
    with it. `aclose(ack=True)` acknowledges everything handed out. Messages already handed out
    are never handed out again (by id), however often the stream is reopened.

    watch_interval_s: how often a quiet stream asks its node whether it is alive.
    """

    def __init__(
        self,
        router: Router,
        hooks: SubscriptionHooks,
        token: str,
        user: str,
        after_id: int,
        *,
        watch_interval_s: float,
    ) -> None:
        self._router = router
        self._hooks = hooks
        self._token = token
        self._user = user
        self._watch_interval_s = watch_interval_s
        self._acked = after_id  # the cluster confirmed an ack up to here (or we began here)
        self._ack_target = after_id  # handled up to here; acked in the background
        self._handed: set[int] = set()  # handed out, above _acked: duplicates to drop
        self._last_handed = after_id
        self._call: _StreamCall | None = None
        self._node: Node | None = None
        self._round: Round | None = None
        self._backoff = Backoff()
        self._ack_task: asyncio.Task[None] | None = None
        self._closed = False
        self.duplicates_dropped = 0
        self.resubscribed = 0  # streams opened after the first

    @property
    def acked_id(self) -> int:
        """The highest id whose (cumulative) ack the cluster confirmed."""
        return self._acked

    @property
    def last_id(self) -> int:
        """The highest id handed out."""
        return self._last_handed

    @property
    def node(self) -> str | None:
        """The node the stream is open on (or last was)."""
        return None if self._node is None else self._node.name

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        if self._closed:
            raise StopAsyncIteration
        self._handled(self._last_handed)
        while True:
            try:
                item = await self._next_from_stream()
            except ServerError as error:
                if isinstance(error, UnauthenticatedError):
                    self._hooks.session_ended(self._token)
                await self.aclose(ack=False)
                raise
            if item.id <= self._acked or item.id in self._handed:
                self.duplicates_dropped += 1
                logger.debug("dropped duplicate message %d", item.id)
                continue
            self._handed.add(item.id)
            self._last_handed = max(self._last_handed, item.id)
            return Message.from_proto(item)

    async def aclose(self, ack: bool = True, timeout_s: float | None = None) -> None:
        """Stop the stream. With ack, first acknowledge every message handed out and wait for
        that (at most timeout_s, default the client's overall timeout; an ack still pending
        then stays with the client)."""
        if self._closed:
            return
        if ack:
            self._handled(self._last_handed)
        self._closed = True
        self._drop_call()
        task = self._ack_task
        if task is not None and not task.done():
            if ack and not self._router.closed:
                wait_s = self._router.overall_timeout_s if timeout_s is None else timeout_s
                await asyncio.wait({task}, timeout=wait_s)
            if not task.done():
                task.cancel()
        self._hooks.closed(self)

    # --- acks ----------------------------------------------------------------------------

    def _handled(self, up_to_id: int) -> None:
        if up_to_id <= self._ack_target or self._closed:
            return
        self._ack_target = up_to_id
        self._hooks.handled(self._user, up_to_id)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.get_running_loop().create_task(self._ack_loop())

    async def _ack_loop(self) -> None:
        while self._ack_target > self._acked:
            target = self._ack_target
            try:
                await self._hooks.ack(self._token, target)
            except ServerError as error:
                logger.warning("ack up to message %d refused: %s", target, error)
                return
            except ChatClientError:
                return
            self._acked = max(self._acked, target)
            self._handed = {i for i in self._handed if i > self._acked}

    # --- the stream ----------------------------------------------------------------------

    def _drop_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def _next_from_stream(self) -> chat_pb2.ChatMessage:
        router = self._router
        while True:
            router.check_open()
            if self._closed:
                raise StopAsyncIteration
            if self._call is None:
                if self._round is None:
                    self._round = router.new_round()
                node = self._round.next_node()
                if node is None:
                    router.end_round(self._round.tried)
                    self._round = None
                    await asyncio.sleep(self._backoff.next_s())
                    continue
                self._open(node)
            call, node = self._call, self._node
            if call is None or node is None:
                raise RuntimeError("subscription: a stream without its node")
            read = asyncio.ensure_future(call.read())
            try:
                while not read.done():
                    done, _ = await asyncio.wait({read}, timeout=self._watch_interval_s)
                    if not done and not await self._alive(node):
                        raise _StreamStalled
                item = read.result()
            except grpc.aio.AioRpcError as error:
                self._drop_call()
                if self._closed:
                    raise StopAsyncIteration from None
                if reason_of(error.trailing_metadata()) is Reason.SLOW_CONSUMER:
                    # We fell behind and the node ended the stream (its buffer is bounded):
                    # resume from the last acked id; what comes twice is dropped by id.
                    logger.info("subscription: %s", error.details())
                    continue
                self._failed_on(node, router.observe_failure(node, error, "subscribe"))
                continue
            except _StreamStalled:
                self._drop_call()
                self._failed_on(node, None)
                continue
            except asyncio.CancelledError:
                if not read.cancelled():
                    raise  # this task was cancelled
                self._drop_call()
                if self._closed:
                    raise StopAsyncIteration from None
                continue
            finally:
                if not read.done():
                    read.cancel()
                    read.add_done_callback(retrieve_exception)
            if item is grpc.aio.EOF:
                # Ended without an error: the node is going away; look elsewhere first.
                self._drop_call()
                router.observe_broken(node, "stream ended")
                self._failed_on(node, None)
                continue
            if not isinstance(item, chat_pb2.ChatMessage):
                raise TypeError(f"Subscribe stream gave {type(item).__name__}")
            self._established(node)
            return item

    def _failed_on(self, node: Node, hint: Node | None) -> None:
        """The stream on node failed: try the leader it named, else the other nodes, before
        node again (after the round's backoff)."""
        if self._round is None:
            self._round = self._router.new_round()
            self._round.mark_tried(node)
        self._round.redirect(hint)

    def _open(self, node: Node) -> None:
        if self._node is not None:
            self.resubscribed += 1
        self._node = node
        self._router.now_asking(node)
        request = chat_pb2.SubscribeRequest(token=self._token, after_id=self._acked)
        # A stream lives as long as the subscription: no deadline; the watchdog and keepalive
        # notice a dead node instead.
        self._call = self._router.stub(node).Subscribe(request)

    def _established(self, node: Node) -> None:
        """The stream on node delivers: only the leader serves Subscribe."""
        self._round = None
        self._backoff.reset()
        self._router.observe_leader(node)

    async def _alive(self, node: Node) -> bool:
        """Ask a quiet stream's node for its Status: False if it does not answer."""
        router = self._router
        try:
            reply = await router.stub(node).Status(
                chat_pb2.StatusRequest(), timeout=router.call_timeout_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                logger.info("subscription: %s %s", node.name, describe_rpc_error(error))
                router.observe_failure(node, error, "subscribe")  # never definite: these codes
                return False
            return True  # it answers, if not this: keep the stream
        router.observe_status(node, reply)
        if reply.role == chat_pb2.LEADER or (reply.node_id and reply.leader_id == reply.node_id):
            self._established(node)  # a quiet stream on the leader is a good stream
        return True
