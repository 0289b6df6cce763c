"""Generates the reference pages of the manual from the code, so they cannot drift from it.

* ``python -m deployer.cli.docgen > docs/inventory.md``: the inventory keys, from the Pydantic models;
* ``python -m deployer.cli.docgen tasks > docs/tasks-reference.md``: every task and flag, from the Invoke
  collection's docstrings and flag help (what ``deployer <task> --help`` prints).

A unit test fails when either file is stale.
"""

from __future__ import annotations

import copy
import inspect
import re
import sys
import types
import typing
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from deployer.cli.program import HIDDEN_FLAGS
from deployer.core.config import InventoryConfig

if TYPE_CHECKING:
    from invoke.collection import Collection
    from invoke.tasks import Task

INTRO = """# Inventory reference

One YAML file per environment: `inventory/<env>.yml`, selected with `--env <env>`. Settings shared by
every environment can go in `inventory/defaults.yml`; the environment's file is merged over it (mappings
key by key, lists replaced). Unknown keys are errors, and every error names the file, the key path and what
was expected, e.g. `inventory/prod.yml: hosts.2.port: must be between 1 and 65535`.

Secrets never go in these files: `env.secret` names them, and their values come from the operator's
environment or a secrets file outside the repository. See `inventory/example.yml` for a complete example.

This page is generated from the code (`python -m deployer.cli.docgen > docs/inventory.md`).
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (dict,):
        key, value = typing.get_args(annotation)
        return f"mapping of {_type_name(key)} to {_type_name(value)}"
    if origin in (tuple, list):
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _yaml(value: Any) -> str:
    """A default as it would be written in the inventory (YAML), not as a Python literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(section defaults)"
        return f"`{_yaml(value)}`" if value else "empty"
    if field.default is PydanticUndefined or field.default is None:
        return "none"
    return f"`{_yaml(field.default)}`"


def _section(prefix: str, model: type[BaseModel], out: list[str], nested: list[tuple[str, type[BaseModel]]]) -> None:
    out.append(f"\n## `{prefix}`\n" if prefix else "\n## Top level\n")
    doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    if doc:
        out.append(f"{doc}\n")
    out.append("| key | type | default | meaning |")
    out.append("|---|---|---|---|")
    for name, field in model.model_fields.items():
        annotation = field.annotation
        key = f"{prefix}.{name}" if prefix else name
        args = typing.get_args(annotation)
        models = [a for a in args if issubclass_safe(a)]
        if issubclass_safe(annotation):
            models = [annotation]
        if typing.get_origin(annotation) is tuple:
            nested.extend((f"{key}[]", m) for m in models)
        else:
            nested.extend((key, m) for m in models)
        description = field.description or (models[0].__doc__ or "").strip().splitlines()[0] if models else ""
        description = (field.description or description).replace("|", "\\|")
        out.append(f"| `{name}` | {_type_name(annotation)} | {_default(field)} | {description} |")


def issubclass_safe(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def render() -> str:
    """The whole reference page."""
    out = [INTRO]
    queue: list[tuple[str, type[BaseModel]]] = [("", InventoryConfig)]
    seen: set[str] = set()
    while queue:
        prefix, model = queue.pop(0)
        if prefix in seen:
            continue
        seen.add(prefix)
        nested: list[tuple[str, type[BaseModel]]] = []
        _section(prefix, model, out, nested)
        queue.extend(nested)
    return "\n".join(out).rstrip() + "\n"


# --- the task reference ---------------------------------------------------------------------------------

TASKS_INTRO = """# Task reference

Every task and flag, generated from the tasks' docstrings and flag help — exactly what
`deployer help <task>` prints (`python -m deployer.cli.docgen tasks > docs/tasks-reference.md`). For
explanations, examples and exit statuses, read [Tasks](tasks.md).

Run a task as `deployer <task> [flags]` (the console script installed with the package). In a project whose
`tasks.py` imports the collection (`from deployer.tasks import ns`), `invoke <task> [flags]` runs the same
tasks. `deployer --list` lists the tasks; `deployer help <task>` shows a task's flags.

**Options of the program itself**: only `--help [TASK]`, `--list`, `--version` and
`--print-completion-script bash|zsh|fish`. Invoke's program options (`--dry`, `--pty`, `--warn-only`, ...)
are not deployer options and are refused; so is anything that looks like `--dry-run` but is not it.

**Output**: stdout carries only machine output — the `--json` document, `logs` lines, `config`'s YAML,
`observer --print`'s command. Everything written for people (progress, `--dry-run` plans, tables,
reports, warnings, errors, prompts) goes to stderr, with or without `--json`. So
`deployer deploy --env prod --json > report.json` always yields pure JSON while the terminal shows the run.

**Exit status**: 0 success; 1 the operation failed (the report says where and what each host now runs);
2 bad usage (an unknown task or flag, a bad flag value, an invalid inventory): nothing was done. Flag
values (`--batch-size`, `--max-fail`, `--pause`, `--strategy`, `--hosts`, ...) are checked before any
build, lock or connection.
"""


def _escape_html(text: str) -> str:
    """Escape ``<``/``>`` outside code spans, so ``inventory/<env>.yml`` is not read as an HTML tag."""
    parts = text.split("`")
    for index in range(0, len(parts), 2):
        parts[index] = parts[index].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _slug(text: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def _flag(argument: Any) -> str:
    names = sorted(argument.names, key=len)
    flags = [f"-{n}" if len(n) == 1 else f"--{n}" for n in names]
    if argument.kind is bool:
        if argument.default is True:
            flags = [f"--[no-]{n}" if len(n) > 1 else f"-{n}" for n in names]
        return ", ".join(f"`{f}`" for f in flags)
    value = {int: "INT", float: "FLOAT"}.get(argument.kind, "STRING")
    return ", ".join(f"`{f} {value}`" if len(f) == 2 else f"`{f}={value}`" for f in flags)


def _task_section(name: str, task: Task[Any]) -> list[str]:
    out = [f"\n## {name}\n"]
    doc = inspect.getdoc(task.body) or ""
    out.append(f"    deployer {name} [flags]\n")
    if doc:
        out.append(_escape_html(doc) + "\n")
    # Invoke's get_arguments() pops each flag's help from the task: read it from a copy.
    clone = copy.copy(task)
    clone.help = dict(task.help)
    arguments = [a for a in clone.get_arguments() if not a.positional and not set(a.names) & HIDDEN_FLAGS]
    if not arguments:
        out.append("No flags.")
        return out
    out.append("| flag | default | meaning |")
    out.append("|---|---|---|")
    for argument in sorted(arguments, key=lambda a: a.name or ""):
        default = argument.default
        shown = "" if default is None or default is False else f"`{default}`"
        meaning = _escape_html(argument.help or "").replace("|", "\\|")
        out.append(f"| {_flag(argument)} | {shown} | {meaning} |")
    return out


def _all_tasks(collection: Collection, prefix: str = "") -> list[tuple[str, Task[Any]]]:
    found = [(f"{prefix}{name}", collection.tasks[name]) for name in sorted(collection.tasks)]
    for sub in sorted(collection.collections):
        found.extend(_all_tasks(collection.collections[sub], f"{prefix}{sub}."))
    return found


def render_tasks(collection: Collection | None = None) -> str:
    """The task reference page for ``collection`` (default: :data:`deployer.tasks.ns`)."""
    if collection is None:
        from deployer.tasks import ns

        collection = ns
    tasks = _all_tasks(collection)
    out = [TASKS_INTRO, "| task | what it does |", "|---|---|"]
    for name, task in tasks:
        summary = (inspect.getdoc(task.body) or "").strip().split("\n\n")[0].replace("\n", " ")
        cell = _escape_html(summary).replace("|", "\\|")
        out.append(f"| [{name}](#{_slug(name)}) | {cell} |")
    for name, task in tasks:
        out.extend(_task_section(name, task))
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_tasks() if sys.argv[1:] == ["tasks"] else render())
