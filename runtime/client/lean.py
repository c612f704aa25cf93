"""The CLI's hot commands over the standard library alone: JSON in, plain objects out.

``moorage version``, ``run``, ``images pull -q``, ``tasks kill|rm`` and
``containers rm`` are the commands scripts call by the dozen (a pull before
each run, a burst of containers, their teardown).
The typed :class:`runtime.client.Client` imports msgspec and every record type
of the API, about 40 ms of CPU on this class of machine before the first
byte is sent; this client speaks HTTP over ``_socket`` and JSON over
``_json`` (:mod:`runtime.client.plainjson`), and answers with
:class:`types.SimpleNamespace` objects (or plain values), so that each call
costs about what the daemon spends on it. The daemon still validates every
body against its types.

Both clients offer the methods :mod:`runtime.cli.run` calls, with the same
names and arguments.
"""

from __future__ import annotations

from types import SimpleNamespace

from runtime.api.constants import JSON
from runtime.client.base import BaseClient
from runtime.client.plainjson import dumps, loads
from runtime.core.errors import from_code

# typing.TYPE_CHECKING without importing typing (nor urllib.parse, below, when a
# call does without it): each costs a few ms of every call of the CLI.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence
    from typing import Any

    from runtime.client.transport import Response

__all__ = ["LeanClient"]


_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def quote(value: str, safe: str = "/") -> str:
    """:func:`urllib.parse.quote`, importing it only for a value that needs it."""
    if all(c in _PLAIN or c in safe for c in value):
        return value
    from urllib.parse import quote as quote_

    return quote_(value, safe=safe)


def _dumps(value: Any) -> bytes:
    return dumps(value).encode()


def urlencode(query: Mapping[str, str]) -> str:
    """:func:`urllib.parse.urlencode` of plain strings, as :func:`quote` does."""
    return "&".join(f"{quote(k, '')}={quote(v, '')}" for k, v in query.items())


def _id(value: str) -> str:
    return quote(value, safe="")


def _namespace(value: Any) -> Any:
    """JSON objects as attribute bags (recursively), the rest as is."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_namespace(v) for v in value]
    return value


class LeanClient(BaseClient):
    """A client of one daemon, in one namespace, for the hot commands.

    It implements :class:`runtime.client.api.HotClient`, as the typed client
    does (without importing it: ``typing`` costs the CLI a few ms); the
    arguments are :class:`runtime.client.base.BaseClient`'s.
    """

    # -- plumbing ---------------------------------------------------------------

    def open(self, method: str, path: str, body: Any = None,
             query: Mapping[str, str] | None = None, timeout: float | None = -1.0) -> Response:
        """Send a request; return the response once its status is a success.

        Raises:
            MoorageError: The server's error, rebuilt as the matching class.
            Unavailable: The daemon cannot be reached.
        """
        if query:
            path = f"{path}?{urlencode(query)}"
        headers = self._headers()
        data = None
        if body is not None:
            data = _dumps(body)
            headers["Content-Type"] = JSON
        return self._send(method, path, headers, data, timeout)

    def call(self, method: str, path: str, body: Any = None,
             query: Mapping[str, str] | None = None, timeout: float | None = -1.0) -> Any:
        """Send a request; the JSON answer as attribute bags (``None`` without a body)."""
        raw = self.open(method, path, body, query, timeout).read()
        return _namespace(loads(raw)) if raw else None

    # -- the hot endpoints --------------------------------------------------------

    def version(self) -> Any:
        """The daemon's version (``.version``, ``.api_version``...)."""
        return self.call("GET", "/v1/version")

    def image_rootfs(self, name: str, snapshotter: str = "") -> Any:
        """Unpack if needed; ``.snapshotter``, ``.chain_id`` and ``.config`` (a dict)."""
        raw = self.open("GET", "/v1/images/" + quote(name, safe="/:@") + "/rootfs",
                        query={"snapshotter": snapshotter} if snapshotter else None,
                        timeout=None).read()
        found = loads(raw)
        return SimpleNamespace(name=found.get("name", name), snapshotter=found["snapshotter"],
                               chain_id=found["chain_id"], config=found.get("config") or {})

    def pull(self, ref: str, *, platforms: Sequence[str] = (), all_platforms: bool = False,
             snapshotter: str = "", unpack: bool = True, plain_http: bool = False,
             hosts_dir: str = "", user: str = "", password: str = "",
             max_concurrent_downloads: int = 0) -> Iterator[Any]:
        """``POST /v1/images/pull``: each progress line as it arrives; ``.type`` says which.

        The types are ``resolved``, ``blob`` and, last, ``done``.

        Raises:
            MoorageError: The pull failed (raised when its ``error`` line arrives).
        """
        body = {"ref": ref, "platforms": list(platforms), "all_platforms": all_platforms,
                "snapshotter": snapshotter, "unpack": unpack, "plain_http": plain_http,
                "hosts_dir": hosts_dir, "user": user, "password": password,
                "max_concurrent_downloads": max_concurrent_downloads}
        response = self.open("POST", "/v1/images/pull", body, timeout=None)
        try:
            for line in response.iter_lines():
                if line.strip():
                    event = _namespace(loads(line))
                    if event.type == "error":
                        raise from_code(event.code, event.message)
                    yield event
        finally:
            response.close()

    def run(self, container: Mapping[str, Any], *, parent: str = "",
            rootfs: Sequence[Mapping[str, Any]] | None = None, stdin: bool = False,
            start: bool = False, image_rootfs: bool = False) -> Any:
        """``POST /v1/run``: the container, its snapshot and its task; the task's state.

        ``image_rootfs``: the daemon finds the image's root filesystem itself
        (``RunRequest.image_rootfs``) instead of ``parent``.
        """
        body = {"container": container, "parent": parent, "rootfs": list(rootfs or []),
                "stdin": stdin, "start": start}
        if image_rootfs:
            body["image_rootfs"] = True
        return self.call("POST", "/v1/run", body)

    def remove(self, container_id: str, *, force: bool = False, snapshot: bool = False) -> None:
        """``DELETE /v1/run/{id}``: a container with its task and (``snapshot``) snapshot.

        ``force`` kills a running task first.
        """
        query = {k: "1" for k, on in (("force", force), ("snapshot", snapshot)) if on}
        self.open("DELETE", f"/v1/run/{_id(container_id)}", query=query).read()

    # Batches: one request for many ids; a list of ``.id``, ``.code`` ("" on success),
    # ``.message`` per distinct id, in order (runtime.api.batch).

    def remove_many(self, ids: Iterable[str], *, force: bool = False,
                    snapshot: bool = False) -> list[Any]:
        """``POST /v1/run/remove``: :meth:`remove` for each id."""
        body = {"ids": list(ids), "force": force, "snapshot": snapshot}
        return list(self.call("POST", "/v1/run/remove", body, timeout=None).results)

    def kill_tasks(self, ids: Iterable[str], signal: int | str = 15, *,
                   all: bool = False) -> list[Any]:
        """``POST /v1/tasks/kill``: :meth:`kill_task` (init processes) for each id."""
        body = {"ids": list(ids), "signal": signal, "all": all}
        return list(self.call("POST", "/v1/tasks/kill", body).results)

    def delete_tasks(self, ids: Iterable[str], *, force: bool = False) -> list[Any]:
        """``POST /v1/tasks/delete``: :meth:`delete_task` for each id."""
        body = {"ids": list(ids), "force": force}
        return list(self.call("POST", "/v1/tasks/delete", body, timeout=None).results)

    # The docker-style verbs of many names (``moorage rm|stop|kill``): one result per
    # name given, duplicates included, with the verbs' own rules (runtime.plugins.tasks.verbs).

    def rm_names(self, names: Iterable[str], *, force: bool = False) -> list[Any]:
        """``POST /v1/verbs/rm``: remove containers by name (running ones with ``force``)."""
        body = {"names": list(names), "force": force}
        return list(self.call("POST", "/v1/verbs/rm", body, timeout=None).results)

    def stop_names(self, names: Iterable[str], *, signal: int | str = "",
                   timeout: float = 10.0, wait: float | None = None) -> list[Any]:
        """``POST /v1/verbs/stop``: the stop signal, SIGKILL after ``timeout`` seconds.

        ``wait``: seconds this client waits for the answer (``None``: forever).
        """
        body = {"names": list(names), "signal": signal, "timeout": timeout}
        return list(self.call("POST", "/v1/verbs/stop", body, timeout=wait).results)

    def kill_names(self, names: Iterable[str], signal: int | str = "SIGKILL") -> list[Any]:
        """``POST /v1/verbs/kill``: signal running containers by name."""
        body = {"names": list(names), "signal": signal}
        return list(self.call("POST", "/v1/verbs/kill", body).results)

    def task(self, container_id: str) -> Any:
        """A task's state."""
        return self.call("GET", f"/v1/tasks/{_id(container_id)}")

    def kill_task(self, container_id: str, signal: int | str = 15, *, all: bool = False,
                  exec_id: str = "") -> None:
        """Signal a task's init process (``all``: every process) or an exec."""
        self.open("POST", f"/v1/tasks/{_id(container_id)}/kill",
                  {"signal": signal, "all": all, "exec_id": exec_id}).read()

    def wait_task(self, container_id: str, exec_id: str = "") -> Any:
        """Block until the process exits; ``.exit_status``."""
        return self.call("GET", f"/v1/tasks/{_id(container_id)}/wait",
                         query={"exec_id": exec_id} if exec_id else None, timeout=None)

    def delete_task(self, container_id: str, exec_id: str = "", *, force: bool = False,
                    result: bool = True) -> Any:
        """Delete a stopped task or an exec (``force``: kill a running task first).

        Returns its exit status (``.exit_status``...), or ``None`` when ``result``
        is false: the caller does not need it, and parsing it costs a JSON import.
        """
        query = {"exec_id": exec_id} if exec_id else {"force": "1"} if force else None
        path = f"/v1/tasks/{_id(container_id)}"
        if result:
            return self.call("DELETE", path, query=query)
        self.open("DELETE", path, query=query).read()
        return None

    def delete_container(self, container_id: str) -> None:
        """Delete a container without a task."""
        self.open("DELETE", f"/v1/containers/{_id(container_id)}").read()

    def run_attached(self, container: Mapping[str, Any], *, parent: str = "",
                     rootfs: list[Mapping[str, Any]] | None = None, stdin: bool = False,
                     remove: bool = False, image_rootfs: bool = False) -> Any:
        """``GET /v1/run/attach``: create, attach to and start in one websocket.

        ``remove`` has the daemon remove the container once it ended (before the
        exit message) or when this connection closes. The attachment's events
        raise the daemon's error if the create or the start failed.
        """
        from runtime.client.attach import open_attachment

        query = "&".join(k + "=1" for k, on in (("stdin", stdin), ("remove", remove)) if on)
        attachment = open_attachment(self, "/v1/run/attach" + ("?" + query if query else ""))
        body = {"container": container, "parent": parent, "rootfs": list(rootfs or []),
                "stdin": stdin}
        if image_rootfs:
            body["image_rootfs"] = True
        attachment.ws.send_text(dumps(body))
        return attachment

    def attach_task(self, container_id: str, exec_id: str = "", *, stdin: bool = False,
                    start: bool = False) -> Any:
        """Open a websocket to a process's stdio; ``start`` starts it once attached."""
        from runtime.client.attach import open_attachment

        query = {"exec_id": exec_id, "stdin": "1" if stdin else "",
                 "start": "1" if start else ""}
        return open_attachment(self, f"/v1/tasks/{_id(container_id)}/attach?" + urlencode(
            {k: v for k, v in query.items() if v}))
