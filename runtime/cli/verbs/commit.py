"""``moorage commit CONTAINER [REPO[:TAG]]``: a container's changes as a new image.

The daemon's differ writes the layer (``GET /v1/containers/{id}/changes``, see
:mod:`runtime.plugins.tasks.changes_routes`); the CLI builds the rest as a
containerd client does: it stores the blob, a config (the image's, with the
layer's diffID appended to ``rootfs.diff_ids``, a ``history`` entry, the
author and message) and a manifest (the image's layers plus the new one) in
the content store under one lease, then names the manifest. The manifest's
``containerd.io/gc.ref.content.*`` labels keep its config and layers once the
lease goes. A running container is paused while its changes are read (``-p
false``: not), as with Docker.
"""

from __future__ import annotations

import sys

from runtime.cli.verbs import EXIT_USAGE, adder, client, name_of, resolve, task_of

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["register"]

_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_GC_CONTENT = "containerd.io/gc.ref.content"
_UNCOMPRESSED = "containerd.io/uncompressed"


def register(sub: Any) -> None:
    """Add ``commit``."""
    add = adder(sub)
    p = add("commit", commit, "a container's changes as a new image")
    p.add_argument("-m", "--message", default="", help="the history entry's comment")
    p.add_argument("-a", "--author", default="", help='e.g. "Name <mail@example.com>"')
    p.add_argument("-p", "--pause", default="true", choices=("true", "false"),
                   help="pause a running container while reading its changes (default true)")
    p.add_argument("container")
    p.add_argument("reference", nargs="?", default="", metavar="REPO[:TAG]",
                   help="default: the container's name, tag latest")


def commit(args: argparse.Namespace) -> int:
    """Make the image; print its id (the config's digest)."""
    from runtime.core.errors import MoorageError

    try:
        print(_commit(args))
    except MoorageError as exc:
        print(f"moorage: {exc.code}: commit {args.container}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _commit(args: argparse.Namespace) -> str:
    import contextlib
    import json
    from datetime import UTC, datetime

    from runtime.api.types import ImageDescriptor
    from runtime.cli.verbs.inspect import image_manifest
    from runtime.core.errors import AlreadyExists, InvalidArgument
    from runtime.pkg.registry.reference import parse_reference

    api = client(args)
    container = api.container(resolve(api, args.container))
    name = args.reference or f"{name_of(container)}:latest"
    try:
        name = parse_reference(name).name
    except InvalidArgument as exc:
        raise InvalidArgument(f"reference {name!r}: {exc.message}") from None
    if not container.image:
        raise InvalidArgument(f"container {container.id!r} was not made from an image")
    base = api.image(container.image)
    manifest, _ = image_manifest(api, base.target)
    config = json.loads(b"".join(api.read_content(manifest["config"]["digest"])))

    lease = api.create_lease(labels={"moorage/operation": "commit"}, expire=3600).id
    try:
        layer = _layer(api, container.id, lease, pause=args.pause == "true")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        config["created"] = now
        if args.author:
            config["author"] = args.author
        config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        config["rootfs"].setdefault("diff_ids", []).append(layer["diff_id"])
        entry = {"created": now, "created_by": f"moorage commit {args.container}"}
        if args.author:
            entry["author"] = args.author
        if args.message:
            entry["comment"] = args.message
        config.setdefault("history", []).append(entry)
        config_desc = _store(api, lease, json.dumps(config, separators=(",", ":")).encode(),
                             manifest["config"]["mediaType"])
        docker = manifest.get("mediaType") == _DOCKER_MANIFEST
        new_layer = {"mediaType": _DOCKER_LAYER if docker and layer["media_type"].endswith(
            "gzip") else layer["media_type"], "digest": layer["digest"], "size": layer["size"]}
        layers = [*manifest.get("layers", []), new_layer]
        doc = {"schemaVersion": 2, "mediaType": manifest.get("mediaType") or
               "application/vnd.oci.image.manifest.v1+json", "config": config_desc,
               "layers": layers}
        labels = {f"{_GC_CONTENT}.config": config_desc["digest"],
                  **{f"{_GC_CONTENT}.l.{i}": d["digest"] for i, d in enumerate(layers)}}
        target = _store(api, lease, json.dumps(doc, separators=(",", ":")).encode(),
                        str(doc["mediaType"]), labels)
        descriptor = ImageDescriptor(**target)
        try:
            api.create_image(name, descriptor)
        except AlreadyExists:
            api.update_image(name, target=descriptor)
    finally:
        with contextlib.suppress(Exception):
            api.delete_lease(lease)
    return str(config_desc["digest"])


def _layer(api: Any, container_id: str, lease: str, *, pause: bool) -> dict[str, Any]:
    """Read the container's changes (paused if running) and store the blob under ``lease``."""
    import tempfile
    from urllib.parse import quote

    from runtime.api.containers import (
        LAYER_DIFF_ID_HEADER,
        LAYER_DIGEST_HEADER,
        LAYER_MEDIA_TYPE_HEADER,
    )

    task = task_of(api, container_id)
    paused = pause and task is not None and str(task.status) == "running"
    if paused:
        api.pause_task(container_id)
    try:
        with tempfile.TemporaryFile() as spool:
            response = api.open("GET", f"/v1/containers/{quote(container_id, safe='')}/changes",
                                timeout=None)
            try:
                headers = response.headers
                for chunk in response.iter_raw():
                    spool.write(chunk)
            finally:
                response.close()
            if paused:
                api.resume_task(container_id)
                paused = False
            layer = {"digest": headers[LAYER_DIGEST_HEADER.lower()],
                     "diff_id": headers[LAYER_DIFF_ID_HEADER.lower()],
                     "media_type": headers[LAYER_MEDIA_TYPE_HEADER.lower()],
                     "size": spool.tell()}
            spool.seek(0)
            _upload(api, lease, iter(lambda: spool.read(1 << 20), b""), layer["digest"],
                    layer["size"], {_UNCOMPRESSED: layer["diff_id"]})
    finally:
        if paused:
            api.resume_task(container_id)
    return layer


def _store(api: Any, lease: str, data: bytes, media_type: str,
           labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Add ``data`` to the content store under ``lease``; its descriptor."""
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _upload(api, lease, [data], digest, len(data), labels or {})
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _upload(api: Any, lease: str, chunks: Any, digest: str, size: int,
            labels: dict[str, str]) -> None:
    """Write a blob (already stored: label it and hold it under the lease)."""
    import os

    from runtime.core.errors import AlreadyExists

    try:
        api.write_content(f"commit-{digest.removeprefix('sha256:')[:32]}-{os.getpid()}", chunks,
                          total=size, expected=digest, commit=True, labels=labels, lease=lease)
    except AlreadyExists:
        api.add_lease_resource(lease, "content", digest)
        if labels:
            api.label_content(digest, labels)
