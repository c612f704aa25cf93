"""The ``moorage`` command against a real daemon: output formats, exit codes, stderr.

Most tests call ``runtime.cli.main.main(argv)`` in process (fast); the exit-code tests
run the command as a subprocess, as a shell would.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import runtime
from runtime.cli.main import main
from tests.fixtures.daemon import Daemon


@pytest.fixture(scope="module")
def cli_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon(tmp_path_factory.mktemp("cli")) as daemon:
        yield daemon


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MOORAGE_ADDRESS", "MOORAGE_NAMESPACE", "MOORAGE_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


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
        assert (code, err) == (0, ""), err
        return out


@pytest.fixture
def cli(cli_daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(cli_daemon.address, capsys)


UNREACHABLE = "unix:///tmp/moorage-test-nothing-here.sock"


# -- version and plugins ---------------------------------------------------------------


def test_cli_version(cli: Cli) -> None:
    v = runtime.__version__
    assert cli.ok("version") == f"Client:\n  Version: {v}\nServer:\n  Version: {v}\n"


def test_cli_version_json(cli: Cli, cli_daemon: Daemon) -> None:
    doc = json.loads(cli.ok("version", "--format", "json"))
    assert doc["client"] == runtime.__version__
    assert doc["server"]["version"] == runtime.__version__
    assert cli_daemon.proc is not None and doc["server"]["pid"] == cli_daemon.proc.pid


def test_cli_plugins_ls_table(cli: Cli) -> None:
    lines = cli.ok("plugins", "ls").splitlines()
    assert lines[0].split() == ["TYPE", "ID", "STATUS", "ORIGIN", "REASON"]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[1:]}
    assert rows[("events", "exchange")] == ["ok", "moorage", runtime.__version__]
    assert rows[("server", "http")] == ["ok", "moorage", runtime.__version__]


def test_cli_plugins_ls_json(cli: Cli) -> None:
    plugins = json.loads(cli.ok("plugins", "ls", "--format", "json"))
    by_name = {f"{p['type']}.{p['id']}": p for p in plugins}
    assert by_name["metadata.sqlite"]["status"] == "ok"
    assert by_name["metadata.sqlite"]["distribution"] == "moorage"
    assert by_name["api.namespaces"]["requires"] == ["metadata.sqlite"]


def test_cli_plugins_ls_quiet_prints_full_names(cli: Cli) -> None:
    names = cli.ok("plugins", "ls", "-q").splitlines()
    assert names[0] == "events.exchange"
    assert {"metadata.sqlite", "api.system", "api.namespaces", "server.http"} <= set(names)


def test_cli_plugins_ls_filters(cli: Cli) -> None:
    assert cli.ok("plugins", "ls", "-q", "type==server") == "server.http\n"
    assert cli.ok("plugins", "ls", "-q", "type==server", "id==system").splitlines() == [
        "api.system",
        "server.http",
    ]


def test_cli_plugins_ls_bad_filter_is_an_error(cli: Cli) -> None:
    assert cli("plugins", "ls", "type==") == (
        1,
        "",
        "moorage: invalid_argument: invalid filter 'type==': expected a value "
        '(unquoted, or "quoted") at position 6, found the end\n',
    )


# -- namespaces ------------------------------------------------------------------------


def test_cli_namespaces_create_ls_label_rm(cli: Cli) -> None:
    assert cli.ok("namespaces", "create", "cli-ns", "team=infra", "tier=1") == ""
    table = cli.ok("namespaces", "ls").splitlines()
    assert table[0].split() == ["NAME", "LABELS"]
    assert "cli-ns  team=infra,tier=1" in table

    assert cli.ok("namespaces", "label", "cli-ns", "tier=", "owner=ada") == (
        "cli-ns  owner=ada,team=infra\n"
    )
    listed = json.loads(cli.ok("ns", "ls", "--format", "json"))
    [info] = [n for n in listed if n["name"] == "cli-ns"]
    assert info["labels"] == {"owner": "ada", "team": "infra"}

    assert cli.ok("namespaces", "rm", "cli-ns") == "cli-ns\n"
    assert "cli-ns" not in cli.ok("namespaces", "ls", "-q").splitlines()


def test_cli_namespaces_ls_quiet(cli: Cli) -> None:
    cli.ok("namespaces", "create", "quiet-a")
    cli.ok("namespaces", "create", "quiet-b")
    names = cli.ok("namespaces", "ls", "-q").splitlines()
    assert {"quiet-a", "quiet-b"} <= set(names)
    assert names == sorted(names)


def test_cli_namespaces_rm_reports_each_failure_and_exits_non_zero(cli: Cli) -> None:
    cli.ok("namespaces", "create", "rm-me")
    code, out, err = cli("namespaces", "rm", "ghost", "rm-me")
    assert code == 1
    assert out == "rm-me\n"
    assert err == "moorage: not_found: namespace 'ghost' not found\n"


def test_cli_namespaces_create_existing_is_an_error(cli: Cli) -> None:
    cli.ok("namespaces", "create", "dup")
    assert cli("namespaces", "create", "dup") == (
        1,
        "",
        "moorage: already_exists: namespace 'dup' already exists\n",
    )


def test_cli_bad_label_argument(cli: Cli) -> None:
    assert cli("namespaces", "create", "lbl", "novalue") == (
        1,
        "",
        "moorage: invalid_argument: label 'novalue': expected KEY=VALUE\n",
    )


def test_cli_namespace_flag_sets_the_header(cli: Cli) -> None:
    code, out, err = cli("-n", "bad/ns", "namespaces", "ls")
    assert (code, out) == (1, "")
    assert err.startswith("moorage: invalid_argument: header Moorage-Namespace: namespace 'bad/ns'")


# -- unreachable daemon ----------------------------------------------------------------


def test_cli_unreachable_daemon_is_an_error_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--address", UNREACHABLE, "version"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        f"moorage: unavailable: cannot reach the moorage daemon at {UNREACHABLE}: "
        "No such file or directory; is it running? (moorage daemon)\n"
    )


@pytest.mark.parametrize(
    "args", [["version"], ["plugins", "ls"], ["namespaces", "ls"], ["namespaces", "rm", "x"]]
)
def test_cli_unreachable_daemon_exits_non_zero(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, "MOORAGE_ADDRESS": UNREACHABLE},
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(
        f"moorage: unavailable: cannot reach the moorage daemon at {UNREACHABLE}: "
    )
    assert "Traceback" not in proc.stderr


def test_cli_address_from_the_environment(cli_daemon: Daemon) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "plugins", "ls", "-q", "type==server"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, "MOORAGE_ADDRESS": cli_daemon.address},
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "server.http\n", "")


def test_cli_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["namespaces"])
    assert info.value.code == 2
    assert "usage: moorage namespaces" in capsys.readouterr().err


def test_cli_config_check_error_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plugins.toml"
    path.write_text("version = 3\n")
    assert main(["config", "check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"moorage: invalid_argument: {path}: [top level] key 'version': unsupported version 3, "
        "this daemon reads version 1\n"
    )


def test_cli_events_follows_until_the_daemon_stops(daemon: Daemon) -> None:
    command = [
        sys.executable,
        "-m",
        "runtime.cli.main",
        "--address",
        daemon.address,
        "-n",
        "watched",
        "events",
        "--format",
        "json",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()])
        reader.start()
        try:
            api = daemon.client()
            # The command subscribes asynchronously: create until its first line shows up.
            for _ in range(100):
                api.create_namespace("watched")
                try:
                    first = json.loads(lines.get(timeout=0.1))
                    break
                except queue.Empty:
                    api.delete_namespace("watched")
            else:
                pytest.fail("moorage events printed nothing")
            assert first["namespace"] == "watched"
            assert first["topic"] in ("/namespaces/create", "/namespaces/delete")
            assert daemon.stop() == 0
            assert proc.wait(10) == 0
            assert proc.stderr.read() == ""
        finally:
            proc.kill()
            reader.join(5)


def test_cli_commands_table_names_every_top_level_command() -> None:
    """``main`` builds only the group of the command it runs: the table must know them all."""
    from runtime.cli.main import COMMANDS, GROUPS, build_parser

    found: dict[str, str] = {}
    for group in GROUPS:
        sub = build_parser([group])._subparsers._group_actions[0]  # type: ignore[union-attr]
        found.update(dict.fromkeys(sub.choices, group))
    assert found == COMMANDS


def test_cli_version_skips_argparse_and_msgspec(cli_daemon: Daemon) -> None:
    """The hot path imports neither argparse, msgspec nor any plugin."""
    code = ("import sys; from runtime.cli.main import main; main(sys.argv[1:]); "
            "print(sorted(m for m in ('argparse', 'msgspec', 'runtime.plugins', "
            "'runtime.client.sync') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, "--address", cli_daemon.address,
                             "version"], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]"


def test_cli_run_path_imports_no_msgspec() -> None:
    """``run`` and the teardown commands use the standard-library client."""
    code = ("import sys; import runtime.cli.run, runtime.cli.containers, runtime.client.lean, "
            "runtime.cli.terminal; print('msgspec' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_cli_run_annotations_match_the_network_contract() -> None:
    """``runtime.cli.run_flags`` copies four constants to avoid importing the network contract."""
    from runtime.cli import run_flags
    from runtime.plugins.network import api

    assert (run_flags.NETWORK_ANNOTATION, run_flags.PORTS_ANNOTATION,
            run_flags.HOSTS_ANNOTATION, run_flags.DNS_ANNOTATION) == (
        api.NETWORK_ANNOTATION, api.PORTS_ANNOTATION, api.HOSTS_ANNOTATION, api.DNS_ANNOTATION)


@pytest.mark.parametrize(("argv", "expected"), [
    (["tasks", "kill", "c1"], {"ids": ["c1"], "signal": "SIGTERM", "all": False, "exec_id": ""}),
    (["t", "kill", "-s", "KILL", "--all", "c1"],
     {"ids": ["c1"], "signal": "KILL", "all": True, "exec_id": ""}),
    (["tasks", "kill", "--signal=9", "--exec-id", "e1", "c1"],
     {"ids": ["c1"], "signal": "9", "all": False, "exec_id": "e1"}),
    (["tasks", "kill", "-s", "KILL", "a", "b"],
     {"ids": ["a", "b"], "signal": "KILL", "all": False, "exec_id": ""}),
    (["tasks", "rm", "-f", "a", "b"], {"ids": ["a", "b"], "force": True, "exec_id": ""}),
    (["containers", "delete", "a"], {"ids": ["a"], "force": False, "keep_snapshot": False}),
    (["c", "rm", "--force", "--keep-snapshot", "a"],
     {"ids": ["a"], "force": True, "keep_snapshot": True}),
])
def test_cli_teardown_commands_parse_as_argparse_would(argv: list[str],
                                                       expected: dict[str, object]) -> None:
    """The argparse-free path gives the handlers what argparse gives them."""
    from runtime.cli.main import _fast_args, build_parser

    fast = vars(_fast_args({"namespace": "ns1"}, argv))
    slow = vars(build_parser().parse_args(["-n", "ns1", *argv]))
    for name, value in {**expected, "namespace": "ns1"}.items():
        assert fast[name] == slow[name] == value
    assert fast["handler"] is slow["handler"]


@pytest.mark.parametrize("argv", [
    ["daemon"],
    ["daemon", "-c", "/etc/x.toml"],
    ["daemon", "--config", "/x.toml", "--log-level", "warning"],
    ["daemon", "--log-level=debug", "--config=/x.toml"],
])
def test_cli_daemon_parses_as_argparse_would(argv: list[str]) -> None:
    """``moorage daemon`` without argparse: what argparse gives its handler."""
    from runtime.cli.main import _fast_args, build_parser

    fast = vars(_fast_args({}, argv))
    slow = vars(build_parser().parse_args(argv))
    assert fast.pop("handler") is slow.pop("handler")
    assert {k: fast[k] for k in ("config", "log_level")} == {
        k: slow[k] for k in ("config", "log_level")}
    assert set(slow) - set(fast) <= {"command"}


@pytest.mark.parametrize("argv", [
    ["daemon", "--log-level", "loud"],  # not a choice: argparse words the error
    ["daemon", "extra"],
    ["daemon", "--help"],
    ["daemon", "--conf", "/x.toml"],  # an abbreviation
    ["daemon", "-c"],
])
def test_cli_unusual_daemon_command_lines_go_to_argparse(argv: list[str]) -> None:
    from runtime.cli.main import _fast_args

    assert _fast_args({}, argv) is None


@pytest.mark.parametrize("argv", [
    ["tasks", "kill"],  # no id
    ["tasks", "kill", "-s"],  # a flag without its value
    ["tasks", "kill", "--bogus", "a"],
    ["tasks", "kill", "-h"],
    ["tasks", "ls"],
    ["containers", "rm", "-f=1", "a"],
    ["tasks", "kill", "-s=KILL", "a"],
    ["tasks", "kill", "--sig", "KILL", "a"],  # an abbreviation: argparse's to expand
])
def test_cli_unusual_teardown_command_lines_go_to_argparse(argv: list[str]) -> None:
    from runtime.cli.main import _fast_args

    assert _fast_args({}, argv) is None


@pytest.mark.parametrize("argv", [
    ["tasks", "kill", "x"],
    ["run", "--rm", "--net", "none", "--name", "c1", "busybox", "echo", "hi"],
    ["images", "pull", "--plain-http", "-q", "127.0.0.1:5000/x:1"],
])
def test_cli_hot_paths_import_no_json_argparse_enum_or_contextlib(argv: list[str]) -> None:
    """``run``, ``images pull`` and the teardown commands import neither ``json`` (with ``re``),
    ``socket`` or ``signal`` (with ``enum``), ``typing``, argparse, contextlib nor msgspec."""
    code = ("import sys; from runtime.cli import main; "
            f"args = main._fast_args({{}}, {argv!r}); assert args is not None; "
            "import runtime.client.lean, runtime.cli.terminal; "
            "runtime.client.lean._dumps({'signal': 'SIGKILL', 'all': False}); "
            "print(sorted(m for m in ('argparse', 'json', 're', 'socket', 'signal', 'enum', "
            "'typing', 'msgspec', 'contextlib', 'hashlib') if m in sys.modules))")
    # -S: only what Moorage imports counts, not what site's .pth files do.
    env = {**os.environ, "PYTHONPATH": str(Path(runtime.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                            check=True, env=env)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [
    ["run", "busybox"],
    ["run", "--rm", "--net", "none", "--name", "c1", "busybox", "echo", "hi"],
    ["run", "-d", "--name=c2", "-e", "A=1", "--env", "B=2", "--label", "k=v", "-t", "-i",
     "--cpus", "1.5", "--pids-limit", "20", "-m", "64m", "--read-only", "--runtime", "crun",
     "--mount", "type=bind,src=/tmp,dst=/mnt", "-p", "8080:80", "--hostname", "h",
     "--entrypoint", "/bin/sh", "-u", "1000", "-w", "/tmp", "img:1", "sh", "-c", "exit 3"],
    ["run", "--privileged", "--net=host", "--snapshotter", "native", "img", "--rm", "-x"],
    ["run", "-P", "--init", "--add-host", "db:10.0.0.2", "--add-host=x:10.0.0.3", "--dns",
     "192.0.2.1", "--dns-search", "example.org", "--dns-option", "ndots:2", "--dns-opt",
     "edns0", "--publish-all", "-p", "80", "img"],
])
def test_cli_run_parses_as_argparse_would(argv: list[str]) -> None:
    """``moorage run`` without argparse gives the handler exactly what argparse gives it."""
    from runtime.cli.main import _fast_args, build_parser

    fast = vars(_fast_args({"namespace": "ns1"}, argv))
    slow = vars(build_parser().parse_args(["-n", "ns1", *argv]))
    slow.pop("command_word", None)
    assert fast.pop("handler") is slow.pop("handler")
    assert {k: v for k, v in fast.items() if k != "command"} == {
        k: v for k, v in slow.items() if k not in ("command",) and k in fast}
    assert fast["command"] == slow["command"]
    assert set(slow) - set(fast) <= {"command"}


@pytest.mark.parametrize("argv", [
    ["images", "pull", "--plain-http", "--quiet", "127.0.0.1:5000/x:1"],
    ["pull", "-q", "busybox"],
    ["i", "pull", "busybox", "--platform", "linux/amd64", "--platform=linux/arm64", "-u", "me:pw",
     "--hosts-dir", "/etc/h", "--all-platforms", "--snapshotter", "native", "--no-unpack",
     "--max-concurrent-downloads", "2"],
])
def test_cli_pull_parses_as_argparse_would(argv: list[str]) -> None:
    """``images pull`` (and docker's ``pull``) without argparse: what argparse gives the handler."""
    from runtime.cli.main import _fast_args, build_parser

    fast = vars(_fast_args({"namespace": "ns1"}, argv))
    slow = vars(build_parser().parse_args(["-n", "ns1", *argv]))
    assert fast.pop("handler") is slow.pop("handler")
    assert fast == {k: v for k, v in slow.items() if k in fast}
    assert set(slow) - set(fast) <= {"command", "command_word", "images_command", "format"}


@pytest.mark.parametrize("argv", [
    ["pull"],  # no reference
    ["pull", "a", "b"],
    ["images", "pull", "--max-concurrent-downloads", "many", "busybox"],
    ["images", "pull", "-qu", "me", "busybox"],
    ["images", "pull", "--help"],
])
def test_cli_unusual_pull_command_lines_go_to_argparse(argv: list[str]) -> None:
    from runtime.cli.main import _fast_args

    assert _fast_args({}, argv) is None


@pytest.mark.parametrize("argv", [
    ["run"],  # no image
    ["run", "-it", "busybox"],  # combined short flags: argparse's
    ["run", "--cpus", "lots", "busybox"],  # argparse words the error
    ["run", "--ent", "sh", "busybox"],  # an abbreviation
    ["run", "--", "busybox"],
    ["run", "--rm=1", "busybox"],
])
def test_cli_unusual_run_command_lines_go_to_argparse(argv: list[str]) -> None:
    from runtime.cli.main import _fast_args

    assert _fast_args({}, argv) is None


@pytest.mark.parametrize("value", [
    {"signal": "SIGKILL", "all": False, "exec_id": ""}, {"a": 1, "b": None},
    {"s": 'needs "escaping" \\ é \n\t\u2028 \U0001f600'}, {"nested": {"x": [1, 2.5, -3e-7]}},
    [], {}, "plain", 0, True, None, [{"k": [[], {}]}], 10**30,
])
def test_cli_plain_json_matches_the_json_module(value: object) -> None:
    from runtime.client.plainjson import dumps, loads

    assert dumps(value) == json.dumps(value, separators=(",", ":"))
    assert loads(json.dumps(value, indent=2)) == value
    assert loads(f"  {dumps(value)}\n".encode()) == value


@pytest.mark.parametrize("text", ["", "{", "[1,]", "{} {}", "{'a': 1}", "nul", "[1] x"])
def test_cli_plain_json_rejects_what_is_not_json(text: str) -> None:
    from runtime.client.plainjson import loads

    with pytest.raises(ValueError):
        loads(text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1: "a"}, {"s": {1, 2}}])
def test_cli_plain_json_refuses_what_json_cannot_carry(value: object) -> None:
    from runtime.client.plainjson import dumps

    with pytest.raises((TypeError, ValueError)):
        dumps(value)
