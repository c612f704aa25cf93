from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from types import SimpleNamespace

import anyio
import msgspec
import pytest

from runtime.core.errors import InvalidArgument, Unavailable
from runtime.core.events import (
    Envelope,
    Exchange,
    ExchangeStatistics,
    SubscriberOverflow,
    Subscription,
)
from runtime.plugins.events.plugin import ExchangeConfig, moorage_plugins


class TaskExit(msgspec.Struct):
    container_id: str
    exit_status: int = 0


class ImageCreate(msgspec.Struct):
    name: str
    labels: dict[str, str] = {}


async def take(subscription: Subscription, count: int) -> list[Envelope]:
    """The next ``count`` envelopes, failing instead of hanging if they never come."""
    with anyio.fail_after(5):
        return [await anext(subscription) for _ in range(count)]


async def drain(subscription: Subscription) -> list[Envelope]:
    with anyio.fail_after(5):
        return [envelope async for envelope in subscription]


def topics(envelopes: list[Envelope]) -> list[str]:
    return [envelope.topic for envelope in envelopes]


async def test_bus_publish_stamps_the_envelope() -> None:
    exchange = Exchange()
    before = datetime.now(UTC)
    envelope = exchange.publish("default", "/tasks/exit", TaskExit("c1", 137))
    assert before <= envelope.timestamp <= datetime.now(UTC)
    assert envelope.timestamp.tzinfo is UTC
    assert (envelope.namespace, envelope.topic, envelope.type) == (
        "default",
        "/tasks/exit",
        "TaskExit",
    )
    assert envelope.event == TaskExit("c1", 137)


async def test_bus_fans_out_to_every_subscriber() -> None:
    exchange = Exchange()
    async with exchange.subscribe() as first, exchange.subscribe() as second:
        exchange.publish("default", "/tasks/exit", TaskExit("c1"))
        exchange.publish("k8s.io", "/images/create", ImageCreate("nginx"))
        for subscription in (first, second):
            received = await take(subscription, 2)
            assert topics(received) == ["/tasks/exit", "/images/create"]
            assert received[0].event == TaskExit("c1")


async def test_bus_delivers_only_matching_envelopes() -> None:
    exchange = Exchange()
    async with (
        exchange.subscribe('topic~="^/tasks/"', "namespace==k8s.io") as tasks_or_k8s,
        exchange.subscribe("type==ImageCreate,event.name!=busybox") as images,
        exchange.subscribe('event.labels."io.moorage/pin"') as pinned,
        exchange.subscribe("topic==/tasks/exit|event.exit_status==1") as exits,
    ):
        exchange.publish("default", "/tasks/exit", TaskExit("c1"))
        exchange.publish("default", "/images/create", ImageCreate("busybox"))
        exchange.publish("k8s.io", "/images/create", ImageCreate("nginx"))
        exchange.publish("default", "/images/create", ImageCreate("x", {"io.moorage/pin": ""}))
        exchange.publish("default", "/tasks/oom", TaskExit("c2", exit_status=1))
        exchange.close()
        assert [e.event for e in await drain(tasks_or_k8s)] == [
            TaskExit("c1"),
            ImageCreate("nginx"),
            TaskExit("c2", exit_status=1),
        ]
        assert [e.event.name for e in await drain(images)] == ["nginx", "x"]
        assert [e.event.name for e in await drain(pinned)] == ["x"]
        assert topics(await drain(exits)) == ["/tasks/exit", "/tasks/oom"]


async def test_bus_closes_only_the_slow_subscriber() -> None:
    exchange = Exchange(buffer_size=2)
    fast_received: list[Envelope] = []

    async def read_fast(subscription: Subscription) -> None:
        async for envelope in subscription:
            fast_received.append(envelope)

    async with exchange.subscribe() as slow, exchange.subscribe() as fast:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_fast, fast)
            for index in range(5):
                await anyio.wait_all_tasks_blocked()
                exchange.publish("default", "/tasks/exit", TaskExit(f"c{index}"))
            await anyio.wait_all_tasks_blocked()
            assert exchange.statistics() == ExchangeStatistics(
                subscribers=1, published=5, overflowed=1
            )
            exchange.close()

        assert [e.event.container_id for e in fast_received] == [f"c{i}" for i in range(5)]
        assert [e.event.container_id for e in await take(slow, 2)] == ["c0", "c1"]
        with pytest.raises(SubscriberOverflow) as caught:
            await anext(slow)
        assert caught.value.message == (
            "event subscriber too slow: 2 events were buffered and not read, so it was "
            "disconnected; list current state and subscribe again"
        )
        assert isinstance(caught.value, Unavailable)
        with pytest.raises(SubscriberOverflow):
            await anext(slow)


async def test_bus_keeps_each_publishers_order() -> None:
    exchange = Exchange()

    async def publisher(name: str) -> None:
        for index in range(50):
            exchange.publish("default", f"/{name}/e{index}", TaskExit(name))
            await anyio.lowlevel.checkpoint()

    async with exchange.subscribe() as subscription:
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(publisher, name)
        received = topics(await take(subscription, 150))
    for name in ("a", "b", "c"):
        assert [t for t in received if t.startswith(f"/{name}/")] == [
            f"/{name}/e{i}" for i in range(50)
        ]


async def test_bus_unsubscribes_on_exit() -> None:
    exchange = Exchange(buffer_size=1)
    async with exchange.subscribe() as subscription:
        assert exchange.statistics().subscribers == 1
    assert exchange.statistics().subscribers == 0
    for _ in range(3):
        exchange.publish("default", "/tasks/exit", TaskExit("c1"))
    assert exchange.statistics() == ExchangeStatistics(subscribers=0, published=3, overflowed=0)
    with pytest.raises(anyio.ClosedResourceError):
        await anext(subscription)


async def test_bus_subscription_is_registered_before_entering() -> None:
    """Events published between subscribe() and ``async with`` are not lost."""
    exchange = Exchange()
    subscription = exchange.subscribe()
    exchange.publish("default", "/tasks/exit", TaskExit("c1"))
    async with subscription:
        assert topics(await take(subscription, 1)) == ["/tasks/exit"]


async def test_bus_close_ends_iteration_and_refuses_subscribers() -> None:
    exchange = Exchange()
    async with exchange.subscribe() as subscription:
        exchange.publish("default", "/tasks/exit", TaskExit("c1"))
        exchange.close()
        assert topics(await drain(subscription)) == ["/tasks/exit"]
    with pytest.raises(Unavailable) as caught:
        exchange.subscribe()
    assert caught.value.message == "the event exchange is closed"


async def test_bus_has_subscriber_applies_each_filter_to_the_event() -> None:
    """Subscribers of other topics, namespaces or payloads do not count."""
    exchange = Exchange()
    exit_c1 = TaskExit("c1", 3)
    assert not exchange.has_subscriber("default", "/tasks/exit", exit_c1)
    async with contextlib.AsyncExitStack() as stack:
        for filter_ in ('topic=="/gc/run"',
                        'topic~="^/(content|images|snapshot|leases|containers)/"',
                        'topic~="^/tasks/",namespace==k8s.io',
                        'topic=="/tasks/exit",event.container_id==c2'):
            await stack.enter_async_context(exchange.subscribe(filter_))
        assert not exchange.has_subscriber("default", "/tasks/exit", exit_c1)
        assert exchange.has_subscriber("k8s.io", "/tasks/exit", exit_c1)
        async with exchange.subscribe("event.exit_status==3"):
            assert exchange.has_subscriber("default", "/tasks/exit", exit_c1)
        assert not exchange.has_subscriber("default", "/tasks/exit", exit_c1)


async def test_bus_subscription_confined_to_a_namespace_sees_only_it() -> None:
    exchange = Exchange()
    async with exchange.subscribe('topic~="^/tasks/"', "type==ImageCreate",
                                  namespace="team-a") as subscription:
        exchange.publish("team-b", "/tasks/exit", TaskExit("c1"))
        exchange.publish("team-b", "/images/create", ImageCreate("nginx"))
        assert not exchange.has_subscriber("team-b", "/tasks/exit", TaskExit("c1"))
        assert exchange.has_subscriber("team-a", "/tasks/exit", TaskExit("c1"))
        exchange.publish("team-a", "/images/create", ImageCreate("busybox"))
        exchange.publish("team-a", "/tasks/exit", TaskExit("c2"))
        received = await take(subscription, 2)
    assert [(e.namespace, e.topic) for e in received] == [
        ("team-a", "/images/create"), ("team-a", "/tasks/exit")]


def test_bus_rejects_an_invalid_namespace_to_confine_to() -> None:
    with pytest.raises(InvalidArgument, match="invalid namespace 'a/b'"):
        Exchange().subscribe(namespace="a/b")


def test_bus_has_subscriber_validates_like_publish() -> None:
    with pytest.raises(InvalidArgument, match="invalid topic 'tasks'"):
        Exchange().has_subscriber("default", "tasks", TaskExit("c1"))


async def test_bus_wait_for_subscriber_ignores_subscribers_of_other_events() -> None:
    exchange = Exchange()
    order: list[str] = []

    async def waiter() -> None:
        await exchange.wait_for_subscriber("default", "/tasks/exit", TaskExit("c1"))
        order.append("heard")

    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await stack.enter_async_context(exchange.subscribe('topic=="/gc/run"'))
        await stack.enter_async_context(exchange.subscribe("namespace==other"))
        await anyio.wait_all_tasks_blocked()
        order.append("others subscribed")
        await stack.enter_async_context(exchange.subscribe('topic~="^/tasks/"'))
    assert order == ["others subscribed", "heard"]


async def test_bus_wait_for_subscriber_returns_at_once_when_one_listens() -> None:
    exchange = Exchange()
    async with exchange.subscribe():
        with anyio.fail_after(1):
            await exchange.wait_for_subscriber("default", "/tasks/exit", TaskExit("c1"))


async def test_bus_wait_for_subscriber_fails_when_the_exchange_closes() -> None:
    exchange = Exchange()

    async def close_when_waited_for() -> None:
        await anyio.wait_all_tasks_blocked()
        exchange.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(close_when_waited_for)
        with pytest.raises(Unavailable, match="the event exchange is closed"):
            await exchange.wait_for_subscriber("default", "/tasks/exit", TaskExit("c1"))


def test_bus_statistics_are_a_frozen_record() -> None:
    stats = Exchange().statistics()
    assert stats == ExchangeStatistics(subscribers=0, published=0, overflowed=0)
    with pytest.raises(AttributeError):
        stats.published = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("tasks/exit", "invalid topic 'tasks/exit'"),
        ("/tasks/", "invalid topic '/tasks/'"),
        ("/tasks//exit", "invalid topic '/tasks//exit'"),
        ("/tasks/ex it", "invalid topic '/tasks/ex it'"),
        ("", "invalid topic ''"),
    ],
)
def test_bus_rejects_invalid_topics(topic: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Exchange().publish("default", topic, TaskExit("c1"))
    assert caught.value.message == (
        f"{message}: expected '/'-separated identifiers such as '/tasks/exit'"
    )


def test_bus_accepts_identifier_topics() -> None:
    exchange = Exchange()
    for topic in ("/tasks/exec-added", "/a", "/snapshot/v1.commit", "/x_y/Z9"):
        assert exchange.publish("default", topic, TaskExit("c1")).topic == topic


@pytest.mark.parametrize(
    ("namespace", "message"),
    [
        ("", "namespace must not be empty"),
        ("a" * 77, f"invalid namespace {'a' * 20!r}...: longer than 76 characters"),
        (
            "k8s..io",
            "invalid namespace 'k8s..io': expected letters and digits joined by single "
            "'.', '_' or '-'",
        ),
        (
            "-k8s",
            "invalid namespace '-k8s': expected letters and digits joined by single "
            "'.', '_' or '-'",
        ),
        (
            "a/b",
            "invalid namespace 'a/b': expected letters and digits joined by single '.', '_' or '-'",
        ),
    ],
)
def test_bus_rejects_invalid_namespaces(namespace: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Exchange().publish(namespace, "/tasks/exit", TaskExit("c1"))
    assert caught.value.message == message


def test_bus_accepts_a_namespace_of_76_characters() -> None:
    assert Exchange().publish("a" * 76, "/tasks/exit", TaskExit("c1")).namespace == "a" * 76


def test_bus_rejects_payloads_that_are_not_structs() -> None:
    with pytest.raises(InvalidArgument) as caught:
        Exchange().publish("default", "/tasks/exit", {"id": "c1"})  # type: ignore[arg-type]
    assert caught.value.message == "event must be a msgspec.Struct, not dict"


def test_bus_rejects_invalid_filters_at_subscribe_time() -> None:
    exchange = Exchange()
    with pytest.raises(InvalidArgument) as caught:
        exchange.subscribe("topic=/tasks/exit")
    assert caught.value.message == (
        "invalid filter 'topic=/tasks/exit': expected '==', '!=' or '~=' at position 5, "
        "found '=/tasks/exit'"
    )
    assert exchange.statistics().subscribers == 0


def test_bus_rejects_an_empty_buffer() -> None:
    with pytest.raises(InvalidArgument) as caught:
        Exchange(buffer_size=0)
    assert caught.value.message == "buffer_size must be at least 1, not 0"


def test_envelope_adaptor_reads_routing_and_payload_fields() -> None:
    envelope = Exchange().publish("default", "/images/create", ImageCreate("nginx", {"a.b": "c"}))
    lookup = envelope.adaptor()
    assert lookup(["namespace"]) == ("default", True)
    assert lookup(["type"]) == ("ImageCreate", True)
    assert lookup(["event", "name"]) == ("nginx", True)
    assert lookup(["event", "labels", "a.b"]) == ("c", True)
    assert lookup(["event", "missing"]) == ("", False)
    assert lookup(["timestamp"]) == ("", False)


def test_plugin_config_defaults_and_bounds() -> None:
    assert msgspec.convert({}, ExchangeConfig).buffer_size == 1024
    with pytest.raises(msgspec.ValidationError, match="Expected `int` >= 1"):
        msgspec.convert({"buffer_size": 0}, ExchangeConfig)


async def test_plugin_registers_events_exchange() -> None:
    [registration] = list(moorage_plugins())
    assert registration.name == "events.exchange"
    assert registration.config is ExchangeConfig
    ctx = SimpleNamespace(config=ExchangeConfig(buffer_size=1))
    exchange = await registration.init(ctx)  # type: ignore[arg-type]
    assert isinstance(exchange, Exchange)
    async with exchange.subscribe() as subscription:
        exchange.publish("default", "/tasks/exit", TaskExit("c1"))
        exchange.publish("default", "/tasks/exit", TaskExit("c2"))
        with pytest.raises(SubscriberOverflow, match="1 event was buffered"):
            await drain(subscription)


async def test_plugin_close_ends_subscriptions() -> None:
    [registration] = list(moorage_plugins())
    exchange = Exchange()
    async with exchange.subscribe() as subscription:
        exchange.publish("default", "/tasks/exit", TaskExit("c1"))
        assert registration.close is not None
        await registration.close(exchange)
        assert topics(await drain(subscription)) == ["/tasks/exit"]
