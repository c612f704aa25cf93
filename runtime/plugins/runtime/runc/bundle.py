"""Build and tear down a task's OCI bundle: root filesystem mount, final spec, exec specs.

The spec stored with the container is completed here, where the root
filesystem is finally visible: user names are looked up in its ``/etc/passwd``
(see :mod:`.user`), ``HOME`` is set from the user's entry when the spec has
none, and empty named volumes take the image's content at their path
(:mod:`runtime.pkg.copyup`), as Docker does. A spec annotated
``io.moorage.rootfs.idmap`` gets its root filesystem idmapped through its
user namespace (:mod:`runtime.pkg.userns`: runc 1.1 cannot do it).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.api.tasks import ExecRequest
from runtime.core.errors import InvalidArgument
from runtime.pkg.copyup import VOLUMES_ANNOTATION, copy_up_volumes
from runtime.pkg.mount import mount_all, unmount
from runtime.pkg.oci.spec import GROUPS_POLICY_ANNOTATION, USER_ANNOTATION, merge_env
from runtime.pkg.userns import IDMAP_ROOTFS_ANNOTATION, idmap_mount, idmapped_overlay
from runtime.plugins.runtime.runc.layout import TaskPaths, write_durably
from runtime.plugins.snapshots.api import Mount

__all__ = ["exec_process_spec", "prepare_bundle", "remove_tree", "root_mounts", "teardown_bundle"]


def root_mounts(spec: dict[str, Any], rootfs: Sequence[Mount]) -> list[Mount]:
    """The mounts for ``<bundle>/rootfs``: ``rootfs``, else a bind of an absolute ``root.path``.

    Raises:
        InvalidArgument: Neither gives a root filesystem.
    """
    if rootfs:
        return list(rootfs)
    root = str(spec.get("root", {}).get("path", ""))
    if os.path.isabs(root):
        if not os.path.isdir(root):
            raise InvalidArgument(f"root filesystem {root!r} is not a directory")
        return [Mount(type="bind", source=root, options=["rbind", "rw"])]
    raise InvalidArgument(
        "no root filesystem: pass rootfs mounts, give the container a snapshot, "
        "or set an absolute root.path in its spec"
    )


def _resolve_process_user(process: dict[str, Any], user: str | None, rootfs: Path,
                          image_groups: bool = True) -> None:
    # Imported by the first bundle (in a worker thread), not at the daemon's start.
    from runtime.plugins.runtime.runc.user import resolve_user

    env: list[str] = process.setdefault("env", [])
    current = process.setdefault("user", {"uid": 0, "gid": 0})
    if user:
        resolved = resolve_user(rootfs, user)
        process["user"] = {"uid": resolved.uid, "gid": resolved.gid}
        # The image's groups for the user (unless the policy is strict), then any the
        # spec asked for besides.
        found = resolved.additional_gids if image_groups else []
        gids = [*found, *(g for g in current.get("additionalGids") or [] if g not in found)]
        if gids:
            process["user"]["additionalGids"] = gids
        home = resolved.home
    else:
        home = resolve_user(rootfs, str(current.get("uid", 0))).home
    if not any(item.startswith("HOME=") for item in env):
        env.append(f"HOME={home}")


def prepare_bundle(paths: TaskPaths, spec: dict[str, Any], rootfs: Sequence[Mount]) -> None:
    """Create the bundle, mount the root filesystem and write the final ``config.json``.

    Blocking; on failure everything made so far is undone.
    """
    mounts = root_mounts(spec, rootfs)
    final = copy.deepcopy(spec)
    # Searchable (0711) down to the rootfs: a task in a user namespace reaches it
    # as a user that owns none of these directories.
    paths.bundle.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    paths.bundle.mkdir(exist_ok=True, mode=0o711)
    paths.rootfs.mkdir(exist_ok=True)
    annotations = final.setdefault("annotations", {})
    idmapped = bool(annotations.pop(IDMAP_ROOTFS_ANNOTATION, None))
    if idmapped and mounts and mounts[0].type == "overlay":
        _mount_idmapped_overlay(final, mounts, paths.rootfs)
    else:
        mount_all(mounts, paths.rootfs)
    try:
        final.setdefault("root", {})["path"] = "rootfs"
        if idmapped and not (mounts and mounts[0].type == "overlay"):
            idmap_mount(paths.rootfs, _userns_path(final))
        _resolve_process_user(
            final.setdefault("process", {}), annotations.pop(USER_ANNOTATION, None),
            paths.rootfs, annotations.pop(GROUPS_POLICY_ANNOTATION, "") != "strict")
        copy_up_volumes(final, str(paths.rootfs), annotations.pop(VOLUMES_ANNOTATION, None))
        # The bundle does not outlive the host: no fsync.
        write_durably(paths.config, _json(final), sync=False)
    except BaseException:
        teardown_bundle(paths)
        raise


def _mount_idmapped_overlay(spec: dict[str, Any], mounts: list[Mount], rootfs: Path) -> None:
    linux = spec.get("linux", {})
    root_ids = []
    for key in ("uidMappings", "gidMappings"):
        root = [m for m in linux.get(key) or [] if m.get("containerID") == 0]
        if not root:
            raise InvalidArgument(f"{IDMAP_ROOTFS_ANNOTATION} needs {key} that map id 0")
        root_ids.append(int(root[0]["hostID"]))
    with idmapped_overlay(mounts[0], _userns_path(spec), root_ids[0], root_ids[1]) as first:
        mount_all([first, *mounts[1:]], rootfs)


def _userns_path(spec: dict[str, Any]) -> str:
    for entry in spec.get("linux", {}).get("namespaces", []):
        if entry.get("type") == "user" and entry.get("path"):
            return str(entry["path"])
    raise InvalidArgument(f"{IDMAP_ROOTFS_ANNOTATION} needs a user namespace path in the spec")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def exec_process_spec(container_spec: dict[str, Any], request: ExecRequest,
                      rootfs: Path) -> dict[str, Any]:
    """The OCI process of an exec: the container's process with the request's changes."""
    if not request.args:
        raise InvalidArgument("exec needs a command (args must not be empty)")
    process: dict[str, Any] = copy.deepcopy(container_spec.get("process", {}))
    process["args"] = list(request.args)
    process["terminal"] = request.terminal
    process["env"] = merge_env(process.get("env", []), request.env)
    if request.terminal and not any(e.startswith("TERM=") for e in process["env"]):
        process["env"].append("TERM=xterm")  # as for the container's own terminal
    if request.cwd:
        if not request.cwd.startswith("/"):
            raise InvalidArgument(f"working directory {request.cwd!r} must be absolute")
        process["cwd"] = request.cwd
    process.pop("consoleSize", None)
    if request.user:
        _resolve_process_user(process, request.user, rootfs)
    return process


def teardown_bundle(paths: TaskPaths) -> None:
    """Unmount the root filesystem and remove the bundle directory (blocking, idempotent)."""
    if paths.rootfs.exists():
        try:
            unmount(paths.rootfs)
        except OSError:
            # Still busy after unmount's retries: detach it so the tree can go.
            unmount(paths.rootfs, detach=True)
    remove_tree(paths.bundle)


def remove_tree(path: Path) -> None:
    """Remove a directory tree; refuses to descend into anything still mounted."""
    if not path.exists():
        return
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            if os.path.ismount(os.path.join(dirpath, name)):
                raise OSError(f"{os.path.join(dirpath, name)} is still mounted; not removing")
    import shutil

    shutil.rmtree(path, ignore_errors=True)
