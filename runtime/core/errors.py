"""The error vocabulary shared by the daemon, its plugins, the API and the client.

Hierarchy::

    MoorageError                 (500 internal)
    ├── InvalidArgument          (400 invalid_argument)  also ValueError
    ├── Unauthenticated          (401 unauthenticated)
    ├── PermissionDenied         (403 permission_denied)  also PermissionError
    ├── NotFound                 (404 not_found)          also LookupError
    ├── AlreadyExists            (409 already_exists)
    ├── Conflict                 (409 conflict)
    ├── FailedPrecondition       (412 failed_precondition)
    │   ├── CommandNotFound      (412 command_not_found)       exit 127 of ``run``/``exec``
    │   └── CommandNotExecutable (412 command_not_executable)  exit 126 of ``run``/``exec``
    ├── OutOfRange               (416 out_of_range)
    ├── NotImplementedYet        (501 not_implemented)    also NotImplementedError
    ├── Unavailable              (503 unavailable)        e.g. "ref locked"
    ├── DeadlineExceeded         (504 deadline_exceeded)  also TimeoutError
    └── ResourceExhausted        (507 resource_exhausted) e.g. ENOSPC

Each class carries its wire ``code`` and ``http_status``, given in its header; :func:`from_code`
maps a wire code back to the class, so the server and the client share one
table. Handlers raise these and nothing else; foreign exceptions are translated
at the boundary where they occur.
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing: the CLI imports this module
# on every call, and annotations here are never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

__all__ = [
    "AlreadyExists",
    "CommandNotExecutable",
    "CommandNotFound",
    "Conflict",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "MoorageError",
    "NotFound",
    "NotImplementedYet",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_classes",
    "from_code",
]


class MoorageError(Exception):
    """Base of every error Moorage raises on purpose; unknown ones map to 500."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    def __init_subclass__(cls, *, code: str = "", http_status: int = 0, **kwargs: object) -> None:
        # ``class NotFound(MoorageError, code="not_found", http_status=404)``: the wire
        # code and status in the header; a subclass naming neither shares its base's.
        super().__init_subclass__(**kwargs)
        if code:
            cls.code = code
        if http_status:
            cls.http_status = http_status

    @property
    def message(self) -> str:
        """The human-readable message, as sent on the wire."""
        return str(self.args[0]) if self.args else self.code


class InvalidArgument(MoorageError, ValueError, code="invalid_argument", http_status=400):
    """The request itself is malformed: bad name, label, digest, config value."""


class Unauthenticated(MoorageError, code="unauthenticated", http_status=401):
    """The request carries no valid credentials (TCP listener without the token)."""


class PermissionDenied(MoorageError, PermissionError, code="permission_denied", http_status=403):
    """The caller may not do this, whoever they are."""


class NotFound(MoorageError, LookupError, code="not_found", http_status=404):
    """The named object does not exist in the caller's namespace."""


class AlreadyExists(MoorageError, code="already_exists", http_status=409):
    """An object with that name already exists; most callers treat it as success."""


class Conflict(MoorageError, code="conflict", http_status=409):
    """A concurrent change won; retrying may succeed."""


class FailedPrecondition(MoorageError, code="failed_precondition", http_status=412):
    """The object is in a state that forbids the operation (e.g. namespace not empty)."""


class CommandNotFound(FailedPrecondition, code="command_not_found"):
    """The process cannot start: its executable does not exist in the container."""


class CommandNotExecutable(FailedPrecondition, code="command_not_executable"):
    """The process cannot start: its executable exists but cannot be run."""


class OutOfRange(MoorageError, code="out_of_range", http_status=416):
    """An offset or range lies outside the object (ingest write, blob read)."""


class NotImplementedYet(MoorageError, NotImplementedError, code="not_implemented", http_status=501):
    """The plugin or backend does not support this operation.

    Also the API's answer to an HTTP method that a path does not offer, as gRPC
    answers an unknown method with UNIMPLEMENTED.
    """


class Unavailable(MoorageError, code="unavailable", http_status=503):
    """Temporarily unavailable: a locked ref, a stalled proxy, a plugin not running."""


class DeadlineExceeded(MoorageError, TimeoutError, code="deadline_exceeded", http_status=504):
    """The operation did not finish within its time budget."""


class ResourceExhausted(MoorageError, code="resource_exhausted", http_status=507):
    """Out of disk space, memory or another finite resource."""


def error_classes() -> list[type[MoorageError]]:
    """Every error class of this module, base first (each before its own subclasses).

    Subclasses defined elsewhere (``ConfigError``...) share their base's code.
    """
    found: list[type[MoorageError]] = []

    def walk(cls: type[MoorageError]) -> None:
        found.append(cls)
        for child in cls.__subclasses__():
            if child.__module__ == __name__:
                walk(child)

    walk(MoorageError)
    return found


_BY_CODE: dict[str, type[MoorageError]] = {cls.code: cls for cls in error_classes()}


def from_code(code: str, message: str) -> MoorageError:
    """Rebuild the error a server sent as ``{"code": ..., "message": ...}``."""
    return _BY_CODE.get(code, MoorageError)(message)
