"""The daemon imports aiohttp without loading CA certificates it never uses."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import os, ssl
os.environ["SSL_CERT_FILE"] = "/operator/own.pem"
os.environ.pop("SSL_CERT_DIR", None)
from runtime.core.daemon import _without_default_certificates
with _without_default_certificates():
    import aiohttp.connector
from runtime.pkg.registry.auth import verified_tls
print(aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"])
print(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
del os.environ["SSL_CERT_FILE"]
print(verified_tls().verify_mode == ssl.CERT_REQUIRED, verified_tls() is verified_tls())
"""


def test_aiohttp_default_contexts_stay_empty_and_the_environment_is_restored() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "0"
    assert out[1] == "/operator/own.pem None"
    # The registry client's own context verifies, and is made once.
    assert out[2] == "True True"


_FIRST_IMPORT_PROBE = """
import os, sys
os.environ["SSL_CERT_FILE"] = "/operator/own.pem"
os.environ.pop("SSL_CERT_DIR", None)
from runtime.core.daemon import _shape_aiohttp_when_imported
_shape_aiohttp_when_imported()
assert "aiohttp" not in sys.modules
import aiohttp
import aiohttp.connector
import frozenlist
print(aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"])
print(frozenlist.FrozenList.__module__)
print(os.environ.get("SSL_CERT_FILE"), os.environ.get("FROZENLIST_NO_EXTENSIONS"))
print(aiohttp.ClientSession.__name__)
"""


def test_aiohttp_imported_later_gets_the_same_choices() -> None:
    """The daemon imports aiohttp at its first pull; it still skips the CAs and libstdc++."""
    out = subprocess.run([sys.executable, "-c", _FIRST_IMPORT_PROBE], capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[0] == "0"
    assert out[1] == "frozenlist"
    assert out[2] == "/operator/own.pem None"
    assert out[3] == "ClientSession"
