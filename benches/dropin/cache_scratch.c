/*
 * cache_scratch.c - passive false-sharing test (modeled on the Hoard
 * benchmark "cache-scratch", as used in mimalloc-bench).  Written from
 * scratch for arenalloc.
 *
 * The main thread allocates a few small (8-byte) objects one after another
 * and hands one to each of two threads, choosing two objects that share a
 * 64-byte cache line if the allocator packed any two together (the rest are
 * freed again).  Each thread frees the object it was given, then
 * repeatedly allocates an 8-byte object, writes every byte of it many times
 * and frees it.  An allocator that gives the freed object (or its cache-line
 * neighbour) back to a different thread makes the two threads write to the
 * same cache line, which shows up as a large slowdown.
 *
 * Usage: cache_scratch [scale]   (scale multiplies the number of iterations)
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "cache_scratch"

enum {
    NTHREADS = 2,
    OBJ_SIZE = 8,
    ITERATIONS = 250,       /* allocations per thread, times scale */
    REPETITIONS = 200000,   /* passes of writes over each object */
    CANDIDATES = 8,         /* objects the main thread allocates to choose from */
    CACHE_LINE = 64,
};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

typedef struct {
    THREAD_OWNED pthread_t thread;
    int id;
    long iterations;
    unsigned char *given;   /* object allocated by the main thread */
    uint64_t sum;
} worker_t;
ASSERT_THREAD_OWNED(worker_t);

/* Allocate an object, hammer it, check it, free it. */
static uint64_t scratch(int id, long iteration)
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
    if (w->given[0] != (unsigned char)(0xA0 + w->id) ||
        w->given[OBJ_SIZE - 1] != (unsigned char)(0x50 + w->id))
        die("handed-over object corrupted");
    free(w->given);
    for (long i = 0; i < w->iterations; i++)
        w->sum += scratch(w->id, i);
    return NULL;
}

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    worker_t w[NTHREADS];
    memset(w, 0, sizeof w);

    /* Allocate a run of objects and pick the first NTHREADS consecutive ones
     * that lie in one cache line (or simply the first ones if none do). */
    unsigned char *objs[CANDIDATES];
    for (int i = 0; i < CANDIDATES; i++) {
        objs[i] = malloc(OBJ_SIZE);
        if (!objs[i])
            die("out of memory");
        memset(objs[i], 0, OBJ_SIZE);
    }
    int first = 0;
    for (int i = 0; i + NTHREADS <= CANDIDATES; i++) {
        uintptr_t line = (uintptr_t)objs[i] / CACHE_LINE;
        int same = 1;
        for (int k = 1; k < NTHREADS; k++)
            same &= (uintptr_t)objs[i + k] / CACHE_LINE == line;
        if (same) {
            first = i;
            break;
        }
    }
    for (int i = 0; i < CANDIDATES; i++)
        if (i < first || i >= first + NTHREADS)
            free(objs[i]);

    for (int i = 0; i < NTHREADS; i++) {
        w[i].id = i;
        w[i].iterations = ITERATIONS * scale;
        w[i].given = objs[first + i];
        w[i].given[0] = (unsigned char)(0xA0 + i);
        w[i].given[OBJ_SIZE - 1] = (unsigned char)(0x50 + i);
    }
    for (int i = 0; i < NTHREADS; i++)
        if (pthread_create(&w[i].thread, NULL, run, &w[i]) != 0)
            die("pthread_create failed");
    uint64_t sum = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(w[i].thread, NULL);
        sum += w[i].sum;
    }
    printf(BENCH_NAME ": ok %016llx\n", (unsigned long long)sum);
    return 0;
}
