"""aiohttp's low-level server against a full ``web.Application``: idle RSS and import CPU.

``python benchmarks/server_rss.py [--python PY] [--reps 5]``

Each variant runs in a fresh interpreter with the daemon's environment around
the aiohttp import (the pure-Python ``FrozenList``, no CA certificates loaded),
serves one ``GET`` on a unix socket and reports ``VmRSS`` after answering it
and the CPU spent until then. The variants alternate, repetition by repetition.

* ``python``: the interpreter with ``asyncio`` only (the floor of either);
* ``lowlevel``: ``aiohttp.web_server.Server`` with a raw handler returning a
  ``web_response.Response`` (no application, router, middlewares, runner);
* ``application``: ``web.Application`` with one route, ``AppRunner`` and
  ``SockSite`` (what the admin API used until performance.md 22);
* ``pkghttp``: :mod:`runtime.pkg.http` (what the admin API uses), one route.

The interpreter must be able to import ``runtime`` for ``pkghttp``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

COMMON = r"""
import os, sys, time, asyncio, socket
os.environ["FROZENLIST_NO_EXTENSIONS"] = "1"
os.environ["SSL_CERT_FILE"] = os.environ["SSL_CERT_DIR"] = "/nonexistent"
path = sys.argv[1]

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

async def get():
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"GET /v1/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:40]
"""

VARIANTS = {
    "python": COMMON + r"""
async def main():
    async def handle(r, w):
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await w.drain()
        w.close()
    server = await asyncio.start_unix_server(handle, path)
    await get()
    print(rss(), time.process_time())
asyncio.run(main())
""",
    "lowlevel": COMMON + r"""
from aiohttp import web_response, web_server
async def main():
    async def handler(request):
        return web_response.Response(body=b"{}", content_type="application/json")
    server = web_server.Server(handler)
    await asyncio.get_running_loop().create_unix_server(server, path)
    await get()
    print(rss(), time.process_time())
asyncio.run(main())
""",
    "application": COMMON + r"""
from aiohttp import web
async def main():
    async def version(request):
        return web.json_response({})
    app = web.Application()
    app.router.add_get("/v1/version", version)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(128)
    await web.SockSite(runner, sock).start()
    await get()
    print(rss(), time.process_time())
asyncio.run(main())
""",
    "pkghttp": COMMON + r"""
from runtime.pkg.http import web
async def main():
    async def version(request):
        return web.json_response({})
    app = web.Application()
    app.router.add_get("/v1/version", version)
    server = web.HttpServer(app)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(128)
    await server.serve_socket(sock)
    await get()
    print(rss(), time.process_time())
asyncio.run(main())
""",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    samples: dict[str, list[tuple[int, float]]] = {k: [] for k in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="server-rss-") as tmp:
        for rep in range(args.reps):
            names = list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]
            for name in names:
                path = os.path.join(tmp, f"{name}-{rep}.sock")
                out = subprocess.run([args.python, "-c", VARIANTS[name], path], check=True,
                                     capture_output=True, text=True, cwd="/").stdout.split()
                samples[name].append((int(out[0]), float(out[1])))
    result = {name: {"rss_kb": statistics.median(r for r, _ in v),
                     "rss_kb_all": [r for r, _ in v],
                     "cpu_ms": round(statistics.median(c for _, c in v) * 1000, 1)}
              for name, v in samples.items()}
    for name, r in result.items():
        print(f"{name:12} RSS {r['rss_kb']:>7,} KiB {r['rss_kb_all']}  CPU {r['cpu_ms']} ms")
    print(json.dumps({"python": args.python, "load": os.getloadavg()[0], "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
