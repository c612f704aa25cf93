"""``moorage images pull|push|ls|rm|tag|label|inspect|import|export|mount|unmount|check|usage``.

Argument order follows ``ctr``: ``tag SOURCE TARGET``, ``push REMOTE [LOCAL]``,
``export FILE IMAGE...``, ``mount IMAGE TARGET``. ``moorage pull`` is an alias
of ``moorage images pull``. Pull and push draw one progress bar per blob
(bytes, speed, registry host, unpack state) plus a total, when stderr is a
terminal; otherwise they print one line per finished blob.
"""

from __future__ import annotations

import os
import sys

from runtime.cli.namespaces import format_labels, parse_labels
from runtime.cli.transfers import follow, human, summary

# typing.TYPE_CHECKING without importing typing, argparse, getpass or json: ``images
# pull`` runs without argparse (runtime.cli.main), and scripts pull before each run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator
    from typing import Any

__all__ = ["register"]

_CHUNK = 1 << 20


def _add_registry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain-http", action="store_true", help="talk HTTP to the registry")
    p.add_argument(
        "--user",
        "-u",
        default="",
        metavar="USER[:PASS]",
        help="registry credentials (password prompted if omitted)",
    )
    p.add_argument("--hosts-dir", default="", help="directory of <host>/hosts.toml files")
    p.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="platform to pull or push; repeat",
    )


def _add_pull(sub: Any, name: str, aliases: list[str] | None = None) -> Any:
    p = sub.add_parser(name, aliases=aliases or [], help="pull an image and unpack it")
    p.add_argument("ref", help="image reference (busybox, 127.0.0.1:5000/x/y:tag)")
    _add_registry_flags(p)
    p.add_argument("--all-platforms", action="store_true", help="fetch every platform")
    p.add_argument("--snapshotter", default="", help="snapshotter to unpack into")
    p.add_argument("--no-unpack", action="store_true", help="fetch only")
    p.add_argument("--max-concurrent-downloads", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="print the image name only")
    p.set_defaults(handler=pull)
    return p


def register(sub: Any) -> None:
    """Add this group's commands (and the ``pull`` shortcut)."""
    from runtime.cli import image_mounts
    from runtime.cli.main import add_label_command, add_list_command, add_output_flags
    from runtime.cli.verbs import docker_parser
    from runtime.cli.verbs.images import images as list_images

    # Alone, `images` is docker's verb: its flag errors exit 125 as the other verbs'.
    images = docker_parser(sub.add_parser(
        "images", aliases=["image", "i"],
        help="manage images (alone: list them, as docker images)"))
    images.add_argument("-q", "--quiet", action="store_true", help="print image ids only")
    images.add_argument("--format", choices=("table", "json"), default="table")
    images.set_defaults(handler=list_images)
    isub = images.add_subparsers(dest="images_command", metavar="COMMAND")
    _add_pull(isub, "pull")
    docker_parser(_add_pull(sub, "pull"))  # docker pull: 125 on a flag error

    p = isub.add_parser("push", help="push an image to a registry")
    p.add_argument("remote", help="where to push (registry reference)")
    p.add_argument("local", nargs="?", default="", help="local image (default: REMOTE)")
    _add_registry_flags(p)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(handler=push)

    add_list_command(isub, "list images", ls, filters="filters (name~=busybox, labels.k==v)")

    p = isub.add_parser("rm", aliases=["remove", "delete"], help="remove images")
    p.add_argument("names", nargs="+")
    p.add_argument("--sync", action="store_true", help="wait for garbage collection")
    p.set_defaults(handler=rm)

    p = isub.add_parser("tag", help="give an image another name")
    p.add_argument("source")
    p.add_argument("targets", nargs="+", metavar="target")
    p.add_argument("--force", action="store_true", help="replace an existing target")
    p.set_defaults(handler=tag)

    add_label_command(isub, "name", label)

    p = isub.add_parser("inspect", help="an image's record, completeness and run config")
    p.add_argument("name")
    p.set_defaults(handler=inspect)

    p = isub.add_parser("import", help="import an OCI layout or docker-save tar ('-': stdin)")
    p.add_argument("file")
    p.add_argument("--base-name", default="", help="prefix for unnamed or tag-only entries")
    p.add_argument("--no-unpack", action="store_true")
    p.add_argument("--snapshotter", default="")
    p.set_defaults(handler=import_)

    p = isub.add_parser("export", help="export images as an OCI layout tar ('-': stdout)")
    p.add_argument("file")
    p.add_argument("names", nargs="+", metavar="image")
    p.add_argument("--platform", action="append", default=[])
    p.add_argument("--all-platforms", action="store_true")
    p.set_defaults(handler=export)

    image_mounts.register(isub)

    p = isub.add_parser("check", help="are all blobs of the images present?")
    add_output_flags(p)
    p.add_argument("--platform", action="append", default=[],
                   help="only what these platforms need (os/arch; repeat; default: all)")
    p.add_argument("names", nargs="*", help="images (default: all)")
    p.set_defaults(handler=check)

    p = isub.add_parser("usage", help="disk use of an image's blobs and snapshots")
    add_output_flags(p)
    p.add_argument("name")
    p.add_argument("--snapshotter", default="")
    p.set_defaults(handler=usage)


# -- helpers ---------------------------------------------------------------------------------


def _credentials(user: str, ref: str) -> tuple[str, str]:
    """``--user`` (its password prompted if left out), else the caller's docker config's."""
    if not user:
        from runtime.cli.docker_home import config_file

        if not os.path.exists(config_file()):
            return "", ""  # no file, no stored credentials: its reader is not even imported
        from runtime.cli.docker_config import credentials_for

        return credentials_for(ref)
    name, sep, password = user.partition(":")
    if not sep:
        import getpass

        password = getpass.getpass(f"Password for {name}: ")
    return name, password


# -- commands --------------------------------------------------------------------------------


def pull(args: argparse.Namespace) -> int:
    """Pull with progress bars; ``--quiet``: print the image's name only.

    Quiet pulls are what scripts run before each ``run``: they go through the
    standard-library client (:mod:`runtime.client.lean`), which reads the
    same progress lines as attribute bags.
    """
    from runtime.cli.main import client, lean_client

    user, password = _credentials(args.user, args.ref)
    events = (lean_client(args) if args.quiet else client(args)).pull(
        args.ref,
        platforms=args.platform,
        all_platforms=args.all_platforms,
        snapshotter=args.snapshotter,
        unpack=not args.no_unpack,
        plain_http=args.plain_http,
        hosts_dir=args.hosts_dir,
        user=user,
        password=password,
        max_concurrent_downloads=args.max_concurrent_downloads,
    )
    if not args.quiet:
        summary("pulled", follow(events, quiet=False))
        return 0
    done = None
    for event in events:
        if event.type == "done":
            done = event
    if done is not None and done.image is not None:
        print(done.image.name)
    return 0


def pull_for_run(args: Any, ref: str) -> None:
    """Pull ``ref`` for ``run``/``create`` with the progress bars, as ``docker run`` does.

    A registry on this machine (127.0.0.0/8, ::1, localhost) is spoken to in
    plain HTTP, as Docker treats loopback registries as insecure.
    """
    from runtime.cli.main import client
    from runtime.pkg.registry.hosts import is_loopback
    from runtime.pkg.registry.reference import parse_reference

    domain = parse_reference(ref).domain
    user, password = _credentials("", ref)
    events = client(args).pull(ref, snapshotter=getattr(args, "snapshotter", ""),
                               plain_http=is_loopback(domain), user=user, password=password)
    summary("pulled", follow(events, quiet=False))


def ensure_image(args: Any, api: Any, ref: str, mode: str) -> None:
    """Pull ``ref`` when ``mode`` is ``always``, or ``missing`` and it is not stored."""
    from runtime.core.errors import NotFound

    if mode == "never":
        return
    if mode == "missing":
        try:
            api.image(ref)
            return
        except NotFound:
            print(f"Unable to find image {ref!r} locally", file=sys.stderr)
    pull_for_run(args, ref)


def push(args: argparse.Namespace) -> int:
    """Push with progress bars."""
    from runtime.cli.main import client

    user, password = _credentials(args.user, args.remote)
    events = client(args).push(
        args.local or args.remote,
        args.remote,
        platforms=args.platform,
        plain_http=args.plain_http,
        hosts_dir=args.hosts_dir,
        user=user,
        password=password,
    )
    done = follow(events, quiet=args.quiet)
    if not args.quiet:
        summary("pushed", done, args.remote)
    return 0


def _kind(media_type: str) -> str:
    if "index" in media_type or "manifest.list" in media_type:
        return "index"
    return "manifest"


def ls(args: argparse.Namespace) -> int:
    """List images with type, digest, size and labels."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    api = client(args)
    images = api.images(args.filters)
    sizes = {}
    if args.format != "json" and not args.quiet:
        sizes = {i.name: api.check_image(i.name).size for i in images}
    emit(
        args,
        images,
        headers=("REF", "TYPE", "DIGEST", "SIZE", "LABELS"),
        row=lambda i: (
            i.name,
            _kind(i.target.mediaType),
            i.target.digest,
            human(sizes.get(i.name, 0)),
            format_labels(i.labels),
        ),
        ident=lambda i: i.name,
    )
    return 0


def rm(args: argparse.Namespace) -> int:
    """Remove images, reporting each failure."""
    from runtime.cli.each import for_each
    from runtime.cli.main import client

    api = client(args)
    return for_each(args.names, lambda name: api.delete_image(name, sync=args.sync))


def tag(args: argparse.Namespace) -> int:
    """Create TARGET names pointing where SOURCE points."""
    from runtime.cli.main import client
    from runtime.core.errors import AlreadyExists

    api = client(args)
    source = api.image(args.source)
    for target in args.targets:
        try:
            created = api.create_image(target, source.target, source.labels)
        except AlreadyExists:
            if not args.force:
                raise
            created = api.update_image(target, target=source.target)
        print(created.name)
    return 0


def label(args: argparse.Namespace) -> int:
    """Set labels on an image."""
    from runtime.cli.main import client

    info = client(args).update_image(args.name, labels=parse_labels(args.labels))
    print(f"{info.name}  {format_labels(info.labels)}")
    return 0


def inspect(args: argparse.Namespace) -> int:
    """Print the record and whether its content is complete, as JSON."""
    import json

    import msgspec

    from runtime.cli.main import client

    api = client(args)
    info = api.image(args.name)
    out = {
        "image": msgspec.to_builtins(info),
        "check": msgspec.to_builtins(api.check_image(info.name)),
    }
    print(json.dumps(out, indent=2))
    return 0


def _file_chunks(path: str) -> Iterator[bytes]:
    handle = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        while chunk := handle.read(_CHUNK):
            yield chunk
    finally:
        if path != "-":
            handle.close()


def import_(args: argparse.Namespace) -> int:
    """Upload an archive; print the names imported."""
    from runtime.cli.main import client

    for image in client(args).import_images(
        _file_chunks(args.file),
        base_name=args.base_name,
        unpack=not args.no_unpack,
        snapshotter=args.snapshotter,
    ):
        print(image.name)
    return 0


def export(args: argparse.Namespace) -> int:
    """Write the archive to FILE (atomically) or stdout."""
    from runtime.cli.main import client

    chunks = client(args).export_images(
        args.names, platforms=args.platform, all_platforms=args.all_platforms
    )
    if args.file == "-":
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return 0
    partial = args.file + ".partial"
    try:
        with open(partial, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(partial, args.file)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return 0


def check(args: argparse.Namespace) -> int:
    """Report completeness; exit 1 if an image lacks blobs."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    api = client(args)
    names = args.names or [i.name for i in api.images()]
    results = [api.check_image(n, args.platform) for n in names]
    emit(
        args,
        results,
        headers=("REF", "STATUS", "BLOBS", "SIZE", "UNPACKED"),
        row=lambda r: (
            r.name,
            "complete" if r.complete else "incomplete",
            f"{r.present}/{r.total}",
            human(r.size),
            ",".join(sorted(r.unpacked)) or "-",
        ),
        ident=lambda r: r.name,
    )
    return 0 if all(r.complete for r in results) else 1


def usage(args: argparse.Namespace) -> int:
    """Bytes of blobs and snapshots."""
    from runtime.cli.main import client
    from runtime.cli.output import emit

    result = client(args).image_usage(args.name, args.snapshotter)
    emit(
        args,
        result,
        headers=("REF", "CONTENT", "BLOBS", "SNAPSHOTTER", "SNAPSHOTS", "SIZE"),
        row=lambda u: (
            u.name,
            human(u.content_size),
            u.blobs,
            u.snapshotter,
            u.snapshots,
            human(u.snapshot_size),
        ),
        ident=lambda u: u.name,
    )
    return 0
