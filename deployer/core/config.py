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

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from deployer.core.hooks import HooksConfig, LoadBalancerConfig
from deployer.remote.flavours import flavour
from deployer.remote.fragments import RESERVED_ENV_NAMES as LAUNCHER_RESERVED_ENV_NAMES

# --- strict patterns for values that become paths or names on the host -------------------------------

APP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ADDRESS_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[?[0-9A-Fa-f:.]+\]?)$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ROLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# `[user@]host[:port]`: the same user and host rules as hosts (IPv6 gateways are not supported).
GATEWAY_RE = re.compile(
    r"^(?:[a-z_][a-z0-9_-]{0,31}@)?(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?$"
)
# An Erlang node name (`name` or `name@host`): it reaches the release script's command line.
NODE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}(?:@[A-Za-z0-9][A-Za-z0-9.-]{0,252})?$")
# A remote absolute path: no whitespace, quotes or shell metacharacters, no '..' components.
REMOTE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/@+-]*$")

# Environment variables the tool owns; an inventory must not set them.
RESERVED_ENV = frozenset({"RELEASE_COOKIE", "RELEASE_TMP", "RELEASE_NODE", "RELEASE_DISTRIBUTION"})

# Names an inventory must not set. The node is started by deployer's launcher under `env -i`, which reads
# the env file as data (deployer's own scripts never read it), so only two kinds of name are dangerous: those
# deployer sets for the node or that change the shells starting it (`RESERVED_ENV_NAMES` of
# deployer.remote.fragments, which owns the launcher), and a few whose effect on the node's own shell
# scripts and loader is never what an app's config means (PATH, SHELL, the loader's LD_*).
RESERVED_ENV_NAMES = frozenset(
    {
        *RESERVED_ENV,
        *LAUNCHER_RESERVED_ENV_NAMES,
        "PATH",
        "SHELL",
        "POSIXLY_CORRECT",
    }
)
RESERVED_ENV_PREFIXES = ("LD_", "DEPLOYER_", "BASH_FUNC_")


class KeyPathError(ValueError):
    """A validation error about ``key`` (dotted, relative to the model whose validator raises it), so the
    loader can report the full key path rather than the model's."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


_DEPLOYER_SETS = {
    "RELEASE_NODE": "it is node.name",
    "RELEASE_DISTRIBUTION": "it is node.distribution",
    "RELEASE_COOKIE": "the environment's cookie, kept on each host",
    "RELEASE_TMP": "it is <deploy_to>/shared/tmp",
}


def reserved_env_reason(name: str) -> str | None:
    """Why ``name`` cannot be set by an inventory, or None when it can."""
    if name in RESERVED_ENV:
        source = _DEPLOYER_SETS.get(name, "")
        return f"{name} is managed by deployer and cannot be set in the inventory" + (f" ({source})" if source else "")
    if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
        return (
            f"{name} is reserved: it would change how the shell that starts the node runs, or what deployer "
            "sets for the node"
        )
    return None


def _check_pattern(pattern: re.Pattern[str], what: str, expected: str | None = None) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            rule = expected or f"allowed: {pattern.pattern}"
            raise ValueError(f"{short_repr(value)} is not a valid {what} ({rule})")
        return value

    return AfterValidator(check)


def _check_remote_path(value: str) -> str:
    if not REMOTE_PATH_RE.fullmatch(value):
        raise ValueError(
            f"{short_repr(value)} must be an absolute path made of letters, digits and . _ / @ + - "
            "(no spaces or shell characters)"
        )
    parts = PurePosixPath(value).parts
    if ".." in parts:
        raise ValueError(f"{short_repr(value)} must not contain '..'")
    # `/.`, `//` and `/srv/./app/` name the same directories as `/` and `/srv/app`.
    normalised = "/" + "/".join(p for p in value.split("/") if p not in ("", "."))
    if normalised == "/":
        raise ValueError(f"{short_repr(value)} must not be the root directory '/'")
    return normalised


# Directories that belong to the system: deploying into one would scatter releases/, current and shared/
# among the system's own files (and pruning deletes under releases/).
SYSTEM_DIRS = frozenset(
    {
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/lib64",
        "/usr/libexec",
        "/usr/include",
        "/usr/share",
        "/usr/src",
        "/usr/local",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/usr/local/lib",
        "/usr/local/share",
        "/usr/local/etc",
        "/var/lib",
        "/var/log",
        "/var/cache",
        "/var/spool",
        "/var/mail",
        "/var/opt",
        "/var/www",
        "/var/backups",
        "/var/local",
        "/var/run",
        "/var/tmp",
    }
)
# Trees nothing may be deployed under: world-writable temporary directories (another user can create the
# directory first and own it), memory-backed or kernel file systems, and the system's own programs.
SYSTEM_TREES = (
    "/tmp",
    "/var/tmp",
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/var/run",
    "/boot",
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/share",
)


def _check_deploy_to(value: str) -> str:
    if value in SYSTEM_DIRS:
        raise ValueError(
            f"{short_repr(value)} is a system directory; give the application a directory of its own, "
            "such as /srv/<app>"
        )
    for tree in SYSTEM_TREES:
        if value.startswith(tree + "/"):
            raise ValueError(
                f"{short_repr(value)} is inside {tree}, where no application should live; use e.g. /srv/<app>"
            )
    return value


AppName = Annotated[
    str,
    _check_pattern(APP_NAME_RE, "release name", "lower-case letters, digits and _, starting with a letter, at most 64"),
]
HostName = Annotated[
    str,
    _check_pattern(HOST_NAME_RE, "host name", "letters, digits, . _ -, starting with a letter or digit, at most 63"),
]
Address = Annotated[str, _check_pattern(ADDRESS_RE, "host address", "a DNS name or an IP address")]
UserName = Annotated[
    str, _check_pattern(USER_RE, "user name", "lower-case letters, digits, _ -, starting with a letter or _")
]
RoleName = Annotated[
    str, _check_pattern(ROLE_RE, "role name", "lower-case letters, digits, _ -, starting with a letter")
]
EnvName = Annotated[
    str, _check_pattern(ENV_NAME_RE, "environment variable name", "letters, digits and _, not starting with a digit")
]
NodeName = Annotated[str, _check_pattern(NODE_NAME_RE, "Erlang node name", "name or name@host")]


def _check_gateway(value: str) -> str:
    match = GATEWAY_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"{short_repr(value)} is not a valid gateway: expected [user@]host[:port]")
    port = match.group("port")
    if port and not 1 <= int(port) <= 65535:
        raise ValueError(f"{short_repr(value)}: the port must be between 1 and 65535")
    return value


Gateway = Annotated[str, AfterValidator(_check_gateway)]
RemotePath = Annotated[str, AfterValidator(_check_remote_path)]
DeployPath = Annotated[str, AfterValidator(_check_remote_path), AfterValidator(_check_deploy_to)]


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
DOCKER_REF_WORDS = "letters, digits and . _ / : @ + -, starting with a letter or digit"
# A container engine: `auto`, a command name or an absolute path (argv[0], never a shell).
ENGINE_WORDS = "`auto`, a command name (letters, digits, . _ + -) or an absolute path"
ENGINE_RE = re.compile(r"^(auto|[A-Za-z0-9_][A-Za-z0-9._+-]{0,63}|/[A-Za-z0-9._/+-]{1,254})$")


def _relative_dir(value: str) -> str:
    parts = PurePosixPath(value).parts
    if value.startswith("/") or not parts or ".." in parts or value.strip("./") == "":
        raise ValueError(f"{short_repr(value)} must be a directory inside build.path (relative, no '..', not '.')")
    return value


class BuildConfig(_Model):
    """How the release tarball is produced: on this machine, on a build host over SSH, or in Docker."""

    strategy: Literal["local", "host", "docker"] = Field(
        "local",
        description="`local`: run `command` here; `host`: send the source to `host` over SSH, build there, "
        "fetch the tarball; `docker`: `docker build` (or `podman build`, see `engine`) with `dockerfile`, "
        "exporting the release stage.",
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
    engine: Annotated[str, _check_pattern(ENGINE_RE, "container engine command", ENGINE_WORDS)] = Field(
        "auto",
        description="strategy `docker`: the container engine's command (`docker`, `podman`, or a path; run "
        "directly, never through a shell). `auto`: `docker` when `docker info` answers, else `podman` when "
        "`podman info` does. Name `podman` where a daemon-less `docker` CLI shadows it on the PATH.",
    )
    network: Literal["host", "default", "none"] = Field(
        "host",
        description="strategy `docker`: `--network` of the build's RUN steps; `host` lets `apt-get` in the "
        "build reach the package mirror (podman's own build network cannot on every machine); "
        "`default`: the engine's default (no `--network` argument).",
    )
    image: Annotated[str, _check_pattern(DOCKER_REF_RE, "image reference", DOCKER_REF_WORDS)] | None = Field(
        None, description="strategy `docker`: passed as `--build-arg BUILDER_IMAGE=<image>` for the build stage."
    )
    target: Annotated[str, _check_pattern(DOCKER_REF_RE, "build stage name", DOCKER_REF_WORDS)] | None = Field(
        None, description="strategy `docker`: the stage whose files are exported (`--target`; default: the last)."
    )
    platform: Annotated[str, _check_pattern(DOCKER_REF_RE, "platform", DOCKER_REF_WORDS)] | None = Field(
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
            raise KeyPathError(
                "host", "is required with strategy `host`: an inventory host name or name/address of a build machine"
            )
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
        None,
        description="Jump host as `[user@]host[:port]` (an IPv6 address in brackets); its host key is checked "
        "like any other. One connection to it carries every host.",
    )
    config: bool | str = Field(
        False,
        description="Read an OpenSSH client config: `true` for ~/.ssh/config, or a path (relative to the "
        "inventory file). For each host address it applies HostName, User, Port, IdentityFile, IdentitiesOnly, "
        "HostKeyAlias and ProxyJump (several hops); a host's own port and user, and ssh.gateway, still win.",
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


def _secret_list(data: object) -> object:
    """``secret: [A, B]`` means ``secret: {A: A, B: B}`` (anything but a list of names is left to validation)."""
    if isinstance(data, dict) and isinstance(data.get("secret"), list):
        names = data["secret"]
        if all(isinstance(name, str) for name in names):
            return {**data, "secret": {name: name for name in names}}
    return data


class HostConfig(_Model):
    """One target machine."""

    name: HostName = Field(description="Unique name used in output, filters and reports.")
    address: Address = Field(description="Hostname or IP address to connect to.")
    port: Port | None = Field(None, description="Overrides ssh.port.")
    user: UserName | None = Field(None, description="Overrides ssh.user.")
    roles: tuple[RoleName, ...] = Field(("app",), description="Roles, e.g. `app`, `migrator`.")
    env: dict[EnvName, str] = Field(
        default_factory=dict,
        description="Per-host plain environment values; they replace `env.clear` values of the same name on this host.",
    )
    secret: dict[EnvName, EnvName] = Field(
        default_factory=dict,
        description="Per-host secrets, like `env.secret`: node variable -> name looked up in the operator's "
        "environment, then in `secrets_file` (a list means the same name on both sides). They replace "
        "`env.secret` entries of the same variable on this host, e.g. `DATABASE_URL: DATABASE_URL_EU`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _secret_list(cls, data: object) -> object:
        return _secret_list(data)

    @model_validator(mode="after")
    def _no_reserved(self) -> HostConfig:
        for section, names in (("env", self.env), ("secret", self.secret)):
            for name in names:
                reason = reserved_env_reason(name)
                if reason:
                    raise KeyPathError(f"{section}.{name}", reason)
        both = sorted(set(self.env) & set(self.secret))
        if both:
            raise KeyPathError(f"secret.{both[0]}", f"{', '.join(both)} set both in env and in secret")
        return self


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
        return _secret_list(data)

    @model_validator(mode="after")
    def _no_reserved(self) -> EnvConfig:
        for section, names in (("clear", self.clear), ("secret", self.secret)):
            for name in names:
                reason = reserved_env_reason(name)
                if reason:
                    raise KeyPathError(f"{section}.{name}", reason)
        both = set(self.clear) & set(self.secret)
        if both:
            first = sorted(both)[0]
            raise KeyPathError(f"secret.{first}", f"{', '.join(sorted(both))} set both as clear and secret")
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
            raise KeyPathError("http", "must be an http:// or https:// URL without spaces or quotes")
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
    service: Literal["daemon", "systemd"] = Field(
        "daemon",
        description="How the node is run: `daemon` (the release's own daemon under run_erl, found by its pid; "
        "needs nothing on the host) or `systemd` (a unit `deployer-<app>-<env>.service` installed by deployer, "
        "restarted on failure and on boot, logs in the journal; needs `deployer setup` once, see "
        "docs/production.md). Explicit rather than detected, so an inventory means the same on every host.",
    )
    limit_nofile: int = Field(
        65536, ge=1024, le=1048576, description="`service: systemd`: the unit's LimitNOFILE (open files)."
    )
    user: UserName | None = Field(
        None,
        description="`service: systemd`: the account the node runs as (the unit's `User=`); default the app's "
        "name. A system account of its own that cannot write the releases nor read `shared/` (the unit hands it "
        "the cookie and the environment file as systemd credentials); `deployer setup` creates it. The account "
        "deployer logs in as (`ssh.user`) may be given to run the node as that user instead.",
    )

    @model_validator(mode="after")
    def _user(self) -> NodeConfig:
        if self.user is not None and self.service != "systemd":
            raise KeyPathError(
                "user",
                "needs node.service: systemd (a daemon-mode node runs as the user deployer logs in as); "
                "remove node.user or set node.service: systemd",
            )
        if self.user == "root":
            raise KeyPathError("user", "the node must not run as root: name an unprivileged account")
        return self


def _count_input(value: object) -> object:
    # One message for a wrong type, instead of one per member of the `str | int` union.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a count like 2 or a percentage like 25%, got {short_repr(value)}")
    return value


def short_repr(value: object, limit: int = 60) -> str:
    """``repr`` of an input, cut short: a huge value must not flood an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]}"


Count = Annotated[
    str | int,
    BeforeValidator(_count_input),
    Field(description="A count (`2`) or a percentage of hosts (`25%`)."),
]


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
            try:
                parse_count(getattr(self, field), 100, allow_zero=field == "max_fail")
            except ValueError as exc:
                raise KeyPathError(field, str(exc)) from None
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
                raise ValueError(f"{short_repr(value)}: a percentage must be between 0% and 100%")
            return max(0 if allow_zero else 1, -(-pct * total // 100))
        if not text.isdigit():
            raise ValueError(f"{short_repr(value)} must be a count like 2 or a percentage like 25%")
        number = int(text)
    if number < (0 if allow_zero else 1):
        raise ValueError(f"must be at least {0 if allow_zero else 1}")
    return number


class InventoryConfig(_Model):
    """A whole environment: ``inventory/<env>.yml`` over ``inventory/defaults.yml``."""

    app: AppConfig
    deploy_to: DeployPath = Field(description="Absolute directory on every host holding releases/, current, shared/.")
    keep_releases: int = Field(5, ge=1, le=100, description="Successful releases kept on each host.")
    build: BuildConfig = Field(default_factory=BuildConfig)
    ssh: SSHConfig = Field(default_factory=SSHConfig)
    hosts: tuple[HostConfig, ...] = Field(description="The target machines (at least one).")
    env: EnvConfig = Field(default_factory=EnvConfig)
    migrate: MigrateConfig | None = Field(None, description="Omit when the release has no migrations.")
    health: HealthConfig = Field(default_factory=HealthConfig)
    node: NodeConfig = Field(default_factory=NodeConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig, description="Commands at the named phases.")
    load_balancer: LoadBalancerConfig | None = Field(None, description="Drain each host before its node stops.")
    confirm: bool = Field(
        False,
        description="A protected environment: deploy, rollback, migrate, start, stop and restart ask first, "
        "naming the environment, the operation and the hosts (--yes skips it; without a terminal --yes is required).",
    )

    @model_validator(mode="after")
    def _hosts(self) -> InventoryConfig:
        if not self.hosts:
            raise KeyPathError("hosts", "at least one host is required")
        seen: dict[str, int] = {}
        for index, host in enumerate(self.hosts):
            if host.name in seen:
                raise KeyPathError(
                    f"hosts.{index}.name", f"duplicate host name {host.name!r} (also hosts.{seen[host.name]}.name)"
                )
            seen[host.name] = index
        if isinstance(self.build.host, str) and self.build.host not in seen:
            raise KeyPathError("build.host", f"no host named {self.build.host!r} in hosts")
        for index, machine in enumerate(self.load_balancer.hosts if self.load_balancer else ()):
            if machine.address is None and machine.name not in seen:
                raise KeyPathError(
                    f"load_balancer.hosts.{index}",
                    f"{machine.name!r} is not a host of this inventory: give its address",
                )
        if self.migrate is not None and not any(self.migrate.role in h.roles for h in self.hosts):
            raise KeyPathError("migrate.role", f"no host has the role {self.migrate.role!r}")
        if self.node.service == "systemd" and self.node.user is None and not USER_RE.fullmatch(self.app.name):
            raise KeyPathError(
                "node.user",
                f"the app's name {self.app.name!r} cannot be an account name (at most 32 characters): "
                "name the account the node runs as",
            )
        return self

    @model_validator(mode="after")
    def _env_conflicts(self) -> InventoryConfig:
        """A value deployer sets for this configuration is never silently replaced, nor silently replaces."""
        owned = dict.fromkeys(
            (name for name, _ in flavour(self.app.flavour).runtime_env), f"the {self.app.flavour} flavour"
        )
        if self.node.loopback_only:
            owned["ERL_EPMD_ADDRESS"] = "node.loopback_only (set it to false to choose the address)"
        keys = [(f"env.clear.{n}", n) for n in self.env.clear] + [(f"env.secret.{n}", n) for n in self.env.secret]
        keys += [(f"hosts.{i}.env.{n}", n) for i, host in enumerate(self.hosts) for n in host.env]
        keys += [(f"hosts.{i}.secret.{n}", n) for i, host in enumerate(self.hosts) for n in host.secret]
        for key, name in keys:
            if name in owned:
                raise KeyPathError(key, f"{name} is set by deployer from {owned[name]}")
        # A per-host value replaces the environment's value of its own kind only: a clear value standing in
        # for a secret (or the reverse) is almost certainly a mistake, and would put a secret in the inventory.
        for i, host in enumerate(self.hosts):
            for name in host.env:
                if name in self.env.secret:
                    raise KeyPathError(
                        f"hosts.{i}.env.{name}",
                        f"{name} is a secret (env.secret.{name}); give this host its own in hosts.{i}.secret",
                    )
            for name in host.secret:
                if name in self.env.clear:
                    raise KeyPathError(
                        f"hosts.{i}.secret.{name}",
                        f"{name} is a plain value (env.clear.{name}); make it a secret in env.secret, or give "
                        f"this host a plain value in hosts.{i}.env",
                    )
        return self

    @property
    def node_user(self) -> str | None:
        """The account the node runs as under ``node.service: systemd`` (``node.user``, else the app's name);
        None in daemon mode, where the node runs as the login user."""
        if self.node.service != "systemd":
            return None
        return self.node.user or self.app.name

    @property
    def node_name(self) -> str:
        if self.node.name:
            return self.node.name
        if self.node.distribution == "name":
            return f"{self.app.name}@127.0.0.1"
        return self.app.name

    def hosts_with_role(self, role: str) -> list[HostConfig]:
        return [h for h in self.hosts if role in h.roles]
