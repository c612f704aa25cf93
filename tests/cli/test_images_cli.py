"""``moorage images ...`` and ``moorage pull`` against a real daemon and registry."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.cli.main import main
from tests.fixtures.daemon import Daemon
from tests.fixtures.images import ImageLayout, read_blob_json
from tests.fixtures.registry import Registry
from tests.fixtures.system import require_root

pytestmark = pytest.mark.root


class Cli:
    """``moorage --address <daemon> ...`` in process; returns (exit code, stdout, stderr)."""

    def __init__(self, address: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.address = address
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--address", self.address, *args])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        return out


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    require_root()
    with Daemon(tmp_path / "daemon") as daemon:
        yield Cli(daemon.address, capsys)


@pytest.fixture
def ref(registry: Registry, multilayer_layout: ImageLayout) -> str:
    return registry.push_layout(
        multilayer_layout.path, multilayer_layout.ref_name, "cli/multilayer:latest"
    )


def test_pull_quiet_prints_the_name_and_ls_lists_it(cli: Cli, ref: str) -> None:
    assert cli.ok("pull", "--plain-http", "-q", ref) == f"{ref}\n"
    assert cli.ok("images", "ls", "-q") == f"{ref}\n"
    table = cli.ok("images", "ls").splitlines()
    assert table[0].split() == ["REF", "TYPE", "DIGEST", "SIZE", "LABELS"]
    assert table[1].split()[:2] == [ref, "manifest"]


def test_pull_quiet_and_verbose_report_the_same_error(cli: Cli, registry: Registry) -> None:
    """The quiet pull's standard-library client rebuilds the daemon's error as the typed one."""
    missing = f"{registry.host}/cli/missing:latest"
    quiet = cli("pull", "--plain-http", "-q", missing)
    verbose = cli("images", "pull", "--plain-http", missing)
    assert quiet[0] == verbose[0] == 1
    assert quiet[2] == verbose[2]
    assert quiet[2].startswith("moorage: not_found: ") and missing in quiet[2]


def test_pull_without_a_terminal_prints_one_line_per_blob(cli: Cli, ref: str) -> None:
    code, out, err = cli("images", "pull", "--plain-http", ref)
    assert (code, out) == (0, "")
    lines = err.splitlines()
    assert lines[0].startswith(f"{ref}: resolved to sha256:")
    assert sum(" layer " in f" {line} " for line in lines) >= 3
    assert lines[-1].startswith(f"pulled {ref} (sha256:")


def test_tag_label_check_inspect_and_rm(cli: Cli, ref: str, multilayer_layout: ImageLayout) -> None:
    cli.ok("pull", "--plain-http", "-q", ref)
    assert cli.ok("images", "tag", ref, "example.com/copy:v1") == "example.com/copy:v1\n"
    code, _, err = cli("images", "tag", ref, "example.com/copy:v1")
    assert code == 1 and "already_exists" in err
    cli.ok("images", "tag", "--force", ref, "example.com/copy:v1")
    assert "team=ci" in cli.ok("images", "label", "example.com/copy:v1", "team=ci")
    assert cli.ok("images", "ls", "-q", "labels.team==ci") == "example.com/copy:v1\n"
    check = cli.ok("images", "check").splitlines()
    assert len(check) == 3 and all("complete" in line for line in check[1:])
    doc = json.loads(cli.ok("images", "inspect", "example.com/copy:v1"))
    assert doc["image"]["target"]["digest"] == multilayer_layout.descriptor.digest
    assert doc["check"]["complete"] is True
    assert cli.ok("images", "rm", "example.com/copy:v1") == "example.com/copy:v1\n"
    code, _, err = cli("images", "rm", "example.com/copy:v1")
    assert code == 1 and "not_found" in err


def test_export_then_import_round_trips(cli: Cli, ref: str, tmp_path: Path) -> None:
    cli.ok("pull", "--plain-http", "-q", ref)
    archive = tmp_path / "out.tar"
    cli.ok("images", "export", str(archive), ref)
    cli.ok("images", "rm", ref)
    assert cli.ok("images", "import", str(archive)) == f"{ref}\n"
    assert cli.ok("images", "check", ref).splitlines()[1].split()[1] == "complete"


def test_mount_shows_the_root_filesystem_and_unmount_cleans_up(
    cli: Cli, ref: str, tmp_path: Path, multilayer_layout: ImageLayout
) -> None:
    cli.ok("pull", "--plain-http", "-q", ref)
    target = tmp_path / "rootfs"
    target.mkdir()
    assert cli.ok("images", "mount", ref, str(target)) == f"{target}\n"
    try:
        assert (target / "app" / "config.txt").read_text() == "v2\n"
        assert not (target / "app" / "remove-me.txt").exists()
        with pytest.raises(OSError):
            (target / "new-file").write_text("read-only view")
    finally:
        assert cli.ok("images", "unmount", "--rm", str(target)) == f"{target}\n"
    assert not os.path.ismount(target)
    assert cli.ok("leases", "ls", "-q") == ""
    usage = json.loads(cli.ok("images", "usage", "--format", "json", ref))
    manifest = multilayer_layout.manifest()
    config = read_blob_json(multilayer_layout.path, manifest["config"]["digest"])
    assert usage["snapshotter"] == "overlayfs"
    assert usage["snapshots"] == len(config["rootfs"]["diff_ids"])
    assert usage["blobs"] == 2 + len(manifest["layers"])
    assert usage["content_size"] == multilayer_layout.descriptor.size + manifest["config"][
        "size"
    ] + sum(x["size"] for x in manifest["layers"])
