"""What in an OCI spec reaches past the container: host namespaces and extra privileges.

A container is created with such a spec only when its request says so explicitly
(``allow_privileged: true``; ``moorage run --privileged``): a client that merely
sends a spec it got from elsewhere must not get root on the host by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.pkg.oci.spec import DEFAULT_CAPABILITIES
from runtime.plugins.network.api import HOST, NETWORK_ANNOTATION

__all__ = ["ISOLATING_NAMESPACES", "privileged_reasons"]

#: The namespaces every unprivileged container gets (containerd's default spec).
ISOLATING_NAMESPACES = ("pid", "ipc", "uts", "mount", "network")
_CAPABILITY_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def privileged_reasons(spec: Mapping[str, Any]) -> list[str]:
    """Why ``spec`` needs ``allow_privileged``; empty when it does not.

    Counted: capabilities beyond the default set, a missing isolating namespace (the
    container would share the host's) or one joined by path, a device rule that allows
    access, and the host-network annotation.
    """
    reasons: list[str] = []
    process, linux = _dict(spec.get("process")), _dict(spec.get("linux"))
    caps = _dict(process.get("capabilities"))
    extra = sorted({c for s in _CAPABILITY_SETS for c in _list(caps.get(s))
                    if c not in DEFAULT_CAPABILITIES})  # fmt: skip
    if extra:
        shown = ", ".join(map(str, extra[:5])) + (f" and {len(extra) - 5} more" if len(extra) > 5
                                                   else "")
        reasons.append(f"capabilities beyond the default ({shown})")
    namespaces = [_dict(n) for n in _list(linux.get("namespaces"))]
    present = {str(n.get("type")) for n in namespaces}
    for kind in ISOLATING_NAMESPACES:
        if kind not in present:
            reasons.append(f"the host's {kind} namespace")
    for ns in namespaces:
        if ns.get("path"):
            reasons.append(f"joining the {ns.get('type')} namespace at {ns.get('path')}")
    devices = _list(_dict(linux.get("resources")).get("devices"))
    if any(_dict(rule).get("allow") for rule in devices):
        reasons.append("access to host devices")
    annotations = _dict(spec.get("annotations"))
    if str(annotations.get(NETWORK_ANNOTATION, "")) == HOST:
        reasons.append("the host's network")
    return reasons
