"""Seccomp profiles for containers: the default allow-list and the profiles users give.

The default profile is data (``default.json`` beside this module), in the shape of
Docker's: rules carry ``includes``/``excludes`` conditions on capabilities and
architectures, and :func:`resolve` turns them into the OCI runtime spec's
``linux.seccomp`` object for one container's capability set on this host. It is
read once per process::

    spec["linux"]["seccomp"] = default_profile(spec["process"]["capabilities"]["bounding"])

A user's profile (``--security-opt seccomp=PATH``) may be in either shape: Docker's
(with ``archMap``, ``includes``...) is resolved the same way; an OCI ``linux.seccomp``
object is used as it is.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Collection, Mapping
from importlib import resources
from typing import Any

import msgspec

from runtime.core.errors import InvalidArgument

__all__ = ["UNCONFINED", "default_profile", "host_arches", "parse_profile", "resolve"]

#: What ``--security-opt seccomp=unconfined`` asks for: no filter at all.
UNCONFINED = "unconfined"

# platform.machine() -> (the SCMP_ARCH_* of archMap, the Go-style name of includes.arches).
_MACHINES = {
    "x86_64": ("SCMP_ARCH_X86_64", "amd64"),
    "amd64": ("SCMP_ARCH_X86_64", "amd64"),
    "aarch64": ("SCMP_ARCH_AARCH64", "arm64"),
    "arm64": ("SCMP_ARCH_AARCH64", "arm64"),
    "ppc64le": ("SCMP_ARCH_PPC64LE", "ppc64le"),
    "s390x": ("SCMP_ARCH_S390X", "s390x"),
    "riscv64": ("SCMP_ARCH_RISCV64", "riscv64"),
}
_ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
})  # fmt: skip
_OPERATORS = frozenset({
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
})  # fmt: skip
# Keys of a Docker-shaped profile that an OCI linux.seccomp object never has.
_DOCKER_KEYS = frozenset({"archMap", "about", "defaultErrno"})


def host_arches(machine: str | None = None) -> tuple[str, str]:
    """``(SCMP_ARCH_*, Go arch name)`` of ``machine`` (default: this host's).

    Raises:
        InvalidArgument: A machine no profile knows.
    """
    name = (machine or platform.machine()).lower()
    if name not in _MACHINES:
        raise InvalidArgument(f"seccomp: no profile architecture for machine {name!r}")
    return _MACHINES[name]


@functools.cache
def _default_document() -> dict[str, Any]:
    text = resources.files(__name__).joinpath("default.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


def _applies(rule: Mapping[str, Any], caps: frozenset[str], arch: str) -> bool:
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if includes.get("caps") and not set(includes["caps"]) <= caps:
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if excludes.get("caps") and set(excludes["caps"]) & caps:
        return False
    return not (excludes.get("arches") and arch in excludes["arches"])


def _checked_rule(rule: Any, where: str) -> dict[str, Any]:
    if not isinstance(rule, Mapping):
        raise InvalidArgument(f"{where}: a syscall rule must be an object")
    names = rule.get("names") or ([rule["name"]] if isinstance(rule.get("name"), str) else [])
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InvalidArgument(f"{where}: a syscall rule needs a list of names")
    action = rule.get("action")
    if action not in _ACTIONS:
        raise InvalidArgument(f"{where}: syscall rule for {names[0]}: unknown action {action!r}")
    out: dict[str, Any] = {"names": list(names), "action": action}
    if "errnoRet" in rule:
        if not isinstance(rule["errnoRet"], int) or rule["errnoRet"] < 0:
            raise InvalidArgument(f"{where}: syscall rule for {names[0]}: bad errnoRet")
        out["errnoRet"] = rule["errnoRet"]
    args = rule.get("args") or []
    if not isinstance(args, list):
        raise InvalidArgument(f"{where}: syscall rule for {names[0]}: args must be a list")
    checked_args = []
    for arg in args:
        if (not isinstance(arg, Mapping) or arg.get("op") not in _OPERATORS
                or not isinstance(arg.get("index"), int)
                or not isinstance(arg.get("value", 0), int)
                or not isinstance(arg.get("valueTwo", 0), int)):
            raise InvalidArgument(f"{where}: syscall rule for {names[0]}: bad argument {arg!r}")
        checked_args.append({"index": arg["index"], "value": arg.get("value", 0),
                             "valueTwo": arg.get("valueTwo", 0), "op": arg["op"]})
    if checked_args:
        out["args"] = checked_args
    return out


def resolve(document: Mapping[str, Any], capabilities: Collection[str],
            machine: str | None = None, *, where: str = "seccomp profile") -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object of a Docker-shaped ``document``.

    Rules whose ``includes``/``excludes`` do not fit ``capabilities`` and the host's
    architecture are left out; the architectures are the host's entry of ``archMap``
    (the native one and its sub-architectures: x86-64 with x86 and x32).

    Raises:
        InvalidArgument: A malformed profile, naming ``where``.
    """
    scmp_arch, arch = host_arches(machine)
    caps = frozenset(capabilities)
    default_action = document.get("defaultAction")
    if default_action not in _ACTIONS:
        raise InvalidArgument(f"{where}: unknown defaultAction {default_action!r}")
    out: dict[str, Any] = {"defaultAction": default_action}
    errno = document.get("defaultErrnoRet")
    if errno is not None:
        if not isinstance(errno, int) or errno < 0:
            raise InvalidArgument(f"{where}: defaultErrnoRet must be a non-negative integer")
        out["defaultErrnoRet"] = errno
    architectures: list[str] = []
    for entry in document.get("archMap") or []:
        if isinstance(entry, Mapping) and entry.get("architecture") == scmp_arch:
            architectures += [scmp_arch, *entry.get("subArchitectures", [])]
    if not architectures and document.get("architectures"):
        architectures = list(document["architectures"])
    if architectures:
        out["architectures"] = architectures
    if document.get("flags"):
        out["flags"] = list(document["flags"])
    rules = document.get("syscalls") or []
    if not isinstance(rules, list):
        raise InvalidArgument(f"{where}: syscalls must be a list")
    out["syscalls"] = [_checked_rule(rule, where) for rule in rules
                       if not isinstance(rule, Mapping) or _applies(rule, caps, arch)]
    return out


def default_profile(capabilities: Collection[str]) -> dict[str, Any]:
    """The default profile for a container holding ``capabilities`` (its bounding set).

    Returns a fresh OCI ``linux.seccomp`` object each call (the caller may change it).
    Calls that need a capability are allowed only with it (``mount``, ``unshare``,
    ``setns`` with ``CAP_SYS_ADMIN``...); without ``CAP_SYS_ADMIN``, ``clone`` may not
    create namespaces and ``clone3`` fails with ENOSYS (libc then uses ``clone``);
    ``io_uring_*``, ``keyctl`` and everything unnamed fail with EPERM.
    """
    # Decoding the cached JSON makes the fresh copy: about 50 us against 130 us
    # for a deep copy of the resolved profile, once per container's spec.
    return dict(msgspec.json.decode(_encoded_default(frozenset(capabilities))))


@functools.lru_cache(maxsize=32)
def _encoded_default(capabilities: frozenset[str]) -> bytes:
    return msgspec.json.encode(
        resolve(_default_document(), capabilities, where="default seccomp profile"))


def parse_profile(text: str, capabilities: Collection[str], *,
                  where: str = "seccomp profile") -> dict[str, Any]:
    """A user's profile (JSON text, Docker's shape or OCI's) as OCI ``linux.seccomp``.

    Raises:
        InvalidArgument: Not JSON, or not a profile.
    """
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument(f"{where}: a profile must be a JSON object")
    if "defaultAction" not in document:
        raise InvalidArgument(f"{where}: a profile needs a defaultAction")
    if _DOCKER_KEYS & document.keys() or any(
        isinstance(r, Mapping) and ("includes" in r or "excludes" in r or "name" in r)
        for r in document.get("syscalls") or []
    ):
        return resolve(document, capabilities, where=where)
    # Already OCI: checked the same way, every rule kept.
    return resolve({**document, "archMap": []}, capabilities, where=where)
