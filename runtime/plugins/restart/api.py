"""The label contract between ``moorage run``/``create`` and the restart manager.

A container asks for a restart policy and for its removal at exit through
labels on its record, as containerd's restart manager reads its own labels:
they survive daemon restarts with the record and need no new API field.
Only the standard library here: the CLI imports this module.
"""

from __future__ import annotations

__all__ = [
    "AUTO_REMOVE_LABEL",
    "POLICIES",
    "RESTART_COUNT_LABEL",
    "RESTART_LABEL",
    "STOPPED_LABEL",
    "parse_policy",
    "should_restart",
]

#: ``no``, ``always``, ``on-failure[:N]`` or ``unless-stopped``.
RESTART_LABEL = "moorage/restart"
#: How many times the manager restarted the container since it was last started by hand.
RESTART_COUNT_LABEL = "moorage/restart.count"
#: ``true`` once a user stopped the container: no restart until a user starts it again.
STOPPED_LABEL = "moorage/restart.stopped"
#: ``true``: the daemon removes the container (task, record, snapshot) when it exits.
AUTO_REMOVE_LABEL = "moorage/auto-remove"

POLICIES = ("no", "always", "on-failure", "unless-stopped")


def parse_policy(text: str) -> tuple[str, int]:
    """``on-failure:3`` as ``("on-failure", 3)``; ``always`` as ``("always", 0)``.

    Raises:
        InvalidArgument: Not one of the policies (the message names the value).
    """
    from runtime.core.errors import InvalidArgument

    name, sep, count = text.strip().partition(":")
    if name not in POLICIES or (sep and name != "on-failure"):
        raise InvalidArgument(f"--restart {text!r}: use no, always, on-failure[:N] "
                              "or unless-stopped")
    if not sep:
        return name, 0
    if not count.isdigit() or int(count) < 1:
        raise InvalidArgument(f"--restart {text!r}: the retry count must be a positive number")
    return name, int(count)


def should_restart(labels: dict[str, str], exit_status: int) -> bool:
    """Whether a container whose init process exited with ``exit_status`` starts again."""
    try:
        name, limit = parse_policy(labels.get(RESTART_LABEL, "no") or "no")
    except ValueError:
        return False
    if name == "no" or labels.get(STOPPED_LABEL) == "true":
        return False
    if name == "on-failure":
        count = int(labels.get(RESTART_COUNT_LABEL, "0") or 0)
        return exit_status != 0 and (limit == 0 or count < limit)
    return True
