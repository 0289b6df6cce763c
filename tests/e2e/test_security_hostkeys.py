"""End to end: unknown and changed host keys are refused before anything changes; `invoke trust` records them.

A fleet of its own (host keys get changed) with sshd on port 2222, so known_hosts entries are the
``[address]:2222`` kind; the project known_hosts starts empty and `use_user_known_hosts` is off.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import paramiko

from deployer.ssh.transport import fingerprint
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, make_app, remove_app

REPO = Path(__file__).resolve().parents[2]


def invoke(app: App, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "--search-root",
            str(REPO),
            *args,
            "--env",
            "e2e",
            "--inventory-dir",
            str(app.inventory_dir),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def host_key(fleet: Fleet, host: str) -> paramiko.PKey:
    """The key the host's sshd serves now, read inside the host."""
    keytype, blob = fleet.exec(host, "cat /run/fleet/ssh_host_ed25519_key.pub").stdout.split()[:2]
    return paramiko.PKey.from_type_string(keytype, base64.b64decode(blob))


def snapshot(app: App, host: str) -> str:
    """What a deploy changes on a host: releases, current, artifacts, history, lock, the running node."""
    return app.fleet.exec(
        host,
        f"cd {app.deploy_to} 2>/dev/null || {{ echo absent; exit 0; }}; "
        "ls -A; ls -A releases artifacts 2>/dev/null; readlink current; cat revisions.log 2>/dev/null; "
        f"test -e .lock && echo LOCKED; curl -fsS --max-time 5 http://127.0.0.1:{app.port}/health || true",
        check=False,
    ).stdout


def test_unknown_and_changed_host_keys_are_refused_until_trusted(
    make_fleet: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = Fleet(2, port=2222).start()  # make_fleet: the fleet tests' skip rules; this one needs port 2222
    app = make_app(fleet, tmp_path, "keys")
    try:
        tarball = str(build_hello("0.1.0"))
        app.rewrite(ssh={**app.data["ssh"], "known_hosts": "known_hosts", "use_user_known_hosts": False})
        known_hosts = app.inventory_dir / "known_hosts"
        h1, h2 = fleet.host("h1"), fleet.host("h2")
        k1, k2 = host_key(fleet, "h1"), host_key(fleet, "h2")

        # --- nothing known: refused with the fingerprint and the way out; nothing happens anywhere ----------
        refused = invoke(app, "deploy", "--tarball", tarball)
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert f"h1: host key for {h1.address} port 2222 is not known: ssh-ed25519 {fingerprint(k1)}" in out
        assert "deployer trust --env e2e --hosts h1" in out
        assert snapshot(app, "h1") == snapshot(app, "h2") == "absent\n"

        # --- trust one host: only it is recorded, as [address]:2222 --------------------------------------------
        one = invoke(app, "trust", "--host", "h1", "--yes")
        assert one.returncode == 0, one.stdout + one.stderr
        assert f"{h1.address} port 2222: ssh-ed25519 {fingerprint(k1)}" in one.stderr and "new" in one.stderr
        assert known_hosts.read_text() == f"[{h1.address}]:2222 ssh-ed25519 {k1.get_base64()}\n"

        # --- h2 still unknown: refused; h1 was locked and released, nothing else changed ---------------------
        refused = invoke(app, "deploy", "--tarball", tarball)
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert f"h2: host key for {h2.address} port 2222 is not known: ssh-ed25519 {fingerprint(k2)}" in out
        assert snapshot(app, "h1") in ("absent\n", "")
        assert snapshot(app, "h2") == "absent\n"

        # --- trust the rest (hashed entries) and deploy ------------------------------------------------------
        rest = invoke(app, "trust", "--yes", "--hashed")
        assert rest.returncode == 0, rest.stdout + rest.stderr
        assert "already trusted" in rest.stderr and "recorded h2" in rest.stderr
        lines = known_hosts.read_text().splitlines()
        assert len(lines) == 2 and lines[1].startswith("|1|") and h2.address not in lines[1]
        deployed = invoke(app, "deploy", "--tarball", tarball)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        before = {h: snapshot(app, h) for h in ("h1", "h2")}
        assert all('"status":"ok"' in s for s in before.values()), before

        # --- h2's key changes: refused as CHANGED, with both fingerprints; no host changed ------------------
        fleet.regenerate_host_key("h2")
        new_k2 = host_key(fleet, "h2")
        assert new_k2.asbytes() != k2.asbytes()
        refused = invoke(app, "deploy", "--tarball", tarball)
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert f"HOST KEY CHANGED for {h2.address} port 2222" in out
        assert fingerprint(k2) in out and fingerprint(new_k2) in out
        assert {h: snapshot(app, h) for h in ("h1", "h2")} == before

        # --- trust refuses to replace it silently ---------------------------------------------------------------
        recorded = known_hosts.read_text()
        silent = invoke(app, "trust", "--yes")
        assert silent.returncode == 1
        assert "CHANGED" in silent.stderr and "--replace" in silent.stderr
        assert known_hosts.read_text() == recorded

        # --- --replace: the old entry goes, the new key is recorded, deploys work again ---------------------------
        replaced = invoke(app, "trust", "--host", "h2", "--yes", "--replace")
        assert replaced.returncode == 0, replaced.stdout + replaced.stderr
        lines = known_hosts.read_text().splitlines()
        assert lines == [
            f"[{h1.address}]:2222 ssh-ed25519 {k1.get_base64()}",
            f"[{h2.address}]:2222 ssh-ed25519 {new_k2.get_base64()}",
        ]
        again = invoke(app, "deploy", "--tarball", tarball)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        remove_app(app)
        fleet.stop()
