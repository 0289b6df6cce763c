"""Runs plans over transports: locks, parallel hosts, batches, health gates, revert, cleanup.

Nothing here decides *what* to run — the plan holds every script — only in which
order, on how many hosts at once, and what to do when a step fails:

* a failure before any host switches aborts everything: the prepared release is
  removed from every host, which keeps running its old release;
* a host whose new node is not healthy is reverted on its own, and no further
  batch starts once more hosts failed than ``max_fail`` allows;
* an interrupt (SIGINT/SIGTERM) lets the running host steps finish, undoes what
  was only prepared, and releases the lock;
* the lock is released in every outcome.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from deployer.core.facts import HostFacts, LockInfo, parse_probe
from deployer.core.inventory import Inventory
from deployer.core.outcome import Events, HostResult, NullEvents, Report
from deployer.core.plan import Plan, layout_for
from deployer.errors import ConnectError, DeployerError, LockedError, RemoteCommandError
from deployer.remote import release as rc
from deployer.remote.shell import MASK, Script
from deployer.ssh.endpoints import Connector
from deployer.ssh.transport import CommandResult, ConnectionPool, Transport, UploadStopped


class Cancelled(DeployerError):
    """The operator interrupted the run; raised between host steps, never in the middle of one."""


def current_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass
class Masker:
    """Replaces every known secret value in text that is about to be shown or stored."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str) -> None:
        # Very short values would mask innocent text and carry little secrecy anyway.
        self.values.update(v for v in values if len(v) >= 4)

    def __call__(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return text


def describe_holder(info: LockInfo | None) -> str:
    """Who holds a lock, and whether that process is known to be gone (a stale lock)."""
    if info is None:
        return "a lock directory without info (left by an old or killed run?)"
    text = info.describe()
    if info.local_host == socket.gethostname() and info.pid is not None:
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            text += " - that process no longer exists: the lock is stale"
        except PermissionError:
            pass
    return text


def clean_stderr(stderr: str, limit: int = 25) -> str:
    """The useful tail of a script's stderr: step markers removed."""
    lines = [line for line in stderr.splitlines() if not line.startswith(rc.STEP_MARKER) and line.strip()]
    return "\n".join(lines[-limit:])


def last_step(stderr: str) -> str | None:
    for line in reversed(stderr.splitlines()):
        if line.startswith(rc.STEP_MARKER):
            return line[len(rc.STEP_MARKER) :].strip()
    return None


class Executor:
    """Executes plans for one inventory. Use as a context manager so connections always close."""

    def __init__(
        self,
        inventory: Inventory,
        connector: Connector,
        *,
        events: Events | None = None,
        masker: Masker | None = None,
        workers: int | None = None,
        cancel: threading.Event | None = None,
        operation: str = "deploy",
    ) -> None:
        self.inventory = inventory
        self.events: Events = events or NullEvents()
        self.masker = masker or Masker(inventory.secret_values())
        self.workers = workers or inventory.config.strategy.workers
        self.cancel = cancel or threading.Event()
        self.operation = operation
        self.layout = layout_for(inventory)
        self.lock_token = secrets.token_hex(16)
        self.locked: list[str] = []
        self.lock_left: dict[str, str] = {}
        self.results: dict[str, HostResult] = {}
        hosts = {h.name: h for h in inventory.hosts}
        self.pool = ConnectionPool(lambda name: connector(hosts[name]))
        self._threads = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="deployer")

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release any lock still held (also when the run was abandoned), then close every connection."""
        try:
            if self.locked:
                self.release_locks()
        finally:
            self._threads.shutdown(wait=True)
            self.pool.close_all()

    # --- primitives ---------------------------------------------------------------------------------------

    def result(self, host: str) -> HostResult:
        if host not in self.results:
            self.results[host] = HostResult(host=host)
        return self.results[host]

    def run(self, host: str, script: Script, *, check: bool = True) -> CommandResult:
        """Run one script on one host, timing it; a non-zero exit raises :class:`RemoteCommandError`."""
        transport = self.pool.get(host)
        self.events.step(host, script.name, "start")
        self.events.output(host, "script", script.render(reveal=False))
        started = time.monotonic()

        def forward(stream: str, text: str) -> None:
            self.events.output(host, stream, self.masker(text))

        outcome = transport.run(script, on_output=forward)
        elapsed = time.monotonic() - started
        timings = self.result(host).timings
        timings[script.name] = round(timings.get(script.name, 0.0) + elapsed, 3)
        if check and not outcome.ok:
            step = last_step(outcome.stderr) or script.name
            detail = self.masker(clean_stderr(outcome.stderr)) or f"exit status {outcome.exit_status}"
            self.events.step(host, step, "failed", detail)
            raise RemoteCommandError(host, step, detail)
        self.events.step(host, script.name, "done", f"{elapsed:.1f}s")
        return outcome

    def run_cleanup(self, host: str, script: Script) -> CommandResult:
        """Like :meth:`run`, but first replaces a connection that died: cleanup must still be tried."""
        transport = self.pool.opened().get(host)
        if transport is not None and not transport.is_alive():
            self.events.step(host, "reconnect", "start", f"the connection was lost; reconnecting for {script.name}")
            self.pool.reconnect(host)
        return self.run(host, script)

    def upload(self, host: str, script: Script, source: Path) -> None:
        transport = self.pool.get(host)
        self.events.step(host, "upload", "start", f"{source.stat().st_size} bytes")
        started = time.monotonic()
        before = transport.bytes_uploaded
        try:
            outcome = transport.upload(
                script, source, progress=lambda s, t: self.events.progress(host, s, t), should_stop=self.cancel.is_set
            )
        except UploadStopped:
            self.events.step(host, "upload", "stopped", "interrupted by the operator")
            raise Cancelled("interrupted by the operator") from None
        elapsed = time.monotonic() - started
        result = self.result(host)
        result.timings["upload"] = round(elapsed, 3)
        result.uploaded_bytes += transport.bytes_uploaded - before
        if not outcome.ok:
            detail = self.masker(clean_stderr(outcome.stderr)) or f"exit status {outcome.exit_status}"
            self.events.step(host, "upload", "failed", detail)
            raise RemoteCommandError(host, "upload", detail)
        self.events.step(host, "upload", "done", f"{elapsed:.1f}s")

    def parallel(self, hosts: Sequence[str], work: Callable[[str], None]) -> dict[str, BaseException]:
        """Run ``work`` for every host on the worker pool; returns the hosts that raised, with the error.

        Waits in short slices so signal handlers in the main thread keep running.
        """
        futures: dict[Future[None], str] = {self._threads.submit(work, host): host for host in hosts}
        errors: dict[str, BaseException] = {}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                exc = future.exception()
                if exc is not None:
                    errors[futures[future]] = exc
        return errors

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("interrupted by the operator")

    # --- preflight and lock ----------------------------------------------------------------------------------

    def preflight(self, hosts: Sequence[str], *, lock: bool, release: str | None = None) -> dict[str, HostFacts]:
        """Connect to every host and probe it; with ``lock`` take the deploy lock on all of them or none.

        The first host (inventory order) is locked alone: of two concurrent deploys exactly one gets it,
        and the loser stops there without running anything on any other host. Connecting changes nothing
        on a host, so the other hosts' connections open while the first one is being locked: a fleet
        waits for one round of SSH handshakes, not two in a row.
        """
        info = None
        if lock:
            user, _, local_host = current_user().partition("@")
            info = json.dumps(
                {
                    "token": self.lock_token,
                    "who": user,
                    "host": local_host,
                    "pid": os.getpid(),
                    "operation": self.operation,
                    "release": release,
                    "since": round(time.time()),
                },
                sort_keys=True,
            )
        facts: dict[str, HostFacts] = {}
        script = rc.probe(self.layout, lock_info=info)
        self.events.phase("preflight", f"{'locking and ' if lock else ''}probing {len(hosts)} host(s)")

        connecting: dict[str, Future[Transport]] = {}

        def probe(host: str) -> None:
            self.result(host)
            try:
                if host in connecting:
                    connecting[host].result()  # raises its ConnectError
                output = self.run(host, script)
            except ConnectError as exc:
                self.result(host).outcome = "unreachable"
                self.result(host).error = exc.message
                self.events.step(host, "connect", "failed", exc.message)
                raise
            fact = parse_probe(output.stdout)
            facts[host] = fact
            if fact.lock_acquired:
                self.locked.append(host)
            self.result(host).before = fact.current_release
            self.result(host).after = fact.current_release

        order = list(hosts)

        def lock_first(host: str) -> None:
            for other in order[1:]:
                connecting[other] = self._threads.submit(self.pool.get, other)
            probe(host)

        errors: dict[str, BaseException] = {}
        if lock and order:
            errors = self.parallel(order[:1], lock_first)
            if not errors and order[0] in self.locked:
                errors = self.parallel(order[1:], probe)
        else:
            errors = self.parallel(order, probe)
        if errors:
            for host in order:
                if self.result(host).outcome == "pending":
                    self.result(host).outcome = "aborted" if host not in errors else "failed"
            first = next(iter(errors.values()))
            if len(errors) == 1 and isinstance(first, DeployerError):
                raise first
            raise DeployerError(
                "preflight failed on "
                + ", ".join(sorted(errors))
                + ":\n  "
                + "\n  ".join(str(e) for e in errors.values()),
                hint="nothing was changed on any host; fix the hosts above and retry",
            )
        if lock:
            held = {h: f.lock for h, f in facts.items() if not f.lock_acquired}
            if held:
                holders = "\n  ".join(f"{host}: {describe_holder(info)}" for host, info in held.items())
                for host in order:
                    self.result(host).outcome = "aborted"
                raise LockedError(
                    f"another operation holds the deploy lock:\n  {holders}",
                    hint="wait for it to finish; if its process is gone, `invoke unlock --env "
                    f"{self.inventory.env}` removes the lock",
                )
        return {h: facts[h] for h in order}

    def release_locks(self) -> None:
        """Remove our lock from every host we locked; remember where that failed."""
        if not self.locked:
            return
        script = rc.unlock(self.layout, self.lock_token)
        hosts = list(self.locked)

        def unlock(host: str) -> None:
            self.run_cleanup(host, script)

        errors = self.parallel(hosts, unlock)
        self.locked = [h for h in hosts if h in errors]
        for host, exc in errors.items():
            self.lock_left[host] = str(exc)

    def force_unlock(self, hosts: Sequence[str]) -> dict[str, LockInfo | None]:
        """Remove any lock (the `unlock` task); returns what each host's lock said before."""
        before = self.preflight(hosts, lock=False)
        script = rc.unlock(self.layout, None)

        def unlock(host: str) -> None:
            self.run(host, script)

        errors = self.parallel([h for h in hosts if before[h].lock], unlock)
        if errors:
            raise DeployerError("unlock failed on " + ", ".join(f"{h}: {self._describe(e)}" for h, e in errors.items()))
        return {h: f.lock for h, f in before.items()}

    # --- deploy ---------------------------------------------------------------------------------------------

    def read_cookie(self, facts: Mapping[str, HostFacts]) -> str | None:
        """The environment's cookie from the first host that has one (kept in memory, never shown)."""
        for host, fact in facts.items():
            if fact.has_cookie:
                value = self.pool.get(host).run(rc.read_cookie(self.layout)).stdout.strip()
                if value:
                    self.masker.add(value)
                    return value
        return None

    def execute(self, plan: Plan) -> Report:
        """Run a deploy or rollback plan (the lock must already be held)."""
        started = time.monotonic()
        report = Report(plan.kind, plan.env, plan.release_id, plan.version, [], list(plan.warnings))
        hosts = [p.host for p in plan.hosts]
        for warning in plan.warnings:
            self.events.warning(warning)
        for host_plan in plan.hosts:
            result = self.result(host_plan.host)
            result.before = host_plan.before
            result.after = host_plan.before
            result.target = host_plan.target
        try:
            if plan.kind == "deploy":
                self._prepare_all(plan)
                if plan.migrate is not None and plan.migrator is not None:
                    self._migrate(plan, report)
            self._activate_all(plan, report)
        except Cancelled:
            report.interrupted = True
            report.error = "interrupted by the operator"
        except DeployerError as exc:
            report.error = str(exc)
        finally:
            if plan.kind == "deploy":
                self._abort_unswitched(plan)
            report.hosts = [self.result(h) for h in hosts]
            report.duration = time.monotonic() - started
        return report

    def _prepare_all(self, plan: Plan) -> None:
        artifact = plan.artifact
        assert artifact is not None
        self.events.phase("prepare", f"upload {artifact.path.name} and extract {plan.release_id}")

        def prepare(host: str) -> None:
            self._check_cancel()
            host_plan = plan.host(host)
            if host_plan.upload:
                self.upload(host, plan.upload_scripts[host], artifact.path)
            else:
                self.events.step(host, "upload", "skipped", "artifact already on the host")
            self._check_cancel()
            assert host_plan.prepare is not None
            self.run(host, host_plan.prepare)

        errors = self.parallel([p.host for p in plan.hosts], prepare)
        if errors:
            self._fail_hosts(errors)
            if all(isinstance(e, Cancelled) for e in errors.values()):
                raise Cancelled("interrupted by the operator")
            raise DeployerError(
                "deploy aborted before any host switched: "
                + "; ".join(f"{h}: {self._describe(e)}" for h, e in errors.items()),
                hint="every host still runs its previous release; fix the cause and deploy again",
            )

    def _migrate(self, plan: Plan, report: Report) -> None:
        assert plan.migrate is not None and plan.migrator is not None
        self._check_cancel()
        self.events.phase("migrate", f"on {plan.migrator} with {plan.release_id}")
        try:
            self.run(plan.migrator, plan.migrate)
        except DeployerError as exc:
            self.result(plan.migrator).step = "migrate"
            self.result(plan.migrator).error = self._describe(exc)
            raise DeployerError(
                f"migration failed on {plan.migrator}; no host switched: {self._describe(exc)}",
                hint="every host still runs its previous release; fix the migration and deploy again",
            ) from None
        report.migrated_on = plan.migrator

    def _activate_all(self, plan: Plan, report: Report) -> None:
        failed = 0
        for index, batch in enumerate(plan.batches):
            self._check_cancel()
            if index and plan.pause:
                self.events.phase("pause", f"{plan.pause:g}s before the next batch")
                end = time.monotonic() + plan.pause
                while time.monotonic() < end:
                    self._check_cancel()
                    time.sleep(min(0.2, end - time.monotonic()))
            label = "activate" if len(plan.batches) == 1 else f"activate batch {index + 1}/{len(plan.batches)}"
            self.events.phase(label, ", ".join(batch))
            errors = self.parallel(list(batch), lambda host: self._activate(plan, host))
            failed += sum(1 for h in batch if self.result(h).outcome != "success")
            if errors and all(isinstance(e, Cancelled) for e in errors.values()):
                raise Cancelled("interrupted by the operator")
            if failed > plan.max_fail:
                remaining = [h for b in plan.batches[index + 1 :] for h in b]
                if remaining:
                    report.warnings.append(
                        f"stopped after {failed} failed host(s) (max_fail {plan.max_fail}); "
                        f"not started: {', '.join(remaining)}"
                    )
                return

    def _activate(self, plan: Plan, host: str) -> None:
        self._check_cancel()
        host_plan = plan.host(host)
        result = self.result(host)
        try:
            self.run(host, host_plan.activate)
        except DeployerError as exc:
            result.step = getattr(exc, "step", "activate")
            result.error = self._describe(exc)
            if result.step == "switch":
                # mv -T is atomic: current never moved, the old node was not touched.
                result.outcome = "aborted"
                return
            self._revert(host, host_plan.revert, result)
            return
        result.after = host_plan.target
        result.outcome = "success"
        result.healthy = True

    def _revert(self, host: str, script: Script, result: HostResult) -> None:
        self.events.step(host, "revert", "start", f"back to {result.before or 'nothing'}")
        try:
            self.run_cleanup(host, script)
        except DeployerError as exc:
            result.outcome = "failed"
            result.healthy = False
            result.after = None
            result.error = f"{result.error}; revert also failed: {self._describe(exc)}"
            return
        result.outcome = "reverted"
        result.after = result.before
        result.healthy = result.before is not None

    def _abort_unswitched(self, plan: Plan) -> None:
        """Remove the prepared release from hosts that never switched to it (best effort)."""
        hosts = [
            p.host
            for p in plan.hosts
            if p.abort is not None and self.result(p.host).outcome in ("pending", "aborted", "untouched")
        ]
        if not hosts:
            return

        def abort(host: str) -> None:
            result = self.result(host)
            if result.outcome == "pending":
                result.outcome = "aborted" if not self._any_switched() else "untouched"
            script = plan.host(host).abort
            assert script is not None
            self.run_cleanup(host, script)

        errors = self.parallel(hosts, abort)
        for host, exc in errors.items():
            self.result(host).error = (self.result(host).error or "") + f" (cleanup failed: {self._describe(exc)})"

    def _any_switched(self) -> bool:
        return any(r.outcome in ("success", "reverted", "failed") for r in self.results.values())

    def _fail_hosts(self, errors: Mapping[str, BaseException]) -> None:
        for host, exc in errors.items():
            result = self.result(host)
            result.step = getattr(exc, "step", None)
            result.error = self._describe(exc)
            result.outcome = "aborted"

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, RemoteCommandError):
            return self.masker(exc.message.split(": ", 2)[-1] if exc.message.startswith(exc.host) else exc.message)
        if isinstance(exc, DeployerError):
            return self.masker(exc.message)
        return self.masker(f"{type(exc).__name__}: {exc}")

    # --- migrate ---------------------------------------------------------------------------------------------

    def execute_migrate(self, plan: Plan) -> Report:
        assert plan.migrate is not None and plan.migrator is not None
        started = time.monotonic()
        report = Report("migrate", plan.env, plan.release_id, plan.version, [])
        result = self.result(plan.migrator)
        result.target = plan.release_id
        self.events.phase("migrate", f"on {plan.migrator} with {plan.release_id}")
        try:
            self._check_cancel()
            output = self.run(plan.migrator, plan.migrate)
            result.outcome = "success"
            result.after = plan.release_id
            if output.stdout.strip():
                self.events.output(plan.migrator, "stdout", self.masker(output.stdout))
            report.migrated_on = plan.migrator
        except Cancelled:
            report.interrupted = True
        except DeployerError as exc:
            result.outcome = "failed"
            result.step = "migrate"
            result.error = self._describe(exc)
            report.error = f"migration failed on {plan.migrator}: {result.error}"
        report.hosts = [result]
        report.duration = time.monotonic() - started
        return report

    def sessions(self) -> dict[str, int]:
        return {h: t.sessions for h, t in self.pool.opened().items()}


def fill_sessions(report: Report, executor: Executor) -> None:
    """Copy each host's SSH session count into the report (the benchmark reads it)."""
    counts = executor.sessions()
    for result in report.hosts:
        result.sessions = counts.get(result.host, 0)
