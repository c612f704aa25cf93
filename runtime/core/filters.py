r"""Containerd's filter language: select records by field paths.

Every List, Walk and Subscribe call accepts filters. A filter names fields of
the target through an *adaptor* (``fieldpath -> (value, present)``), so the
same language serves events, containers, leases and plugins.

Grammar (whitespace is allowed between tokens)::

    filters   := string*                      several strings are OR-ed
    string    := "" | any                     "" matches everything
    any       := all ("|" all)*               OR inside one string
    all       := selector ("," selector)*     AND; binds tighter than "|"
    selector  := fieldpath [operator value]
    fieldpath := field ("." field)*
    field     := [A-Za-z][A-Za-z0-9_]* | quoted
    operator  := "==" | "!=" | "~="
    value     := quoted | unquoted | regex    regex only after "~="
    unquoted  := one or more characters other than whitespace, "," and "|"
    quoted    := '"' ... '"'                  escapes: \" \\ \a \b \f \n \r \t \v
                                              \ooo \xHH \uHHHH \UHHHHHHHH
    regex     := "/" ... "/" | "|" ... "|"    only the delimiter is escaped (\/);
                                              other backslashes reach the regex

Semantics:

=========== ==============================================================
``f``       the field is present
``f==v``    the field is present and equals ``v``
``f!=v``    the field is absent or differs from ``v``
``f~=r``    the field is present and ``re.search(r, value)`` matches
=========== ==============================================================

No filter strings at all also match everything. Examples::

    topic~="^/tasks/",namespace==k8s.io
    labels."io.moorage/owner"==ci|labels.team
    topic~=/^\/images\/(create|delete)$/,event.name~=|^docker\.io/|

Malformed input raises :class:`~runtime.core.errors.InvalidArgument` naming the
position (0-based) and what was expected.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias, final

import msgspec
from msgspec.structs import force_setattr

from runtime.core.errors import InvalidArgument

__all__ = ["Adaptor", "Filter", "Operator", "Selector", "adapt", "parse"]

#: Maps a field path to ``(value, present)``; absent fields return ``("", False)``.
Adaptor: TypeAlias = Callable[[Sequence[str]], tuple[str, bool]]

_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_UNQUOTED = re.compile(r"[^\s,|]+")
_SPACE = re.compile(r"\s*")
_SIMPLE_ESCAPES = {
    '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f",
    "n": "\n", "r": "\r", "t": "\t", "v": "\v",
}  # fmt: skip
_HEX_ESCAPES = {
    code: re.compile(f"[0-9A-Fa-f]{{{n}}}") for code, n in (("x", 2), ("u", 4), ("U", 8))
}
_OCTAL_ESCAPE = re.compile("[0-7]{3}")


class Operator(StrEnum):
    """How a selector compares a field with its value."""

    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


_OPERATORS = frozenset(op.value for op in Operator)


@final
class Selector(msgspec.Struct, frozen=True, dict=True):
    """One ``fieldpath [operator value]`` term.

    Attributes:
        fieldpath: The path's fields, quotes removed.
        operator: The comparison, or ``None`` to test presence only.
        value: The unescaped value (``""`` for a presence test).
    """

    fieldpath: tuple[str, ...]
    operator: Operator | None = None
    value: str = ""
    #: The compiled value of a ``~=`` selector. Not a field, so neither compared,
    #: hashed nor printed: set on the instance (``dict=True`` gives it a
    #: ``__dict__``) by ``__post_init__``; the class's ``None`` otherwise.
    _pattern: ClassVar[re.Pattern[str] | None] = None

    def __post_init__(self) -> None:
        # Compiled once here: matching runs on the publish path of every event.
        if self.operator is Operator.MATCHES:
            force_setattr(self, "_pattern", re.compile(self.value))

    def match(self, adaptor: Adaptor) -> bool:
        """Whether the record seen through ``adaptor`` satisfies this selector."""
        value, present = adaptor(self.fieldpath)
        if self.operator is None:
            return present
        if self.operator is Operator.NOT_EQUAL:
            return not present or value != self.value
        if not present:
            return False
        if self._pattern is None:
            return value == self.value
        return self._pattern.search(value) is not None


@final
class Filter(msgspec.Struct, frozen=True):
    """A parsed filter: alternatives (OR) of selector groups (AND).

    Attributes:
        alternatives: One tuple of selectors per OR branch; ``((),)`` matches
            everything.
    """

    alternatives: tuple[tuple[Selector, ...], ...] = ((),)

    def match(self, adaptor: Adaptor) -> bool:
        """Whether any alternative has all of its selectors matching ``adaptor``."""
        return any(all(s.match(adaptor) for s in group) for group in self.alternatives)


def parse(filters: Iterable[str]) -> Filter:
    """Parse filter strings into one :class:`Filter` (strings are OR-ed).

    Raises:
        InvalidArgument: A string is malformed; the message names the string,
            the position and what was expected there.
    """
    if isinstance(filters, str):
        # A lone string would otherwise be split into one-character filters.
        filters = [filters]
    groups: list[tuple[Selector, ...]] = []
    for source in filters:
        if source == "":
            return Filter()
        groups.extend(_Parser(source).parse())
    return Filter(tuple(groups)) if groups else Filter()


def adapt(mapping: Mapping[str, Any]) -> Adaptor:
    """An adaptor over nested mappings, such as ``{"labels": {"a.b": "x"}}``.

    Scalars become strings (``True`` -> ``"true"``, datetimes in ISO 8601);
    ``None`` and missing keys are absent; a non-empty path that ends on a
    mapping or list is present with the value ``""``.
    """

    def lookup(fieldpath: Sequence[str]) -> tuple[str, bool]:
        node: Any = mapping
        for name in fieldpath:
            if not isinstance(node, Mapping) or name not in node:
                return "", False
            node = node[name]
        if node is None:
            return "", False
        return _to_string(node), True

    return lookup


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        # Lower case as in the JSON the client sees, and as containerd prints it.
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        return ""
    return str(value)


class _Parser:
    """Recursive descent over one filter string; ``pos`` is the cursor."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.pos = 0

    def parse(self) -> list[tuple[Selector, ...]]:
        groups = [self._all()]
        while self._take("|"):
            groups.append(self._all())
        self._skip_space()
        if self.pos < len(self.source):
            raise self._error("',', '|' or the end of the filter")
        return groups

    def _all(self) -> tuple[Selector, ...]:
        selectors = [self._selector()]
        while self._take(","):
            selectors.append(self._selector())
        return tuple(selectors)

    def _selector(self) -> Selector:
        fieldpath = [self._field()]
        while self._take("."):
            fieldpath.append(self._field())
        self._skip_space()
        op = self.source[self.pos : self.pos + 2]
        if op not in _OPERATORS:
            if self.pos < len(self.source) and self.source[self.pos] in "=!~":
                raise self._error("'==', '!=' or '~='")
            return Selector(tuple(fieldpath))
        operator = Operator(op)
        self.pos += 2
        self._skip_space()
        start = self.pos
        value = self._value(operator)
        try:
            return Selector(tuple(fieldpath), operator, value)
        except re.error as exc:
            raise InvalidArgument(
                f"invalid filter {self.source!r}: expected a regular expression at "
                f"position {start}, found {value!r} ({exc.msg})"
            ) from None

    def _field(self) -> str:
        self._skip_space()
        if self._peek() == '"':
            return self._quoted()
        found = _FIELD.match(self.source, self.pos)
        if found is None:
            raise self._error('a field name ([A-Za-z][A-Za-z0-9_]*) or a "quoted" field')
        self.pos = found.end()
        return found.group()

    def _value(self, operator: Operator) -> str:
        first = self._peek()
        if first == '"':
            return self._quoted()
        if operator is Operator.MATCHES and first in ("/", "|"):
            return self._delimited(first)
        found = _UNQUOTED.match(self.source, self.pos)
        if found is None:
            raise self._error('a value (unquoted, or "quoted")')
        self.pos = found.end()
        return found.group()

    def _quoted(self) -> str:
        opened = self.pos
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.source):
            ch = self.source[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "\\":
                out.append(self._escape())
            else:
                out.append(ch)
                self.pos += 1
        raise self._error("'\"'", hint=f"the string opened at position {opened} is not closed")

    def _escape(self) -> str:
        code = self.source[self.pos + 1 : self.pos + 2]
        if code in _SIMPLE_ESCAPES:
            self.pos += 2
            return _SIMPLE_ESCAPES[code]
        if code in _HEX_ESCAPES:
            digits, base = _HEX_ESCAPES[code].match(self.source, self.pos + 2), 16
        else:
            digits, base = _OCTAL_ESCAPE.match(self.source, self.pos + 1), 8
        if digits is not None and int(digits.group(), base) <= sys.maxunicode:
            self.pos = digits.end()
            return chr(int(digits.group(), base))
        # Go's escapes, as in containerd; regex escapes like \d belong in /.../.
        raise self._error(
            r"an escape (\" \\ \n \t \xHH \uHHHH \ooo ...)",
            hint="write regular expressions as /.../ to keep their backslashes",
        )

    def _delimited(self, delimiter: str) -> str:
        # Only the delimiter is unescaped so that \d, \. etc. reach the regex.
        opened = self.pos
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.source):
            ch = self.source[self.pos]
            if ch == delimiter:
                self.pos += 1
                self._check_after_regex(delimiter)
                return "".join(out)
            if ch == "\\" and self.source[self.pos + 1 : self.pos + 2] == delimiter:
                out.append(delimiter)
                self.pos += 2
            else:
                out.append(ch)
                self.pos += 1
        raise self._error(
            repr(delimiter), hint=f"the regex opened at position {opened} is not closed"
        )

    def _check_after_regex(self, delimiter: str) -> None:
        # `topic~=/tasks/.*` reads as the regex "tasks" followed by junk; say how to fix it.
        rest = self.source[self.pos :]
        if rest and not rest[0].isspace() and rest[0] not in ",|":
            raise self._error(
                f"',', '|' or the end of the filter after the {delimiter}...{delimiter} regex",
                hint=f"write {delimiter} inside the regex as \\{delimiter}, or quote the regex",
            )

    def _take(self, token: str) -> bool:
        self._skip_space()
        if self.source.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def _skip_space(self) -> None:
        found = _SPACE.match(self.source, self.pos)
        assert found is not None  # \s* always matches
        self.pos = found.end()

    def _peek(self) -> str:
        return self.source[self.pos : self.pos + 1]

    def _error(self, expected: str, hint: str = "") -> InvalidArgument:
        rest = self.source[self.pos :]
        found = repr(rest if len(rest) <= 20 else rest[:17] + "...") if rest else "the end"
        return InvalidArgument(
            f"invalid filter {self.source!r}: expected {expected} at position "
            f"{self.pos}, found {found}" + (f" ({hint})" if hint else "")
        )
