#!/usr/bin/env bash
# Build the real nodes' container images with buildah from the Dockerfiles beside this script
# (`make images`): the pod sandbox dtlab/pause:1 and the workers dtlab/worker:{amd64,arm64,riscv64,wasm}.
# Each is written as a docker-archive tarball that `dtlab cluster up --real-nodes` imports into every
# real node's containerd (no registry is reachable here, pods use imagePullPolicy: Never).
#
#   ${DTLAB_CACHE:-~/.cache/dtlab}/images/<hash>/{pause,worker-amd64,worker-arm64,worker-riscv64,worker-wasm}.tar
#
# <hash> covers the kernel build (its own source hash), the Dockerfiles, this script and the wazero
# version, so a second call with nothing changed exits at once. Prints the output dir on stdout.
# Needs: buildah (scripts/cluster-deps.sh), Go >= 1.22 for wazero, the worker toolchains (fabric-deps).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${DTLAB_CACHE:-$HOME/.cache/dtlab}"
WAZERO_VERSION=1.12.0
IMAGES=(pause worker-amd64 worker-arm64 worker-riscv64 worker-wasm)

kdir="$(DTLAB_BUILD_STRICT=1 bash "$here/worker/build.sh")"
wz_dir="$cache/wazero/v$WAZERO_VERSION/bin"
if [[ ! -x "$wz_dir/wazero" ]]; then
    command -v go >/dev/null || { echo "images/build.sh: 'go' not found (needed to build wazero)" >&2; exit 1; }
    tmp="$wz_dir.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
    echo ">> building wazero v$WAZERO_VERSION" >&2
    (cd "$tmp" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false GOBIN="$tmp" nice -n 10 \
        go install -trimpath -ldflags "-s -w" "github.com/tetratelabs/wazero/cmd/wazero@v$WAZERO_VERSION")
    rm -rf "$wz_dir"; mv "$tmp" "$wz_dir"
fi
hash="$( (basename "$kdir"; echo "wazero $WAZERO_VERSION"; cat "$here/build.sh" "$here"/worker/Dockerfile.* \
          "$here/pause/Dockerfile") | sha256sum | cut -c1-16)"
out="${DTLAB_IMAGES_OUT:-$cache/images/$hash}"
complete=1
for i in "${IMAGES[@]}"; do [[ -s "$out/$i.tar" ]] || complete=0; done
if [[ $complete == 1 ]]; then echo "$out"; exit 0; fi
command -v buildah >/dev/null || { echo "images/build.sh: buildah not found (make cluster-deps)" >&2; exit 1; }

# a private buildah store (vfs: works without overlay support for the builder) removed afterwards
work="$(mktemp -d "${TMPDIR:-/tmp}/dtlab-images.XXXXXX")"
trap 'buildah --root "$work/root" --runroot "$work/run" --storage-driver vfs rm -a >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
B=(buildah --root "$work/root" --runroot "$work/run" --storage-driver vfs)
ctx="$work/ctx"
cp -a "$kdir" "$ctx"
cp "$wz_dir/wazero" "$ctx/wazero"
mkdir -p "$out"
build() {  # build <file> <platform> <image name> <tar name>
    local file="$1" platform="$2" ref="$3" tar="$4"
    "${B[@]}" bud --quiet --platform "$platform" -f "$file" -t "$ref" "$ctx" >/dev/null
    rm -f "$out/$tar.tmp"
    "${B[@]}" push --quiet "$ref" "docker-archive:$out/$tar.tmp:$ref" >/dev/null
    mv -f "$out/$tar.tmp" "$out/$tar"
    echo "images/build.sh: $ref -> $out/$tar" >&2
}
case "$(uname -m)" in x86_64) host=amd64 ;; aarch64) host=arm64 ;; *) host="$(uname -m)" ;; esac
build "$here/pause/Dockerfile" "linux/$host" dtlab/pause:1 pause.tar
for a in amd64 arm64 riscv64; do
    build "$here/worker/Dockerfile.$a" "linux/$a" "dtlab/worker:$a" "worker-$a.tar"
done
build "$here/worker/Dockerfile.wasm" "linux/$host" dtlab/worker:wasm worker-wasm.tar
echo "$out"
