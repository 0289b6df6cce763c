"""The ``deployer`` console script: deployer's tasks, deployer's options, nothing else.

``deployer deploy --env prod`` runs the same task as ``invoke deploy --env prod`` in a project whose
``tasks.py`` imports :data:`deployer.tasks.ns`, through Invoke's own parser (no second CLI framework). But
the ``deployer`` program is not Invoke: it accepts only its own options (``--help``, ``--list``,
``--version``, shell completion), never Invoke's program options (``--dry``, ``--pty``, ``--warn-only``,
...), which mean nothing for deployer and, like ``--dry``, could be mistaken for deployer's ``--dry-run``.

Usage errors (an unknown task or flag, a bad value) exit 2 with one line naming the culprit and, where
one is close, the task or flag that was probably meant; ``deployer help [TASK]`` is ``--help``.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import difflib
import inspect
import itertools
import os
import re
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from invoke.exceptions import Exit, ParseError
from invoke.parser.argument import Argument
from invoke.program import Program

from deployer import __version__

USAGE_STATUS = 2
HIDDEN_FLAGS = frozenset({"host"})
"""Old flag names still accepted but never shown (``--host`` is ``--hosts``)."""

_UNKNOWN = re.compile(r"No idea what '(.*)' is!")
_DRY_LIKE = re.compile(r"^(-n|-R|--?\w*dry.*)$", re.IGNORECASE)


class DeployerProgram(Program):
    """Invoke's program with only deployer's options and deployer's usage messages."""

    def run(self, argv: list[str] | None = None, exit: bool = True) -> None:
        """Parse and run; usage errors exit 2 with :func:`explain`'s line, Exit with its own status."""
        try:
            self.create_config()
            self.parse_core(argv)
            self.parse_collection()
            try:
                self.parse_tasks()
            except ValueError as exc:  # a typed flag (--lines abc): Invoke's parser lets the conversion error out
                raise ParseError(_bad_value(self.argv, exc)) from None
            self.parse_cleanup()
            self.update_config()
            self.execute()
        except ParseError as exc:
            print(f"error: {explain(exc, self)}", file=sys.stderr)
            if exit:
                sys.exit(USAGE_STATUS)
        except Exit as exc:
            if exc.message:
                print(exc.message, file=sys.stderr)
            if exit:
                sys.exit(exc.code)
        except KeyboardInterrupt:
            if exit:
                sys.exit(130)
        except BrokenPipeError:
            # `deployer --help | head`: the reader left; say nothing more (and not on the closed pipe).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            if exit:
                sys.exit(1)

    def core_args(self) -> list[Argument]:
        """``--help [TASK]``, ``--list``, ``--version`` and shell completion; none of Invoke's run options."""
        return [
            Argument(names=("help", "h"), optional=True, help="Show this help, or a task's flags: --help TASK."),
            Argument(names=("list", "l"), kind=bool, default=False, help="List the tasks."),
            Argument(names=("version", "V"), kind=bool, default=False, help="Show deployer's version."),
            Argument(
                names=("print-completion-script",),
                kind=str,
                default="",
                help="Print the shell completion script for bash, zsh or fish.",
            ),
            Argument(names=("complete",), kind=bool, default=False, help="(used by the completion script)"),
        ]

    def parse_core(self, argv: list[str] | None) -> None:
        self.normalize_argv(argv)
        self.parse_core_args()
        if self.args.version.value:
            self.print_version()
            raise Exit
        if self.args["print-completion-script"].value:
            from invoke.completion.complete import print_completion_script

            print_completion_script(shell=self.args["print-completion-script"].value, names=self.binary_names)
            raise Exit

    def parse_cleanup(self) -> None:
        helped = self.args.help.value
        if helped is True:
            self.print_help()
            raise Exit
        if helped:
            if helped not in self.parser.contexts:
                raise ParseError(f"No idea what '{helped}' is!")
            self.print_task_help(helped)
            raise Exit
        if self.args.list.value:
            self.list_format, self.list_depth, self.list_root = "flat", None, None
            self.list_tasks()
            raise Exit
        if self.args.complete.value:
            from invoke.completion.complete import complete

            complete(
                names=self.binary_names,
                core=self.core,
                initial_context=self.initial_context,
                collection=self.collection,
                parser=self._make_parser(),
            )
        if not self.tasks:
            self.print_help()
            raise Exit

    def update_config(self, merge: bool = True) -> None:
        # No run/sudo/timeout overrides: deployer's tasks never use Invoke's c.run, and take no config files.
        if merge:
            self.config.merge()

    def print_help(self) -> None:
        print("Usage: deployer <task> [--flags]")
        print("       deployer help <task>      a task's flags")
        print("")
        print("Ship Erlang/Elixir OTP releases to fleets of hosts over SSH.")
        print("")
        print("Options:")
        print("")
        self.print_columns([t for t in self.initial_context.help_tuples() if not t[0].startswith("--complete")])
        self.list_format, self.list_depth, self.list_root = "flat", None, None
        self.list_tasks()
        print("Machine output (--json, logs, config) goes to stdout; everything for people goes to stderr.")

    def task_list_opener(self, extra: str = "") -> str:
        return "Tasks"

    def print_task_help(self, name: str) -> None:
        context = self.parser.contexts[name]
        shown = copy.copy(context)
        shown.args = type(context.args)(
            {key: arg for key, arg in context.args.items() if not set(arg.names) & HIDDEN_FLAGS}
        )
        shown.flags = type(context.flags)(
            {key: arg for key, arg in context.flags.items() if not set(arg.names) & HIDDEN_FLAGS}
        )
        shown.inverse_flags = type(context.inverse_flags)(context.inverse_flags)
        tuples = shown.help_tuples()

        print(f"Usage: deployer {name} [--flags]")
        print("")
        for line in (inspect.getdoc(self.collection[name]) or "").splitlines():
            print(self.leading_indent + line if line.strip() else "")
        print("")
        print("Flags:")
        if tuples:
            self.print_columns(tuples)
        else:
            print(self.leading_indent + "none")
            print("")


def _task_flags(program: Program, task: str | None) -> list[str]:
    if task is None or task not in program.collection.task_names:
        return []
    context = program.parser.contexts.get(task) if hasattr(program, "parser") else None
    if context is None:
        return []
    return [flag for flag in context.flags if flag.lstrip("-") not in HIDDEN_FLAGS]


def explain(error: ParseError, program: Program) -> str:
    """One line for a usage error: what was not understood, and what was probably meant."""
    message = str(error)
    task = error.context.name if error.context is not None else None
    unknown = _UNKNOWN.fullmatch(message)
    if unknown is None:
        if task:
            return f"deployer {task}: {message[0].lower()}{message[1:]} (deployer help {task} lists its flags)"
        return message
    token = unknown.group(1)
    if token.startswith("-"):
        flags = _task_flags(program, task)
        where = f"deployer {task}" if task else "deployer"
        if _DRY_LIKE.match(token):
            if task is None:
                return f"deployer: no option {token} (nothing was done); a dry run is: deployer <task> --dry-run"
            if "--dry-run" in flags:
                return f"{where}: no flag {token}; did you mean --dry-run? (nothing was done)"
            return f"{where}: no flag {token}: this task has no dry run (nothing was done; deployer help {task})"
        close = difflib.get_close_matches(token, flags, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        see = f"deployer help {task}" if task else "deployer --help"
        return f"{where}: no flag {token}{hint} ({see} lists the flags)"
    names = list(program.collection.task_names)
    close = difflib.get_close_matches(token, names, n=1, cutoff=0.7)
    hint = f"; did you mean {close[0]}?" if close else ""
    after = f" (it follows the task {task}: one task per command)" if task and not close else ""
    return f"deployer: no task named '{token}'{hint}{after} (deployer --list lists the tasks)"


def _bad_value(argv: Sequence[str], exc: ValueError) -> str:
    """``invalid literal for int() with base 10: 'abc'`` -> ``--lines abc: expected a whole number``."""
    found = re.search(r"'(.*)'$", str(exc))
    value = found.group(1) if found else ""
    for flag, given in itertools.pairwise(argv):
        if given == value and flag.startswith("--"):
            return f"{flag} {value!r}: expected a whole number"
        if flag.startswith("--") and flag.endswith(f"={value}"):
            return f"{flag.split('=')[0]} {value!r}: expected a whole number"
    return f"{value!r}: expected a whole number"


def program() -> DeployerProgram:
    """The program behind the ``deployer`` command."""
    from deployer.tasks import ns

    # Parsing consumes the tasks' flag help (Invoke pops it from each task): give the program its own copy,
    # so the collection stays whole for anything else in this process (docgen, a second run, tests).
    return DeployerProgram(
        namespace=copy.deepcopy(ns), name="deployer", binary="deployer", binary_names=["deployer"], version=__version__
    )


def _argv(args: Sequence[str]) -> list[str]:
    """``deployer help`` and ``deployer help TASK`` are ``deployer --help [TASK]``; ``deployer env push`` is
    ``deployer env-push``."""
    rest = list(args)
    if rest[:1] == ["help"]:
        return ["--help", *rest[1:2]]
    if rest[:2] == ["env", "push"]:  # `deployer env push`, as kamal spells it
        return ["env-push", *rest[2:]]
    return rest


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``deployer <task> [flags]``; exits with the task's status (2: bad usage, nothing done)."""
    args = list(sys.argv if argv is None else argv)
    # argv[0] is only used for messages: always call ourselves `deployer` (also under `python -m`).
    program().run(["deployer", *_argv(args[1:])])


def console() -> NoReturn:
    """The ``deployer`` console script: :func:`main`, then :func:`exit_now` with its status."""
    # pydantic looks for plugins of every installed distribution when the first model is built (~0.1 s
    # of a deploy's start); the deployer command uses none. Set before the inventory models exist.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        main()
    except SystemExit as stop:
        exit_now(_status(stop.code))
    exit_now(0)


def _status(code: object) -> int:
    """The process status ``sys.exit(code)`` would give (a message goes to stderr, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_now(status: int) -> NoReturn:
    """Exit with ``status`` once the output is out, without tearing the interpreter down.

    Everything a run does is finished by then (connections closed, records written); what is left is
    the interpreter freeing thousands of objects and modules one by one, about 0.2 s after a deploy
    that nobody should wait for. ``atexit`` handlers still run. When a thread other than paramiko's
    (daemon) reader threads is still alive, the ordinary exit joins it instead.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(status)
    # What the interpreter would run at exit (CPython's own entry point, present in every supported version).
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    console()
