#!/usr/bin/env bash
# make fresh-check: prove the install steps on a machine that has only what the README names.
#
# Builds (once, cached) a minimal Debian bookworm root with debootstrap holding exactly the README's
# prerequisites (python3 + venv, make, git, ca-certificates), puts a clean clone of this repository
# (HEAD, committed files only) into a throw-away overlay on top of it, and runs the project's install
# steps inside it as a new user's machine would: `make deps` (venv, test-deps, fabric-deps,
# cluster-deps) with DTLAB_BUILD_STRICT=1, then checks what they promise (the CLI starts, every worker
# kernel is there, the control-plane binaries run). Any missing step fails the check.
#
# Mounted from the host, because they are machine facts or caches, not project steps: the host's Go
# toolchain (Debian's Go is too old; the README names the version), the Go module/build caches, pip's
# cache and apt's downloaded .deb files (so an unchanged install costs little), DNS and the CA bundle.
#
# Usage: scripts/fresh-check.sh [--if-changed] [--keep]
#   --if-changed  skip when the install scripts are unchanged since the last pass (stamp keyed by
#                 their hash; .ci/run uses this)
#   --keep        keep the overlay afterwards (for debugging)
# Env: DTLAB_CACHE (default ~/.cache/dtlab), FRESH_MIRROR (Debian mirror, default deb.debian.org).
# Needs root (debootstrap, chroot, mounts).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${DTLAB_CACHE:-$HOME/.cache/dtlab}"
mirror="${FRESH_MIRROR:-http://deb.debian.org/debian}"
if_changed=0; keep=0
for a in "$@"; do
    case "$a" in
        --if-changed) if_changed=1 ;;
        --keep) keep=1 ;;
        *) echo "fresh-check: unknown argument $a (use --if-changed, --keep)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "fresh-check: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }

# What a user must have before the first `make` (the README's "Prerequisites" names the same list).
PREREQS=(python3 python3-venv make git ca-certificates)
# Every file that decides what gets installed; a change to any of them re-runs the check.
install_files() {
    cd "$here" && git ls-files Makefile pyproject.toml scripts cluster/localplane images/worker .ci
}
key="$( (printf '%s\n' "${PREREQS[@]}"; install_files | while read -r f; do sha256sum "$here/$f"; done | sed "s#$here/##") \
        | sha256sum | cut -c1-16)"
stamp="$cache/fresh/passed-$key"
if [[ $if_changed == 1 && -f "$stamp" ]]; then
    echo "fresh-check: install scripts unchanged since the pass of $(cat "$stamp") (key $key): skipped"
    exit 0
fi
command -v debootstrap >/dev/null || bash "$here/scripts/apt-ensure.sh" fresh-check debootstrap

# one fresh-check at a time per cache: the base root and the apt download dir are shared, and two
# apt runs in two chroots on one archives dir fail on its lock (found when two checks overlapped)
mkdir -p "$cache/fresh"
exec 9>"$cache/fresh/check.lock"
if ! flock -n 9; then
    echo "fresh-check: another fresh-check holds $cache/fresh/check.lock; waiting (at most 45 min)"
    flock -w 2700 9 || { echo "fresh-check: still locked after 45 min: giving up" >&2; exit 1; }
fi

# ---- the base root: prerequisites only, keyed by the prerequisite list --------------------------
base_key="$(printf '%s\n' bookworm "${PREREQS[@]}" | sha256sum | cut -c1-12)"
base="$cache/fresh/base-$base_key"
if [[ ! -f "$base/.complete" ]]; then
    echo "fresh-check: building the base root $base (debootstrap, ~3 min)"
    rm -rf "$base.tmp"; mkdir -p "$(dirname "$base")"
    debootstrap --variant=minbase --include="$(IFS=,; echo "${PREREQS[*]}")" bookworm "$base.tmp" "$mirror" \
        > "$cache/fresh/debootstrap.log" 2>&1 || { tail -20 "$cache/fresh/debootstrap.log" >&2; exit 1; }
    rm -rf "$base"; mv "$base.tmp" "$base"; touch "$base/.complete"
fi

# ---- a throw-away overlay on the base ----------------------------------------------------------
work="$(mktemp -d "$cache/fresh/run.XXXXXX")"
root="$work/root"
mkdir -p "$work/upper" "$work/ovl" "$root"
mounts=()
cleanup() {
    for ((i=${#mounts[@]}-1; i>=0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
    # never delete through a mount that is still attached (it would reach the host's caches or /dev)
    if grep -q " $work/" /proc/mounts; then
        echo "fresh-check: mounts under $work remain; not deleting it" >&2
    elif [[ $keep == 1 ]]; then echo "fresh-check: kept $work"
    else rm -rf "$work"; fi
}
trap cleanup EXIT
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl" "$root"; mounts+=("$root")
bind() {  # bind SRC DST [ro]
    mkdir -p "$2"; mount --bind "$1" "$2"; mounts+=("$2")
    [[ "${3:-}" == ro ]] && mount -o remount,bind,ro "$2"
    return 0
}
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
bind /sys "$root/sys" ro
bind /dev "$root/dev"
bind /dev/pts "$root/dev/pts"
# caches and machine facts (see the header)
goroot="$(go env GOROOT 2>/dev/null || true)"
[[ -n "$goroot" && -x "$goroot/bin/go" ]] || { echo "fresh-check: the host has no Go toolchain to lend (README: Go >= 1.26)" >&2; exit 1; }
bind "$goroot" "$root/usr/local/go" ro
mkdir -p "$(go env GOMODCACHE)" "$(go env GOCACHE)" "$HOME/.cache/pip" "$cache/fresh/apt-archives/partial"
bind "$(go env GOMODCACHE)" "$root/root/go/pkg/mod"
bind "$(go env GOCACHE)" "$root/root/.cache/go-build"
bind "$HOME/.cache/pip" "$root/root/.cache/pip"
# apt's downloads in a cache of the check's own (the host's archives dir holds a lock other apt runs take)
bind "$cache/fresh/apt-archives" "$root/var/cache/apt/archives"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
[[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# the machine's package sources (bookworm + updates + security), as a fresh machine here would have them
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    rm -f "$root/etc/apt/sources.list"; cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
fi
# no daemons started by package scripts inside the chroot (Debian's convention for chroots)
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
git clone -q --no-hardlinks "$here" "$root/src/dtlab"

echo "fresh-check: running the install steps in a fresh bookworm root ($root)"
start=$(date +%s)
set +e
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 DTLAB_BUILD_STRICT=1 GOFLAGS=-modcacherw \
    bash -euo pipefail -c '
        cd /src/dtlab
        make deps
        echo "fresh-check: checking what the install promises"
        .venv/bin/dtlab --help >/dev/null
        kdir="$(bash images/worker/build.sh)"
        for k in amd64/dtlab-kernel arm64/dtlab-kernel riscv64/dtlab-kernel wasm/dtlab-kernel.wasm; do
            test -x "$kdir/$k" || test -f "$kdir/$k" || { echo "missing worker kernel $k" >&2; exit 1; }
        done
        bin="$(bash cluster/localplane/build.sh 2>/dev/null | tail -1)"
        "$bin/kube-apiserver" --version
        "$bin/kubectl" version --client >/dev/null
        .venv/bin/python -c "import dtlab, dtlab.workload.readers as r; r.read_openb_nodes()"
        pdflatex --version >/dev/null && test -n "$(kpsewhich booktabs.sty)"   # dtlab table tests (test-deps)
    ' > "$work/install.log" 2>&1
rc=$?
set -e
took=$(( $(date +%s) - start ))
if [[ $rc -ne 0 ]]; then
    echo "fresh-check: FAILED after ${took} s (exit $rc); the last lines of the install log:" >&2
    tail -40 "$work/install.log" >&2
    cp "$work/install.log" "$cache/fresh/last-failure.log"
    echo "fresh-check: full log in $cache/fresh/last-failure.log" >&2
    exit 1
fi
grep -E '^\[|: (installing|all present)' "$work/install.log" || true
date -u +%Y-%m-%dT%H:%M:%SZ > "$stamp"
echo "fresh-check: passed in ${took} s (install-script key $key)"
