"""``CniNetwork``: the service of ``network.cni``; attachments made and undone with CNI plugins.

An attachment is a network namespace pinned under the plugin's state
directory plus what the network's plugins set up in it. Its record (a JSON
file under the plugin's root) is written *before* anything is created and
removed only once everything is undone, so after a crash at any point the
record names what may have to be cleaned: :meth:`CniNetwork.cleanup_stale`
runs DEL for it (CNI plugins must accept a DEL for something half made or
already gone) and removes the namespace.

Per the CNI specification, each plugin of a list gets the previous plugin's
result as ``prevResult`` on ADD; DEL runs the list in reverse with the final
ADD result (version 0.4.0 and later). The loopback interface is brought up
as the namespace is made (:func:`.netns.create`), in-process: the CNI
``loopback`` plugin did the same with a process for ADD and one for DEL.

Tasks in ``none`` or ``host`` mode are never attached (see
:mod:`runtime.plugins.network.api`); their delete still calls
:meth:`CniNetwork.detach`, which answers from memory, without a lock or a
disk access, once the records were scanned at startup.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from runtime.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MoorageError,
    NotFound,
)
from runtime.core.faults import fault_point
from runtime.core.identifiers import validate_identifier, validate_namespace
from runtime.plugins.network.api import (
    BRIDGE,
    HOST,
    NONE,
    Attachment,
    PortMapping,
)
from runtime.plugins.network.cni import netns
from runtime.plugins.network.cni.conflist import (
    ConfList,
    find_conflist,
    first_conflist,
    list_conflists,
)
from runtime.plugins.network.cni.invoke import CniPluginError, Invocation, invoke, version_tuple
from runtime.plugins.network.cni.records import AttachmentRecord, attachment_of, write_durably

__all__ = ["CniNetwork"]

log = logging.getLogger("moorage.network.cni")

IFNAME = "eth0"
#: DEL receives the cached ADD result from this version on.
_DEL_PREV_RESULT = (0, 4, 0)


class CniNetwork:
    """Attachments of containers to CNI networks (implements ``network.api.Network``).

    Args:
        conf_dir: Where the networks' configuration lists are.
        bin_dirs: Where the CNI plugin binaries are, in search order.
        default_network: The network ``bridge`` stands for.
        records_dir: Attachment records (persistent).
        netns_dir: Pinned network namespaces (volatile).
        timeout: Seconds each plugin run may take.
        ipam_dir: host-local's address store, for the networks ``network create`` makes.
        firewall: Whether those networks get the ``firewall`` plugin.
    """

    def __init__(self, *, conf_dir: Path, bin_dirs: Sequence[Path], default_network: str,
                 records_dir: Path, netns_dir: Path, timeout: float = 30.0,
                 ipam_dir: Path | None = None, firewall: bool = False) -> None:
        self.conf_dir = conf_dir
        self.ipam_dir = ipam_dir or records_dir.parent / "ipam"
        self.firewall = firewall
        #: Held while a network is created or removed (one at a time).
        self.admin_lock = anyio.Lock()
        self.bin_dirs = list(bin_dirs)
        self.default_network = default_network
        self.records_dir = records_dir
        self.netns_dir = netns_dir
        self.timeout = timeout
        self._locks: dict[tuple[str, str], anyio.Lock] = {}
        # Keys that may have a record on disk: every key attach recorded, plus
        # what scans of records_dir found. Only the event loop's thread changes
        # it, and a scan only adds, so an attachment in flight is never missed.
        self._recorded: set[tuple[str, str]] = set()
        # Once records_dir was scanned (at startup, by live_keys), a key outside
        # _recorded has no record: detach has nothing to read.
        self._scanned = False

    # -- records ----------------------------------------------------------------------

    def _record_path(self, namespace: str, container_id: str) -> Path:
        return self.records_dir / namespace / f"{container_id}.json"

    def _read(self, namespace: str, container_id: str) -> AttachmentRecord | None:
        path = self._record_path(namespace, container_id)
        try:
            return msgspec.json.decode(path.read_bytes(), type=AttachmentRecord)
        except FileNotFoundError:
            return None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # A torn write cannot happen (rename); a hand-edited file can.
            log.warning("attachment record %s is unreadable: %s", path, exc)
            return None

    def _save(self, record: AttachmentRecord, sync: bool = True) -> None:
        write_durably(self._record_path(*record.key), msgspec.json.encode(record), sync=sync)

    def _drop(self, record: AttachmentRecord) -> None:
        self._record_path(*record.key).unlink(missing_ok=True)
        # Fails while other containers of the namespace are still attached.
        with contextlib.suppress(OSError):
            self._record_path(*record.key).parent.rmdir()

    def _records(self) -> list[AttachmentRecord]:
        found: list[AttachmentRecord] = []
        if not self.records_dir.is_dir():
            return found
        for ns_dir in sorted(self.records_dir.iterdir()):
            if not ns_dir.is_dir():
                continue
            for path in sorted(ns_dir.glob("*.json")):
                record = self._read(ns_dir.name, path.stem)
                if record is not None:
                    found.append(record)
        return found

    async def _scan(self) -> list[AttachmentRecord]:
        """Every record on disk; their keys join ``_recorded``."""
        records = await anyio.to_thread.run_sync(self._records)
        self._recorded.update(r.key for r in records)
        self._scanned = True
        return records

    def _lock(self, key: tuple[str, str]) -> anyio.Lock:
        return self._locks.setdefault(key, anyio.Lock())

    # -- the service ------------------------------------------------------------------

    def networks(self) -> list[str]:
        """Names of the networks in ``conf_dir``."""
        return sorted(list_conflists(self.conf_dir))

    def first_network(self, conf_dir: Path) -> str | None:
        """The name of the first usable network configuration in ``conf_dir``, or None.

        Files are read in name order, afresh at each call, and broken ones passed over.
        """
        conf = first_conflist(conf_dir)
        return conf.name if conf is not None else None

    def _resolve(self, network: str, conf_dir: Path | None = None) -> ConfList | None:
        if network == HOST:
            raise InvalidArgument("host networking needs no attachment: the task keeps the "
                                  "host's network namespace")
        if network == NONE:
            return None
        return find_conflist(conf_dir or self.conf_dir,
                             self.default_network if network == BRIDGE else network)

    async def attach(self, namespace: str, container_id: str, network: str = BRIDGE,
                     ports: Sequence[PortMapping] = (),
                     cni_args: Mapping[str, str] | None = None,
                     conf_dir: Path | None = None,
                     netns_ready: Callable[[str], object] | None = None,
                     netns_source: str | None = None, held: bool = False) -> Attachment:
        """Create a network namespace for the container and run the network's ADD in it.

        ``cni_args`` go to every plugin as ``CNI_ARGS`` (``IgnoreUnknown=1``
        lets plugins accept keys they do not know). ``conf_dir`` looks the
        network up in another directory than the plugin's own (the CRI's
        ``cni_conf_dir``); its DEL reads the configuration kept with the record.
        ``netns_ready(path)`` is called once the namespace is pinned, before
        the first plugin runs (the CRI starts the pod's infra process in it
        meanwhile). ``netns_source`` is a namespace the caller made, pinned
        instead of a new one (:func:`.netns.adopt`). ``held``: the caller
        detaches it itself; no start-up release does once ADD finished.

        Raises:
            AlreadyExists: The container is attached already.
            NotFound: No such network, or a plugin binary is missing.
            InvalidArgument: ``host``, or ports without a network (``none``).
            FailedPrecondition: A plugin failed; everything made is undone.
        """
        validate_namespace(namespace)
        validate_identifier(container_id, "container id")
        conf = await anyio.to_thread.run_sync(self._resolve, network, conf_dir)
        if conf is None and ports:
            raise InvalidArgument("ports cannot be published without a network "
                                  f"(network {network!r} has loopback only)")
        key = (namespace, container_id)
        async with self._lock(key):
            earlier = await anyio.to_thread.run_sync(self._read, namespace, container_id)
            if earlier is not None:
                await self._retire(earlier)
            # '--' cannot occur inside an identifier, so the pair stays unique.
            name = f"{namespace}--{container_id}"
            record = AttachmentRecord(
                namespace=namespace, container_id=container_id,
                network=conf.name if conf else NONE, cni_id=name,
                netns=str(self.netns_dir / name), conflist=conf.to_json() if conf else None,
                ports=list(ports), created_at=datetime.now(UTC),
                cni_args=dict(cni_args or {}), held=held,
            )  # fmt: skip
            # Recorded before anything exists: a crash from here on leaves a record to clean.
            self._recorded.add(key)
            await anyio.to_thread.run_sync(self._save, record)
            try:
                await self._add(record, conf, netns_ready, netns_source)
                record.state = "added"
                # Not synced: the record above is (a crash of the daemon loses
                # neither); after a power loss, which ends the namespace and the
                # processes in it, the synced one still leads cleanup to the DEL.
                await anyio.to_thread.run_sync(self._save, record, False)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await self._undo(record, log_errors=True)
                if isinstance(exc, OSError):
                    raise FailedPrecondition(
                        f"cannot create the network namespace of {container_id!r}: {exc}"
                    ) from exc
                raise
        log.info("container %s attached to %s: %s", container_id, record.network,
                 ", ".join(ip.address for ip in attachment_of(record).ips) or "loopback only",
                 extra={"namespace": namespace})
        return attachment_of(record)

    async def _retire(self, earlier: AttachmentRecord) -> None:
        """Finish an earlier attachment's teardown that failed, if nothing uses it."""
        used = await anyio.to_thread.run_sync(netns.in_use, [Path(earlier.netns)])
        if used:
            raise AlreadyExists(f"container {earlier.container_id!r} is already attached")
        errors = await self._undo(earlier, log_errors=False)
        if errors:
            raise FailedPrecondition(
                f"the earlier network of {earlier.container_id!r} cannot be torn down: "
                f"{'; '.join(e.message for e in errors)}"
            )

    async def _add(self, record: AttachmentRecord, conf: ConfList | None,
                   netns_ready: Callable[[str], object] | None = None,
                   netns_source: str | None = None) -> None:
        path = Path(record.netns)
        # With lo up already: no loopback plugin to run.
        await anyio.to_thread.run_sync(self._create_netns, path, netns_source)
        # Crash tests: a pinned namespace, no plugin has run in it.
        fault_point("network.attach.after-netns")
        if netns_ready is not None:
            netns_ready(record.netns)
        if conf is None:
            return
        call = self._call(record, IFNAME)
        prev: dict[str, Any] | None = None
        for plugin in conf.plugins:
            config = _plugin_config(conf, plugin, prev, record.ports)
            prev = await invoke("ADD", config, call) or prev
            # In memory: the DEL undoing a later plugin's failure gets it.
            record.result = prev
            # Crash tests: this plugin's ADD is done (network.attach.after-bridge,
            # -after-portmap, ...), the record on disk holds no result yet.
            fault_point(f"network.attach.after-{plugin.get('type')}")

    def _create_netns(self, path: Path, source: str | None = None) -> None:
        if path.exists():
            # A pinned leftover of this very name (a crash mid-detach): replace it.
            netns.remove(path)
        if source is None:
            netns.create(path)
        else:
            netns.adopt(source, path)

    def _call(self, record: AttachmentRecord, ifname: str) -> Invocation:
        return Invocation(container_id=record.cni_id, netns=record.netns, ifname=ifname,
                          bin_dirs=self.bin_dirs, timeout=self.timeout,
                          args=";".join(f"{k}={v}" for k, v in record.cni_args.items()))

    async def detach(self, namespace: str, container_id: str) -> None:
        """Run the network's DEL in reverse and remove the namespace; idempotent.

        Raises:
            FailedPrecondition: A plugin's DEL failed. The namespace is removed
                anyway; the record stays, so that DEL is tried again at the next
                start (releasing the address).
        """
        validate_namespace(namespace)
        validate_identifier(container_id, "container id")
        key = (namespace, container_id)
        if self._scanned and key not in self._recorded:
            # Never attached (none, host), or detached already: the common case
            # for every task's delete, answered without a thread hop or a lock.
            return
        async with self._lock(key):
            record = await anyio.to_thread.run_sync(self._read, namespace, container_id)
            if record is None:
                self._recorded.discard(key)
                return
            errors = await self._undo(record, log_errors=False)
        if errors:
            raise FailedPrecondition(
                f"network teardown of {container_id!r} incomplete (retried at the next "
                f"start): {'; '.join(e.message for e in errors)}"
            )
        log.info("container %s detached from %s", container_id, record.network,
                 extra={"namespace": namespace})

    async def _undo(self, record: AttachmentRecord, *, log_errors: bool) -> list[MoorageError]:
        """DEL everything the record may have made; drop the record if all went."""
        errors: list[MoorageError] = []
        conf = (ConfList.from_json(record.conflist, f"attachment {record.cni_id}")
                if record.conflist else None)
        # Unpinned (removed by hand, or a DEL retried after a failed one): see below.
        netns_gone = conf is not None and not await anyio.to_thread.run_sync(
            os.path.ismount, record.netns)
        if conf is not None:
            call = self._call(record, IFNAME)
            with_result = version_tuple(conf.cni_version) >= _DEL_PREV_RESULT
            cached = record.result if with_result else None
            if with_result and cached is None and not netns_gone:
                cached = await anyio.to_thread.run_sync(
                    _result_from_interface, conf.cni_version, record.netns)
            for plugin in reversed(conf.plugins):
                config = _plugin_config(conf, plugin, cached, record.ports)
                try:
                    await invoke("DEL", config, call)
                except CniPluginError as exc:
                    if not exc.gone:
                        errors.append(exc)
                except MoorageError as exc:
                    errors.append(exc)
            if netns_gone and not errors:
                # Imported here, as it is rarely needed (it brings shlex).
                from runtime.plugins.network.cni.leftover_rules import remove_leftover_rules

                # Without the namespace the bridge plugin cannot find what it masqueraded.
                removed = await anyio.to_thread.run_sync(
                    remove_leftover_rules, conf.name, record.cni_id)
                if removed:
                    log.info("network namespace of %s was gone: removed %d iptables rules "
                             "and chains its DEL left", record.container_id, len(removed),
                             extra={"namespace": record.namespace})
        # lo needs no DEL: it goes with the namespace.
        try:
            await anyio.to_thread.run_sync(netns.remove, Path(record.netns))
        except OSError as exc:
            errors.append(FailedPrecondition(f"cannot remove network namespace "
                                             f"{record.netns}: {exc.strerror or exc}"))
        for error in errors if log_errors else []:
            log.warning("undoing attachment of %s: %s", record.container_id, error.message,
                        extra={"namespace": record.namespace})
        if not errors:
            await anyio.to_thread.run_sync(self._drop, record)
            self._recorded.discard(record.key)
        return errors

    async def get(self, namespace: str, container_id: str) -> Attachment:
        """The container's attachment; NotFound if it has none."""
        validate_namespace(namespace)
        validate_identifier(container_id, "container id")
        record = await anyio.to_thread.run_sync(self._read, namespace, container_id)
        if record is None:
            raise NotFound(f"container {container_id!r} has no network attachment")
        return attachment_of(record)

    async def attachments(self) -> list[Attachment]:
        """Every attachment, sorted by namespace and container id."""
        return [attachment_of(r) for r in await self._scan()]

    async def live_keys(self) -> set[tuple[str, str]]:
        """Attachments some process still runs in: their containers are alive.

        Used at startup, when no container is being created: a namespace
        nobody is in belongs to a container that exited (or was never started
        because the daemon died first).
        """
        records = await self._scan()
        by_path = {Path(r.netns): r.key for r in records}
        used = await anyio.to_thread.run_sync(netns.in_use, list(by_path))
        return {by_path[p] for p in used}

    async def cleanup_stale(self, live: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
        """Detach every attachment not in ``live`` nor held; namespaces without a record go too.

        Failures are logged, not raised: this runs at startup and one broken
        attachment must not stop the daemon.

        Returns:
            The ``(namespace, container id)`` pairs detached.
        """
        records = await self._scan()
        cleaned = await self._release_unused(records, live)
        known = {Path(r.netns).name for r in records}
        await anyio.to_thread.run_sync(self._remove_orphan_netns, known)
        return cleaned

    async def release_at_startup(self) -> list[tuple[str, str]]:
        """:meth:`live_keys` then :meth:`cleanup_stale`, with one worker-thread hop if all is clean.

        What the plugin's init runs, when nothing is being created: the records
        are read, the namespaces some process is in found (one walk of
        ``/proc`` for the records' namespaces and the unrecorded ones) and the
        unused unrecorded namespaces removed in one hop; only stale records
        (DEL to run) take more. Each hop waited for the interpreter lock while
        the other plugins started (four of them, most of this init's time).

        Returns:
            The ``(namespace, container id)`` pairs detached.
        """
        records, live = await anyio.to_thread.run_sync(self._startup_scan)
        self._recorded.update(r.key for r in records)
        self._scanned = True
        return await self._release_unused(records, live)

    async def _release_unused(self, records: list[AttachmentRecord],
                              live: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
        """DEL of every record neither in ``live`` nor kept by its caller; failures logged."""
        cleaned: list[tuple[str, str]] = []
        for record in records:
            if record.key in live or _kept_by_its_caller(record):
                continue
            log.info("container %s no longer runs; releasing its network %s", record.container_id,
                     record.network, extra={"namespace": record.namespace})
            try:
                await self.detach(*record.key)
                cleaned.append(record.key)
            except MoorageError as exc:
                log.warning("%s", exc.message, extra={"namespace": record.namespace})
        return cleaned

    def _startup_scan(self) -> tuple[list[AttachmentRecord], set[tuple[str, str]]]:
        """The records and the keys of those in use; unused unrecorded namespaces removed."""
        records = self._records()
        by_path = {Path(r.netns): r.key for r in records}
        known = {path.name for path in by_path}
        orphans = ([p for p in self.netns_dir.iterdir() if p.name not in known]
                   if self.netns_dir.is_dir() else [])
        used = netns.in_use([*by_path, *orphans])
        for path in orphans:
            if path not in used:
                netns.remove(path)
        return records, {by_path[p] for p in used if p in by_path}

    def _remove_orphan_netns(self, known: set[str]) -> None:
        if not self.netns_dir.is_dir():
            return
        orphans = [p for p in self.netns_dir.iterdir() if p.name not in known]
        used = netns.in_use(orphans)
        for path in orphans:
            if path not in used:
                netns.remove(path)


def _kept_by_its_caller(record: AttachmentRecord) -> bool:
    """A held attachment whose ADD finished: only its caller detaches it.

    One still ``adding`` is a crash's in the middle of ADD, which the caller
    never got an answer for: released like any other.
    """
    return record.held and record.state == "added"


def _result_from_interface(cni_version: str, netns_path: str) -> dict[str, Any] | None:
    """An ADD result rebuilt from the container's interface, when none was recorded.

    The daemon died during ADD, before it recorded the result: plugins that find
    what to undo by address in ``prevResult`` (``firewall``) would undo nothing.
    The interface is still in the pinned namespace, with its addresses.
    """
    found = netns.addresses(Path(netns_path), IFNAME)
    if not found:
        return None
    ips: list[dict[str, Any]] = [{"address": address, "interface": 0} for address in found]
    if version_tuple(cni_version) < (1, 0, 0):
        for ip in ips:
            ip["version"] = "6" if ":" in ip["address"] else "4"
    return {"cniVersion": cni_version, "interfaces": [{"name": IFNAME, "sandbox": netns_path}],
            "ips": ips}


def _plugin_config(conf: ConfList, plugin: dict[str, Any], prev: dict[str, Any] | None,
                   ports: Sequence[PortMapping]) -> dict[str, Any]:
    """One plugin's stdin: its own keys, the list's name and version, prevResult, runtimeConfig."""
    config = dict(plugin)
    config["cniVersion"] = conf.cni_version
    config["name"] = conf.name
    if prev is not None:
        config["prevResult"] = prev
    capabilities = plugin.get("capabilities") or {}
    runtime_config: dict[str, Any] = {}
    # Only the capabilities a plugin declares are passed to it (CNI conventions).
    if capabilities.get("portMappings") and ports:
        runtime_config["portMappings"] = [
            {"hostPort": p.host_port, "containerPort": p.container_port,
             "protocol": p.protocol, **({"hostIP": p.host_ip} if p.host_ip else {})}
            for p in ports
        ]
    if runtime_config:
        config["runtimeConfig"] = runtime_config
    return config
