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


def test_generated_specs_share_nothing_with_each_other_or_their_inputs() -> None:
    import json

    from runtime.api.specs import ImageConfig, SpecMount

    image = ImageConfig(entrypoint=["/bin/sh"], cmd=["-c", "true"], env=["A=1"])
    options = SpecOptions(env=["B=2"], annotations={"k": "v"},
                          mounts=[SpecMount(destination="/data", source="/srv", type="bind")])
    first = generate_spec("ns", "c1", image, options)
    second = generate_spec("ns", "c2", image, options)
    snapshot = json.loads(json.dumps(second))
    # Change every mutable value of the first; the others and the inputs stay as they were.
    pending: list[object] = [first]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            pending.extend(node.values())
            node["changed"] = True
        elif isinstance(node, list):
            pending.extend(node)
            node.append("changed")
    assert second == snapshot
    assert generate_spec("ns", "c2", image, options) == snapshot  # nothing cached was changed
    assert (image.entrypoint, image.cmd, image.env) == (["/bin/sh"], ["-c", "true"], ["A=1"])
    assert (options.env, options.annotations, options.mounts[0].options) == (
        ["B=2"], {"k": "v"}, [])
