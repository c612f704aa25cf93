"""kill -9 of the daemon in the middle of RunPodSandbox and CreateContainer.

Each case arms one fault point, sends the request (the daemon dies in it by
SIGKILL), restarts the daemon and checks, before any cleanup call:

* nothing is left that no listed pod or container owns: no network namespace
  under ``network.cni``'s netns dir, no veth on the pod bridge, no address in
  the CNI IPAM dir, no iptables rule or chain of the daemon's network (ipMasq's
  ``CNI-<hash>``, portmap's ``CNI-DN-<hash>`` and its ``CNI-HOSTPORT-*`` jumps, the
  firewall's ``CNI-FORWARD`` rules), no mount under the daemon's root or state, no
  cgroup under ``<cgroup parent>/k8s.io`` or the pods' own cgroup parents
  (``.../kubepods/pod<case>``);
* the half-made pod or container is gone, or listed in a state the kubelet can
  stop and remove, and StopPodSandbox + RemovePodSandbox then leave exactly
  what was there before the request;
* the request, repeated with the same metadata, succeeds (its name was released);
  a pod with a host port gets it again: the port answers on 127.0.0.1 from the new pod.

A running pod (the sentinel) must keep running, with the same pid, through every
crash. The cases share one daemon root (:class:`~tests.reliability.crash.CrashRig`),
so each one also starts on what the earlier crashes left.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from runtime.core.errors import MoorageError
from tests.cri.conftest import CRI_NAMESPACE, CriClient, cri_config, wait_for_socket
from tests.fixtures.daemon import CGROUP_ROOT
from tests.fixtures.network import http_get, iptables_leftovers
from tests.fixtures.system import require_binary, require_root
from tests.reliability.crash import Case, CrashRig, Ctx, Scenario, cases
from tests.reliability.store_check import mounts_under

pytestmark = pytest.mark.root

#: No background collection, no metrics: only the request under test passes fault points.
CONFIG = """
disabled_plugins = ["metrics.prometheus", "api.metrics", "runtime.crun"]

[plugins."gc.scheduler"]
startup_delay = "0"
mutation_threshold = 0
deletion_threshold = 1000000
pause_threshold = 0.0001

[plugins."runtime.runc"]
exit_publish_grace = 0.5

""" + cri_config()

SANDBOX_POINTS = (
    "cri.sandbox.after-record",
    "network.attach.after-netns",
    "cri.sandbox.after-cni-add",
    "cri.sandbox.after-files",
    "task.create.before-runtime",
    "task.create.after-runtime",
    "cri.sandbox.after-infra-create",
    "task.start.after-runtime",
    "cri.sandbox.after-infra-start",
)
#: RunPodSandbox of a pod without infra (PID namespace not shared: its IPC and UTS
#: namespaces are pinned by bind mounts, no task).
NO_INFRA_POINTS = (
    "cri.sandbox.after-record",
    "network.attach.after-netns",
    "cri.sandbox.after-cni-add",
    "cri.sandbox.after-files",
    "cri.sandbox.after-pins",
    "cri.sandbox.after-ready",
)
#: RunPodSandbox of a pod with a user namespace (made with its network, IPC and UTS
#: namespaces by a process, pinned; network.cni adopts the netns), with infra and
#: without, and a container created in such a pod (its rootfs idmapped by runtime.runc).
USERNS_POINTS = (
    "cri.sandbox.after-record",
    "cri.sandbox.after-userns",
    "network.attach.after-netns",
    "cri.sandbox.after-cni-add",
    "cri.sandbox.after-files",
    "task.create.before-runtime",
    "cri.sandbox.after-infra-create",
    "cri.sandbox.after-infra-start",
)
USERNS_NO_INFRA_POINTS = (
    "cri.sandbox.after-userns",
    "network.attach.after-netns",
    "cri.sandbox.after-cni-add",
    "cri.sandbox.after-ready",
)
USERNS_CONTAINER_POINTS = (
    "cri.container.after-snapshot",
    "task.create.before-runtime",
    "task.create.after-runtime",
    "cri.container.after-task",
)
#: RunPodSandbox of a pod with a host port, killed around CNI ADD: before any plugin,
#: after each plugin of the default network (bridge, portmap, firewall) with no result
#: recorded yet, after ADD, and once the pod runs with its port published.
PORT_POINTS = (
    "network.attach.after-netns",
    "network.attach.after-bridge",
    "network.attach.after-portmap",
    "network.attach.after-firewall",
    "cri.sandbox.after-cni-add",
    "cri.sandbox.after-infra-start",
)
CONTAINER_POINTS = (
    "cri.container.after-record",
    "cri.container.after-snapshot",
    "task.create.before-runtime",
    "task.create.after-runtime",
    "cri.container.after-task",
)
#: A container with an image volume: its view is mounted on the host during the create.
IMAGE_VOLUME_POINTS = (
    "cri.container.after-snapshot",
    "cri.container.after-image-volumes",
    "task.create.after-runtime",
    "cri.container.after-task",
)
#: The crash pods' cgroup parents are <daemon cgroup parent>/kubepods/pod<case>.
KUBEPODS = "kubepods"
#: What RunPodSandbox passes (CreateContainer passes cri.container.* and task.create.*).
RUN_POD_TOUCHES = ("cri.sandbox", "network.attach", "task.create", "task.start")
CREATE_TOUCHES = ("cri.container", "task.create")
#: The ports scenario's verify runs a pod and a web server in it.
PORTS_VERIFY_TOUCHES = (*RUN_POD_TOUCHES, "cri.container")
#: What the web server of the ports scenario serves: the case's tag.
HTTPD = ["sh", "-c", "mkdir -p /www && echo \"$TAG\" > /www/index.html && "
                     "exec httpd -f -p 80 -h /www"]
#: The longest iptables chain name; the plugins cut ``CNI-[DN-]<sha512 hex>`` to it.
CHAIN_LENGTH = 28


class CriCrashRig(CrashRig):
    """The crash rig, each daemon life serving the CRI before the checks begin.

    The admin API answers before every plugin started; the CRI socket appears only
    once ``cri.v1`` finished its start-up recovery.
    """

    def _start(self, armed: str | None) -> None:
        # A killed daemon leaves its socket file: wait for the new life's, not that one.
        (self.daemon.state / "cri.sock").unlink(missing_ok=True)
        super()._start(armed)
        self.daemon.cri_socket = self.daemon.state / "cri.sock"  # type: ignore[attr-defined]
        wait_for_socket(self.daemon, timeout=60)

    def cri(self) -> CriClient:
        """A CRI client of the current daemon life."""
        return CriClient(self.daemon.state / "cri.sock", self.daemon.tmp_path / "logs")


@dataclass(frozen=True)
class Footprint:
    """What pods leave on the host, as far as this daemon's share of it goes."""

    netns: frozenset[str]
    veths: frozenset[str]
    ips: frozenset[str]
    mounts: frozenset[str]
    cgroups: frozenset[str]
    #: iptables rules and per-pod chains of the daemon's network (``table: rule``).
    rules: frozenset[str]

    def minus(self, other: Footprint) -> dict[str, set[str]]:
        """What this footprint has that ``other`` has not, by kind (empty kinds left out)."""
        diff = {name: set(getattr(self, name)) - set(getattr(other, name))
                for name in ("netns", "veths", "ips", "mounts", "cgroups", "rules")}
        return {k: v for k, v in diff.items() if v}


def footprint(rig: CrashRig) -> Footprint:
    """The daemon's netns files, bridge ports, IPAM addresses, mounts and pod cgroups."""
    daemon = rig.daemon
    netns_dir = daemon.state / "network.cni" / "netns"
    netns = frozenset(p.name for p in netns_dir.iterdir()) if netns_dir.is_dir() else frozenset()
    veths: frozenset[str] = frozenset()
    rules: frozenset[str] = frozenset()
    if daemon.network is not None:
        ports = Path("/sys/class/net", daemon.network.bridge, "brif")
        veths = frozenset(p.name for p in ports.iterdir()) if ports.is_dir() else frozenset()
        # The daemon's own network name and subnet: other daemons' pods are not in it.
        rules = frozenset(iptables_leftovers(daemon.network.name, daemon.network.subnet,
                                             check=True))
    ips = set()
    for path in daemon.root.glob("network.cni/ipam/*/*"):
        with contextlib.suppress(ValueError):
            ips.add(str(ipaddress.ip_address(path.name)))
    inner = f"{daemon.cgroup_parent.strip('/')}/{CRI_NAMESPACE}"
    # The crash pods' own cgroups, under their (kubelet-style) pod cgroup parents.
    pods = f"{daemon.cgroup_parent.strip('/')}/{KUBEPODS}/*"
    cgroups = {d.name for d in CGROUP_ROOT.glob(f"*/{inner}/*") if d.is_dir()}
    cgroups |= {d.name for d in CGROUP_ROOT.glob(f"*/{pods}/*") if d.is_dir()}
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        cgroups |= {d.name for d in (CGROUP_ROOT / inner).glob("*") if d.is_dir()}
        cgroups |= {d.name for d in CGROUP_ROOT.glob(f"{pods}/*") if d.is_dir()}
    return Footprint(netns=netns, veths=veths, ips=frozenset(ips),
                     mounts=frozenset(mounts_under(daemon.root, daemon.state)),
                     cgroups=frozenset(cgroups), rules=rules)


def _owned_by(item: str, ids: set[str]) -> bool:
    return any(id_ in item for id_ in ids)


def _pod_chains(rig: CrashRig, sandbox_id: str) -> set[str]:
    """The per-pod chains the CNI plugins name after the network and the CNI container id."""
    assert rig.daemon.network is not None
    cni_id = f"{CRI_NAMESPACE}--{sandbox_id}"
    digest = hashlib.sha512((rig.daemon.network.name + cni_id).encode()).hexdigest()
    return {(prefix + digest)[:CHAIN_LENGTH] for prefix in ("CNI-", "CNI-DN-")}


def _rule_owned_by(rule: str, sandbox_ids: set[str], ips: set[str], chains: set[str]) -> bool:
    """Whether an iptables rule is one of these pods': it names one, its address or chain."""
    if any(id_ in rule for id_ in sandbox_ids):  # the plugins' comments: id "k8s.io--<id>"
        return True
    words = set(re.split(r"[\s/:\"]+", rule))
    return bool(words & (ips | chains))


def _call_and_die(call: Any) -> None:
    """Make a request the armed daemon dies in (the connection breaks: UNAVAILABLE)."""
    try:
        call()
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise MoorageError(f"failed before the fault point: {exc.code()}: "
                               f"{exc.details()}") from None


def _check_after_restart(ctx: Ctx) -> None:
    """Nothing leaks; leftovers are listed and removable; then exactly the baseline is left."""
    rig = ctx.rig
    assert isinstance(rig, CriCrashRig)
    before: Footprint = ctx.data["footprint"]
    known_pods: set[str] = ctx.data["pods"]
    known_containers: set[str] = ctx.data["containers"]
    cri = rig.cri()
    try:
        pb = cri.pb
        pods = {p.id: p for p in cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items}
        containers = {c.id: c for c in
                      cri.runtime.ListContainers(pb.ListContainersRequest()).containers}
        assert known_pods <= pods.keys(), f"pods that existed before {ctx.point} are gone"
        assert known_containers <= containers.keys(), \
            f"containers that existed before {ctx.point} are gone"
        new_pods = set(pods) - known_pods
        new_containers = set(containers) - known_containers
        assert len(new_pods) <= 1 and len(new_containers) <= 1, (new_pods, new_containers)
        # Whatever the crash left belongs to something the kubelet can list.
        owners = new_pods | new_containers
        pod_ips = {cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(
            pod_sandbox_id=p)).status.network.ip for p in new_pods}
        leaked = footprint(rig).minus(before)
        orphans = {kind: {i for i in items if not _owned_by(i, owners)}
                   for kind, items in leaked.items() if kind not in ("veths", "ips", "rules")}
        orphans["ips"] = set(leaked.get("ips", set())) - pod_ips
        chains = set().union(*(_pod_chains(rig, p) for p in new_pods))
        orphans["rules"] = {r for r in leaked.get("rules", set())
                            if not _rule_owned_by(r, new_pods, pod_ips - {""}, chains)}
        assert not any(orphans.values()), f"leaked after a kill at {ctx.point}: {orphans}"
        assert len(leaked.get("veths", ())) <= len(pod_ips - {""}), \
            f"veths leaked after a kill at {ctx.point}: {leaked['veths']}"
        for id_ in new_containers:
            assert containers[id_].state in (pb.CONTAINER_CREATED, pb.CONTAINER_EXITED,
                                              pb.CONTAINER_RUNNING), containers[id_]
        # What is listed, the kubelet stops and removes; then nothing of it is left.
        for id_ in new_containers:
            cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=id_))
        for id_ in new_pods:
            cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=id_))
            cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=id_))
        assert footprint(rig).minus(before) == {}, f"left after removing, at {ctx.point}"
        assert footprint(rig) == before
    finally:
        cri.close()


def _baseline(ctx: Ctx, cri: CriClient) -> None:
    pb = cri.pb
    ctx.data["pods"] = {p.id for p in cri.runtime.ListPodSandbox(
        pb.ListPodSandboxRequest()).items}
    ctx.data["containers"] = {c.id for c in cri.runtime.ListContainers(
        pb.ListContainersRequest()).containers}
    ctx.data["footprint"] = footprint(ctx.rig)


# -- RunPodSandbox -------------------------------------------------------------------


def _pod_config(cri: CriClient, ctx: Ctx) -> Any:
    config = cri.pod_config(f"crash-{ctx.tag}")
    config.metadata.uid = f"uid-{ctx.tag}"
    # As the kubelet gives it (the sentinel pod has none: both kinds are covered).
    config.linux.cgroup_parent = f"{ctx.rig.daemon.cgroup_parent}/{KUBEPODS}/pod{ctx.tag}"
    return config


def run_pod_trigger(ctx: Ctx) -> None:
    cri = ctx.rig.cri()  # type: ignore[attr-defined]
    try:
        _baseline(ctx, cri)
        config = _pod_config(cri, ctx)
        _call_and_die(lambda: cri.run_pod(config))
    finally:
        cri.close()


def run_pod_verify(ctx: Ctx) -> None:
    _check_after_restart(ctx)
    cri = ctx.rig.cri()  # type: ignore[attr-defined]
    try:
        sandbox_id, _ = cri.run_pod(_pod_config(cri, ctx))  # the same name: released
        cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        cri.runtime.RemovePodSandbox(cri.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        assert footprint(ctx.rig) == ctx.data["footprint"]
    finally:
        cri.close()


# -- RunPodSandbox without infra -----------------------------------------------------


def _no_infra_pod_config(cri: CriClient, ctx: Ctx) -> Any:
    config = _pod_config(cri, ctx)
    config.linux.security_context.namespace_options.pid = cri.pb.CONTAINER
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    return config


def no_infra_trigger(ctx: Ctx) -> None:
    cri = ctx.rig.cri()  # type: ignore[attr-defined]
    try:
        _baseline(ctx, cri)
        config = _no_infra_pod_config(cri, ctx)
        _call_and_die(lambda: cri.run_pod(config))
    finally:
        cri.close()


def no_infra_verify(ctx: Ctx) -> None:
    """No pin mount is left (the footprint's mounts), and the same pod runs again."""
    _check_after_restart(ctx)
    cri = ctx.rig.cri()  # type: ignore[attr-defined]
    try:
        sandbox_id, _ = cri.run_pod(_no_infra_pod_config(cri, ctx))
        cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        cri.runtime.RemovePodSandbox(cri.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        assert footprint(ctx.rig) == ctx.data["footprint"]
    finally:
        cri.close()


# -- RunPodSandbox with a user namespace --------------------------------------------


def _userns_pod_config(cri: CriClient, ctx: Ctx, *, infra: bool) -> Any:
    config = _pod_config(cri, ctx)
    options = config.linux.security_context.namespace_options
    options.pid = cri.pb.POD if infra else cri.pb.CONTAINER
    ids = [cri.pb.IDMapping(container_id=0, host_id=1000, length=100000)]
    options.userns_options.CopyFrom(cri.pb.UserNamespace(mode=cri.pb.POD, uids=ids, gids=ids))
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    return config


def _userns_trigger(infra: bool) -> Any:
    def trigger(ctx: Ctx) -> None:
        cri = ctx.rig.cri()  # type: ignore[attr-defined]
        try:
            _baseline(ctx, cri)
            config = _userns_pod_config(cri, ctx, infra=infra)
            _call_and_die(lambda: cri.run_pod(config))
        finally:
            cri.close()
    return trigger


def _userns_verify(infra: bool) -> Any:
    def verify(ctx: Ctx) -> None:
        """No pin of the user namespace is left, and the same pod runs again."""
        _check_after_restart(ctx)
        cri = ctx.rig.cri()  # type: ignore[attr-defined]
        try:
            sandbox_id, _ = cri.run_pod(_userns_pod_config(cri, ctx, infra=infra))
            cri.runtime.StopPodSandbox(cri.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
            cri.runtime.RemovePodSandbox(
                cri.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
            assert footprint(ctx.rig) == ctx.data["footprint"]
        finally:
            cri.close()
    return verify


def userns_create_setup(ctx: Ctx) -> None:
    cri = ctx.rig.cri()  # type: ignore[attr-defined]
    try:
        cri.pull(ctx.rig.registry)
        # With infra: network.cni releases at start-up a netns no process is in.
        ctx.data["pod"] = cri.run_pod(_userns_pod_config(cri, ctx, infra=True))
    finally:
        cri.close()


# -- RunPodSandbox with a host port -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ports_pod_config(cri: CriClient, ctx: Ctx) -> Any:
    config = _pod_config(cri, ctx)
    config.port_mappings.add(protocol=cri.pb.TCP, container_port=80,
                             host_port=ctx.data["port"])
    return config



def ports_trigger(ctx: Ctx) -> None:
    cri = ctx.rig.cri()  # type: ignore[attr-defined]
    try:
        _baseline(ctx, cri)
        # portmap binds nothing: a port free now is one no pod of any daemon publishes.
        ctx.data["port"] = _free_port()
        config = _ports_pod_config(cri, ctx)
        _call_and_die(lambda: cri.run_pod(config))
    finally:
        cri.close()


def ports_verify(ctx: Ctx) -> None:
    """No rule of the killed pod is left, and its host port reaches the next pod."""
    _check_after_restart(ctx)
    cri = ctx.rig.cri()  # type: ignore[attr-defined]
    pb = cri.pb
    try:
        config = _ports_pod_config(cri, ctx)
        sandbox_id, _ = cri.run_pod(config)  # the same name and port: both released
        container_id = cri.create_container(sandbox_id, config, cri.container_config(
            ctx.rig.registry, HTTPD, name=f"web-{ctx.tag}",
            envs=[pb.KeyValue(key="TAG", value=ctx.tag.encode())]))
        cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
        # A rule of the killed pod left in CNI-HOSTPORT-DNAT would send this elsewhere.
        assert http_get(f"http://127.0.0.1:{ctx.data['port']}/") == f"{ctx.tag}\n"
        cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        assert footprint(ctx.rig) == ctx.data["footprint"]
    finally:
        cri.close()


# -- CreateContainer -----------------------------------------------------------------


def create_setup(ctx: Ctx) -> None:
    cri = ctx.rig.cri()  # type: ignore[attr-defined]
    try:
        cri.pull(ctx.rig.registry)
        ctx.data["pod"] = cri.run_pod(_pod_config(cri, ctx))
    finally:
        cri.close()


def _container_config(cri: CriClient, ctx: Ctx) -> Any:
    return cri.container_config(ctx.rig.registry, name=f"app-{ctx.tag}")


def _die_in_create_container(ctx: Ctx, make_config: Callable[[CriClient, Ctx], Any]) -> None:
    """CreateContainer in the setup's pod, with the daemon killed at ``ctx.point``."""
    cri = ctx.rig.cri()  # type: ignore[attr-defined]
    try:
        _baseline(ctx, cri)
        ctx.data["views"] = _views(ctx.rig)
        sandbox_id, sandbox_config = ctx.data["pod"]
        config = make_config(cri, ctx)
        _call_and_die(lambda: cri.create_container(sandbox_id, sandbox_config, config))
    finally:
        cri.close()


def create_trigger(ctx: Ctx) -> None:
    _die_in_create_container(ctx, _container_config)


def _create_again_and_remove_the_pod(ctx: Ctx, cri: CriClient,
                                     make_config: Callable[[CriClient, Ctx], Any],
                                     check: Callable[[str], None]) -> str:
    """The retried CreateContainer runs (``check`` of its id); the pod's removal leaves none of it.

    Returns the setup pod's id.
    """
    pb = cri.pb
    sandbox_id, sandbox_config = ctx.data["pod"]
    container_id = cri.create_container(sandbox_id, sandbox_config, make_config(cri, ctx))
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))
    check(container_id)
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    # The setup's pod went too: its share of the baseline is gone, nothing else is.
    assert footprint(ctx.rig).minus(ctx.data["footprint"]) == {}
    return str(sandbox_id)


def create_verify(ctx: Ctx) -> None:
    _check_after_restart(ctx)
    cri = ctx.rig.cri()  # type: ignore[attr-defined]
    pb = cri.pb

    def runs(container_id: str) -> None:
        assert cri.exec(container_id, "true").exit_code == 0

    try:
        sandbox_id = _create_again_and_remove_the_pod(ctx, cri, _container_config, runs)
        assert sandbox_id not in {p.id for p in cri.runtime.ListPodSandbox(
            pb.ListPodSandboxRequest()).items}
    finally:
        cri.close()


def _image_volume_config(cri: CriClient, ctx: Ctx) -> Any:
    config = _container_config(cri, ctx)
    config.mounts.add(container_path="/volume", readonly=True, image_sub_path="etc",
                      image=cri.pb.ImageSpec(image=ctx.rig.registry))
    return config


def _views(rig: CrashRig) -> set[str]:
    return {s.name for s in rig.client(CRI_NAMESPACE).snapshots("overlayfs")
            if "image-volume" in s.name}


def image_volume_trigger(ctx: Ctx) -> None:
    _die_in_create_container(ctx, _image_volume_config)


def image_volume_verify(ctx: Ctx) -> None:
    _check_after_restart(ctx)
    # Removing what the crash left removed its view too.
    assert _views(ctx.rig) == ctx.data["views"], f"views left after a kill at {ctx.point}"
    cri = ctx.rig.cri()  # type: ignore[attr-defined]

    def mounts_the_volume(container_id: str) -> None:
        assert cri.exec(container_id, "cat", "/volume/hostname").stdout == b"moorage\n"

    try:
        _create_again_and_remove_the_pod(ctx, cri, _image_volume_config, mounts_the_volume)
        assert _views(ctx.rig) == ctx.data["views"]
    finally:
        cri.close()


SCENARIOS = [
    Scenario("run-pod", SANDBOX_POINTS, run_pod_trigger, run_pod_verify,
             verify_touches=RUN_POD_TOUCHES),
    Scenario("run-pod-no-infra", NO_INFRA_POINTS, no_infra_trigger, no_infra_verify,
             verify_touches=RUN_POD_TOUCHES),
    Scenario("run-pod-userns", USERNS_POINTS, _userns_trigger(True), _userns_verify(True),
             verify_touches=RUN_POD_TOUCHES),
    Scenario("run-pod-userns-no-infra", USERNS_NO_INFRA_POINTS, _userns_trigger(False),
             _userns_verify(False), verify_touches=RUN_POD_TOUCHES),
    Scenario("create-userns-container", USERNS_CONTAINER_POINTS, create_trigger, create_verify,
             setup=userns_create_setup, setup_touches=RUN_POD_TOUCHES,
             verify_touches=(*CREATE_TOUCHES, "task.start")),
    Scenario("run-pod-host-port", PORT_POINTS, ports_trigger, ports_verify,
             verify_touches=PORTS_VERIFY_TOUCHES),
    Scenario("create-container", CONTAINER_POINTS, create_trigger, create_verify,
             setup=create_setup, setup_touches=RUN_POD_TOUCHES,
             verify_touches=(*CREATE_TOUCHES, "task.start")),
    Scenario("create-image-volume", IMAGE_VOLUME_POINTS, image_volume_trigger,
             image_volume_verify, setup=create_setup, setup_touches=RUN_POD_TOUCHES,
             verify_touches=(*CREATE_TOUCHES, "task.start")),
]
CASES = cases(SCENARIOS)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, cri_image: str) -> Iterator[CriCrashRig]:
    """One daemon root for every case, with a running pod that must outlive them all."""
    require_root()
    for binary in ("runc", "conmon", "catatonit"):
        require_binary(binary)
    rig = CriCrashRig(tmp_path_factory.mktemp("cri-crash"), CASES, config=CONFIG)
    rig.registry = cri_image
    try:
        rig.life(None)
        cri = rig.cri()
        try:
            cri.pull(cri_image)
            sandbox_id, sandbox_config = cri.run_pod(cri.pod_config("sentinel"))
            container_id = cri.create_container(
                sandbox_id, sandbox_config, cri.container_config(cri_image, name="sentinel"))
            cri.runtime.StartContainer(cri.pb.StartContainerRequest(container_id=container_id))
        finally:
            cri.close()
        client = rig.client(CRI_NAMESPACE)
        for id_ in (sandbox_id, container_id):
            rig.add_sentinel(CRI_NAMESPACE, id_, client.task(id_).pid)
        yield rig
    finally:
        with contextlib.suppress(Exception):
            rig.life(None)
            cri = rig.cri()
            try:
                cri.remove_everything()
            finally:
                cri.close()
        rig.close()


def test_every_risky_step_has_a_case() -> None:
    """Both requests are killed after each step that makes something on the host."""
    assert {c.point for c in CASES if c.scenario.name == "run-pod"} == set(SANDBOX_POINTS)
    assert {c.point for c in CASES if c.scenario.name == "run-pod-no-infra"} == \
        set(NO_INFRA_POINTS)
    for name, points in (("run-pod-userns", USERNS_POINTS),
                         ("run-pod-userns-no-infra", USERNS_NO_INFRA_POINTS),
                         ("create-userns-container", USERNS_CONTAINER_POINTS)):
        assert {c.point for c in CASES if c.scenario.name == name} == set(points)
    assert {c.point for c in CASES if c.scenario.name == "run-pod-host-port"} == \
        set(PORT_POINTS)
    assert {c.point for c in CASES if c.scenario.name == "create-container"} == \
        set(CONTAINER_POINTS)
    assert {c.point for c in CASES if c.scenario.name == "create-image-volume"} == \
        set(IMAGE_VOLUME_POINTS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_kill_mid_request_leaks_nothing(rig: CriCrashRig, case: Case) -> None:
    """Kill at the point, restart: nothing leaks, leftovers are removable, the retry works."""
    rig.run(case)
