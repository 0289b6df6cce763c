"""The remote layout under ``deploy_to`` — the one place that knows where things live on a host.

::

    <deploy_to>/
      releases/<release_id>/      one extracted release each, never modified after extraction
      releases/.partial-<id>/     an extraction in progress (never a rollback candidate)
      current -> releases/<id>    switched atomically (ln -s to a temp name, then mv -T)
      artifacts/<sha256>.tar.gz   uploaded tarballs, reused when the same artifact is deployed again
      shared/                     state that outlives releases
        node.env                  the node's runtime environment, one for the environment (0600); every
                                  release's node reads it when it starts (``deployer env push`` rewrites it)
        node.env.<id>.staged      a deploy's new environment, used by release <id>'s migration until its
                                  activation moves it into place (keeping the old one as node.env.prev
                                  for the revert)
        .cookie                   the environment's Erlang cookie (0400)
        tmp/                      RELEASE_TMP: run_erl pipes and logs survive a switch
        node.pid                  OS pid of the running VM, recorded after a healthy start
      revisions.log               append-only history: <UTC time> TAB <json>
      .lock/                      deploy lock (mkdir is atomic), .lock/info says who holds it
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

ENV_FILE = "shared/node.env"
"""The node's environment file, relative to ``deploy_to`` (the launcher, a constant, derives it from ``$d``)."""
LEGACY_ENV_DIR = "shared/env"
"""Where deployer up to 0.2 kept one env file per release (``<release_id>.env``); removed once ``node.env``
is in place."""

RELEASE_ID_RE = re.compile(r"^[0-9]{14}-[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def make_release_id(now: datetime, version: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """``YYYYmmddHHMMSS-<version>``; a numeric suffix keeps it unique among ``taken`` ids."""
    base = f"{now:%Y%m%d%H%M%S}-{version}"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}.{n}"
    if not RELEASE_ID_RE.fullmatch(candidate):
        raise ValueError(f"release id {candidate!r} is not valid")
    return candidate


def is_release_id(value: str) -> bool:
    return bool(RELEASE_ID_RE.fullmatch(value))


@dataclass(frozen=True)
class RemoteLayout:
    """Absolute remote paths for one application's ``deploy_to``."""

    deploy_to: str
    app: str
    node_user: str | None = None
    """The account a systemd unit runs the node as (``node.user``), when it may differ from the login user:
    scripts then recognise that account's BEAMs of this ``deploy_to`` as the node. None in daemon mode."""

    @property
    def releases(self) -> str:
        return f"{self.deploy_to}/releases"

    def release(self, release_id: str) -> str:
        return f"{self.releases}/{release_id}"

    def partial(self, release_id: str) -> str:
        return f"{self.releases}/.partial-{release_id}"

    def bin(self, release_id: str) -> str:
        return f"{self.release(release_id)}/bin/{self.app}"

    @property
    def current(self) -> str:
        return f"{self.deploy_to}/current"

    @property
    def artifacts(self) -> str:
        return f"{self.deploy_to}/artifacts"

    def artifact(self, sha256: str) -> str:
        return f"{self.artifacts}/{sha256}.tar.gz"

    @property
    def shared(self) -> str:
        return f"{self.deploy_to}/shared"

    @property
    def env_file(self) -> str:
        """The node's environment file: one per environment, not per release (see :data:`ENV_FILE`)."""
        return f"{self.deploy_to}/{ENV_FILE}"

    def staged_env_file(self, release_id: str) -> str:
        """Where a deploy of ``release_id`` puts its new environment until that release is activated."""
        return f"{self.env_file}.{release_id}.staged"

    @property
    def previous_env_file(self) -> str:
        """The environment an activation replaced, kept until it succeeds (its revert puts it back)."""
        return f"{self.env_file}.prev"

    @property
    def legacy_env_dir(self) -> str:
        """The per-release env files of older deployers (see :data:`LEGACY_ENV_DIR`)."""
        return f"{self.deploy_to}/{LEGACY_ENV_DIR}"

    @property
    def cookie(self) -> str:
        return f"{self.shared}/.cookie"

    @property
    def release_tmp(self) -> str:
        return f"{self.shared}/tmp"

    @property
    def log_dir(self) -> str:
        return f"{self.release_tmp}/log"

    @property
    def pidfile(self) -> str:
        return f"{self.shared}/node.pid"

    @property
    def revisions(self) -> str:
        return f"{self.deploy_to}/revisions.log"

    @property
    def lock(self) -> str:
        return f"{self.deploy_to}/.lock"
