#!/usr/bin/env bash
# Build the dtlab worker kernels for every target this host can build, into a cache dir keyed
# by a hash of the sources (so a rebuild only happens when a kernel changes):
#   ${DTLAB_CACHE:-~/.cache/dtlab}/worker/<hash>/{amd64,arm64,riscv64}/dtlab-kernel, wasm/dtlab-kernel.wasm
# and, for the container images (images/build.sh), the static entry point
# {amd64,arm64,riscv64}/dtlab-worker (launcher.c) and the pod sandbox pause/pause (../pause/pause.c).
# Prints the output directory on stdout. Targets whose toolchain is missing are skipped with a
# note on stderr (scripts/fabric-deps.sh installs them); set DTLAB_BUILD_STRICT=1 to fail instead.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/kernels"
cache="${DTLAB_CACHE:-$HOME/.cache/dtlab}"
hash="$(cat "$src"/*.c "$src"/*.h "$here/build.sh" "$here/launcher.c" "$here/../pause/pause.c" | sha256sum | cut -c1-16)"
out="${DTLAB_WORKER_OUT:-$cache/worker/$hash}"
cflags="-O2 -std=c11 -D_POSIX_C_SOURCE=199309L"
srcs=("$src/main.c" "$src/matmul.c" "$src/sort.c" "$src/hash.c")
mkdir -p "$out"

build() {  # build <target> <compiler> <output> [flags...]   (SRCS overrides the kernel sources)
    local target="$1" cc="$2" bin="$3"; shift 3
    local files=("${srcs[@]}"); [[ -n "${SRCS:-}" ]] && read -ra files <<< "$SRCS"
    if [[ -x "$out/$bin" ]]; then return 0; fi
    if ! command -v "$cc" >/dev/null 2>&1; then
        echo "build.sh: skipping $target: $cc not found (run scripts/fabric-deps.sh)" >&2
        [[ "${DTLAB_BUILD_STRICT:-0}" == 1 ]] && exit 1
        return 0
    fi
    mkdir -p "$(dirname "$out/$bin")"
    # build to a temp name and rename, so a concurrent reader never sees a half-written binary
    "$cc" $cflags "$@" -o "$out/$bin.tmp.$$" "${files[@]}"
    mv -f "$out/$bin.tmp.$$" "$out/$bin"
}

case "$(uname -m)" in
    x86_64) build amd64 gcc amd64/dtlab-kernel -static ;;
    *) build amd64 x86_64-linux-gnu-gcc amd64/dtlab-kernel -static ;;
esac
case "$(uname -m)" in
    aarch64) build arm64 gcc arm64/dtlab-kernel -static ;;
    *) build arm64 aarch64-linux-gnu-gcc arm64/dtlab-kernel -static ;;
esac
build riscv64 riscv64-linux-gnu-gcc riscv64/dtlab-kernel -static
# image entry point per arch, and the sandbox for the host's arch (pods' infra container runs natively)
case "$(uname -m)" in
    x86_64) SRCS="$here/launcher.c" build amd64 gcc amd64/dtlab-worker -static
            SRCS="$here/../pause/pause.c" build pause gcc pause/pause -static ;;
    *) SRCS="$here/launcher.c" build amd64 x86_64-linux-gnu-gcc amd64/dtlab-worker -static ;;
esac
case "$(uname -m)" in
    aarch64) SRCS="$here/launcher.c" build arm64 gcc arm64/dtlab-worker -static
             SRCS="$here/../pause/pause.c" build pause gcc pause/pause -static ;;
    *) SRCS="$here/launcher.c" build arm64 aarch64-linux-gnu-gcc arm64/dtlab-worker -static ;;
esac
SRCS="$here/launcher.c" build riscv64 riscv64-linux-gnu-gcc riscv64/dtlab-worker -static
# Debian's wasi-libc installs into /usr/{include,lib}/wasm32-wasi, i.e. sysroot /usr.
wasi_sysroot="${WASI_SYSROOT:-}"
if [[ -z "$wasi_sysroot" ]]; then
    for d in /usr/share/wasi-sysroot /usr; do
        [[ -f "$d/lib/wasm32-wasi/libc.a" ]] && { wasi_sysroot="$d"; break; }
    done
fi
if [[ -n "$wasi_sysroot" ]]; then
    build wasm clang wasm/dtlab-kernel.wasm --target=wasm32-wasi --sysroot="$wasi_sysroot" \
        -D_WASI_EMULATED_PROCESS_CLOCKS -lwasi-emulated-process-clocks
else
    echo "build.sh: skipping wasm: wasi-libc not found (run scripts/fabric-deps.sh)" >&2
    [[ "${DTLAB_BUILD_STRICT:-0}" == 1 ]] && exit 1
fi
echo "$out"
