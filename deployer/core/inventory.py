"""Load ``inventory/<env>.yml`` over ``inventory/defaults.yml``, resolve secrets, select hosts.

Errors always name the file, the key path and what was expected, e.g.
``inventory/prod.yml: hosts.2.port: must be between 1 and 65535``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from deployer.core.config import HostConfig, InventoryConfig, KeyPathError
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

    @property
    def hosts(self) -> tuple[HostConfig, ...]:
        return self.config.hosts

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
    """Read and validate an environment; with ``resolve_secrets`` every declared secret must be found."""
    if not ENV_NAME_RE.fullmatch(env):
        raise InventoryError(f"environment name {env!r} must be letters, digits, '-' or '_'")
    directory = Path(directory)
    path = directory / f"{env}.yml"
    if not path.is_file():
        available = sorted(p.stem for p in directory.glob("*.yml") if p.name != DEFAULTS_FILE)
        raise InventoryError(
            f"{path}: no such inventory file",
            hint=f"environments here: {', '.join(available) or 'none'}; create {path} (see docs/inventory.md)",
        )
    data = _read_yaml(path)
    defaults_path = directory / DEFAULTS_FILE
    if defaults_path.is_file():
        data = deep_merge(_read_yaml(defaults_path), data)
    config = parse_config(data, path)
    if resolve_secrets:
        secrets = _resolve_secrets(config, path, os.environ if environ is None else environ)
    else:
        # Dry runs and read-only tasks: the names are known, the values are not needed (rendered masked).
        secrets = {name: SecretStr("<not resolved>") for name in config.env.secret}
    return Inventory(env=env, path=path, config=config, secrets=secrets)


def parse_config(data: object, path: Path | str) -> InventoryConfig:
    """Validate a parsed document, turning Pydantic's errors into operator messages."""
    if not isinstance(data, dict):
        raise InventoryError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return InventoryConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: {format_error(err)}" for err in exc.errors(include_url=False)]
        raise InventoryError("\n".join(lines)) from None


def format_error(err: Mapping[str, Any]) -> str:
    """One Pydantic error as ``key.path: what was expected``."""
    # "[key]" marks an error about a mapping's key rather than its value; the key itself is in the path.
    loc = ".".join(str(part) for part in err["loc"] if not str(part).startswith("function-") and part != "[key]")
    raised = (err.get("ctx") or {}).get("error")
    if isinstance(raised, KeyPathError):
        loc = f"{loc}.{raised.key}" if loc else raised.key
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif kind == "missing":
        msg = "is required"
    elif kind == "extra_forbidden":
        msg = "unknown key (check the spelling; see docs/inventory.md)"
    elif kind in {
        "string_type",
        "int_type",
        "int_parsing",
        "float_type",
        "float_parsing",
        "bool_type",
        "bool_parsing",
        "dict_type",
        "tuple_type",
        "list_type",
        "model_type",
        "literal_error",
    }:
        msg = f"{msg[0].lower()}{msg[1:]}, got {err.get('input')!r}"
    if not loc:
        return msg
    if msg.startswith(f"{loc}.") or msg.startswith(f"{loc}:"):
        return msg
    return f"{loc}: {msg}"


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
            return yaml.safe_load(handle) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InventoryError(f"{path}:{where}: not valid YAML: {problem}") from None
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror}") from None


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


def _resolve_secrets(config: InventoryConfig, path: Path, environ: Mapping[str, str]) -> dict[str, SecretStr]:
    file_values: dict[str, str] = {}
    source = "the environment"
    if config.env.secrets_file:
        secrets_path = Path(os.path.expanduser(config.env.secrets_file))
        if not secrets_path.is_absolute():
            secrets_path = path.parent / secrets_path
        if secrets_path.is_file():
            check_secrets_file(secrets_path, path)
            file_values = read_secrets_file(secrets_path)
        source = f"the environment or {secrets_path}"
    resolved: dict[str, SecretStr] = {}
    missing: list[str] = []
    for node_var, lookup in config.env.secret.items():
        value = environ.get(lookup, file_values.get(lookup))
        if value is None:
            missing.append(f"{path}: env.secret.{node_var}: {lookup} is not set in {source}")
        else:
            resolved[node_var] = SecretStr(value)
    if missing:
        raise InventoryError(
            "\n".join(missing), hint="export the variable or add it to the secrets file (never to the inventory)"
        )
    return resolved
