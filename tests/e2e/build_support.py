"""Helpers for the build/flavour end-to-end tests: the Erlang example's inventory on a fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness.examples import HELLO_ERL_PROJECT_DIR
from tests.harness.fleet import Fleet

from .support import App, make_app


def make_erl_app(
    fleet: Fleet, tmp_path: Path, name: str, project: Path = HELLO_ERL_PROJECT_DIR, **overrides: Any
) -> App:
    """An inventory for the Erlang example on ``fleet`` (rebar3 flavour, relx release)."""
    app = make_app(
        fleet,
        tmp_path,
        name,
        app={"name": "hello_erl", "flavour": "rebar3"},
        build={
            "path": str(project),
            "command": "rebar3 as prod tar",
            "tarball": "_build/prod/rel/hello_erl/hello_erl-*.tar.gz",
        },
        migrate={"eval": "hello_erl_release:migrate()", "timeout": 300},
        **overrides,
    )
    app.rewrite(
        health={
            "http": f"http://127.0.0.1:{app.port}/health",
            # relx's eval exits 0 even when this raises: deployer reads the printed result.
            "rpc": "true = is_pid(whereis(hello_erl_sup))",
            "deadline": 120,
        }
    )
    return app
