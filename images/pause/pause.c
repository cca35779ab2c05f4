/* Static pod sandbox ("pause") for the real nodes: no registry is reachable, so the sandbox image
 * is built here (images/pause/Dockerfile). It sleeps until SIGTERM/SIGINT and reaps zombies, which
 * is all a pod's infra container does. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    signal(SIGTERM, quit);
    signal(SIGINT, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
    return 0;
}
