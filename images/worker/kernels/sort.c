/* Integer sort: fill 1024 pseudo-random int32 and quicksort them (branchy, integer).
 * Own quicksort rather than libc qsort so every libc (glibc, wasi-libc) runs the same code. */
#include "kernels.h"

#define LEN 1024

static void isort(int32_t *v, int n) {
    for (int i = 1; i < n; i++) {
        int32_t x = v[i]; int j = i - 1;
        while (j >= 0 && v[j] > x) { v[j + 1] = v[j]; j--; }
        v[j + 1] = x;
    }
}

static void qsort_i32(int32_t *v, int n) {
    while (n > 16) {
        int32_t p = v[n / 2];
        int i = 0, j = n - 1;
        while (i <= j) {
            while (v[i] < p) i++;
            while (v[j] > p) j--;
            if (i <= j) { int32_t t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
        }
        if (j + 1 < n - i) { qsort_i32(v, j + 1); v += i; n -= i; }
        else { qsort_i32(v + i, n - i); n = j + 1; }
    }
    isort(v, n);
}

uint64_t kernel_sort(uint64_t iters, uint64_t seed) {
    static int32_t v[LEN];
    uint64_t s = seed | 1, acc = 0;
    for (uint64_t it = 0; it < iters; it++) {
        for (int i = 0; i < LEN; i++) v[i] = (int32_t)(dt_rand(&s) >> 33);
        qsort_i32(v, LEN);
        acc += (uint64_t)v[it % LEN] ^ (uint64_t)v[LEN / 2];
    }
    return acc;
}
