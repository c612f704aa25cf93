"""Hostile input: layers that try to get out, bombs, odd documents, invalid names everywhere.

Layers come through a pull from the fake registry, as an attacker's image would. Each
hostile entry gets a clear 4xx error, or, where containerd accepts the entry (absolute
names, absolute symlinks, device nodes), it lands inside the snapshot and nowhere else.
Host sentinel files outside the daemon's root stay untouched, and the daemon stays up.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from runtime.api.types import NAMESPACE_HEADER
from runtime.client import Client
from runtime.client.transport import request
from runtime.core.errors import MoorageError
from tests.fixtures.daemon import Daemon, assert_error
from tests.fixtures.images import (
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    Layer,
    host_platform,
)
from tests.fixtures.system import require_root
from tests.reliability.blobs import Member, canonical, memory_image, raw_layer, sha256
from tests.reliability.fake_registry import FakeRegistry
from tests.reliability.store_check import assert_store_ok

pytestmark = pytest.mark.root

#: Layers may decompress to 128 MiB here (the bomb is 1 GiB); no background collections.
CONFIG = """
[plugins."diff.walking"]
max_uncompressed = 134217728

[plugins."gc.scheduler"]
startup_delay = "0"
mutation_threshold = 0
deletion_threshold = 1000000
"""


@pytest.fixture(scope="module")
def sentinel() -> Iterator[Path]:
    """Host files outside the daemon's root that no layer may change."""
    path = Path(tempfile.mkdtemp(prefix="mohost-"))
    (path / "file.txt").write_text("host data\n")
    (path / "sub").mkdir()
    (path / "sub" / "keep").write_text("keep\n")
    yield path
    shutil.rmtree(path)


def _snapshot_of(path: Path) -> dict[str, tuple[int, int, bytes]]:
    state = {}
    for entry in sorted(path.rglob("*")):
        st = entry.lstat()
        data = entry.read_bytes() if entry.is_file() and not entry.is_symlink() else b""
        state[str(entry.relative_to(path))] = (st.st_mode, st.st_mtime_ns, data)
    return state


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, sentinel: Path) -> Iterator[Daemon]:
    """One daemon for the module; at the end the host sentinel and the store are checked."""
    require_root()
    before = _snapshot_of(sentinel)
    with Daemon(tmp_path_factory.mktemp("hostile") / "d", CONFIG) as running:
        yield running
        assert running.client().healthz().status == "ok"
        assert_store_ok(running, collect=True, context="hostile input")
    assert _snapshot_of(sentinel) == before, "a layer changed files outside the daemon's root"


def _pull(client: Client, ref: str) -> None:
    for _ in client.pull(ref, plain_http=True):
        pass


def _rootfs(daemon: Daemon, ref: str, name: str) -> Path:
    """The directory holding the files of a pulled one-layer image (a view's bind source)."""
    api = daemon.client("hostile")
    chain = api.image_rootfs(ref).chain_id
    [mount] = api.prepare_snapshot("overlayfs", f"view-{name}", chain, view=True)
    api.remove_snapshot("overlayfs", f"view-{name}")
    assert mount.type == "bind", mount
    return Path(mount.source)


# -- layers -----------------------------------------------------------------------------

R, D, S, H = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE

REFUSED: dict[str, tuple[list[Member], str]] = {
    "dotdot": ([Member("../escape.txt", data=b"x")], "climbs out"),
    "dotdot-nested": ([Member("a", D), Member("a/../../escape.txt", data=b"x")], "climbs out"),
    "dotdot-deep": ([Member("../" * 40 + "tmp/pwned", data=b"x")], "climbs out"),
    "symlink-relative-escape": ([Member("evil", S, linkname="../../../../../../../.."),
                                 Member("evil/pwned", data=b"x")], "leads out"),
    "symlink-chain-escape": ([Member("a", S, linkname="b"), Member("b", S, linkname="c/../.."),
                              Member("c", D), Member("a/pwned", data=b"x")], "leads out"),
    "hardlink-dotdot": ([Member("h", H, linkname="../../../../../../etc/passwd")],
                        "climbs out"),
    "hardlink-absolute": ([Member("h", H, linkname="/etc/passwd")], "does not exist"),
    "hardlink-through-symlink": ([Member("etc", S, linkname="/etc"),
                                  Member("h", H, linkname="etc/passwd")], "symlink"),
    "device-dotdot": ([Member("../sda", tarfile.BLKTYPE, devmajor=8)], "climbs out"),
    "whiteout-dotdot": ([Member("../.wh.escape")], "climbs out"),
    "whiteout-of-dotdot": ([Member("a", D), Member("a/.wh..."),], "whiteout"),
    "opaque-dotdot": ([Member("../.wh..wh..opq")], "climbs out"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_layer_is_refused(daemon: Daemon, fake_registry: FakeRegistry,
                                  name: str) -> None:
    """A 400 naming the entry; no image record, no committed snapshot of the layer."""
    members, says = REFUSED[name]
    ref = fake_registry.add(f"hostile/{name}", memory_image([raw_layer(members)]))
    api = daemon.client("hostile")
    with pytest.raises(MoorageError) as caught:
        _pull(api, ref)
    message = assert_error(caught.value, "invalid_argument")
    assert says in message, message
    assert not [i for i in api.images() if i.name == ref]
    assert daemon.client().healthz().status == "ok"


def test_absolute_names_and_links_stay_inside(daemon: Daemon, fake_registry: FakeRegistry,
                                              sentinel: Path) -> None:
    """``/abs`` means the container's root; so does an absolute symlink followed by an entry."""
    target = str(sentinel / "file.txt")
    members = [
        Member(target, data=b"pwned by name"),
        Member("evil", S, linkname=str(sentinel)),
        Member("evil/sub/keep", data=b"pwned through a link"),
        Member("evil/.wh.file.txt"),  # a whiteout through the same link
    ]
    ref = fake_registry.add("hostile/absolute", memory_image([raw_layer(members)]))
    _pull(daemon.client("hostile"), ref)
    inside = _rootfs(daemon, ref, "absolute") / str(sentinel).lstrip("/")
    assert (inside / "sub" / "keep").read_bytes() == b"pwned through a link"
    # The whiteout deleted the layer's own file.txt (a first layer has nothing below).
    assert not os.path.lexists(inside / "file.txt")
    assert (sentinel / "file.txt").read_text() == "host data\n"


def test_device_nodes_are_made_inside_the_snapshot_only(
    daemon: Daemon, fake_registry: FakeRegistry
) -> None:
    """As containerd: device nodes are kept (images ship /dev/null), inside the layer only."""
    members = [Member("dev", D), Member("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
               Member("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1)]
    ref = fake_registry.add("hostile/devices", memory_image([raw_layer(members)]))
    _pull(daemon.client("hostile"), ref)
    root = _rootfs(daemon, ref, "devices")
    assert (root / "dev" / "sda").is_block_device()
    assert (root / "dev" / "mem").is_char_device()
    assert daemon.root in (root / "dev" / "sda").resolve().parents


def _gzip_bomb(size: int) -> Layer:
    """A layer whose tar claims a ``size``-byte file of zeros: a few hundred KiB of gzip.

    Built from repeated gzip members (one stream to a decoder) so that making it is cheap.
    """
    info = tarfile.TarInfo("bomb")
    info.size = size
    header = info.tobuf(tarfile.GNU_FORMAT)
    chunk = 16 << 20
    zeros = gzip.compress(bytes(chunk), compresslevel=9, mtime=0)
    data = gzip.compress(header, mtime=0) + zeros * (size // chunk)
    return Layer(Descriptor(MEDIA_TYPE_LAYER_GZIP, sha256(data), len(data)), sha256(b""), data)


def test_gzip_bomb_stops_at_max_uncompressed(daemon: Daemon,
                                             fake_registry: FakeRegistry) -> None:
    """1 GiB of zeros in a few MiB: refused once past the 128 MiB cap, quickly."""
    ref = fake_registry.add("hostile/bomb", memory_image([_gzip_bomb(1 << 30)]))
    started = time.monotonic()
    with pytest.raises(MoorageError) as caught:
        _pull(daemon.client("hostile"), ref)
    assert "max_uncompressed=134217728" in assert_error(caught.value, "invalid_argument")
    assert time.monotonic() - started < 30


def _tiny_files_tar(dirs: int, files: int) -> bytes:
    """A tar of ``dirs`` directories of ``files`` empty files each, built fast.

    ``tarfile`` takes seconds for 100,000 headers; here one header template is patched
    with each name and its checksum (the sum of the header's bytes) adjusted to match.
    """
    templates = {}
    for kind in (tarfile.DIRTYPE, tarfile.REGTYPE):
        info = tarfile.TarInfo("")
        info.type, info.mode = kind, 0o755 if kind == tarfile.DIRTYPE else 0o644
        header = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
        header[0:100] = bytes(100)  # tarfile names an unnamed directory "/"
        header[148:156] = b" " * 8
        templates[kind] = (header, sum(header))
    out = bytearray()

    def add(name: str, kind: bytes) -> None:
        header, base = templates[kind]
        encoded = name.encode()
        entry = bytearray(header)
        entry[: len(encoded)] = encoded
        entry[148:156] = b"%06o\0 " % (base + sum(encoded))
        out.extend(entry)

    for d in range(dirs):
        add(f"d{d}", tarfile.DIRTYPE)
        for f in range(files):
            add(f"d{d}/f{f}", tarfile.REGTYPE)
    out.extend(bytes(1024))  # end of archive
    return bytes(out)


def test_hundred_thousand_tiny_files(daemon: Daemon, fake_registry: FakeRegistry) -> None:
    """100,000 empty files in 100 directories unpack, in bounded time."""
    raw = _tiny_files_tar(100, 1000)
    data = zlib.compress(raw, 1, wbits=31)
    layer = Layer(Descriptor(MEDIA_TYPE_LAYER_GZIP, sha256(data), len(data)), sha256(raw), data)
    ref = fake_registry.add("hostile/many-files", memory_image([layer]))
    started = time.monotonic()
    _pull(daemon.client("hostile"), ref)
    assert time.monotonic() - started < 120
    root = _rootfs(daemon, ref, "many")
    assert sum(1 for _ in (root / "d99").iterdir()) == 1000


# -- manifests and indexes ----------------------------------------------------------------


def _index(entries: list[dict[str, Any]]) -> bytes:
    return canonical({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": entries})


def test_malformed_and_oversized_documents(daemon: Daemon, fake_registry: FakeRegistry) -> None:
    """Broken JSON, wrong shapes, a 5 MiB manifest: 400 each."""
    api = daemon.client("hostile")
    cases = {
        "not-json": (b"{not json", MEDIA_TYPE_MANIFEST),
        "array": (b"[]", MEDIA_TYPE_MANIFEST),
        "wrong-types": (canonical({"schemaVersion": "two", "layers": 7}), MEDIA_TYPE_MANIFEST),
        "index-says-manifest": (_index([]), MEDIA_TYPE_MANIFEST),
        "huge": (canonical({"schemaVersion": 2, "pad": "x" * (5 << 20)}), MEDIA_TYPE_MANIFEST),
        "schema1": (b'{"schemaVersion": 1}',
                    "application/vnd.docker.distribution.manifest.v1+json"),
    }
    for name, (data, media_type) in cases.items():
        ref = fake_registry.document(f"hostile/doc-{name}", data, media_type)
        with pytest.raises(MoorageError) as caught:
            _pull(api, ref)
        assert 400 <= caught.value.http_status < 500, (name, caught.value)
    assert daemon.client().healthz().status == "ok"


def test_index_with_thousands_of_entries(daemon: Daemon, fake_registry: FakeRegistry) -> None:
    """5,000 foreign platforms and one that fits: the right one is pulled."""
    image = memory_image([raw_layer([Member("ok", data=b"ok")])])
    os_, arch = host_platform()
    foreign = [{"mediaType": MEDIA_TYPE_MANIFEST, "digest": sha256(str(i).encode()), "size": 1,
                "platform": {"os": "plan9", "architecture": f"arch{i}"}} for i in range(5000)]
    mine = {**image.root.to_json(), "platform": {"os": os_, "architecture": arch}}
    ref = fake_registry.add("hostile/wide", image)
    wide = fake_registry.document("hostile/wide", _index([*foreign, mine]), MEDIA_TYPE_INDEX)
    assert wide == ref
    _pull(daemon.client("hostile"), ref)
    only_foreign = fake_registry.document("hostile/foreign", _index(foreign), MEDIA_TYPE_INDEX)
    with pytest.raises(MoorageError) as caught:
        _pull(daemon.client("hostile"), only_foreign)
    assert_error(caught.value, "not_found")


def test_deeply_nested_and_self_referencing_indexes(daemon: Daemon,
                                                    fake_registry: FakeRegistry) -> None:
    """Indexes nested 200 deep are pulled; an index whose child is itself is a 4xx."""
    image = memory_image([raw_layer([Member("deep", data=b"deep")])])
    os_, arch = host_platform()
    fake_registry.add("hostile/deep-base", image)
    child = {**image.root.to_json(), "platform": {"os": os_, "architecture": arch}}
    for _ in range(200):
        doc = _index([child])
        fake_registry.document("hostile/deep-step", doc, MEDIA_TYPE_INDEX)
        child = {"mediaType": MEDIA_TYPE_INDEX, "digest": sha256(doc), "size": len(doc),
                 "platform": {"os": os_, "architecture": arch}}
    deep = fake_registry.document("hostile/deep", canonical(json.loads(doc)), MEDIA_TYPE_INDEX)
    api = daemon.client("hostile")
    started = time.monotonic()
    _pull(api, deep)  # each level is a task of its own: no recursion limit to hit
    assert time.monotonic() - started < 60
    # "Itself": the registry answers the child's digest with the parent's bytes.
    parent = _index([{"mediaType": MEDIA_TYPE_INDEX, "digest": "sha256:" + "ab" * 32,
                      "size": 100, "platform": {"os": os_, "architecture": arch}}])
    ref = fake_registry.document("hostile/self", parent, MEDIA_TYPE_INDEX)
    fake_registry.blobs["sha256:" + "ab" * 32] = parent
    fake_registry.media_types["sha256:" + "ab" * 32] = MEDIA_TYPE_INDEX
    with pytest.raises(MoorageError) as caught:
        _pull(api, ref)
    assert 400 <= caught.value.http_status < 500, caught.value
    assert daemon.client().healthz().status == "ok"


# -- invalid names at every endpoint --------------------------------------------------------

_BAD_NAMES = ["..", "../../etc/passwd", "a b", "-leading", "x" * 300, "ünï", "a/../../b", "%00",
              "", "a\nb"]
# Streams that would not end by themselves for a valid request.
_SKIP = {("get", "/v1/events"), ("get", "/v1/tasks/{id}/attach"), ("get", "/v1/tasks/{id}/logs")}


def _send(daemon: Daemon, method: str, path: str, *, namespace: str = "hostile",
          body: bytes | None = None, query: str = "") -> int:
    target = path + (f"?{query}" if query else "")
    headers = {NAMESPACE_HEADER: namespace, "Content-Type": "application/json"}
    response = request(daemon.address, method.upper(), target, headers=headers,
                       body=body if body is not None else b"", timeout=30)
    try:
        response.read()
    finally:
        response.close()
    return response.status


def _operations(daemon: Daemon) -> Iterator[tuple[str, str, dict[str, Any]]]:
    doc = daemon.client().openapi()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method, path, op


def test_every_endpoint_refuses_invalid_names(daemon: Daemon) -> None:
    """Bad path parameters, namespaces, labels and bodies: 4xx everywhere, never 5xx."""
    failures = []
    sent = 0
    for method, path, op in _operations(daemon):
        if (method, path) in _SKIP:
            continue
        params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        for bad in _BAD_NAMES:
            filled = path
            for name in params:
                filled = filled.replace("{" + name + "}", quote(bad, safe="") or "%20")
            tries: list[tuple[str, str, bytes | None, str]] = []
            if params:
                tries.append((filled, "hostile", None, ""))
            # An invalid namespace must be refused before anything else happens.
            tries.append((path.replace("{", "x").replace("}", ""), bad or " ", None, ""))
            if "requestBody" in op:
                labels = json.dumps({"labels": {bad or " ": "v", "k": "v" * 5000}}).encode()
                tries += [(filled, "hostile", labels, ""),
                          (filled, "hostile", json.dumps({"id": bad, "key": bad, "name": bad,
                                                          "ref": bad}).encode(), "")]
            queries = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            if queries:
                tries.append((filled, "hostile", None,
                              "&".join(f"{q}={quote(bad, safe='')}" for q in queries)))
            for target, ns, body, query in tries:
                try:
                    status = _send(daemon, method, target, namespace=ns, body=body, query=query)
                except (OSError, MoorageError) as exc:
                    failures.append(f"{method.upper()} {target} ns={ns!r}: {exc}")
                    continue
                sent += 1
                if status >= 500:
                    failures.append(f"{method.upper()} {target} ns={ns!r} q={query!r} "
                                    f"body={body!r:.80}: {status}")
    assert not failures, "\n".join(failures[:40])
    assert sent > 500
    assert daemon.client().healthz().status == "ok"
