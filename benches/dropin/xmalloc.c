/*
 * xmalloc.c - producer/consumer workload (modeled on the xmalloc-test
 * benchmark by Lever & Boreham, as used in mimalloc-bench).  Written from
 * scratch for arenalloc.
 *
 * Two producer threads allocate blocks of random size (16..512 bytes), fill
 * them in batches and push the batches onto a bounded, mutex-protected FIFO.
 * Two consumer threads pop batches, check every block and free it, so every
 * block is freed by a thread other than the one that allocated it.
 *
 * Usage: xmalloc [scale]   (scale multiplies the number of batches)
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME "xmalloc"

enum {
    NPRODUCERS = 2,
    NCONSUMERS = 2,
    BATCH = 256,            /* blocks per batch */
    MAX_QUEUED = 32,        /* producers wait when this many batches queue up */
    BATCHES = 12000,        /* per producer, times scale */
    MIN_SIZE = 16,
    MAX_SIZE = 512,
};

#include "common.h"

/* ---- workload ---------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    uint32_t n;
    uint64_t v;
} item_t;

typedef struct batch {
    struct batch *next;
    int count;
    item_t items[BATCH];
} batch_t;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t not_empty;
    pthread_cond_t not_full;
    batch_t *head, *tail;
    int length;
    int producers_done;
} queue = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
           PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0};

typedef struct {
    THREAD_OWNED pthread_t thread;
    int id;
    long batches;
    uint64_t sum;           /* producers: allocated; consumers: freed */
    long blocks;
} worker_t;
ASSERT_THREAD_OWNED(worker_t);

static void *producer(void *arg)
{
    worker_t *w = arg;
    uint64_t rng = 0xC0FFEE1234567ULL + 0x9E3779B97F4A7C15ULL * (uint64_t)w->id;
    for (long b = 0; b < w->batches; b++) {
        batch_t *batch = malloc(sizeof *batch);
        if (!batch)
            die("out of memory");
        batch->next = NULL;
        batch->count = BATCH;
        for (int i = 0; i < BATCH; i++) {
            uint64_t r = rng_next(&rng);
            size_t n = MIN_SIZE + r % (MAX_SIZE - MIN_SIZE + 1);
            unsigned char *p = malloc(n);
            if (!p)
                die("out of memory");
            uint64_t v = rng_next(&rng);
            stamp(p, n, v);
            batch->items[i] = (item_t){p, (uint32_t)n, v};
            w->sum += v + n;
        }
        pthread_mutex_lock(&queue.lock);
        while (queue.length >= MAX_QUEUED)
            pthread_cond_wait(&queue.not_full, &queue.lock);
        if (queue.tail)
            queue.tail->next = batch;
        else
            queue.head = batch;
        queue.tail = batch;
        queue.length++;
        pthread_cond_signal(&queue.not_empty);
        pthread_mutex_unlock(&queue.lock);
    }
    pthread_mutex_lock(&queue.lock);
    queue.producers_done++;
    pthread_cond_broadcast(&queue.not_empty);
    pthread_mutex_unlock(&queue.lock);
    return NULL;
}

static void *consumer(void *arg)
{
    worker_t *w = arg;
    for (;;) {
        pthread_mutex_lock(&queue.lock);
        while (!queue.head && queue.producers_done < NPRODUCERS)
            pthread_cond_wait(&queue.not_empty, &queue.lock);
        batch_t *batch = queue.head;
        if (batch) {
            queue.head = batch->next;
            if (!queue.head)
                queue.tail = NULL;
            queue.length--;
            pthread_cond_signal(&queue.not_full);
        }
        pthread_mutex_unlock(&queue.lock);
        if (!batch)
            return NULL;
        for (int i = 0; i < batch->count; i++) {
            item_t *it = &batch->items[i];
            verify(it->p, it->n, it->v);
            w->sum += it->v + it->n;
            free(it->p);
        }
        w->blocks += batch->count;
        free(batch);
    }
}

int main(int argc, char **argv)
{
    long scale = parse_scale(argc, argv);
    worker_t prod[NPRODUCERS], cons[NCONSUMERS];
    memset(prod, 0, sizeof prod);
    memset(cons, 0, sizeof cons);
    for (int i = 0; i < NCONSUMERS; i++) {
        cons[i].id = i;
        if (pthread_create(&cons[i].thread, NULL, consumer, &cons[i]) != 0)
            die("pthread_create failed");
    }
    for (int i = 0; i < NPRODUCERS; i++) {
        prod[i].id = i;
        prod[i].batches = BATCHES * scale;
        if (pthread_create(&prod[i].thread, NULL, producer, &prod[i]) != 0)
            die("pthread_create failed");
    }
    uint64_t alloc_sum = 0, free_sum = 0;
    long blocks = 0;
    for (int i = 0; i < NPRODUCERS; i++) {
        pthread_join(prod[i].thread, NULL);
        alloc_sum += prod[i].sum;
    }
    for (int i = 0; i < NCONSUMERS; i++) {
        pthread_join(cons[i].thread, NULL);
        free_sum += cons[i].sum;
        blocks += cons[i].blocks;
    }
    if (alloc_sum != free_sum || blocks != (long)NPRODUCERS * BATCHES * scale * BATCH)
        die("allocation and free checksums differ");
    printf(BENCH_NAME ": ok %016llx\n", (unsigned long long)alloc_sum);
    return 0;
}
