"""Issue 18: every inventory error names the right file, the full key path and what is expected, in words;
issue 13: no input, however odd, ends in anything but an InventoryError (property-based)."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer.core.inventory import Inventory, load_inventory, validate_strategy_flags
from deployer.errors import InventoryError

from .helpers import BASE, write_inventory


def error_of(directory: Path, env: str = "prod", environ: dict[str, str] | None = None, **kwargs: Any) -> str:
    with pytest.raises(InventoryError) as info:
        load_inventory(env, directory, environ={"HELLO_SECRET": "x"} if environ is None else environ, **kwargs)
    return str(info.value)


@pytest.fixture
def inv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``inventory/`` in a scratch project, the current directory (paths in messages are as typed)."""
    monkeypatch.chdir(tmp_path)
    return Path("inventory")


def test_batch_size_below_one_names_the_key(inv: Path) -> None:
    write_inventory(inv, {**BASE, "strategy": {"kind": "rolling", "batch_size": -3}}, env="prod")
    assert error_of(inv) == "inventory/prod.yml: strategy.batch_size: must be at least 1"


def test_hosts_as_a_string_says_a_list_of_hosts(inv: Path) -> None:
    write_inventory(inv, {**BASE, "hosts": "a-string"}, env="prod")
    assert error_of(inv) == (
        "inventory/prod.yml: hosts: must be a list of hosts (each a mapping with at least name and address), "
        "got 'a-string'"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"keep_releases": 0}, "keep_releases: must be at least 1, got 0"),
        ({"keep_releases": 1.5}, "keep_releases: must be a whole number, got 1.5"),
        ({"ssh": {"forward_agent": "maybe"}}, "ssh.forward_agent: must be true or false, got 'maybe'"),
        ({"ssh": {"keepalive_count": 1000}}, "ssh.keepalive_count: must be at most 100, got 1000"),
        ({"app": "hello"}, "app: must be a mapping of settings, got 'hello'"),
        ({"app": {"name": "hello", "flavour": "gleam"}}, "app.flavour: must be 'mix', 'rebar3' or 'distillery'"),
        ({"env": {"clear": ["A"]}}, "env.clear: must be a mapping of variable names to values, got ['A']"),
        ({"env": {"clear": {"A": None}}}, "env.clear.A: must be text, got None"),
        ({"env": {"secret": [["A"]]}}, "env.secret: must be a mapping of node variable to the name to look up"),
        ({"strategy": {"batch_size": [1]}}, "strategy.batch_size: must be a count like 2 or a percentage like 25%"),
        ({"strategy": {"max_fail": "150%"}}, "strategy.max_fail: '150%': a percentage must be between 0% and 100%"),
        ({"build": {"host": 3}}, "build.host: must be the name of an inventory host, or a mapping with name and"),
        ({"health": {"http": "ftp://x"}}, "health.http: must be an http:// or https:// URL"),
        ({"migrate": {"eval": "X.m()", "role": "db"}}, "migrate.role: no host has the role 'db'"),
        ({"keep_releases": "x" * 10000}, "keep_releases: must be a whole number, got 'xxxxxxxxxxxx"),
    ],
)
def test_each_message_has_file_key_and_words(inv: Path, change: dict[str, Any], expected: str) -> None:
    write_inventory(inv, {**BASE, **change}, env="prod")
    message = error_of(inv)
    assert message.startswith(f"inventory/prod.yml: {expected}"), message
    assert "should be" not in message and "Input" not in message
    assert len(message) < 300


def test_host_roles_as_a_string(inv: Path) -> None:
    data = copy.deepcopy(BASE)
    data["hosts"][1]["roles"] = "app"
    write_inventory(inv, data, env="prod")
    assert error_of(inv) == "inventory/prod.yml: hosts.1.roles: must be a list of role names, got 'app'"


def test_errors_from_defaults_are_blamed_on_defaults(inv: Path) -> None:
    write_inventory(inv, {"keep_releases": 0, "ssh": {"port": 99999, "bogus": 1}}, env="defaults")
    write_inventory(inv, {**BASE, "ssh": {"user": "deploy"}}, env="prod")
    lines = error_of(inv).splitlines()
    assert sorted(lines) == [
        "inventory/defaults.yml: keep_releases: must be at least 1, got 0",
        "inventory/defaults.yml: ssh.bogus: unknown key (check the spelling; see docs/inventory.md)",
        "inventory/defaults.yml: ssh.port: must be between 1 and 65535",
    ]


def test_a_value_the_environment_overrides_is_its_own(inv: Path) -> None:
    write_inventory(inv, {"keep_releases": 3, "strategy": {"batch_size": 2}}, env="defaults")
    write_inventory(inv, {**BASE, "keep_releases": -1, "strategy": "rolling"}, env="prod")
    lines = error_of(inv).splitlines()
    assert "inventory/prod.yml: keep_releases: must be at least 1, got -1" in lines
    assert "inventory/prod.yml: strategy: must be a mapping of settings, got 'rolling'" in lines


def test_missing_keys_are_blamed_on_the_environment(inv: Path) -> None:
    write_inventory(inv, {"ssh": {"user": "ops"}}, env="defaults")
    data = {k: v for k, v in BASE.items() if k != "deploy_to"}
    write_inventory(inv, data, env="prod")
    assert error_of(inv) == "inventory/prod.yml: deploy_to: is required"


def test_defaults_that_are_not_a_mapping(inv: Path) -> None:
    inv.mkdir()
    (inv / "defaults.yml").write_text("- just\n- a list\n")
    write_inventory(inv, BASE, env="prod")
    assert error_of(inv).startswith("inventory/defaults.yml: expected a mapping of settings at the top level")


def test_missing_secrets_file_says_the_file_is_missing(inv: Path) -> None:
    write_inventory(inv, {**BASE, "env": {"secret": ["HELLO_SECRET"], "secrets_file": "/nonexistent/nope.env"}}, "prod")
    with pytest.raises(InventoryError) as info:
        load_inventory("prod", inv, environ={})
    assert str(info.value).startswith(
        "inventory/prod.yml: env.secrets_file: the secrets file /nonexistent/nope.env does not exist"
    )


def test_secrets_file_from_defaults_is_relative_to_defaults_and_blamed_on_it(inv: Path) -> None:
    write_inventory(inv, {"env": {"secrets_file": "../nope.env"}}, env="defaults")
    write_inventory(inv, {**BASE, "env": {"secret": ["HELLO_SECRET"]}}, "prod")
    message = error_of(inv, environ={})
    assert message.startswith("inventory/defaults.yml: env.secrets_file: the secrets file inventory/../nope.env")


def test_missing_secrets_are_all_named(inv: Path) -> None:
    write_inventory(inv, {**BASE, "env": {"secret": {"DATABASE_URL": "PROD_DB", "API_KEY": "API_KEY"}}}, "prod")
    assert sorted(error_of(inv, environ={}).splitlines()[:2]) == [
        "inventory/prod.yml: env.secret.API_KEY: API_KEY is not set in the environment",
        "inventory/prod.yml: env.secret.DATABASE_URL: PROD_DB is not set in the environment",
    ]


def test_missing_identity_file_is_reported_at_load(inv: Path) -> None:
    write_inventory(inv, {**BASE, "ssh": {"identity_file": "keys/deploy_ed25519"}}, "prod")
    message = error_of(inv)
    assert message.startswith("inventory/prod.yml: ssh.identity_file: keys/deploy_ed25519 does not exist")
    # Read-only tasks too: every one of them connects with that key.
    assert error_of(inv, resolve_secrets=False).startswith("inventory/prod.yml: ssh.identity_file:")
    Path("keys").mkdir()
    Path("keys/deploy_ed25519").write_text("key")
    assert load_inventory("prod", inv, environ={"HELLO_SECRET": "x"}).config.ssh.identity_file


def test_unreadable_inventory_files(inv: Path) -> None:
    inv.mkdir()
    (inv / "prod.yml").write_bytes(b"app:\n  name: \xff\xfe\n")
    assert error_of(inv).startswith("inventory/prod.yml: not UTF-8 text")
    (inv / "prod.yml").write_text("[" * 600 + "]" * 600)
    assert error_of(inv) == "inventory/prod.yml: nested too deeply to be an inventory"
    (inv / "prod.yml").write_text("? [a, b]\n: c\n")
    assert error_of(inv).startswith("inventory/prod.yml")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"batch_size": "0"}, "--batch-size: must be at least 1"),
        ({"batch_size": "abc"}, "--batch-size: 'abc' must be a count like 2 or a percentage like 25%"),
        ({"batch_size": "150%"}, "--batch-size: '150%': a percentage must be between 0% and 100%"),
        ({"max_fail": "abc"}, "--max-fail: 'abc' must be a count like 2 or a percentage like 25%"),
        ({"kind": "sideways"}, "--strategy: must be 'parallel' or 'rolling', got 'sideways'"),
        ({"pause": -1}, "--pause: must be at least 0"),
        ({"pause": "soon"}, "--pause: must be a number, got 'soon'"),
    ],
)
def test_strategy_flags_are_validated_before_any_work(tmp_path: Path, flags: dict[str, object], expected: str) -> None:
    write_inventory(tmp_path / "inventory", BASE, "prod")
    inventory = load_inventory("prod", tmp_path / "inventory", environ={"HELLO_SECRET": "x"})
    with pytest.raises(InventoryError) as info:
        validate_strategy_flags(inventory, flags)
    assert str(info.value).startswith(expected), str(info.value)


def test_valid_strategy_flags_merge_over_the_inventory(tmp_path: Path) -> None:
    write_inventory(tmp_path / "inventory", {**BASE, "strategy": {"kind": "rolling", "pause": 2}}, "prod")
    inventory = load_inventory("prod", tmp_path / "inventory", environ={"HELLO_SECRET": "x"})
    strategy = validate_strategy_flags(inventory, {"batch_size": "50%", "max_fail": "1"})
    assert (strategy.kind, strategy.batch_size, strategy.max_fail, strategy.pause) == ("rolling", "50%", "1", 2.0)


# --- property: nothing but InventoryError, always with the file and a key path -----------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\u202e", "😀", "9"]), st.integers(300, 5000)),
    st.sampled_from(["", "/", "/.", "..", "25%", "150%", "-3", "0", "${shared}", "\u202e", "😀", "\x00", "a\nb"]),
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "app",
            "name",
            "flavour",
            "deploy_to",
            "keep_releases",
            "hosts",
            "address",
            "port",
            "user",
            "roles",
            "env",
            "clear",
            "secret",
            "secrets",
            "secrets_file",
            "ssh",
            "identity_file",
            "strategy",
            "batch_size",
            "max_fail",
            "kind",
            "health",
            "http",
            "rpc",
            "deadline",
            "node",
            "migrate",
            "eval",
            "build",
            "host",
            "PATH",
            "HOME",
        ]
    ),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=20,
)


@st.composite
def inventories(draw: st.DrawFn) -> Any:
    """Mostly the valid example with parts replaced by junk at any depth; sometimes junk throughout."""
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)
    data: Any = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        node = data
        path = draw(st.lists(st.one_of(KEYS, st.integers(0, 3)), min_size=1, max_size=4))
        for part in path[:-1]:
            if isinstance(node, dict) and part in node and isinstance(node[part], dict | list):
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part] if isinstance(node[part], dict | list) else node
        value = draw(VALUES)
        if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)):
            node[path[-1]] = value
    return data


def _write(directory: Path, name: str, data: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yml").write_text(yaml.safe_dump(data, allow_unicode=True))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(env_data=inventories(), defaults=st.one_of(st.none(), VALUES, inventories()), resolve=st.booleans())
def test_any_inventory_loads_or_fails_with_file_and_key(
    tmp_path_factory: pytest.TempPathFactory, env_data: Any, defaults: Any, resolve: bool
) -> None:
    directory = tmp_path_factory.mktemp("inv")
    _write(directory, "prod", env_data)
    if defaults is not None:
        _write(directory, "defaults", defaults)
    try:
        load_inventory("prod", directory, environ={"HELLO_SECRET": "x"}, resolve_secrets=resolve)
    except InventoryError as exc:
        for line in exc.message.splitlines():
            file, sep, rest = line.partition(": ")
            assert sep and file in {str(directory / "prod.yml"), str(directory / "defaults.yml")}, line
            # A key path (or a top-level sentence), then what is expected in words; never Pydantic's wording.
            assert rest and "should be" not in rest and "Input" not in rest, line
            assert len(line) < 600, line


@functools.cache
def _example_inventory() -> Inventory:
    directory = Path(tempfile.mkdtemp(prefix="deployer-inv-"))
    write_inventory(directory, BASE, "prod")
    try:
        return load_inventory("prod", directory, environ={"HELLO_SECRET": "x"})
    finally:
        shutil.rmtree(directory)


@settings(max_examples=150, deadline=None)
@given(
    flags=st.dictionaries(
        st.sampled_from(["kind", "batch_size", "max_fail", "pause", "canary"]),
        st.one_of(SCALARS, st.lists(SCALARS, max_size=2)),
        max_size=4,
    )
)
def test_any_strategy_flags_validate_or_fail_naming_the_flag(
    tmp_path_factory: pytest.TempPathFactory, flags: dict[str, Any]
) -> None:
    directory = tmp_path_factory.mktemp("inv")
    write_inventory(directory, BASE, "prod")
    inventory = load_inventory("prod", directory, environ={"HELLO_SECRET": "x"})
    try:
        validate_strategy_flags(inventory, flags)
    except InventoryError as exc:
        assert exc.message.startswith("--"), exc.message
        assert "should be" not in exc.message


def test_environment_names_are_checked(tmp_path: Path) -> None:
    for env in ["../etc/passwd", "", "a b", "x" * 100, "prod\n"]:
        with pytest.raises(InventoryError, match="environment name"):
            load_inventory(env, tmp_path)
    assert os.getcwd()  # nothing above changed directory
