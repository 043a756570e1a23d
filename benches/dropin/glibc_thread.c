/*
 * glibc_thread.c - multi-threaded random replace workload (modeled on glibc's
 * benchtests "bench-malloc-thread").  Written from scratch for arenalloc.
 *
 * Each of two threads keeps its own working set of 1024 blocks.  In a loop it
 * picks a random slot, checks and frees the block in it and allocates a new
 * one whose size is drawn from an inverse-square distribution between 4 and
 * 32768 bytes (so most blocks are tiny, a few are large).  Threads never
 * touch each other's blocks.
 *
 * Usage: glibc_thread [scale]   (scale multiplies the number of iterations)
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "glibc_thread"

enum {
    NTHREADS = 2,
    WORKSET = 1024,
    ITERATIONS = 16000000,  /* per thread, times scale */
    MIN_SIZE = 4,
    MAX_SIZE = 32768,
    SIZE_TABLE = 4096,      /* precomputed random sizes, as the original does */
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
    long iterations;
    uint64_t alloc_sum, free_sum;
} worker_t;
ASSERT_THREAD_OWNED(worker_t);

/* Inverse-square distribution on [MIN_SIZE, MAX_SIZE]: 1/size is uniform, so
 * size = a*b / (b - u*(b - a)) with u uniform in [0, 1). */
static uint32_t inverse_square_size(uint64_t *rng)
{
    const uint64_t a = MIN_SIZE, b = MAX_SIZE;
    uint64_t u = rng_next(rng) >> 32;           /* 32-bit fraction */
    uint64_t num = (a * b) << 32;
    uint64_t den = (b << 32) - u * (b - a);
    return (uint32_t)(num / den);
}

static void *run(void *arg)
{
    worker_t *w = arg;
    uint64_t rng = 0x7EAD5EEDULL + 0x9E3779B97F4A7C15ULL * (uint64_t)(w->id + 1);
    uint32_t *sizes = malloc(SIZE_TABLE * sizeof *sizes);
    item_t *set = malloc(WORKSET * sizeof *set);
    if (!sizes || !set)
        die("out of memory");
    for (int i = 0; i < SIZE_TABLE; i++)
        sizes[i] = inverse_square_size(&rng);
    for (int i = 0; i < WORKSET; i++) {
        size_t n = sizes[i % SIZE_TABLE];
        unsigned char *p = malloc(n);
        if (!p)
            die("out of memory");
        uint64_t v = rng_next(&rng);
        stamp(p, n, v);
        set[i] = (item_t){p, (uint32_t)n, v};
        w->alloc_sum += v + n;
    }
    for (long it = 0; it < w->iterations; it++) {
        uint64_t r = rng_next(&rng);
        item_t *s = &set[r % WORKSET];
        verify(s->p, s->n, s->v);
        w->free_sum += s->v + s->n;
        free(s->p);
        size_t n = sizes[(r >> 32) % SIZE_TABLE];
        unsigned char *p = malloc(n);
        if (!p)
            die("out of memory");
        uint64_t v = r ^ (uint64_t)it;
        stamp(p, n, v);
        *s = (item_t){p, (uint32_t)n, v};
        w->alloc_sum += v + n;
    }
    for (int i = 0; i < WORKSET; i++) {
        verify(set[i].p, set[i].n, set[i].v);
        w->free_sum += set[i].v + set[i].n;
        free(set[i].p);
    }
    free(set);
    free(sizes);
    return NULL;
}

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    worker_t w[NTHREADS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < NTHREADS; i++) {
        w[i].id = i;
        w[i].iterations = ITERATIONS * scale;
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
