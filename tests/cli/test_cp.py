"""``moorage cp``: host <-> container through the daemon's archive API, confined to the root."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from tests.plugins.runtime.helpers import RuntimeDaemon, moorage
from tests.plugins.runtime.helpers import moorage_ok as ok

pytest_plugins = ["tests.plugins.runtime.runtime_fixtures"]

pytestmark = pytest.mark.root

SLEEPER = ("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
MTIME = 1_600_000_000



def refused(rd: RuntimeDaemon, *args: str) -> str:
    result = moorage(rd.address, *args)
    assert result.returncode == 125, (result.stdout, result.stderr)
    return result.stderr


def created(rd: RuntimeDaemon, rootfs: Path, name: str, *, start: bool) -> None:
    ok(rd, "create", "--name", name, "--net", "none", "--rootfs", str(rootfs), "busybox",
       *SLEEPER)
    if start:
        ok(rd, "start", name)


def tree(where: Path) -> Path:
    """``src/``: a file owned 1234:5678 mode 0640, a 0700 subdirectory, a symlink."""
    src = where / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("alpha\n")
    (src / "sub" / "c").write_text("gamma\n")
    os.symlink("a", src / "link")
    os.chown(src / "a", 1234, 5678)
    os.chmod(src / "a", 0o640)
    os.chmod(src / "sub", 0o700)
    for path in (src / "a", src / "sub" / "c", src / "sub"):
        os.utime(path, (MTIME, MTIME))
    return src


def meta(path: Path) -> tuple[int, int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), int(st.st_mtime)


def test_cp_into_a_running_container_and_back_keeps_owners_modes_and_links(
        rd: RuntimeDaemon, rootfs: Path, tmp_path: Path) -> None:
    created(rd, rootfs, "web", start=True)
    src = tree(tmp_path)
    assert ok(rd, "cp", str(src), "web:/tmp") == ""
    assert ok(rd, "exec", "web", "cat", "/tmp/src/a", "/tmp/src/sub/c") == "alpha\ngamma\n"
    listing = ok(rd, "exec", "web", "ls", "-ln", "/tmp/src/a")
    assert listing.split()[0] == "-rw-r-----" and listing.split()[2:4] == ["1234", "5678"]

    back = tmp_path / "back"
    back.mkdir()
    assert ok(rd, "cp", "web:/tmp/src", str(back)) == ""
    copied = back / "src"
    assert (copied / "a").read_text() == "alpha\n"
    assert meta(copied / "a") == (1234, 5678, 0o640, MTIME)
    assert meta(copied / "sub") == meta(src / "sub")
    assert os.readlink(copied / "link") == "a"

    # A new name on either side; '-' streams the tar.
    ok(rd, "cp", str(src / "a"), "web:/tmp/renamed")
    assert ok(rd, "exec", "web", "cat", "/tmp/renamed") == "alpha\n"
    ok(rd, "cp", "web:/tmp/renamed", str(tmp_path / "again"))
    assert (tmp_path / "again").read_text() == "alpha\n"
    raw = subprocess.run([sys.executable, "-m", "runtime.cli.main", "--address", rd.address,
                          "cp", "web:/tmp/src/sub", "-"], capture_output=True, check=True)
    with tarfile.open(fileobj=BytesIO(raw.stdout)) as tar:
        assert tar.getnames() == ["sub", "sub/c"]


def test_cp_reaches_a_stopped_container_through_its_snapshot(
        rd: RuntimeDaemon, pushed_busybox: str, tmp_path: Path) -> None:
    ok(rd, "pull", "--plain-http", "-q", pushed_busybox)
    ok(rd, "create", "--name", "later", "--net", "none", pushed_busybox, "cat", "/hello")
    (tmp_path / "hello").write_text("from the host\n")
    ok(rd, "cp", str(tmp_path / "hello"), "later:/")
    result = moorage(rd.address, "start", "-a", "later")
    assert (result.returncode, result.stdout) == (0, "from the host\n"), result.stderr
    ok(rd, "cp", "later:/hello", str(tmp_path / "out"))
    assert (tmp_path / "out").read_text() == "from the host\n"


def test_cp_never_leaves_the_container_root(
        rd: RuntimeDaemon, rootfs: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("HOST\n")
    hostdir = tmp_path / "hostdir"
    hostdir.mkdir()
    # Absolute symlinks in the container naming host paths: inside, they name nothing.
    os.symlink(str(secret), rootfs / "leak")
    os.symlink(str(hostdir), rootfs / "hostdir")
    os.symlink("../../../../../..", rootfs / "up")
    created(rd, rootfs, "jail", start=False)  # stopped: its root is the --rootfs directory
    out = tmp_path / "out"
    out.mkdir()
    payload = tmp_path / "payload"
    payload.write_text("pwned\n")

    assert "climbs out of the container's root" in refused(
        rd, "cp", "jail:/../../../etc/passwd", str(out))
    assert "'../x'" in refused(rd, "cp", str(payload), "jail:../x")
    assert "no such file or directory" in refused(rd, "cp", "-L", "jail:/leak", str(out))
    assert "no such file or directory" in refused(rd, "cp", "-L", "jail:/up" + str(secret),
                                                  str(out))
    refused(rd, "cp", str(payload), "jail:/hostdir/")
    refused(rd, "cp", str(payload), "jail:/up" + str(hostdir) + "/")
    assert "no such container: nosuch" in refused(rd, "cp", str(payload), "nosuch:/tmp")
    assert "exactly one side" in refused(rd, "cp", str(payload), str(out))

    assert list(out.iterdir()) == []
    assert list(hostdir.iterdir()) == []
    assert secret.read_text() == "HOST\n"
    # Without -L the link itself is copied: a symlink, its target never read.
    ok(rd, "cp", "jail:/leak", str(out))
    assert os.readlink(out / "leak") == str(secret)
    # Writing through the link replaces the link in the container, not the host file.
    ok(rd, "cp", str(payload), "jail:/leak")
    assert secret.read_text() == "HOST\n"
    assert (rootfs / "leak").read_text() == "pwned\n" and not (rootfs / "leak").is_symlink()


def test_the_archive_api_refuses_hostile_tars_and_paths_writing_nothing(
        rd: RuntimeDaemon, rootfs: Path, tmp_path: Path) -> None:
    from runtime.core.errors import InvalidArgument

    created(rd, rootfs, "target", start=False)
    api = rd.client()
    before = sorted(p.name for p in tmp_path.iterdir())

    def tar_of(name: str) -> bytes:
        data = BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 5
            tar.addfile(info, BytesIO(b"owned"))
        return data.getvalue()

    for path, body in (("/../..", tar_of("x")), ("/tmp", tar_of("../../../../escape")),
                       ("/tmp", b"not a tar at all" * 64)):
        with pytest.raises(InvalidArgument):
            api.call("PUT", "/v1/containers/target/archive", query={"path": path},
                     data=body, headers={"Content-Type": "application/x-tar"})
    with pytest.raises(InvalidArgument, match="climbs out"):
        api.call("GET", "/v1/containers/target/archive/stat", query={"path": "/x/../../y"})
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (rootfs / "escape").exists() and list((rootfs / "tmp").iterdir()) == []
    assert api.healthz() is not None


def test_cp_from_stdin_unpacks_a_tar_into_a_container_directory(
        rd: RuntimeDaemon, rootfs: Path) -> None:
    created(rd, rootfs, "fed", start=False)
    data = BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("from-stdin")
        info.size, info.mode, info.uid, info.gid = 3, 0o604, 7, 8
        tar.addfile(info, BytesIO(b"hi\n"))
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "--address", rd.address,
                           "cp", "-", "fed:/tmp"], input=data.getvalue(), capture_output=True)
    assert done.returncode == 0, done.stderr
    assert (rootfs / "tmp" / "from-stdin").read_text() == "hi\n"
    assert meta(rootfs / "tmp" / "from-stdin")[:3] == (7, 8, 0o604)


def test_cp_into_a_running_container_reaches_its_volumes(
        rd: RuntimeDaemon, rootfs: Path, tmp_path: Path) -> None:
    # A live task's root is /proc/<pid>/root: its mounts (a named volume here) are there too.
    ok(rd, "run", "-d", "--name", "vol", "--net", "none", "-v", "shared:/data", "--rootfs",
       str(rootfs), "busybox", *SLEEPER)
    (tmp_path / "note").write_text("into the volume\n")
    ok(rd, "cp", str(tmp_path / "note"), "vol:/data/")
    [volume] = rd.client().call("GET", "/v1/volumes", list)
    assert (Path(volume["mountpoint"]) / "note").read_text() == "into the volume\n"
    assert not (rootfs / "data" / "note").exists()
