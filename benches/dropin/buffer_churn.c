/*
 * buffer_churn.c - job-scoped buffer churn (not a classic benchmark; it
 * models the workload arenalloc cares most about).  Written from scratch.
 *
 * Two threads each process a series of "jobs".  A job allocates buffers of
 * 1 KiB..8 MiB (log-uniform: a random power-of-two octave, then a uniform size
 * within it) until they total a random 100..150 MiB, writing to every 4 KiB
 * page of each buffer, and at the end of the job checks and frees all of
 * them.  About 2 GiB is allocated in all at scale 1.  This measures how an
 * allocator recycles large amounts of memory between short-lived phases:
 * page faults, returning/retaining memory, and peak RSS.
 *
 * Usage: buffer_churn [scale]   (scale multiplies the number of jobs)
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "buffer_churn"

#define MIB ((size_t)1 << 20)

enum {
    NTHREADS = 2,
    JOBS = 8,               /* per thread, times scale */
    MIN_JOB_MIB = 100,
    MAX_JOB_MIB = 150,
    MIN_LOG2 = 10,          /* 1 KiB */
    MAX_LOG2 = 23,          /* 8 MiB (exclusive) */
};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t n;
    uint64_t v;
} item_t;

typedef struct {
    THREAD_OWNED pthread_t thread;
    int id;
    long jobs;
    uint64_t alloc_sum, free_sum;
    uint64_t bytes;
} worker_t;
ASSERT_THREAD_OWNED(worker_t);

static size_t pick_size(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    unsigned e = MIN_LOG2 + (unsigned)(r % (MAX_LOG2 - MIN_LOG2));
    size_t base = (size_t)1 << e;
    return base + (size_t)((r >> 8) % base);
}

static void *run(void *arg)
{
    worker_t *w = arg;
    uint64_t rng = 0xB0FFE2C4u + 0x9E3779B97F4A7C15ULL * (uint64_t)(w->id + 1);
    size_t cap = 256;
    item_t *bufs = malloc(cap * sizeof *bufs);
    if (!bufs)
        die("out of memory");
    for (long job = 0; job < w->jobs; job++) {
        size_t target = (size_t)rng_range(&rng, MIN_JOB_MIB * MIB, MAX_JOB_MIB * MIB);
        size_t total = 0, count = 0;
        while (total < target) {
            size_t n = pick_size(&rng);
            unsigned char *p = malloc(n);
            if (!p)
                die("out of memory");
            uint64_t v = rng_next(&rng);
            stamp(p, n, v);     /* writes one byte in every page */
            if (count == cap) {
                cap *= 2;
                item_t *grown = realloc(bufs, cap * sizeof *bufs);
                if (!grown)
                    die("out of memory");
                bufs = grown;
            }
            bufs[count++] = (item_t){p, n, v};
            total += n;
            w->alloc_sum += v + n;
        }
        for (size_t i = 0; i < count; i++) {
            verify(bufs[i].p, bufs[i].n, bufs[i].v);
            w->free_sum += bufs[i].v + bufs[i].n;
            free(bufs[i].p);
        }
        w->bytes += total;
    }
    free(bufs);
    return NULL;
}

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    worker_t w[NTHREADS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < NTHREADS; i++) {
        w[i].id = i;
        w[i].jobs = JOBS * scale;
        if (pthread_create(&w[i].thread, NULL, run, &w[i]) != 0)
            die("pthread_create failed");
    }
    uint64_t alloc_sum = 0, free_sum = 0, bytes = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(w[i].thread, NULL);
        alloc_sum += w[i].alloc_sum;
        free_sum += w[i].free_sum;
        bytes += w[i].bytes;
    }
    if (alloc_sum != free_sum)
        die("allocation and free checksums differ");
    printf(BENCH_NAME ": ok %016llx %llu MiB\n", (unsigned long long)alloc_sum,
           (unsigned long long)(bytes / MIB));
    return 0;
}
