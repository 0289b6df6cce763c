"""The inventory's schema: one validated, frozen tree of Pydantic models.

Every model forbids unknown keys, so a typo in ``inventory/prod.yml`` is an
error that names the key instead of a silently ignored setting. Validators
raise ``ValueError`` with the sentence an operator should read; the inventory
loader (:mod:`deployer.core.inventory`) prefixes it with the file and key path.

Values that can end up in a remote path or shell line (application name, host
names, ``deploy_to``, environment variable names) are restricted to strict
patterns here, before anything is rendered; everything else is quoted at
render time by :mod:`deployer.commands`.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# --- strict patterns for values that become paths or names on the host -------------------------------

APP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ADDRESS_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[?[0-9A-Fa-f:.]+\]?)$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ROLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# `[user@]host[:port]`: the same user and host rules as hosts (IPv6 gateways are not supported).
GATEWAY_RE = re.compile(r"^(?:[a-z_][a-z0-9_-]{0,31}@)?[A-Za-z0-9][A-Za-z0-9.-]{0,252}(?::[0-9]{1,5})?$")
# An Erlang node name (`name` or `name@host`): it reaches the release script's command line.
NODE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}(?:@[A-Za-z0-9][A-Za-z0-9.-]{0,252})?$")
# A remote absolute path: no whitespace, quotes or shell metacharacters, no '..' components.
REMOTE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/@+-]*$")

# Environment variables the tool owns; an inventory must not set them.
RESERVED_ENV = frozenset({"RELEASE_COOKIE", "RELEASE_TMP", "RELEASE_NODE", "RELEASE_DISTRIBUTION"})


def _check_pattern(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {what} (allowed: {pattern.pattern})")
        return value

    return AfterValidator(check)


def _check_remote_path(value: str) -> str:
    if not REMOTE_PATH_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} must be an absolute path made of letters, digits and . _ / @ + - "
            "(no spaces or shell characters)"
        )
    parts = PurePosixPath(value).parts
    if ".." in parts:
        raise ValueError(f"{value!r} must not contain '..'")
    if value.rstrip("/") == "":
        raise ValueError("must not be the root directory '/'")
    return value.rstrip("/")


AppName = Annotated[str, _check_pattern(APP_NAME_RE, "release name")]
HostName = Annotated[str, _check_pattern(HOST_NAME_RE, "host name")]
Address = Annotated[str, _check_pattern(ADDRESS_RE, "host address")]
UserName = Annotated[str, _check_pattern(USER_RE, "user name")]
RoleName = Annotated[str, _check_pattern(ROLE_RE, "role name")]
EnvName = Annotated[str, _check_pattern(ENV_NAME_RE, "environment variable name")]
NodeName = Annotated[str, _check_pattern(NODE_NAME_RE, "Erlang node name")]


def _check_gateway(value: str) -> str:
    if not GATEWAY_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid gateway: expected [user@]host[:port]")
    _, _, port = value.rpartition("@")[2].partition(":")
    if port and not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be between 1 and 65535")
    return value


Gateway = Annotated[str, AfterValidator(_check_gateway)]
RemotePath = Annotated[str, AfterValidator(_check_remote_path)]


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be between 1 and 65535")
    return value


Port = Annotated[int, AfterValidator(_check_port)]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


PositiveSeconds = Annotated[float, AfterValidator(_positive)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections ------------------------------------------------------------------------------------------


class AppConfig(_Model):
    """The release being shipped."""

    name: AppName = Field(description="Release name: the tarball holds `bin/<name>`.")
    flavour: Literal["mix", "rebar3", "distillery"] = Field(
        "mix", description="Which release script conventions `bin/<name>` follows."
    )


class BuildHostConfig(_Model):
    """A build machine that is not one of the targets, reached with the `ssh` settings (strict host keys)."""

    name: HostName = Field("build", description="Name used in output and error messages.")
    address: Address = Field(description="Hostname or IP address to connect to.")
    port: Port | None = Field(None, description="Overrides ssh.port.")
    user: UserName | None = Field(None, description="Overrides ssh.user.")


# A Docker image reference or build stage name; they reach docker's argv (never a shell).
DOCKER_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")


def _relative_dir(value: str) -> str:
    parts = PurePosixPath(value).parts
    if value.startswith("/") or not parts or ".." in parts or value.strip("./") == "":
        raise ValueError(f"{value!r} must be a directory inside build.path (relative, no '..', not '.')")
    return value


class BuildConfig(_Model):
    """How the release tarball is produced: on this machine, on a build host over SSH, or in Docker."""

    strategy: Literal["local", "host", "docker"] = Field(
        "local",
        description="`local`: run `command` here; `host`: send the source to `host` over SSH, build there, "
        "fetch the tarball; `docker`: `docker build` with `dockerfile`, exporting the release stage.",
    )
    path: str = Field(".", description="Project directory, relative to the current directory.")
    command: str | None = Field(
        None,
        description="Build command run by `sh -c` in `path` (here or on the build host); default per flavour "
        "(mix: `MIX_ENV=prod mix release --overwrite`, rebar3: `rebar3 as prod tar`).",
    )
    env: dict[EnvName, str] = Field(
        default_factory=dict,
        description="Extra environment for the build (e.g. MIX_ENV is set for mix); with docker, passed as "
        "`--build-arg NAME` (the value travels in the environment, not in argv).",
    )
    tarball: str | None = Field(
        None,
        description="Glob (relative to `path`, here or on the build host) where the tarball lands; default per "
        "flavour (mix: `_build/prod/<name>-*.tar.gz`). The newest match written by the build is used.",
    )
    host: HostName | BuildHostConfig | None = Field(
        None,
        description="strategy `host`: the name of an inventory host, or a machine of its own "
        "(name/address/port/user). It needs the build tools (Erlang, Elixir/rebar3) and the targets' "
        "architecture and libc.",
    )
    remote_path: RemotePath = Field(
        "/var/tmp/deployer-build",
        description="strategy `host`: each build gets a fresh directory under this one on the build host, "
        "removed afterwards.",
    )
    dockerfile: str = Field("Dockerfile", description="strategy `docker`: the Dockerfile, relative to `path`.")
    image: Annotated[str, _check_pattern(DOCKER_REF_RE, "image reference")] | None = Field(
        None, description="strategy `docker`: passed as `--build-arg BUILDER_IMAGE=<image>` for the build stage."
    )
    target: Annotated[str, _check_pattern(DOCKER_REF_RE, "build stage name")] | None = Field(
        None, description="strategy `docker`: the stage whose files are exported (`--target`; default: the last)."
    )
    platform: Annotated[str, _check_pattern(DOCKER_REF_RE, "platform")] | None = Field(
        None, description="strategy `docker`: `--platform`, e.g. `linux/arm64` for targets of that architecture."
    )
    output: Annotated[str, AfterValidator(_relative_dir)] = Field(
        "_build/deployer",
        description="strategies `host` and `docker`: local directory (relative to `path`) that receives the "
        "tarball; emptied before each build.",
    )
    timeout: PositiveSeconds = Field(3600.0, description="Seconds a build on a build host or in Docker may take.")

    @model_validator(mode="after")
    def _strategy(self) -> BuildConfig:
        if self.strategy == "host" and self.host is None:
            raise ValueError("strategy `host` needs `host`: an inventory host name or name/address of a build machine")
        return self


class SSHConfig(_Model):
    """How to reach the hosts. Host keys are always checked strictly."""

    user: UserName = Field("deploy", description="Login user unless a host sets its own.")
    port: Port = Field(22, description="SSH port unless a host sets its own.")
    identity_file: str | None = Field(
        None, description="Private key file; default: ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa."
    )
    known_hosts: str | None = Field(
        None, description="Project known_hosts file (relative to the inventory file), read in addition to the user's."
    )
    use_user_known_hosts: bool = Field(True, description="Also read ~/.ssh/known_hosts.")
    gateway: Gateway | None = Field(
        None, description="Jump host as `[user@]host[:port]`; its host key is checked like any other."
    )
    connect_timeout: PositiveSeconds = Field(10.0, description="Seconds to establish TCP + SSH + auth.")
    command_timeout: PositiveSeconds = Field(600.0, description="Deadline for any single remote step.")
    keepalive: int = Field(
        15,
        ge=0,
        description="Seconds between TCP keepalive probes; a host silent for keepalive x keepalive_count seconds "
        "(or with data unacknowledged that long) is declared lost instead of hanging the run. 0 disables.",
    )
    keepalive_count: int = Field(3, ge=1, le=100, description="Unanswered keepalives before the host is lost.")
    forward_agent: bool = Field(False, description="Forward the local ssh-agent (off unless asked for).")


class HostConfig(_Model):
    """One target machine."""

    name: HostName = Field(description="Unique name used in output, filters and reports.")
    address: Address = Field(description="Hostname or IP address to connect to.")
    port: Port | None = Field(None, description="Overrides ssh.port.")
    user: UserName | None = Field(None, description="Overrides ssh.user.")
    roles: tuple[RoleName, ...] = Field(("app",), description="Roles, e.g. `app`, `migrator`.")
    env: dict[EnvName, str] = Field(default_factory=dict, description="Per-host plain environment values.")


class EnvConfig(_Model):
    """The node's runtime environment, written to a 0600 file on each host."""

    clear: dict[EnvName, str] = Field(
        default_factory=dict,
        description="Plain values. `${shared}` and `${deploy_to}` are replaced with the remote paths.",
    )
    secret: dict[EnvName, EnvName] = Field(
        default_factory=dict,
        description="Secrets: node variable -> name looked up in the operator's environment, then in "
        "`secrets_file`. A list of names means the same name on both sides.",
    )
    secrets_file: str | None = Field(None, description="A KEY=VALUE file outside the repository (~ is expanded).")

    @model_validator(mode="before")
    @classmethod
    def _secret_list(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("secret"), list):
            data = dict(data)
            data["secret"] = {name: name for name in data["secret"]}
        return data

    @model_validator(mode="after")
    def _no_reserved(self) -> EnvConfig:
        for name in [*self.clear, *self.secret]:
            if name in RESERVED_ENV:
                raise ValueError(f"{name} is managed by deployer and cannot be set in the inventory")
        both = set(self.clear) & set(self.secret)
        if both:
            raise ValueError(f"{', '.join(sorted(both))} set both as clear and secret")
        return self


class MigrateConfig(_Model):
    """The release's own migration, run once per deploy before any host switches."""

    eval: str = Field(description="Expression for the release's `eval`, e.g. `MyApp.Release.migrate()`.")
    role: RoleName = Field("migrator", description="Runs on the first host with this role.")
    timeout: PositiveSeconds = Field(600.0, description="Seconds before the migration is considered hung.")


class HealthConfig(_Model):
    """What 'healthy' means, checked on the host itself after the node starts."""

    http: str | None = Field(
        None,
        description="URL fetched with curl on the host; any 2xx is healthy. `${NAME}` is the host's plain env "
        "value NAME (e.g. `http://127.0.0.1:${HELLO_PORT}/health`).",
    )
    rpc: str | None = Field(
        None, description="Expression for `bin/<name> rpc`; must exit 0 (boots a VM per try: prefer http)."
    )
    deadline: PositiveSeconds = Field(60.0, description="Seconds for the node to become healthy.")
    interval: PositiveSeconds = Field(0.5, description="Seconds between tries.")
    stable_for: float = Field(
        5.0,
        ge=0,
        description="Seconds the started node must stay up and keep passing the check after its first healthy "
        "answer before the host counts as healthy (0: the first answer is enough).",
    )

    @model_validator(mode="after")
    def _url(self) -> HealthConfig:
        if self.http is not None and not re.fullmatch(r"https?://[^\s'\"]+", self.http):
            raise ValueError("http must be an http:// or https:// URL without spaces or quotes")
        return self


class NodeConfig(_Model):
    """OTP node settings."""

    name: NodeName | None = Field(
        None,
        description="RELEASE_NODE; default `<release>@127.0.0.1` with `name` distribution "
        "(so the node is reachable through loopback only), `<release>` with `sname`.",
    )
    distribution: Literal["sname", "name", "none"] = Field("name", description="RELEASE_DISTRIBUTION.")
    loopback_only: bool = Field(True, description="Bind EPMD and distribution to 127.0.0.1.")
    stop_timeout: PositiveSeconds = Field(30.0, description="Seconds to wait for the old VM to exit after SIGTERM.")


Count = Annotated[str | int, Field(description="A count (`2`) or a percentage of hosts (`25%`).")]


class StrategyConfig(_Model):
    """How hosts are switched: all at once, or in rolling batches."""

    kind: Literal["parallel", "rolling"] = Field("parallel", description="`parallel` or `rolling`.")
    batch_size: Count = Field(1, description="Hosts per batch when rolling.")
    pause: float = Field(0.0, ge=0, description="Seconds to wait between batches.")
    canary: bool = Field(False, description="First batch is a single host that must be healthy first.")
    max_fail: Count = Field(0, description="Failed hosts tolerated before no further batch starts.")
    workers: int = Field(32, ge=1, le=512, description="Hosts worked on concurrently.")

    @model_validator(mode="after")
    def _counts(self) -> StrategyConfig:
        for field in ("batch_size", "max_fail"):
            parse_count(getattr(self, field), 100, allow_zero=field == "max_fail")
        return self


def parse_count(value: str | int, total: int, *, allow_zero: bool = False) -> int:
    """Turn ``3`` or ``"25%"`` into a number of hosts out of ``total`` (percentages round up)."""
    if isinstance(value, int):
        number = value
    else:
        text = value.strip()
        match = re.fullmatch(r"(\d{1,3})%", text)
        if match:
            pct = int(match.group(1))
            if not 0 <= pct <= 100:
                raise ValueError(f"{value!r}: a percentage must be between 0% and 100%")
            return max(0 if allow_zero else 1, -(-pct * total // 100))
        if not text.isdigit():
            raise ValueError(f"{value!r} must be a count like 2 or a percentage like 25%")
        number = int(text)
    if number < (0 if allow_zero else 1):
        raise ValueError(f"must be at least {0 if allow_zero else 1}")
    return number


class InventoryConfig(_Model):
    """A whole environment: ``inventory/<env>.yml`` over ``inventory/defaults.yml``."""

    app: AppConfig
    deploy_to: RemotePath = Field(description="Absolute directory on every host holding releases/, current, shared/.")
    keep_releases: int = Field(5, ge=1, le=100, description="Successful releases kept on each host.")
    build: BuildConfig = Field(default_factory=BuildConfig)
    ssh: SSHConfig = Field(default_factory=SSHConfig)
    hosts: tuple[HostConfig, ...] = Field(description="The target machines (at least one).")
    env: EnvConfig = Field(default_factory=EnvConfig)
    migrate: MigrateConfig | None = Field(None, description="Omit when the release has no migrations.")
    health: HealthConfig = Field(default_factory=HealthConfig)
    node: NodeConfig = Field(default_factory=NodeConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)

    @model_validator(mode="after")
    def _hosts(self) -> InventoryConfig:
        if not self.hosts:
            raise ValueError("hosts: at least one host is required")
        seen: dict[str, int] = {}
        for index, host in enumerate(self.hosts):
            if host.name in seen:
                raise ValueError(
                    f"hosts.{index}.name: duplicate host name {host.name!r} (also hosts.{seen[host.name]}.name)"
                )
            seen[host.name] = index
        if isinstance(self.build.host, str) and self.build.host not in seen:
            raise ValueError(f"build.host: no host named {self.build.host!r} in hosts")
        if self.migrate is not None and not any(self.migrate.role in h.roles for h in self.hosts):
            raise ValueError(f"migrate.role: no host has the role {self.migrate.role!r}")
        return self

    @property
    def node_name(self) -> str:
        if self.node.name:
            return self.node.name
        if self.node.distribution == "name":
            return f"{self.app.name}@127.0.0.1"
        return self.app.name

    def hosts_with_role(self, role: str) -> list[HostConfig]:
        return [h for h in self.hosts if role in h.roles]
