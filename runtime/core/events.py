"""The event exchange: in-process publish/subscribe of typed events.

Publishing is synchronous and never waits, so emitting an event can never stall
the operation that caused it. Each subscriber owns a bounded buffer; one that
falls behind is disconnected alone (:class:`SubscriberOverflow`) instead of
slowing the publisher or using unbounded memory as containerd's queues do.
There is no persistence or replay: a subscriber that lost events reconciles by
listing, then subscribes again. A publisher with something worth holding back
until somebody listens (exits found at startup) asks whether a subscriber's
filters would take the event (:meth:`Exchange.has_subscriber`), or waits until
one would (:meth:`Exchange.wait_for_subscriber`).

Typical use::

    async with exchange.subscribe('topic~="^/tasks/"', "namespace==default") as events:
        async for envelope in events:
            ...

    exchange.publish("default", "/tasks/exit", TaskExit(container_id="c1", exit_status=0))

The exchange is not thread-safe: publish from the event loop, or from a worker
thread through ``anyio.from_thread.run_sync(exchange.publish, ...)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, final

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime.core import filters
from runtime.core.closing import AsyncClosing
from runtime.core.errors import InvalidArgument, Unavailable

__all__ = [
    "Envelope",
    "Exchange",
    "ExchangeStatistics",
    "SubscriberOverflow",
    "Subscription",
]

# containerd's identifier rules (pkg/identifiers), used for namespaces and topic parts.
_IDENTIFIER = r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*"
_NAMESPACE = re.compile(_IDENTIFIER)
_TOPIC = re.compile(rf"(?:/{_IDENTIFIER})+")
_MAX_NAMESPACE = 76


class SubscriberOverflow(Unavailable):
    """A subscriber read too slowly and its buffer filled up; it has been disconnected.

    Raised by the subscription's iteration once it has yielded everything that
    was buffered. Events published after that were not delivered to it.
    """


@final
class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One published event with its routing information.

    Attributes:
        timestamp: When the event was published, in UTC.
        namespace: The namespace the event belongs to.
        topic: ``/``-separated identifiers, such as ``/tasks/exit``.
        type: The payload's type name, such as ``"TaskExit"``.
        event: The payload: a msgspec Struct, or a dict once decoded by a client.
    """

    timestamp: datetime
    namespace: str
    topic: str
    type: str
    event: Any

    def adaptor(self) -> filters.Adaptor:
        """A filter adaptor over ``topic``, ``namespace``, ``type`` and ``event.<field>``."""
        routing = filters.adapt(
            {"topic": self.topic, "namespace": self.namespace, "type": self.type}
        )
        payload: list[filters.Adaptor] = []

        def lookup(fieldpath: Sequence[str]) -> tuple[str, bool]:
            if not fieldpath or fieldpath[0] != "event":
                return routing(fieldpath)
            # Converted at most once, and only if a filter looks inside the payload;
            # enc_hook=str because a filter must never make publishing fail.
            if not payload:
                builtins = msgspec.to_builtins(self.event, enc_hook=str)
                payload.append(filters.adapt({"event": builtins}))
            return payload[0](fieldpath)

        return lookup


@final
class ExchangeStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of an :class:`Exchange`'s counters."""

    subscribers: int
    """Subscriptions currently registered."""
    published: int
    """Events published since the exchange was created, delivered or not."""
    overflowed: int
    """Subscribers disconnected because their buffer was full."""


@final
class Subscription(AsyncClosing):
    """A stream of the envelopes that match a subscriber's filters.

    Registered as soon as :meth:`Exchange.subscribe` returns, so no event
    published afterwards is missed; use it as ``async with`` so that it is
    unregistered on exit. Iterating ends when the exchange closes, and raises
    :class:`SubscriberOverflow` after the buffered events if the subscriber
    fell behind.
    """

    def __init__(self, exchange: Exchange, filter: filters.Filter, buffer_size: int) -> None:
        self.filter = filter
        self._exchange = exchange
        send, receive = anyio.create_memory_object_stream[Envelope](buffer_size)
        self._send: MemoryObjectSendStream[Envelope] = send
        self._receive: MemoryObjectReceiveStream[Envelope] = receive
        self._overflow: SubscriberOverflow | None = None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            if self._overflow is not None:
                raise self._overflow from None
            raise StopAsyncIteration from None

    def end(self) -> None:
        """End the iteration after the envelopes already buffered, as at shutdown.

        Unlike :meth:`aclose` this is for the publishing side (a server that
        stops): the reader sees a clean end of the stream, not an error.
        """
        self._send.close()

    async def aclose(self) -> None:
        """Unregister from the exchange and drop whatever is still buffered."""
        self._exchange._unregister(self)
        self._send.close()
        self._receive.close()

    def _deliver(self, envelope: Envelope) -> bool:
        """Buffer ``envelope``; on a full buffer disconnect and return ``False``."""
        try:
            self._send.send_nowait(envelope)
        except anyio.WouldBlock:
            buffered = self._send.statistics().current_buffer_used
            were = "event was" if buffered == 1 else "events were"
            self._overflow = SubscriberOverflow(
                f"event subscriber too slow: {buffered} {were} buffered and not read, "
                "so it was disconnected; list current state and subscribe again"
            )
            self._send.close()
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The reader closed its end without unregistering; nobody is listening.
            return False
        return True


@final
class Exchange:
    """Fans published events out to subscribers, each with a bounded buffer.

    Args:
        buffer_size: How many unread events a subscriber may hold before it is
            disconnected with :class:`SubscriberOverflow`.
    """

    def __init__(self, buffer_size: int = 1024) -> None:
        if buffer_size < 1:
            raise InvalidArgument(f"buffer_size must be at least 1, not {buffer_size}")
        self._buffer_size = buffer_size
        # A dict keeps subscription order, so delivery order is reproducible.
        self._subscribers: dict[Subscription, None] = {}
        self._published = 0
        self._overflowed = 0
        self._closed = False
        # Set (and dropped) by the next subscribe or close; made on demand because an
        # anyio Event belongs to the event loop that is running when it is created.
        self._subscribed: anyio.Event | None = None

    def publish(self, namespace: str, topic: str, event: msgspec.Struct) -> Envelope:
        """Stamp ``event`` and hand it to every matching subscriber, without waiting.

        Raises:
            InvalidArgument: The namespace or topic is malformed, or ``event`` is
                not a msgspec Struct.
        """
        envelope = _envelope(namespace, topic, event)
        self._published += 1
        adaptor = envelope.adaptor()
        # Copied because an overflowing subscriber is removed during the loop.
        for subscription in list(self._subscribers):
            if subscription.filter.match(adaptor) and not subscription._deliver(envelope):
                self._unregister(subscription)
                if subscription._overflow is not None:
                    self._overflowed += 1
        return envelope

    def has_subscriber(self, namespace: str, topic: str, event: msgspec.Struct) -> bool:
        """Whether publishing ``event`` now would reach at least one subscriber.

        The subscribers' filters are applied to the event itself, so one that
        listens to other topics, namespaces or containers does not count.

        Raises:
            InvalidArgument: As :meth:`publish`.
        """
        return self._has_match(_envelope(namespace, topic, event).adaptor())

    async def wait_for_subscriber(self, namespace: str, topic: str,
                                  event: msgspec.Struct) -> None:
        """Return as soon as publishing ``event`` would reach a subscriber.

        The wait for a listener that :meth:`has_subscriber` asks about: an
        event that matters only if somebody hears it is held back, not lost.

        Raises:
            InvalidArgument: As :meth:`publish`.
            Unavailable: The exchange is closed, so nobody will ever subscribe.
        """
        adaptor = _envelope(namespace, topic, event).adaptor()
        # No await between the check and the wait: a subscription cannot slip in unseen.
        while not self._has_match(adaptor):
            if self._closed:
                raise Unavailable("the event exchange is closed")
            if self._subscribed is None:
                self._subscribed = anyio.Event()
            await self._subscribed.wait()

    def subscribe(self, *filters_: str, namespace: str | None = None) -> Subscription:
        """Register a subscriber for the envelopes matching any of ``filters_``.

        No filter means every event. Fields: ``topic``, ``namespace``, ``type``
        and ``event.<field>`` (see :mod:`runtime.core.filters`). ``namespace``
        confines the subscriber to one namespace whatever its filters say, as
        the API confines a client: events of others neither fill its buffer
        nor count it as listening (:meth:`has_subscriber`).

        Raises:
            InvalidArgument: A filter or the namespace is malformed.
            Unavailable: The exchange is closed.
        """
        parsed = filters.parse(filters_)
        if namespace is not None:
            _check_namespace(namespace)
            scope = filters.Selector(("namespace",), filters.Operator.EQUAL, namespace)
            parsed = filters.Filter(tuple((*group, scope) for group in parsed.alternatives))
        if self._closed:
            raise Unavailable("the event exchange is closed")
        subscription = Subscription(self, parsed, self._buffer_size)
        self._subscribers[subscription] = None
        self._wake_waiters()
        return subscription

    def statistics(self) -> ExchangeStatistics:
        """The current counters."""
        return ExchangeStatistics(
            subscribers=len(self._subscribers),
            published=self._published,
            overflowed=self._overflowed,
        )

    def close(self) -> None:
        """End every subscription's iteration after its buffered events (shutdown).

        Later publishes reach nobody; later subscribes raise :class:`Unavailable`.
        """
        self._closed = True
        for subscription in list(self._subscribers):
            subscription.end()
        self._subscribers.clear()
        self._wake_waiters()

    def _unregister(self, subscription: Subscription) -> None:
        self._subscribers.pop(subscription, None)

    def _has_match(self, adaptor: filters.Adaptor) -> bool:
        return any(s.filter.match(adaptor) for s in self._subscribers)

    def _wake_waiters(self) -> None:
        if self._subscribed is not None:
            self._subscribed.set()
            self._subscribed = None


def _envelope(namespace: str, topic: str, event: msgspec.Struct) -> Envelope:
    """Validate the routing and the payload and stamp them (as :meth:`Exchange.publish`)."""
    _check_namespace(namespace)
    if not _TOPIC.fullmatch(topic):
        raise InvalidArgument(
            f"invalid topic {topic!r}: expected '/'-separated identifiers such as '/tasks/exit'"
        )
    if not isinstance(event, msgspec.Struct):
        raise InvalidArgument(f"event must be a msgspec.Struct, not {type(event).__name__}")
    return Envelope(
        timestamp=datetime.now(UTC),
        namespace=namespace,
        topic=topic,
        type=type(event).__name__,
        event=event,
    )


def _check_namespace(namespace: str) -> None:
    if not namespace:
        raise InvalidArgument("namespace must not be empty")
    if len(namespace) > _MAX_NAMESPACE:
        raise InvalidArgument(
            f"invalid namespace {namespace[:20]!r}...: longer than {_MAX_NAMESPACE} characters"
        )
    if not _NAMESPACE.fullmatch(namespace):
        raise InvalidArgument(
            f"invalid namespace {namespace!r}: expected letters and digits "
            "joined by single '.', '_' or '-'"
        )
