#!/usr/bin/env bash
# Install what the fabric substrate needs on Debian/Ubuntu: gcc (native kernel), cross compilers (aarch64, riscv64),
# QEMU user-mode emulators, clang + lld + wasi-libc (+ wasm32 compiler-rt builtins), iproute2.
# The Wasm runtime is the PyPI `wasmtime` package (a dtlab dependency). Idempotent and quick when
# everything is present: it only calls apt-get for packages that are missing. Needs root for apt.
set -euo pipefail
pkgs=(gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
      qemu-user-static clang lld wasi-libc iproute2)
# Base packages first: the wasm32 builtins package below is named after the clang version, so clang
# must be installed before it is asked for its version (a fresh machine has no clang).
bash "$(dirname "$0")/apt-ensure.sh" fabric-deps "${pkgs[@]}"
if ! ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1; then
    ver="$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)"
    extra=""
    for cand in ${ver:+libclang-rt-$ver-dev-wasm32} libclang-rt-dev-wasm32 libclang-rt-14-dev-wasm32; do
        if apt-cache show "$cand" >/dev/null 2>&1; then extra="$cand"; break; fi
    done
    if [[ -z "$extra" ]]; then
        echo "fabric-deps: no libclang-rt-*-dev-wasm32 package for clang ${ver:-?}; the wasm kernel cannot link" >&2
        exit 1
    fi
    bash "$(dirname "$0")/apt-ensure.sh" fabric-deps "$extra"
fi
# build the kernels now so the first fabric run does not pay for it
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$(bash "$here/images/worker/build.sh")"
echo "fabric-deps: worker kernels in $out"
