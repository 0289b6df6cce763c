#!/usr/bin/env bash
# Build (once) the Debian root filesystem every test machine boots from, and cache it.
#
#   bash scripts/machines-rootfs.sh            # build if absent, print where it is
#   bash scripts/machines-rootfs.sh --path     # only print where it would be (no build)
#
# The cache lives OUTSIDE the repository, in $DEPLOYER_MACHINES_CACHE (default
# /var/cache/deployer-machines), as bookworm-<hash of the recipe>/: editing the recipe (the
# part between the recipe markers below) gives a new directory, so a changed recipe is
# always rebuilt and an unchanged one never is.  A lock makes parallel callers (two test
# runs, CI jobs) wait for one build instead of building twice.  Needs root (debootstrap,
# chroot).  tests/harness/machines.py finds the cache with --path and runs this script
# when it is missing.  A cold build prints how long it took; every run prints the size.
set -euo pipefail

SUITE=bookworm
CACHE_ROOT=${DEPLOYER_MACHINES_CACHE:-/var/cache/deployer-machines}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
# Only the recipe (between the markers) names the cache: comments elsewhere may change freely.
HASH=$(sed -n '/^# --- recipe begin/,/^# --- recipe end/p' "$SELF" | sha256sum | cut -c1-12)
ROOTFS="$CACHE_ROOT/$SUITE-$HASH"

if [ "${1:-}" = "--path" ]; then
    echo "$ROOTFS"
    exit 0
fi

# --- recipe begin
# What the machines run (systemd, sshd, journald, sudo) and what a deployed OTP release
# needs at runtime: a release bundling ERTS links libtinfo (ncurses), libcrypto (libssl3),
# libstdc++, zlib and, for Debian's epmd, libsystemd; erlang-base lets releases built with
# include_erts: false run on the system's ERTS (same OTP as the build machine's).
# procps/curl/iproute2 are what health checks and operators use.
PACKAGES=systemd,systemd-sysv,dbus,openssh-server,sudo,iproute2,curl,ca-certificates,procps,netbase
PACKAGES=$PACKAGES,libncurses6,libtinfo6,libssl3,libstdc++6,zlib1g,erlang-base

die() { echo "machines-rootfs: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot); running as uid $(id -u)"

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

need_tools() {
    if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
        echo "machines-rootfs: installing debootstrap and systemd-container" >&2
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q \
            debootstrap systemd-container >&2
    fi
}

# Everything done to the fresh root inside a chroot.  Per-machine state (host keys,
# machine-id, authorized keys, hostname) is NOT here: the harness writes it into each
# machine's own overlay.
customise() {
    local root=$1
    chroot "$root" /bin/sh -eu <<'EOF'
useradd --create-home --shell /bin/bash --uid 1000 --user-group deploy
mkdir -p -m 0700 /root/.ssh
install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh
# Host keys are per machine (the harness writes them): none may be shared via the image.
rm -f /etc/ssh/ssh_host_*
# Every machine gets its own id at first boot of its overlay (the harness writes one).
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
# A persistent journal: logs survive reboots and power cuts, as on a real host.
mkdir -p /var/log/journal
cat > /etc/ssh/sshd_config.d/deployer-machines.conf <<'CONF'
# deployer test machines: keys only, no DNS lookups (the machines have no resolver).
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
MaxStartups 100:30:200
MaxSessions 50
CONF
# Nothing on a test machine needs these, and each costs boot time or wakes up later.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service \
            systemd-timesyncd.service getty@tty1.service console-getty.service; do
    ln -sf /dev/null "/etc/systemd/system/$unit"
done
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
EOF
}

# --- recipe end

build() {
    local tmp=$1 start=$SECONDS m
    m=$(mirror)
    echo "machines-rootfs: building $SUITE from $m into $ROOTFS (a few minutes)" >&2
    rm -rf "$tmp"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$m" > "$tmp.log" 2>&1 \
        || die "debootstrap failed (log: $tmp.log): $(tail -n 5 "$tmp.log")"
    customise "$tmp"
    mv "$tmp" "$ROOTFS"
    rm -f "$tmp.log"
    echo "machines-rootfs: cold build took $((SECONDS - start)) s" >&2
}

# Leftovers of a build that was killed (only possible while nobody holds the lock).
clean_partial_builds() {
    local d m
    for d in "$CACHE_ROOT"/.building-*; do
        [ -e "$d" ] || continue
        # debootstrap mounts /proc and /sys inside its target: never delete through them.
        for m in $(awk -v p="$d/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
            umount -l "$m" || true
        done
        rm -rf --one-file-system "$d"
    done
}

mkdir -p "$CACHE_ROOT"
exec 9> "$CACHE_ROOT/.lock"
flock 9
clean_partial_builds
if [ ! -d "$ROOTFS" ]; then
    need_tools
    build "$CACHE_ROOT/.building-$SUITE-$HASH"
    # Roots of other recipes are not deleted: another checkout (a branch, a parallel CI
    # job) may be booting machines from them right now.  Say they exist, and how to clear.
    for old in "$CACHE_ROOT/$SUITE"-*; do
        [ "$old" = "$ROOTFS" ] || echo "machines-rootfs: older recipe's root $old ($(du -sh "$old" | cut -f1)) can go:" \
            "rm -rf --one-file-system '$old' once no machine boots from it" >&2
    done
else
    need_tools
fi
echo "machines-rootfs: cached size $(du -sh "$ROOTFS" | cut -f1)" >&2
echo "$ROOTFS"
