"""Runs plans over transports: locks, parallel hosts, batches, health gates, revert, cleanup.

Nothing here decides *what* to run — the plan holds every script — only in which order, on how many
hosts at once, and what to do when a step fails. Every operation that touches hosts (deploy,
rollback, migrate, start, stop, restart) runs through :meth:`Executor.execute`, in named phases
(Capistrano's ``framework.rake`` is the model):

* **starting**: :meth:`Executor.preflight` probes every host and takes the lock on all or none;
* **updating**: upload and prepare the release on every host (deploy);
* **migrating**: the migration, once, on the migrator host, before any host switches;
* **publishing**: batch by batch (canary first, pauses between, ``max_fail``), per host: its
  ``before_stop`` steps, its activation step, its ``after_healthy`` steps; a failed activation is
  judged from what the host really runs (:mod:`deployer.engine.recovery`) and reverted when needed;
* **finishing**: prepared releases that never went live are removed, every ``pending`` host becomes
  ``untouched``; the caller releases the lock (:func:`deployer.engine.run.run_operation`).

Failure rules: a failure before any host switches aborts everything (every host keeps its old
release); a host whose new node is not healthy is reverted on its own and no further batch starts
once more hosts failed than ``max_fail`` allows; an interrupt lets running host steps finish, undoes
what was only prepared, and releases the lock; the lock is released in every outcome.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from deployer.core.facts import HostFacts, LockInfo, RunOutcome, parse_outcome, parse_probe
from deployer.core.inventory import Inventory
from deployer.core.outcome import Events, HostResult, NullEvents, Outcome, Report
from deployer.core.plan import LOCAL, HostPlan, HostStep, Plan, layout_for
from deployer.engine import recovery
from deployer.engine.local import LocalTransport
from deployer.engine.locks import describe_holder, judge, lock_info, locked_hint
from deployer.engine.masking import Masker
from deployer.errors import ConnectError, DeployerError, LockedError, RemoteCommandError
from deployer.remote import release as rc
from deployer.remote.fragments import Fragment
from deployer.remote.shell import Script
from deployer.ssh.endpoints import Connector
from deployer.ssh.transport import CommandResult, ConnectionPool, Transport, UploadStopped

RECONNECT_GRACE = 15.0
"""Seconds during which reconnecting to a host after a lost link is retried before judging it unreachable."""


class Cancelled(DeployerError):
    """The operator interrupted the run; raised between host steps, never in the middle of one."""


class LostConnection(RemoteCommandError):
    """The step's result never arrived (link lost, deadline passed, no exit status): the host may have
    finished it, be still running it, or have stopped anywhere in between."""


def clean_stderr(stderr: str, limit: int = 25) -> str:
    """The useful tail of a script's stderr: step markers removed."""
    lines = [line for line in stderr.splitlines() if not line.startswith(rc.STEP_MARKER) and line.strip()]
    return "\n".join(lines[-limit:])


def last_step(stderr: str) -> str | None:
    for line in reversed(stderr.splitlines()):
        if line.startswith(rc.STEP_MARKER):
            return line[len(rc.STEP_MARKER) :].strip()
    return None


# What a release command prints when it cannot reach its database (Ecto/Postgrex/DBConnection, plain
# Erlang drivers, PostgreSQL error codes). Matched case-insensitively in stdout and stderr.
DATABASE_CONNECTION_SIGNS = (
    "econnrefused",
    "connection refused",
    "nxdomain",
    "ehostunreach",
    "enetunreach",
    "etimedout",
    "dbconnection.connectionerror",
    "connection not available",
    "tcp connect",
    "invalid_password",
    "28p01",
    "password authentication failed",
    "could not connect",
    "too many connections",
    "53300",
    "57p03",
)


def migration_hint(output: str, *, lost: bool) -> str:
    """What to do after a failed migration, by its cause: the link, the database, a hang, the code."""
    text = output.lower()
    if lost:
        return (
            "the SSH connection failed while the migration ran: it may or may not have been applied; "
            "check the database and `deployer history`, then deploy again"
        )
    if any(sign in text for sign in DATABASE_CONNECTION_SIGNS):
        return (
            "the release could not reach its database (see the cause above): check that the database is up, "
            "reachable from the migrator host, and that its credentials are right, then deploy again"
        )
    if "timed out" in text:
        return "the migration did not finish in migrate.timeout: find what it waits for (a lock?), then deploy again"
    # Said as a condition: deployer cannot see the transaction, only the tool that ran the migration can.
    return (
        "a migration that raises inside its transaction is rolled back with it (Ecto runs each migration in "
        "one unless it disables that), so the next deploy runs it again: fix the migration and deploy again"
    )


def command_output(result: CommandResult, limit: int = 15) -> str:
    """The tail of a failed command's stderr and stdout (Elixir's Logger writes to stdout)."""
    parts = []
    err = clean_stderr(result.stderr, limit)
    if err:
        parts.append(err)
    out = "\n".join(line for line in result.stdout.splitlines() if line.strip())
    if out:
        parts.append("stdout:\n" + "\n".join(out.splitlines()[-limit:]))
    return "\n".join(parts) or f"exit status {result.exit_status}"


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
        self.lock_message: str | None = None
        """Set by :meth:`hold_lock`: the lock taken is a manual one with this reason."""
        self.results: dict[str, HostResult] = {}
        self.facts: dict[str, HostFacts] = {}
        self._hosts = {h.name: h for h in inventory.hosts}
        self._machines_lock = threading.Lock()
        self.pool = ConnectionPool(lambda name: LocalTransport() if name == LOCAL else connector(self._hosts[name]))
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
        """Run one script on one host, timing it; a non-zero exit raises :class:`RemoteCommandError`.

        Output is forwarded to the events masked per stream, across chunk boundaries.
        """
        transport = self.pool.get(host)
        self.events.step(host, script.name, "start")
        self.events.output(host, "script", script.render(reveal=False))
        started = time.monotonic()
        streams = {name: self.masker.stream(self._emitter(host, name)) for name in ("stdout", "stderr")}

        def forward(stream: str, text: str) -> None:
            target = streams.get(stream)
            if target is None:
                self.events.output(host, stream, self.masker(text))
            else:
                target.write(text)

        try:
            outcome = transport.run(script, on_output=forward)
        except RemoteCommandError as exc:
            self.events.step(host, exc.step, "failed", self.describe(exc))
            raise LostConnection(host, exc.step, self.describe(exc), hint=exc.hint) from None
        finally:
            for stream in streams.values():
                stream.close()
        elapsed = time.monotonic() - started
        timings = self.result(host).timings
        timings[script.name] = round(timings.get(script.name, 0.0) + elapsed, 3)
        if check and not outcome.ok:
            step = last_step(outcome.stderr) or script.name
            detail = self._failure(outcome)
            self.events.step(host, step, "failed", detail)
            if outcome.exit_status < 0:
                raise LostConnection(host, step, detail)
            raise RemoteCommandError(host, step, detail)
        self.events.step(host, script.name, "done", f"{elapsed:.1f}s")
        return outcome

    def _failure(self, outcome: CommandResult) -> str:
        """Why a command failed: its stderr's tail, masked; never a bare "exit status -1"."""
        detail = self.masker(clean_stderr(outcome.stderr))
        if detail:
            return detail
        if outcome.exit_status < 0:
            return "the command ended without an exit status: the SSH connection was lost or the session was closed"
        return f"exit status {outcome.exit_status}"

    def _emitter(self, host: str, stream: str) -> Callable[[str], None]:
        def emit(text: str) -> None:
            self.events.output(host, stream, text)

        return emit

    def run_cleanup(self, host: str, script: Script) -> CommandResult:
        """Like :meth:`run`, but first replaces a connection that died: cleanup must still be tried."""
        self._revive(host, script.name)
        return self.run(host, script)

    def _revive(self, host: str, why: str) -> None:
        transport = self.pool.opened().get(host)
        if transport is not None and not transport.is_alive():
            self.events.step(host, "reconnect", "start", f"the connection was lost; reconnecting for {why}")
            self.pool.reconnect(host)

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
            detail = self._failure(outcome)
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

    def probe_each(self, hosts: Sequence[str], script: Script) -> dict[str, tuple[str | None, str | None]]:
        """Run a read-only ``script`` on every host at once: host -> (stdout, masked error)."""
        out: dict[str, tuple[str | None, str | None]] = {}

        def probe(host: str) -> None:
            try:
                out[host] = (self.run(host, script).stdout, None)
            except DeployerError as exc:
                out[host] = (None, self.masker(str(exc)))

        self.parallel(hosts, probe)
        return {h: out[h] for h in hosts}

    def describe(self, exc: BaseException) -> str:
        """An error for a report line: masked, without the ``host: step:`` prefix the row already shows."""
        if isinstance(exc, RemoteCommandError):
            prefix = f"{exc.host}: {exc.step}: "
            return self.masker(exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message)
        if isinstance(exc, DeployerError):
            return self.masker(exc.message)
        return self.masker(f"{type(exc).__name__}: {exc}")

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("interrupted by the operator")

    # --- starting: preflight and lock -------------------------------------------------------------------

    def preflight(
        self,
        hosts: Sequence[str],
        *,
        lock: bool,
        release: str | None = None,
        extra: Callable[[str], Fragment] | None = None,
    ) -> dict[str, HostFacts]:
        """Connect to every host and probe it; with ``lock`` take the deploy lock on all of them or none.

        The first host (inventory order) is locked alone: of two concurrent deploys exactly one gets it,
        and the loser stops there without running anything on any other host. Connecting changes nothing
        on a host, so the other hosts' connections open while the first one is being locked: a fleet
        waits for one round of SSH handshakes, not two in a row. ``extra(host)`` adds facts to that host's
        probe, in the same session.
        """
        info = lock_info(self.lock_token, self.operation, release, self.lock_message) if lock else None
        plain = rc.probe(self.layout, lock_info=info)

        def script_for(host: str) -> Script:
            return plain if extra is None else rc.probe(self.layout, lock_info=info, extra=extra(host))

        self.events.phase("preflight", f"{'locking and ' if lock else ''}probing {len(hosts)} host(s)")

        connecting: dict[str, Future[Transport]] = {}

        def probe(host: str) -> None:
            self.result(host)
            try:
                if host in connecting:
                    connecting[host].result()  # raises its ConnectError
                output = self.run(host, script_for(host))
            except ConnectError as exc:
                self.result(host).outcome = "unreachable"
                self.result(host).error = exc.message
                self.events.step(host, "connect", "failed", exc.message)
                raise
            fact = parse_probe(output.stdout)
            self.facts[host] = fact
            if fact.lock_acquired:
                self.locked.append(host)
            result = self.result(host)
            result.before = result.after = fact.current_release
            result.known = True

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
                    self.result(host).outcome = "untouched" if host not in errors else "failed"
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
            held = {h: f for h, f in self.facts.items() if h in order and not f.lock_acquired}
            if held:
                holders = "\n  ".join(f"{host}: {describe_holder(f.lock, f.now)}" for host, f in held.items())
                for host in order:
                    self.result(host).outcome = "untouched"
                raise LockedError(
                    f"another operation holds the deploy lock:\n  {holders}",
                    hint=locked_hint([f.lock for f in held.values()], self.inventory.env),
                )
        return {h: self.facts[h] for h in order}

    def hold_lock(self, hosts: Sequence[str], message: str) -> dict[str, HostFacts]:
        """Take a manual lock (``deployer lock``) on every host or none, and keep it after this run.

        The lock is the deploy lock every operation takes, with ``message`` in its info: whoever is
        refused sees the reason, the holder and the age; ``deployer unlock`` lifts it.
        """
        self.lock_message = message
        facts = self.preflight(hosts, lock=True)
        self.locked = []  # held on purpose: close() must not release it
        return facts

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

    def force_unlock(self, hosts: Sequence[str], *, force: bool = False) -> dict[str, LockInfo | None]:
        """Remove any lock (the ``unlock`` task); returns what each host's lock said before.

        Without ``force`` a lock whose holder may still be working is refused (see
        :meth:`deployer.engine.locks.LockState.refusal`) and nothing is removed anywhere.
        """
        before = self.preflight(hosts, lock=False)
        timeout = self.inventory.config.ssh.command_timeout
        if not force:
            refused = []
            for host, fact in before.items():
                if fact.lock is None:
                    continue
                why = judge(fact.lock, fact.now).refusal(timeout)
                if why:
                    refused.append(f"{host}: held by {describe_holder(fact.lock, fact.now)}: {why}")
            if refused:
                raise LockedError(
                    "refusing to remove a lock that may still be in use:\n  " + "\n  ".join(refused),
                    hint="wait for that run to finish; if you are sure it is gone, `deployer unlock --force`",
                )
        script = rc.unlock(self.layout, None)

        def unlock(host: str) -> None:
            self.run(host, script)

        errors = self.parallel([h for h in hosts if before[h].lock], unlock)
        if errors:
            raise DeployerError("unlock failed on " + ", ".join(f"{h}: {self.describe(e)}" for h, e in errors.items()))
        return {h: f.lock for h, f in before.items()}

    def read_cookie(self, facts: Mapping[str, HostFacts]) -> str | None:
        """The environment's cookie from any host of the environment that has one (kept in memory, never
        shown); None only when no host has one. Hosts outside ``facts`` (not selected) are probed
        read-only; when one cannot be probed and no host gave a cookie, this refuses rather than letting
        the caller generate a second cookie for the environment."""
        for host, fact in facts.items():
            if fact.has_cookie:
                value = self.run(host, rc.read_cookie(self.layout)).stdout.strip()
                if value:
                    self.masker.add(value)
                    return value
        others = [h.name for h in self.inventory.hosts if h.name not in facts]
        if not others:
            return None
        probed = self.probe_each(others, rc.probe(self.layout))
        unknown = []
        for host, (stdout, error) in probed.items():
            if stdout is None:
                unknown.append(f"{host}: {error}")
            elif parse_probe(stdout).has_cookie:
                value = self.run(host, rc.read_cookie(self.layout)).stdout.strip()
                if value:
                    self.masker.add(value)
                    return value
        if unknown:
            raise DeployerError(
                "cannot tell whether the environment already has an Erlang cookie: no selected host has one "
                "and these hosts could not be probed:\n  " + "\n  ".join(unknown),
                hint="one cookie per environment: make those hosts reachable (or deploy to them too) and retry",
            )
        return None

    # --- the phases -----------------------------------------------------------------------------------------

    def execute(self, plan: Plan) -> Report:
        """Run ``plan`` (the lock must already be held): updating, migrating, publishing, finishing."""
        started = time.monotonic()
        report = Report(plan.kind, plan.env, plan.release_id, plan.version, [], list(plan.warnings))
        hosts = [p.host for p in plan.hosts]
        if plan.kind == "migrate" and plan.migrator is not None:
            hosts = [plan.migrator]
        for warning in plan.warnings:
            self.events.warning(warning)
        for host_plan in plan.hosts:
            result = self.result(host_plan.host)
            result.before = result.after = host_plan.before
            result.target = host_plan.target
        try:
            self._updating(plan)
            self._migrating(plan, report)
            self._publishing(plan, report)
        except Cancelled:
            report.interrupted = True
            report.error = "interrupted by the operator"
        except DeployerError as exc:
            report.error = str(exc)
        finally:
            self._finishing(plan)
            report.hosts = [self.result(h) for h in hosts]
            for result in report.hosts:
                if result.outcome == "pending":
                    result.outcome = "untouched"
            report.duration = time.monotonic() - started
        return report

    def _updating(self, plan: Plan) -> None:
        """Upload and prepare the release on every host; any failure aborts before a switch."""
        artifact = plan.artifact
        if artifact is None or not any(p.prepare is not None for p in plan.hosts):
            return
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

        errors = self.parallel([p.host for p in plan.hosts if not p.unchanged], prepare)
        if errors:
            for host, exc in errors.items():
                result = self.result(host)
                result.step = getattr(exc, "step", None)
                result.error = self.describe(exc)
                result.outcome = "aborted"
            if all(isinstance(e, Cancelled) for e in errors.values()):
                raise Cancelled("interrupted by the operator")
            raise DeployerError(
                f"{plan.kind} aborted before any host switched: "
                + "; ".join(f"{h}: {self.describe(e)}" for h, e in errors.items()),
                hint="every host still runs its previous release; fix the cause and deploy again",
            )

    def _migrating(self, plan: Plan, report: Report) -> None:
        """The migration, once, on the migrator host; its failure names the real cause."""
        if plan.migrate is None or plan.migrator is None:
            return
        self._check_cancel()
        host = plan.migrator
        self.events.phase("migrate", f"on {host} with {plan.release_id}")
        result = self.result(host)
        lost = False
        try:
            output = self.run(host, plan.migrate, check=False)
            step = last_step(output.stderr) or "migrate"
            cause = self.masker(command_output(output)) if not output.ok else ""
            if output.exit_status < 0:
                lost, cause = True, self._failure(output)
        except DeployerError as exc:
            lost, step, cause = True, getattr(exc, "step", "migrate"), self.describe(exc)
        if cause:
            self.events.step(host, step, "failed", cause)
            result.step, result.error = "migrate", cause
            before = "every host still runs its previous release; " if plan.kind != "migrate" else ""
            if plan.kind == "migrate":
                result.outcome = "failed"
            raise DeployerError(
                f"migration failed on {host}" + ("; no host switched" if plan.kind != "migrate" else "") + f": {cause}",
                hint=before + migration_hint(cause, lost=lost),
            )
        self.events.step(host, "migrate", "done")
        if plan.kind == "migrate":
            result.outcome = "success"
            result.target = result.after = plan.release_id
            if output.stdout.strip():
                self.events.output(host, "stdout", self.masker(output.stdout))
        report.migrated_on = host

    def _publishing(self, plan: Plan, report: Report) -> None:
        """The batches: canary first, pauses between, no further batch once ``max_fail`` is exceeded."""
        failed = 0
        for index, batch in enumerate(plan.batches):
            self._check_cancel()
            if index and plan.pause:
                self.events.phase("pause", f"{plan.pause:g}s before the next batch")
                end = time.monotonic() + plan.pause
                while time.monotonic() < end:
                    self._check_cancel()
                    time.sleep(min(0.2, end - time.monotonic()))
            label = plan.label if len(plan.batches) == 1 else f"{plan.label} batch {index + 1}/{len(plan.batches)}"
            self.events.phase(label, ", ".join(batch))
            errors = self.parallel(list(batch), lambda host: self._publish_host(plan, host))
            for host, exc in errors.items():  # a bug, not a remote failure: never leave it unreported
                if not isinstance(exc, Cancelled) and self.result(host).error is None:
                    self.result(host).error = self.describe(exc)
            failed += sum(1 for h in batch if not self.result(h).succeeded)
            if errors and all(isinstance(e, Cancelled) for e in errors.values()):
                raise Cancelled("interrupted by the operator")
            if failed > plan.max_fail:
                remaining = [h for b in plan.batches[index + 1 :] for h in b]
                if remaining:
                    report.warnings.append(
                        f"stopped after {failed} failed host(s) (max_fail {plan.max_fail}); "
                        f"not {plan.done}: {', '.join(remaining)}"
                    )
                return

    def _where(self, host: str, step: HostStep) -> str:
        """The name of the machine ``step`` runs on: its host, the control machine, or another host."""
        if step.on is None:
            return host
        name = step.on if isinstance(step.on, str) else step.on.name
        with self._machines_lock:
            # Hosts of a batch share the balancer: connect to it once, not once per racing thread.
            if not isinstance(step.on, str):
                self._hosts.setdefault(name, step.on)
            self.pool.get(name)
        return name

    def _steps(self, host: str, steps: Sequence[HostStep]) -> None:
        for step in steps:
            output = self.run(self._where(host, step), step.script)
            note = step.notice(output.stdout) if step.notice is not None else None
            if note:
                self.events.step(host, step.name, "skipped", note)

    def _publish_host(self, plan: Plan, host: str) -> None:
        """One host: ``before_stop`` steps, the activation, ``after_healthy`` steps; on failure, recover."""
        self._check_cancel()
        host_plan = plan.host(host)
        result = self.result(host)
        result.target = host_plan.target
        if host_plan.unchanged:
            # Already runs this release, healthy, same environment (the probe said so): nothing is touched.
            result.after, result.outcome, result.healthy = host_plan.before, "unchanged", True
            self.events.step(host, "activate", "skipped", host_plan.notes[0] if host_plan.notes else "unchanged")
            return
        try:
            self._steps(host, host_plan.scripts("before_stop"))
        except DeployerError as exc:
            # Nothing was stopped or switched: the host keeps what it ran.
            self._fail(result, exc, "aborted")
            return
        try:
            self._steps(host, host_plan.scripts("activate"))
        except DeployerError as exc:
            self._recover(plan, host_plan, result, exc)
            return
        result.after = host_plan.target
        result.outcome = "success"
        result.healthy = True if plan.health_gated else None
        self._after_healthy(host, host_plan, result)

    def _after_healthy(self, host: str, host_plan: HostPlan, result: HostResult) -> None:
        # A failing after-step is reported; it does not undo a healthy host unless the step says so.
        for step in host_plan.scripts("after_healthy"):
            try:
                self._steps(host, (step,))
            except DeployerError as exc:
                result.step = getattr(exc, "step", "after_healthy")
                why = self.describe(exc)
                if step.undo_on_failure and result.outcome == "success":
                    result.error = f"{why} (after the node was healthy; undone: undo_on_failure)"
                    if host_plan.revert is not None:
                        self._revert(host, host_plan, result)
                    else:
                        result.outcome = "failed"
                    return
                left = f"{why} (after the node was healthy; the host was left as it is)"
                result.error = f"{result.error}; {left}" if result.outcome == "reverted" and result.error else left
                return

    def _fail(self, result: HostResult, exc: DeployerError, outcome: Outcome) -> None:
        result.step = getattr(exc, "step", None) or "activate"
        result.error = self.describe(exc)
        result.outcome = outcome

    def reprobe(self, host: str) -> tuple[HostFacts | None, str | None]:
        """What the host runs now, over a fresh connection if the old one died: (facts, or why not)."""
        # Seam for detached activation (issue 13): when the remote side writes the activation's outcome
        # on the host, wait for and read that outcome here before probing.
        try:
            self._revive(host, "a probe")
            return parse_probe(self.run(host, rc.probe(self.layout)).stdout), None
        except DeployerError as exc:
            return None, self.describe(exc)

    def await_run(self, host: str, script: Script) -> RunOutcome | None:
        """What the detached run of ``script`` did on ``host`` (it goes on there when the link is lost),
        waiting for it to end at most as long as the script may run; None when ``script`` does not run
        detached or the host cannot be asked (the caller then judges from a probe alone)."""
        if script.run_id is None:
            return None
        wait = script.timeout if script.timeout is not None else self.settle_seconds()
        # A link that just came back may refuse the first connection or two (no route yet): retry briefly.
        retry_until = time.monotonic() + RECONNECT_GRACE
        while True:
            try:
                self._revive(host, f"the outcome of {script.name}")
                return parse_outcome(self.run(host, rc.await_outcome(self.layout, script.run_id, wait)).stdout)
            except ConnectError:
                if time.monotonic() >= retry_until or self.cancel.is_set():
                    return None
                time.sleep(1.0)
            except DeployerError:
                return None

    def _recover(self, plan: Plan, host_plan: HostPlan, result: HostResult, exc: DeployerError) -> None:
        """After a failed activation: re-probe, then success / nothing to undo / revert / failed. When the
        link was lost, the detached activation is first waited for, so the probe sees where it ended."""
        host = host_plan.host
        result.step = getattr(exc, "step", None) or "activate"
        result.error = self.describe(exc)
        result.healthy = False if plan.health_gated else None
        run = self.await_run(host, host_plan.activate) if isinstance(exc, LostConnection) else None
        if run is not None and run.state != "missing":
            result.step = run.step or result.step
            result.error += f"; {self.masker(recovery.describe_run(run))}"
        now, why = self.reprobe(host)
        if now is None:
            result.outcome = "failed"
            result.after, result.known, result.healthy = None, False, None
            result.error += f"; could not reconnect to see what the host runs: {why}"
            return
        result.after, result.known = now.current_release, True
        if run is not None and run.state == "running":
            # Past its own deadline and still going (the host's supervisor should have ended it): a revert
            # would race it. Say what the host runs now; the operator looks before doing anything.
            result.outcome, result.healthy = "failed", None
            result.error += f"; {recovery.describe_now(now)}"
            return
        before = self.facts.get(host)
        since = before.now if before else None
        decision = recovery.decide(host_plan, plan.kind, now, since=since)
        # Without an outcome to read, the activation may still be running: wait for it (bounded) instead.
        lost_midway = isinstance(exc, LostConnection) and (run is None or run.state in ("missing", "lost"))
        if decision == "revert" and lost_midway and now.current_release == host_plan.target:
            now, decision = self._settle(plan, host_plan, now, since)
        result.after, result.known = now.current_release, True
        if decision == "success":
            self.events.step(host, "activate", "done", "the host finished it; only its report was lost")
            notice = host_plan.scripts("activate")[0].notice
            note = notice("\n".join(run.stdout)) if notice is not None and run is not None else None
            if note:
                self.events.step(host, host_plan.activate.name, "skipped", note)
            result.outcome, result.healthy, result.step, result.error = "success", True, None, None
            self._after_healthy(host, host_plan, result)
            return
        if decision == "unchanged":
            result.outcome = "aborted" if host_plan.target != host_plan.before else "failed"
            result.healthy = None if not now.node_pids else result.healthy
            result.error += f"; {recovery.describe_now(now)} (as before)"
            return
        if decision == "failed":
            result.outcome = "failed"
            result.error += f"; {recovery.describe_now(now)}"
            return
        self._revert(host, host_plan, result)

    def settle_seconds(self) -> float:
        """How long an activation whose result was lost may still be running on its host: stopping the
        old node, the release script's bounded start wait and the health gate."""
        config = self.inventory.config
        return config.node.stop_timeout + config.health.deadline * 2 + 10

    def _settle(
        self, plan: Plan, host_plan: HostPlan, now: HostFacts, since: float | None
    ) -> tuple[HostFacts, recovery.Decision]:
        """The host switched but its result was lost: its activation may still be running (restart,
        health gate). Probe again until it records success or could no longer be running, so a revert
        never races the activation it undoes."""
        deadline = time.monotonic() + self.settle_seconds()
        self.events.step(host_plan.host, "activate", "start", "the result was lost; waiting for the host to finish")
        decision: recovery.Decision = "revert"
        while decision == "revert" and time.monotonic() < deadline and not self.cancel.is_set():
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            again, _ = self.reprobe(host_plan.host)
            if again is not None:
                now = again
                decision = recovery.decide(host_plan, plan.kind, now, since=since)
        return now, decision

    def _revert(self, host: str, host_plan: HostPlan, result: HostResult) -> None:
        self.events.step(host, "revert", "start", f"back to {result.before or 'nothing'}")
        try:
            self._revive(host, "the revert")
            self._steps(host, host_plan.scripts("before_stop"))
            self._steps(host, host_plan.scripts("revert"))
        except DeployerError as exc:
            now, _ = self.reprobe(host)
            result.outcome = "failed"
            result.healthy = False if now is not None and now.current_release else None
            result.after, result.known = (now.current_release, True) if now is not None else (None, False)
            step = getattr(exc, "step", "revert")
            result.error = f"{result.error}; revert also failed at {step}: {self.describe(exc)}; "
            result.error += recovery.describe_now(now)
            return
        result.outcome = "reverted"
        result.after, result.known = result.before, True
        result.healthy = result.before is not None
        self._after_healthy(host, host_plan, result)

    def _finishing(self, plan: Plan) -> None:
        """Remove prepared releases that never went live (best effort); nothing stays ``pending``."""
        switched = any(r.outcome in ("success", "reverted", "failed") for r in self.results.values())
        for host_plan in plan.hosts:
            result = self.result(host_plan.host)
            if result.outcome == "pending":
                result.outcome = "aborted" if host_plan.abort is not None and not switched else "untouched"
        hosts = [
            p.host
            for p in plan.hosts
            if p.abort is not None and self.result(p.host).outcome in ("aborted", "untouched")
        ]
        if not hosts:
            return

        def abort(host: str) -> None:
            script = plan.host(host).abort
            assert script is not None
            self.run_cleanup(host, script)

        errors = self.parallel(hosts, abort)
        for host, exc in errors.items():
            self.result(host).error = (self.result(host).error or "") + f" (cleanup failed: {self.describe(exc)})"

    def sessions(self) -> dict[str, int]:
        return {h: t.sessions for h, t in self.pool.opened().items()}


def fill_sessions(report: Report, executor: Executor) -> None:
    """Copy each host's SSH session count into the report (the benchmark reads it)."""
    counts = executor.sessions()
    for result in report.hosts:
        result.sessions = counts.get(result.host, 0)
