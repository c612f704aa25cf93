"""``moorage system df`` and ``system prune``: what the namespace holds on disk, and clearing it.

Sizes: an image is its blobs plus its unpacked snapshots (names pointing at the
same manifest count once); a container is what its active snapshot holds over
its image (a ``--rootfs`` container: nothing of the daemon's); a volume is the
files under its mountpoint (read from this host, "n/a" when the CLI cannot).
Moorage has no build cache: its row is always empty.

``prune`` removes stopped and never-started containers (with their snapshots),
images no container uses that have no tag (``repo@sha256:...``; with ``-a``
every image no container uses) and, with ``--volumes``, volumes no container
mounts; then a garbage collection frees the blobs and snapshots nothing refers
to any more. Networks are the operator's CNI files and are left alone.
"""

from __future__ import annotations

import os
import sys

from runtime.cli.verbs import LIVE, adder, client, docker_parser

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``system df`` and ``system prune``."""
    system = sub.add_parser("system", help="disk usage and pruning (df, prune)")
    ssub = system.add_subparsers(dest="system_command", required=True, metavar="COMMAND")
    add = adder(ssub)
    p = add("df", df, "disk used by images, containers and volumes")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = add("prune", prune, "remove stopped containers, dangling images, unused volumes")
    p.add_argument("-a", "--all", action="store_true", help="every image no container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.add_argument("--volumes", action="store_true", help="unused volumes too")
    docker_parser(system)


def _image_sizes(api: Any) -> dict[str, int]:
    """Bytes per image target digest (several names of one target count once)."""
    sizes: dict[str, int] = {}
    for image in api.images():
        if image.target.digest not in sizes:
            usage = api.image_usage(image.name)
            sizes[image.target.digest] = usage.content_size + usage.snapshot_size
    return sizes


def _container_size(api: Any, container: Any) -> int:
    from runtime.core.errors import MoorageError

    if not (container.snapshotter and container.snapshot_key):
        return 0
    try:
        return int(api.snapshot_usage(container.snapshotter, container.snapshot_key).size)
    except MoorageError:
        return 0


def _tree_size(path: str) -> int | None:
    """Bytes allocated under ``path`` (``None``: not readable from here)."""
    if not os.path.isdir(path):
        return None
    total, seen = 0, set()
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _used_images(api: Any, containers: list[Any]) -> set[str]:
    """Target digests of the images containers were made from."""
    import contextlib

    from runtime.core.errors import NotFound

    used = set()
    for name in {c.image for c in containers if c.image}:
        with contextlib.suppress(NotFound):
            used.add(api.image(name).target.digest)
    return used


def df(args: argparse.Namespace) -> int:
    """One row per kind: total, active, size, reclaimable."""
    import json

    from runtime.cli.output import print_table
    from runtime.cli.transfers import human

    api = client(args)
    containers = api.containers()
    live = {t.container_id for t in api.tasks() if str(t.status) in LIVE}
    sizes = _image_sizes(api)
    used = _used_images(api, containers)
    container_sizes = {c.id: _container_size(api, c) for c in containers}
    volumes: list[dict[str, Any]] = api.call("GET", "/v1/volumes", list)
    volume_sizes = {v["name"]: _tree_size(v["mountpoint"]) for v in volumes}
    rows: list[dict[str, Any]] = [
        {"Type": "Images", "TotalCount": len(sizes), "Active": len(used & set(sizes)),
         "Size": sum(sizes.values()),
         "Reclaimable": sum(s for d, s in sizes.items() if d not in used)},
        {"Type": "Containers", "TotalCount": len(containers),
         "Active": len(live & set(container_sizes)), "Size": sum(container_sizes.values()),
         "Reclaimable": sum(s for c, s in container_sizes.items() if c not in live)},
        {"Type": "Local Volumes", "TotalCount": len(volumes),
         "Active": sum(1 for v in volumes if v.get("used_by")),
         "Size": None if None in volume_sizes.values() else sum(
             s or 0 for s in volume_sizes.values()),
         "Reclaimable": None if None in volume_sizes.values() else sum(
             volume_sizes[v["name"]] or 0 for v in volumes if not v.get("used_by"))},
        {"Type": "Build Cache", "TotalCount": 0, "Active": 0, "Size": 0, "Reclaimable": 0},
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0

    def size(value: int | None) -> str:
        return "n/a" if value is None else human(value)

    def share(row: dict[str, Any]) -> str:
        if row["Reclaimable"] is None:
            return "n/a"
        percent = f" ({row['Reclaimable'] * 100 // row['Size']}%)" if row["Size"] else ""
        return human(row["Reclaimable"]) + percent

    print_table(("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"),
                [(r["Type"], r["TotalCount"], r["Active"], size(r["Size"]), share(r))
                 for r in rows])
    return 0


def _dangling(name: str) -> bool:
    """An image with no tag: ``repo@sha256:...`` only."""
    from runtime.pkg.registry.reference import parse_reference

    try:
        return not parse_reference(name).tag
    except Exception:
        return False


def prune(args: argparse.Namespace) -> int:
    """Remove what is unused; list it; print the space freed."""
    from runtime.cli.transfers import human
    from runtime.core.errors import MoorageError

    if not args.force:
        what = ["all stopped containers", "all images without at least one container "
                "associated to them" if args.all else "all dangling images"]
        if args.volumes:
            what.append("all volumes not used by at least one container")
        print("WARNING! This will remove:\n" + "".join(f"  - {w}\n" for w in what) +
              "Are you sure you want to continue? [y/N] ", end="", flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    api = client(args)
    freed = 0
    live = {t.container_id for t in api.tasks() if str(t.status) in LIVE}
    removed_containers = []
    for container in api.containers():
        if container.id in live:
            continue
        size = _container_size(api, container)
        try:
            api.remove(container.id, force=True, snapshot=True)
        except MoorageError as exc:
            print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
            continue
        removed_containers.append(container.id)
        freed += size
    used = _used_images(api, api.containers())
    removed_images = []
    for image in sorted(api.images(), key=lambda i: i.name):
        if image.target.digest in used or not (args.all or _dangling(image.name)):
            continue
        try:
            api.delete_image(image.name)
        except MoorageError as exc:
            print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
            continue
        removed_images.append(image.name)
    removed_volumes: list[str] = []
    if args.volumes:
        sizes = {v["name"]: _tree_size(v["mountpoint"]) or 0
                 for v in api.call("GET", "/v1/volumes", list) if not v.get("used_by")}
        removed_volumes = api.call("POST", "/v1/volumes/prune", dict)["removed"]
        freed += sum(sizes.get(name, 0) for name in removed_volumes)
    report = api.gc()
    freed += sum(r.bytes for r in report.removed.values())
    for title, names in (("Deleted Containers", removed_containers),
                         ("Deleted Images", [f"untagged: {n}" for n in removed_images]),
                         ("Deleted Volumes", removed_volumes)):
        if names:
            print(f"{title}:\n" + "".join(f"{n}\n" for n in names))
    print(f"Total reclaimed space: {human(freed)}")
    return 0
