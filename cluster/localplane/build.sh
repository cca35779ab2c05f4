#!/usr/bin/env bash
# Build (or reuse) the local control-plane binaries for dtlab.
#
#   kube-apiserver kube-controller-manager kube-scheduler kubectl etcd
#       -> ${DTLAB_CACHE:-$HOME/.cache/dtlab}/k8s/v<K8S_VERSION>/bin/
#   kwok kwokctl
#       -> ${DTLAB_CACHE:-$HOME/.cache/dtlab}/kwok/v<KWOK_VERSION>/bin/
#   kubelet (real nodes, `dtlab cluster up --real-nodes`)
#       -> ${DTLAB_CACHE:-$HOME/.cache/dtlab}/kubelet/v<K8S_VERSION>/bin/
#
# Everything comes from the Go module proxy: the wrapper module in ./k8s
# requires k8s.io/kubernetes and pins each staging module with a replace
# (k8s.io/kubernetes' own go.mod points them at ./staging, which a dependent
# module cannot use). KWOK has no replace directives, so `go install @version`
# works for it directly. If every binary is already cached the script does
# nothing (second call is instant). The last line of stdout is the k8s bin dir.
#
# Env: DTLAB_CACHE (cache root), DTLAB_BUILD_JOBS (go -p, default 2),
#      DTLAB_REBUILD=1 (ignore the cache).
set -euo pipefail

K8S_VERSION=1.36.3
ETCD_VERSION=3.6.8          # the etcd server version k8s.io/kubernetes v1.36.3 requires
KWOK_VERSION=0.8.0

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${DTLAB_CACHE:-$HOME/.cache/dtlab}"
K8S_BIN="$CACHE/k8s/v$K8S_VERSION/bin"
KWOK_BIN="$CACHE/kwok/v$KWOK_VERSION/bin"
K8S_TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)
KWOK_TOOLS=(kwok kwokctl)
# kubelet has its own cache dir: a control-plane build (which replaces K8S_BIN whole) never drops it
KUBELET_BIN="$CACHE/kubelet/v$K8S_VERSION/bin"

have_all() { # dir tool...
  local d="$1"; shift
  for t in "$@"; do [[ -x "$d/$t" ]] || return 1; done
}

need_k8s=1; need_kwok=1; need_kubelet=1
if [[ "${DTLAB_REBUILD:-0}" != 1 ]]; then
  have_all "$K8S_BIN" "${K8S_TOOLS[@]}" && need_k8s=0
  have_all "$KWOK_BIN" "${KWOK_TOOLS[@]}" && need_kwok=0
  have_all "$KUBELET_BIN" kubelet && need_kubelet=0
fi
if [[ $need_k8s == 0 && $need_kwok == 0 && $need_kubelet == 0 ]]; then
  echo "cached: $KWOK_BIN" >&2
  echo "$K8S_BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: 'go' not found (need Go >= 1.26)" >&2; exit 1; }
gov="$(go env GOVERSION)"; gov="${gov#go}"
if [[ "$(printf '%s\n' 1.26 "$gov" | sort -V | head -1)" != 1.26 ]]; then
  echo "build.sh: Go $gov is too old; k8s.io/kubernetes v$K8S_VERSION and kwok v$KWOK_VERSION need Go >= 1.26" >&2
  exit 1
fi

export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false -p=${DTLAB_BUILD_JOBS:-2}"
export GOTOOLCHAIN=local
NICE=(nice -n 10)
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
k8s_ldflags() {  # the version stamp every k8s binary gets (else it reports v0.0.0-master)
  local ldf="-s -w" pkg minor
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldf+=" -X $pkg.gitVersion=v$K8S_VERSION"
    ldf+=" -X $pkg.gitMajor=${K8S_VERSION%%.*}"
    minor="${K8S_VERSION#*.}"; ldf+=" -X $pkg.gitMinor=${minor%%.*}"
    ldf+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE"
  done
  echo "$ldf"
}

if [[ $need_k8s == 1 ]]; then
  tmp="$CACHE/k8s/v$K8S_VERSION/bin.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  ldf="$(k8s_ldflags)"
  echo ">> building kubernetes v$K8S_VERSION into $tmp" >&2
  (cd "$HERE/k8s" && "${NICE[@]}" go build -trimpath -ldflags "$ldf" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl)
  echo ">> building etcd v$ETCD_VERSION" >&2
  (cd "$HERE/k8s" && "${NICE[@]}" go build -trimpath \
      -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$ETCD_VERSION" \
      -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  have_all "$tmp" "${K8S_TOOLS[@]}"
  rm -rf "$K8S_BIN"; mv "$tmp" "$K8S_BIN"
fi

if [[ $need_kwok == 1 ]]; then
  tmp="$CACHE/kwok/v$KWOK_VERSION/bin.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  echo ">> building kwok v$KWOK_VERSION into $tmp" >&2
  (cd "$tmp" && GOBIN="$tmp" "${NICE[@]}" go install -trimpath \
      -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$K8S_VERSION" \
      "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@v$KWOK_VERSION")
  have_all "$tmp" "${KWOK_TOOLS[@]}"
  rm -rf "$KWOK_BIN"; mv "$tmp" "$KWOK_BIN"
fi

if [[ $need_kubelet == 1 ]]; then
  tmp="$CACHE/kubelet/v$K8S_VERSION/bin.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  echo ">> building kubelet v$K8S_VERSION into $tmp" >&2
  (cd "$HERE/k8s" && "${NICE[@]}" go build -trimpath -ldflags "$(k8s_ldflags)" -o "$tmp/kubelet" \
      k8s.io/kubernetes/cmd/kubelet)
  have_all "$tmp" kubelet
  rm -rf "$KUBELET_BIN"; mv "$tmp" "$KUBELET_BIN"
fi

echo "kwok: $KWOK_BIN" >&2
echo "kubelet: $KUBELET_BIN" >&2
echo "$K8S_BIN"
