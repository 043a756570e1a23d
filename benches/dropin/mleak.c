/*
 * mleak.c - slow-leak workload (modeled on the "mleak" test of
 * mimalloc-bench).  Written from scratch for arenalloc.
 *
 * One thread works in rounds: it allocates a batch of small blocks (16..256
 * bytes), then frees all of them except about 1 in 100, which it "leaks" by
 * keeping them in an ever-growing array.  The live set therefore grows slowly
 * and the survivors are scattered among freed memory, which shows how well an
 * allocator reuses the space around long-lived blocks (peak RSS).  Everything
 * is freed (and checked) at the end.
 *
 * Usage: mleak [scale]   (scale multiplies the number of rounds)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "mleak"

enum {
    ROUNDS = 12000,         /* times scale */
    BATCH = 1000,           /* blocks allocated per round */
    LEAK_PER_MILLE = 10,    /* fraction of blocks kept */
    MIN_SIZE = 16,
    MAX_SIZE = 256,
};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    uint32_t n;
    uint64_t v;
} item_t;

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    long rounds = ROUNDS * scale;
    uint64_t rng = 0x0E4CEEDULL;
    uint64_t alloc_sum = 0, free_sum = 0;
    item_t batch[BATCH];
    size_t nleaked = 0, cap = 1024;
    item_t *leaked = malloc(cap * sizeof *leaked);
    if (!leaked)
        die("out of memory");

    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < BATCH; i++) {
            uint64_t x = rng_next(&rng);
            size_t n = MIN_SIZE + x % (MAX_SIZE - MIN_SIZE + 1);
            unsigned char *p = malloc(n);
            if (!p)
                die("out of memory");
            stamp(p, n, x);
            batch[i] = (item_t){p, (uint32_t)n, x};
            alloc_sum += x + n;
        }
        /* Free in a rotated order so the survivors land in varying spots. */
        int start = (int)(rng_next(&rng) % BATCH);
        for (int k = 0; k < BATCH; k++) {
            item_t *it = &batch[(start + k) % BATCH];
            if ((it->v >> 40) % 1000 < LEAK_PER_MILLE) {
                if (nleaked == cap) {
                    cap *= 2;
                    item_t *grown = realloc(leaked, cap * sizeof *leaked);
                    if (!grown)
                        die("out of memory");
                    leaked = grown;
                }
                leaked[nleaked++] = *it;
            } else {
                verify(it->p, it->n, it->v);
                free_sum += it->v + it->n;
                free(it->p);
            }
        }
    }
    for (size_t i = 0; i < nleaked; i++) {
        verify(leaked[i].p, leaked[i].n, leaked[i].v);
        free_sum += leaked[i].v + leaked[i].n;
        free(leaked[i].p);
    }
    free(leaked);
    if (alloc_sum != free_sum)
        die("allocation and free checksums differ");
    printf(BENCH_NAME ": ok %016llx %zu\n", (unsigned long long)alloc_sum, nleaked);
    return 0;
}
