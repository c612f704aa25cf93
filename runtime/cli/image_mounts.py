"""``moorage images mount|unmount``: an image's root filesystem mounted on a host directory.

``mount`` unpacks the image if needed, prepares a snapshot keyed by the
target directory (a view, or with ``--rw`` an active snapshot) under a lease
named after the target, and mounts it there; ``unmount`` undoes it, the
snapshot kept unless ``--rm``. As ``ctr images mount``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
from typing import Any

__all__ = ["mount", "register", "unmount"]


def register(isub: Any) -> None:
    """Add ``mount`` and ``unmount`` to the ``images`` subcommands ``isub``."""
    p = isub.add_parser("mount", help="mount an image's root filesystem (needs root)")
    p.add_argument("name")
    p.add_argument("target")
    p.add_argument("--rw", action="store_true", help="writable (an active snapshot)")
    p.add_argument("--snapshotter", default="")
    p.add_argument("--platform", default="")
    p.set_defaults(handler=mount)

    p = isub.add_parser("unmount", aliases=["umount"], help="unmount what images mount made")
    p.add_argument("target")
    p.add_argument("--snapshotter", default="")
    p.add_argument("--rm", action="store_true", help="also remove the snapshot")
    p.set_defaults(handler=unmount)


def _lease_id(target: str) -> str:
    # Lease ids are identifiers; a path is not one.
    return "mount-" + hashlib.sha256(target.encode()).hexdigest()[:16]


def mount(args: argparse.Namespace) -> int:
    """Unpack if needed, prepare a snapshot keyed by TARGET and mount it there."""
    from runtime.api.mounts import Mount
    from runtime.cli.main import client
    from runtime.core.errors import MoorageError, PermissionDenied
    from runtime.pkg.mount import mount_all

    target = os.path.abspath(args.target)
    api = client(args)
    rootfs = api.image_rootfs(args.name, args.snapshotter, args.platform)
    # The lease keeps the snapshot from garbage collection until unmount.
    lease = api.create_lease(_lease_id(target), {"moorage/mount": target}).id
    try:
        mounts = api.prepare_snapshot(
            rootfs.snapshotter, target, rootfs.chain_id, view=not args.rw, lease=lease
        )
        try:
            mount_all(
                [
                    Mount(type=m.type, source=m.source, target=m.target, options=m.options)
                    for m in mounts
                ],
                target,
            )
        except PermissionError as exc:
            raise PermissionDenied(f"mount {target}: {exc.strerror} (mounting needs root)") from exc
        except OSError as exc:
            raise MoorageError(f"mount {target}: {exc}") from exc
    except BaseException:
        api.delete_lease(lease)
        raise
    print(target)
    return 0


def unmount(args: argparse.Namespace) -> int:
    """Unmount TARGET; with --rm remove its snapshot too."""
    from runtime.cli.main import client
    from runtime.core.errors import MoorageError, NotFound
    from runtime.pkg.mount import unmount as do_unmount

    target = os.path.abspath(args.target)
    try:
        do_unmount(target)
    except OSError as exc:
        raise MoorageError(f"unmount {target}: {exc}") from exc
    api = client(args)
    if args.rm:
        snapshotter = args.snapshotter or "overlayfs"
        with contextlib.suppress(NotFound):
            api.remove_snapshot(snapshotter, target)
    with contextlib.suppress(NotFound):
        api.delete_lease(_lease_id(target))
    print(target)
    return 0
