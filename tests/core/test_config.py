"""``runtime.core.config``: strict ``plugins.toml`` whose errors name file, section and key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runtime.cli.main import main
from runtime.core.config import (
    CONFIG_VERSION,
    ConfigError,
    DaemonConfig,
    decode_plugin_config,
    load_config,
    parse_config,
)
from runtime.core.discovery import Discovery, LoadFailure, PluginSource
from runtime.core.errors import InvalidArgument
from runtime.core.host import validate_plugin_configs
from runtime.core.registration import PluginConfig, Registration

SOURCE = "/etc/moorage/plugins.toml"


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    size: int = 1


class GreeterConfig(PluginConfig):
    greeting: str = "hello"
    inner: Inner = msgspec.field(default_factory=Inner)


async def _init(ctx: Any) -> None:
    return None


def discovery(*regs: Registration, failures: list[LoadFailure] | None = None) -> Discovery:
    source = PluginSource("test-dist", "1.0", "test", "tests.plugin")
    return Discovery([(r, source) for r in regs], failures or [])


GREETER = Registration(type="greeter", id="basic", init=_init, config=GreeterConfig)
PLAIN = Registration(type="plain", id="one", init=_init)


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    return str(info.value)


def plugin_error(text: str, disc: Discovery | None = None) -> str:
    config = parse_config(text, SOURCE)
    with pytest.raises(ConfigError) as info:
        validate_plugin_configs(config, disc or discovery(GREETER, PLAIN))
    return str(info.value)


# -- top level ----------------------------------------------------------------


def test_config_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config == DaemonConfig()
    assert config.version == CONFIG_VERSION
    assert config.api.address == "/run/moorage/moorage.sock"


def test_config_records_its_source() -> None:
    assert parse_config("", SOURCE).source == SOURCE


def test_config_error_is_invalid_argument() -> None:
    assert issubclass(ConfigError, InvalidArgument)


def test_config_unknown_top_level_key() -> None:
    assert config_error("bogus = 1") == f"{SOURCE}: [top level] unknown key 'bogus'"


def test_config_unknown_key_in_api() -> None:
    assert config_error('[api]\nadress = "/x"') == f"{SOURCE}: [api] unknown key 'adress'"


def test_config_wrong_type_in_api() -> None:
    assert config_error("[api]\naddress = 5") == (
        f"{SOURCE}: [api] key 'address': expected `str`, got `int`"
    )


def test_config_wrong_type_at_top_level() -> None:
    assert config_error("root = 5") == (
        f"{SOURCE}: [top level] key 'root': expected `str`, got `int`"
    )


def test_config_wrong_type_inside_a_list() -> None:
    assert config_error("required_plugins = [5]") == (
        f"{SOURCE}: [top level] key 'required_plugins[0]': expected `str`, got `int`"
    )


def test_config_api_must_be_a_table() -> None:
    assert config_error("api = 5") == f"{SOURCE}: [api] must be a table"


def test_config_plugins_must_hold_tables() -> None:
    expected = f'{SOURCE}: [plugins] must hold tables named "<type>.<id>"'
    assert config_error("plugins = 5") == expected
    assert config_error('[plugins]\n"a.b" = 5') == expected


def test_config_proxy_plugins_must_hold_tables() -> None:
    assert config_error("proxy_plugins = 5") == (
        f'{SOURCE}: [proxy_plugins] must hold tables named "<name>"'
    )
    assert config_error("[proxy_plugins]\nfoo = 5") == (
        f"{SOURCE}: [proxy_plugins.foo]: expected `object`, got `int`"
    )


def test_config_proxy_plugin_unknown_key() -> None:
    text = '[proxy_plugins.foo]\ntype = "snapshotter"\naddres = "/x.sock"'
    assert config_error(text) == f"{SOURCE}: [proxy_plugins.foo] unknown key 'addres'"


def test_config_invalid_toml_names_the_file() -> None:
    assert config_error("root = ").startswith(f"{SOURCE}: invalid TOML: ")


def test_config_version_mismatch() -> None:
    assert config_error("version = 2") == (
        f"{SOURCE}: [top level] key 'version': unsupported version 2, "
        f"this daemon reads version {CONFIG_VERSION}"
    )


def test_config_root_and_state_must_differ() -> None:
    assert config_error('root = "/a"\nstate = "/a/"') == (
        f"{SOURCE}: [top level] 'root' and 'state' must differ"
    )


def test_config_cgroup_parent_defaults_to_moorage() -> None:
    assert parse_config("", SOURCE).cgroup_parent == "/moorage"


@pytest.mark.parametrize("parent", ["/", "/moorage-ci-17", "/system.slice/moorage@2.service"])
def test_config_cgroup_parent_takes_an_absolute_cgroup_path(parent: str) -> None:
    assert parse_config(f'cgroup_parent = "{parent}"', SOURCE).cgroup_parent == parent


@pytest.mark.parametrize("parent", ["", "moorage", "/moorage/", "//moorage", "/a/../b", "/a b"])
def test_config_cgroup_parent_must_be_an_absolute_cgroup_path(parent: str) -> None:
    assert config_error(f'cgroup_parent = "{parent}"') == (
        f"{SOURCE}: [top level] key 'cgroup_parent': {parent!r} is not an absolute cgroup "
        "path such as '/moorage' or '/'"
    )


@pytest.mark.parametrize("key", ["disabled_plugins", "required_plugins"])
def test_config_plugin_lists_take_full_names(key: str) -> None:
    assert config_error(f'{key} = ["metadata"]') == (
        f"{SOURCE}: [top level] key '{key}': 'metadata' is not a full plugin name '<type>.<id>'"
    )


def test_config_unreadable_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read: No such file or directory$"):
        load_config(missing)


def test_config_load_names_the_file_it_read(tmp_path: Path) -> None:
    path = tmp_path / "plugins.toml"
    path.write_text("[api]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: \[api\] unknown key 'bogus'$"):
        load_config(path)


# -- plugin sections ------------------------------------------------------------


def test_plugin_config_defaults_when_the_section_is_absent() -> None:
    assert decode_plugin_config(parse_config(""), "greeter.basic", GreeterConfig) == GreeterConfig()


class _Required(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str


class _RefusesDefaults(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    size: int = 0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("size must be at least 1")


def test_plugin_config_absent_section_gives_what_decoding_an_empty_table_gives() -> None:
    config = parse_config("")
    for struct in (GreeterConfig, Inner):
        assert decode_plugin_config(config, "x.y", struct) == msgspec.convert({}, struct)
    with pytest.raises(ConfigError, match=r'\[plugins."x.y"\]: object missing required field'):
        decode_plugin_config(config, "x.y", _Required)
    with pytest.raises(ConfigError, match=r'\[plugins."x.y"\]: size must be at least 1$'):
        decode_plugin_config(config, "x.y", _RefusesDefaults)


def test_plugin_config_decoded_from_its_section() -> None:
    config = parse_config('[plugins."greeter.basic"]\ngreeting = "hi"\ninner.size = 3')
    assert decode_plugin_config(config, "greeter.basic", GreeterConfig) == GreeterConfig(
        greeting="hi", inner=Inner(size=3)
    )


def test_plugin_config_wrong_type_names_file_section_and_key() -> None:
    assert plugin_error('[plugins."greeter.basic"]\ngreeting = 5') == (
        f"{SOURCE}: [plugins.\"greeter.basic\"] key 'greeting': expected `str`, got `int`"
    )


def test_plugin_config_unknown_key_names_file_section_and_key() -> None:
    assert plugin_error('[plugins."greeter.basic"]\ngreting = "hi"') == (
        f"{SOURCE}: [plugins.\"greeter.basic\"] unknown key 'greting'"
    )


def test_plugin_config_nested_key_is_named_with_its_path() -> None:
    assert plugin_error('[plugins."greeter.basic".inner]\nsize = "big"') == (
        f"{SOURCE}: [plugins.\"greeter.basic\"] key 'inner.size': expected `int`, got `str`"
    )
    assert plugin_error('[plugins."greeter.basic".inner]\nsise = 1') == (
        f"{SOURCE}: [plugins.\"greeter.basic\"] unknown key 'inner.sise'"
    )


def test_plugin_config_unknown_section() -> None:
    assert plugin_error('[plugins."greeter.basik"]\ngreeting = "hi"') == (
        f'{SOURCE}: [plugins."greeter.basik"] no such plugin; '
        "known plugins: greeter.basic, plain.one"
    )


def test_plugin_config_section_for_a_plugin_without_config() -> None:
    assert plugin_error('[plugins."plain.one"]\nx = 1') == (
        f'{SOURCE}: [plugins."plain.one"] this plugin takes no configuration'
    )


def test_plugin_config_unknown_section_tolerated_when_a_package_failed_to_load() -> None:
    """The section may belong to the broken package; its load failure is reported instead."""
    failure = LoadFailure(PluginSource("broken", "1.0", "broken", "broken"), "import failed")
    config = parse_config('[plugins."broken.thing"]\nx = 1', SOURCE)
    decoded = validate_plugin_configs(config, discovery(GREETER, failures=[failure]))
    assert decoded == {"greeter.basic": GreeterConfig()}


@pytest.mark.parametrize("key", ["disabled_plugins", "required_plugins"])
def test_plugin_lists_name_known_plugins(key: str) -> None:
    assert plugin_error(f'{key} = ["greeter.basik"]') == (
        f"{SOURCE}: [top level] key '{key}': no plugin 'greeter.basik'"
    )


# -- moorage config default | check -----------------------------------------------


def test_config_default_parses_and_passes_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "default"]) == 0
    text = capsys.readouterr().out
    raw = tomllib.loads(text)
    assert raw["version"] == CONFIG_VERSION
    assert raw["plugins"]["events.exchange"] == {"buffer_size": 1024}
    assert raw["plugins"]["metadata.sqlite"] == {"synchronous": "FULL"}
    path = tmp_path / "plugins.toml"
    path.write_text(text)
    assert main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"


def test_config_check_reports_the_error_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plugins.toml"
    path.write_text('[plugins."events.exchange"]\nbuffer_size = 0\n')
    assert main(["config", "check", str(path)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        f"moorage: invalid_argument: {path}: [plugins.\"events.exchange\"] key 'buffer_size': "
        "expected `int` >= 1\n"
    )


def test_config_check_accepts_a_disabled_requirement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dependants of a disabled plugin skip at start; the file itself is valid."""
    path = tmp_path / "plugins.toml"
    path.write_text('disabled_plugins = ["metadata.sqlite"]\n')
    assert main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"
