"""The admin API of a real daemon process, through the synchronous client and raw HTTP.

Every error is checked through :func:`tests.fixtures.daemon.assert_error`: one shape,
``{"error": {"code", "message"}}``, with the HTTP status of the code's error class.
"""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import runtime
from runtime.api.types import NAMESPACE_HEADER, EventEnvelope
from runtime.client import Client
from runtime.client.transport import Response, request
from runtime.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
    NotImplementedYet,
    Unauthenticated,
)
from tests.fixtures.daemon import Daemon, assert_error
from tests.fixtures.registry import free_port


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by the tests that only add their own namespaces."""
    with Daemon(tmp_path_factory.mktemp("api")) as daemon:
        yield daemon


@pytest.fixture
def client(api: Daemon) -> Client:
    return api.client()


def raw(
    address: str,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> Response:
    return request(address, method, path, headers=dict(headers or {}), body=body, timeout=10)


def raises(code: str, fn: Any, *args: Any) -> str:
    """Call ``fn`` and return the message of the MoorageError it must raise with ``code``."""
    with pytest.raises(MoorageError) as info:
        fn(*args)
    return assert_error(info.value, code)


# -- system --------------------------------------------------------------------------


def test_version(api: Daemon, client: Client) -> None:
    version = client.version()
    assert (version.version, version.api_version) == (runtime.__version__, 1)
    assert api.proc is not None and version.pid == api.proc.pid


def test_healthz(client: Client) -> None:
    assert client.healthz().status == "ok"


def test_socket_is_group_accessible_only(api: Daemon) -> None:
    mode = api.socket_path.lstat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_plugins_list_status_and_origin(client: Client) -> None:
    plugins = {f"{p.type}.{p.id}": p for p in client.plugins()}
    core = ["events.exchange", "metadata.sqlite", "api.system", "api.namespaces", "server.http"]
    for name in core:
        assert (plugins[name].status, plugins[name].reason) == ("ok", ""), name
        assert plugins[name].distribution == "moorage"
        assert plugins[name].version == runtime.__version__
        assert plugins[name].api_version == 1
    assert plugins["api.namespaces"].requires == ["metadata.sqlite"]
    assert plugins["server.http"].requires == ["api"]


def test_plugins_list_follows_start_order(client: Client) -> None:
    names = [f"{p.type}.{p.id}" for p in client.plugins()]
    assert names[0] == "events.exchange"
    assert names.index("metadata.sqlite") < names.index("api.namespaces")
    assert all(names.index(n) < names.index("server.http") for n in names if n.startswith("api."))


# -- namespaces ----------------------------------------------------------------------


def test_namespace_create_list_label_delete(client: Client) -> None:
    created = client.create_namespace("lifecycle", {"team": "infra", "tier": "1"})
    assert (created.name, created.labels) == ("lifecycle", {"team": "infra", "tier": "1"})
    assert created.created_at is not None and created.created_at == created.updated_at
    assert "lifecycle" in [ns.name for ns in client.namespaces()]

    labelled = client.label_namespace("lifecycle", {"tier": "", "owner": "ada"})
    assert labelled.labels == {"team": "infra", "owner": "ada"}
    assert labelled.updated_at is not None and created.updated_at is not None
    assert labelled.updated_at >= created.updated_at
    assert client.get_namespace("lifecycle").labels == {"team": "infra", "owner": "ada"}

    client.delete_namespace("lifecycle")
    assert "lifecycle" not in [ns.name for ns in client.namespaces()]
    message = raises("not_found", client.get_namespace, "lifecycle")
    assert message == "namespace 'lifecycle' not found"


def test_namespace_list_is_sorted(client: Client) -> None:
    for name in ("sort-b", "sort-a", "sort-c"):
        client.create_namespace(name)
    names = [ns.name for ns in client.namespaces()]
    assert names == sorted(names)


def test_namespace_create_twice_is_already_exists(client: Client) -> None:
    client.create_namespace("twice")
    with pytest.raises(AlreadyExists) as info:
        client.create_namespace("twice")
    assert assert_error(info.value, "already_exists") == "namespace 'twice' already exists"


def test_namespace_invalid_name_is_invalid_argument(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.create_namespace("no spaces")
    assert assert_error(info.value, "invalid_argument") == (
        "namespace 'no spaces' is invalid: use letters and digits joined by single '.', '_' or '-'"
    )


def test_namespace_reserved_name(client: Client) -> None:
    assert raises("invalid_argument", client.create_namespace, "version") == (
        "namespace 'version' is reserved"
    )


def test_namespace_label_and_delete_unknown_are_not_found(client: Client) -> None:
    assert raises("not_found", client.label_namespace, "ghost", {"a": "b"}) == (
        "namespace 'ghost' not found"
    )
    with pytest.raises(NotFound) as info:
        client.delete_namespace("ghost")
    assert assert_error(info.value, "not_found") == "namespace 'ghost' not found"


def test_namespace_delete_holding_objects_is_failed_precondition(api: Daemon) -> None:
    """The content row is written straight into the database while the daemon is down."""
    api.client().create_namespace("busy")
    assert api.stop() == 0
    db = sqlite3.connect(api.db_path)
    with db:
        # A GC root: the garbage collector would otherwise remove the unreferenced blob.
        db.execute(
            "INSERT INTO content(namespace, digest, size, labels, created_at, updated_at) "
            "VALUES ('busy', 'sha256:' || lower(hex(zeroblob(32))), 3, ?, "
            "'2024-01-01T00:00:00+00:00', '2024-01-01T00:00:00+00:00')",
            ('{"containerd.io/gc.root": "test"}',),
        )
    db.close()
    api.start()
    client = api.client()
    with pytest.raises(FailedPrecondition) as info:
        client.delete_namespace("busy")
    assert assert_error(info.value, "failed_precondition") == (
        "namespace 'busy' must be empty, but it still has: 1 blobs"
    )
    assert "busy" in [ns.name for ns in client.namespaces()]


# -- errors --------------------------------------------------------------------------


def test_error_unknown_route_is_not_found(api: Daemon) -> None:
    response = raw(api.address, "GET", "/v1/nope")
    assert assert_error(response, "not_found") == "no endpoint GET /v1/nope"


def test_error_method_a_path_does_not_offer_is_not_implemented(api: Daemon) -> None:
    """gRPC's UNIMPLEMENTED, in the vocabulary; ``Allow`` names what the path offers."""
    response = raw(api.address, "PUT", "/v1/version")
    allowed = response.headers.get("allow")
    assert assert_error(response, "not_implemented") == (
        "PUT not allowed on /v1/version; allowed: GET"
    )
    assert allowed == "GET"


def test_error_method_through_the_client_raises_not_implemented(api: Daemon) -> None:
    with pytest.raises(NotImplementedYet) as info:
        api.client().call("DELETE", "/v1/healthz")
    assert assert_error(info.value, "not_implemented").startswith("DELETE not allowed on ")


def test_error_bad_namespace_header_is_invalid_argument(api: Daemon) -> None:
    response = raw(api.address, "GET", "/v1/namespaces", headers={NAMESPACE_HEADER: "bad/ns"})
    assert assert_error(response, "invalid_argument") == (
        f"header {NAMESPACE_HEADER}: namespace 'bad/ns' is invalid: use letters and digits "
        "joined by single '.', '_' or '-'"
    )


def test_error_bad_namespace_through_the_client(api: Daemon) -> None:
    message = raises("invalid_argument", api.client(namespace="-dash").namespaces)
    assert message.startswith(f"header {NAMESPACE_HEADER}: namespace '-dash' is invalid")


def test_error_body_with_unknown_field(api: Daemon) -> None:
    response = raw(api.address, "POST", "/v1/namespaces", body=b'{"nmae": "x"}')
    assert assert_error(response, "invalid_argument") == (
        "invalid request body: Object contains unknown field `nmae`"
    )


def test_error_body_missing_field(api: Daemon) -> None:
    response = raw(api.address, "POST", "/v1/namespaces", body=b"{}")
    assert assert_error(response, "invalid_argument") == (
        "invalid request body: Object missing required field `name`"
    )


def test_error_body_not_json(api: Daemon) -> None:
    response = raw(api.address, "POST", "/v1/namespaces", body=b"{name")
    assert assert_error(response, "invalid_argument").startswith("request body is not valid JSON: ")


def test_error_bad_event_filter_before_streaming(api: Daemon) -> None:
    response = raw(api.address, "GET", "/v1/events?filter=topic%3D%3D")
    assert_error(response, "invalid_argument")


# -- OpenAPI -------------------------------------------------------------------------


def test_openapi_lists_every_core_route(client: Client) -> None:
    doc = client.openapi()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["version"] == runtime.__version__
    operations = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert {
        ("GET", "/v1/version"),
        ("GET", "/v1/healthz"),
        ("GET", "/v1/plugins"),
        ("GET", "/v1/events"),
        ("GET", "/v1/namespaces"),
        ("POST", "/v1/namespaces"),
        ("GET", "/v1/namespaces/{name}"),
        ("PATCH", "/v1/namespaces/{name}"),
        ("DELETE", "/v1/namespaces/{name}"),
        ("GET", "/v1/openapi.json"),
    } <= operations
    error = doc["paths"]["/v1/namespaces/{name}"]["delete"]["responses"]["412"]
    schema = error["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ErrorBody"}


def test_openapi_documents_exactly_the_served_routes() -> None:
    """Every route the app serves is in the document, and nothing else (in process)."""
    from runtime.plugins.api.api import Route
    from runtime.plugins.api.openapi import openapi_document
    from runtime.plugins.api.server import build_app

    async def handler(request: Any) -> None:
        return None

    routes = [
        Route("GET", "/v1/things", handler, "List."),
        Route("POST", "/v1/things", handler, "Create."),
        Route("GET", "/v1/things/{name}", handler, "One."),
        Route("GET", "/v1/blobs/{ref:.+}", handler, "A ref with slashes."),
        Route("DELETE", "/v1/content/{digest:sha256:[0-9a-f]{64}}", handler, "A digest."),
    ]
    app = build_app(routes, version="9.9")
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    doc = openapi_document([*routes, Route("GET", "/v1/openapi.json", handler, "")], "9.9")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    # aiohttp's canonical form drops the regexes, as the document must.
    assert documented == served
    assert ("DELETE", "/v1/content/{digest}") in documented
    params = doc["paths"]["/v1/blobs/{ref}"]["get"]["parameters"]
    assert {"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}} in params


# -- events --------------------------------------------------------------------------


class Follower:
    """``client.events()`` in a thread, until a ``/namespaces/create`` arrives."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: list[EventEnvelope] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for envelope in self.client.events():
                self.seen.append(envelope)
                if envelope.topic == "/namespaces/create":
                    break
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            self.done.set()


def create_until_seen(client: Client, follower: Follower, name: str, before: str = "") -> None:
    """Create ``name`` until the follower, whose subscription starts asynchronously, sees it.

    Each attempt first creates ``before<i>`` (another namespace), whose events the
    follower must never see.
    """
    for attempt in range(100):
        if before:
            client.create_namespace(f"{before}{attempt}")
        client.create_namespace(name)
        if follower.done.wait(0.1):
            break
        client.delete_namespace(name)
    assert follower.done.wait(5), "no /namespaces/create event arrived"
    assert follower.error is None, follower.error


def test_events_stream_namespace_create(api: Daemon) -> None:
    follower = Follower(api.client(namespace="evts"))
    create_until_seen(api.client(), follower, "evts")
    last = follower.seen[-1]
    assert (last.namespace, last.topic) == ("evts", "/namespaces/create")
    assert last.type == "NamespaceCreate"
    assert last.event == {"name": "evts", "labels": {}}


def test_events_of_another_namespace_are_not_seen(api: Daemon) -> None:
    follower = Follower(api.client(namespace="iso-a"))
    create_until_seen(api.client(), follower, "iso-a", before="iso-b")
    assert {e.namespace for e in follower.seen} == {"iso-a"}
    assert follower.seen[-1].topic == "/namespaces/create"


# -- TCP listener --------------------------------------------------------------------

TOKEN = "0123456789abcdef-token"


@pytest.fixture(scope="module")
def tcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    tmp = tmp_path_factory.mktemp("tcp")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    extra = f'[api]\ntcp_address = "127.0.0.1:{port}"\ntoken_file = "{token_file}"\n'
    with Daemon(tmp, extra) as daemon:
        yield daemon, f"http://127.0.0.1:{port}"


def test_tcp_without_token_is_unauthenticated(tcp: tuple[Daemon, str]) -> None:
    _, url = tcp
    response = raw(url, "GET", "/v1/version")
    assert assert_error(response, "unauthenticated") == "missing or wrong bearer token"
    with pytest.raises(Unauthenticated):
        Client(url).version()


def test_tcp_wrong_token_is_unauthenticated(tcp: tuple[Daemon, str]) -> None:
    _, url = tcp
    response = raw(url, "GET", "/v1/version", headers={"Authorization": "Bearer nope"})
    assert assert_error(response, "unauthenticated") == "missing or wrong bearer token"
    basic = raw(url, "GET", "/v1/version", headers={"Authorization": f"Basic {TOKEN}"})
    assert_error(basic, "unauthenticated")
    assert raises("unauthenticated", Client(url, token=TOKEN + "x").version) == (
        "missing or wrong bearer token"
    )


def test_tcp_right_token_is_served(tcp: tuple[Daemon, str], tmp_path: Path) -> None:
    _, url = tcp
    response = raw(url, "GET", "/v1/version", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200
    response.close()
    assert Client(url, token=TOKEN).version().version == runtime.__version__
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    assert Client(url, token_file=str(token_file)).healthz().status == "ok"


def test_tcp_unauthenticated_is_checked_before_routing(tcp: tuple[Daemon, str]) -> None:
    _, url = tcp
    assert_error(raw(url, "GET", "/v1/nope"), "unauthenticated")


def test_unix_socket_needs_no_token_when_tcp_is_on(tcp: tuple[Daemon, str]) -> None:
    daemon, _ = tcp
    assert daemon.client().healthz().status == "ok"
