"""Generated specs: where the container's cgroup goes (pure data, no runtime needed)."""

from __future__ import annotations

from runtime.api.specs import SpecOptions
from runtime.pkg.oci.spec import cgroups_path, generate_spec

TRUE = SpecOptions(args=["true"])


def test_cgroup_is_under_moorage_by_default() -> None:
    assert generate_spec("default", "c1", None, TRUE)["linux"]["cgroupsPath"] == \
        "/moorage/default/c1"


def test_cgroup_is_under_the_daemon_s_cgroup_parent() -> None:
    spec = generate_spec("team-a", "web", None, TRUE, cgroup_parent="/ci/run-17")
    assert spec["linux"]["cgroupsPath"] == "/ci/run-17/team-a/web"


def test_root_cgroup_parent_gives_containerd_s_layout() -> None:
    assert cgroups_path("k8s.io", "c1", "/") == "/k8s.io/c1"
