/*
 * larson.c - server simulation workload (modeled on the Larson & Krishnan
 * "larson" allocator benchmark).  Written from scratch for arenalloc.
 *
 * Two "lineages" of worker threads each own an array of slots holding live
 * blocks.  A worker repeatedly picks a random slot, checks and frees the
 * block in it and allocates a fresh block of random size into it.  When its
 * round is over the worker starts a successor thread, hands it the whole
 * array and exits, so nearly every block is freed by a thread other than the
 * one that allocated it (and usually one that has already exited).  The
 * lineages swap arrays at every generation.
 *
 * Usage: larson [scale]   (scale multiplies the number of generations)
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* larson_sized.c sets these three before it includes this file. */
#ifndef BENCH_NAME
#define BENCH_NAME "larson"
#define LARSON_MAX_SIZE 1024
#define LARSON_GENERATIONS 400
#endif

enum {
    NLINEAGES = 2,        /* threads alive at a time */
    NSLOTS = 1000,        /* blocks owned by each thread */
    MIN_SIZE = 8,
    MAX_SIZE = LARSON_MAX_SIZE,
    OPS_PER_ROUND = 25000,
    GENERATIONS = LARSON_GENERATIONS, /* per lineage, times scale */
};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    uint32_t n;
    uint64_t v;
} slot_t;

typedef struct {
    THREAD_OWNED slot_t *slots; /* the array being handed from thread to thread */
    uint64_t rng;
    uint64_t alloc_sum;   /* sum of (v + n) over every block allocated */
    uint64_t free_sum;    /* same, over every block freed */
} lineage_t;
ASSERT_THREAD_OWNED(lineage_t);

static lineage_t lineages[NLINEAGES];
static long generations;

/* At generation g, worker w of lineage l operates on lineages[(l + g) % 2]'s
 * slot array; the arrays are swapped by a shared barrier-like counter. */
typedef struct {
    int lineage;
    long gen;
} job_t;

static pthread_mutex_t gen_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gen_cond = PTHREAD_COND_INITIALIZER;
static int finished_in_gen[2];   /* workers done with generation g (mod 2) */
static long current_gen;         /* generation whose arrays may be used */
static int lineages_done;

static void *worker(void *arg);

static void start_worker(int lineage, long gen)
{
    job_t *job = malloc(sizeof *job);
    if (!job)
        die("out of memory");
    job->lineage = lineage;
    job->gen = gen;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    if (pthread_create(&t, &attr, worker, job) != 0)
        die("pthread_create failed");
    pthread_attr_destroy(&attr);
}

static void *worker(void *arg)
{
    job_t *job = arg;
    int lineage = job->lineage;
    long gen = job->gen;
    free(job);

    /* Wait until both workers of the previous generation are done so the
     * array we take over is no longer in use. */
    pthread_mutex_lock(&gen_lock);
    while (current_gen < gen)
        pthread_cond_wait(&gen_cond, &gen_lock);
    pthread_mutex_unlock(&gen_lock);

    lineage_t *L = &lineages[(lineage + gen) % NLINEAGES];
    slot_t *slots = L->slots;
    for (long i = 0; i < OPS_PER_ROUND; i++) {
        uint64_t r = rng_next(&L->rng);
        slot_t *s = &slots[r % NSLOTS];
        verify(s->p, s->n, s->v);
        L->free_sum += s->v + s->n;
        free(s->p);
        size_t n = MIN_SIZE + (r >> 32) % (MAX_SIZE - MIN_SIZE + 1);
        unsigned char *p = malloc(n);
        if (!p)
            die("out of memory");
        uint64_t v = rng_next(&L->rng);
        stamp(p, n, v);
        s->p = p;
        s->n = (uint32_t)n;
        s->v = v;
        L->alloc_sum += v + n;
    }

    /* Hand over: mark this generation's part done, start the successor. */
    pthread_mutex_lock(&gen_lock);
    if (++finished_in_gen[gen % 2] == NLINEAGES) {
        finished_in_gen[gen % 2] = 0;
        current_gen = gen + 1;
        pthread_cond_broadcast(&gen_cond);
    }
    pthread_mutex_unlock(&gen_lock);

    if (gen + 1 < generations) {
        start_worker(lineage, gen + 1);
    } else {
        pthread_mutex_lock(&gen_lock);
        lineages_done++;
        pthread_cond_broadcast(&gen_cond);
        pthread_mutex_unlock(&gen_lock);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    generations = GENERATIONS * scale;

    /* The main thread allocates the initial blocks, as larson does. */
    for (int l = 0; l < NLINEAGES; l++) {
        lineage_t *L = &lineages[l];
        L->rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(l + 1);
        L->slots = calloc(NSLOTS, sizeof(slot_t));
        if (!L->slots)
            die("out of memory");
        for (int i = 0; i < NSLOTS; i++) {
            size_t n = rng_range(&L->rng, MIN_SIZE, MAX_SIZE);
            unsigned char *p = malloc(n);
            if (!p)
                die("out of memory");
            uint64_t v = rng_next(&L->rng);
            stamp(p, n, v);
            L->slots[i] = (slot_t){p, (uint32_t)n, v};
            L->alloc_sum += v + n;
        }
    }

    for (int l = 0; l < NLINEAGES; l++)
        start_worker(l, 0);

    pthread_mutex_lock(&gen_lock);
    while (lineages_done < NLINEAGES)
        pthread_cond_wait(&gen_cond, &gen_lock);
    pthread_mutex_unlock(&gen_lock);

    uint64_t alloc_sum = 0, free_sum = 0;
    for (int l = 0; l < NLINEAGES; l++) {
        lineage_t *L = &lineages[l];
        for (int i = 0; i < NSLOTS; i++) {
            verify(L->slots[i].p, L->slots[i].n, L->slots[i].v);
            L->free_sum += L->slots[i].v + L->slots[i].n;
            free(L->slots[i].p);
        }
        free(L->slots);
        alloc_sum += L->alloc_sum;
        free_sum += L->free_sum;
    }
    if (alloc_sum != free_sum)
        die("allocation and free checksums differ");
    printf(BENCH_NAME ": ok %016llx\n", (unsigned long long)alloc_sum);
    return 0;
}
