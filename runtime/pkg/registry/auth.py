"""Registry credentials and the ``WWW-Authenticate`` dance.

:class:`Credentials` reads Docker's ``config.json``; :class:`Authorizer` turns a
401 challenge into an ``Authorization`` header:

* ``Basic`` - send the host's user name and password.
* ``Bearer realm=...,service=...,scope=...`` - get a token from the realm: with
  a password, POST an OAuth2 form (``grant_type=password``) and fall back to GET
  with basic auth when the token server does not do OAuth2 (400/401/404/405);
  with an identity token, POST ``grant_type=refresh_token``; without
  credentials, an anonymous GET. Tokens are cached per host and scope set until
  they expire.

Once a host has challenged, later requests authorise up front, so only the
first request to a host pays for the 401 round trip.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
from yarl import URL

from runtime.core.errors import InvalidArgument, NotFound, Unauthenticated, Unavailable
from runtime.pkg.registry.reference import normalize_host

__all__ = [
    "Authorizer",
    "Challenge",
    "Credentials",
    "parse_challenges",
    "verified_tls",
]


@functools.cache
def verified_tls() -> ssl.SSLContext:
    """The TLS context for servers verified against the system's CA certificates.

    Made here on first use rather than taken from aiohttp (``ssl=True``): the
    daemon imports aiohttp without loading the certificates into the two
    default contexts ``aiohttp.connector`` makes at import
    (:func:`runtime.core.daemon._without_default_certificates`), which
    cost 60 ms of CPU and 2.5 MB at every start, pull or no pull.
    """
    return ssl.create_default_context()

log = logging.getLogger("moorage.registry")

_CLIENT_ID = "moorage"
_MIN_TOKEN_LIFETIME = 60  # seconds; the token spec's default and minimum
_EXPIRY_MARGIN = 10  # refresh a little early so a token never expires in flight
_POST_FALLBACK = frozenset({400, 401, 404, 405})  # token servers that only do GET
_PARAM = re.compile(r'([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


class Credentials:
    """User names and secrets per registry host, from Docker's ``config.json``.

    Entries under ``auths`` may carry ``auth`` (base64 of ``user:password``),
    ``username`` and ``password``, or an ``identitytoken`` (returned as user
    ``""``, which makes the token flow use ``grant_type=refresh_token``).
    Credential helpers (``credsStore``, ``credHelpers``) are not run.

    Args:
        path: The config file. ``None`` means ``$DOCKER_CONFIG/config.json`` or
            ``~/.docker/config.json``, and a missing default file means no
            stored credentials; an explicit path must exist.
        username: Override for every host, together with ``password``.
        password: See ``username``.

    Raises:
        InvalidArgument: The file is not valid JSON, an ``auth`` value is not
            base64 of ``user:password``, or only one of username/password is given.
        NotFound: An explicit ``path`` does not exist.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise InvalidArgument("give both username and password, or neither")
        self._override = (username, password) if username is not None else None
        self._by_host: dict[str, tuple[str, str]] = {}
        explicit = path is not None
        self.path = path if path is not None else self.default_path()
        if self._override is not None and not explicit:
            return  # the override answers for every host: the default file has no say
        try:
            text = self.path.read_text()
        except FileNotFoundError as exc:
            if explicit:
                raise NotFound(f"docker config {self.path} does not exist") from exc
            return
        except OSError as exc:
            raise InvalidArgument(f"cannot read docker config {self.path}: {exc}") from exc
        self._load(text)

    @staticmethod
    def default_path() -> Path:
        """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
        base = os.environ.get("DOCKER_CONFIG")
        return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"

    def _load(self, text: str) -> None:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument(f"docker config {self.path} is not valid JSON: {exc}") from exc
        auths = doc.get("auths", {}) if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            raise InvalidArgument(f"docker config {self.path}: 'auths' must be an object")
        for key, entry in auths.items():
            if not isinstance(entry, dict):
                raise InvalidArgument(f"docker config {self.path}: auths[{key!r}] is not an object")
            creds = self._entry(key, entry)
            if creds is not None:
                self._by_host[normalize_host(key)] = creds

    def _entry(self, key: str, entry: dict[str, Any]) -> tuple[str, str] | None:
        if entry.get("identitytoken"):
            return "", str(entry["identitytoken"])
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise InvalidArgument(
                    f"docker config {self.path}: auths[{key!r}].auth is not valid base64"
                ) from exc
            user, sep, secret = decoded.partition(":")
            if not sep:
                raise InvalidArgument(
                    f"docker config {self.path}: auths[{key!r}].auth is not 'user:password'"
                )
            return user, secret
        if entry.get("username") is not None and entry.get("password") is not None:
            return str(entry["username"]), str(entry["password"])
        return None

    def get(self, host: str) -> tuple[str, str] | None:
        """Return ``(username, secret)`` for ``host[:port]``, or ``None``.

        An explicit username/password given to the constructor wins over the file.
        """
        if self._override is not None:
            user, secret = self._override
            assert user is not None and secret is not None
            return user, secret
        return self._by_host.get(normalize_host(host))


class Challenge(msgspec.Struct, frozen=True):
    """One parsed ``WWW-Authenticate`` challenge.

    Attributes:
        scheme: ``bearer`` or ``basic`` (lower case).
        params: Its parameters (``realm``, ``service``, ``scope``, ``error``...).
    """

    scheme: str
    params: dict[str, str] = {}


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values into challenges.

    Registries send one challenge per header; the parameters may be quoted
    (with backslash escapes) or bare tokens.
    """
    out: list[Challenge] = []
    for header in headers:
        scheme, _, rest = header.strip().partition(" ")
        if not scheme:
            continue
        params = {
            m.group(1).lower(): (
                re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
            )
            for m in _PARAM.finditer(rest)
        }
        out.append(Challenge(scheme=scheme.lower(), params=params))
    return out


class _Token(msgspec.Struct):
    value: str
    expires: float  # time.monotonic() deadline


class _TokenResponse(msgspec.Struct):
    token: str = ""
    access_token: str = ""
    expires_in: int = 0


class Authorizer:
    """Keeps per-host challenges and tokens, and builds ``Authorization`` headers.

    One instance lives as long as a :class:`~.client.RegistryClient`; it is not
    shared between clients, so credentials never leak across them.

    Args:
        credentials: Where user names and secrets come from; ``None`` means
            anonymous access only.
    """

    def __init__(self, credentials: Credentials | None) -> None:
        self.credentials = credentials
        self._challenges: dict[str, tuple[Challenge, URL]] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._locks: dict[tuple[str, str], anyio.Lock] = {}

    def creds(self, host: str) -> tuple[str, str] | None:
        """Credentials for ``host[:port]``, if any."""
        return self.credentials.get(host) if self.credentials is not None else None

    def challenged(self, registry: URL, headers: Sequence[str], scopes: Sequence[str]) -> None:
        """Record the challenge of a 401 so the retry (and later requests) can answer it.

        Args:
            registry: URL of the request that got the 401 (scheme and host matter).
            headers: Its ``WWW-Authenticate`` values.
            scopes: The scopes the request needed; their cached token is dropped.

        Raises:
            Unauthenticated: No challenge we can answer: none given, an unknown
                scheme, or Basic without credentials for the host.
        """
        host = registry.host_port_subcomponent or ""
        challenges = {c.scheme: c for c in parse_challenges(headers)}
        # Prefer Bearer: the credentials then go to the token server only once.
        challenge = challenges.get("bearer") or challenges.get("basic")
        if challenge is None:
            offered = ", ".join(sorted(challenges)) or "none"
            raise Unauthenticated(
                f"registry {host} wants authentication with a scheme we do not support "
                f"(offered: {offered})"
            )
        if challenge.scheme == "basic" and self.creds(host) is None:
            raise self.refused(host, scopes)
        if challenge.scheme == "bearer" and "realm" not in challenge.params:
            raise Unauthenticated(f"registry {host} sent a Bearer challenge without a realm")
        self._challenges[host] = (challenge, registry)
        self._tokens.pop((host, _scope_key(scopes)), None)

    def refused(self, host: str, scopes: Sequence[str]) -> Unauthenticated:
        """The error for a request the registry still refuses after authenticating."""
        what = " ".join(scopes) or "this request"
        creds = self.creds(host)
        if creds is None:
            return Unauthenticated(
                f"registry {host} requires authentication for {what} and no credentials "
                "are configured for it (or the repository does not exist)"
            )
        user = creds[0] or "<identity token>"
        return Unauthenticated(f"registry {host} rejected the credentials of {user!r} for {what}")

    async def authorization(
        self,
        session: aiohttp.ClientSession,
        host: str,
        scopes: Sequence[str],
        *,
        ssl: Any = True,
    ) -> str | None:
        """The ``Authorization`` value for a request to ``host``, or ``None``.

        Args:
            session: Used to ask the token server.
            host: ``host[:port]`` of the registry.
            scopes: ``repository:<path>:<actions>`` scopes the request needs.
            ssl: TLS setting of the registry host, used when the realm is on it too.

        Raises:
            Unauthenticated: The token server refused the credentials.
            Unavailable: The token server could not be reached.
        """
        known = self._challenges.get(host)
        if known is None:
            return None  # never challenged: try anonymously first
        challenge, registry = known
        if challenge.scheme == "basic":
            creds = self.creds(host)
            return _basic(*creds) if creds is not None else None
        key = (host, _scope_key(scopes))
        lock = self._locks.setdefault(key, anyio.Lock())
        # One token request per host+scope even when many blobs start at once.
        async with lock:
            token = self._tokens.get(key)
            if token is None or token.expires <= time.monotonic():
                token = await self._fetch_token(session, host, registry, challenge, scopes, ssl)
                self._tokens[key] = token
        return f"Bearer {token.value}"

    async def _fetch_token(
        self,
        session: aiohttp.ClientSession,
        host: str,
        registry: URL,
        challenge: Challenge,
        scopes: Sequence[str],
        ssl: Any,
    ) -> _Token:
        realm = URL(challenge.params["realm"])
        if realm.scheme not in ("http", "https") or not realm.host:
            raise Unauthenticated(f"registry {host} sent an unusable token realm {realm!s}")
        creds = self.creds(host)
        if creds is not None and registry.scheme == "https" and realm.scheme != "https":
            # A TLS registry must not get its user's password sent in clear text.
            raise Unauthenticated(
                f"registry {host} asks for credentials over plain HTTP at {realm}; refused"
            )
        wanted = sorted({*scopes, *challenge.params.get("scope", "").split()})
        service = challenge.params.get("service", "")
        realm_ssl = ssl if realm.host_port_subcomponent == host else verified_tls()
        try:
            if creds is not None:
                user, secret = creds
                form = {"client_id": _CLIENT_ID, "scope": " ".join(wanted), "service": service}
                if user:
                    form |= {"grant_type": "password", "username": user, "password": secret}
                else:
                    form |= {"grant_type": "refresh_token", "refresh_token": secret}
                async with session.post(realm, data=form, ssl=realm_ssl) as resp:
                    if resp.status < 300:
                        return await _read_token(resp, realm)
                    if not user or resp.status not in _POST_FALLBACK:
                        raise _token_refused(host, realm, resp.status)
                log.debug("token server %s refused OAuth2 POST (%s), using GET", realm, resp.status)
            query = [("scope", s) for s in wanted] + ([("service", service)] if service else [])
            headers = {"Authorization": _basic(*creds)} if creds is not None else {}
            async with session.get(
                realm.extend_query(query), headers=headers, ssl=realm_ssl
            ) as resp:
                if resp.status >= 300:
                    raise _token_refused(host, realm, resp.status)
                return await _read_token(resp, realm)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"token server {realm.with_query(None)} for {host}: {exc!r}") from exc


def _scope_key(scopes: Iterable[str]) -> str:
    return " ".join(sorted(set(scopes)))


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def _token_refused(host: str, realm: URL, status: int) -> Unauthenticated:
    return Unauthenticated(
        f"token server {realm.with_query(None)} for registry {host} answered {status}"
    )


async def _read_token(resp: aiohttp.ClientResponse, realm: URL) -> _Token:
    try:
        body = msgspec.json.decode(await resp.read(), type=_TokenResponse)
    except msgspec.DecodeError as exc:
        raise Unauthenticated(f"token server {realm} sent an invalid token: {exc}") from exc
    value = body.token or body.access_token
    if not value:
        raise Unauthenticated(f"token server {realm} sent no token")
    lifetime = max(body.expires_in, _MIN_TOKEN_LIFETIME)
    return _Token(value=value, expires=time.monotonic() + lifetime - _EXPIRY_MARGIN)
