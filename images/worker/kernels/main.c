/* dtlab-kernel: run one CPU-bound kernel for a number of iterations and report timings as JSON.
 *
 *   dtlab-kernel <matmul|sort|hash|mix> <iterations> [seed]
 *
 * Timings are taken inside the process around the kernel only, so emulator or runtime start-up
 * (QEMU translation warm-up aside, Wasm instantiation) is excluded from "wall_ms"; the caller
 * measures the whole process separately. "cpu_ms" is the process CPU clock, or -1 where the
 * platform does not provide it (some WASI runtimes). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "kernels.h"
#if !defined(__wasm__)
#include <sched.h>
#endif

#if defined(__wasm__)
#define DT_ARCH "wasm32"
#elif defined(__aarch64__)
#define DT_ARCH "arm64"
#elif defined(__riscv)
#define DT_ARCH "riscv64"
#elif defined(__x86_64__)
#define DT_ARCH "amd64"
#else
#define DT_ARCH "unknown"
#endif

static double ms_of(clockid_t id) {
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0) return -1.0;
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Move this process into the cgroup(s) named in DTLAB_JOIN_CGROUP (':'-separated cgroup.procs
 * paths) right before the kernel starts. The fabric starts workers outside the stage's CPU quota
 * so that emulator/runtime start-up runs at host speed (a real node pays it at its own speed, not
 * at the shrunken fabric scale); only the kernel itself runs under the node's quota. Under QEMU
 * user mode the write goes to the host file and moves the emulator process, which is the point. */
static void join_cgroups(void) {
#if !defined(__wasm__)
    const char *env = getenv("DTLAB_JOIN_CGROUP");
    if (!env || !*env) return;
    char buf[4096];
    strncpy(buf, env, sizeof buf - 1);
    buf[sizeof buf - 1] = 0;
    for (char *p = strtok(buf, ":"); p; p = strtok(NULL, ":")) {
        FILE *f = fopen(p, "w");
        if (!f) { perror(p); exit(3); }
        fputs("0", f);
        if (fclose(f) != 0) { perror(p); exit(3); }
    }
#endif
}

/* Let the CPU quota catch up before the kernel's end is timed. CFS charges a cgroup's quota at
 * scheduler ticks (4 ms at HZ=250) and hands it out in slices, so a kernel shorter than a tick can
 * finish before its cgroup is throttled: the overrun is repaid after the timer stopped (in the
 * process's exit), and "wall_ms" showed the unthrottled native time (a 100 ms stage at time_scale 1
 * reported ~3 ms). A yield makes the scheduler charge the run so far and throttle the cgroup now if
 * it is over its quota; the kernel's wall time then includes what the quota makes it wait. */
static void settle_quota(void) {
#if !defined(__wasm__)
    sched_yield();
#endif
}

static uint64_t kernel_mix(uint64_t iters, uint64_t seed) {
    /* one mix iteration ~ one of each kernel, weighted to similar native cost */
    uint64_t acc = 0;
    for (uint64_t it = 0; it < iters; it++)
        acc += kernel_matmul(1, seed + it) ^ kernel_sort(1, seed + 2 * it) ^ kernel_hash(8, seed + 3 * it);
    return acc;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s <matmul|sort|hash|mix> <iterations> [seed]\n", argv[0]);
        return 2;
    }
    const char *k = argv[1];
    uint64_t iters = strtoull(argv[2], NULL, 10);
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 42;
    uint64_t (*fn)(uint64_t, uint64_t) = NULL;
    if (!strcmp(k, "matmul")) fn = kernel_matmul;
    else if (!strcmp(k, "sort")) fn = kernel_sort;
    else if (!strcmp(k, "hash")) fn = kernel_hash;
    else if (!strcmp(k, "mix")) fn = kernel_mix;
    else { fprintf(stderr, "unknown kernel %s\n", k); return 2; }
    join_cgroups();
    double c0 = ms_of(CLOCK_PROCESS_CPUTIME_ID);
    double w0 = ms_of(CLOCK_MONOTONIC);
    uint64_t sum = fn(iters, seed);
    settle_quota();
    double w1 = ms_of(CLOCK_MONOTONIC);
    double c1 = ms_of(CLOCK_PROCESS_CPUTIME_ID);
    double cpu = (c0 < 0 || c1 < 0) ? -1.0 : c1 - c0;
    printf("{\"kernel\": \"%s\", \"arch\": \"%s\", \"iters\": %llu, \"wall_ms\": %.3f, \"cpu_ms\": %.3f, \"checksum\": %llu}\n",
           k, DT_ARCH, (unsigned long long)iters, w1 - w0, cpu, (unsigned long long)sum);
    return 0;
}
