/*
 * cache_thrash.c - active false-sharing test (modeled on the Hoard benchmark
 * "cache-thrash", as used in mimalloc-bench).  Written from scratch for
 * arenalloc.
 *
 * Each of two threads repeatedly allocates a small (8-byte) object, writes
 * every byte of it many times, checks it and frees it.  If the allocator
 * serves concurrently running threads from the same cache line, the writes
 * ping-pong that line between the cores and the run slows down a lot.
 *
 * Usage: cache_thrash [scale]   (scale multiplies the number of iterations)
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "cache_thrash"

enum {
    NTHREADS = 2,
    OBJ_SIZE = 8,
    ITERATIONS = 600,       /* allocations per thread, times scale */
    REPETITIONS = 200000,   /* passes of writes over each object */
};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

typedef struct {
    THREAD_OWNED pthread_t thread;
    int id;
    long iterations;
    uint64_t sum;
} worker_t;
ASSERT_THREAD_OWNED(worker_t);

/* Allocate an object, hammer it, check it, free it. */
static uint64_t thrash(int id, long iteration)
{
    volatile unsigned char *obj = malloc(OBJ_SIZE);
    if (!obj)
        die("out of memory");
    unsigned char base = (unsigned char)(id * 31 + iteration);
    for (int k = 0; k < OBJ_SIZE; k++)
        obj[k] = (unsigned char)(base + k);
    for (long r = 0; r < REPETITIONS; r++)
        for (int k = 0; k < OBJ_SIZE; k++)
            obj[k]++;
    uint64_t sum = 0;
    for (int k = 0; k < OBJ_SIZE; k++) {
        unsigned char want = (unsigned char)(base + k + REPETITIONS);
        if (obj[k] != want)
            die("object contents corrupted");
        sum += want;
    }
    free((void *)obj);
    return sum;
}

static void *run(void *arg)
{
    worker_t *w = arg;
    for (long i = 0; i < w->iterations; i++)
        w->sum += thrash(w->id, i);
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
    uint64_t sum = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(w[i].thread, NULL);
        sum += w[i].sum;
    }
    printf(BENCH_NAME ": ok %016llx\n", (unsigned long long)sum);
    return 0;
}
