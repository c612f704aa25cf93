"""The collector: after a collection, everything reachable is kept and nothing else is.

The property test builds random stores through the real services (content
store, native snapshotter, leases, rows for images and containers), computes
what should survive with a small independent model of containerd's rules,
collects once, and compares both the records and the bytes on disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.plugins.containers.tables import ContainerSource, LoadedContainers
from runtime.plugins.content.local.tables import ContentSource, LoadedContent
from runtime.plugins.gc.api import (
    LABEL_EXPIRE,
    LABEL_FLAT,
    LABEL_REF_CONTENT,
    LABEL_REF_IMAGE,
    LABEL_REF_SNAPSHOT,
    LABEL_ROOT,
    GCReport,
    Removed,
)
from runtime.plugins.gc.collector import Collector
from runtime.plugins.gc.graph import LoadedGraph
from runtime.plugins.gc.labels import label_refs
from runtime.plugins.gc.mark import mark, rescue
from runtime.plugins.images.tables import ImageSource, LoadedImages
from runtime.plugins.metadata.api import Resource
from runtime.plugins.metadata.lease_tables import LeaseSource, LoadedLeases
from runtime.plugins.snapshots.service.tables import LoadedSnapshots, SnapshotSource
from tests.plugins.gc.conftest import State, World, digest_of

MakeWorld = Callable[[Path], AbstractAsyncContextManager[World]]

PAST = "2000-01-01T00:00:00Z"
FUTURE = "2999-01-01T00:00:00Z"
NAMESPACES = ("a", "b")
BLOBS = [f"blob-{i}".encode() for i in range(6)]
DIGESTS = [digest_of(b) for b in BLOBS]
# The kernel stamps files with a coarse clock; objects made within one tick of the
# collection's start are kept as "new". Waiting a few ticks makes "old" unambiguous.
SETTLE = 0.03
# Each example builds a real store (about a tenth of a second): 30 keep the suite
# quick; a local hunt sets e.g. MOORAGE_GC_EXAMPLES=1000.
PROPERTY_EXAMPLES = int(os.environ.get("MOORAGE_GC_EXAMPLES", "30"))


# -- the random store ------------------------------------------------------------


@dataclass
class Refs:
    content: list[int] = field(default_factory=list)
    snapshots: list[int] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    root: bool = False

    def labels(self) -> dict[str, str]:
        """The references as gc labels, using every spelling containerd accepts."""
        labels: dict[str, str] = {}
        for n, i in enumerate(self.content):
            key = [LABEL_REF_CONTENT, f"{LABEL_REF_CONTENT}.l.{n}", f"{LABEL_REF_CONTENT}/{n}"]
            labels[key[n % 3] if n < 3 else f"{LABEL_REF_CONTENT}.x{n}"] = DIGESTS[i]
        for n, i in enumerate(self.snapshots):
            suffix = "" if n == 0 else f"/{n}"
            labels[f"{LABEL_REF_SNAPSHOT}native{suffix}"] = f"s{i}"
        for n, i in enumerate(self.images):
            labels[f"{LABEL_REF_IMAGE}.{n}"] = f"img{i}"
        if self.root:
            labels[LABEL_ROOT] = "yes"
        return labels


@dataclass
class Snap:
    parent: int | None
    active: bool
    refs: Refs


@dataclass
class Image:
    target: int
    expire: str
    refs: Refs


@dataclass
class Container:
    snapshot: int | None
    image: int | None
    refs: Refs


@dataclass
class Lease:
    expired: bool
    flat: bool
    resources: list[tuple[str, str]]


@dataclass
class Ingest:
    state: str  # live | dead | future | past
    expected: int | None


@dataclass
class Namespace:
    content: dict[int, Refs]
    snapshots: list[Snap]
    images: list[Image]
    containers: list[Container]
    leases: list[Lease]
    ingests: list[Ingest]


@st.composite
def refs(draw: st.DrawFn, snapshots: int, images: int, root: bool = False) -> Refs:
    small = st.lists(st.integers(0, len(BLOBS) - 1), max_size=3, unique=True)
    return Refs(
        content=draw(small),
        snapshots=draw(st.lists(st.integers(0, snapshots - 1), max_size=1)) if snapshots else [],
        images=draw(st.lists(st.integers(0, images - 1), max_size=1)) if images else [],
        root=draw(st.integers(0, 4)) == 0 if root else False,
    )


@st.composite
def namespaces(draw: st.DrawFn) -> Namespace:
    n_snaps = draw(st.integers(0, 4))
    n_images = draw(st.integers(0, 2))
    snaps: list[Snap] = []
    for i in range(n_snaps):
        committed = [j for j in range(i) if not snaps[j].active]
        parent = draw(st.sampled_from([None, *committed]))
        snaps.append(Snap(parent, draw(st.booleans()), draw(refs(n_snaps, n_images, root=True))))
    content = {
        i: draw(refs(n_snaps, n_images, root=True))
        for i in draw(st.lists(st.integers(0, len(BLOBS) - 1), max_size=5, unique=True))
    }
    images = [
        Image(
            draw(st.integers(0, len(BLOBS) - 1)),
            draw(st.sampled_from(["", PAST, PAST, FUTURE])),
            draw(refs(n_snaps, n_images)),
        )
        for _ in range(n_images)
    ]
    containers = [
        Container(
            draw(st.sampled_from([None, *range(n_snaps)])),
            draw(st.sampled_from([None, *range(n_images)])),
            draw(refs(n_snaps, n_images)),
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    n_ingests = draw(st.integers(0, 3))
    ingests = [
        Ingest(
            draw(st.sampled_from(["live", "dead", "future", "past"])),
            draw(st.sampled_from([None, *range(len(BLOBS))])),
        )
        for _ in range(n_ingests)
    ]
    # Leases mostly hold blobs the namespace has: that is where flat leases matter.
    held = [DIGESTS[i] for i in content] or DIGESTS
    resource = st.one_of(
        st.tuples(st.just("content"), st.sampled_from(held)),
        st.tuples(st.just("content"), st.sampled_from(held)),
        st.tuples(st.just("snapshots/native"), st.sampled_from([f"s{i}" for i in range(5)])),
        st.tuples(st.just("images"), st.sampled_from([f"img{i}" for i in range(3)])),
        st.tuples(st.just("ingests"), st.sampled_from([f"in{i}" for i in range(3)])),
    )
    leases = [
        Lease(
            draw(st.booleans()),
            draw(st.booleans()),
            draw(st.lists(resource, max_size=3, unique=True)),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    return Namespace(content, snaps, images, containers, leases, ingests)


stores = st.fixed_dictionaries({ns: namespaces() for ns in NAMESPACES})


async def build(world: World, spec: dict[str, Namespace]) -> None:
    """Create ``spec`` through the services."""
    for ns, n in spec.items():
        for i, r in n.content.items():
            await world.blob(ns, BLOBS[i], r.labels())
        for i, s in enumerate(n.snapshots):
            parent = f"s{s.parent}" if s.parent is not None else ""
            if s.active:
                await world.snapshots.prepare(ns, f"s{i}", parent, s.refs.labels())
            else:
                await world.snapshots.prepare(ns, f"tmp{i}", parent)
                await world.snapshots.commit(ns, f"s{i}", f"tmp{i}", s.refs.labels())
        for i, img in enumerate(n.images):
            labels = img.refs.labels() | ({LABEL_EXPIRE: img.expire} if img.expire else {})
            await world.image(ns, f"img{i}", DIGESTS[img.target], labels)
        for i, c in enumerate(n.containers):
            await world.container(
                ns,
                f"c{i}",
                labels=c.refs.labels(),
                snapshot_key=f"s{c.snapshot}" if c.snapshot is not None else "",
                image=f"img{c.image}" if c.image is not None else "",
            )
        for i, ing in enumerate(n.ingests):
            expected = DIGESTS[ing.expected] if ing.expected is not None else ""
            if ing.state == "live":
                await world.live_ingest(ns, f"in{i}", expected=expected)
            else:
                expiry = {"dead": "", "future": FUTURE, "past": PAST}[ing.state]
                await world.ingest_row(ns, f"in{i}", expected=expected, expires_at=expiry)
        for i, lease in enumerate(n.leases):
            labels = ({LABEL_EXPIRE: PAST} if lease.expired else {}) | (
                {LABEL_FLAT: "1"} if lease.flat else {}
            )
            await world.leases.create(ns, f"l{i}", labels)
            for type_, id_ in lease.resources:
                await world.leases.add_resource(ns, f"l{i}", Resource(type=type_, id=id_))
    await world.orphan_ingest("orphan/one")


# -- the model ---------------------------------------------------------------------


def survivors(spec: dict[str, Namespace]) -> set[tuple[str, str, str]]:
    """What containerd's rules keep, computed from the spec alone."""
    kept: set[tuple[str, str, str]] = set()
    for ns, n in spec.items():
        labels_of: dict[tuple[str, str], dict[str, str]] = {}
        gray: list[tuple[tuple[str, str], bool]] = []  # ((kind, key), follow)
        for i, r in n.content.items():
            labels_of[("content", DIGESTS[i])] = r.labels()
            if r.root:
                gray.append((("content", DIGESTS[i]), True))
        parents: dict[str, str] = {}
        for i, s in enumerate(n.snapshots):
            labels_of[("snapshots/native", f"s{i}")] = s.refs.labels()
            if s.parent is not None:
                parents[f"s{i}"] = f"s{s.parent}"
            if s.refs.root:
                gray.append((("snapshots/native", f"s{i}"), True))
        targets: dict[str, str] = {}
        for i, img in enumerate(n.images):
            labels_of[("images", f"img{i}")] = img.refs.labels()
            targets[f"img{i}"] = DIGESTS[img.target]
            if img.expire != PAST:
                gray.append((("images", f"img{i}"), True))
        for i, c in enumerate(n.containers):
            labels_of[("containers", f"c{i}")] = c.refs.labels()
            gray.append((("containers", f"c{i}"), True))
            if c.snapshot is not None:
                gray.append((("snapshots/native", f"s{c.snapshot}"), True))
            # c.image names an image, which keeps nothing by itself (as in containerd).
        expected: dict[str, str] = {}
        for i, ing in enumerate(n.ingests):
            if ing.expected is not None:
                expected[f"in{i}"] = DIGESTS[ing.expected]
            if ing.state in ("live", "future"):
                gray.append((("ingests", f"in{i}"), True))
        for lease in n.leases:
            if not lease.expired:
                gray.extend((res, not lease.flat) for res in lease.resources)
        followed: set[tuple[str, str]] = set()
        while gray:
            node, follow = gray.pop()
            kept.add((node[0], ns, node[1]))
            if not follow and node[0] == "snapshots/native" and node[1] in parents:
                # A snapshot needs its parent chain whatever the lease says.
                gray.append((("snapshots/native", parents[node[1]]), False))
            if not follow or node in followed:
                continue
            followed.add(node)
            kind, key = node
            gray.extend(((k, v), True) for k, v in label_refs(labels_of.get(node, {})))
            if kind == "snapshots/native" and key in parents:
                gray.append((("snapshots/native", parents[key]), True))
            if kind == "images" and key in targets:
                gray.append((("content", targets[key]), True))
            if kind == "ingests" and key in expected:
                gray.append((("content", expected[key]), True))
    return kept


def expected_state(spec: dict[str, Namespace], before: State) -> dict[str, set[tuple[str, str]]]:
    kept = survivors(spec)

    def keep(kind: str, rows: set[tuple[str, str]]) -> set[tuple[str, str]]:
        return {(ns, key) for ns, key in rows if (kind, ns, key) in kept}

    leases = {
        (ns, f"l{i}")
        for ns, n in spec.items()
        for i, lease in enumerate(n.leases)
        if not lease.expired
    }
    return {
        "content": keep("content", before.content),
        "snapshots": keep("snapshots/native", before.snapshots),
        "images": keep("images", before.images),
        "containers": before.containers,
        "leases": leases,
        "ingests": keep("ingests", before.ingests),
    }


async def assert_consistent(world: World) -> State:
    """Bytes on disk are exactly what the records need: nothing missing, nothing extra."""
    state = await world.state()

    def wanted_blobs(conn: Any) -> set[str]:
        return {
            r[0]
            for r in conn.execute(
                "SELECT digest FROM content UNION SELECT expected FROM ingests WHERE expected != ''"
            )
        }

    assert {digest for _, digest in state.content} <= state.blobs
    assert state.blobs <= await world.db.read(wanted_blobs)
    assert state.backend_snapshots == state.recorded_backend_keys
    assert state.backend_ingests == {
        r for r in state.recorded_backend_refs if not r.startswith("gone/")
    }
    return state


# -- the property ---------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    # The native snapshotter's subprocesses dominate; one backend keeps the run short.
    return "asyncio"


@settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=stores)
async def test_collect_keeps_exactly_the_reachable(
    make_world: MakeWorld, spec: dict[str, Namespace]
) -> None:
    with tempfile.TemporaryDirectory(prefix="gc-") as tmp:
        async with make_world(Path(tmp)) as world:
            await build(world, spec)
            before = await world.state()
            await anyio.sleep(SETTLE)
            report = await world.collector.collect()
            after = await assert_consistent(world)
            want = expected_state(spec, before)
            for kind, rows in want.items():
                assert getattr(after, kind) == rows, kind
            # Records a kind lost are the records it reports.
            for kind, attr in (
                ("content", "content"),
                ("images", "images"),
                ("leases", "leases"),
                ("ingests", "ingests"),
                ("snapshots/native", "snapshots"),
            ):
                lost = len(getattr(before, attr)) - len(getattr(after, attr))
                assert report.removed.get(kind, None) is None or (
                    report.removed[kind].records == lost
                ), kind
            assert "orphan/one" not in after.backend_ingests
            # A second collection finds no record left to delete. Bytes on disk
            # written within the first collection's clock tick are deliberately
            # left for the next run (they may belong to a concurrent writer), so
            # the second run may still remove some of those.
            again = await world.collector.collect()
            assert all(r.records == 0 for r in again.removed.values())


@dataclass
class Rows:
    """What each store's source would load from a read snapshot, and the graph over them."""

    content: LoadedContent = field(default_factory=LoadedContent)
    snapshots: LoadedSnapshots = field(default_factory=LoadedSnapshots)
    images: LoadedImages = field(default_factory=LoadedImages)
    containers: LoadedContainers = field(default_factory=LoadedContainers)
    leases: LoadedLeases = field(default_factory=LoadedLeases)

    def graph(self) -> LoadedGraph:
        return LoadedGraph(
            [
                (ContentSource(), self.content),
                (SnapshotSource(), self.snapshots),
                (ImageSource(), self.images),
                (ContainerSource(), self.containers),
                (LeaseSource(), self.leases),
            ]
        )


def loaded_from(spec: dict[str, Namespace]) -> tuple[Rows, LoadedGraph]:
    """The spec as the rows a read snapshot would load (the live backend ingests included)."""
    loaded = Rows()
    active = loaded.content.active
    for ns, n in spec.items():
        for i, r in n.content.items():
            loaded.content.content_rows[(ns, DIGESTS[i])] = json.dumps(r.labels())
        for i, snap in enumerate(n.snapshots):
            parent = f"s{snap.parent}" if snap.parent is not None else ""
            loaded.snapshots.snapshot_rows[(ns, "native", f"s{i}")] = (
                parent,
                json.dumps(snap.refs.labels()),
            )
        for i, img in enumerate(n.images):
            labels = img.refs.labels() | ({LABEL_EXPIRE: img.expire} if img.expire else {})
            loaded.images.image_rows[(ns, f"img{i}")] = (DIGESTS[img.target], json.dumps(labels))
        for i, c in enumerate(n.containers):
            loaded.containers.container_rows[(ns, f"c{i}")] = json.dumps(
                {
                    "snapshotter": "native",
                    "snapshot_key": f"s{c.snapshot}" if c.snapshot is not None else "",
                    "image": f"img{c.image}" if c.image is not None else "",
                    "labels": c.refs.labels(),
                }
            )
        for i, ing in enumerate(n.ingests):
            expected = DIGESTS[ing.expected] if ing.expected is not None else ""
            expiry = {"live": "", "dead": "", "future": FUTURE, "past": PAST}[ing.state]
            loaded.content.ingest_rows[(ns, f"in{i}")] = (expected, expiry, f"{ns}/in{i}")
            if ing.state == "live":
                active.add(f"{ns}/in{i}")
        for i, lease in enumerate(n.leases):
            labels = ({LABEL_EXPIRE: PAST} if lease.expired else {}) | (
                {LABEL_FLAT: "1"} if lease.flat else {}
            )
            loaded.leases.lease_rows[(ns, f"l{i}")] = json.dumps(labels)
            loaded.leases.resource_rows[(ns, f"l{i}")] = list(lease.resources)
    return loaded, loaded.graph()


@settings(max_examples=150, deadline=None)
@given(spec=stores)
def test_mark_agrees_with_the_model(spec: dict[str, Namespace]) -> None:
    """The same property on the mark alone: cheap, so many more graphs."""
    _, graph = loaded_from(spec)
    marking = mark(graph, graph.roots(datetime.now(UTC)))
    kept = survivors(spec)
    for node in graph.nodes():
        if node[0] != "leases":
            assert (node in marking.kept) == (node in kept), node


@settings(max_examples=80, deadline=None)
@given(spec=stores, data=st.data())
def test_rescue_after_new_roots_equals_a_fresh_mark(
    spec: dict[str, Namespace], data: st.DataObject
) -> None:
    """Adding roots after a mark, then rescuing from them, keeps what a fresh mark keeps."""
    loaded, graph = loaded_from(spec)
    at = datetime.now(UTC)
    marking = mark(graph, graph.roots(at))
    candidates = {n for n in graph.nodes() if n not in marking.kept}
    # "Writes" during the mark: some candidates gain gc.root (an update, so they are logged).
    touched = data.draw(
        st.lists(st.sampled_from(sorted(candidates)), max_size=3, unique=True)
        if candidates
        else st.just([])
    )
    for kind, ns, key in touched:
        if kind == "content":
            labels = json.loads(loaded.content.content_rows[(ns, key)]) | {LABEL_ROOT: "1"}
            loaded.content.content_rows[(ns, key)] = json.dumps(labels)
        elif kind.startswith("snapshots/"):
            parent, raw = loaded.snapshots.snapshot_rows[(ns, "native", key)]
            loaded.snapshots.snapshot_rows[(ns, "native", key)] = (
                parent,
                json.dumps(json.loads(raw) | {LABEL_ROOT: "1"}),
            )
    touched = [n for n in touched if n[0] == "content" or n[0].startswith("snapshots/")]
    rescue(graph, touched, candidates, marking)
    fresh = mark(graph, graph.roots(at))
    assert candidates == {n for n in graph.nodes() if n not in fresh.kept}


# -- focused cases ------------------------------------------------------------------------


async def test_flat_lease_keeps_its_objects_but_not_what_they_refer_to(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    async with make_world(tmp_path) as world:
        layer = await world.blob("a", b"layer")
        manifest = await world.blob("a", b"manifest", {f"{LABEL_REF_CONTENT}.l.0": layer})
        await world.leases.create("a", "pull", {LABEL_FLAT: "true"})
        await world.leases.add_resource("a", "pull", Resource(type="content", id=manifest))
        await anyio.sleep(SETTLE)
        report = await world.collector.collect()
        state = await world.state()
        assert state.content == {("a", manifest)}
        assert state.blobs == {manifest}
        assert report.removed["content"].records == 1
        assert report.removed["content"].disk == 1
        assert report.removed["content"].bytes == len(b"layer")


async def test_flat_objects_reached_normally_are_followed(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    async with make_world(tmp_path) as world:
        layer = await world.blob("a", b"layer")
        manifest = await world.blob("a", b"manifest", {f"{LABEL_REF_CONTENT}.l.0": layer})
        await world.leases.create("a", "flat", {LABEL_FLAT: "true"})
        await world.leases.add_resource("a", "flat", Resource(type="content", id=manifest))
        await world.image("a", "img", manifest)
        await anyio.sleep(SETTLE)
        await world.collector.collect()
        assert (await world.state()).content == {("a", manifest), ("a", layer)}


async def test_crash_between_sweep_and_disk_is_finished_by_the_next_collection(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    """Records go in one transaction; bytes are found again from the records alone."""
    async with make_world(tmp_path) as world:
        kept = await world.blob("a", b"kept", {LABEL_ROOT: "1"})
        shared = await world.blob("a", b"shared")
        await world.blob("b", b"shared", {LABEL_ROOT: "1"})
        garbage = await world.blob("a", b"garbage")
        await world.snapshots.prepare("a", "tmp")
        await world.snapshots.commit("a", "base", "tmp")
        await world.snapshots.prepare("a", "top", "base")
        await world.orphan_ingest("orphan/x")
        await anyio.sleep(SETTLE)

        # The first collector "dies" after its record sweep (no disk phase).
        first = world.collector
        marked = await first.mark()
        await first.sweep(marked, GCReport(started_at=marked.since.wall))
        state = await world.state()
        assert state.content == {("a", kept), ("b", shared)}
        assert state.snapshots == set()
        assert garbage in state.blobs and len(state.backend_snapshots) == 2

        fresh = Collector(world.db, world.store, {"native": world.native})
        report = await fresh.collect()
        state = await assert_consistent(world)
        assert state.blobs == {kept, shared}
        assert state.backend_snapshots == set()
        assert state.backend_ingests == set()
        assert report.removed["content"].records == 0
        assert report.removed["content"].disk == 1
        assert report.removed["snapshots/native"].disk == 2
        assert report.removed["ingests"].disk == 1


async def test_writes_during_the_mark_are_rescued(make_world: MakeWorld, tmp_path: Path) -> None:
    """Objects unreachable in the mark's snapshot but referenced by a later write are kept."""
    async with make_world(tmp_path) as world:
        layer = await world.blob("a", b"layer")
        config = await world.blob("a", b"config", {f"{LABEL_REF_CONTENT}.l.0": layer})
        snap_parent_holder = await world.blob("a", b"unrelated")
        leased_later = await world.blob("a", b"leased later")
        await world.leases.create("a", "existing")
        await world.snapshots.prepare("a", "tmp")
        await world.snapshots.commit("a", "chain", "tmp")
        await anyio.sleep(SETTLE)

        marked = await world.collector.mark()
        assert ("content", "a", config) in marked.candidates
        # Meanwhile a pull tags an image on the config, and a blob gains a snapshot ref.
        await world.image("a", "fresh", config)
        await world.content.update_labels(
            "a", snap_parent_holder, {f"{LABEL_REF_SNAPSHOT}native": "chain", LABEL_ROOT: "x"}
        )
        # A lease that existed at the mark takes a blob (a row without a timestamp).
        await world.leases.add_resource("a", "existing", Resource(type="content", id=leased_later))
        # And a new blob appears under no reference at all: newer than the mark, kept.
        newcomer = await world.blob("a", b"newcomer")

        report = GCReport(started_at=marked.since.wall)
        result = await world.collector.sweep(marked, report)
        await world.collector.disk.run(marked.since, report)
        state = await assert_consistent(world)
        assert {
            ("a", layer),
            ("a", config),
            ("a", snap_parent_holder),
            ("a", leased_later),
            ("a", newcomer),
        } <= state.content
        assert ("a", "chain") in state.snapshots
        assert result.rescued == 5  # config, layer, the gc.root blob, chain, the leased blob
        assert result.changed >= 4
        assert newcomer in state.blobs


async def test_ingest_resumed_during_the_mark_keeps_the_content_it_expects(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    """Regression: an ingest revived by its backend is a root, edges included.

    The re-check before the sweep kept an ingest whose backend reappeared
    after the mark listed the backend's uploads, but only the ingest: the
    content record it expects, reachable through it alone, was deleted.
    """
    async with make_world(tmp_path) as world:
        expected = await world.blob("a", b"the upload's target")
        await world.ingest_row("a", "up", expected=expected, backend_ref="resumed/up")
        await anyio.sleep(SETTLE)

        marked = await world.collector.mark()
        assert {("ingests", "a", "up"), ("content", "a", expected)} <= marked.candidates
        # The client resumes its upload: the backend ingest exists again.
        await world.orphan_ingest("resumed/up")
        report = GCReport(started_at=marked.since.wall)
        result = await world.collector.sweep(marked, report)
        await world.collector.disk.run(marked.since, report)

        state = await assert_consistent(world)
        assert state.ingests == {("a", "up")}
        assert state.content == {("a", expected)}
        assert result.rescued == 2
        again = await world.collector.collect()
        assert all(r.records == 0 for r in again.removed.values())


async def test_resource_added_to_a_flat_lease_during_the_mark_is_kept_flat(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    """Regression: a write during the mark is rescued with the lease's rules, not as a root.

    The change log used to record a resource added to a lease as a root of
    its own, followed: through a flat lease that kept what the resource
    refers to for one collection, which the next one then deleted.
    """
    async with make_world(tmp_path) as world:
        layer = await world.blob("a", b"layer")
        manifest = await world.blob("a", b"manifest", {f"{LABEL_REF_CONTENT}.l.0": layer})
        await world.leases.create("a", "pull", {LABEL_FLAT: "true"})
        await anyio.sleep(SETTLE)

        marked = await world.collector.mark()
        assert {("content", "a", manifest), ("content", "a", layer)} <= marked.candidates
        await world.leases.add_resource("a", "pull", Resource(type="content", id=manifest))
        report = GCReport(started_at=marked.since.wall)
        await world.collector.sweep(marked, report)
        await world.collector.disk.run(marked.since, report)

        state = await assert_consistent(world)
        assert state.content == {("a", manifest)}
        again = await world.collector.collect()
        assert all(r.records == 0 for r in again.removed.values())


async def test_objects_referenced_while_collecting_are_never_lost(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    """Race real writers against whole collections: whatever got referenced stays whole.

    The writer tags an image on a blob only if the blob's record exists, in one
    transaction (as a pull that finds its content does); a tag that found the
    record must keep it, records and bytes, whenever the collection ran.
    """

    def tag(ns: str, name: str, digest: str) -> Callable[[Any], bool]:
        def write(conn: Any) -> bool:
            if (
                conn.execute(
                    "SELECT 1 FROM content WHERE namespace=? AND digest=?", (ns, digest)
                ).fetchone()
                is None
            ):
                return False
            target = json.dumps({"mediaType": "m", "digest": digest, "size": 1})
            conn.execute(
                "INSERT INTO images VALUES (?,?,?,?,?,?)", (ns, name, target, "{}", "t", "t")
            )
            return True

        return write

    async with make_world(tmp_path) as world:
        for round_ in range(4):
            digests = [await world.blob("a", f"blob-{round_}-{i}".encode()) for i in range(40)]
            await anyio.sleep(SETTLE)
            tagged: list[str] = []

            async def tagger(digests: list[str], round_: int, tagged: list[str]) -> None:
                for n, digest in enumerate(digests[::2]):
                    if await world.db.write(tag("a", f"img-{round_}-{n}", digest)):
                        tagged.append(digest)
                    await anyio.sleep(0)

            async with anyio.create_task_group() as tg:
                tg.start_soon(tagger, digests, round_, tagged)
                await world.collector.collect()
            await assert_consistent(world)
            await world.collector.collect()
            state = await assert_consistent(world)
            assert {("a", d) for d in tagged} <= state.content
            assert set(tagged) <= state.blobs
            assert not {("a", d) for d in digests[1::2]} & state.content


async def test_blob_committed_after_the_start_is_not_removed(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    """A backend blob whose record is not written yet survives the disk phase."""
    async with make_world(tmp_path) as world:
        marked = await world.collector.mark()
        # The first half of a commit: bytes published, record not yet written.
        writer = await world.store.open_writer("half")
        await writer.write(b"half-committed")
        digest = await writer.commit()
        report = GCReport(started_at=marked.since.wall)
        await world.collector.sweep(marked, report)
        await world.collector.disk.run(marked.since, report)
        assert digest in (await world.state()).blobs
        # Nobody ever recorded it: the next collection removes it.
        await anyio.sleep(SETTLE)
        await world.collector.collect()
        assert digest not in (await world.state()).blobs


@pytest.mark.parametrize("method", ["prepare", "commit"])
async def test_backend_snapshot_made_before_the_start_and_recorded_after_is_not_removed(
    make_world: MakeWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Regression: a backend snapshot whose record is still to come survives the disk phase.

    The disk phase left alone what was created after the collection started,
    but a prepare (or commit) whose backend snapshot is a little older and
    whose record comes after the disk phase's re-check lost it: the record
    then named a backend snapshot that was gone. A whole collection runs
    between the backend's answer and the record here.
    """
    async with make_world(tmp_path) as world:
        await world.leases.create("a", "work")
        await world.snapshots.prepare("a", "work", lease="work")
        real = getattr(world.native, method)
        made: list[str] = []

        async def then_collect(*args: Any, **kwargs: Any) -> Any:
            answer = await real(*args, **kwargs)
            made.append(args[0])
            await anyio.sleep(SETTLE)  # older than the collection, unambiguously
            await world.collector.collect()
            return answer

        monkeypatch.setattr(world.native, method, then_collect)
        if method == "prepare":
            await world.snapshots.prepare("a", "second", lease="work")
        else:
            await world.snapshots.commit("a", "layer", "work", lease="work")

        state = await assert_consistent(world)
        assert made and made[0] in state.backend_snapshots


async def test_expired_image_goes_unless_referenced(make_world: MakeWorld, tmp_path: Path) -> None:
    async with make_world(tmp_path) as world:
        target = await world.blob("a", b"index")
        await world.image("a", "old", target, {LABEL_EXPIRE: PAST})
        await world.image("a", "pinned", target, {LABEL_EXPIRE: PAST})
        await world.image("a", "keeper", target, {f"{LABEL_REF_IMAGE}": "pinned"})
        await anyio.sleep(SETTLE)
        report = await world.collector.collect()
        state = await world.state()
        assert state.images == {("a", "pinned"), ("a", "keeper")}
        assert report.removed["images"].records == 1


async def test_containers_keep_their_snapshot_chain_but_not_their_images_content(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    """Regression: an expired image and its content go in the same, single collection.

    The container named the image, and the graph used to follow that name to
    the image's target: the first collection deleted the expired image but
    kept its content, and the second, no longer finding the image, deleted the
    content. A container keeps its snapshot and its labels' references, as in
    containerd; content it needs beyond that it names with a gc.ref label.
    """
    async with make_world(tmp_path) as world:
        index = await world.blob("a", b"index")
        config = await world.blob("a", b"config")
        await world.image("a", "busybox", index, {LABEL_EXPIRE: PAST})
        await world.snapshots.prepare("a", "tmp")
        await world.snapshots.commit("a", "layer", "tmp")
        await world.snapshots.prepare("a", "rootfs", "layer")
        await world.container(
            "a", "c1", snapshot_key="rootfs", image="busybox", labels={LABEL_REF_CONTENT: config}
        )
        await anyio.sleep(SETTLE)
        first = await world.collector.collect()
        state = await world.state()
        assert state.snapshots == {("a", "rootfs"), ("a", "layer")}
        assert state.content == {("a", config)}
        assert state.containers == {("a", "c1")}
        assert state.images == set()
        assert first.removed["images"].records == 1
        assert first.removed["content"].records == 1
        again = await world.collector.collect()
        assert all(r.records == 0 for r in again.removed.values())


def test_label_grammar() -> None:
    d = DIGESTS[0]
    labels = {
        "containerd.io/gc.ref.content": d,
        "containerd.io/gc.ref.content.config": d + "c",
        "containerd.io/gc.ref.content/m": d + "m",
        "containerd.io/gc.ref.contentx": "ignored",
        "containerd.io/gc.ref.snapshot.overlayfs": "k1",
        "containerd.io/gc.ref.snapshot.native/2": "k2",
        "containerd.io/gc.ref.snapshot.": "ignored",
        "containerd.io/gc.ref.image": "docker.io/library/busybox:latest",
        "containerd.io/gc.ref.content.empty": "",
        "other": d,
    }
    assert sorted(label_refs(labels)) == sorted(
        [
            ("content", d),
            ("content", d + "c"),
            ("content", d + "m"),
            ("snapshots/overlayfs", "k1"),
            ("snapshots/native", "k2"),
            ("images", "docker.io/library/busybox:latest"),
        ]
    )


def test_report_is_json() -> None:
    report = GCReport(
        started_at=datetime(2024, 1, 1, tzinfo=UTC),
        removed={"content": Removed(records=1, disk=1, bytes=5)},
    )
    assert json.loads(msgspec.json.encode(report))["removed"]["content"] == {
        "records": 1,
        "disk": 1,
        "bytes": 5,
    }
    assert report.bytes_removed == 5
