"""Validation of names that travel everywhere: namespaces, object ids, labels.

The rules are containerd's, so records can move between the two: identifiers
are at most 76 characters of alphanumeric runs joined by single ``.``, ``_``
or ``-``; a label's key and value together are at most 4096 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from runtime.core.errors import InvalidArgument

__all__ = [
    "MAX_IDENTIFIER",
    "MAX_LABEL",
    "validate_identifier",
    "validate_labels",
    "validate_namespace",
]

MAX_IDENTIFIER = 76
MAX_LABEL = 4096

# Used with fullmatch: with match, "$" would also accept a trailing newline.
_IDENTIFIER = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
# Keys: printable, no whitespace; containerd only bounds the size, but control
# characters in keys break filters and log lines, so we refuse them.
_LABEL_KEY = re.compile(r"[\x21-\x7e]+")


def validate_identifier(value: str, what: str = "identifier") -> str:
    """Return ``value`` if it is a valid identifier, else raise InvalidArgument."""
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_IDENTIFIER:
        raise InvalidArgument(
            f"{what} {value[:80]!r}... is longer than {MAX_IDENTIFIER} characters"
        )
    if not _IDENTIFIER.fullmatch(value):
        raise InvalidArgument(
            f"{what} {value!r} is invalid: use letters and digits joined by single '.', '_' or '-'"
        )
    return value


def validate_namespace(value: str) -> str:
    """Return ``value`` if it can name a namespace."""
    validate_identifier(value, "namespace")
    if value == "version":
        raise InvalidArgument("namespace 'version' is reserved")
    return value


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Check every label; return them as a plain dict."""
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument(f"label {key!r}: keys and values must be strings")
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"label key {key[:80]!r} must be non-empty printable ASCII")
        size = len(key.encode()) + len(value.encode())
        if size > MAX_LABEL:
            raise InvalidArgument(
                f"label {key[:80]!r}: key and value are {size} bytes, over the {MAX_LABEL} limit"
            )
    return dict(labels)
