"""Mount flags of ``run`` and ``create``: ``--mount``, ``-v``, ``--tmpfs`` (and sizes).

Each parser turns one value into a SpecMount JSON object or raises
InvalidArgument naming the value; nothing reaches the daemon before all parse.
"""

from __future__ import annotations

import os

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["parse_mount", "parse_size", "parse_tmpfs", "parse_volume", "resolve_volumes"]


def parse_size(text: str) -> int:
    """``64m``, ``1g``, ``512k`` or bytes into bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def parse_mount(text: str) -> dict[str, Any]:
    """``type=bind,src=/a,dst=/b,options=ro:rbind`` into a SpecMount JSON object."""
    from runtime.core.errors import InvalidArgument

    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            if key in ("ro", "readonly"):
                fields["options"] = ":".join(filter(None, [fields.get("options", ""), "ro"]))
                continue
            raise InvalidArgument(f"--mount {text!r}: expected key=value pairs")
        fields[key.strip()] = value.strip()
    source = fields.get("src") or fields.get("source") or ""
    dest = fields.get("dst") or fields.get("destination") or fields.get("target") or ""
    if not dest:
        raise InvalidArgument(f"--mount {text!r}: dst= is required")
    options = [o for o in fields.get("options", "").split(":") if o]
    if fields.get("type") == "volume":
        if not source:
            raise InvalidArgument(f"--mount {text!r}: a volume needs src=NAME")
        volume = parse_volume(f"{source}:{dest}")
        if "nocopy" in options or fields.get("volume-nocopy", "") in ("true", "1"):
            volume["nocopy"] = True
        volume["options"] += [o for o in options if o not in volume["options"]
                              and o != "nocopy"]
        return volume
    return {"destination": dest, "source": os.path.abspath(source) if source else "",
            "type": fields.get("type", "bind"), "options": options}


_VOLUME_OPTIONS = {"ro": "ro", "rw": "rw", "z": "", "Z": "", "rprivate": "rprivate",
                   "private": "private", "rshared": "rshared", "shared": "shared",
                   "rslave": "rslave", "slave": "slave", "nocopy": ""}


def parse_volume(text: str) -> dict[str, Any]:
    """``-v HOST:CONTAINER[:ro]`` into a bind SpecMount JSON object (host path must exist)."""
    from runtime.core.errors import InvalidArgument

    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"-v {text!r}: expected HOST_PATH:CONTAINER_PATH[:ro|rw]")
    source, dest = parts[0], parts[1]
    if not dest.startswith("/"):
        raise InvalidArgument(f"-v {text!r}: the container path {dest!r} must be absolute")
    named = not source.startswith(("/", ".", "~"))
    if named:
        if not all(c.isalnum() or c in "._-" for c in source) or not source[0].isalnum():
            raise InvalidArgument(f"-v {text!r}: {source!r} is neither an absolute host path "
                                  "nor a volume name")
    else:
        source = os.path.abspath(os.path.expanduser(source))
        if not os.path.exists(source):
            raise InvalidArgument(f"-v {text!r}: host path {source!r} does not exist")
    options = ["rbind"]
    given = parts[2].split(",") if len(parts) == 3 else []
    for option in given:
        if option not in _VOLUME_OPTIONS:
            raise InvalidArgument(f"-v {text!r}: unknown option {option!r} (ro, rw...)")
        if _VOLUME_OPTIONS[option]:
            options.append(_VOLUME_OPTIONS[option])
    if named:
        # Resolved to the volume's directory by resolve_volumes, once a client is at hand.
        return {"destination": dest, "volume": source, "type": "bind", "options": options,
                **({"nocopy": True} if "nocopy" in given else {})}
    return {"destination": dest, "source": source, "type": "bind", "options": options}


def resolve_volumes(api: Any, spec: dict[str, Any]) -> None:
    """Bind each named volume of ``spec``'s mounts to its directory (made if it is new).

    The spec's :data:`~runtime.pkg.copyup.VOLUMES_ANNOTATION` names them, so the
    runtime copies the image's content into an empty one (unless ``nocopy``).
    """
    import json

    from runtime.pkg.copyup import VOLUMES_ANNOTATION

    named: dict[str, str] = {}
    for mount in spec.get("mounts") or []:
        name = mount.pop("volume", None)
        nocopy = mount.pop("nocopy", False)
        if name is None:
            continue
        body = {"name": name, "exist_ok": True}
        if hasattr(api, "stream_lines"):  # the typed client
            found = api.call("POST", "/v1/volumes", dict, body=body)["mountpoint"]
        else:
            found = api.call("POST", "/v1/volumes", body).mountpoint
        mount["source"] = found
        if not nocopy:
            named[mount["destination"]] = name
    if named:
        spec.setdefault("annotations", {})[VOLUMES_ANNOTATION] = json.dumps(named)


def parse_tmpfs(text: str) -> dict[str, Any]:
    """``--tmpfs /run[:size=64m,mode=1777]`` into a tmpfs SpecMount JSON object."""
    from runtime.core.errors import InvalidArgument

    dest, _, options = text.partition(":")
    if not dest.startswith("/"):
        raise InvalidArgument(f"--tmpfs {text!r}: the container path must be absolute")
    given = [o for o in options.split(",") if o]
    for option in given:
        key = option.partition("=")[0]
        if not key or not all(c.isalnum() or c in "_-" for c in key):
            raise InvalidArgument(f"--tmpfs {text!r}: bad option {option!r}")
    return {"destination": dest, "source": "tmpfs", "type": "tmpfs",
            "options": ["nosuid", "nodev", "noexec", *given]}
