"""JSON for the CLI's hot commands over CPython's ``_json`` accelerator alone.

The :mod:`json` package imports :mod:`re` and compiles its patterns when it
is imported: more CPU than the rest of ``moorage tasks kill`` together. The C
scanner and string encoder behind it need neither, so :func:`loads` and
:func:`dumps` call them directly and fall back to :mod:`json` only on an
interpreter without ``_json``. Both accept and produce what :mod:`json` does
for the API's bodies (objects, arrays, strings, numbers, booleans, null).
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["dumps", "loads"]

_WHITESPACE = " \t\n\r"

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None  # type: ignore[assignment]


class _Context:
    """The attributes ``_json.make_scanner`` reads from a ``json.JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__
    memo: dict[str, str] = {}


# The scanner reads its settings as attributes, here of a class.
_scan = _json.make_scanner(_Context) if _json is not None else None  # type: ignore[arg-type]


def loads(data: bytes | str) -> Any:
    """Parse one JSON document; :class:`ValueError` if it is not one."""
    text = data.decode() if isinstance(data, bytes) else data
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"not JSON at offset {exc.value}") from None
    finally:
        _Context.memo.clear()
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"extra data after the JSON document at offset {end}")
    return value


def dumps(value: Any) -> str:
    """Compact JSON (no spaces), non-ASCII escaped, as ``json.dumps(..., separators=(",", ":"))``.

    Raises:
        TypeError: ``value`` holds something JSON cannot carry.
        ValueError: ``value`` holds NaN or an infinity (the daemon refuses them).
    """
    if _json is None:  # pragma: no cover
        import json

        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    parts: list[str] = []
    _encode(value, parts.append)
    return "".join(parts)


def _encode(value: Any, emit: Any) -> None:
    if isinstance(value, str):
        emit(_json.encode_basestring_ascii(value))
    elif value is None:
        emit("null")
    elif value is True:
        emit("true")
    elif value is False:
        emit("false")
    elif isinstance(value, int):
        emit(int.__repr__(value))
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not allowed in JSON")
        emit(float.__repr__(value))
    elif isinstance(value, dict):
        emit("{")
        for i, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
            if i:
                emit(",")
            emit(_json.encode_basestring_ascii(key))
            emit(":")
            _encode(item, emit)
        emit("}")
    elif isinstance(value, (list, tuple)):
        emit("[")
        for i, item in enumerate(value):
            if i:
                emit(",")
            _encode(item, emit)
        emit("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
