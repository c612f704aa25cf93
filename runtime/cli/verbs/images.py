"""The image verbs: ``images`` (its listing), ``rmi``, ``tag``, ``save`` and ``load``.

``save`` writes the daemon's export, which is both an OCI image layout
(``index.json``, ``oci-layout``, ``blobs/``) and a ``docker save`` archive
(``manifest.json``), so ``docker load`` and ``skopeo`` read it; ``load`` takes
either kind (and Docker's older ones with ``repositories``).
"""

from __future__ import annotations

import sys

from runtime.cli.verbs import EXIT_USAGE, adder, ago, client

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["images", "register"]


def register(sub: Any) -> None:
    """Add ``rmi`` and ``tag`` (``images`` is the images group's, listing with this module)."""
    add = adder(sub)
    p = add("rmi", rmi, "remove images")
    p.add_argument("-f", "--force", action="store_true", help="even if a container uses it")
    p.add_argument("images", nargs="+")

    p = add("tag", tag, "give an image another name")
    p.add_argument("source")
    p.add_argument("target")

    p = add("save", save, "images as one tar, Docker and OCI layout at once")
    p.add_argument("-o", "--output", default="", metavar="FILE", help="default: stdout")
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]")
    p.add_argument("--all-platforms", action="store_true")
    p.add_argument("images", nargs="+")

    p = add("load", load, "images from a tar made by save, docker save or an OCI layout")
    p.add_argument("-i", "--input", default="-", metavar="FILE", help="default: stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def images(args: argparse.Namespace) -> int:
    """``docker images``: repository, tag, image id, created, size."""
    import json

    from runtime.cli.output import print_table
    from runtime.cli.transfers import human

    api = client(args)
    found = sorted(api.images(), key=lambda i: i.name)
    if args.quiet:
        for image in found:
            print(image.target.digest.removeprefix("sha256:")[:12])
        return 0
    rows = []
    for image in found:
        repository, tag = _split_name(image.name)
        rows.append({"Repository": repository, "Tag": tag, "ID": image.target.digest,
                     "CreatedAt": image.created_at.isoformat() if image.created_at else "",
                     "Size": api.check_image(image.name).size})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print_table(("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"),
                [(r["Repository"], r["Tag"], r["ID"].removeprefix("sha256:")[:12],
                  ago(i.created_at), human(r["Size"])) for r, i in zip(rows, found, strict=True)])
    return 0


def _split_name(name: str) -> tuple[str, str]:
    """``repo:tag`` (or ``repo@digest``) into repository and tag."""
    if "@" in name:
        return name.partition("@")[0], "<none>"
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, "<none>"


def rmi(args: argparse.Namespace) -> int:
    """Remove images; one a container was made from only with ``-f``."""
    from runtime.cli.each import for_each
    from runtime.core.errors import FailedPrecondition

    api = client(args)

    def remove(name: str) -> None:
        if not args.force:
            users = sorted(c.id for c in api.containers() if c.image == name)
            if users:
                raise FailedPrecondition(
                    f"image {name!r} is used by container {', '.join(users)}: use -f")
        api.delete_image(name)

    return for_each(args.images, remove)


def tag(args: argparse.Namespace) -> int:
    """Point TARGET where SOURCE points (replacing what TARGET named)."""
    from runtime.core.errors import AlreadyExists

    api = client(args)
    source = api.image(args.source)
    try:
        api.create_image(args.target, source.target, source.labels)
    except AlreadyExists:
        api.update_image(args.target, target=source.target)
    return 0


def save(args: argparse.Namespace) -> int:
    """Write the images' archive to ``-o FILE`` (whole, or not at all) or stdout."""
    from types import SimpleNamespace

    from runtime.cli import images as ctr_images
    from runtime.core.errors import MoorageError

    if not args.output and sys.stdout.isatty():
        print("moorage: invalid_argument: save: refusing to write a tar to a terminal; "
              "use -o FILE or a redirection", file=sys.stderr)
        return EXIT_USAGE
    export = SimpleNamespace(**vars(args), file=args.output or "-", names=args.images)
    try:
        return ctr_images.export(export)  # type: ignore[arg-type]
    except MoorageError as exc:
        print(f"moorage: {exc.code}: save {' '.join(args.images)}: {exc.message}",
              file=sys.stderr)
        return EXIT_USAGE


def load(args: argparse.Namespace) -> int:
    """Import the archive (``-i FILE`` or stdin); print each image loaded."""
    from runtime.cli.images import _file_chunks
    from runtime.core.errors import MoorageError

    where = "stdin" if args.input == "-" else args.input
    if args.input != "-":
        try:
            open(args.input, "rb").close()  # fails here, not halfway through the upload
        except OSError as exc:
            print(f"moorage: not_found: load {where}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    try:
        loaded = client(args).import_images(_file_chunks(args.input))
    except MoorageError as exc:
        print(f"moorage: {exc.code}: load {where}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        for image in loaded:
            print(f"Loaded image: {image.name}")
    return 0
