/*
 * rptest.c - working-set workload with realloc and cross-thread frees
 * (modeled on the rpmalloc benchmark "rptest", as used in mimalloc-bench).
 * Written from scratch for arenalloc.
 *
 * Each of two threads keeps a working set of live blocks whose sizes span
 * many size classes (16 bytes..16 KiB, strongly skewed towards small sizes:
 * every doubling of the size halves its probability).  Every loop a thread
 * frees a random fraction of its working set, reallocs some blocks to a new
 * size (checking their contents survived), moves some blocks to the other
 * thread, which frees them, frees whatever the other thread sent it, and
 * refills its working set with new blocks.
 *
 * Usage: rptest [scale]   (scale multiplies the number of loops)
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "rptest"

enum {
    NTHREADS = 2,
    WORKSET = 20000,        /* live blocks per thread */
    LOOPS = 550,            /* per thread, times scale */
    FREE_PER_LOOP = WORKSET / 4,
    REALLOC_PER_LOOP = WORKSET / 16,
    SEND_PER_LOOP = WORKSET / 16,
    MAX_PENDING = 4,        /* parcels allowed in a mailbox before waiting */
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
    long loops;
    uint64_t alloc_sum, free_sum;
    /* Written by the peer that posts: a block of its own. */
    THREAD_OWNED mailbox_t box;
} worker_t;
ASSERT_THREAD_OWNED(worker_t);
_Static_assert(offsetof(worker_t, box) % 128 == 0, "the mailbox needs a block of its own");

static worker_t workers[NTHREADS];
static atomic_int finished;

/* Size class 2^e (e = 4..13) chosen with probability ~2^-(e-3), then a
 * uniform size within [2^e, 2^(e+1)). */
static size_t pick_size(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    unsigned e = 4 + (unsigned)__builtin_ctzll(r | (1u << 9));
    return ((size_t)1 << e) + (size_t)((r >> 10) % ((uint64_t)1 << e));
}

static void release(worker_t *w, item_t *it)
{
    verify(it->p, it->n, it->v);
    w->free_sum += it->v + it->n;
    free(it->p);
    it->p = NULL;
}

static void fill(worker_t *w, item_t *it, uint64_t *rng)
{
    size_t n = pick_size(rng);
    unsigned char *p = malloc(n);
    if (!p)
        die("out of memory");
    uint64_t v = rng_next(rng);
    stamp(p, n, v);
    *it = (item_t){p, (uint32_t)n, v};
    w->alloc_sum += v + n;
}

static void resize(worker_t *w, item_t *it, uint64_t *rng)
{
    verify(it->p, it->n, it->v);
    size_t m = pick_size(rng);
    unsigned char *q = realloc(it->p, m);
    if (!q)
        die("out of memory");
    /* The first min(n, m) bytes must have been preserved. */
    size_t keep = it->n < m ? it->n : m;
    if (q[0] != (unsigned char)it->v || (keep >= 10 && memcmp(q + 1, &it->v, 8) != 0))
        die("realloc lost block contents");
    w->free_sum += it->v + it->n;
    uint64_t v = rng_next(rng);
    stamp(q, m, v);
    *it = (item_t){q, (uint32_t)m, v};
    w->alloc_sum += v + m;
}

static void drain(worker_t *w)
{
    pthread_mutex_lock(&w->box.lock);
    parcel_t *list = w->box.head;
    w->box.head = NULL;
    w->box.pending = 0;
    pthread_mutex_unlock(&w->box.lock);
    while (list) {
        parcel_t *next = list->next;
        for (int i = 0; i < list->count; i++)
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
    uint64_t rng = 0x4E5EED0ULL + 0x9E3779B97F4A7C15ULL * (uint64_t)(w->id + 1);
    item_t *set = calloc(WORKSET, sizeof *set);
    if (!set)
        die("out of memory");
    for (int i = 0; i < WORKSET; i++)
        fill(w, &set[i], &rng);

    for (long loop = 0; loop < w->loops; loop++) {
        for (int k = 0; k < FREE_PER_LOOP; k++) {
            item_t *it = &set[rng_next(&rng) % WORKSET];
            if (it->p)
                release(w, it);
        }
        for (int k = 0; k < REALLOC_PER_LOOP; k++) {
            item_t *it = &set[rng_next(&rng) % WORKSET];
            if (it->p)
                resize(w, it, &rng);
        }
        parcel_t *parcel = malloc(sizeof *parcel + SEND_PER_LOOP * sizeof(item_t));
        if (!parcel)
            die("out of memory");
        parcel->count = 0;
        for (int k = 0; k < SEND_PER_LOOP; k++) {
            item_t *it = &set[rng_next(&rng) % WORKSET];
            if (it->p) {
                parcel->items[parcel->count++] = *it;
                it->p = NULL;
            }
        }
        post_parcel(w, peer, parcel);
        drain(w);
        for (int i = 0; i < WORKSET; i++)
            if (!set[i].p)
                fill(w, &set[i], &rng);
    }

    atomic_fetch_add(&finished, 1);
    while (atomic_load(&finished) < NTHREADS) {
        drain(w);
        sched_yield();
    }
    drain(w);
    for (int i = 0; i < WORKSET; i++)
        release(w, &set[i]);
    free(set);
    return NULL;
}

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    for (int i = 0; i < NTHREADS; i++) {
        workers[i].id = i;
        workers[i].loops = LOOPS * scale;
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
