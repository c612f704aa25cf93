"""``moorage run``: create a container from an image (or a directory) and run it.

:func:`run_container` is the whole flow, usable without argparse::

    code = run_container(client, "busybox", ["sh", "-c", "exit 7"], RunOptions(remove=True))

Exit codes follow Docker: the container's own, 125 when Moorage itself
failed, 126 when the command cannot be executed, 127 when it is not found.
"""

from __future__ import annotations

import os
import sys

# The flags and the spec they describe live in run_flags (mounts in run_mounts);
# the docker verbs take these three from here.
from runtime.cli.run_flags import add_spec_flags, expand_env, parse_size

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call);
# argparse is imported only to build the parser: `moorage run` itself goes
# without it (runtime.cli.main._FAST).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_MOORAGE_FAILED",
    "EXIT_NOT_FOUND",
    "PreparedRootfs",
    "RunOptions",
    "add_spec_flags",
    "exit_code_for",
    "expand_env",
    "parse_size",
    "prepare_rootfs",
    "register",
    "run_container",
]

EXIT_MOORAGE_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

#: The daemon's error codes for a command that cannot run (runtime.core.errors).
_EXIT_BY_CODE = {"command_not_found": EXIT_NOT_FOUND, "command_not_executable": EXIT_CANNOT_EXECUTE}


class RunOptions:
    """What ``moorage run`` was asked (see its ``--help``).

    A plain class: ``dataclasses`` (with ``inspect``) would be the largest
    import of ``moorage run``.
    """

    def __init__(self, name: str = "", remove: bool = False, detach: bool = False,
                 tty: bool = False, interactive: bool = False, runtime: str = "runc",
                 snapshotter: str = "", rootfs: str = "",
                 labels: dict[str, str] | None = None, spec: Any = None,
                 pull: str = "never", puller: Any = None) -> None:
        self.name = name
        self.remove = remove
        self.detach = detach
        self.tty = tty
        self.interactive = interactive
        self.runtime = runtime
        self.snapshotter = snapshotter
        self.rootfs = rootfs
        self.labels: dict[str, str] = dict(labels or {})
        #: SpecOptions (a Struct or its JSON object) without args; completed by run_container.
        self.spec = spec
        #: ``missing`` (pull an image not stored yet), ``always`` or ``never``.
        self.pull = pull
        #: ``puller(image)`` pulls the image, showing progress (needed unless pull is never).
        self.puller = puller

    def __repr__(self) -> str:
        return f"RunOptions({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def register(sub: Any) -> None:
    """Add ``run``."""
    import argparse

    from runtime.cli.verbs import docker_parser

    p = docker_parser(sub.add_parser("run", help="run a command in a new container"))
    add_spec_flags(p)
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("-d", "--detach", action="store_true", help="print the id and return")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("--name", default="", help="container id (default: random)")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=run)


def exit_code_for(error: Exception) -> int:
    """127/126 for a command not found / not executable (by the error's code), else 125."""
    return _EXIT_BY_CODE.get(str(getattr(error, "code", "")), EXIT_MOORAGE_FAILED)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``moorage run``."""
    from runtime.cli.main import lean_client
    from runtime.cli.namespaces import parse_labels
    from runtime.cli.run_flags import check_pull, policy_labels, spec_dict_from
    from runtime.core.errors import MoorageError

    def puller(image: str) -> None:
        from runtime.cli.images import pull_for_run

        pull_for_run(args, image)

    try:
        # With -d, the daemon removes it at exit (the auto-remove label): no client is left.
        labels = {**parse_labels(args.label), **policy_labels(args)}
        options = RunOptions(
            name=args.name, remove=args.rm and not args.detach, detach=args.detach,
            tty=args.tty, interactive=args.interactive, runtime=args.runtime,
            snapshotter=args.snapshotter, rootfs=args.rootfs, labels=labels,
            spec=spec_dict_from(args, []), pull=check_pull(args.pull), puller=puller,
        )  # fmt: skip
        return run_container(lean_client(args), args.image, list(args.command), options)
    except MoorageError as exc:
        print(f"moorage: {exc.code}: {exc.message}", file=sys.stderr)
        return exit_code_for(exc)


class PreparedRootfs:
    """Where a new container's root filesystem comes from.

    Attributes:
        config: The image's run config (``None`` for a plain directory).
        mounts: The mounts to hand to task create.
        snapshotter: The snapshotter holding the container's snapshot, or ``""``.
        key: The snapshot's key (the container id), or ``""``.
        lease: A lease protecting the snapshot until the container refers to it.
    """

    def __init__(self, config: Any, mounts: list[Any], snapshotter: str = "", key: str = "",
                 lease: str = "") -> None:
        self.config = config
        self.mounts = mounts
        self.snapshotter = snapshotter
        self.key = key
        self.lease = lease

    def release(self, api: Any) -> None:
        """Drop the lease once the container record holds the snapshot (or on failure)."""
        import contextlib

        from runtime.core.errors import MoorageError

        if self.lease:
            with contextlib.suppress(MoorageError):
                api.delete_lease(self.lease)
            self.lease = ""


def prepare_rootfs(api: Any, image: str, key: str, snapshotter: str = "") -> PreparedRootfs:
    """Unpack ``image`` if needed and prepare the active snapshot ``key`` on it.

    For ``containers create``, which makes the record after the snapshot: the
    snapshot is prepared under a short lease, so that until the record refers
    to it only the lease keeps the garbage collector away, and the lease
    expires by itself if this client dies first. (``run`` makes both in one
    call, record first: see :func:`run_container`.)
    """
    import msgspec

    from runtime.api.mounts import Mount
    from runtime.api.specs import ImageConfig

    prepared = api.image_rootfs(image, snapshotter)
    config = msgspec.convert(prepared.config or {}, ImageConfig)
    lease = api.create_lease(labels={"moorage/operation": "run"}, expire=300).id
    try:
        mounts = api.prepare_snapshot(prepared.snapshotter, key, prepared.chain_id, lease=lease)
    except BaseException:
        PreparedRootfs(None, [], lease=lease).release(api)
        raise
    rootfs = [Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
              for m in mounts]
    return PreparedRootfs(config, rootfs, prepared.snapshotter, key, lease)


def _spec_dict(spec: Any) -> dict[str, Any]:
    """SpecOptions (a Struct, a JSON object or ``None``) as a JSON object."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    import msgspec

    return dict(msgspec.to_builtins(spec))


def run_container(api: Any, image: str, command: list[str], options: RunOptions) -> int:
    """Create, start and (unless detached) follow a container; return its exit code.

    Two requests make a detached container (the image's root filesystem, then
    ``POST /v1/run``); an attached one adds the attach websocket, which starts
    the process. With ``remove`` (and the lean client) the second request is
    ``GET /v1/run/attach``, which creates, starts and removes it too.

    Args:
        api: A :class:`runtime.client.Client` or :class:`runtime.client.lean.LeanClient`.
        image: Image reference (ignored for the spec with ``options.rootfs``).
        command: Replaces the image's ``Cmd`` when not empty.
        options: Everything else.

    Raises:
        MoorageError: Moorage failed (the caller maps it with :func:`exit_code_for`).
    """
    container_id = options.name or os.urandom(6).hex()
    from runtime.cli.run_mounts import resolve_volumes

    spec = _spec_dict(options.spec)
    resolve_volumes(api, spec)
    spec["args"] = command or None
    spec["terminal"] = options.tty
    container: dict[str, Any] = {
        "id": container_id, "image": image, "runtime": {"name": options.runtime},
        "spec_options": spec, "labels": dict(options.labels),
    }  # fmt: skip
    # The daemon refuses host namespaces and privileges unless asked explicitly:
    # --privileged and --net host are the user's explicit word.
    network = (spec.get("annotations") or {}).get("io.moorage.network")
    if spec.get("privileged") or network == "host":
        container["allow_privileged"] = True
    parent, rootfs = "", []
    # The lean client's run asks the daemon to find the image's root filesystem in
    # the same request (RunRequest.image_rootfs): one round trip fewer. A missing
    # image answers NotFound before anything is made; then the image is pulled as
    # --pull says and the root filesystem asked for first, as the typed client does.
    from runtime.api.constants import MISSING_IMAGE
    from runtime.core.errors import NotFound

    fold = not options.rootfs and options.pull != "always" and hasattr(api, "run_attached")
    if options.rootfs:
        path = os.path.abspath(options.rootfs)
        rootfs = [{"type": "bind", "source": path, "options": ["rbind", "rw"]}]
    elif fold:
        container.update(snapshotter=options.snapshotter, snapshot_key=container_id)
    else:
        parent = _unpacked(api, image, options, container)
    if options.remove and not options.detach and hasattr(api, "run_attached"):
        # One websocket creates, attaches, starts and, before the exit message,
        # removes it (GET /v1/run/attach); the daemon undoes what a failure made.
        def attached(fold: bool) -> int:
            return _attached(api, container_id, options, api.run_attached(
                container, parent=parent, rootfs=rootfs, stdin=options.interactive,
                remove=True, image_rootfs=fold))

        if fold:
            try:
                return attached(True)
            except NotFound as exc:
                if not exc.message.startswith(MISSING_IMAGE):
                    raise
            parent = _unpacked(api, image, options, container)
        return attached(False)
    # The daemon undoes everything it made if this fails.
    try:
        api.run(container, parent=parent, rootfs=rootfs, stdin=options.interactive,
                start=options.detach, **({"image_rootfs": True} if fold else {}))
    except NotFound as exc:
        if not (fold and exc.message.startswith(MISSING_IMAGE)):
            raise
        parent = _unpacked(api, image, options, container)
        api.run(container, parent=parent, rootfs=rootfs, stdin=options.interactive,
                start=options.detach)
    if options.detach:
        print(container_id)
        return 0
    try:
        code = _attached(api, container_id, options)
    except BaseException:
        if options.remove:
            _cleanup(api, container_id)
        raise
    if options.remove:
        _cleanup(api, container_id)
    return code


def _unpacked(api: Any, image: str, options: RunOptions, container: dict[str, Any]) -> str:
    """The image's root filesystem, pulled first as ``--pull`` says: fills ``container`` in.

    Returns:
        The snapshot's parent (the image's top chain ID).
    """
    prepared = image_rootfs(api, image, options)
    container.update(image_config=prepared.config or None,
                     snapshotter=prepared.snapshotter, snapshot_key=container["id"])
    return str(prepared.chain_id)


def image_rootfs(api: Any, image: str, options: RunOptions) -> Any:
    """``api.image_rootfs``, pulling the image first as ``options.pull`` says."""
    from runtime.core.errors import NotFound

    if options.pull == "always" and options.puller is not None:
        options.puller(image)
    try:
        return api.image_rootfs(image, options.snapshotter)
    except NotFound:
        if options.pull != "missing" or options.puller is None:
            raise
    print(f"Unable to find image {image!r} locally", file=sys.stderr)
    options.puller(image)
    return api.image_rootfs(image, options.snapshotter)


def _attached(api: Any, container_id: str, options: RunOptions,
              attachment: Any = None) -> int:
    from runtime.cli.terminal import relay

    if attachment is None:
        attachment = api.attach_task(container_id, stdin=options.interactive, start=True)

    def forward(signum: int) -> None:
        # Outside a terminal, Ctrl-C and SIGTERM are meant for the container.
        api.kill_task(container_id, signum)

    try:
        status = relay(attachment, stdin=options.interactive,
                       tty_mode=options.tty and os.isatty(sys.stdin.fileno()),
                       on_signal=forward)
    finally:
        attachment.close()
    if status is None:
        status = api.wait_task(container_id).exit_status
    return int(status)


def _cleanup(api: Any, container_id: str) -> None:
    """Remove what :func:`run_container` made, best effort, reporting failures."""
    from runtime.core.errors import MoorageError

    try:
        api.remove(container_id, force=True, snapshot=True)
    except MoorageError as exc:
        if exc.code != "not_found":
            print(f"moorage: cannot remove container {container_id}: {exc.message}",
                  file=sys.stderr)
