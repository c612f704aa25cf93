"""Multi-valued mappings: case-insensitive headers and the query string's parameters."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar, overload

__all__ = ["Headers", "Query"]

_D = TypeVar("_D")


class Query(Mapping[str, str]):
    """Query parameters in order; ``query[k]`` and ``get`` give the first value of ``k``."""

    __slots__ = ("_first", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = list(items)
        self._first: dict[str, str] = {}
        for key, value in self._items:
            self._first.setdefault(key, value)

    def __getitem__(self, key: str) -> str:
        return self._first[key]

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._first

    @overload
    def getall(self, key: str) -> list[str]: ...

    @overload
    def getall(self, key: str, default: _D) -> list[str] | _D: ...

    def getall(self, key: str, default: object = KeyError) -> object:
        """Every value of ``key`` in order; ``default`` (or KeyError) when there is none."""
        values = [v for k, v in self._items if k == key]
        if values:
            return values
        if default is KeyError:
            raise KeyError(key)
        return default

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        """Every ``(key, value)`` pair, repeated keys included."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"Query({self._items!r})"


class Headers:
    """Header fields in order, looked up case-insensitively; names keep their spelling."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: list[tuple[str, str]] = [(str(k), str(v)) for k, v in pairs]

    @overload
    def get(self, name: str) -> str | None: ...

    @overload
    def get(self, name: str, default: str) -> str: ...

    @overload
    def get(self, name: str, default: _D) -> str | _D: ...

    def get(self, name: str, default: object = None) -> object:
        """The first value of ``name``, or ``default``."""
        lower = name.lower()
        for key, value in self._items:
            if key.lower() == lower:
                return value
        return default

    def getall(self, name: str) -> list[str]:
        """Every value of ``name`` in order (empty when there is none)."""
        lower = name.lower()
        return [v for k, v in self._items if k.lower() == lower]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __setitem__(self, name: str, value: str) -> None:
        """Replace every field ``name`` with one holding ``value``."""
        self.pop(name)
        self._items.append((name, str(value)))

    def add(self, name: str, value: str) -> None:
        """One more field ``name`` (kept beside those already there)."""
        self._items.append((name, str(value)))

    def setdefault(self, name: str, value: str) -> str:
        """The value of ``name``, set to ``value`` first if absent."""
        found = self.get(name)
        if found is None:
            self._items.append((name, value))
            return value
        return found

    def pop(self, name: str, default: str | None = None) -> str | None:
        """Remove every field ``name``; the first value, or ``default``."""
        lower = name.lower()
        found = self.get(name, default)
        self._items = [(k, v) for k, v in self._items if k.lower() != lower]
        return found

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self.pop(name)

    def items(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` pair in order."""
        return list(self._items)

    def keys(self) -> list[str]:
        """Every name in order (repeated ones repeated)."""
        return [k for k, _ in self._items]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"
