/* Dense double-precision matrix multiply, 32x32 per iteration (floating point, cache-resident). */
#include "kernels.h"

#define N 32

uint64_t kernel_matmul(uint64_t iters, uint64_t seed) {
    static double a[N][N], b[N][N], c[N][N];
    uint64_t s = seed | 1;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            a[i][j] = (double)(dt_rand(&s) % 1000) / 1000.0;
            b[i][j] = (double)(dt_rand(&s) % 1000) / 1000.0;
        }
    double acc = 0.0;
    for (uint64_t it = 0; it < iters; it++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                double sum = 0.0;
                for (int k = 0; k < N; k++) sum += a[i][k] * b[k][j];
                c[i][j] = sum;
            }
        /* feed the whole product back (scaled to stay in [0,1]) so no work can be elided */
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) a[i][j] = c[i][j] * (1.0 / N) + 1e-3;
        acc += c[it % N][(it * 7) % N];
    }
    return (uint64_t)(acc * 1000.0);
}
