#!/usr/bin/env bash
# Everything `dtlab cluster up --real-nodes` needs, idempotent and cached (`make cluster-deps`):
#  1. Debian packages: containerd + runc (one containerd per real node), the standard CNI plugins
#     (bridge, host-local, loopback in /usr/lib/cni), buildah (image builder), qemu-user-static
#     (arm64/riscv64 containers through binfmt_misc), iproute2/iptables (pod network), plus the
#     fabric's toolchains (the worker kernels are cross-compiled for the images);
#  2. the control plane, KWOK and kubelet from Go modules (cluster/localplane/build.sh, cached by version);
#  3. the pause and worker images (images/build.sh, cached by source hash).
# A warm second run takes seconds. Needs root for apt.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/apt-ensure.sh" cluster-deps containerd runc containernetworking-plugins buildah \
    qemu-user-static iproute2 iptables
bash "$here/scripts/fabric-deps.sh"
bash "$here/cluster/localplane/build.sh" >/dev/null
out="$(bash "$here/images/build.sh")"
echo "cluster-deps: images in $out"
