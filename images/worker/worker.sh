#!/usr/bin/env bash
# dtlab worker stress harness: run a CPU-bound kernel for a given amount of *reference* work.
#
#   worker.sh [--ms REF_MS | --iters N] [--kernel mix|matmul|sort|hash] [--format native|qemu-<arch>|wasm]
#             [--calibrate]
#
# Reference ms = time on one core of speed 1.0 running the native binary. The number of native
# iterations per ms is measured once per host (--calibrate, or on first use) and cached in
# $DTLAB_CACHE/worker-ipms.<kernel>; containers may pin it with DTLAB_IPMS. Per-architecture code
# paths: on the machine's own arch the native binary runs; a foreign binary runs under
# qemu-<arch>-static (user mode); wasm runs under the wasmtime CLI if present, else the dtlab
# Python runner. Binaries are looked up in $DTLAB_WORKER_BIN (images) or the build cache.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${DTLAB_CACHE:-$HOME/.cache/dtlab}"
kernel=mix; ms=""; iters=""; format=native; calibrate=0
while (($#)); do
    case "$1" in
        --ms) ms="$2"; shift 2 ;;
        --iters) iters="$2"; shift 2 ;;
        --kernel) kernel="$2"; shift 2 ;;
        --format) format="$2"; shift 2 ;;
        --calibrate) calibrate=1; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "worker.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

case "$(uname -m)" in
    x86_64) host=amd64 ;; aarch64) host=arm64 ;; riscv64) host=riscv64 ;; *) host="$(uname -m)" ;;
esac
bindir="${DTLAB_WORKER_BIN:-}"
if [[ -z "$bindir" ]]; then
    bindir="$(bash "$here/build.sh")"
fi

run() {  # run <format> <iterations>
    local fmt="$1" n="$2"
    case "$fmt" in
        native)
            exec_bin="$bindir/$host/dtlab-kernel"; [[ -x "$exec_bin" ]] || exec_bin="$bindir/dtlab-kernel"
            "$exec_bin" "$kernel" "$n" ;;
        qemu-amd64)   qemu-x86_64-static  "$bindir/amd64/dtlab-kernel" "$kernel" "$n" ;;
        qemu-arm64)   qemu-aarch64-static "$bindir/arm64/dtlab-kernel" "$kernel" "$n" ;;
        qemu-riscv64) qemu-riscv64-static "$bindir/riscv64/dtlab-kernel" "$kernel" "$n" ;;
        wasm)
            if command -v wasmtime >/dev/null 2>&1; then
                wasmtime run "$bindir/wasm/dtlab-kernel.wasm" "$kernel" "$n"
            else
                "${PYTHON:-python3}" "$here/../../dtlab/fabric/wasm_run.py" "$bindir/wasm/dtlab-kernel.wasm" "$kernel" "$n"
            fi ;;
        *) echo "worker.sh: unknown format $fmt" >&2; exit 2 ;;
    esac
}

json_field() { sed -n "s/.*\"$1\": \([-0-9.]*\).*/\1/p"; }

ipms_file="$cache/worker-ipms.$kernel"
ipms="${DTLAB_IPMS:-}"
if [[ -z "$ipms" && ( $calibrate == 1 || ! -s "$ipms_file" ) && -z "$iters" ]] || [[ $calibrate == 1 ]]; then
    # native calibration: median of 5 runs of ~100 ms of CPU time
    probe="$(run native 200 | json_field cpu_ms)"
    n=$(awk -v c="$probe" 'BEGIN { v = int(200 * 100 / (c > 0.01 ? c : 0.01)); print (v < 10 ? 10 : v) }')
    rates=()
    for _ in 1 2 3 4 5; do
        c="$(run native "$n" | json_field cpu_ms)"
        rates+=("$(awk -v n="$n" -v c="$c" 'BEGIN { printf "%.6f", n / c }')")
    done
    ipms="$(printf '%s\n' "${rates[@]}" | sort -g | sed -n 3p)"
    mkdir -p "$cache"; echo "$ipms" > "$ipms_file"
    echo "worker.sh: $kernel native iterations per ms: $ipms" >&2
    [[ $calibrate == 1 && -z "$ms" && -z "$iters" ]] && exit 0
fi
[[ -z "$ipms" && -s "$ipms_file" ]] && ipms="$(cat "$ipms_file")"
if [[ -z "$iters" ]]; then
    [[ -n "$ms" ]] || { echo "worker.sh: give --ms or --iters" >&2; exit 2; }
    iters=$(awk -v m="$ms" -v r="$ipms" 'BEGIN { v = int(m * r + 0.5); print (v < 1 ? 1 : v) }')
fi
run "$format" "$iters"
