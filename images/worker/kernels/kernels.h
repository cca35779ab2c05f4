/* CPU-bound kernels of the dtlab worker. One "iteration" is a small fixed unit of work
 * (tens of microseconds natively) so that reference milliseconds map to an integer count. */
#ifndef DTLAB_KERNELS_H
#define DTLAB_KERNELS_H
#include <stdint.h>

uint64_t kernel_matmul(uint64_t iters, uint64_t seed);
uint64_t kernel_sort(uint64_t iters, uint64_t seed);
uint64_t kernel_hash(uint64_t iters, uint64_t seed);

/* xorshift64*: tiny, identical on every target, so every format does the same work. */
static inline uint64_t dt_rand(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}
#endif
