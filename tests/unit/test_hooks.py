"""Hooks and load-balancer draining from the inventory: config, exact scripts, and where they run.

Local hooks really run (``sh`` on this machine) and write what they saw into a file; remote steps run on
the fake fleet, which records every script per machine (the balancer ``lb1`` included).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from deployer import api
from deployer.core.hooks import HooksConfig, LoadBalancerConfig, hook_script
from deployer.core.inventory import Inventory
from deployer.errors import DeployerError, InventoryError
from deployer.operations import balancer, commands
from deployer.remote import balancer as haproxy
from deployer.remote.release import EXIT_UNHEALTHY
from deployer.remote.shell import Script
from deployer.ssh.transport import CommandResult
from deployer.testing import FakeFleet, fail, ok

from .helpers import BASE, inventory
from .test_steps import HOSTS, OLD, probe

LB = {"hosts": [{"name": "lb1", "address": "10.0.0.9"}], "backend": "app", "socket": "/run/haproxy/admin.sock"}


def make(tmp_path: Path, **sections: Any) -> Inventory:
    data = copy.deepcopy(BASE)
    data.update(sections)
    return inventory(tmp_path, data)


def fleet() -> FakeFleet:
    return FakeFleet(probe_output={h: probe() for h in HOSTS})


def seen(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def recorder(path: Path) -> str:
    """A local hook that appends the DEPLOYER_* variables it got as one JSON line."""
    return (
        "python3 -c 'import json, os; print(json.dumps({k: v for k, v in os.environ.items() "
        f'if k.startswith("DEPLOYER_")}}))\' >> {path}'
    )


# --- config ----------------------------------------------------------------------------------------------


def test_a_hook_is_a_command_a_mapping_or_a_list() -> None:
    hooks = HooksConfig.model_validate(
        {
            "before_deploy": "./announce.sh",
            "before_stop": {"run": "sv stop worker", "on": "hosts"},
            "on_failure": ["a", "b"],
        }
    )
    assert [h.run for h in hooks.before_deploy] == ["./announce.sh"] and hooks.before_deploy[0].on == "local"
    assert hooks.before_stop[0].on == "hosts"
    assert [h.run for h in hooks.on_failure] == ["a", "b"]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"hooks": {"before_build": {"run": "x", "on": "hosts"}}}, "build hooks run on the control machine only"),
        ({"hooks": {"after_deploy": {"run": "  "}}}, "must not be empty"),
        ({"hooks": {"before_stopp": "x"}}, "before_stopp"),
        ({"load_balancer": {"hosts": ["lb1"]}}, "backend: name the HAProxy backend"),
        ({"load_balancer": {"backend": "app"}}, "hosts: name the HAProxy machine"),
        ({"load_balancer": {"drain": "x"}}, "drain and undrain go together"),
    ],
)
def test_bad_sections_name_the_key(tmp_path: Path, section: dict[str, Any], expected: str) -> None:
    with pytest.raises(InventoryError, match=re.escape(expected)):
        make(tmp_path, **section)


def test_the_generic_balancer_needs_no_hosts() -> None:
    lb = LoadBalancerConfig.model_validate({"drain": "lbctl out $DEPLOYER_HOST", "undrain": "lbctl in $DEPLOYER_HOST"})
    assert lb.generic and lb.server("web1") == "web1"


# --- exact scripts ------------------------------------------------------------------------------------------


def test_hook_variables_are_exported_quoted_before_the_command() -> None:
    script = hook_script(
        "hook x", "echo hi", {"DEPLOYER_ENV": "prod", "DEPLOYER_HOSTS": "a b'c"}, cd="/srv/app", timeout=5
    )
    assert script.render() == (
        "set -eu\n"
        "export DEPLOYER_ENV=prod\n"
        "export DEPLOYER_HOSTS='a b'\"'\"'c'\n"
        "cd /srv/app/current 2>/dev/null || cd /srv/app 2>/dev/null || true\n"
        "echo hi\n"
    )
    assert script.stdin and script.remote_command() == "sh -s"


def test_haproxy_state_and_drain_scripts() -> None:
    ready = haproxy.set_state("/run/h.sock", "app", "web1", "ready")
    text = ready.render()
    assert text.startswith("set -eu\nsock=/run/h.sock\nbackend=app\nserver=web1\nsudo=\n")
    assert text.endswith('hap_set "set server $backend/$server state "ready\n')
    drain = haproxy.drain("/run/h.sock", "app", "web1", deadline=7.4, sudo=True).render()
    assert "sudo='sudo -n'\n" in drain and "end=$(( start + 7 ))" in drain
    with pytest.raises(ValueError, match="server name"):
        haproxy.set_state("/s", "app", "web1/x y", "ready")
    with pytest.raises(ValueError, match="unknown server state"):
        haproxy.set_state("/s", "app", "web1", "up")


def test_balancer_state_lines_are_parsed() -> None:
    out = "server=app/web1 state=UP scur=3\nserver=app/web2 state=DRAIN scur=0\nnoise\n"
    assert haproxy.parse_states(out) == {"web1": ("UP", 3), "web2": ("DRAIN", 0)}
    assert haproxy.drain_notice("sessions=2\nwaited=30\n") is not None
    assert haproxy.drain_notice("sessions=0\nwaited=1\n") is None


# --- where they run -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["deploy", "rollback", "restart", "start", "stop"])
def test_every_operation_drains_and_runs_hooks_at_its_seams(tmp_path: Path, operation: str) -> None:
    log = tmp_path / "seen.jsonl"
    hooks = {
        "before_deploy": recorder(log),
        "before_stop": [recorder(log), {"run": "echo remote-before", "on": "hosts"}],
        "after_healthy": recorder(log),
        "after_deploy": recorder(log),
    }
    inv = make(tmp_path, hooks=hooks, load_balancer=LB)
    fake = fleet()
    options = api.Options(connector=fake.connect)
    if operation == "deploy":
        from deployer.core.artifact import inspect_tarball

        from .helpers import release_tarball

        art = inspect_tarball(release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0"), "hello")
        report = api.deploy(inv, art, options).report
    elif operation == "rollback":
        report = api.rollback(inv, None, options).report
    else:
        report = api.lifecycle(inv, operation, options).report  # type: ignore[arg-type]
    assert report.ok, (report.error, [h.error for h in report.hosts])
    step = {"deploy": "activate", "rollback": "activate"}.get(operation, operation)
    lb_steps = fake.names("lb1")
    for host in HOSTS:
        names = fake.names(host)
        assert "hook before_stop #2" in names and names.index("hook before_stop #2") < names.index(step)
        assert f"drain {host} in app" in lb_steps
        assert (f"ready {host} in app" in lb_steps) == (operation != "stop")
    rows = seen(log)
    phases = [r["DEPLOYER_PHASE"] for r in rows]
    assert phases[0] == "before_deploy" and phases[-1] == "after_deploy"
    assert phases.count("before_stop") == 3
    assert phases.count("after_healthy") == 3
    per_host = {r["DEPLOYER_HOST"] for r in rows if r["DEPLOYER_PHASE"] == "before_stop"}
    assert per_host == set(HOSTS)
    assert rows[-1]["DEPLOYER_RESULT"] == "success" and rows[-1]["DEPLOYER_OPERATION"] == operation
    assert rows[0]["DEPLOYER_HOSTS"] == "web1 web2 web3" and rows[0]["DEPLOYER_ENV"] == "test"


def test_a_failing_before_deploy_hook_stops_before_anything_changes(tmp_path: Path) -> None:
    log = tmp_path / "seen.jsonl"
    inv = make(tmp_path, hooks={"before_deploy": "echo 'not today' >&2; exit 3", "on_failure": recorder(log)})
    fake = fleet()
    report = api.restart(inv, api.Options(connector=fake.connect)).report
    assert not report.ok and "before_deploy" in (report.error or "") and "not today" in (report.error or "")
    assert {h.outcome for h in report.hosts} == {"untouched"}
    for host in HOSTS:
        assert "restart" not in fake.names(host) and "unlock" in fake.names(host)
    assert [r["DEPLOYER_RESULT"] for r in seen(log)] == ["failed"]


def test_a_failing_before_stop_hook_aborts_its_host_and_puts_its_server_back(tmp_path: Path) -> None:
    inv = make(tmp_path, hooks={"before_stop": {"run": "false", "on": "hosts"}}, load_balancer=LB)
    fake = fleet()
    fake.responses[("web1", "hook before_stop")] = fail("hook before_stop", "worker would not stop")
    fake.responses[("web2", "hook before_stop")] = ok()
    fake.responses[("web3", "hook before_stop")] = ok()
    fake.responses[("lb1", "balancer states of app")] = ok(
        "server=app/web1 state=DRAIN scur=0\nserver=app/web2 state=UP scur=1\n"
    )
    report = api.restart(inv, api.Options(connector=fake.connect)).report
    web1 = {h.host: h for h in report.hosts}["web1"]
    assert (web1.outcome, web1.step) == ("aborted", "hook before_stop") and "worker would not stop" in (
        web1.error or ""
    )
    assert "restart" not in fake.names("web1")
    # Drained by this run, its node untouched: the reconciliation put it back, and says so.
    assert fake.names("lb1").count("ready web1 in app") == 1
    assert any(w.startswith("web1: was still drained in app/web1 on lb1") for w in report.warnings)


def test_a_host_that_stays_unhealthy_is_reported_left_drained(tmp_path: Path) -> None:
    inv = make(tmp_path, load_balancer=LB)
    fake = fleet()
    fake.responses[("web2", "restart")] = fail("health", "the node exited while starting", EXIT_UNHEALTHY)
    fake.responses[("web2", "probe")] = ok(probe().replace("node_pid=100\n", ""))
    fake.responses[("lb1", "balancer states of app")] = ok("server=app/web2 state=DRAIN scur=0\n")
    report = api.restart(inv, api.Options(connector=fake.connect)).report
    web2 = {h.host: h for h in report.hosts}["web2"]
    assert web2.outcome == "failed"
    assert "ready web2 in app" not in fake.names("lb1")
    assert any(w.startswith("web2: left drained in app (server web2 on lb1)") for w in report.warnings), report.warnings


def test_a_failing_after_healthy_hook_is_reported_and_the_server_is_ready_first(tmp_path: Path) -> None:
    inv = make(tmp_path, hooks={"after_healthy": "exit 4"}, load_balancer=LB)
    fake = fleet()
    report = api.restart(inv, api.Options(connector=fake.connect)).report
    rows = {h.host: h for h in report.hosts}
    assert all(r.outcome == "success" and r.healthy for r in rows.values())
    assert all(r.step == "hook after_healthy" and "left as it is" in (r.error or "") for r in rows.values())
    assert sorted(n for n in fake.names("lb1") if n.startswith("ready")) == [f"ready {h} in app" for h in HOSTS]
    assert not report.ok


def test_dry_run_lists_hooks_and_balancer_steps_and_runs_none(tmp_path: Path) -> None:
    log = tmp_path / "seen.jsonl"
    inv = make(tmp_path, hooks={"before_deploy": recorder(log), "before_stop": recorder(log)}, load_balancer=LB)
    fake = fleet()
    result = api.restart(inv, api.Options(connector=fake.connect, dry_run=True))
    assert result.plan is not None and not log.exists() and "lb1" not in {h for h, _, _ in fake.calls}
    web1 = result.plan.host("web1")
    labels = [label for label, _ in result.plan.listing(web1)]
    assert labels == [
        "before the node stops: drain web1 in app",
        "before the node stops: hook before_stop",
        "restart",
        "after the node is healthy: ready web1 in app",
    ]
    assert any(note.startswith("hook before_deploy (local): python3") for note in web1.notes)


def test_secrets_in_hook_output_are_masked(tmp_path: Path) -> None:
    inv = make(tmp_path, hooks={"before_deploy": "echo s3cr3t-value >&2; exit 1"})
    report = api.restart(inv, api.Options(connector=fleet().connect)).report
    assert "s3cr3t-value" not in (report.error or "") and "********" in (report.error or "")


def test_balancer_states_per_host(tmp_path: Path) -> None:
    inv = make(tmp_path, load_balancer=LB)
    fake = fleet()
    fake.responses[("lb1", "balancer states of app")] = ok(
        "server=app/web1 state=UP scur=0\nserver=app/web2 state=MAINT scur=0\n"
    )
    assert balancer.balancer_states(inv, api.Options(connector=fake.connect)) == {
        "lb1": {"web1": "UP", "web2": "MAINT", "web3": "missing"}
    }


# --- exec and eval ----------------------------------------------------------------------------------------------


def test_exec_runs_in_current_and_reports_each_host(tmp_path: Path) -> None:
    inv = make(tmp_path)
    fake = fleet()
    fake.responses[("web2", "exec")] = CommandResult(5, "partial\n", "@@step exec\nboom s3cr3t-value\n", 0.1)
    fake.responses[("web1", "exec")] = ok("hello\n")
    fake.unreachable.add("web3")
    rows = {r.host: r for r in commands.exec_command(inv, "echo hello", api.Options(connector=fake.connect))}
    assert (rows["web1"].ok, rows["web1"].stdout) == (True, "hello\n")
    assert (rows["web2"].exit_status, rows["web2"].error) == (5, "the command exited with status 5")
    assert "s3cr3t-value" not in rows["web2"].stderr and "********" in rows["web2"].stderr
    assert rows["web3"].exit_status is None and "Connection refused" in (rows["web3"].error or "")
    text = fake.calls[[n for _, n, _ in fake.calls].index("exec")][2]
    assert "cd \"$d/current\"\nstep exec\nsh -c 'echo hello'\n" in text


def test_eval_calls_rpc_with_the_release_environment(tmp_path: Path) -> None:
    script: Script = commands.eval_script(_layout(tmp_path), _flavour(), "Node.self()", timeout=10)
    text = script.render()
    # Through the launcher (the release's env file read on the host, a clean environment), never sourced.
    assert "/srv/hello/current/bin/hello rpc 'IO.inspect((\nNode.self()\n))' ) 2>&1 )" in text
    assert "launch '' \"$rid\" " in text and "load_env" not in text
    assert "exit 3; }" in text


def _layout(tmp_path: Path) -> Any:
    from deployer.core.plan import layout_for

    return layout_for(make(tmp_path))


def _flavour() -> Any:
    from deployer.remote.flavours import flavour

    return flavour("mix")


def test_build_hooks_run_locally_in_order_and_a_failure_stops(tmp_path: Path) -> None:
    from deployer.operations.hooks import run_build_hooks

    log = tmp_path / "seen.jsonl"
    inv = make(tmp_path, hooks={"before_build": [recorder(log), "echo s3cr3t-value >&2; exit 2"]})
    with pytest.raises(DeployerError, match=r"hook before_build #2 failed: \*\*\*\*\*\*\*\*"):
        run_build_hooks(inv, "before_build")
    assert [(r["DEPLOYER_PHASE"], r["DEPLOYER_OPERATION"]) for r in seen(log)] == [("before_build", "build")]
    run_build_hooks(inv, "after_build", tarball="x.tar.gz")  # no after_build hooks: nothing runs


@pytest.mark.parametrize("operation", ["deploy", "rollback", "restart", "stop"])
def test_the_stop_timeout_is_honoured_by_every_operation_that_stops_a_node(tmp_path: Path, operation: str) -> None:
    # Graceful stop: SIGTERM, then node.stop_timeout seconds for in-flight requests, then SIGKILL.
    data = copy.deepcopy(BASE)
    data["node"] = {"stop_timeout": 47}
    inv = inventory(tmp_path, data)
    fake = fleet()
    options = api.Options(connector=fake.connect)
    if operation == "deploy":
        from deployer.core.artifact import inspect_tarball

        from .helpers import release_tarball

        art = inspect_tarball(release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0"), "hello")
        report = api.deploy(inv, art, options).report
    elif operation == "rollback":
        report = api.rollback(inv, None, options).report
    else:
        report = api.lifecycle(inv, operation, options).report  # type: ignore[arg-type]
    assert report.ok
    stops = [text for _, name, text in fake.calls if name in ("activate", operation)]
    assert stops and all("stop_node 47\n" in text for text in stops)


def test_a_balancer_host_without_address_must_be_an_inventory_host(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"load_balancer.hosts.0: 'lb9' is not a host of this inventory"):
        make(tmp_path, load_balancer={"hosts": ["lb9"], "backend": "app"})
    assert make(tmp_path, load_balancer={"hosts": ["web3"], "backend": "app"}).config.load_balancer is not None


def test_undo_on_failure_reverts_a_host_whose_after_healthy_hook_failed(tmp_path: Path) -> None:
    from deployer.core.artifact import inspect_tarball

    from .helpers import release_tarball

    hooks = {"after_healthy": {"run": "./smoke-test", "on": "hosts", "undo_on_failure": True}}
    inv = make(tmp_path, hooks=hooks, load_balancer=LB)
    fake = fleet()
    fake.responses[("web2", "hook after_healthy")] = fail("hook after_healthy", "smoke test: 500 on /orders")
    art = inspect_tarball(release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0"), "hello")
    report = api.deploy(inv, art, api.Options(connector=fake.connect)).report
    rows = {h.host: h for h in report.hosts}
    assert rows["web2"].outcome == "reverted" and rows["web2"].after == OLD
    assert "smoke test: 500" in (rows["web2"].error or "") and "undone" in (rows["web2"].error or "")
    names = fake.names("web2")
    assert (
        names.index("hook after_healthy")
        < names.index("revert")
        < len(names) - 1 - names[::-1].index("hook after_healthy")
    )
    assert rows["web1"].outcome == "success" and rows["web1"].error is None
    # Drained again before the revert stopped the node, ready again once its old node was healthy.
    assert fake.names("lb1").count("drain web2 in app") == 2 and fake.names("lb1").count("ready web2 in app") == 2
    restart = api.restart(inv, api.Options(connector=fake.connect)).report
    assert {h.host: h.outcome for h in restart.hosts}["web2"] == "failed"


def test_undo_on_failure_is_for_after_healthy_hooks_only(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="undo_on_failure applies to after_healthy hooks only"):
        make(tmp_path, hooks={"before_stop": {"run": "x", "undo_on_failure": True}})


def test_the_hooks_page_documents_every_phase_and_variable(tmp_path: Path) -> None:
    from deployer.core.hooks import PHASES, VARIABLES, run_environment

    page = (Path(__file__).resolve().parents[2] / "docs" / "hooks.md").read_text()
    assert all(f"| `{phase}` |" in page for phase in PHASES)
    assert all(f"| `{name}` |" in page for name in VARIABLES)
    given = run_environment(make(tmp_path), "deploy", "before_stop", hosts=["web1"], host="web1")
    assert set(given) <= set(VARIABLES)


def test_remote_phase_hooks_name_the_host_they_run_on(tmp_path: Path) -> None:
    inv = make(tmp_path, hooks={"before_deploy": {"run": "true", "on": "hosts"}})
    fake = fleet()
    assert api.restart(inv, api.Options(connector=fake.connect)).report.ok
    texts = {host: text for host, name, text in fake.calls if name == "hook before_deploy"}
    assert sorted(texts) == list(HOSTS)
    assert all(f"export DEPLOYER_HOST={host}\n" in text for host, text in texts.items())


def test_a_local_command_that_overruns_its_timeout_is_killed_and_fails() -> None:
    from deployer.engine.local import LocalTransport

    result = LocalTransport().run(Script(name="slow", parts=("sleep 5\n",), timeout=0.5))
    assert result.exit_status == 124 and "did not finish within 0.5s" in result.stderr
    echoed = LocalTransport().run(Script(name="echo", parts=("echo out; echo err >&2; exit 3\n",)))
    assert (echoed.exit_status, echoed.stdout, echoed.stderr) == (3, "out\n", "err\n")
