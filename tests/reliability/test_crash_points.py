"""Crash consistency: SIGKILL the daemon at each fault point of each scenario, then check.

Every case kills a real daemon (``MOORAGE_FAULTS=<point>``) inside one operation: an
ingest commit, a snapshot prepare, commit or remove, a container create or delete, a
task create, start or delete, a pull (with its unpack), a garbage collection. The
restarted daemon must find a consistent store (:func:`check_store`), keep the sentinel
task running, and complete the operation when it is repeated. The cases share one
daemon root, in order, so each crash also meets what the earlier ones left behind; the
last test collects garbage and requires that nothing unreferenced is left.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from runtime.api.specs import SpecOptions
from runtime.api.types import ContentInfo
from runtime.core.errors import AlreadyExists, MoorageError, NotFound
from runtime.plugins.gc.api import LABEL_ROOT
from runtime.plugins.snapshots.api import Mount
from tests.fixtures.images import LayerBuilder
from tests.fixtures.system import require_root
from tests.reliability.blobs import memory_image, sha256
from tests.reliability.crash import Case, CrashRig, Ctx, Scenario, cases
from tests.reliability.fake_registry import FakeRegistry
from tests.reliability.store_check import assert_store_ok

pytestmark = pytest.mark.root

# -- content ----------------------------------------------------------------------------

_CONTENT_POINTS = (
    "content.commit.before-link",
    "content.commit.after-link",
    "content.commit.before-record",
    "content.commit.after-record",
)


def _ingest(name: str, size: int, *, lease: bool = False, dedup: bool = False) -> Scenario:
    """Write and commit a blob; ``dedup``: its bytes are already stored by another namespace."""

    def data(ctx: Ctx) -> bytes:
        unit = f"{ctx.tag}:{name}:".encode()
        return (unit * (size // len(unit) + 1))[:size]

    def setup(ctx: Ctx) -> None:
        if lease:
            ctx.data["lease"] = ctx.client().create_lease(f"lease-{ctx.tag}").id
        if dedup:
            # A GC root: collections run by earlier cases must leave it alone.
            ctx.client("crash-other").write_content(f"pre-{ctx.tag}", data(ctx), commit=True,
                                                    labels={LABEL_ROOT: "crash"})

    def write(ctx: Ctx, offset: int = 0) -> None:
        # No expected digest for dedup: an upload that only finds out at commit that
        # the bytes are stored already (expected would short-cut it at open).
        ctx.client().write_content(f"ref-{ctx.tag}", data(ctx)[offset:], offset=offset,
                                   commit=True, expected=None if dedup else sha256(data(ctx)),
                                   lease=ctx.data.get("lease"), labels={"case": ctx.tag})

    def verify(ctx: Ctx) -> None:
        api, digest = ctx.client(), sha256(data(ctx))
        # Resume as a client would: from the offset the ingest kept, if it kept one.
        try:
            offset = api.ingest_status(f"ref-{ctx.tag}").offset
        except NotFound:
            offset = 0
        with contextlib.suppress(AlreadyExists):
            write(ctx, offset if offset <= size else 0)
        info = api.content_info(digest)
        assert info.size == size
        assert b"".join(api.read_content(digest)) == data(ctx)
        assert f"ref-{ctx.tag}" not in {s.ref for s in api.ingests()}
        if lease:
            held = {(r.type, r.id) for r in api.lease_resources(ctx.data["lease"])}
            assert ("content", digest) in held

    points = _CONTENT_POINTS if not dedup else tuple(
        p for p in _CONTENT_POINTS if p != "content.commit.after-link")
    return Scenario(name, points, write, verify, setup if lease or dedup else None,
                    setup_touches=("content.",) if dedup else (), verify_touches=("content.",),
                    early=dedup)


# -- snapshots --------------------------------------------------------------------------


def _write_into(mounts: Sequence[object], name: str, text: str) -> None:
    """Put a file into an active snapshot through its bind mount's source (native)."""
    for mount in mounts:
        source = getattr(mount, "source", "")
        if getattr(mount, "type", "") == "bind" and source.startswith("/"):
            (Path(source) / name).write_text(text)


def _prepare(sn: str, *, view: bool = False) -> Scenario:
    def setup(ctx: Ctx) -> None:
        api = ctx.client()
        api.prepare_snapshot(sn, f"base-{ctx.tag}-active")
        # A GC root: it is made before the first case, and cases run collections.
        api.commit_snapshot(sn, f"base-{ctx.tag}", f"base-{ctx.tag}-active",
                            labels={LABEL_ROOT: "crash"})

    def trigger(ctx: Ctx) -> None:
        parent = f"base-{ctx.tag}" if view else ""
        ctx.client().prepare_snapshot(sn, f"key-{ctx.tag}", parent, view=view)

    def verify(ctx: Ctx) -> None:
        api, key = ctx.client(), f"key-{ctx.tag}"
        try:
            info = api.snapshot(sn, key)
            assert info.kind == ("view" if view else "active")
        except NotFound:
            trigger(ctx)  # the prepare never happened: it works now
        assert api.snapshot_mounts(sn, key)
        api.remove_snapshot(sn, key)
        if view:
            api.remove_snapshot(sn, f"base-{ctx.tag}")

    kind = "view" if view else "prepare"
    return Scenario(f"{kind}-{sn}",
                    ("snapshot.prepare.after-backend", "snapshot.prepare.after-record"),
                    trigger, verify, setup if view else None,
                    setup_touches=("snapshot.prepare", "snapshot.commit"),
                    verify_touches=("snapshot.", "snapshotter."), early=view)


def _commit(sn: str) -> Scenario:
    def setup(ctx: Ctx) -> None:
        mounts = ctx.client().prepare_snapshot(sn, f"key-{ctx.tag}")
        _write_into(list(mounts), "payload", ctx.tag)

    def trigger(ctx: Ctx) -> None:
        ctx.client().commit_snapshot(sn, f"name-{ctx.tag}", f"key-{ctx.tag}")

    def verify(ctx: Ctx) -> None:
        api, key, name = ctx.client(), f"key-{ctx.tag}", f"name-{ctx.tag}"
        present = {s.name: s.kind for s in api.snapshots(sn)}
        # Either the commit happened (name committed, key gone) or not (key still
        # active): a crash must never lose the snapshot, nor leave both.
        assert (present.get(name), present.get(key)) in (("committed", None), (None, "active")), (
            f"after the crash: {name}={present.get(name)}, {key}={present.get(key)}")
        if name not in present:
            trigger(ctx)
        assert api.snapshot(sn, name).kind == "committed"
        api.remove_snapshot(sn, name)

    return Scenario(f"commit-{sn}",
                    ("snapshot.commit.after-backend", "snapshot.commit.after-record"),
                    trigger, verify, setup, setup_touches=("snapshot.prepare",),
                    verify_touches=("snapshot.", "snapshotter."))


def _remove(sn: str) -> Scenario:
    def setup(ctx: Ctx) -> None:
        api = ctx.client()
        api.prepare_snapshot(sn, f"key-{ctx.tag}-active")
        api.commit_snapshot(sn, f"key-{ctx.tag}", f"key-{ctx.tag}-active")

    def trigger(ctx: Ctx) -> None:
        ctx.client().remove_snapshot(sn, f"key-{ctx.tag}")

    def verify(ctx: Ctx) -> None:
        api, key = ctx.client(), f"key-{ctx.tag}"
        with pytest.raises(NotFound):
            api.snapshot(sn, key)
        # The name is free again.
        api.prepare_snapshot(sn, key)
        api.remove_snapshot(sn, key)

    return Scenario(f"remove-{sn}",
                    ("snapshot.remove.after-record", "snapshotter.remove.before-delete"),
                    trigger, verify, setup, setup_touches=("snapshot.prepare", "snapshot.commit"),
                    verify_touches=("snapshot.", "snapshotter."))


# -- containers and tasks ---------------------------------------------------------------

_SLEEP = SpecOptions(args=["sleep", "1000"])


def _rootfs(ctx: Ctx) -> list[Mount]:
    assert ctx.rig.rootfs is not None
    return [Mount(type="bind", source=str(ctx.rig.rootfs), options=["rbind", "rw"])]


def _container_create() -> Scenario:
    def trigger(ctx: Ctx) -> None:
        ctx.client().create_container(f"ctr-{ctx.tag}", spec_options=_SLEEP)

    def verify(ctx: Ctx) -> None:
        with contextlib.suppress(AlreadyExists):
            trigger(ctx)
        api = ctx.client()
        assert api.container(f"ctr-{ctx.tag}").id == f"ctr-{ctx.tag}"
        api.delete_container(f"ctr-{ctx.tag}")

    return Scenario("container-create",
                    ("container.create.before-record", "container.create.after-record"),
                    trigger, verify, verify_touches=("container.",))


def _container_delete() -> Scenario:
    def setup(ctx: Ctx) -> None:
        ctx.client().create_container(f"ctr-{ctx.tag}", spec_options=_SLEEP)

    def trigger(ctx: Ctx) -> None:
        ctx.client().delete_container(f"ctr-{ctx.tag}")

    def verify(ctx: Ctx) -> None:
        with contextlib.suppress(NotFound):
            trigger(ctx)
        with pytest.raises(NotFound):
            ctx.client().container(f"ctr-{ctx.tag}")

    return Scenario("container-delete",
                    ("container.delete.before-record", "container.delete.after-record"),
                    trigger, verify, setup, setup_touches=("container.create",),
                    verify_touches=("container.delete",))


def _finish_task(ctx: Ctx, cid: str) -> None:
    """Bring the task of ``cid`` to its end and remove it and its container."""
    api = ctx.client()
    try:
        task = api.task(cid)
    except NotFound:
        api.create_task(cid, rootfs=_rootfs(ctx))
        task = api.task(cid)
    if task.status == "created":
        api.start_task(cid)
    assert api.task(cid).status in ("running", "stopped")
    with contextlib.suppress(NotFound):
        api.kill_task(cid, "KILL")
    assert api.wait_task(cid, timeout=30).exit_status in (137, 255)
    api.delete_task(cid)
    api.delete_container(cid)


def _task_create() -> Scenario:
    def setup(ctx: Ctx) -> None:
        ctx.client().create_container(f"task-{ctx.tag}", spec_options=_SLEEP)

    def trigger(ctx: Ctx) -> None:
        ctx.client().create_task(f"task-{ctx.tag}", rootfs=_rootfs(ctx))

    def verify(ctx: Ctx) -> None:
        # A creation cut short is undone at restart; the task can be created again.
        _finish_task(ctx, f"task-{ctx.tag}")

    return Scenario("task-create",
                    ("task.create.before-runtime", "task.create.after-runtime"),
                    trigger, verify, setup, setup_touches=("container.create",),
                    verify_touches=("task.", "container.delete"))


def _task_start() -> Scenario:
    def setup(ctx: Ctx) -> None:
        api = ctx.client()
        api.create_container(f"task-{ctx.tag}", spec_options=_SLEEP)
        api.create_task(f"task-{ctx.tag}", rootfs=_rootfs(ctx))

    def trigger(ctx: Ctx) -> None:
        ctx.client().start_task(f"task-{ctx.tag}")

    def verify(ctx: Ctx) -> None:
        _finish_task(ctx, f"task-{ctx.tag}")

    return Scenario("task-start", ("task.start.after-runtime",), trigger, verify, setup,
                    setup_touches=("container.create", "task.create"),
                    verify_touches=("task.", "container.delete"))


def _task_delete() -> Scenario:
    def setup(ctx: Ctx) -> None:
        api, cid = ctx.client(), f"task-{ctx.tag}"
        api.create_container(cid, spec_options=_SLEEP)
        api.create_task(cid, rootfs=_rootfs(ctx))
        api.start_task(cid)
        api.kill_task(cid, "KILL")
        api.wait_task(cid, timeout=30)

    def trigger(ctx: Ctx) -> None:
        ctx.client().delete_task(f"task-{ctx.tag}")

    def verify(ctx: Ctx) -> None:
        api, cid = ctx.client(), f"task-{ctx.tag}"
        with contextlib.suppress(NotFound):
            assert api.task(cid).status == "stopped"
            api.delete_task(cid)
        with pytest.raises(NotFound):
            api.task(cid)
        api.delete_container(cid)

    return Scenario("task-delete", ("task.delete.after-runtime", "task.delete.after-release"),
                    trigger, verify, setup,
                    setup_touches=("container.create", "task.create", "task.start"),
                    verify_touches=("task.delete", "container.delete"))


# -- pulls ------------------------------------------------------------------------------


def _pull(name: str, layers: int, points: tuple[str, ...]) -> Scenario:
    def setup(ctx: Ctx) -> None:
        builders = [LayerBuilder().dir("/etc").file("/etc/base", ctx.tag)]
        for i in range(1, layers):
            builders.append(LayerBuilder().file(f"/etc/layer{i}", f"{ctx.tag}-{i}\n" * 500)
                            .whiteout("/etc/base" if i == layers - 1 else f"/etc/none{i}"))
        image = memory_image(builders, index=layers > 1)
        registry: FakeRegistry = ctx.rig.registry
        ctx.data["ref"] = registry.add(f"crash/{name}-{ctx.tag}", image)

    def trigger(ctx: Ctx) -> None:
        for _ in ctx.client().pull(ctx.data["ref"], plain_http=True):
            pass

    def verify(ctx: Ctx) -> None:
        trigger(ctx)  # an interrupted pull completes when repeated
        api = ctx.client()
        check = api.check_image(ctx.data["ref"])
        assert check.complete and check.unpacked, check
        assert api.image_rootfs(ctx.data["ref"]).chain_id

    return Scenario(name, points, trigger, verify, setup,
                    verify_touches=("pull.", "unpack.", "content.", "snapshot."))


_PULL_MULTI = (
    "pull.after-manifest", "pull.mid-layers", "pull.before-image-record",
    "unpack.after-apply", "unpack.between-layers",
    "content.commit.before-link", "content.commit.after-link", "content.commit.after-record",
    "snapshot.prepare.after-backend", "snapshot.commit.after-backend",
    "snapshot.commit.after-record",
)  # fmt: skip
_PULL_SINGLE = (
    "pull.after-manifest", "pull.before-image-record", "unpack.after-apply",
    "content.commit.before-record",
)  # fmt: skip


# -- garbage collection ---------------------------------------------------------------


def _gc(name: str, *, lease: bool) -> Scenario:
    def setup(ctx: Ctx) -> None:
        api = ctx.client()
        holder = api.create_lease(f"gc-{ctx.tag}").id if lease else None
        info = api.write_content(f"garbage-{ctx.tag}", f"garbage {ctx.tag}".encode() * 100,
                                 commit=True, lease=holder)
        assert isinstance(info, ContentInfo)
        ctx.data["digest"] = info.digest
        api.prepare_snapshot("native", f"garbage-{ctx.tag}", lease=holder)

    def trigger(ctx: Ctx) -> None:
        api = ctx.client()
        if lease:
            api.delete_lease(f"gc-{ctx.tag}", sync=True)
        else:
            api.gc()

    def verify(ctx: Ctx) -> None:
        api = ctx.client()
        # The records went in the sweep; a second collection finishes the disk part.
        with pytest.raises(NotFound):
            api.content_info(ctx.data["digest"])
        with pytest.raises(NotFound):
            api.snapshot("native", f"garbage-{ctx.tag}")
        assert_store_ok(ctx.rig.daemon, collect=True, context=f"collecting after {ctx.point}")

    return Scenario(name, ("gc.after-sweep", "gc.disk.after-trash"), trigger, verify, setup,
                    setup_touches=("content.", "snapshot.prepare"),
                    verify_touches=("gc.", "snapshotter."))


SCENARIOS = [
    _ingest("ingest", 4096),
    _pull("pull-multilayer", 3, _PULL_MULTI),
    _prepare("native"),
    _container_create(),
    _ingest("ingest-lease", 100, lease=True),
    _commit("native"),
    _task_create(),
    _gc("gc-collect", lease=False),
    _ingest("ingest-big", 3 << 20),
    _remove("native"),
    _task_delete(),
    _pull("pull-single", 1, _PULL_SINGLE),
    _prepare("overlayfs"),
    _container_delete(),
    _ingest("ingest-dedup", 2000, dedup=True),
    _commit("overlayfs"),
    _task_start(),
    _gc("gc-lease", lease=True),
    _remove("overlayfs"),
    _prepare("native", view=True),
]
CASES = cases(SCENARIOS)


def test_enough_cases() -> None:
    """The suite kills the daemon at 50 or more distinct (point, scenario) pairs."""
    assert len({(c.point, c.scenario.name) for c in CASES}) >= 50


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path,
        fake_registry: FakeRegistry) -> Iterator[CrashRig]:
    """One daemon root for every case, with a sentinel task that must outlive them all."""
    require_root()
    rig = CrashRig(tmp_path_factory.mktemp("crash"), CASES)
    rig.rootfs = busybox_rootfs
    rig.registry = fake_registry
    try:
        rig.life(None)
        sentinel = rig.client("sentinel")
        sentinel.create_container("sentinel", spec_options=SpecOptions(args=["sleep", "100000"]))
        sentinel.create_task("sentinel", rootfs=[
            Mount(type="bind", source=str(busybox_rootfs), options=["rbind", "rw"])])
        sentinel.start_task("sentinel")
        rig.add_sentinel("sentinel", "sentinel", sentinel.task("sentinel").pid)
        rig.set_up_early()
        yield rig
    finally:
        _teardown(rig)


def _teardown(rig: CrashRig) -> None:
    """Remove every task (sentinel included) through the API, then stop the daemon."""
    with contextlib.suppress(MoorageError):
        rig.life(None)
        for ns in [n.name for n in rig.client().namespaces()]:
            api = rig.client(ns)
            for task in api.tasks():
                with contextlib.suppress(MoorageError):
                    if task.status != "stopped":
                        api.kill_task(task.container_id, "KILL", all=True)
                        api.wait_task(task.container_id, timeout=30)
                    api.delete_task(task.container_id)
    rig.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_crash_point(rig: CrashRig, case: Case) -> None:
    """Kill at the point, restart: consistent store, sentinel alive, operation completes."""
    rig.run(case)


def test_store_converges_after_everything(rig: CrashRig) -> None:
    """After every crash, one collection leaves nothing unreferenced, and the sentinel runs."""
    rig.life(None)
    report = assert_store_ok(rig.daemon, collect=True, context="all crash cases")
    rig.check_sentinels("all crash cases")
    assert report.content_records and report.snapshot_records and report.images
    print(f"\ncrash rig: {rig.kills} kills, {rig.starts} starts; seconds: "
          + ", ".join(f"{k} {v:.1f}" for k, v in rig.timings.items()))
    # About one start per kill: most restarts are armed for the next case already.
    assert rig.starts <= rig.kills * 1.6 + 3, (rig.starts, rig.kills)
