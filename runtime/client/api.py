"""The contract of the hot calls: what ``run``, ``images pull -q`` and the teardown call.

Both clients implement :class:`HotClient`: :class:`runtime.client.Client` answers
with the typed records named here, :class:`runtime.client.lean.LeanClient` with
attribute bags of the same fields (:class:`types.SimpleNamespace`), so that a
caller written against the Protocol runs on either. The lean client does not
import this module (``typing`` costs every CLI call a few ms); mypy checks both
against it below, and ``tests/cli/test_client_contract.py`` checks the
signatures at run time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from runtime.api.tasks import ExitStatus, TaskState
    from runtime.api.types import ImageProgress, ImageRootfs, Version
    from runtime.client.attach import Attachment
    from runtime.client.lean import LeanClient
    from runtime.client.sync import Client

__all__ = ["HOT_METHODS", "HotClient"]


@runtime_checkable
class HotClient(Protocol):
    """A client of one daemon, in one namespace, for the hot commands."""

    address: str
    namespace: str
    timeout: float | None

    def version(self) -> Version:
        """The daemon's version."""
        ...

    def image_rootfs(self, name: str, snapshotter: str = "") -> ImageRootfs:
        """Unpack if needed; the image's snapshotter, top chain ID and run config."""
        ...

    def pull(self, ref: str, *, platforms: Sequence[str] = (), all_platforms: bool = False,
             snapshotter: str = "", unpack: bool = True, plain_http: bool = False,
             hosts_dir: str = "", user: str = "", password: str = "",
             max_concurrent_downloads: int = 0) -> Iterator[ImageProgress]:
        """``POST /v1/images/pull``: its progress, ending with the ``done`` line.

        Raises the pull's error when its ``error`` line arrives.
        """
        ...

    def run(self, container: Mapping[str, Any], *, parent: str = "",
            rootfs: Sequence[Mapping[str, Any]] | None = None, stdin: bool = False,
            start: bool = False) -> TaskState:
        """``POST /v1/run``: the container, its snapshot on ``parent`` and its task."""
        ...

    def remove(self, container_id: str, *, force: bool = False, snapshot: bool = False) -> None:
        """``DELETE /v1/run/{id}``: a container with its task and (``snapshot``) snapshot."""
        ...

    def task(self, container_id: str) -> TaskState:
        """A task's state."""
        ...

    def kill_task(self, container_id: str, signal: int | str = 15, *, all: bool = False,
                  exec_id: str = "") -> None:
        """Signal a task's init process (``all``: every process) or an exec."""
        ...

    def wait_task(self, container_id: str, exec_id: str = "") -> ExitStatus:
        """Block until the process exits."""
        ...

    def delete_task(self, container_id: str, exec_id: str = "") -> ExitStatus:
        """Delete a stopped task or an exec; how it ended."""
        ...

    def delete_container(self, container_id: str) -> None:
        """Delete a container without a task."""
        ...

    def attach_task(self, container_id: str, exec_id: str = "", *, stdin: bool = False,
                    start: bool = False) -> Attachment:
        """Open a websocket to a process's stdio; ``start`` starts it once attached."""
        ...


#: The methods of :class:`HotClient`, for checks at run time.
HOT_METHODS = ("version", "image_rootfs", "pull", "run", "remove", "task", "kill_task", "wait_task",
               "delete_task", "delete_container", "attach_task")

if TYPE_CHECKING:

    def _both_implement_it(lean: LeanClient, typed: Client) -> tuple[HotClient, HotClient]:
        # mypy's structural check of both clients against the contract.
        return lean, typed
