"""The node's environment lives with the environment: one ``shared/node.env``, run by a real ``sh``.

Issue 15: after editing ``env.clear``, ``restart`` used the old per-release file; after rotating a
password, ``rollback`` restored the old one; old secret values stayed in up to ``keep_releases`` files.
These tests run the real scripts against a scratch deploy_to with the fake release of
:mod:`tests.unit.test_node_scripts` (its ``daemon`` records the environment the node got).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from pydantic import SecretStr

from deployer.core.paths import RemoteLayout
from deployer.remote import envfile
from deployer.remote import ops as oc
from deployer.remote import release as rc
from deployer.remote.fragments import EXIT_UNHEALTHY, deploy_vars, script
from deployer.remote.shell import MASK, Script, Secret, env_file_text

from .test_node_scripts import MIX, activate, deploy_to, health, launch, make_release, run

__all__ = ["deploy_to"]  # the fixture, re-used

OLD_PASSWORD = "old-pw-1f3a"
NEW_PASSWORD = "new-pw-9c2e"


def layout(d: Path) -> RemoteLayout:
    return RemoteLayout(str(d), "hello")


def started_env(d: Path) -> dict[str, str]:
    """The environment the last node started with (the fake ``daemon`` wrote it)."""
    text = (d / "shared" / "daemon-env").read_text()
    return dict(item.split("=", 1) for item in text.split("\0") if item)


def push(
    d: Path, values: dict[str, str | Secret], *, restart: bool = True, stable_for: float = 0.3
) -> subprocess.CompletedProcess[str]:
    return run(
        envfile.push_env(
            layout(d),
            MIX,
            env_file_text(values),
            health=health(stable_for=stable_for),
            stop_timeout=5,
            restart=restart,
        )
    )


def revert_to(d: Path, release: str) -> Script:
    """The revert of a failed activation, back to ``release``."""
    return rc.revert(
        layout(d), MIX, previous_id=release, health=health(stable_for=0.3), stop_timeout=5, tmp_suffix="r", records=[]
    )


def files_holding(d: Path, needle: str) -> list[str]:
    found = []
    for root, _, names in os.walk(d):
        for name in names:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes().decode(errors="replace"):
                found.append(str(path.relative_to(d)))
    return [f for f in found if f != "shared/daemon-env"]  # the fake node's own record of what it got


def test_restart_reads_the_environment_file_not_the_release(deploy_to: Path) -> None:
    # A host deployed by deployer <= 0.2: the environment frozen in shared/env/<release>.env.
    make_release(deploy_to, "r1", {"GREETING": "old", "DATABASE_URL": f"postgres://app:{OLD_PASSWORD}@db/app"})
    assert run(activate(deploy_to, "r1", health(stable_for=0.3))).returncode == 0
    assert started_env(deploy_to)["GREETING"] == "old"  # the old layout still starts (no deploy needed)

    pushed = push(
        deploy_to, {"GREETING": "new", "DATABASE_URL": Secret("url", SecretStr(f"postgres://app:{NEW_PASSWORD}@db"))}
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "env=written" in pushed.stdout
    env = started_env(deploy_to)
    assert env["GREETING"] == "new" and NEW_PASSWORD in env["DATABASE_URL"]
    assert env["DEPLOYER_RELEASE_ID"] == "r1"  # the launcher says which release runs, not the file
    node_env = deploy_to / "shared" / "node.env"
    assert stat.S_IMODE(node_env.stat().st_mode) == 0o600
    # The old per-release files are gone with their secrets, and nothing else kept the old password.
    assert not (deploy_to / "shared" / "env").exists()
    assert files_holding(deploy_to, OLD_PASSWORD) == []
    assert sorted(p.name for p in (deploy_to / "shared").glob("node.env*")) == ["node.env"]

    # A plain restart runs with what the file says: the values reach nodes only through a push.
    assert run(oc.restart(layout(deploy_to), MIX, health=health(stable_for=0.3), stop_timeout=5)).returncode == 0
    assert started_env(deploy_to)["GREETING"] == "new"


def test_a_push_of_the_same_values_does_not_restart(deploy_to: Path) -> None:
    make_release(deploy_to, "r1")
    assert push(deploy_to, {"A": "1"}, restart=False).returncode == 0
    assert run(activate(deploy_to, "r1", health(stable_for=0.3))).returncode == 0
    before = (deploy_to / "shared" / "node.pid").read_text()
    again = push(deploy_to, {"A": "1"})
    assert again.returncode == 0 and "env=unchanged" in again.stdout
    assert "@@step stop" not in again.stderr
    assert (deploy_to / "shared" / "node.pid").read_text() == before


def test_no_restart_writes_the_file_and_leaves_the_node(deploy_to: Path) -> None:
    make_release(deploy_to, "r1", {"A": "1"})
    assert run(activate(deploy_to, "r1", health(stable_for=0.3))).returncode == 0
    before = (deploy_to / "shared" / "node.pid").read_text()
    done = push(deploy_to, {"A": "2"}, restart=False)
    assert done.returncode == 0 and "env=written" in done.stdout
    assert (deploy_to / "shared" / "node.pid").read_text() == before
    assert started_env(deploy_to)["A"] == "1"
    assert "A=2\n" in (deploy_to / "shared" / "node.env").read_text()


def test_a_node_unhealthy_with_the_new_values_gets_the_old_file_back(deploy_to: Path) -> None:
    make_release(deploy_to, "r1")
    assert push(deploy_to, {"A": "good"}, restart=False).returncode == 0
    assert run(activate(deploy_to, "r1", health(stable_for=0.3))).returncode == 0
    # The new values make the node die right after it starts.
    failed = push(deploy_to, {"A": "bad", "FAKE_LIFETIME": "0.2"}, stable_for=1)
    assert failed.returncode == EXIT_UNHEALTHY
    reverted = run(envfile.revert_push(layout(deploy_to), MIX, health=health(stable_for=0.3), stop_timeout=5))
    assert reverted.returncode == 0, reverted.stderr
    assert started_env(deploy_to)["A"] == "good"
    assert "A=good\n" in (deploy_to / "shared" / "node.env").read_text()
    assert not (deploy_to / "shared" / "node.env.prev").exists()


def test_a_deploy_stages_its_values_for_its_migration_and_its_activation(deploy_to: Path) -> None:
    make_release(deploy_to, "r1")
    (deploy_to / "shared" / "env" / "r1.env").unlink()
    assert push(deploy_to, {"URL": f"pw={OLD_PASSWORD}"}, restart=False).returncode == 0
    assert run(activate(deploy_to, "r1", health(stable_for=0.3))).returncode == 0
    # The deploy of r2 stages its values: the running r1 and any restart of it keep today's file ...
    make_release(deploy_to, "r2")
    (deploy_to / "shared" / "env" / "r2.env").unlink()
    staged = script(
        "stage",
        deploy_vars(layout(deploy_to)),
        envfile.write_env(layout(deploy_to), env_file_text({"URL": f"pw={NEW_PASSWORD}"}), release_id="r2"),
    )
    assert run(staged).returncode == 0
    # ... r2's own commands (its migration) read the staged values, r1's today's file ...
    assert launch(deploy_to, "r2", "env", 'printf %s "$URL"').stdout == f"pw={NEW_PASSWORD}"
    assert launch(deploy_to, "r1", "env", 'printf %s "$URL"').stdout == f"pw={OLD_PASSWORD}"
    # ... the activation of r2 puts them into place, and its success forgets the old file.
    assert run(activate(deploy_to, "r2", health(stable_for=0.3), suffix="t2")).returncode == 0
    assert started_env(deploy_to)["URL"] == f"pw={NEW_PASSWORD}"
    assert files_holding(deploy_to, OLD_PASSWORD) == []


def test_a_failed_activation_puts_the_replaced_file_back_and_rollback_keeps_todays(deploy_to: Path) -> None:
    make_release(deploy_to, "r1")
    (deploy_to / "shared" / "env" / "r1.env").unlink()
    assert push(deploy_to, {"A": "today"}, restart=False).returncode == 0
    assert run(activate(deploy_to, "r1", health(stable_for=0.3))).returncode == 0
    make_release(deploy_to, "r2")
    (deploy_to / "shared" / "env" / "r2.env").unlink()
    stage = envfile.write_env(layout(deploy_to), env_file_text({"A": "new", "FAKE_LIFETIME": "0.2"}), release_id="r2")
    assert run(script("stage", deploy_vars(layout(deploy_to)), stage)).returncode == 0
    failed = run(activate(deploy_to, "r2", health(stable_for=1), suffix="t2"))
    assert failed.returncode == EXIT_UNHEALTHY
    assert run(revert_to(deploy_to, "r1")).returncode == 0
    assert started_env(deploy_to)["A"] == "today"
    assert os.readlink(deploy_to / "current") == "releases/r1"
    # Switching releases without staged values (a rollback) runs that code with the file as it is today.
    assert push(deploy_to, {"A": "rotated"}, restart=False).returncode == 0
    assert run(activate(deploy_to, "r2", health(stable_for=0.3), suffix="t3")).returncode == 0
    assert started_env(deploy_to)["A"] == "rotated" and started_env(deploy_to)["DEPLOYER_RELEASE_ID"] == "r2"


def test_the_launcher_prefers_the_staged_file_then_the_environments_then_a_legacy_one(deploy_to: Path) -> None:
    make_release(deploy_to, "r1", {"WHICH": "legacy"})

    def which(rid: str) -> str:
        return launch(deploy_to, rid, "env", 'printf %s "$WHICH"').stdout

    assert which("r1") == "legacy"
    (deploy_to / "shared" / "node.env").write_text(env_file_text({"WHICH": "environment"}).render(reveal=True))
    assert which("r1") == "environment"
    (deploy_to / "shared" / "node.env.r1.staged").write_text(env_file_text({"WHICH": "staged"}).render(reveal=True))
    assert which("r1") == "staged" and which("r2") == "environment"


def test_the_push_script_masks_its_secrets_and_writes_atomically() -> None:
    lay = RemoteLayout("/srv/hello", "hello")
    text = envfile.push_env(
        lay,
        MIX,
        env_file_text({"URL": Secret("url", SecretStr(NEW_PASSWORD))}),
        health=health(),
        stop_timeout=5,
        restart=True,
    ).render()
    assert NEW_PASSWORD not in text and MASK in text
    assert "e=/srv/hello/shared/node.env\n" in text
    assert text.index('> "$e.tmp"') < text.index('mv -f "$e.tmp" "$e"')
    assert text.index("step write-env") < text.index("step stop") < text.index("step health")


def test_a_host_of_the_old_layout_moves_to_the_new_one_with_its_first_deploy(deploy_to: Path) -> None:
    make_release(deploy_to, "r1", {"A": f"pw={OLD_PASSWORD}"})  # deployer <= 0.2: shared/env/r1.env
    assert run(activate(deploy_to, "r1", health(stable_for=0.3))).returncode == 0
    make_release(deploy_to, "r2")
    (deploy_to / "shared" / "env" / "r2.env").unlink()

    def stage(values: dict[str, str | Secret]) -> None:
        fragment = envfile.write_env(layout(deploy_to), env_file_text(values), release_id="r2")
        assert run(script("stage", deploy_vars(layout(deploy_to)), fragment)).returncode == 0

    # A failed first deploy leaves the old layout as it was: r1 reads its own file again.
    stage({"A": "new", "FAKE_LIFETIME": "0.2"})
    assert run(activate(deploy_to, "r2", health(stable_for=1), suffix="t2")).returncode == EXIT_UNHEALTHY
    assert run(revert_to(deploy_to, "r1")).returncode == 0
    assert started_env(deploy_to)["A"] == f"pw={OLD_PASSWORD}"
    assert not (deploy_to / "shared" / "node.env").exists() and (deploy_to / "shared" / "env" / "r1.env").exists()

    # A successful one: node.env in place, the old files (and their secrets) gone.
    stage({"A": "new"})
    assert run(activate(deploy_to, "r2", health(stable_for=0.3), suffix="t3")).returncode == 0
    assert started_env(deploy_to)["A"] == "new"
    assert not (deploy_to / "shared" / "env").exists()
    assert files_holding(deploy_to, OLD_PASSWORD) == []
