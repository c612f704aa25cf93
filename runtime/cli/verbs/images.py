"""The image verbs: ``images`` (the listing of ``moorage images``), ``rmi``, ``tag``."""

from __future__ import annotations

from runtime.cli.verbs import adder, ago, client

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
