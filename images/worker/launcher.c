/* dtlab-worker: the entry point of the worker images (images/worker/Dockerfile.*).
 *
 *   dtlab-worker [--format native|qemu-<arch>|wasm] [--kernel mix|matmul|sort|hash] [--iters N] [--seed S]
 *
 * Runs one stage's work (the dtlab-kernel next to it, or the wasm kernel under the wazero CLI for
 * --format wasm) as a child process and reports, as one JSON line on stdout and in
 * /dev/termination-log (the container's termination message, which the dtlab observer reads):
 * its own start/end wall-clock times in ns (CLOCK_REALTIME: container status times have only 1 s
 * resolution), `uname -m` as seen from inside the container (under binfmt QEMU this is the emulated
 * arch), the execution path it used and the kernel's own JSON. Exit code: the kernel's.
 * Static, no libc beyond what -static links: the images are FROM scratch (no registry here). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int main(int argc, char **argv) {
    long long t0 = now_ns();
    const char *format = "native", *kernel = "mix", *iters = "1000", *seed = "42";
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--format")) format = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--kernel")) kernel = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--iters")) iters = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--seed")) seed = argv[++i];
        else { fprintf(stderr, "dtlab-worker: unknown argument %s\n", argv[i]); return 2; }
    }
    struct utsname u;
    if (uname(&u) != 0) strcpy(u.machine, "unknown");
    int wasm = !strcmp(format, "wasm");
    const char *exec_path = wasm ? "wazero" : "direct";
    int pfd[2];
    if (pipe(pfd) != 0) { perror("pipe"); return 3; }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 3; }
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
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    long long t1 = now_ns();
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
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
        fprintf(f, ", \"exit\": %d, \"kernel\": ", rc);
        if (kernel_json) fputs(out, f); else json_str(f, out);
        fputs("}\n", f);
        if (k == 1) fclose(f); else fflush(f);
    }
    return rc;
}
