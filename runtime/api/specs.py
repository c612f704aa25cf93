"""What an OCI spec is generated from: the image's config and the container's spec options."""


from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ImageConfig",
    "SpecMount",
    "SpecOptions",
]


# -- spec inputs --------------------------------------------------------------


class ImageConfig(msgspec.Struct, kw_only=True, rename="pascal"):
    """The ``config`` object of an OCI image configuration, in its own spelling.

    Fields the spec does not use (``Volumes``...) are ignored;
    Docker writes ``null`` for unset ones.

    Attributes:
        entrypoint: ``Entrypoint``.
        cmd: ``Cmd``.
        env: ``Env`` as ``KEY=VALUE`` strings.
        working_dir: ``WorkingDir``.
        user: ``User`` (``name``, ``uid``, ``uid:gid``, ``name:group``).
        stop_signal: ``StopSignal``.
        labels: ``Labels``.
        exposed_ports: ``ExposedPorts``: ``{"80/tcp": {}}`` (what ``run -P`` publishes).
    """

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] | None = None
    working_dir: str | None = None
    user: str | None = None
    stop_signal: str | None = None
    labels: dict[str, str] | None = None
    exposed_ports: dict[str, Any] | None = None


class SpecMount(msgspec.Struct, kw_only=True):
    """An extra mount in the container (``--mount type=bind,src=...,dst=...``)."""

    destination: str
    source: str = ""
    type: str = "bind"
    options: list[str] = msgspec.field(default_factory=list)


class SpecOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a user may ask of the generated OCI spec; applied after the image config.

    Attributes:
        args: Replaces the image's ``Cmd`` (kept after its ``Entrypoint``).
        entrypoint: Replaces the image's ``Entrypoint`` when not ``None``.
        env: ``KEY=VALUE`` strings, overriding the image's.
        cwd: Working directory (default: the image's, else ``/``).
        user: ``uid[:gid]`` or ``name[:group]``; names are looked up in the
            root filesystem's ``/etc/passwd`` and ``/etc/group`` at task create.
        hostname: Host name inside the container (default: the container id).
        mounts: Extra mounts (bind mounts of host paths).
        readonly_rootfs: Mount the root filesystem read-only.
        privileged: All capabilities, all devices, no masked paths, no seccomp filter.
        seccomp: The seccomp profile: ``""`` the default one (see
            :mod:`runtime.pkg.seccomp`), ``"unconfined"`` none, else a profile's
            JSON text (Docker's shape or an OCI ``linux.seccomp`` object).
        terminal: Allocate a pseudo-terminal for the init process.
        cpus: CPUs of quota (``1.5`` -> quota 150000 per 100000 µs period).
        memory: Memory limit in bytes (0: none).
        pids_limit: Maximum number of processes (0: none).
        annotations: Extra OCI annotations.
        init: Run the daemon host's tiny init (catatonit, else tini) as PID 1,
            bound read-only at :data:`runtime.pkg.oci.spec.INIT_PATH`.
        publish_all: Publish each of the image's ``ExposedPorts`` on a host port
            the network picks (added to the ports annotation with host port 0).
    """

    args: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = msgspec.field(default_factory=list)
    cwd: str = ""
    user: str = ""
    hostname: str = ""
    mounts: list[SpecMount] = msgspec.field(default_factory=list)
    readonly_rootfs: bool = False
    privileged: bool = False
    seccomp: str = ""
    terminal: bool = False
    cpus: float = 0.0
    memory: int = 0
    pids_limit: int = 0
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    init: bool = False
    publish_all: bool = False


