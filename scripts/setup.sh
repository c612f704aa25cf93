#!/usr/bin/env bash
# Installs what Moorage needs on a fresh Debian 12 machine (as root): the OCI
# runtimes and tools the daemon drives, the tools the tests use, and the
# package itself with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
    runc crun conmon                       # OCI runtimes and the task monitor
    docker-registry skopeo umoci           # registry and image tools (tests, interop)
    busybox-static                         # test images are built from it
    containernetworking-plugins iproute2   # CNI networking
    iptables                               # CNI port publishing (portmap) and NAT
    btrfs-progs e2fsprogs util-linux       # btrfs snapshotter, loop filesystems
    containerd                             # the benchmark's reference
    apache2-utils                          # htpasswd for the auth registry tests
    systemd                                # systemd-analyze verify of contrib/systemd
    catatonit                              # the CRI pod sandbox's infra PID 1
    gcc libc6-dev                          # the seccomp tests build a static syscall helper
)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -i "warning" || true
# Plugin packages that live in this repository but ship separately; their tests
# are part of the test run (testpaths in pyproject.toml).
for contrib in ./contrib/moorage-snapshotter-btrfs ./contrib/moorage-proxy-example; do
    "$PYTHON" -m pip install -q --disable-pip-version-check -e "$contrib" 2>&1 | grep -v -i "warning" || true
done
"$PYTHON" -c "import runtime, moorage_snapshotter_btrfs, moorage_proxy_example" >/dev/null
# These machines set PYTHONDONTWRITEBYTECODE: without compiled bytecode every
# `moorage` process (the CLI, each test's daemon) recompiles what it imports.
"$PYTHON" -m compileall -q runtime contrib >/dev/null || true
