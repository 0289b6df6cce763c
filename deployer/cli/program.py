"""The ``deployer`` console script: the Invoke collection without a ``tasks.py``.

``deployer deploy --env prod`` is exactly ``invoke deploy --env prod`` run from a
project whose ``tasks.py`` imports :data:`deployer.tasks.ns`: the same tasks,
flags, help and exit statuses, because it is Invoke's own :class:`~invoke.program.Program`
driving the same collection (no second CLI framework).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence

from invoke.program import Program

from deployer import __version__


def program() -> Program:
    """The Invoke program behind the ``deployer`` command."""
    from deployer.tasks import ns

    # Parsing consumes the tasks' flag help (Invoke pops it from each task): give the program its own copy,
    # so the collection stays whole for anything else in this process (docgen, a second run, tests).
    return Program(
        namespace=copy.deepcopy(ns), name="deployer", binary="deployer", binary_names=["deployer"], version=__version__
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``deployer <task> [flags]``; exits with the task's status."""
    args = list(sys.argv if argv is None else argv)
    # argv[0] is only used for messages: always call ourselves `deployer` (also under `python -m deployer.cli.program`).
    program().run(["deployer", *args[1:]])


if __name__ == "__main__":
    main()
