"""The API's doors: who may come in, what one namespace can see of another, privileges.

* the unix socket is ``0660`` and owned by root (TCP with its token: ``tests/api``);
* a client of one namespace can neither read, change, delete nor observe the events of
  another namespace's objects, at every endpoint that names one;
* a spec with host namespaces or extra privileges needs ``allow_privileged``;
* (``slow``) schemathesis fuzzes the whole API from its OpenAPI document: no 5xx.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from runtime.api.specs import SpecOptions
from runtime.api.types import ContentInfo
from runtime.client import Client
from runtime.client.transport import request
from runtime.core.errors import PermissionDenied
from runtime.pkg.oci.spec import generate_spec
from runtime.plugins.snapshots.api import Mount
from tests.fixtures.daemon import Daemon, assert_error
from tests.fixtures.system import require_root, unavailable
from tests.reliability.blobs import Member, memory_image, raw_layer
from tests.reliability.fake_registry import FakeRegistry

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module."""
    require_root()
    with Daemon(tmp_path_factory.mktemp("doors") / "d") as running:
        yield running


def test_unix_socket_is_0660_and_root_owned(daemon: Daemon) -> None:
    """Only root and the socket's group may connect."""
    st = daemon.socket_path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)


# -- namespaces are walls -----------------------------------------------------------------


class _Events:
    """Collects the event stream of one namespace in a thread."""

    def __init__(self, client: Client) -> None:
        self.lines: list[dict[str, Any]] = []
        self._response = client.open("GET", "/v1/events", timeout=None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._response.iter_lines():
                if line.strip():
                    self.lines.append(json.loads(line))
        except OSError:
            pass

    def close(self) -> None:
        self._response.close()


@pytest.fixture(scope="module")
def bob(daemon: Daemon, fake_registry: FakeRegistry,
        busybox_rootfs: Path) -> Iterator[dict[str, str]]:
    """Objects of namespace ``bob``, of every kind an endpoint can name."""
    api = daemon.client("bob")
    # Held by a lease: the garbage collector must not be what hides them from alice.
    lease = api.create_lease("bob-lease").id
    info = api.write_content("bob-blob", b"bob's secret", commit=True, lease=lease)
    assert isinstance(info, ContentInfo)
    api.write_content("bob-ingest", b"half of it", lease=lease)
    api.prepare_snapshot("native", "bob-snap", lease=lease)
    ref = fake_registry.add("doors/bob", memory_image([raw_layer([Member("f", data=b"bob")])]))
    for _ in api.pull(ref, plain_http=True):
        pass
    api.create_container("bob-ctr", spec_options=SpecOptions(args=["sleep", "1000"]))
    api.create_task("bob-ctr", rootfs=[Mount(type="bind", source=str(busybox_rootfs),
                                             options=["rbind", "rw"])])
    api.start_task("bob-ctr")
    yield {"digest": info.digest, "ref": "bob-ingest", "lease": lease, "key": "bob-snap",
           "image": ref, "container": "bob-ctr"}
    # Tasks outlive a daemon's stop (as containerd's shims do): end this one.
    api.kill_task("bob-ctr", "KILL")
    api.wait_task("bob-ctr", timeout=30)
    api.delete_task("bob-ctr")


def _status(daemon: Daemon, method: str, path: str, namespace: str,
            body: dict[str, Any] | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else b""
    response = request(daemon.address, method, path, timeout=30,
                       headers={"Moorage-Namespace": namespace,
                                "Content-Type": "application/json"}, body=data)
    try:
        response.read()
    finally:
        response.close()
    return response.status


def _bob_paths(bob: dict[str, str]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every request naming one of bob's objects, with a body that would otherwise work."""
    d, r, le, k = bob["digest"], quote(bob["ref"]), bob["lease"], bob["key"]
    img, c = quote(bob["image"], safe=""), bob["container"]
    return [
        ("GET", f"/v1/content/{d}", None), ("GET", f"/v1/content/{d}/blob", None),
        ("PATCH", f"/v1/content/{d}", {"labels": {"x": "y"}}), ("DELETE", f"/v1/content/{d}", None),
        ("GET", f"/v1/content/ingests/{r}", None), ("DELETE", f"/v1/content/ingests/{r}", None),
        ("POST", f"/v1/content/ingests/{r}", {}),
        ("GET", f"/v1/leases/{le}", None), ("GET", f"/v1/leases/{le}/resources", None),
        ("POST", f"/v1/leases/{le}/resources", {"type": "content", "id": d}),
        ("DELETE", f"/v1/leases/{le}", None),
        ("GET", f"/v1/snapshots/native/{k}", None),
        ("GET", f"/v1/snapshots/native/{k}/mounts", None),
        ("GET", f"/v1/snapshots/native/{k}/usage", None),
        ("PATCH", f"/v1/snapshots/native/{k}", {"labels": {"x": "y"}}),
        ("POST", f"/v1/snapshots/native/{k}/commit", {"name": "stolen"}),
        ("DELETE", f"/v1/snapshots/native/{k}", None),
        ("GET", f"/v1/images/{img}", None), ("GET", f"/v1/images/{img}/check", None),
        ("GET", f"/v1/images/{img}/usage", None), ("GET", f"/v1/images/{img}/rootfs", None),
        ("PATCH", f"/v1/images/{img}", {"labels": {"x": "y"}}),
        ("DELETE", f"/v1/images/{img}", None),
        ("GET", f"/v1/containers/{c}", None),
        ("PATCH", f"/v1/containers/{c}", {"labels": {"x": "y"}}),
        ("DELETE", f"/v1/containers/{c}", None),
        ("GET", f"/v1/tasks/{c}", None), ("GET", f"/v1/tasks/{c}/pids", None),
        ("GET", f"/v1/tasks/{c}/metrics", None), ("GET", f"/v1/tasks/{c}/logs", None),
        ("POST", f"/v1/tasks/{c}/kill", {"signal": 9}), ("POST", f"/v1/tasks/{c}/pause", None),
        ("POST", f"/v1/tasks/{c}/exec", {"exec_id": "e", "args": ["id"]}),
        ("POST", f"/v1/tasks/{c}/update", {"resources": {}}),
        ("DELETE", f"/v1/tasks/{c}", None), ("DELETE", f"/v1/run/{c}", None),
        ("POST", "/v1/tasks", {"container_id": c}),
    ]


def test_another_namespace_cannot_read_change_or_delete(daemon: Daemon,
                                                       bob: dict[str, str]) -> None:
    """From ``alice``, every request naming bob's objects is a 404, and they stay as they were."""
    if "alice" not in {n.name for n in daemon.client().namespaces()}:
        daemon.client().create_namespace("alice")
    answers = {f"{m} {p}": _status(daemon, m, p, "alice", b) for m, p, b in _bob_paths(bob)}
    wrong = {k: v for k, v in answers.items() if v != 404}
    assert not wrong, wrong
    alice = daemon.client("alice")
    assert not alice.content() and not alice.ingests() and not alice.containers()
    assert not alice.snapshots("native") and not alice.images() and not alice.tasks()
    assert bob["lease"] not in {le.id for le in alice.leases()}
    # Bob's objects are all still there, unchanged.
    api = daemon.client("bob")
    assert api.content_info(bob["digest"]).labels == {}
    assert api.snapshot("native", bob["key"]).kind == "active"
    assert api.task(bob["container"]).status == "running"
    assert api.image(bob["image"]).labels.get("x") is None


def test_another_namespace_does_not_see_the_events(daemon: Daemon, bob: dict[str, str]) -> None:
    """Alice's event stream carries none of bob's events."""
    watcher = _Events(daemon.client("alice"))
    try:
        api = daemon.client("bob")
        api.label_content(bob["digest"], {"seen": "no"})
        api.create_container("bob-more", spec_options=SpecOptions(args=["true"]))
        api.delete_container("bob-more")
        daemon.client("alice").create_lease("alice-marker")
        deadline = time.monotonic() + 10
        while not watcher.lines and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.close()
    assert watcher.lines, "alice's own event never arrived"
    assert {e["namespace"] for e in watcher.lines} == {"alice"}, watcher.lines


# -- privileges -------------------------------------------------------------------------------


def test_privileged_spec_needs_allow_privileged(daemon: Daemon) -> None:
    """spec_options.privileged, host namespaces, joined namespaces: 403 unless allowed."""
    api = daemon.client("privs")
    options = SpecOptions(args=["true"], privileged=True)
    with pytest.raises(PermissionDenied) as caught:
        api.create_container("p1", spec_options=options)
    message = assert_error(caught.value, "permission_denied")
    assert "capabilities beyond the default" in message and "allow_privileged" in message
    assert api.create_container("p1", spec_options=options, allow_privileged=True).id == "p1"

    spec = generate_spec("privs", "p2", None, SpecOptions(args=["true"]))
    host_pid = json.loads(json.dumps(spec))
    host_pid["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "pid"]
    with pytest.raises(PermissionDenied, match="the host's pid namespace"):
        api.create_container("p2", spec=host_pid)
    joined = json.loads(json.dumps(spec))
    joined["linux"]["namespaces"].append({"type": "network", "path": "/proc/1/ns/net"})
    with pytest.raises(PermissionDenied, match="joining the network namespace"):
        api.create_container("p2", spec=joined)
    api.create_container("p2", spec=spec)  # the defaults need nothing
    with pytest.raises(PermissionDenied):
        api.update_container("p2", spec=host_pid)
    assert api.update_container("p2", spec=host_pid, allow_privileged=True).id == "p2"
    for cid in ("p1", "p2"):
        api.delete_container(cid)


def test_cli_privileged_flag_allows_it(daemon: Daemon, busybox_rootfs: Path) -> None:
    """``--privileged`` (and ``--net host``) are the CLI's explicit word; nothing else is."""
    from tests.plugins.runtime.helpers import moorage

    address, rootfs = daemon.address, str(busybox_rootfs)
    made = moorage(address, "-n", "privs", "containers", "create", "--privileged",
                   "--rootfs", rootfs, "busybox", "cli-priv", "true")
    assert made.returncode == 0, made.stderr
    spec = daemon.client("privs").container("cli-priv").spec
    assert "CAP_SYS_ADMIN" in spec["process"]["capabilities"]["bounding"]
    ran = moorage(address, "-n", "privs", "run", "--rm", "--privileged", "--net", "none",
                  "--rootfs", rootfs, "busybox", "sh", "-c", "exit 7")
    assert ran.returncode == 7, ran.stderr
    host = moorage(address, "-n", "privs", "run", "--rm", "--net", "host", "--rootfs", rootfs,
                   "busybox", "true")
    assert host.returncode == 0, host.stderr
    daemon.client("privs").delete_container("cli-priv")


@pytest.mark.slow
def test_fuzz_the_api_from_its_openapi_document(tmp_path: Path) -> None:
    """schemathesis against a TCP listener with a token: no 5xx, no hang (bounded examples)."""
    try:
        import schemathesis  # noqa: F401 - the fuzzer below needs it
    except ImportError:
        unavailable("schemathesis is not installed (the test extra installs it)")
    from benchmarks.fuzz_api import fuzz

    result = fuzz(tmp_path, max_examples=int(os.environ.get("MOORAGE_FUZZ_EXAMPLES", "25")))
    assert result.server_errors == [], "\n".join(result.server_errors[:20])
    assert result.requests > 100
