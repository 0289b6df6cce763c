"""End to end: hosts reached through ProxyJump hops named in an OpenSSH client config (``ssh.config``).

A deploy to three hosts behind a bastion logs in to the bastion exactly once: every host's connection is a
channel of that one connection (counted in the bastion's own sshd log). With two hops, the inner hop is also
logged in to once, and the hosts see their connections coming from it. Last, the bastion is reached over IPv6.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import make_app, remove_app
from .test_security_hostkeys import invoke

ACCEPTED = re.compile(r"Accepted publickey for root from (\S+) port")


def logins(fleet: Fleet, host: str, log: str = "/run/fleet/sshd.log") -> list[str]:
    """Source addresses of every login the host's sshd accepted so far."""
    return ACCEPTED.findall(fleet.exec(host, f"cat {log}").stdout)


def serve_ipv6(fleet: Fleet, host: str) -> str:
    """Give ``host`` an IPv6 address (and this machine a route to it) and a second sshd listening there."""
    h = fleet.host(host)
    prefix = f"fd{secrets.randbelow(256):02x}:{secrets.randbelow(65536):x}::"
    subprocess.run(["ip", "addr", "add", f"{prefix}1/64", "dev", f"{h.netns}o", "nodad"], check=True)
    fleet.exec(host, f"ip addr add {prefix}2/64 dev eth0 nodad")
    fleet.exec(
        host,
        "mkdir -p /run/v6 && grep -v -e '^ListenAddress' -e '^AddressFamily' -e '^PidFile' /run/fleet/sshd_config "
        f"> /run/v6/sshd_config && printf '%s\\n' 'AddressFamily any' 'ListenAddress [{prefix}2]:22' "
        "'PidFile /run/v6/sshd.pid' >> /run/v6/sshd_config && "
        "/usr/sbin/sshd -f /run/v6/sshd_config -E /run/v6/sshd.log",
    )
    return f"{prefix}2"


def test_deploy_through_a_bastion_logs_in_to_it_once(make_fleet: Callable[..., Fleet], tmp_path: Path) -> None:
    fleet = make_fleet(5)
    app = make_app(fleet, tmp_path, "jump")
    try:
        tarball = str(build_hello("0.1.0"))
        h = {name: fleet.host(name) for name in ("h1", "h2", "h3", "h4", "h5")}
        config = app.inventory_dir / "ssh_config"
        config.write_text(
            f"Host bastion\n  HostName {h['h1'].address}\n  User root\n  IdentityFile {fleet.client_key}\n"
            "  IdentitiesOnly yes\n"
            f"Host inner\n  HostName {h['h2'].address}\n"
            "Host app-*\n  ProxyJump bastion\n"
            + "".join(f"Host app-{i}\n  HostName {h[f'h{i}'].address}\n" for i in (3, 4, 5))
        )
        hosts = [
            {"name": f"h{i}", "address": f"app-{i}", "roles": ["app", "migrator"] if i == 3 else ["app"]}
            for i in (3, 4, 5)
        ]
        app.rewrite(hosts=hosts, ssh={**app.data["ssh"], "config": "ssh_config"})
        before = {name: len(logins(fleet, name)) for name in h}

        deployed = invoke(app, "deploy", "--tarball", tarball)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        for name in ("h3", "h4", "h5"):
            assert '"status":"ok"' in app.sh(name, f"curl -fsS http://127.0.0.1:{app.port}/health")
        # One login to the bastion for the whole run; each host was reached from it, not from here.
        assert len(logins(fleet, "h1")) - before["h1"] == 1, logins(fleet, "h1")
        assert len(logins(fleet, "h2")) == before["h2"]
        for name in ("h3", "h4", "h5"):
            new = logins(fleet, name)[before[name] :]
            assert new and set(new) == {h["h1"].address}, (name, new)

        # Two hops: bastion, then inner. Each is logged in to once; the hosts see inner's address.
        config.write_text(config.read_text().replace("ProxyJump bastion", "ProxyJump bastion,inner"))
        before = {name: len(logins(fleet, name)) for name in h}
        status = invoke(app, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert len(logins(fleet, "h1")) - before["h1"] == 1
        assert len(logins(fleet, "h2")) - before["h2"] == 1
        assert set(logins(fleet, "h2")[before["h2"] :]) == {h["h1"].address}
        for name in ("h3", "h4", "h5"):
            new = logins(fleet, name)[before[name] :]
            assert new and set(new) == {h["h2"].address}, (name, new)

        # The bastion reached over IPv6 (its key is the one recorded for its IPv4 address: HostKeyAlias).
        v6 = serve_ipv6(fleet, "h1")
        config.write_text(
            config.read_text().replace("ProxyJump bastion,inner", "ProxyJump bastion6")
            + f"Host bastion6\n  HostName {v6}\n  User root\n  IdentityFile {fleet.client_key}\n"
            f"  IdentitiesOnly yes\n  HostKeyAlias {h['h1'].address}\n"
        )
        before = {name: len(logins(fleet, name)) for name in h}
        status = invoke(app, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert logins(fleet, "h1", "/run/v6/sshd.log") == [f"{v6[:-1]}1"]  # one login, from this machine
        assert len(logins(fleet, "h1")) == before["h1"]
        for name in ("h3", "h4", "h5"):
            new = logins(fleet, name)[before[name] :]
            assert new and set(new) == {h["h1"].address}, (name, new)
    finally:
        remove_app(app)
