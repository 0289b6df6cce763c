"""Podman for the container build tests: installed and given a local base image by scripts/podman-setup.sh.

There is no Docker engine and no image registry on the test machines; the script installs podman and
runc, configures them (runc, explicit ulimits) and imports a Debian root filesystem as
:data:`BASE_IMAGE`. It is idempotent and fast once done (CI may also run it as a step of its own).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Final

SETUP_SCRIPT: Final = Path(__file__).resolve().parents[2] / "scripts" / "podman-setup.sh"
BASE_IMAGE: Final = "localhost/bookworm-base"


class PodmanUnavailable(RuntimeError):
    """podman could not be installed or the base image not made (the message has the script's output)."""


def ensure_podman(timeout: float = 1800) -> str:
    """Run scripts/podman-setup.sh (as root) and return the base image's name.

    Raises:
        PodmanUnavailable: not root, or the script failed (its last lines are in the message).
    """
    if os.geteuid() != 0:
        raise PodmanUnavailable("scripts/podman-setup.sh needs root (apt-get, /etc/containers)")
    done = subprocess.run(
        ["bash", str(SETUP_SCRIPT)],
        env={**os.environ, "DEPLOYER_PODMAN_IMAGE": BASE_IMAGE},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise PodmanUnavailable(f"scripts/podman-setup.sh exited {done.returncode}:\n{tail}")
    lines = done.stdout.split()
    return lines[-1] if lines else BASE_IMAGE


__all__ = ["BASE_IMAGE", "SETUP_SCRIPT", "PodmanUnavailable", "ensure_podman"]
