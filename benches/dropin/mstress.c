/*
 * mstress.c - randomized stress workload (modeled on mimalloc's "test-stress"
 * program, run as "mstress" in mimalloc-bench).  Written from scratch for
 * arenalloc.
 *
 * The run is a sequence of iterations; each iteration starts two fresh
 * threads.  A thread makes a random mix of allocations (sizes mostly small,
 * occasionally up to 1 MiB), frees, reallocs, and exchanges of its blocks
 * with a global array of transfer slots (so blocks migrate between threads
 * and iterations).  Part of each thread's blocks is retained for the next
 * iteration's thread with the same index, which frees a random half of them
 * when it starts.  Every block records its own size and tag in a header so
 * whichever thread frees it can check it.
 *
 * Usage: mstress [scale]   (scale multiplies the number of iterations)
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "mstress"

enum {
    NTHREADS = 2,
    ITERATIONS = 30,        /* times scale */
    ALLOCS = 20000,         /* data allocations per thread per iteration */
    RETAIN = ALLOCS / 2,    /* retained allocations per thread per iteration */
    TRANSFERS = 1000,       /* global transfer slots */
    MAX_KEPT = 4 * RETAIN,
    HEADER = 16,            /* every block starts with its tag and size */
};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

static _Atomic(unsigned char *) transfer[TRANSFERS];

typedef struct {
    THREAD_OWNED unsigned char **kept; /* retained blocks, survive to the next iteration */
    long nkept;
    uint64_t fresh_sum;     /* (v + n) over malloc'd blocks: the printed checksum */
    uint64_t alloc_sum;     /* ... plus blocks produced by realloc */
    uint64_t free_sum;      /* (v + n) over every block freed or realloc'd away */
} slotstate_t;
ASSERT_THREAD_OWNED(slotstate_t);

static slotstate_t state[NTHREADS];

typedef struct {
    int tid;
    long iteration;
} job_t;

static inline int chance(uint64_t *rng, unsigned percent)
{
    return rng_next(rng) % 100 < percent;
}

/* 90%: 16..256 B, 9%: ..8 KiB, 0.9%: ..128 KiB, 0.1%: ..1 MiB */
static size_t pick_size(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    unsigned k = (unsigned)(r % 1000);
    r >>= 10;
    if (k < 900)
        return 16 + r % (256 - 16 + 1);
    if (k < 990)
        return 257 + r % (8192 - 257 + 1);
    if (k < 999)
        return 8193 + r % (131072 - 8193 + 1);
    return 131073 + r % (1048576 - 131073 + 1);
}

/* Header: 8-byte tag and 8-byte size, then one byte per page and a tail byte
 * (the stamp() pattern is applied to the part after the header). */
static void stamp_block(unsigned char *p, size_t n, uint64_t v)
{
    uint64_t n64 = n;
    memcpy(p, &v, 8);
    memcpy(p + 8, &n64, 8);
    stamp(p + HEADER, n - HEADER, v);
}

/* Checks a block from its own header and returns v + n for the checksums. */
static uint64_t check_block(const unsigned char *p)
{
    uint64_t v, n;
    memcpy(&v, p, 8);
    memcpy(&n, p + 8, 8);
    if (n <= HEADER || n > 1048576)
        die("block header corrupted");
    verify(p + HEADER, n - HEADER, v);
    return v + n;
}

static unsigned char *new_block(slotstate_t *s, uint64_t *rng)
{
    size_t n = pick_size(rng) + HEADER;
    unsigned char *p = malloc(n);
    if (!p)
        die("out of memory");
    uint64_t v = rng_next(rng);
    stamp_block(p, n, v);
    s->fresh_sum += v + n;
    s->alloc_sum += v + n;
    return p;
}

static void release(slotstate_t *s, unsigned char *p)
{
    if (!p)
        return;
    s->free_sum += check_block(p);
    free(p);
}

static void *run(void *arg)
{
    job_t *job = arg;
    slotstate_t *s = &state[job->tid];
    uint64_t rng = 0x3A17E55ULL + 0x9E3779B97F4A7C15ULL * (uint64_t)(job->iteration * NTHREADS + job->tid + 1);

    /* Free a random half of what the previous iteration retained. */
    long j = 0;
    for (long i = 0; i < s->nkept; i++) {
        if (chance(&rng, 50))
            release(s, s->kept[i]);
        else
            s->kept[j++] = s->kept[i];
    }
    s->nkept = j;

    long cap = 64, top = 0;
    unsigned char **data = malloc(cap * sizeof *data);
    if (!data)
        die("out of memory");
    long allocs = ALLOCS, retain = RETAIN;
    while (allocs > 0 || retain > 0) {
        if (retain == 0 || (chance(&rng, 50) && allocs > 0)) {
            allocs--;
            if (top == cap) {
                cap *= 2;
                unsigned char **grown = realloc(data, cap * sizeof *data);
                if (!grown)
                    die("out of memory");
                data = grown;
            }
            data[top++] = new_block(s, &rng);
        } else {
            retain--;
            unsigned char *p = new_block(s, &rng);
            if (s->nkept < MAX_KEPT)
                s->kept[s->nkept++] = p;
            else
                release(s, p);
        }
        /* The random draws below do not depend on what the slots hold, so
         * every thread's allocation sequence is deterministic. */
        if (chance(&rng, 66) && top > 0) {
            long idx = (long)(rng_next(&rng) % (uint64_t)top);
            release(s, data[idx]);
            data[idx] = NULL;
        }
        if (chance(&rng, 10) && top > 0) {
            long idx = (long)(rng_next(&rng) % (uint64_t)top);
            size_t m = pick_size(&rng) + HEADER;
            uint64_t v = rng_next(&rng);
            unsigned char *p = data[idx];
            if (p) {
                uint64_t old = check_block(p);
                unsigned char header[HEADER];
                memcpy(header, p, HEADER);
                unsigned char *q = realloc(p, m);
                if (!q)
                    die("out of memory");
                if (memcmp(q, header, HEADER) != 0)   /* header must survive */
                    die("realloc lost block contents");
                s->free_sum += old;
                stamp_block(q, m, v);
                s->alloc_sum += v + m;
                data[idx] = q;
            }
        }
        if (chance(&rng, 25) && top > 0) {
            long idx = (long)(rng_next(&rng) % (uint64_t)top);
            size_t t = (size_t)(rng_next(&rng) % TRANSFERS);
            data[idx] = atomic_exchange(&transfer[t], data[idx]);
        }
    }
    for (long i = 0; i < top; i++)
        release(s, data[i]);
    free(data);
    return NULL;
}

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    long iterations = ITERATIONS * scale;
    for (int t = 0; t < NTHREADS; t++) {
        state[t].kept = malloc(MAX_KEPT * sizeof(unsigned char *));
        if (!state[t].kept)
            die("out of memory");
    }
    for (long it = 0; it < iterations; it++) {
        pthread_t threads[NTHREADS];
        job_t jobs[NTHREADS];
        for (int t = 0; t < NTHREADS; t++) {
            jobs[t] = (job_t){t, it};
            if (pthread_create(&threads[t], NULL, run, &jobs[t]) != 0)
                die("pthread_create failed");
        }
        for (int t = 0; t < NTHREADS; t++)
            pthread_join(threads[t], NULL);
    }
    uint64_t fresh = 0, alloc_sum = 0, free_sum = 0;
    for (int t = 0; t < NTHREADS; t++) {
        for (long i = 0; i < state[t].nkept; i++)
            release(&state[t], state[t].kept[i]);
        free(state[t].kept);
    }
    for (int i = 0; i < TRANSFERS; i++)
        release(&state[0], atomic_load(&transfer[i]));
    for (int t = 0; t < NTHREADS; t++) {
        fresh += state[t].fresh_sum;
        alloc_sum += state[t].alloc_sum;
        free_sum += state[t].free_sum;
    }
    if (alloc_sum != free_sum)
        die("allocation and free checksums differ");
    printf(BENCH_NAME ": ok %016llx\n", (unsigned long long)fresh);
    return 0;
}
