"""``moorage system df`` and ``system prune [-a] [-f] [--volumes]``."""

from __future__ import annotations

import json

import pytest

from tests.plugins.runtime.helpers import RuntimeDaemon
from tests.plugins.runtime.helpers import moorage_ok as ok

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root

SLEEPER = ("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")



def rows(rd: RuntimeDaemon) -> dict[str, dict[str, object]]:
    return {r["Type"]: r for r in json.loads(ok(rd, "system", "df", "--format", "json"))}


def test_df_counts_and_prune_removes_only_what_nothing_uses(
        rd: RuntimeDaemon, pushed_busybox: str) -> None:
    ok(rd, "pull", "--plain-http", "-q", pushed_busybox)
    ok(rd, "run", "-d", "--name", "up", "--net", "none", "-v", "used:/data", pushed_busybox,
       *SLEEPER)
    ok(rd, "run", "--name", "down", "--net", "none", pushed_busybox, "sh", "-c",
       "head -c 100000 /dev/zero > /big")
    ok(rd, "commit", "down", "example.com/unused:1")
    digest = rd.client().image("example.com/unused:1").target.digest
    dangling = f"example.com/dangling@{digest}"
    ok(rd, "tag", "example.com/unused:1", dangling)
    ok(rd, "volume", "create", "spare")

    found = rows(rd)
    assert (found["Images"]["TotalCount"], found["Images"]["Active"]) == (2, 1)
    assert 0 < int(found["Images"]["Reclaimable"]) < int(found["Images"]["Size"])
    assert (found["Containers"]["TotalCount"], found["Containers"]["Active"]) == (2, 1)
    assert int(found["Containers"]["Reclaimable"]) >= 100000  # what "down" wrote
    assert (found["Local Volumes"]["TotalCount"], found["Local Volumes"]["Active"]) == (2, 1)
    assert found["Build Cache"]["TotalCount"] == 0
    table = ok(rd, "system", "df").splitlines()
    assert table[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert [line.split()[0] for line in table[1:]] == ["Images", "Containers", "Local",
                                                      "Build"]

    # Asked, and not confirmed: nothing goes.
    assert "Are you sure" in ok(rd, "system", "prune", input="n\n")
    assert sorted(ok(rd, "ps", "-a", "-q").split()) == ["down", "up"]

    out = ok(rd, "system", "prune", "-f")
    assert "Deleted Containers:\ndown\n" in out
    assert f"untagged: {dangling}\n" in out
    assert "example.com/unused:1" not in out and "Deleted Volumes" not in out
    assert "Total reclaimed space:" in out
    assert ok(rd, "ps", "-a", "-q").split() == ["up"]
    names = {i.name for i in rd.client().images()}
    assert "example.com/unused:1" in names and dangling not in names

    out = ok(rd, "system", "prune", "-a", "-f", "--volumes")
    assert "untagged: example.com/unused:1\n" in out
    assert "Deleted Volumes:\nspare\n" in out
    assert {i.name for i in rd.client().images()} == {pushed_busybox}
    assert [v["name"] for v in rd.client().call("GET", "/v1/volumes", list)] == ["used"]
    assert ok(rd, "inspect", "-f", "{{.State.Status}}", "up") == "running\n"
    found = rows(rd)
    assert (found["Images"]["TotalCount"], found["Containers"]["TotalCount"]) == (1, 1)
