/* Hashing: FNV-1a plus a murmur-style 64-bit mix over a 4 KiB buffer (integer, bit ops). */
#include "kernels.h"

#define BUF 4096

uint64_t kernel_hash(uint64_t iters, uint64_t seed) {
    static uint8_t buf[BUF];
    uint64_t s = seed | 1;
    for (int i = 0; i < BUF; i++) buf[i] = (uint8_t)dt_rand(&s);
    uint64_t h = 1469598103934665603ULL;
    for (uint64_t it = 0; it < iters; it++) {
        for (int i = 0; i < BUF; i++) {
            h ^= buf[i];
            h *= 1099511628211ULL;
        }
        h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 33;
        buf[it % BUF] ^= (uint8_t)h;   /* chain iterations */
    }
    return h;
}
