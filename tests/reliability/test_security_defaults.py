"""Security defaults: the default seccomp profile, and groups that come from the image only.

Containers run from a busybox directory with a tiny static helper (compiled here, from
C, at test time) that makes one raw system call and prints the errno it got. Under the
default profile the calls Docker's profile refuses fail with EPERM; ``--security-opt
seccomp=unconfined`` and ``--privileged`` lift the filter, and ``seccomp=PATH`` applies
the user's own profile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.api.specs import SpecOptions
from runtime.pkg.oci.spec import DEFAULT_CAPABILITIES, generate_spec
from runtime.pkg.seccomp import default_profile
from tests.fixtures.daemon import Daemon
from tests.fixtures.system import require_binary, require_root

pytestmark = pytest.mark.root

#: One raw system call per argument, so that libc cannot hide or emulate it.
_HELPER_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
    char params[120] = {0};
    long r;
    if (argc != 2) return 2;
    if (!strcmp(argv[1], "io_uring_setup")) r = syscall(__NR_io_uring_setup, 4, params);
    /* KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING: runc gives each container one. */
    else if (!strcmp(argv[1], "keyctl")) r = syscall(__NR_keyctl, 0, -3, 0);
    else return 2;
    if (r < 0) { printf("%s: %s\n", argv[1], strerror(errno)); return 1; }
    printf("%s: ok\n", argv[1]);
    return 0;
}
"""

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
_GROUP = ("root:x:0:\nwheel:x:10:alice\naudio:x:29:bob,alice\nstaff:x:50:bob\n"
          "alice:x:1000:\n")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Busybox with ``unshare``, the syscall helper, and an image's own passwd and group."""
    from tests.plugins.runtime.helpers import make_rootfs, require_runtime_host

    require_runtime_host()
    require_binary("gcc")
    base = tmp_path_factory.mktemp("security")
    root = make_rootfs(base / "rootfs")
    (root / "bin" / "unshare").symlink_to("busybox")
    source = base / "syscall.c"
    source.write_text(_HELPER_SOURCE)
    built = subprocess.run(["gcc", "-static", "-O", "-o", str(root / "bin" / "syscall"),
                            str(source)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text(_PASSWD)
    (root / "etc" / "group").write_text(_GROUP)
    return root


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    require_root()
    with Daemon(tmp_path_factory.mktemp("security-daemon") / "d") as running:
        yield running


def _run(daemon: Daemon, rootfs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``moorage run --rm --rootfs ROOTFS [flags...] busybox [command...]``; flags end at ``--``."""
    from tests.plugins.runtime.helpers import moorage

    split = args.index("--")
    flags, command = args[:split], args[split + 1 :]
    return moorage(daemon.address, "-n", "security", "run", "--rm", "--net", "none",
                   "--rootfs", str(rootfs), *flags, "busybox", *command)


# -- the default seccomp profile ----------------------------------------------------------

_BLOCKED = {
    "unshare": ("unshare", "-U", "true"),
    "keyctl": ("syscall", "keyctl"),
    "io_uring_setup": ("syscall", "io_uring_setup"),
}


@pytest.mark.parametrize("call", sorted(_BLOCKED))
def test_default_profile_refuses_the_call_with_eperm(daemon: Daemon, rootfs: Path,
                                                     call: str) -> None:
    done = _run(daemon, rootfs, "--", *_BLOCKED[call])
    assert done.returncode != 0, done
    assert "Operation not permitted" in done.stdout + done.stderr, done


@pytest.mark.parametrize("call", sorted(_BLOCKED))
def test_unconfined_allows_the_call(daemon: Daemon, rootfs: Path, call: str) -> None:
    done = _run(daemon, rootfs, "--security-opt", "seccomp=unconfined", "--", *_BLOCKED[call])
    assert done.returncode == 0, done


def test_privileged_runs_unconfined(daemon: Daemon, rootfs: Path) -> None:
    done = _run(daemon, rootfs, "--privileged", "--", "syscall", "io_uring_setup")
    assert done.returncode == 0, done
    assert "io_uring_setup: ok" in done.stdout


def test_ordinary_programs_run_under_the_default_profile(daemon: Daemon, rootfs: Path) -> None:
    """Forks, threads of the shell's pipes, files, signals: nothing a container needs is cut."""
    done = _run(daemon, rootfs, "--", "sh", "-c",
                "echo a > /tmp/f && cat /tmp/f | wc -c && (sleep 0.1 & wait) && id -u")
    assert done.returncode == 0, done
    assert done.stdout.split() == ["2", "0"]


def test_profile_from_a_path(daemon: Daemon, rootfs: Path, tmp_path: Path) -> None:
    """``seccomp=PATH``: the user's profile (here: all but keyctl) replaces the default."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    done = _run(daemon, rootfs, "--security-opt", f"seccomp={path}", "--", "sh", "-c",
                "syscall io_uring_setup; syscall keyctl")
    assert done.returncode != 0, done
    assert done.stdout.splitlines() == ["io_uring_setup: ok",
                                        "keyctl: Operation not permitted"], done


def test_unreadable_or_invalid_profile_is_refused(daemon: Daemon, rootfs: Path,
                                                  tmp_path: Path) -> None:
    missing = _run(daemon, rootfs, "--security-opt", f"seccomp={tmp_path}/none.json", "--",
                   "true")
    assert missing.returncode == 125 and "cannot read" in missing.stderr, missing
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_MAYBE"}')
    invalid = _run(daemon, rootfs, "--security-opt", f"seccomp={bad}", "--", "true")
    assert invalid.returncode == 125 and "SCMP_ACT_MAYBE" in invalid.stderr, invalid
    other = _run(daemon, rootfs, "--security-opt", "apparmor=x", "--", "true")
    assert other.returncode == 125 and "seccomp=unconfined" in other.stderr, other


def test_capability_gates_follow_the_capability_set() -> None:
    """CAP_SYS_ADMIN brings mount and unshare, and lets clone make namespaces."""
    plain = default_profile(DEFAULT_CAPABILITIES)
    admin = default_profile([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])

    def rules(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
        return [r for r in profile["syscalls"] if name in r["names"]]

    assert plain["defaultAction"] == "SCMP_ACT_ERRNO" and plain["defaultErrnoRet"] == 1
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"] \
        or os.uname().machine != "x86_64"
    for name in ("mount", "unshare", "setns", "keyctl", "io_uring_setup", "io_uring_enter"):
        assert not [r for r in rules(plain, name) if r["action"] == "SCMP_ACT_ALLOW"], name
    [clone] = rules(plain, "clone")
    assert clone["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    assert [r["action"] for r in rules(plain, "clone3")] == ["SCMP_ACT_ERRNO"]
    for name in ("mount", "unshare", "setns", "clone", "clone3"):
        assert any(r["action"] == "SCMP_ACT_ALLOW" and "args" not in r
                   for r in rules(admin, name)), name
    assert not rules(admin, "io_uring_setup")


def test_generated_spec_carries_the_profile_unless_unconfined_or_privileged() -> None:
    spec = generate_spec("ns", "c", None, SpecOptions(args=["true"]))
    assert spec["linux"]["seccomp"] == default_profile(DEFAULT_CAPABILITIES)
    for options in (SpecOptions(args=["true"], seccomp="unconfined"),
                    SpecOptions(args=["true"], privileged=True)):
        assert "seccomp" not in generate_spec("ns", "c", None, options)["linux"]


def test_containers_create_takes_the_same_flags(daemon: Daemon, rootfs: Path) -> None:
    from tests.plugins.runtime.helpers import moorage

    api = daemon.client("security")
    for cid, flags in (("sec-default", ()), ("sec-unconfined", ("--security-opt",
                                                                "seccomp=unconfined"))):
        made = moorage(daemon.address, "-n", "security", "containers", "create", *flags,
                       "--rootfs", str(rootfs), "busybox", cid, "true")
        assert made.returncode == 0, made.stderr
    try:
        assert api.container("sec-default").spec["linux"]["seccomp"]["defaultAction"] \
            == "SCMP_ACT_ERRNO"
        assert "seccomp" not in api.container("sec-unconfined").spec["linux"]
    finally:
        for cid in ("sec-default", "sec-unconfined"):
            api.delete_container(cid)


# -- supplementary groups -------------------------------------------------------------------


def test_numeric_user_and_group_get_no_other_groups(daemon: Daemon, rootfs: Path) -> None:
    """``-u 1234:1234``: a uid the image does not name has its gid only, never the daemon's."""
    done = _run(daemon, rootfs, "-u", "1234:1234", "--", "id", "-G")
    assert done.returncode == 0, done
    assert done.stdout.split() == ["1234"]


def test_numeric_user_gets_its_groups_from_the_image(daemon: Daemon, rootfs: Path) -> None:
    """uid 1000 is alice in the image's passwd: her groups there, with the gid asked for."""
    done = _run(daemon, rootfs, "-u", "1000:1000", "--", "id", "-G")
    assert done.returncode == 0, done
    assert done.stdout.split() == ["1000", "10", "29"]
    named = _run(daemon, rootfs, "-u", "alice:staff", "--", "id", "-G")
    assert named.returncode == 0, named
    assert named.stdout.split() == ["50", "10", "29"]


def test_root_in_an_image_without_group_file_has_only_gid_0(daemon: Daemon, rootfs: Path,
                                                            tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(rootfs, bare, symlinks=True)
    (bare / "etc" / "group").unlink()
    done = _run(daemon, bare, "-u", "0:0", "--", "id", "-G")
    assert done.returncode == 0, done
    assert done.stdout.split() == ["0"]
