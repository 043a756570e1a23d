/*
 * sh6bench.c - batch allocate / batch free workload (modeled on MicroQuill's
 * SmartHeap "sh6bench" benchmark, as used in mimalloc-bench).  Written from
 * scratch for arenalloc.
 *
 * Each of two independent threads repeatedly allocates a batch of blocks of
 * many sizes (1..2000 bytes, skewed towards small ones) and then frees the
 * whole batch in an order that changes from batch to batch: forward,
 * reverse, first half forward then second half reverse, or interleaved
 * (even indices forward, then odd indices backward).
 *
 * Usage: sh6bench [scale]   (scale multiplies the number of batches)
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "sh6bench"

enum {
    NTHREADS = 2,
    BATCH = 2500,           /* blocks per batch */
    BATCHES = 3200,         /* per thread, times scale */
    MAX_SIZE = 2000,
};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    uint32_t n;
    uint64_t v;
} item_t;

typedef struct {
    THREAD_OWNED pthread_t thread;
    int id;
    long batches;
    uint64_t alloc_sum, free_sum;
} worker_t;
ASSERT_THREAD_OWNED(worker_t);

/* 50% 1..64 bytes, 30% 65..512, 20% 513..MAX_SIZE */
static size_t pick_size(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    unsigned bucket = (unsigned)(r % 10);
    r >>= 8;
    if (bucket < 5)
        return 1 + r % 64;
    if (bucket < 8)
        return 65 + r % (512 - 65 + 1);
    return 513 + r % (MAX_SIZE - 513 + 1);
}

static void release(worker_t *w, item_t *it)
{
    verify(it->p, it->n, it->v);
    w->free_sum += it->v + it->n;
    free(it->p);
    it->p = NULL;
}

static void *run(void *arg)
{
    worker_t *w = arg;
    uint64_t rng = 0x5EED5EED12345ULL + 0x9E3779B97F4A7C15ULL * (uint64_t)w->id;
    item_t *items = malloc(BATCH * sizeof *items);
    if (!items)
        die("out of memory");
    for (long b = 0; b < w->batches; b++) {
        for (int i = 0; i < BATCH; i++) {
            size_t n = pick_size(&rng);
            unsigned char *p = malloc(n);
            if (!p)
                die("out of memory");
            uint64_t v = rng_next(&rng);
            stamp(p, n, v);
            items[i] = (item_t){p, (uint32_t)n, v};
            w->alloc_sum += v + n;
        }
        switch (b % 4) {
        case 0:     /* forward */
            for (int i = 0; i < BATCH; i++)
                release(w, &items[i]);
            break;
        case 1:     /* reverse */
            for (int i = BATCH - 1; i >= 0; i--)
                release(w, &items[i]);
            break;
        case 2:     /* first half forward, second half reverse */
            for (int i = 0; i < BATCH / 2; i++)
                release(w, &items[i]);
            for (int i = BATCH - 1; i >= BATCH / 2; i--)
                release(w, &items[i]);
            break;
        default:    /* interleaved: evens forward, odds backward */
            for (int i = 0; i < BATCH; i += 2)
                release(w, &items[i]);
            for (int i = (BATCH - 1) | 1; i >= 1; i -= 2)
                if (i < BATCH)
                    release(w, &items[i]);
            break;
        }
        for (int i = 0; i < BATCH; i++)
            if (items[i].p)
                die("block left unfreed");
    }
    free(items);
    return NULL;
}

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    worker_t w[NTHREADS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < NTHREADS; i++) {
        w[i].id = i;
        w[i].batches = BATCHES * scale;
        if (pthread_create(&w[i].thread, NULL, run, &w[i]) != 0)
            die("pthread_create failed");
    }
    uint64_t alloc_sum = 0, free_sum = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(w[i].thread, NULL);
        alloc_sum += w[i].alloc_sum;
        free_sum += w[i].free_sum;
    }
    if (alloc_sum != free_sum)
        die("allocation and free checksums differ");
    printf(BENCH_NAME ": ok %016llx\n", (unsigned long long)alloc_sum);
    return 0;
}
