"""Load ``inventory/<env>.yml`` over ``inventory/defaults.yml``, resolve secrets, select hosts.

Errors always name the file, the key path and what was expected, e.g.
``inventory/prod.yml: hosts.2.port: must be between 1 and 65535``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from deployer.core.config import HostConfig, InventoryConfig, KeyPathError, StrategyConfig, short_repr
from deployer.errors import InventoryError

DEFAULTS_FILE = "defaults.yml"
ENV_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Inventory:
    """A validated environment plus its resolved secrets."""

    env: str
    path: Path
    config: InventoryConfig
    secrets: Mapping[str, SecretStr]
    """The environment's secrets (``env.secret``), by node variable."""
    host_secrets: Mapping[str, Mapping[str, SecretStr]] = field(default_factory=dict)
    """Per-host secrets (``hosts[].secret``), by host name, then node variable."""

    @property
    def hosts(self) -> tuple[HostConfig, ...]:
        return self.config.hosts

    def secrets_for(self, host: HostConfig | str) -> dict[str, SecretStr]:
        """The secrets the node on ``host`` gets: the environment's, with the host's own replacing them."""
        name = host if isinstance(host, str) else host.name
        return {**self.secrets, **self.host_secrets.get(name, {})}

    def secret_values(self) -> set[str]:
        """Every secret value of the environment and of each host: what output must never show."""
        values = {v.get_secret_value() for v in self.secrets.values()}
        values.update(v.get_secret_value() for per_host in self.host_secrets.values() for v in per_host.values())
        return values

    def select(self, hosts: Iterable[str] = (), roles: Iterable[str] = ()) -> list[HostConfig]:
        """Hosts matching every given filter; a filter that matches nothing is an error, never "all"."""
        host_names = [h for h in hosts if h]
        role_names = [r for r in roles if r]
        known = {h.name for h in self.config.hosts}
        unknown = [name for name in host_names if name not in known]
        if unknown:
            raise InventoryError(
                f"{self.path}: no host named {', '.join(unknown)}",
                hint=f"hosts in this environment: {', '.join(sorted(known))}",
            )
        selected = [h for h in self.config.hosts if not host_names or h.name in host_names]
        if role_names:
            selected = [h for h in selected if set(role_names) & set(h.roles)]
        if not selected:
            raise InventoryError(
                f"{self.path}: the filter hosts={host_names or 'any'} roles={role_names or 'any'} matches no host",
                hint="a filter that matches nothing is refused rather than treated as 'all hosts'",
            )
        return selected

    def migrator(self) -> HostConfig | None:
        """The one host that runs migrations (first with the migrate role), or None without migrations."""
        if self.config.migrate is None:
            return None
        return self.config.hosts_with_role(self.config.migrate.role)[0]


def load_inventory(
    env: str,
    directory: Path | str = "inventory",
    *,
    environ: Mapping[str, str] | None = None,
    resolve_secrets: bool = True,
) -> Inventory:
    """Read and validate an environment; with ``resolve_secrets`` every declared secret must be found.

    Every problem is an :class:`InventoryError` naming the file that holds the offending value
    (``inventory/defaults.yml`` or the environment's own file), the key path and what is expected.
    Files the inventory points at are checked here too (``ssh.identity_file``; ``env.secrets_file``
    when secrets are resolved), so a deploy, ``check`` or a dry run reports them before any work.
    """
    if not isinstance(env, str) or not ENV_NAME_RE.fullmatch(env):
        raise InventoryError(f"environment name {env!r} must be letters, digits, '-' or '_' (at most 64)")
    directory = Path(directory)
    path = directory / f"{env}.yml"
    if not path.is_file():
        available = sorted(p.stem for p in directory.glob("*.yml") if p.name != DEFAULTS_FILE)
        raise InventoryError(
            f"{path}: no such inventory file",
            hint=f"environments here: {', '.join(available) or 'none'}; create {path} (see docs/inventory.md)",
        )
    layers = [Layer(path, _read_yaml(path))]
    defaults_path = directory / DEFAULTS_FILE
    if defaults_path.is_file():
        layers.append(Layer(defaults_path, _read_yaml(defaults_path)))
    config = parse_layers(layers)
    sources = Sources(tuple(layers))
    _check_identity_file(config, sources)
    if resolve_secrets:
        secrets, host_secrets = _resolve_secrets(config, sources, os.environ if environ is None else environ)
    else:
        # Read-only tasks: the names are known, the values are not needed (rendered masked).
        unresolved = SecretStr("<not resolved>")
        secrets = dict.fromkeys(config.env.secret, unresolved)
        host_secrets = {h.name: dict.fromkeys(h.secret, unresolved) for h in config.hosts if h.secret}
    return Inventory(env=env, path=path, config=config, secrets=secrets, host_secrets=host_secrets)


@dataclass(frozen=True)
class Layer:
    """One inventory file and what it holds, before merging."""

    path: Path
    data: object


@dataclass(frozen=True)
class Sources:
    """The files an environment is merged from, most specific first: which one set a given key."""

    layers: tuple[Layer, ...]

    def file_for(self, loc: Sequence[str | int]) -> Path:
        """The file whose value is at ``loc``: the first layer that holds the key path (or a value that
        replaced the mapping above it); a key nobody set (a missing required key) is the first file's."""
        for layer in self.layers:
            if _holds(layer.data, loc):
                return layer.path
        return self.layers[0].path


def _holds(data: object, loc: Sequence[str | int]) -> bool:
    node = data
    for part in loc:
        if not isinstance(node, Mapping):
            # A scalar or a list replaced everything below it (lists are never merged).
            return node is not data
        if part in node:
            node = node[part]
        elif str(part) in node:
            node = node[str(part)]
        else:
            return False
    return True


def parse_layers(layers: Sequence[Layer]) -> InventoryConfig:
    """Merge the layers (the first overrides the rest) and validate; errors name the file that set the value."""
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        if not isinstance(layer.data, Mapping):
            raise InventoryError(
                f"{layer.path}: expected a mapping of settings at the top level, got {short_repr(layer.data)}"
            )
        merged = deep_merge(merged, layer.data)
    sources = Sources(tuple(layers))
    try:
        return InventoryConfig.model_validate(merged)
    except ValidationError as exc:
        problems = error_messages(exc.errors(include_url=False), merged)
        lines = [f"{sources.file_for(loc)}: {message}" for loc, message in problems]
        raise InventoryError("\n".join(dict.fromkeys(lines))) from None


def parse_config(data: object, path: Path | str) -> InventoryConfig:
    """Validate one parsed document, turning Pydantic's errors into operator messages."""
    return parse_layers([Layer(Path(path), data)])


# Tags Pydantic adds to a location inside a union or around a validator function; not keys of the file.
_UNION_TAG_RE = re.compile(r"^(?:str|int|float|bool|none|function-.*|[a-z]+\[.*\]|[A-Z][A-Za-z]*Config)$")

# What a value must be, in words, by the kind of Pydantic error.
_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping of names to values",
    "model_type": "a mapping of settings",
    "model_attributes_type": "a mapping of settings",
    "tuple_type": "a list",
    "list_type": "a list",
}
# Better words for particular keys (list indexes written as *).
_EXPECTED_AT = {
    "hosts": "a list of hosts (each a mapping with at least name and address)",
    "hosts.*": "a host: a mapping with at least name and address",
    "hosts.*.roles": "a list of role names",
    "hosts.*.env": "a mapping of variable names to values",
    "env.clear": "a mapping of variable names to values",
    "env.secret": "a mapping of node variable to the name to look up, or a list of names",
    "hosts.*.secret": "a mapping of node variable to the name to look up, or a list of names",
    "build.env": "a mapping of variable names to values",
    "build.host": "the name of an inventory host, or a mapping with name and address of a build machine",
}


def error_messages(errors: Sequence[Mapping[str, Any]], data: object = None) -> list[tuple[tuple[str | int, ...], str]]:
    """Pydantic's errors as ``(key path, "key.path: what is expected, got ...")``, one per key path."""
    grouped: dict[tuple[str | int, ...], list[Mapping[str, Any]]] = {}
    for err in errors:
        grouped.setdefault(_location(err, data), []).append(err)
    result: list[tuple[tuple[str | int, ...], str]] = []
    for loc, errs in grouped.items():
        messages = [format_error(err, data) for err in errs]
        if len(errs) > 1 and all(err["type"] in _EXPECTED for err in errs):
            # The members of a union each failed: one sentence naming every accepted form.
            key = key_path(loc)
            expected = _EXPECTED_AT.get(_pattern(loc)) or " or ".join(dict.fromkeys(_EXPECTED[e["type"]] for e in errs))
            messages = [f"{key}: must be {expected}, got {short_repr(errs[0].get('input'))}"]
        result.extend((loc, message) for message in dict.fromkeys(messages))
    return result


def _location(err: Mapping[str, Any], data: object = None) -> tuple[str | int, ...]:
    """The key path of an error in the file's terms: Pydantic's location without its union and validator
    tags (a part that looks like one is kept when ``data`` really has such a key)."""
    parts: list[str | int] = []
    node = data
    for part in err["loc"]:
        if part == "[key]":
            # An error about a mapping's key rather than its value; the key itself is in the path.
            continue
        real = (isinstance(node, Mapping) and part in node) or (
            isinstance(node, list | tuple) and isinstance(part, int) and 0 <= part < len(node)
        )
        if not real and _UNION_TAG_RE.fullmatch(str(part)):
            continue
        parts.append(part)
        node = node[part] if real else None  # type: ignore[index]
    raised = (err.get("ctx") or {}).get("error")
    if isinstance(raised, KeyPathError):
        parts.extend(int(p) if p.isdigit() else p for p in raised.key.split("."))
    return tuple(parts)


_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def key_path(loc: Sequence[str | int]) -> str:
    """``hosts.2.env.PORT``; a key that is not plain (empty, spaces, control characters, dots, very long) is
    quoted so the path stays one readable line."""
    return ".".join(
        str(p) if isinstance(p, int) or (isinstance(p, str) and _PLAIN_KEY_RE.fullmatch(p)) else short_repr(p)
        for p in loc
    )


def _pattern(loc: Sequence[str | int]) -> str:
    return ".".join("*" if isinstance(p, int) else str(p) for p in loc)


def format_error(err: Mapping[str, Any], data: object = None) -> str:
    """One Pydantic error as ``key.path: what was expected``."""
    loc_parts = _location(err, data)
    loc = key_path(loc_parts)
    kind = err["type"]
    msg = str(err["msg"])
    ctx = err.get("ctx") or {}
    got = f", got {short_repr(err.get('input'))}"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif kind == "missing":
        msg = "is required"
    elif kind == "extra_forbidden":
        msg = "unknown key (check the spelling; see docs/inventory.md)"
    elif kind == "invalid_key":
        msg = "keys must be text"
    elif kind in _EXPECTED:
        msg = f"must be {_EXPECTED_AT.get(_pattern(loc_parts), _EXPECTED[kind])}{got}"
    elif kind == "literal_error":
        msg = f"must be {ctx.get('expected', 'one of the documented values')}{got}"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = next(iter(ctx.values()), "?")
        words = {
            "greater_than_equal": "at least",
            "greater_than": "greater than",
            "less_than_equal": "at most",
            "less_than": "less than",
        }[kind]
        msg = f"must be {words} {bound}{got}"
    else:
        msg = f"{msg[:1].lower()}{msg[1:]}{got}"
    if not loc:
        return msg
    if msg.startswith(f"{loc}.") or msg.startswith(f"{loc}:"):
        return msg
    return f"{loc}: {msg}"


# Command-line flags that override the inventory's strategy, by field.
STRATEGY_FLAGS = {
    "kind": "--strategy",
    "batch_size": "--batch-size",
    "max_fail": "--max-fail",
    "pause": "--pause",
    "canary": "--canary",
    "workers": "--workers",
}


def validate_strategy_flags(inventory: Inventory, flags: Mapping[str, object]) -> StrategyConfig:
    """The inventory's strategy with command-line overrides applied, validated before any work is done;
    an :class:`InventoryError` names the flag (``--batch-size: must be at least 1``)."""
    unknown = [name for name in flags if name not in STRATEGY_FLAGS]
    if unknown:
        raise InventoryError(f"--{unknown[0].replace('_', '-')}: not a strategy option")
    data = {**inventory.config.strategy.model_dump(), **flags}
    try:
        return StrategyConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for loc, message in error_messages(exc.errors(include_url=False), data):
            field = str(loc[0]) if loc else ""
            prefix = key_path(loc)
            text = message.removeprefix(f"{prefix}: ") if prefix else message
            lines.append(f"{STRATEGY_FLAGS.get(field, field or 'strategy')}: {text}")
        raise InventoryError("\n".join(lines)) from None


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) in ``override`` replaces ``base``."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InventoryError(f"{path}:{where}: not valid YAML: {problem}") from None
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise InventoryError(f"{path}: nested too deeply to be an inventory") from None
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror}") from None
    return {} if data is None else data


def read_secrets_file(path: Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` file (``#`` comments, optional ``export``, optional single/double quotes)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise InventoryError(f"{path}: line {number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _repository_root(start: Path) -> Path | None:
    for directory in [start, *start.parents]:
        if (directory / ".git").exists():
            return directory
    return None


def check_secrets_file(secrets_path: Path, inventory_path: Path) -> None:
    """Refuse a secrets file that others can read, or that lives in the inventory's repository."""
    mode = secrets_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise InventoryError(
            f"{inventory_path}: env.secrets_file: {secrets_path} is readable by other users (mode {mode:04o})",
            hint=f"chmod 600 {secrets_path}",
        )
    root = _repository_root(inventory_path.resolve().parent)
    if root is not None and secrets_path.resolve().is_relative_to(root):
        raise InventoryError(
            f"{inventory_path}: env.secrets_file: {secrets_path} is inside the repository {root}",
            hint="keep secrets outside the repository (e.g. ~/.config/deployer/<env>.env) or in the environment",
        )


def _check_identity_file(config: InventoryConfig, sources: Sources) -> None:
    """A configured key that is not there fails every connection: say so once, with the key path."""
    if not config.ssh.identity_file:
        return
    where = sources.file_for(("ssh", "identity_file"))
    # Relative to the current directory, as the SSH transport opens it.
    key = Path(os.path.expanduser(config.ssh.identity_file))
    if not key.exists():
        raise InventoryError(
            f"{where}: ssh.identity_file: {key} does not exist",
            hint="fix the path, or remove ssh.identity_file to use ssh-agent and ~/.ssh/id_*",
        )
    if not key.is_file():
        raise InventoryError(f"{where}: ssh.identity_file: {key} is not a file")


def _resolve_secrets(
    config: InventoryConfig, sources: Sources, environ: Mapping[str, str]
) -> tuple[dict[str, SecretStr], dict[str, dict[str, SecretStr]]]:
    """The environment's and each host's secrets; every one that is not found is named (all at once)."""
    file_values: dict[str, str] = {}
    source = "the environment"
    if config.env.secrets_file:
        where = sources.file_for(("env", "secrets_file"))
        secrets_path = Path(os.path.expanduser(config.env.secrets_file))
        if not secrets_path.is_absolute():
            secrets_path = where.parent / secrets_path
        if not secrets_path.exists():
            raise InventoryError(
                f"{where}: env.secrets_file: the secrets file {secrets_path} does not exist",
                hint=f"create it with KEY=VALUE lines (chmod 600 {secrets_path}), or fix env.secrets_file",
            )
        if not secrets_path.is_file():
            raise InventoryError(f"{where}: env.secrets_file: {secrets_path} is not a regular file")
        check_secrets_file(secrets_path, where)
        try:
            file_values = read_secrets_file(secrets_path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise InventoryError(f"{where}: env.secrets_file: cannot read {secrets_path}: {reason}") from None
        source = f"the environment or {secrets_path}"
    missing: list[str] = []

    def resolve(wanted: Mapping[str, str], key: tuple[str | int, ...]) -> dict[str, SecretStr]:
        resolved: dict[str, SecretStr] = {}
        for node_var, lookup in wanted.items():
            value = environ.get(lookup, file_values.get(lookup))
            if value is None:
                loc = (*key, node_var)
                missing.append(f"{sources.file_for(loc)}: {key_path(loc)}: {lookup} is not set in {source}")
            else:
                resolved[node_var] = SecretStr(value)
        return resolved

    secrets = resolve(config.env.secret, ("env", "secret"))
    host_secrets = {
        host.name: resolve(host.secret, ("hosts", index, "secret"))
        for index, host in enumerate(config.hosts)
        if host.secret
    }
    if missing:
        raise InventoryError(
            "\n".join(missing), hint="export the variable or add it to the secrets file (never to the inventory)"
        )
    return secrets, host_secrets
