#!/usr/bin/env bash
# Podman for `build.strategy: docker` (tests/e2e/test_build_docker.py), idempotently, as root:
#
#   bash scripts/podman-setup.sh          # install, configure, make the base image; print its name
#
# 1. apt-get install podman + runc (once);
# 2. /etc/containers/containers.conf: runtime runc (crun fails on this kind of cgroup v1 hybrid host)
#    and explicit default ulimits (runc needs them here);
# 3. the local base image localhost/bookworm-base from a Debian root filesystem: the test machines'
#    cached root (/var/cache/deployer-machines/bookworm-*/, written by scripts/machines-rootfs.sh)
#    when one exists, else a minbase debootstrap cached in $DEPLOYER_PODMAN_CACHE
#    (default /var/cache/deployer-podman). Skipped when the image exists.
#
# There is no registry here: builds use `--build-arg BUILDER_IMAGE=localhost/bookworm-base` and
# `--network host` (so apt-get in the build reaches the Debian mirror). Podman is always called by
# its own name: a daemon-less Docker CLI in /usr/local/bin may shadow podman-docker's `docker`.
set -euo pipefail

IMAGE=${DEPLOYER_PODMAN_IMAGE:-localhost/bookworm-base}
SUITE=bookworm
CACHE=${DEPLOYER_PODMAN_CACHE:-/var/cache/deployer-podman}
MACHINES_CACHE=${DEPLOYER_MACHINES_CACHE:-/var/cache/deployer-machines}
CONF=/etc/containers/containers.conf

die() { echo "podman-setup: $*" >&2; exit 1; }
say() { echo "podman-setup: $*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (apt-get, /etc/containers, debootstrap); running as uid $(id -u)"

# --- 1. packages
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    say "installing podman and runc"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have stale lists: update once if the first attempt cannot find the packages.
    apt-get -o DPkg::Lock::Timeout=900 install -y -q podman runc >&2 \
        || { apt-get -o DPkg::Lock::Timeout=900 update -q >&2 &&
             apt-get -o DPkg::Lock::Timeout=900 install -y -q podman runc >&2; }
fi

# --- 2. engine configuration (only our two settings; rewritten when they differ)
mkdir -p /etc/containers
want=$(cat <<'EOF'
# Written by deployer's scripts/podman-setup.sh.
# runc: crun fails on this host's cgroup v1 hybrid; runc needs explicit ulimits.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
EOF
)
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$want" ]; then
    if [ -f "$CONF" ] && ! grep -q "deployer's scripts/podman-setup.sh" "$CONF"; then
        cp "$CONF" "$CONF.before-deployer"
        say "kept the previous $CONF as $CONF.before-deployer"
    fi
    printf '%s\n' "$want" > "$CONF"
    say "wrote $CONF"
fi

# --- 3. the base image
if podman image exists "$IMAGE"; then
    say "$IMAGE exists"
    echo "$IMAGE"
    exit 0
fi

# The Debian mirror this machine already uses (deb822 .sources first, then sources.list).
mirror() {
    local uri
    uri=$(awk -v suite="$SUITE" '
        /^URIs:/ { uris = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
        /^$/ { if (ok && uris != "") { print uris; exit } ok = 0; uris = "" }
        END { if (ok && uris != "") print uris }
    ' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

start=$SECONDS
mkdir -p "$CACHE"
exec 9> "$CACHE/.lock"
flock 9
# Another caller may have made it while this one waited for the lock.
if podman image exists "$IMAGE"; then
    echo "$IMAGE"
    exit 0
fi

# The machines' root is complete once it has its final name (machines-rootfs.sh renames it into place).
rootfs=
for candidate in "$MACHINES_CACHE/$SUITE"-*/; do
    if [ -x "$candidate/usr/bin/apt-get" ]; then rootfs=${candidate%/}; fi
done
if [ -z "$rootfs" ]; then
    rootfs=$CACHE/$SUITE-minbase
    if [ ! -x "$rootfs/usr/bin/apt-get" ]; then
        command -v debootstrap >/dev/null || apt-get -o DPkg::Lock::Timeout=900 install -y -q debootstrap >&2
        m=$(mirror)
        say "debootstrap --variant=minbase $SUITE from $m into $rootfs (a few minutes, once)"
        tmp=$CACHE/.building-$SUITE
        rm -rf --one-file-system "$tmp"
        debootstrap --variant=minbase "$SUITE" "$tmp" "$m" > "$tmp.log" 2>&1 \
            || die "debootstrap failed (log: $tmp.log): $(tail -n 5 "$tmp.log")"
        chroot "$tmp" /bin/sh -c 'apt-get clean; rm -rf /var/lib/apt/lists/*'
        mv "$tmp" "$rootfs"
        rm -f "$tmp.log"
    fi
fi

say "importing $rootfs as $IMAGE"
# /proc, /sys, /dev contents are the container runtime's business, not the image's.
tar -C "$rootfs" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* --numeric-owner -c . \
    | podman import --change 'CMD ["/bin/bash"]' - "$IMAGE" >&2
podman --runtime runc run --rm --network host "$IMAGE" cat /etc/debian_version >/dev/null \
    || die "$IMAGE was imported but does not run (podman run failed)"
say "base image $IMAGE made in $((SECONDS - start)) s from $rootfs"
echo "$IMAGE"
