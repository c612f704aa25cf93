"""``moorage login`` and ``logout``: registry credentials in the caller's Docker ``config.json``.

``login`` asks the registry first (``GET /v2/`` answering its challenge, with
the same authorizer the daemon pulls with) and saves nothing it refused, as
Docker does. The check runs in the CLI, not the daemon: the daemon has no
business holding a user's password beyond the one pull or push it serves, and
the CLI on this host reaches the registry as the daemon does. A registry on
this machine is spoken to in plain HTTP, as ``pull`` for ``run`` does.
"""

from __future__ import annotations

import sys

from runtime.cli.verbs import EXIT_USAGE, adder

# typing.TYPE_CHECKING without importing typing (a few ms of every CLI call).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["register", "verify_login"]

_DEFAULT_SERVER = "docker.io"


def register(sub: Any) -> None:
    """Add ``login`` and ``logout``."""
    add = adder(sub)
    p = add("login", login, "check and keep registry credentials in ~/.docker/config.json")
    p.add_argument("-u", "--username", default="")
    p.add_argument("-p", "--password", default="", help="prefer --password-stdin")
    p.add_argument("--password-stdin", action="store_true", help="read the password on stdin")
    p.add_argument("--plain-http", action="store_true", help="talk HTTP to the registry")
    p.add_argument("server", nargs="?", default=_DEFAULT_SERVER, metavar="SERVER")

    p = add("logout", logout, "forget the credentials of a registry")
    p.add_argument("server", nargs="?", default=_DEFAULT_SERVER, metavar="SERVER")


def verify_login(host: str, user: str, secret: str, *, plain_http: bool = False) -> None:
    """Ask ``host``'s ``/v2/`` whether it takes ``user``/``secret``.

    Raises:
        Unauthenticated: The registry (or its token server) refused them.
        Unavailable: The registry could not be reached or answered oddly.
    """
    import anyio

    anyio.run(_verify, host, user, secret, plain_http)


async def _verify(host: str, user: str, secret: str, plain_http: bool) -> None:
    import aiohttp
    from yarl import URL

    from runtime.core.errors import Unavailable
    from runtime.pkg.registry.auth import Authorizer, Credentials, verified_tls
    from runtime.pkg.registry.hosts import is_loopback

    plain = plain_http or is_loopback(host)
    url = URL(f"{'http' if plain else 'https'}://{host}/v2/")
    ssl: Any = False if plain else verified_tls()
    authorizer = Authorizer(Credentials(username=user, password=secret))
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url, ssl=ssl) as resp:
                if resp.status < 300:
                    return  # an open registry: any credentials do
                if resp.status != 401:
                    raise Unavailable(f"registry {host} answered {resp.status} to GET {url}")
                authorizer.challenged(url, resp.headers.getall("WWW-Authenticate", []), [])
            header = await authorizer.authorization(session, host, [], ssl=ssl)
            async with session.get(url, ssl=ssl,
                                   headers={"Authorization": header} if header else {}) as resp:
                if resp.status == 401:
                    raise authorizer.refused(host, [])
                if resp.status >= 300:
                    raise Unavailable(f"registry {host} answered {resp.status} to GET {url}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(f"registry {host}: {exc!r}") from None


def _host(server: str) -> str:
    """``host[:port]`` of what the user typed (``https://host/v1/`` or ``host:port``)."""
    from runtime.pkg.registry.reference import normalize_host

    return normalize_host(server)


def login(args: argparse.Namespace) -> int:
    """Check the credentials with the registry, then keep them; nothing is saved on refusal."""
    import getpass

    from runtime.cli.docker_config import DockerConfig
    from runtime.core.errors import InvalidArgument, MoorageError

    host = _host(args.server)
    try:
        user = args.username
        if args.password_stdin:
            if args.password:
                raise InvalidArgument("--password and --password-stdin are exclusive")
            if not user:
                raise InvalidArgument("--password-stdin needs --username")
            secret = sys.stdin.read().removesuffix("\n").removesuffix("\r")
        else:
            if not user:
                if not sys.stdin.isatty():
                    raise InvalidArgument(f"login {host}: give --username (stdin is no terminal)")
                user = input("Username: ").strip()
            if args.password:
                print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
                      file=sys.stderr)
            secret = args.password or getpass.getpass("Password: ")
        if not user or not secret:
            raise InvalidArgument(f"login {host}: the user name and password must not be empty")
        config = DockerConfig()
        verify_login(host, user, secret, plain_http=args.plain_http)
        config.store(host, user, secret)
    except MoorageError as exc:
        print(f"moorage: {exc.code}: login {args.server}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    print("Login Succeeded")
    return 0


def logout(args: argparse.Namespace) -> int:
    """Forget the host's credentials (in its helper too)."""
    from runtime.cli.docker_config import DockerConfig
    from runtime.core.errors import MoorageError

    host = _host(args.server)
    try:
        erased = DockerConfig().erase(host)
    except MoorageError as exc:
        print(f"moorage: {exc.code}: logout {args.server}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    print(f"Removing login credentials for {host}" if erased else f"Not logged in to {host}")
    return 0
