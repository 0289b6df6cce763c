"""Generates docs/inventory.md from the Pydantic models, so the reference cannot drift from the code.

``python -m deployer.docgen > docs/inventory.md``; a unit test fails when the file is stale.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from deployer.config import InventoryConfig

INTRO = """# Inventory reference

One YAML file per environment: `inventory/<env>.yml`, selected with `--env <env>`. Settings shared by
every environment can go in `inventory/defaults.yml`; the environment's file is merged over it (mappings
key by key, lists replaced). Unknown keys are errors, and every error names the file, the key path and what
was expected, e.g. `inventory/prod.yml: hosts.2.port: must be between 1 and 65535`.

Secrets never go in these files: `env.secret` names them, and their values come from the operator's
environment or a secrets file outside the repository. See `inventory/example.yml` for a complete example.

This page is generated from the code (`python -m deployer.docgen > docs/inventory.md`).
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


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(section defaults)"
        return f"`{value!r}`" if value else "empty"
    if field.default is PydanticUndefined or field.default is None:
        return "none"
    value = field.default
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value}`" if not isinstance(value, str) else f"`{value!r}`"


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


if __name__ == "__main__":
    sys.stdout.write(render())
