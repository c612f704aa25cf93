"""The iptables rules CNI plugins leave behind when an attachment's namespace is gone before DEL.

The bridge plugin (containernetworking-plugins 1.1, Debian 12's) reads the
addresses it masquerades from the container's interface on DEL: with the
network namespace gone (removed by hand, or a DEL retried after a failed
one), it releases the address but keeps its ``CNI-<hash>`` chain and the
``POSTROUTING`` jump to it. Every rule the plugins write for an attachment
carries the comment ``name: "<network>" id: "<container id>"`` (portmap's
prefixes it with ``dnat``), so after such a DEL :func:`remove_leftover_rules`
deletes the rules with that comment and the per-attachment chains they jump to.
The shared chains (``CNI-HOSTPORT-*``, ``CNI-FORWARD``, ``CNI-ADMIN``) stay.

Blocks: call it from a worker thread.
"""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess

__all__ = ["remove_leftover_rules"]

_TABLES = ("nat", "filter")
#: The chains made for one attachment: ipMasq's ``CNI-<hash>``, portmap's ``CNI-DN-<hash>``.
_ATTACHMENT_CHAIN = re.compile(r"^CNI-(?:DN-)?[0-9a-f]{16,}$")


def _jump_target(rule: list[str]) -> str:
    for flag, value in itertools.pairwise(rule):
        if flag in ("-j", "-g"):
            return value
    return ""


def _commented(rule: list[str], comment: str) -> bool:
    return any(flag == "--comment" and comment in value
               for flag, value in itertools.pairwise(rule))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


def remove_leftover_rules(network: str, container_id: str) -> list[str]:
    """Delete the rules commented for ``container_id`` on ``network``, and their chains.

    ``container_id`` is the id the plugins were given (``CNI_CONTAINERID``).
    Returns what was deleted, as ``table: rule`` (for the log).
    """
    comment = f'name: "{network}" id: "{container_id}"'
    deleted: list[str] = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in _TABLES:
            listed = _run(tool, "-w", "-t", table, "-S")
            if listed.returncode != 0:
                continue
            rules = [shlex.split(line) for line in listed.stdout.splitlines() if line.strip()]
            ours = [r for r in rules if r[0] == "-A" and _commented(r, comment)]
            chains = {t for t in map(_jump_target, ours) if _ATTACHMENT_CHAIN.match(t)}
            # Jumps from the shared chains first, then the chains (with what is inside).
            for rule in ours:
                if rule[1] not in chains and _run(tool, "-w", "-t", table, "-D",
                                                  *rule[1:]).returncode == 0:
                    deleted.append(f"{table}: {shlex.join(rule)}")
            for chain in sorted(chains):
                _run(tool, "-w", "-t", table, "-F", chain)
                if _run(tool, "-w", "-t", table, "-X", chain).returncode == 0:
                    deleted.append(f"{table}: -X {chain}")
    return deleted
