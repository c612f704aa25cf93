"""``runtime.core.errors``: one vocabulary, mapped once both ways (wire code <-> class)."""

from __future__ import annotations

import pytest

from runtime.core import errors
from runtime.core.errors import (
    AlreadyExists,
    InvalidArgument,
    MoorageError,
    NotFound,
    error_classes,
    from_code,
)


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_maps_back_from_its_code(cls: type[MoorageError]) -> None:
    rebuilt = from_code(cls.code, "the message")
    assert type(rebuilt) is cls
    assert rebuilt.message == "the message"
    assert 400 <= cls.http_status < 600


def test_every_error_class_is_listed_and_exported() -> None:
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, MoorageError)
    }
    assert set(error_classes()) == defined
    assert {cls.__name__ for cls in defined} <= set(errors.__all__)
    assert errors.__all__ == sorted(errors.__all__)


def test_error_codes_are_unique() -> None:
    codes = [cls.code for cls in error_classes()]
    assert len(codes) == len(set(codes))


def test_already_exists_is_409_not_500() -> None:
    assert (AlreadyExists.code, AlreadyExists.http_status) == ("already_exists", 409)


def test_unknown_code_becomes_the_base_class() -> None:
    err = from_code("teapot", "short and stout")
    assert type(err) is MoorageError
    assert (err.code, err.message) == ("internal", "short and stout")


def test_errors_subclass_the_builtin_they_resemble() -> None:
    assert issubclass(InvalidArgument, ValueError)
    assert issubclass(NotFound, LookupError)
    assert issubclass(errors.PermissionDenied, PermissionError)
    assert issubclass(errors.NotImplementedYet, NotImplementedError)
    assert issubclass(errors.DeadlineExceeded, TimeoutError)


def test_message_defaults_to_the_code() -> None:
    assert NotFound().message == "not_found"
