/*
 * glibc_simple.c - single-threaded malloc/free fast-path workload (modeled on
 * glibc's benchtests "bench-malloc-simple").  Written from scratch for
 * arenalloc.
 *
 * One thread runs a tight loop: allocate a small live set of blocks (25, 100
 * or 400 of them, sizes cycling through 16, 32, 48, ..., 256 bytes), then
 * free them all in allocation order.  This mostly measures the allocator's
 * thread-local fast paths for small sizes.
 *
 * Usage: glibc_simple [scale]   (scale multiplies the number of rounds)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "glibc_simple"

enum {
    ROUNDS = 60000,         /* times scale */
    MAX_LIVE = 400,
};

static const int live_sets[] = {25, 100, 400};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    long rounds = ROUNDS * scale;
    unsigned char *blocks[MAX_LIVE];
    uint64_t alloc_sum = 0, free_sum = 0;
    uint64_t rng = 0x51AB1E5EEDULL;
    uint64_t v = rng_next(&rng);

    for (long r = 0; r < rounds; r++) {
        for (size_t s = 0; s < sizeof live_sets / sizeof live_sets[0]; s++) {
            int live = live_sets[s];
            for (int i = 0; i < live; i++) {
                size_t n = 16 * (size_t)(1 + (i + r) % 16);
                unsigned char *p = malloc(n);
                if (!p)
                    die("out of memory");
                /* cheap per-block tag: first and last byte */
                p[0] = (unsigned char)(v + (uint64_t)i);
                p[n - 1] = (unsigned char)(v >> 8);
                blocks[i] = p;
                alloc_sum += n + p[0];
            }
            for (int i = 0; i < live; i++) {
                size_t n = 16 * (size_t)(1 + (i + r) % 16);
                unsigned char *p = blocks[i];
                if (p[0] != (unsigned char)(v + (uint64_t)i) || p[n - 1] != (unsigned char)(v >> 8))
                    die("block contents corrupted");
                free_sum += n + p[0];
                free(p);
            }
            v = rng_next(&rng);
        }
    }
    if (alloc_sum != free_sum)
        die("allocation and free checksums differ");
    printf(BENCH_NAME ": ok %016llx\n", (unsigned long long)alloc_sum);
    return 0;
}
