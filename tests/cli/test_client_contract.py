"""Both clients implement the hot calls' contract and read the same constants."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from runtime.api import constants
from runtime.client.api import HOT_METHODS, HotClient
from runtime.client.lean import LeanClient
from runtime.client.sync import Client

CLIENTS = [LeanClient, Client]


def test_hot_methods_name_every_method_of_the_contract() -> None:
    declared = {name for name, _ in inspect.getmembers(HotClient, inspect.isfunction)
                if not name.startswith("_")}
    assert declared == set(HOT_METHODS)


@pytest.mark.parametrize("client_type", CLIENTS, ids=lambda c: c.__name__)
def test_client_is_a_hot_client(client_type: type[HotClient]) -> None:
    assert isinstance(client_type("unix:///nowhere.sock"), HotClient)


@pytest.mark.parametrize("client_type", CLIENTS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", HOT_METHODS)
def test_client_accepts_every_call_the_contract_allows(client_type: type, method: str) -> None:
    """Each parameter of the contract, with its kind and default; more only with a default."""
    wanted = inspect.signature(getattr(HotClient, method)).parameters
    offered = inspect.signature(getattr(client_type, method)).parameters
    for name, param in wanted.items():
        assert name in offered, f"{client_type.__name__}.{method} lacks {name}"
        assert offered[name].kind == param.kind, f"{client_type.__name__}.{method}({name})"
        assert offered[name].default == param.default, f"{client_type.__name__}.{method}({name})"
    for name, param in offered.items():
        if name not in wanted:
            assert param.default is not inspect.Parameter.empty or param.kind in (
                inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD
            ), f"{client_type.__name__}.{method} requires {name}, which the contract lacks"


def test_clients_default_to_the_shared_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(constants.ADDRESS_ENV, raising=False)
    monkeypatch.delenv(constants.NAMESPACE_ENV, raising=False)
    lean, typed = LeanClient(), Client()
    assert lean.address == typed.address == constants.DEFAULT_ADDRESS
    assert lean.namespace == typed.namespace == constants.DEFAULT_NAMESPACE
    assert lean.timeout == typed.timeout == constants.DEFAULT_TIMEOUT
    assert lean._headers() == typed._headers() == {
        constants.NAMESPACE_HEADER: constants.DEFAULT_NAMESPACE, "Accept": constants.JSON}


def test_clients_read_address_and_namespace_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(constants.ADDRESS_ENV, "http://127.0.0.1:1")
    monkeypatch.setenv(constants.NAMESPACE_ENV, "ns1")
    for client in (LeanClient(), Client()):
        assert (client.address, client.namespace) == ("http://127.0.0.1:1", "ns1")


def test_clients_rebuild_the_same_error_from_an_answer() -> None:
    raw = b'{"error": {"code": "not_found", "message": "no such task"}}'
    lean, typed = LeanClient._error(404, raw), Client._error(404, raw)
    assert type(lean) is type(typed) and str(lean) == str(typed) == "no such task"
    assert type(LeanClient._error(401, b"")).__name__ == "Unauthenticated"


def test_lean_client_imports_neither_the_contract_nor_typing() -> None:
    code = ("import sys; import runtime.client.lean; "
            "print(sorted(m for m in ('typing', 'runtime.client.api', 'msgspec', 'aiohttp') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                            check=True, env={"PYTHONPATH": str(_repo())})
    assert result.stdout.strip() == "[]"


def _repo() -> str:
    import runtime

    return str(inspect.getfile(runtime)).rsplit("/runtime/", 1)[0]
