"""``moorage cp SRC CTR:PATH`` and ``moorage cp CTR:PATH DST``: files between host and container.

The daemon reads and writes the container's side (``/v1/containers/{id}/archive``,
see :mod:`runtime.plugins.tasks.archive_routes`), as Docker's archive API does;
the CLI tars and untars the host's side. Both sides resolve paths with
:mod:`runtime.pkg.archive.inroot`: on the host, the tar the daemon sends is
unpacked confined to the destination directory too. Owners (when the CLI runs
as root), modes, times and symlinks are kept both ways.

Docker's naming rules: into an existing directory the source keeps its base
name; to a path that does not exist yet (its parent must), the copy takes that
name. ``-`` as the destination writes the tar to stdout, as the source reads
one from stdin.
"""

from __future__ import annotations

import os
import sys

from runtime.cli.verbs import EXIT_USAGE, adder, client, resolve

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator
    from typing import IO, Any

__all__ = ["register", "split_operand"]

_CHUNK = 1 << 20


def register(sub: Any) -> None:
    """Add ``cp``."""
    add = adder(sub)
    p = add("cp", cp, "copy files between a container and the host (CTR:PATH on one side)")
    p.add_argument("-L", "--follow-link", action="store_true",
                   help="copy what a source symlink points at")
    p.add_argument("-a", "--archive", action="store_true",
                   help="accepted for Docker's sake: owners are always kept")
    p.add_argument("source", metavar="SRC")
    p.add_argument("dest", metavar="DEST")


def split_operand(word: str) -> tuple[str, str]:
    """``("ctr", "/path")`` for ``ctr:/path``; ``("", word)`` for a host path.

    A host path holding a colon is written ``./a:b`` or ``/abs/a:b``, as with Docker.
    """
    if word.startswith(("/", ".")) or ":" not in word:
        return "", word
    container, _, path = word.partition(":")
    return container, path


def cp(args: argparse.Namespace) -> int:
    """Copy; any error exits 125 naming the operands, with nothing half-done on the refusals."""
    from runtime.core.errors import InvalidArgument, MoorageError

    src_ctr, src = split_operand(args.source)
    dst_ctr, dst = split_operand(args.dest)
    try:
        if bool(src_ctr) == bool(dst_ctr):
            raise InvalidArgument("name a container on exactly one side (CONTAINER:PATH)"
                                  if not src_ctr else "copying between containers is not "
                                  "supported: copy to the host first")
        api = client(args)
        if src_ctr:
            _from_container(api, resolve(api, src_ctr), src, dst, args.follow_link)
        else:
            _to_container(api, resolve(api, dst_ctr), src, dst, args.follow_link)
    except MoorageError as exc:
        print(f"moorage: {exc.code}: cp {args.source} {args.dest}: {exc.message}",
              file=sys.stderr)
        return EXIT_USAGE
    return 0


def _archive(container_id: str) -> str:
    from urllib.parse import quote

    return f"/v1/containers/{quote(container_id, safe='')}/archive"


def _stat(api: Any, container_id: str, path: str, follow: bool) -> Any:
    """The container's path, or ``None`` if nothing is there."""
    from runtime.api.containers import PathStatInfo
    from runtime.core.errors import NotFound

    try:
        return api.call("GET", _archive(container_id) + "/stat", PathStatInfo,
                        query={"path": path, "follow": "1" if follow else "0"})
    except NotFound:
        return None  # the container was resolved just before: it is the path that is missing


def _from_container(api: Any, container_id: str, src: str, dst: str, follow: bool) -> None:
    from runtime.core.errors import InvalidArgument, NotFound
    from runtime.pkg.archive import inroot

    found = _stat(api, container_id, src, follow)
    if found is None:
        raise NotFound(f"no such file or directory in the container: {src}")
    response = api.open("GET", _archive(container_id),
                        query={"path": src, "follow": "1" if follow else "0"}, timeout=None)
    try:
        if dst == "-":
            for chunk in response.iter_raw():
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        top = inroot.path_parts(src)[-1]
        if os.path.isdir(dst):
            into, rename = dst, None
        else:
            into = os.path.dirname(os.path.abspath(dst))
            if not os.path.isdir(into):
                raise NotFound(f"no such directory on the host: {into}")
            if found.is_dir and os.path.lexists(dst):
                raise InvalidArgument(f"cannot copy directory {src} onto file {dst}")
            rename = (top, os.path.basename(os.path.abspath(dst)))
        root = inroot.open_root(into)
        try:
            inroot.extract_tar(root, "/", _Reader(response.iter_raw()), rename)
        finally:
            os.close(root)
    finally:
        response.close()


def _to_container(api: Any, container_id: str, src: str, dst: str, follow: bool) -> None:
    import tempfile

    from runtime.api.containers import ArchiveResult
    from runtime.core.errors import InvalidArgument, NotFound
    from runtime.pkg.archive import inroot

    inroot.path_parts(dst, "destination")  # a climb-out is refused before anything is sent
    if src == "-":
        target, data = dst, _chunks(sys.stdin.buffer)
    else:
        source = os.path.abspath(src)
        if not os.path.lexists(source):
            raise NotFound(f"no such file or directory on the host: {src}")
        found = _stat(api, container_id, dst, True)
        if dst.endswith(("/", "/.")) and (found is None or not found.is_dir):
            raise NotFound(f"no such directory in the container: {dst}")
        if found is not None and found.is_dir:
            target, name = dst, os.path.basename(source)
        else:
            parts = inroot.path_parts(dst, "destination")
            if not parts:
                raise InvalidArgument("the destination is the container's root: name it '/'")
            if found is not None and os.path.isdir(source):
                raise InvalidArgument(f"cannot copy directory {src} onto file {dst}")
            target, name = "/" + "/".join(parts[:-1]), parts[-1]
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _chunks
        root = inroot.open_root(os.path.dirname(source))
        try:
            inroot.write_tar(root, os.path.basename(source), spool, name=name, follow=follow)
        finally:
            os.close(root)
        spool.seek(0)
        data = _chunks(spool, close=True)
    api.call("PUT", _archive(container_id), ArchiveResult, query={"path": target}, data=data,
             headers={"Content-Type": "application/x-tar"}, timeout=None)


def _chunks(handle: IO[bytes], close: bool = False) -> Iterator[bytes]:
    try:
        while chunk := handle.read(_CHUNK):
            yield chunk
    finally:
        if close:
            handle.close()


class _Reader:
    """A forward-only file over an iterator of byte chunks (what ``tarfile`` ``r|`` reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._at = 0

    def read(self, size: int = -1) -> bytes:
        parts = []
        wanted = size
        while size < 0 or wanted > 0:
            if self._at >= len(self._buffer):
                self._buffer, self._at = next(self._chunks, b""), 0
                if not self._buffer:
                    break
            end = len(self._buffer) if size < 0 else min(len(self._buffer), self._at + wanted)
            parts.append(self._buffer[self._at:end])
            wanted -= end - self._at
            self._at = end
        return b"".join(parts)
