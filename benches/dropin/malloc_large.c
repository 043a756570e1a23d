/*
 * malloc_large.c - large-block churn (modeled on mimalloc-bench's
 * "malloc-large").  Written from scratch for arenalloc.
 *
 * One thread keeps up to 20 blocks of 5..25 MiB alive.  In a loop it picks a
 * random slot, checks and frees the block there (if any) and allocates a new
 * block of random size, writing to every 4 KiB page of it; if the live total
 * would exceed 320 MiB, random other blocks are freed first.  Blocks are thus
 * freed in random order.  This measures how an allocator maps, reuses and
 * returns very large blocks (and the page faults that causes).
 *
 * Usage: malloc_large [scale]   (scale multiplies the number of allocations)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "malloc_large"

#define MIB ((size_t)1 << 20)

enum {
    SLOTS = 20,
    ALLOCATIONS = 150,      /* times scale */
    MIN_MIB = 5,
    MAX_MIB = 25,
    BUDGET_MIB = 320,       /* cap on the live total */
};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t n;
    uint64_t v;
} item_t;

static item_t slots[SLOTS];
static size_t live;
static uint64_t alloc_sum, free_sum;

static void release(item_t *it)
{
    verify(it->p, it->n, it->v);
    free_sum += it->v + it->n;
    free(it->p);
    live -= it->n;
    it->p = NULL;
}

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    long allocations = ALLOCATIONS * scale;
    uint64_t rng = 0x1A26EB10C5ULL;

    for (long a = 0; a < allocations; a++) {
        item_t *it = &slots[rng_next(&rng) % SLOTS];
        if (it->p)
            release(it);
        size_t n = (size_t)rng_range(&rng, MIN_MIB * MIB, MAX_MIB * MIB);
        while (live + n > BUDGET_MIB * MIB) {
            item_t *victim = &slots[rng_next(&rng) % SLOTS];
            if (victim->p)
                release(victim);
        }
        unsigned char *p = malloc(n);
        if (!p)
            die("out of memory");
        uint64_t v = rng_next(&rng);
        stamp(p, n, v);     /* writes one byte in every page */
        *it = (item_t){p, n, v};
        live += n;
        alloc_sum += v + n;
    }
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].p)
            release(&slots[i]);
    if (alloc_sum != free_sum || live != 0)
        die("allocation and free checksums differ");
    printf(BENCH_NAME ": ok %016llx\n", (unsigned long long)alloc_sum);
    return 0;
}
