"""Bounded retries: a registry that fails forever ends the pull after the configured attempts.

The fake registry cuts a blob in the middle on every attempt, or answers 503, or 429
with a ``Retry-After`` of an hour. Each pull must end with an error naming the
registry host after exactly ``attempts`` requests, leave no image and no blob behind,
and a registry that recovers within the attempts must still give a good pull. Times
are only bounded generously (the configured bound is a few seconds; a minute is
allowed), never measured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import anyio
import pytest

from runtime.client import Client
from runtime.core.errors import MoorageError, NotFound, Unavailable
from runtime.pkg.registry.client import RegistryClient
from runtime.pkg.registry.reference import parse_reference
from runtime.pkg.registry.retry import RetryPolicy, parse_retry_after
from runtime.pkg.registry.types import Descriptor
from tests.fixtures.daemon import Daemon, assert_error
from tests.fixtures.images import LayerBuilder
from tests.fixtures.system import require_root
from tests.reliability.blobs import MemoryImage, memory_image
from tests.reliability.fake_registry import FakeRegistry, Fault
from tests.reliability.store_check import assert_store_ok

pytestmark = pytest.mark.root

ATTEMPTS = 3
#: Three attempts with short waits; Retry-After honoured up to half a second.
CONFIG = f"""
[plugins."gc.scheduler"]
startup_delay = "0"
mutation_threshold = 0
deletion_threshold = 1000000

[plugins."images.store"]
read_timeout = 2.0
connect_timeout = 2.0

[plugins."images.store".retry]
attempts = {ATTEMPTS}
backoff = 0.05
max_backoff = 0.2
total = 20.0
retry_after_cap = 0.5
"""
#: Far more than the configured bound, far less than "keeps going": no timing flakes.
GENEROUS = 60.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    require_root()
    with Daemon(tmp_path_factory.mktemp("retries") / "d", CONFIG) as running:
        yield running
        assert running.client().healthz().status == "ok"


def _pull(client: Client, ref: str) -> None:
    for _ in client.pull(ref, plain_http=True):
        pass


def _image(tag: str) -> MemoryImage:
    return memory_image([LayerBuilder().dir("/data").file(f"/data/{tag}", os.urandom(300_000))])


def _failed_pull(daemon: Daemon, registry: FakeRegistry, ref: str) -> str:
    api = daemon.client("retries")
    started = time.monotonic()
    with pytest.raises(MoorageError) as caught:
        _pull(api, ref)
    assert time.monotonic() - started < GENEROUS
    message = assert_error(caught.value, "unavailable")
    assert registry.host in message, message
    assert f"gave up after {ATTEMPTS - 1} resumes" in message \
        or f"gave up after {ATTEMPTS} attempts" in message, message
    with pytest.raises(NotFound):
        api.image(ref)
    return message


@pytest.mark.parametrize("fault", [Fault.DROP, Fault.UNAVAILABLE, Fault.TOO_MANY_REQUESTS],
                         ids=lambda f: f.value)
def test_blob_failing_forever_ends_the_pull_after_the_configured_attempts(
    daemon: Daemon, fake_registry: FakeRegistry, fault: Fault
) -> None:
    """Cut mid-blob, 503 or 429 (Retry-After: one hour) on every attempt: ATTEMPTS requests."""
    fake_registry.retry_after = "3600"  # capped at retry_after_cap, or the test would hang
    image = _image(fault.value)
    ref = fake_registry.add(f"retries/{fault.value}", image)
    layer = image.layers[0].digest
    fake_registry.fault(layer, fault)
    try:
        message = _failed_pull(daemon, fake_registry, ref)
    finally:
        fake_registry.clear_faults()
    assert fake_registry.requests[("blob", layer)] == ATTEMPTS
    expected = {Fault.DROP: "cut short", Fault.UNAVAILABLE: "503",
                Fault.TOO_MANY_REQUESTS: "429"}[fault]
    assert expected in message, message
    with pytest.raises(NotFound):
        daemon.client("retries").content_info(layer)
    assert_store_ok(daemon, context=f"a pull that gave up on {fault.value}")


def test_manifest_answering_503_forever_ends_the_pull(daemon: Daemon,
                                                      fake_registry: FakeRegistry) -> None:
    """Resolving tries HEAD then GET; each round counts as one attempt."""
    image = _image("manifest-503")
    ref = fake_registry.add("retries/manifest-503", image, tag="m503")
    fake_registry.fault(image.root.digest, Fault.UNAVAILABLE)
    try:
        message = _failed_pull(daemon, fake_registry, ref)
    finally:
        fake_registry.clear_faults()
    assert "503" in message, message
    assert fake_registry.requests[("manifest", "m503")] == 2 * ATTEMPTS


@pytest.mark.parametrize("fault", [Fault.DROP, Fault.UNAVAILABLE, Fault.TOO_MANY_REQUESTS],
                         ids=lambda f: f.value)
def test_registry_recovering_within_the_attempts_gives_a_good_pull(
    daemon: Daemon, fake_registry: FakeRegistry, fault: Fault
) -> None:
    fake_registry.retry_after = "0"
    image = _image(f"recover-{fault.value}")
    ref = fake_registry.add(f"retries/recover-{fault.value}", image)
    layer = image.layers[0].digest
    fake_registry.fault(layer, fault, times=ATTEMPTS - 1)
    _pull(daemon.client("retries"), ref)
    assert fake_registry.requests[("blob", layer)] == ATTEMPTS
    assert daemon.client("retries").check_image(ref).complete


# -- the policy itself ----------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_and_retry_after_is_capped() -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=3.0, retry_after_cap=10.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert policy.delay(1, retry_after=4.0) == 4.0      # the registry's word, if longer
    assert policy.delay(3, retry_after=0.0) == 2.0      # never shorter than the backoff
    assert policy.delay(1, retry_after=3600.0) == 10.0  # at most the cap


def test_retry_after_as_seconds_or_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None


def test_total_bound_stops_retrying_before_the_attempts_run_out(
    fake_registry: FakeRegistry,
) -> None:
    """100 attempts allowed, but none may start 1 s after the first failure."""
    image = _image("total-bound")
    fake_registry.add("retries/total", image)
    layer = image.layers[0]
    fake_registry.fault(layer.digest, Fault.UNAVAILABLE)
    policy = RetryPolicy(attempts=100, backoff=0.3, max_backoff=0.3, total=1.0)
    desc = Descriptor(mediaType=layer.media_type, digest=layer.digest, size=layer.size)

    async def fetch() -> None:
        async with RegistryClient(plain_http=True, retry=policy) as client:
            ref = parse_reference(f"{fake_registry.host}/retries/total:latest")
            async with client.fetch_blob(ref, desc) as stream:
                async for _ in stream:
                    pass

    try:
        with pytest.raises(Unavailable, match=r"past the 1s retry bound") as caught:
            anyio.run(fetch)
    finally:
        fake_registry.clear_faults()
    assert fake_registry.host in str(caught.value)
    # Attempts at about 0, 0.3, 0.6 and 0.9 s; how many fit depends on the machine's speed.
    assert 2 <= fake_registry.requests[("blob", layer.digest)] <= 4
