"""The realistic multi-layer image: a Debian minbase root plus package and data layers.

Built once and cached (``/var/tmp/moorage-bench-cache``): debootstrap and the
package downloads come from Debian's archive, the one outside source this
machine reaches. Layer 3 deletes files of layer 1 and makes a directory
opaque, so both runtimes apply whiteouts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["CACHE", "build_big_image", "layer_blobs"]

CACHE = Path(os.environ.get("MOORAGE_BENCH_CACHE", "/var/tmp/moorage-bench-cache"))
PACKAGES = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib"]
LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def _run(*cmd: str, cwd: Path | None = None) -> None:
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL)


def _rootfs(work: Path) -> Path:
    root = work / "l1"
    if not (root / "etc" / "debian_version").exists():
        shutil.rmtree(root, ignore_errors=True)
        if shutil.which("debootstrap") is None:
            _run("apt-get", "install", "-y", "-qq", "debootstrap")
        _run("debootstrap", "--variant=minbase", "bookworm", str(root),
             "http://deb.debian.org/debian")
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    return root


def _packages(work: Path) -> Path:
    root = work / "l2"
    if not (root / ".done").exists():
        shutil.rmtree(root, ignore_errors=True)
        debs = work / "debs"
        debs.mkdir(exist_ok=True)
        _run("apt-get", "download", *PACKAGES, cwd=debs)
        root.mkdir()
        for deb in sorted(debs.glob("*.deb")):
            _run("dpkg-deb", "-x", str(deb), str(root))
        (root / ".done").touch()
    return root


def _data(work: Path) -> Path:
    """Generated files (some compressible, some not) plus whiteouts over layer 1."""
    root = work / "l3"
    if not (root / ".done").exists():
        shutil.rmtree(root, ignore_errors=True)
        rng = random.Random(42)
        for d in range(100):
            folder = root / "srv" / "data" / f"d{d:02d}"
            folder.mkdir(parents=True)
            for f in range(25):
                size = rng.choice([512, 4096, 16384, 65536])
                if (d + f) % 3:
                    payload = rng.randbytes(size)
                else:
                    payload = (f"line {f} of dir {d}\n" * (size // 16)).encode()
                (folder / f"f{f:03d}.bin").write_bytes(payload)
        (root / "srv" / "big.bin").write_bytes(rng.randbytes(8 * 1024 * 1024))
        # Whiteouts: delete two files and make one directory opaque.
        (root / "usr" / "share" / "doc").mkdir(parents=True)
        (root / "usr" / "share" / "doc" / ".wh.apt").touch()
        (root / "etc" / ".wh.motd").parent.mkdir(parents=True, exist_ok=True)
        (root / "etc" / ".wh.motd").touch()
        (root / "usr" / "share" / "info").mkdir(parents=True)
        (root / "usr" / "share" / "info" / ".wh..wh..opq").touch()
        (root / "usr" / "share" / "info" / "moorage.txt").write_text("opaque\n")
        (root / ".done").touch()
    return root


def _tar_layer(src: Path, out_dir: Path) -> tuple[dict[str, Any], str]:
    """Tar ``src`` (sorted, numeric owners), gzip it; return descriptor and diff ID."""
    tar_path = out_dir / "layer.tar"
    _run("tar", "--sort=name", "--numeric-owner", "--exclude=./.done", "-C", str(src),
         "-cf", str(tar_path), ".")
    diff = hashlib.sha256()
    with open(tar_path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            diff.update(chunk)
    gz_path = out_dir / "layer.tar.gz"
    with (
        open(tar_path, "rb") as src_fh,
        open(gz_path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz,
    ):
        shutil.copyfileobj(src_fh, gz, 1 << 20)
    tar_path.unlink()
    digest = hashlib.sha256(gz_path.read_bytes()).hexdigest()
    blob = out_dir / "blobs" / "sha256" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    gz_path.rename(blob)
    desc = {"mediaType": LAYER_GZ, "digest": f"sha256:{digest}", "size": blob.stat().st_size}
    return desc, f"sha256:{diff.hexdigest()}"


def _write_json_blob(layout: Path, obj: dict[str, Any], media_type: str) -> dict[str, Any]:
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def build_big_image() -> Path:
    """Return an OCI layout directory holding the image as ref ``big``."""
    layout = CACHE / "big-layout"
    if (layout / "index.json").exists():
        return layout
    work = CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(layout, ignore_errors=True)
    layout.mkdir(parents=True)
    layers, diff_ids = [], []
    for src in (_rootfs(work), _packages(work), _data(work)):
        desc, diff_id = _tar_layer(src, layout)
        layers.append(desc)
        diff_ids.append(diff_id)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:"
                                               "/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    config_desc = _write_json_blob(layout, config, "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": layers}
    manifest_desc = _write_json_blob(layout, manifest,
                                     "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": "big"}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "manifests": [manifest_desc]}))
    return layout


def layer_blobs(layout: Path) -> list[Path]:
    """The layer blob files of the image, bottom first."""
    index = json.loads((layout / "index.json").read_text())
    mdesc = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / mdesc).read_text())
    return [layout / "blobs" / "sha256" / layer["digest"].split(":")[1]
            for layer in manifest["layers"]]


def image_stats(layout: Path) -> dict[str, int]:
    """Uncompressed size and entry count of all layers (from the tar listings)."""
    total, files = 0, 0
    for blob in layer_blobs(layout):
        out = subprocess.run(["tar", "-tvzf", str(blob)], check=True, capture_output=True,
                             text=True).stdout.splitlines()
        files += len(out)
        total += sum(int(line.split()[2]) for line in out if line and line[0] in "-")
    return {"uncompressed_bytes": total, "entries": files}
