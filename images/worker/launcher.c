/* dtlab-worker: the entry point of the worker images (images/worker/Dockerfile.*).
 *
 *   dtlab-worker [--format native|qemu-<arch>|wasm] [--kernel mix|matmul|sort|hash] [--iters N] [--seed S]
 *                [--fetch IPV4:PORT:BYTES:SRC]...
 *
 * --fetch (repeatable, at most 16): before the work, read the stage's input from a predecessor's node
 * over the pod network (dtlab.kube.links: the node store or the shaped-link relay), all inputs at once
 * (one child process each): send the 20-byte header (u64 transfer id, u64 bytes, u32 source node
 * index, big-endian) and read BYTES. The time until the last input arrived is reported as fetch_ns
 * (inside start..end, as the twin counts transfers inside a stage); a failed fetch fails the stage
 * (exit 4) before any work. Each fetch is bounded to 600 s (a cut link holds data until restored).
 * Runs one stage's work (the dtlab-kernel next to it, or the wasm kernel under the wazero CLI for
 * --format wasm) as a child process and reports, as one JSON line on stdout and in
 * /dev/termination-log (the container's termination message, which the dtlab observer reads):
 * its own start/end wall-clock times in ns (CLOCK_REALTIME: container status times have only 1 s
 * resolution), `uname -m` as seen from inside the container (under binfmt QEMU this is the emulated
 * arch), the execution path it used and the kernel's own JSON. Exit code: the kernel's.
 * Static, no libc beyond what -static links: the images are FROM scratch (no registry here). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef DTLAB_DIR
#define DTLAB_DIR "/opt/dtlab/bin"
#endif

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void json_str(FILE *f, const char *s) {  /* minimal JSON string escape */
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') { fputc('\\', f); fputc(*s, f); }
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
        else fputc(*s, f);
    }
    fputc('"', f);
}


static void put_be(unsigned char *p, uint64_t v, int n) {
    for (int i = n - 1; i >= 0; i--) { p[i] = (unsigned char)(v & 0xff); v >>= 8; }
}

/* One input: "IPV4:PORT:BYTES:SRC". Returns 0 when all BYTES arrived. */
static int fetch_one(const char *spec, uint64_t tid) {
    char host[64];
    unsigned port = 0, src = 0;
    unsigned long long bytes = 0;
    if (sscanf(spec, "%63[0-9.]:%u:%llu:%u", host, &port, &bytes, &src) != 4 || port == 0 || port > 65535) {
        fprintf(stderr, "dtlab-worker: bad --fetch %s (want IPV4:PORT:BYTES:SRC)\n", spec);
        return 2;
    }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { fprintf(stderr, "dtlab-worker: bad address %s\n", host); return 2; }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        fprintf(stderr, "dtlab-worker: connect %s:%u: %s\n", host, port, strerror(errno));
        return 1;
    }
    unsigned char head[20];
    put_be(head, tid, 8); put_be(head + 8, bytes, 8); put_be(head + 16, src, 4);
    if (write(fd, head, sizeof head) != (ssize_t)sizeof head) { perror("dtlab-worker: send header"); return 1; }
    static char buf[1 << 16];
    unsigned long long got = 0;
    while (got < bytes) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { fprintf(stderr, "dtlab-worker: %s:%u closed after %llu of %llu bytes\n", host, port, got, bytes); return 1; }
        got += (unsigned long long)r;
    }
    close(fd);
    return 0;
}

/* All inputs at once (one child each, as transfers from several predecessors overlap); failures counted. */
static int fetch_all(char **specs, int n, long long t0) {
    pid_t kids[16];
    for (int i = 0; i < n; i++) {
        kids[i] = fork();
        if (kids[i] == 0) { alarm(600); _exit(fetch_one(specs[i], (uint64_t)t0 + (uint64_t)i)); }
    }
    int failed = 0;
    for (int i = 0; i < n; i++) {
        int st = 0;
        if (kids[i] < 0) { failed++; continue; }
        while (waitpid(kids[i], &st, 0) < 0 && errno == EINTR) {}
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed++;
    }
    return failed;
}

int main(int argc, char **argv) {
    long long t0 = now_ns();
    const char *format = "native", *kernel = "mix", *iters = "1000", *seed = "42";
    char *fetch[16];
    int nfetch = 0;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--format")) format = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--kernel")) kernel = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--iters")) iters = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--seed")) seed = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--fetch") && nfetch < 16) fetch[nfetch++] = argv[++i];
        else { fprintf(stderr, "dtlab-worker: unknown argument %s\n", argv[i]); return 2; }
    }
    struct utsname u;
    if (uname(&u) != 0) strcpy(u.machine, "unknown");
    unsigned long long fetch_bytes = 0;
    for (int i = 0; i < nfetch; i++) {
        unsigned long long b = 0;
        if (sscanf(fetch[i], "%*[0-9.]:%*u:%llu", &b) == 1) fetch_bytes += b;
    }
    int fetch_failed = nfetch ? fetch_all(fetch, nfetch, t0) : 0;
    long long t_in = now_ns();
    int wasm = !strcmp(format, "wasm");
    const char *exec_path = wasm ? "wazero" : "direct";
    int pfd[2];
    if (pipe(pfd) != 0) { perror("pipe"); return 3; }
    pid_t pid = fetch_failed ? -2 : fork();
    if (pid == -1) { perror("fork"); return 3; }
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]); close(pfd[1]);
        if (wasm)
            execl(DTLAB_DIR "/wazero", "wazero", "run", DTLAB_DIR "/dtlab-kernel.wasm", kernel, iters, seed,
                  (char *)NULL);
        else
            execl(DTLAB_DIR "/dtlab-kernel", "dtlab-kernel", kernel, iters, seed, (char *)NULL);
        fprintf(stderr, "dtlab-worker: exec failed: %s\n", strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    char out[2048];
    size_t n = 0;
    ssize_t r;
    while ((r = read(pfd[0], out + n, sizeof out - 1 - n)) > 0 || (r < 0 && errno == EINTR))
        if (r > 0) n += (size_t)r;
    out[n] = 0;
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r')) out[--n] = 0;
    int st = 0;
    while (pid > 0 && waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    long long t1 = now_ns();
    int rc = pid < 0 ? 4 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    int kernel_json = n > 0 && out[0] == '{' && out[n - 1] == '}';
    FILE *sinks[2] = {stdout, fopen("/dev/termination-log", "w")};
    for (int k = 0; k < 2; k++) {
        FILE *f = sinks[k];
        if (!f) continue;
        fprintf(f, "{\"dtlab_worker\": 1, \"start_ns\": %lld, \"end_ns\": %lld, \"uname_m\": ", t0, t1);
        json_str(f, u.machine);
        fprintf(f, ", \"format\": ");
        json_str(f, format);
        fprintf(f, ", \"exec\": ");
        json_str(f, exec_path);
        fprintf(f, ", \"fetch_ns\": %lld, \"fetch_bytes\": %llu, \"fetch_failed\": %d", t_in - t0, fetch_bytes,
                fetch_failed);
        fprintf(f, ", \"exit\": %d, \"kernel\": ", rc);
        if (kernel_json) fputs(out, f); else json_str(f, out);
        fputs("}\n", f);
        if (k == 1) fclose(f); else fflush(f);
    }
    return rc;
}
