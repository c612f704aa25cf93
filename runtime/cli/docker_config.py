"""Docker's ``config.json`` of the user running the CLI: registry credentials, read and written.

The file is ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``, as
Docker and nerdctl use it, so a ``docker login`` made earlier serves Moorage
and the other way round. Credentials live in one of three places, looked up in
this order for a host:

* ``credHelpers[host]``: the named helper ``docker-credential-<name>``;
* ``credsStore``: the helper for every host;
* ``auths[host].auth``: base64 of ``user:password`` in the file itself.

A helper speaks Docker's credential-helper protocol: the verb (``get``,
``store``, ``erase``) is its argument; ``get`` and ``erase`` read the server
URL on stdin, ``store`` reads ``{"ServerURL", "Username", "Secret"}``; ``get``
answers that JSON on stdout, or fails with "credentials not found". The daemon
never reads this file (it is the caller's, not the daemon's): the CLI sends the
credentials with each pull and push.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from runtime.core.errors import InvalidArgument, Unavailable
from runtime.pkg.registry.reference import normalize_host

__all__ = ["DOCKER_HUB_KEY", "DockerConfig", "credentials_for", "server_key"]

#: The key Docker files Docker Hub's credentials under.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
#: The user name a helper answers for an identity token (Docker's convention).
_TOKEN_USER = "<token>"
_HELPER_TIMEOUT = 60.0


def server_key(host: str) -> str:
    """The ``auths`` key and helper server URL Docker uses for ``host``."""
    host = normalize_host(host)
    return DOCKER_HUB_KEY if host == "docker.io" else host


class DockerConfig:
    """One user's ``config.json``, loaded; :meth:`save` writes it back atomically, mode 0600.

    Args:
        path: The file (default: ``$DOCKER_CONFIG/config.json`` or
            ``~/.docker/config.json``). A missing file is an empty config.

    Raises:
        InvalidArgument: The file is not a JSON object.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else self.default_path()
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            text = "{}"
        except OSError as exc:
            raise InvalidArgument(f"cannot read docker config {self.path}: {exc}") from None
        try:
            doc = json.loads(text or "{}")
        except ValueError as exc:
            raise InvalidArgument(f"docker config {self.path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
            raise InvalidArgument(f"docker config {self.path}: not an object with 'auths'")
        self.doc: dict[str, Any] = doc

    @staticmethod
    def default_path() -> Path:
        """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
        from runtime.cli.docker_home import config_file

        return Path(config_file())

    @property
    def auths(self) -> dict[str, Any]:
        """The ``auths`` object (made if absent)."""
        found: dict[str, Any] = self.doc.setdefault("auths", {})
        return found

    def helper(self, host: str) -> str:
        """The credential helper (``docker-credential-<name>``'s name) for ``host``; ``""``."""
        helpers = self.doc.get("credHelpers") or {}
        wanted = normalize_host(host)
        for key, name in helpers.items():
            if normalize_host(key) == wanted and name:
                return str(name)
        return str(self.doc.get("credsStore") or "")

    def _key(self, host: str) -> str | None:
        """The ``auths`` key that names ``host``, if one does."""
        wanted = normalize_host(host)
        return next((k for k in self.auths if normalize_host(k) == wanted), None)

    def get(self, host: str) -> tuple[str, str] | None:
        """``(user, secret)`` for ``host``; user ``""`` means an identity token; ``None``: none.

        Raises:
            InvalidArgument: An ``auth`` value that is not base64 of ``user:password``.
            Unavailable: The helper failed (missing, or an error other than "not found").
        """
        helper = self.helper(host)
        if helper:
            answer = _run_helper(helper, "get", server_key(host))
            if answer is None:
                return None
            try:
                doc = json.loads(answer)
                user, secret = str(doc["Username"]), str(doc["Secret"])
            except (ValueError, KeyError, TypeError):
                raise Unavailable(f"credential helper docker-credential-{helper} answered "
                                  f"something that is not credentials: {answer[:200]!r}") from None
            return ("" if user == _TOKEN_USER else user), secret
        key = self._key(host)
        entry = self.auths.get(key) if key is not None else None
        if not isinstance(entry, dict):
            return None
        if entry.get("identitytoken"):
            return "", str(entry["identitytoken"])
        if entry.get("auth"):
            try:
                user, sep, secret = base64.b64decode(str(entry["auth"]), validate=True
                                                     ).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise InvalidArgument(f"docker config {self.path}: auths[{key!r}].auth is not "
                                      "base64 of 'user:password'")
            return user, secret
        if entry.get("username") and entry.get("password") is not None:
            return str(entry["username"]), str(entry["password"])
        return None

    def store(self, host: str, user: str, secret: str) -> None:
        """Keep ``host``'s credentials (in its helper if it has one) and save the file."""
        helper = self.helper(host)
        key = self._key(host) or server_key(host)
        if helper:
            _run_helper(helper, "store", json.dumps(
                {"ServerURL": server_key(host), "Username": user, "Secret": secret}))
            self.auths[key] = {}  # as Docker does: the host is known, the secret is elsewhere
        else:
            encoded = base64.b64encode(f"{user}:{secret}".encode()).decode()
            self.auths[key] = {"auth": encoded}
        self.save()

    def erase(self, host: str) -> bool:
        """Forget ``host``'s credentials; ``False`` if none were kept (nothing changed)."""
        helper = self.helper(host)
        key = self._key(host)
        erased = False
        if helper:
            erased = _run_helper(helper, "erase", server_key(host)) is not None
        if key is not None:
            del self.auths[key]
            erased = True
            self.save()
        return erased

    def save(self) -> None:
        """Write the file atomically (a temporary file renamed over it), readable by its owner."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, partial = tempfile.mkstemp(prefix=".config.json.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self.doc, handle, indent="\t")
                handle.write("\n")
            os.replace(partial, self.path)
        except BaseException:
            os.unlink(partial)
            raise


def _run_helper(name: str, verb: str, data: str) -> str | None:
    """Run ``docker-credential-<name> <verb>`` with ``data`` on stdin; stdout, or ``None``.

    ``None`` is the helper's "credentials not found" (for ``get`` and ``erase``).

    Raises:
        Unavailable: The helper is missing, timed out or failed otherwise.
    """
    program = f"docker-credential-{name}"
    try:
        done = subprocess.run([program, verb], input=data, capture_output=True, text=True,
                              timeout=_HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise Unavailable(f"credential helper {program} is not on PATH "
                          f"(named by credsStore/credHelpers in the docker config)") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"credential helper {program} {verb}: {exc}") from None
    if done.returncode == 0:
        return done.stdout
    said = (done.stdout.strip() or done.stderr.strip())[:300]
    if verb in ("get", "erase") and "credentials not found" in said.lower():
        return None
    raise Unavailable(f"credential helper {program} {verb} failed "
                      f"(exit {done.returncode}): {said}")


def credentials_for(ref: str) -> tuple[str, str]:
    """The caller's ``(user, secret)`` for the registry of image reference ``ref``; blanks: none.

    What pull and push send the daemon when no ``--user`` was given.
    """
    from runtime.pkg.registry.reference import parse_reference

    found = DockerConfig().get(parse_reference(ref).domain)
    return found if found is not None else ("", "")
