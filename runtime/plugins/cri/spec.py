"""OCI runtime specs for CRI pod sandboxes (the infra process) and their containers.

Both start from the runtime's :func:`generate_spec` (containerd's defaults)
and are then shaped by the CRI configs: a sandbox owns the pod's network
(the netns Moorage made), IPC, UTS and, for ``PID=POD``, PID namespaces; a
container joins them through ``/proc/<infra pid>/ns/*``. A ``NODE`` mode
leaves that namespace out (the host's); ``CONTAINER`` gives the container its
own; ``TARGET`` joins another container's PID namespace. A pod with a user
namespace (``userns_options`` mode ``POD``) has it pinned with its network,
IPC and UTS namespaces, which it owns (:mod:`runtime.pkg.userns`); its infra
process, if any, and every container join them by path.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from runtime.api.specs import ImageConfig, SpecOptions
from runtime.api.tasks import KEEP_CGROUP_PARENTS_ANNOTATION, LOG_PATH_ANNOTATION
from runtime.core.errors import InvalidArgument
from runtime.pkg.oci.spec import (
    GROUPS_POLICY_ANNOTATION,
    generate_spec,
    privileged_capabilities,
)
from runtime.pkg.seccomp import UNCONFINED, default_profile, parse_profile
from runtime.pkg.userns import IDMAP_ROOTFS_ANNOTATION, IDMapping
from runtime.plugins.cri.messages import pb

__all__ = [
    "PodNamespaces",
    "SandboxFiles",
    "container_spec",
    "needs_infra",
    "parse_capability",
    "pod_hostname",
    "pod_sysctls",
    "pod_user_namespace",
    "sandbox_spec",
    "validate_mount",
]

#: The infra process's path inside its root filesystem.
INFRA_BINARY = "/pause"


@functools.cache
def _signal_names() -> dict[int, str]:
    """CRI's Signal enum by value -> the signal's name as runc takes it (read on first use)."""
    return {v.number: v.name for v in pb.Signal.DESCRIPTOR.values if v.number}


class SandboxFiles(msgspec.Struct, frozen=True):
    """A pod's files that every container of it bind-mounts.

    Attributes:
        hostname: ``/etc/hostname``.
        hosts: ``/etc/hosts``.
        resolv_conf: ``/etc/resolv.conf``.
        shm: ``/dev/shm``: a tmpfs of the pod, or the host's for host IPC.
    """

    hostname: Path
    hosts: Path
    resolv_conf: Path
    shm: Path


class PodNamespaces(msgspec.Struct, frozen=True):
    """The namespaces of a pod its containers join: paths, ``""`` for the host's.

    Attributes:
        network: The pod's network namespace.
        uts: Its UTS namespace (the host's with host networking).
        ipc: Its IPC namespace.
        pid: Its shared PID namespace (the infra process's); ``None`` when the
            pod shares none (``CONTAINER``): a container asking for ``POD`` then
            gets its own.
    """

    network: str
    uts: str
    ipc: str
    pid: str | None
    user: str = ""

    @classmethod
    def of_infra(cls, pid: int, config: pb.PodSandboxConfig) -> PodNamespaces:
        """Those the infra process ``pid`` holds."""
        modes = config.linux.security_context.namespace_options
        proc = f"/proc/{pid}/ns"
        host_net = modes.network == pb.NODE
        return cls(network="" if host_net else f"{proc}/net", uts="" if host_net else f"{proc}/uts",
                   ipc="" if modes.ipc == pb.NODE else f"{proc}/ipc",
                   pid="" if modes.pid == pb.NODE else f"{proc}/pid",
                   user=f"{proc}/user" if pod_user_namespace(config) else "")


class UserNamespace(msgspec.Struct, frozen=True):
    """A pod's user namespace: its one UID and one GID mapping."""

    uids: tuple[IDMapping, ...]
    gids: tuple[IDMapping, ...]

    def spec_mappings(self) -> dict[str, list[dict[str, int]]]:
        """``linux.uidMappings`` and ``gidMappings`` of an OCI spec."""
        def lines(mappings: tuple[IDMapping, ...]) -> list[dict[str, int]]:
            return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.size}
                    for m in mappings]
        return {"uidMappings": lines(self.uids), "gidMappings": lines(self.gids)}


def _id_mappings(what: str, mappings: Sequence[pb.IDMapping]) -> tuple[IDMapping, ...]:
    if len(mappings) > 1:
        # As containerd: one line each (its remapped snapshots support no more).
        raise InvalidArgument(f"user namespace {what} mapping: only one mapping line is "
                              f"supported, got {len(mappings)}")
    found = tuple(IDMapping(m.container_id, m.host_id, m.length) for m in mappings)
    for m in found:
        if m.size < 1:
            raise InvalidArgument(f"user namespace {what} mapping: invalid length {m.size}")
        if m.container_id != 0:
            raise InvalidArgument(f"user namespace {what} mapping must map container id 0 "
                                  f"(the pod's root), got {m.container_id}")
        if m.host_id + m.size > 1 << 32:
            raise InvalidArgument(f"user namespace {what} mapping {m.host_id}+{m.size} "
                                  "is past the last host id")
    return found


def _user_namespace(options: pb.NamespaceOption) -> UserNamespace | None:
    if not options.HasField("userns_options"):
        return None  # a kubelet that knows no user namespaces: none, as containerd
    userns = options.userns_options
    uids = _id_mappings("UID", userns.uids)
    gids = _id_mappings("GID", userns.gids)
    if userns.mode == pb.NODE:
        if uids or gids:
            raise InvalidArgument(
                f"user namespace mode NODE cannot have mappings (got {len(uids)} UID and "
                f"{len(gids)} GID mappings)")
        return None
    if userns.mode != pb.POD:
        raise InvalidArgument(
            f"user namespace mode {pb.NamespaceMode.Name(userns.mode)} is not supported "
            "(NODE or POD)")
    if not uids or not gids:
        raise InvalidArgument("user namespace mode POD needs a UID and a GID mapping")
    for kind, mode in (("network", options.network), ("PID", options.pid),
                       ("IPC", options.ipc)):
        if mode == pb.NODE:
            raise InvalidArgument(f"a user namespace cannot be used with the host's {kind} "
                                  "namespace")
    return UserNamespace(uids=uids, gids=gids)


def pod_user_namespace(config: pb.PodSandboxConfig) -> UserNamespace | None:
    """The pod's user namespace, ``None`` for the host's.

    Raises:
        InvalidArgument: What containerd refuses: a mode other than ``NODE``
            and ``POD``, mappings with ``NODE``, ``POD`` without both mappings,
            more than one line, a length below 1; and, besides, a mapping that
            leaves the pod's root (container id 0) unmapped, and host network,
            PID or IPC namespaces with ``POD``.
    """
    return _user_namespace(config.linux.security_context.namespace_options)


def container_user_namespace(config: pb.ContainerConfig,
                             sandbox: pb.PodSandboxConfig) -> UserNamespace | None:
    """The container's user namespace: its pod's; one the container asks for must be the same.

    Raises:
        InvalidArgument: The container asks for another one than its pod's.
    """
    pod = pod_user_namespace(sandbox)
    options = config.linux.security_context.namespace_options
    if options.HasField("userns_options") and _user_namespace(options) != pod:
        raise InvalidArgument("a container's user namespace must be its pod's")
    if pod is not None and options.pid == pb.NODE:
        raise InvalidArgument("a user namespace cannot be used with the host's PID namespace")
    return pod


def needs_infra(config: pb.PodSandboxConfig) -> bool:
    """Whether the pod runs an infra process: only to be PID 1 of a shared PID namespace.

    A PID namespace cannot be pinned (it dies with its PID 1), so ``pid=POD``
    (and anything but ``CONTAINER`` and ``NODE``) keeps one.
    """
    return config.linux.security_context.namespace_options.pid not in (pb.CONTAINER, pb.NODE)


#: Sysctls of the IPC namespace (as runc's list), and of the UTS namespace.
_IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")
_UTS_SYSCTLS = ("kernel.hostname", "kernel.domainname")


def pod_sysctls(config: pb.PodSandboxConfig) -> tuple[dict[str, str], dict[str, str]]:
    """The pod's sysctls split by where they are written: (IPC and UTS ones, ``net.*`` ones).

    Raises:
        InvalidArgument: A malformed key, one of no namespace the pod owns
            (``net.*`` with host networking, IPC ones with host IPC), or one
            not namespaced at all.
    """
    modes = config.linux.security_context.namespace_options
    host_net, host_ipc = modes.network == pb.NODE, modes.ipc == pb.NODE
    own: dict[str, str] = {}
    net: dict[str, str] = {}
    for key, value in config.linux.sysctls.items():
        if not key or any(not part for part in key.replace("/", ".").split(".")):
            raise InvalidArgument(f"sysctl {key!r} is not a sysctl name")
        name = key.replace("/", ".")
        if name.startswith("net."):
            if host_net:
                raise InvalidArgument(f"sysctl {key!r} is not allowed with host networking")
            net[key] = value
        elif name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
            if host_ipc:
                raise InvalidArgument(f"sysctl {key!r} is not allowed with host IPC")
            own[key] = value
        elif name in _UTS_SYSCTLS:
            if host_net:
                raise InvalidArgument(f"sysctl {key!r} is not allowed with host networking")
            own[key] = value
        else:
            raise InvalidArgument(f"sysctl {key!r} is not in a namespace of the pod")
    return own, net


def pod_hostname(config: pb.PodSandboxConfig) -> str:
    """The pod's hostname: the config's, else the node's, as containerd's CRI does.

    A host-network pod shares the host's UTS namespace, so it has the node's name
    whatever the config says.
    """
    if config.linux.security_context.namespace_options.network == pb.NODE:
        return os.uname().nodename
    return config.hostname or os.uname().nodename


def _namespaces(spec: dict[str, Any]) -> list[dict[str, Any]]:
    namespaces: list[dict[str, Any]] = spec["linux"]["namespaces"]
    return namespaces


def _set_namespace(spec: dict[str, Any], type_: str, path: str | None, present: bool) -> None:
    """Leave ``type_`` out (``present`` false), make it new (``path`` None), or join ``path``."""
    kept = [n for n in _namespaces(spec) if n["type"] != type_]
    if present:
        entry: dict[str, Any] = {"type": type_}
        if path:
            entry["path"] = path
        kept.append(entry)
    spec["linux"]["namespaces"] = kept


def _set_cgroup(spec: dict[str, Any], cgroups_path: str, pod: pb.PodSandboxConfig) -> None:
    spec["linux"]["cgroupsPath"] = cgroups_path
    if pod.linux.cgroup_parent:
        # The kubelet's pod cgroup: it makes and removes it, even when it is empty.
        spec.setdefault("annotations", {})[KEEP_CGROUP_PARENTS_ANNOTATION] = "true"


def _join_user_namespace(spec: dict[str, Any], userns: UserNamespace, path: str) -> None:
    """Join the pod's user namespace ``path``; the runtime idmaps the root filesystem for it."""
    _set_namespace(spec, "user", path, True)
    # runc wants the mappings of a user namespace it joins too.
    spec["linux"].update(userns.spec_mappings())
    spec.setdefault("annotations", {})[IDMAP_ROOTFS_ANNOTATION] = "true"


def sandbox_spec(namespace: str, sandbox_id: str, config: pb.PodSandboxConfig, *,
                 rootfs: Path, netns: str | None, cgroups_path: str,
                 pinned: PodNamespaces | None = None) -> dict[str, Any]:
    """The infra container: PID 1 of the pod, holding its namespaces.

    ``netns`` is the pod's network namespace, ``None`` for host networking;
    ``cgroups_path`` its cgroup (under the pod's cgroup parent). ``pinned``:
    the pod's user, IPC and UTS namespaces, pinned (a pod with a user
    namespace), which the infra process joins; its hostname and sysctls are
    set there already.
    """
    sec = config.linux.security_context
    modes = sec.namespace_options
    host_net = modes.network == pb.NODE
    spec = generate_spec(namespace, sandbox_id, ImageConfig(entrypoint=[INFRA_BINARY, "-P"]),
                         SpecOptions(hostname=pod_hostname(config)))
    _set_cgroup(spec, cgroups_path, config)
    spec["root"] = {"path": str(rootfs), "readonly": True}
    _set_namespace(spec, "network", netns, not host_net)
    _set_namespace(spec, "uts", None, not host_net)
    if host_net:
        spec.pop("hostname", None)
    _set_namespace(spec, "pid", None, modes.pid != pb.NODE)
    _set_namespace(spec, "ipc", None, modes.ipc != pb.NODE)
    own, net = pod_sysctls(config)
    userns = pod_user_namespace(config)
    if pinned is not None and userns is not None:
        _set_namespace(spec, "uts", pinned.uts, True)
        _set_namespace(spec, "ipc", pinned.ipc, True)
        _join_user_namespace(spec, userns, pinned.user)
        spec.pop("hostname", None)
        own = {}  # written where the namespaces were made; net.* too, after CNI ADD
        net = {}
    if own or net:
        spec["linux"].setdefault("sysctl", {}).update({**own, **net})
    process = spec["process"]
    # The infra process needs nothing: no capabilities, no new privileges.
    process["capabilities"] = {"bounding": [], "permitted": [], "effective": []}
    process["noNewPrivileges"] = True
    # The pod's own seccomp choice, as containerd gives its sandbox container: none
    # asked for is unconfined (runc compiling the default filter for every pod's
    # catatonit was a tenth of the CPU a pod took to start).
    _apply_seccomp(spec, sec)
    if sec.HasField("run_as_user"):
        process["user"] = {"uid": sec.run_as_user.value,
                           "gid": sec.run_as_group.value if sec.HasField("run_as_group") else 0}
    if sec.privileged:
        spec["linux"].pop("maskedPaths", None)
        spec["linux"].pop("readonlyPaths", None)
    return spec


def parse_capability(name: str) -> str:
    """``NET_ADMIN``, ``net_admin`` or ``CAP_NET_ADMIN`` as ``CAP_NET_ADMIN``."""
    upper = name.strip().upper()
    if not upper or not upper.replace("_", "").isalnum():
        raise InvalidArgument(f"capability {name!r} is not a capability name")
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


def _capabilities(current: list[str], cap: pb.Capability) -> list[str]:
    adds = [c.upper() for c in cap.add_capabilities]
    drops = [c.upper() for c in cap.drop_capabilities]
    caps = list(current)
    if "ALL" in drops:
        caps = []
    else:
        dropped = {parse_capability(c) for c in drops}
        caps = [c for c in caps if c not in dropped]
    if "ALL" in adds:
        caps = privileged_capabilities()
    else:
        for name in adds:
            full = parse_capability(name)
            if full not in caps:
                caps.append(full)
    if "ALL" in adds and drops and "ALL" not in drops:
        dropped = {parse_capability(c) for c in drops}
        caps = [c for c in caps if c not in dropped]
    return caps


def _propagation(mount: pb.Mount) -> str:
    if mount.propagation == pb.PROPAGATION_BIDIRECTIONAL:
        return "rshared"
    if mount.propagation == pb.PROPAGATION_HOST_TO_CONTAINER:
        return "rslave"
    return "rprivate"


def validate_mount(mount: pb.Mount, *, recursive_read_only: bool) -> None:
    """Refuse a mount the CRI forbids, before anything is made for the container.

    ``recursive_read_only``: whether the pod's runtime handler can make one
    (what ``Status`` advertises for it).

    Raises:
        InvalidArgument: A relative destination; an image volume with a host
            path or not read-only; a recursive read-only mount that is not
            read-only, not private, or that the runtime cannot make (as
            containerd refuses them).
    """
    if not mount.container_path.startswith("/"):
        raise InvalidArgument(f"mount destination {mount.container_path!r} must be absolute")
    if mount.image.image:
        if mount.host_path:
            raise InvalidArgument(f"image volume {mount.container_path!r} must not have a "
                                  f"host path (got {mount.host_path!r})")
        if not mount.readonly:
            raise InvalidArgument(f"image volume {mount.container_path!r} must be read-only")
    elif mount.image_sub_path:
        raise InvalidArgument(f"mount {mount.container_path!r}: image_sub_path needs an image")
    if not mount.recursive_read_only:
        return
    if not mount.readonly:
        raise InvalidArgument(f"recursive read-only mount {mount.container_path!r} "
                              "conflicts with a read-write mount (readonly is false)")
    if mount.propagation != pb.PROPAGATION_PRIVATE:
        raise InvalidArgument(f"recursive read-only mount {mount.container_path!r} needs "
                              f"private propagation, got "
                              f"{pb.MountPropagation.Name(mount.propagation)}")
    if not recursive_read_only:
        raise InvalidArgument(f"recursive read-only mount {mount.container_path!r}: the "
                              "runtime handler does not support recursive read-only mounts")


def _user_mount(mount: pb.Mount, image_source: str | None) -> dict[str, Any]:
    """The OCI mount of a CRI mount (validated by :func:`validate_mount`).

    ``image_source``: for an image volume, where its view is mounted on the host.
    """
    if image_source is not None:
        resolved = image_source
    else:
        if not mount.host_path.startswith("/"):
            raise InvalidArgument(f"mount source {mount.host_path!r} must be an absolute "
                                  "host path")
        source = Path(mount.host_path)
        if not source.exists() and not source.is_symlink():
            # As containerd and the kubelet's hostPath DirectoryOrCreate: make it.
            source.mkdir(parents=True, exist_ok=True)
        # A symlinked host path is bound at its target (runc would refuse the link).
        resolved = os.path.realpath(source)
    # ``rro``: the runtime makes every submount read-only too (mount_setattr(2) with
    # AT_RECURSIVE); plain ``ro`` only remounts the top one.
    mode = "rro" if mount.recursive_read_only else "ro" if mount.readonly else "rw"
    options = ["rbind", _propagation(mount), mode]
    return {"destination": mount.container_path, "type": "bind", "source": resolved,
            "options": options}


def container_spec(
    namespace: str,
    container_id: str,
    config: pb.ContainerConfig,
    sandbox: pb.PodSandboxConfig,
    image: ImageConfig,
    *,
    namespaces: PodNamespaces,
    target_pid: int | None,
    files: SandboxFiles,
    log_path: str,
    cgroups_path: str,
    min_oom_score_adj: int,
    image_volumes: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """A container's spec: the image, then the CRI config, joined to the sandbox's namespaces.

    ``image_volumes`` maps the index in ``config.mounts`` of each image volume
    to the host directory its view is mounted on (image_sub_path applied).

    Raises:
        InvalidArgument: A malformed field, or a combination the CRI refuses
            (privileged container in an unprivileged sandbox, a group without a user).
    """
    linux = config.linux
    sec = linux.security_context
    sandbox_sec = sandbox.linux.security_context
    if sec.privileged and not sandbox_sec.privileged:
        raise InvalidArgument("a privileged container needs a privileged sandbox")
    user = ""
    if sec.run_as_username:
        user = sec.run_as_username
    elif sec.HasField("run_as_user"):
        user = str(sec.run_as_user.value)
    if sec.HasField("run_as_group"):
        if not user:
            raise InvalidArgument("run_as_group needs run_as_user or run_as_username")
        user += f":{sec.run_as_group.value}"
    elif not user and image.user:
        user = image.user
    options = SpecOptions(
        entrypoint=list(config.command) if config.command else None,
        args=list(config.args) if config.args else None,
        # KeyValue.value is bytes in this proto (the same wire type as string).
        env=[f"{kv.key}={kv.value.decode(errors='replace')}" for kv in config.envs],
        cwd=config.working_dir,
        user=user,
        readonly_rootfs=sec.readonly_rootfs,
        privileged=sec.privileged,
        terminal=config.tty,
        annotations={LOG_PATH_ANNOTATION: log_path} if log_path else {},
    )
    spec = generate_spec(namespace, container_id, image, options)
    _set_cgroup(spec, cgroups_path, sandbox)
    process = spec["process"]
    modes = sec.namespace_options
    _set_namespace(spec, "network", namespaces.network, bool(namespaces.network))
    _set_namespace(spec, "uts", namespaces.uts, bool(namespaces.uts))
    _set_namespace(spec, "ipc", namespaces.ipc, bool(namespaces.ipc))
    if modes.pid == pb.NODE:
        _set_namespace(spec, "pid", None, False)
    elif modes.pid == pb.CONTAINER or (modes.pid == pb.POD and namespaces.pid is None):
        _set_namespace(spec, "pid", None, True)
    elif modes.pid == pb.TARGET:
        if target_pid is None:
            raise InvalidArgument(f"PID namespace target {modes.target_id!r} is not running")
        _set_namespace(spec, "pid", f"/proc/{target_pid}/ns/pid", True)
    else:
        _set_namespace(spec, "pid", namespaces.pid, bool(namespaces.pid))
    userns = container_user_namespace(config, sandbox)
    if userns is not None:
        _join_user_namespace(spec, userns, namespaces.user)
    # The UTS namespace is the pod's: its hostname is set there, not here.
    spec.pop("hostname", None)
    if not any(e.startswith("HOSTNAME=") for e in process["env"]):
        process["env"].append(f"HOSTNAME={pod_hostname(sandbox)}")
    mounts: list[dict[str, Any]] = spec["mounts"]
    volumes = image_volumes or {}
    user_mounts = sorted((_user_mount(m, volumes.get(i)) for i, m in enumerate(config.mounts)),
                         key=lambda m: len(Path(m["destination"]).parts))
    taken = {m["destination"] for m in user_mounts}
    pod_files: Sequence[tuple[str, Path, bool]] = (
        ("/etc/hostname", files.hostname, True), ("/etc/hosts", files.hosts, True),
        ("/etc/resolv.conf", files.resolv_conf, True), ("/dev/shm", files.shm, False))
    mounts[:] = [m for m in mounts if m["destination"] not in taken
                 and m["destination"] != "/dev/shm"]
    for dest, path, readonly in pod_files:
        if dest in taken:
            continue
        opts = ["rbind", "rprivate", "ro" if readonly and sec.readonly_rootfs else "rw"]
        if dest == "/dev/shm":
            opts += ["nosuid", "nodev", "noexec"]
        mounts.append({"destination": dest, "type": "bind", "source": str(path),
                       "options": opts})
    mounts.extend(user_mounts)
    if any("rshared" in m["options"] for m in user_mounts):
        spec["linux"]["rootfsPropagation"] = "rshared"
    elif any("rslave" in m["options"] for m in user_mounts):
        spec["linux"]["rootfsPropagation"] = "rslave"
    for device in config.devices:
        _add_device(spec, device)
    if not sec.privileged:
        caps = _capabilities(process["capabilities"]["bounding"], sec.capabilities)
        process["capabilities"] = {"bounding": caps, "permitted": list(caps),
                                   "effective": list(caps)}
        # Empty lists from the kubelet mean "the runtime's defaults".
        if sec.masked_paths:
            spec["linux"]["maskedPaths"] = list(sec.masked_paths)
        if sec.readonly_paths:
            spec["linux"]["readonlyPaths"] = list(sec.readonly_paths)
    process["noNewPrivileges"] = sec.no_new_privs
    if sec.supplemental_groups:
        process["user"]["additionalGids"] = [int(g) for g in sec.supplemental_groups]
    # Strict: the image's /etc/group memberships are left out (the runtime resolves
    # them at task create); the kubelet sets the pod's policy on each container too.
    if pb.Strict in (sec.supplemental_groups_policy, sandbox_sec.supplemental_groups_policy):
        spec.setdefault("annotations", {})[GROUPS_POLICY_ANNOTATION] = "strict"
    _apply_seccomp(spec, sec)
    _apply_resources(spec, linux.resources, min_oom_score_adj)
    if config.stop_signal:
        spec.setdefault("annotations", {})["io.moorage.stop-signal"] = \
            _signal_names()[config.stop_signal]
    return spec


def _add_device(spec: dict[str, Any], device: pb.Device) -> None:
    host = Path(device.host_path)
    try:
        st = host.stat()
    except OSError as exc:
        raise InvalidArgument(f"device {device.host_path!r}: {exc.strerror}") from None
    import stat

    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise InvalidArgument(f"{device.host_path!r} is not a device")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    spec["linux"].setdefault("devices", []).append({
        "path": device.container_path or device.host_path, "type": kind, "major": major,
        "minor": minor, "fileMode": st.st_mode & 0o777, "uid": 0, "gid": 0})
    spec["linux"]["resources"]["devices"].append({
        "allow": True, "type": kind, "major": major, "minor": minor,
        "access": device.permissions or "rwm"})


def _apply_seccomp(spec: dict[str, Any], sec: pb.LinuxContainerSecurityContext
                   | pb.LinuxSandboxSecurityContext) -> None:
    """The CRI's seccomp choice, over the daemon's default profile (:mod:`runtime.pkg.seccomp`).

    No profile at all means unconfined, as in containerd and critest's "nil"
    case; ``{}`` (RuntimeDefault) the default profile; Localhost a profile
    file on the host. A privileged container runs unconfined whatever it asks.
    """
    caps = spec["process"]["capabilities"]["bounding"]
    kind, ref = "", ""
    if sec.HasField("seccomp"):
        profile = sec.seccomp
        kind = {profile.RuntimeDefault: "runtime/default", profile.Unconfined: UNCONFINED,
                profile.Localhost: "localhost"}[profile.profile_type]
        ref = profile.localhost_ref
    elif sec.seccomp_profile_path:
        path = sec.seccomp_profile_path
        kind = "localhost" if path.startswith("localhost/") else path
        ref = path.removeprefix("localhost/")
    if sec.privileged or kind in ("", UNCONFINED):
        spec["linux"].pop("seccomp", None)
    elif kind in ("runtime/default", "docker/default"):
        spec["linux"]["seccomp"] = default_profile(caps)
    elif kind == "localhost":
        if not ref.startswith("/"):
            raise InvalidArgument(f"seccomp localhost profile {ref!r} must be an absolute path")
        try:
            text = Path(ref).read_text()
        except OSError as exc:
            raise InvalidArgument(f"seccomp profile {ref}: {exc.strerror}") from None
        spec["linux"]["seccomp"] = parse_profile(text, caps, where=f"seccomp profile {ref}")
    else:
        raise InvalidArgument(f"seccomp profile {kind!r}: use runtime/default, unconfined "
                              "or localhost/<path>")


def _apply_resources(spec: dict[str, Any], res: pb.LinuxContainerResources,
                     min_oom_score_adj: int) -> None:
    resources = spec["linux"]["resources"]
    cpu: dict[str, Any] = {}
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period:
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        resources["cpu"] = cpu
    if res.memory_limit_in_bytes:
        resources["memory"] = {"limit": res.memory_limit_in_bytes}
        if res.memory_swap_limit_in_bytes:
            resources["memory"]["swap"] = res.memory_swap_limit_in_bytes
    if res.hugepage_limits:
        resources["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit}
                                       for h in res.hugepage_limits]
    if res.unified:
        resources["unified"] = dict(res.unified)
    if res.oom_score_adj:
        # This host refuses a value below the daemon's own (see docs/cri.md).
        spec["process"]["oomScoreAdj"] = max(int(res.oom_score_adj), min_oom_score_adj)


def linux_resources(res: pb.LinuxContainerResources) -> dict[str, Any]:
    """OCI ``linux.resources`` (partial) for UpdateContainerResources."""
    spec: dict[str, Any] = {"linux": {"resources": {}}, "process": {}}
    _apply_resources(spec, res, -1000)
    resources: dict[str, Any] = spec["linux"]["resources"]
    return resources
