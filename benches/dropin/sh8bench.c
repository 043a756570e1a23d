/*
 * sh8bench.c - batch allocate / cross-thread free workload (modeled on
 * MicroQuill's SmartHeap "sh8bench" benchmark, as used in mimalloc-bench).
 * Written from scratch for arenalloc.
 *
 * Like sh6bench.c, each of two threads allocates batches of blocks of many
 * sizes (1..2000 bytes, skewed towards small ones).  It frees part of every
 * batch itself (in an order that changes from batch to batch) and hands the
 * rest to the other thread through a mailbox; each thread frees whatever it
 * finds in its own mailbox, so about half of all blocks are freed by the
 * thread that did not allocate them.
 *
 * Usage: sh8bench [scale]   (scale multiplies the number of batches)
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "sh8bench"

enum {
    NTHREADS = 2,
    BATCH = 2500,           /* blocks per batch */
    BATCHES = 1000,         /* per thread, times scale */
    MAX_PENDING = 8,        /* parcels allowed in a mailbox before waiting */
    MAX_SIZE = 2000,
};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    uint32_t n;
    uint64_t v;
} item_t;

typedef struct parcel {
    struct parcel *next;
    int count;
    item_t items[];
} parcel_t;

typedef struct {
    pthread_mutex_t lock;
    parcel_t *head;
    int pending;
} mailbox_t;

typedef struct {
    THREAD_OWNED pthread_t thread;
    int id;
    long batches;
    uint64_t alloc_sum, free_sum;
    /* Written by the peer that posts: a block of its own. */
    THREAD_OWNED mailbox_t box;
} worker_t;
ASSERT_THREAD_OWNED(worker_t);
_Static_assert(offsetof(worker_t, box) % 128 == 0, "the mailbox needs a block of its own");

static worker_t workers[NTHREADS];
static atomic_int finished;

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

/* Free everything other threads have sent us. */
static void drain(worker_t *w)
{
    pthread_mutex_lock(&w->box.lock);
    parcel_t *list = w->box.head;
    w->box.head = NULL;
    w->box.pending = 0;
    pthread_mutex_unlock(&w->box.lock);
    while (list) {
        parcel_t *next = list->next;
        for (int i = list->count - 1; i >= 0; i--)
            release(w, &list->items[i]);
        free(list);
        list = next;
    }
}

static int pending(worker_t *w)
{
    pthread_mutex_lock(&w->box.lock);
    int n = w->box.pending;
    pthread_mutex_unlock(&w->box.lock);
    return n;
}

static void post_parcel(worker_t *self, worker_t *to, parcel_t *parcel)
{
    while (pending(to) >= MAX_PENDING) {
        drain(self);
        sched_yield();
    }
    pthread_mutex_lock(&to->box.lock);
    parcel->next = to->box.head;
    to->box.head = parcel;
    to->box.pending++;
    pthread_mutex_unlock(&to->box.lock);
}

static void *run(void *arg)
{
    worker_t *w = arg;
    worker_t *peer = &workers[(w->id + 1) % NTHREADS];
    uint64_t rng = 0x5EED8BE4C4ULL + 0x9E3779B97F4A7C15ULL * (uint64_t)w->id;
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
        /* Choose which blocks go to the peer: a different split each batch. */
        parcel_t *parcel = malloc(sizeof *parcel + BATCH * sizeof(item_t));
        if (!parcel)
            die("out of memory");
        parcel->count = 0;
        switch (b % 3) {
        case 0:     /* send the second half, free the first half in reverse */
            for (int i = BATCH / 2; i < BATCH; i++)
                parcel->items[parcel->count++] = items[i];
            for (int i = BATCH / 2 - 1; i >= 0; i--)
                release(w, &items[i]);
            break;
        case 1:     /* send odd indices, free even indices forward */
            for (int i = 1; i < BATCH; i += 2)
                parcel->items[parcel->count++] = items[i];
            for (int i = 0; i < BATCH; i += 2)
                release(w, &items[i]);
            break;
        default:    /* send a random ~third, free the rest forward */
            for (int i = 0; i < BATCH; i++) {
                if (rng_next(&rng) % 3 == 0)
                    parcel->items[parcel->count++] = items[i];
                else
                    release(w, &items[i]);
            }
            break;
        }
        post_parcel(w, peer, parcel);
        drain(w);
    }
    free(items);
    atomic_fetch_add(&finished, 1);
    while (atomic_load(&finished) < NTHREADS) {
        drain(w);
        sched_yield();
    }
    drain(w);
    return NULL;
}

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    for (int i = 0; i < NTHREADS; i++) {
        workers[i].id = i;
        workers[i].batches = BATCHES * scale;
        pthread_mutex_init(&workers[i].box.lock, NULL);
    }
    for (int i = 0; i < NTHREADS; i++)
        if (pthread_create(&workers[i].thread, NULL, run, &workers[i]) != 0)
            die("pthread_create failed");
    uint64_t alloc_sum = 0, free_sum = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(workers[i].thread, NULL);
        alloc_sum += workers[i].alloc_sum;
        free_sum += workers[i].free_sum;
    }
    if (alloc_sum != free_sum)
        die("allocation and free checksums differ");
    printf(BENCH_NAME ": ok %016llx\n", (unsigned long long)alloc_sum);
    return 0;
}
