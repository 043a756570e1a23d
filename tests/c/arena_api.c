/*
 * Every function of capi/include/arenalloc.h, from C: the dedicated arenas
 * (new, set, get, default, destroy, trim, stats, set_limit, arena malloc,
 * calloc and aligned_alloc), their errors (EINVAL for a stale, made-up or
 * NULL handle and a NULL stats pointer, ENOMEM past a limit) and the glibc
 * extensions the header declares.
 *
 * Built by tests/c_arena_api.rs with -Wall -Wextra -Werror and linked with
 * libarenalloc.a. Every failed check prints a line starting with "FAIL"; the
 * program ends with "N passed, M failed" and exits 1 if M > 0.
 *
 * Compile with -fno-builtin: the compiler must not fold malloc calls away.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "arenalloc.h"

#define KiB ((size_t)1024)
#define MiB ((size_t)1024 * 1024)

#include "check.h"

/* Checks that `call` (an expression) fails as `failed_if` says, with errno
 * `err`. */
#define CHECK_ERRNO(call, failed_if, err, what)                                                   \
    do {                                                                                          \
        errno = 0;                                                                                \
        __typeof__(call) r_ = (call);                                                             \
        int e_ = errno;                                                                           \
        CHECK(failed_if(r_) && e_ == (err), "%s: expected failure with errno %d, got errno %d", \
              what, (err), e_);                                                                   \
    } while (0)
#define IS_NULL(r) ((r) == NULL)
#define IS_MINUS_ONE(r) ((r) == -1)

static void begin(const char *name) {
    section = name;
    printf("== %s\n", name);
    fflush(stdout);
}

static struct malloc_arena_stats stats_of(arena_hd *a) {
    struct malloc_arena_stats s;
    memset(&s, 0xff, sizeof s);
    int rc = malloc_arena_stats(a, &s);
    CHECK(rc == 0, "malloc_arena_stats(%p) = %d, errno %d", (void *)a, rc, errno);
    return s;
}

static size_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

static unsigned char pat(size_t i, unsigned seed) {
    uint64_t x = (uint64_t)i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
    x ^= x >> 29;
    return (unsigned char)(x ^ (x >> 8));
}
static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        p[i] = pat(i, seed);
}
static int intact(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(i, seed))
            return 0;
    return 1;
}
static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

static void test_default_and_current(void) {
    begin("default and current arena");
    arena_hd *def = malloc_default_arena();
    CHECK(def != NULL, "malloc_default_arena() is NULL");
    CHECK(malloc_default_arena() == def, "the default arena's handle changed");
    CHECK(malloc_get_arena() == def, "a fresh thread does not prefer the default arena");
    struct malloc_arena_stats s = stats_of(def);
    CHECK(s.threads >= 1, "the default arena counts %zu threads (this one prefers it)", s.threads);
    CHECK(s.limit_bytes == 0, "the default arena has a limit of %zu", s.limit_bytes);
}

static void test_set_and_get(void) {
    begin("new, set, get");
    arena_hd *def = malloc_default_arena();
    arena_hd *a = malloc_new_arena();
    arena_hd *b = malloc_new_arena();
    CHECK(a != NULL && b != NULL, "malloc_new_arena failed: errno %d", errno);
    CHECK(a != def && b != def && a != b, "new arenas must have handles of their own");
    struct malloc_arena_stats s = stats_of(a);
    CHECK(s.live_blocks == 0 && s.live_bytes == 0 && s.threads == 0 && s.mapped_bytes == 0,
          "a new arena is not empty: %zu blocks, %zu bytes, %zu threads, %zu mapped", s.live_blocks,
          s.live_bytes, s.threads, s.mapped_bytes);

    arena_hd *prev = malloc_set_arena(a);
    CHECK(prev == def, "malloc_set_arena returned %p, not the default arena", (void *)prev);
    CHECK(malloc_get_arena() == a, "malloc_get_arena after set");
    CHECK(stats_of(a).threads == 1, "the arena does not count this thread");
    void *p = malloc(100);
    void *big = malloc(3 * MiB);
    char *str = strdup("in the arena");
    s = stats_of(a);
    CHECK(s.live_blocks == 3, "malloc in the preferred arena: %zu live blocks, expected 3", s.live_blocks);
    CHECK(s.live_bytes == malloc_usable_size(p) + malloc_usable_size(big) + malloc_usable_size(str),
          "live_bytes %zu is not the sum of the usable sizes", s.live_bytes);
    prev = malloc_set_arena(b);
    CHECK(prev == a, "switching a -> b returned %p", (void *)prev);
    CHECK(stats_of(a).threads == 0 && stats_of(b).threads == 1, "thread counts after a -> b");
    /* realloc and free from another arena keep the blocks in a */
    p = realloc(p, 5000);
    CHECK(p != NULL, "realloc");
    CHECK(stats_of(a).live_blocks == 3 && stats_of(b).live_blocks == 0,
          "realloc from b moved a's block out of a");
    free(p);
    free(big);
    free(str);
    s = stats_of(a);
    CHECK(s.live_blocks == 0 && s.live_bytes == 0, "after free: %zu blocks, %zu bytes", s.live_blocks,
          s.live_bytes);
    prev = malloc_set_arena(def);
    CHECK(prev == b, "switching back returned %p", (void *)prev);
    CHECK(malloc_get_arena() == def, "back in the default arena");
    CHECK(malloc_set_arena(def) == def, "setting the current arena again returns it");
    CHECK(malloc_arena_destroy(a) == 0 && malloc_arena_destroy(b) == 0, "destroy a and b");
}

static void test_arena_allocation(void) {
    begin("malloc_arena_malloc, calloc, aligned_alloc");
    arena_hd *a = malloc_new_arena();
    arena_hd *def = malloc_default_arena();
    enum { N = 64 };
    void *blocks[N];
    size_t sum = 0;
    for (int i = 0; i < N; i++) {
        size_t size = (size_t)1 << (i % 22); /* 1 B .. 2 MiB */
        if (i % 3 == 0)
            blocks[i] = malloc_arena_malloc(a, size);
        else if (i % 3 == 1)
            blocks[i] = malloc_arena_calloc(a, 1, size);
        else
            blocks[i] = malloc_arena_aligned_alloc(a, 64, size);
        CHECK(blocks[i] != NULL, "allocation %d of %zu in the arena failed", i, size);
        if (blocks[i] == NULL)
            continue;
        CHECK(malloc_usable_size(blocks[i]) >= size, "usable size of %zu", size);
        if (i % 3 == 1)
            CHECK(all_zero(blocks[i], size), "calloc of %zu not zeroed", size);
        memset(blocks[i], i, size);
        sum += malloc_usable_size(blocks[i]);
    }
    CHECK(malloc_get_arena() == def, "arena allocation switched the thread's arena");
    struct malloc_arena_stats s = stats_of(a);
    CHECK(s.live_blocks == N, "%zu live blocks, expected %d", s.live_blocks, N);
    CHECK(s.live_bytes == sum, "live_bytes %zu, usable sizes sum to %zu", s.live_bytes, sum);
    CHECK(s.threads == 0, "allocating in an arena is not preferring it (threads %zu)", s.threads);
    CHECK(s.mapped_bytes >= s.in_use_bytes && s.in_use_bytes >= s.live_bytes,
          "mapped %zu >= in use %zu >= live %zu", s.mapped_bytes, s.in_use_bytes, s.live_bytes);
    CHECK(s.peak_in_use_bytes >= s.in_use_bytes, "peak %zu < in use %zu", s.peak_in_use_bytes,
          s.in_use_bytes);
    for (int i = 0; i < N; i++)
        free(blocks[i]);
    s = stats_of(a);
    CHECK(s.live_blocks == 0 && s.live_bytes == 0, "after free: %zu blocks, %zu bytes", s.live_blocks,
          s.live_bytes);

    /* calloc zeroes reused memory, small and large */
    size_t sizes[] = {4000, 100 * KiB, 1 * MiB};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        unsigned char *p = malloc_arena_malloc(a, sizes[k]);
        memset(p, 0xab, sizes[k]);
        free(p);
        unsigned char *q = malloc_arena_calloc(a, sizes[k] / 4, 4);
        CHECK(q != NULL && all_zero(q, sizes[k]), "calloc of %zu reused memory without zeroing it",
              sizes[k]);
        free(q);
    }
    CHECK_ERRNO(malloc_arena_calloc(a, SIZE_MAX / 2, 3), IS_NULL, ENOMEM, "calloc overflow");
    CHECK_ERRNO(malloc_arena_malloc(a, SIZE_MAX / 2), IS_NULL, ENOMEM, "malloc of SIZE_MAX / 2");

    /* alignments from 1 B to 4 MiB; the ones that are not powers of two fail */
    for (size_t align = 1; align <= 4 * MiB; align <<= 1) {
        void *p = malloc_arena_aligned_alloc(a, align, 100);
        CHECK(p != NULL && ((uintptr_t)p & (align - 1)) == 0, "aligned_alloc(%zu) = %p", align, p);
        CHECK(stats_of(a).live_blocks == 1, "aligned_alloc(%zu) not counted in the arena", align);
        free(p);
    }
    CHECK_ERRNO(malloc_arena_aligned_alloc(a, 24, 100), IS_NULL, EINVAL, "aligned_alloc(24)");
    CHECK_ERRNO(malloc_arena_aligned_alloc(a, 0, 100), IS_NULL, EINVAL, "aligned_alloc(0)");
    void *z = malloc_arena_malloc(a, 0);
    CHECK(z != NULL, "malloc_arena_malloc(0) must return a unique block");
    free(z);
    CHECK(stats_of(a).live_blocks == 0, "blocks left");
    CHECK(malloc_arena_destroy(a) == 0, "destroy");
}

static void test_stats_errors(void) {
    begin("stats errors");
    arena_hd *a = malloc_new_arena();
    CHECK_ERRNO(malloc_arena_stats(a, NULL), IS_MINUS_ONE, EINVAL, "stats into NULL");
    CHECK_ERRNO(malloc_arena_stats(malloc_default_arena(), NULL), IS_MINUS_ONE, EINVAL,
                "default stats into NULL");
    struct malloc_arena_stats s;
    CHECK_ERRNO(malloc_arena_stats(NULL, &s), IS_MINUS_ONE, EINVAL, "stats of NULL");
    CHECK_ERRNO(malloc_arena_stats((arena_hd *)(uintptr_t)0x7777000012345ull, &s), IS_MINUS_ONE,
                EINVAL, "stats of a made-up handle");
    CHECK(malloc_arena_destroy(a) == 0, "destroy");
}

/* Which arena owns a pointer: its own for blocks of a dedicated arena,
 * small and large, and for an interior address; the default arena's for a
 * plain malloc; NULL for memory that is not ours, and after a destroy. */
static void test_arena_of(void) {
    begin("arena of a pointer");
    arena_hd *a = malloc_new_arena();
    char *small = malloc_arena_malloc(a, 100);
    char *large = malloc_arena_malloc(a, 3 * MiB);
    char *plain = malloc(100);
    static char not_ours[64];
    int on_stack = 0;
    CHECK(small && large && plain, "allocations");
    CHECK(malloc_arena_of(small) == a, "small block of the arena: %p", (void *)malloc_arena_of(small));
    CHECK(malloc_arena_of(small + 50) == a, "interior address of a small block");
    CHECK(malloc_arena_of(large) == a && malloc_arena_of(large + 2 * MiB) == a, "large block");
    CHECK(malloc_arena_of(plain) == malloc_get_arena(), "plain malloc in the current arena");
    CHECK(malloc_arena_of(not_ours) == NULL, "static data is not ours");
    CHECK(malloc_arena_of(&on_stack) == NULL, "the stack is not ours");
    CHECK(malloc_arena_of(NULL) == NULL, "NULL");
    free(plain);
    free(small);
    free(large);
    CHECK(malloc_arena_destroy(a) == 0, "destroy");
    CHECK(malloc_arena_of(small) != a, "a destroyed arena's handle is never given out");
}

/* The struct grows at its end; no caller's struct is overrun. */
static void test_stats_sizes(void) {
    begin("stats sizes");
    enum { WORDS = sizeof(struct malloc_arena_stats) / sizeof(size_t) };
    size_t words[WORDS + 1];
    /* The symbol itself, as a program built before `pending_remote_spans`
     * calls it: eight words written, the ninth left alone. */
    int (*old_call)(arena_hd *, struct malloc_arena_stats *) = &malloc_arena_stats;
    memset(words, 0xab, sizeof words);
    CHECK(old_call(malloc_default_arena(), (struct malloc_arena_stats *)words) == 0, "old call");
    CHECK(words[8] == (size_t)0xababababababababull,
          "the old symbol wrote past eight words (word 8 = %zx)", words[8]);
    CHECK(words[7] != (size_t)0xababababababababull, "the old symbol left `threads` unwritten");
    /* A smaller struct: only its bytes. */
    memset(words, 0xab, sizeof words);
    CHECK(malloc_arena_stats_sized(malloc_default_arena(), (struct malloc_arena_stats *)words,
                                   3 * sizeof(size_t)) == 0,
          "sized call");
    CHECK(words[3] == (size_t)0xababababababababull && words[2] != (size_t)0xababababababababull,
          "a 3-word call wrote %s", words[3] != (size_t)0xababababababababull ? "more" : "less");
    /* This header's struct, through the macro: every field, nothing past. */
    memset(words, 0xab, sizeof words);
    CHECK(malloc_arena_stats(malloc_default_arena(), (struct malloc_arena_stats *)words) == 0,
          "macro call");
    CHECK(words[WORDS - 1] != (size_t)0xababababababababull, "the last field was not written");
    CHECK(words[WORDS] == (size_t)0xababababababababull, "the macro call wrote past the struct");
    CHECK_ERRNO(malloc_arena_stats_sized(malloc_default_arena(), (struct malloc_arena_stats *)words, 0),
                IS_MINUS_ONE, EINVAL, "stats into 0 bytes");
}

static void test_limit(void) {
    begin("limits");
    const size_t limit = 4 * MiB;
    arena_hd *a = malloc_new_arena();
    CHECK(malloc_arena_set_limit(a, limit) == 0, "set_limit");
    CHECK(stats_of(a).limit_bytes == limit, "limit_bytes");
    CHECK_ERRNO(malloc_arena_malloc(a, 8 * MiB), IS_NULL, ENOMEM, "a large block past the limit");
    CHECK_ERRNO(malloc_arena_calloc(a, 8, MiB), IS_NULL, ENOMEM, "calloc past the limit");
    CHECK_ERRNO(malloc_arena_aligned_alloc(a, 4096, 8 * MiB), IS_NULL, ENOMEM,
                "aligned_alloc past the limit");

    /* small blocks through plain malloc in the preferred arena */
    arena_hd *prev = malloc_set_arena(a);
    enum { MAX = 8192 };
    static void *small[MAX];
    int n = 0, saw_enomem = 0;
    while (n < MAX) {
        errno = 0;
        void *p = malloc(1000);
        if (p == NULL) {
            saw_enomem = errno == ENOMEM;
            break;
        }
        small[n++] = p;
    }
    CHECK(n < MAX, "the limit never stopped malloc");
    CHECK(saw_enomem, "malloc past the limit: errno is not ENOMEM");
    struct malloc_arena_stats s = stats_of(a);
    CHECK(s.in_use_bytes <= limit && s.in_use_bytes + MiB > limit,
          "refused at %zu in use (limit %zu)", s.in_use_bytes, limit);
    CHECK(s.live_blocks == (size_t)n, "%zu live blocks, %d allocated", s.live_blocks, n);
    free(small[--n]);
    void *again = malloc(1000);
    CHECK(again != NULL, "a freed block was not usable again under the limit");
    small[n++] = again;

    /* realloc growth past the limit fails and keeps the block */
    unsigned char *keep = small[0];
    fill(keep, 1000, 3);
    size_t headroom = limit - stats_of(a).in_use_bytes;
    size_t grown = headroom + 1 > 2 * KiB ? headroom + 1 : 2 * KiB;
    errno = 0;
    void *r = realloc(keep, grown);
    int e = errno;
    CHECK(r == NULL && e == ENOMEM, "realloc(%zu) past the limit = %p, errno %d", grown, r, e);
    CHECK(intact(keep, 1000, 3), "a failed realloc changed the block");
    prev = malloc_set_arena(prev);
    CHECK(prev == a, "switching back");

    /* lifting the limit */
    CHECK(malloc_arena_set_limit(a, 0) == 0 && stats_of(a).limit_bytes == 0, "set_limit(0)");
    r = realloc(keep, grown);
    CHECK(r != NULL && intact(r, 1000, 3), "realloc without a limit");
    small[0] = r;
    void *big = malloc_arena_malloc(a, 8 * MiB);
    CHECK(big != NULL, "8 MiB without a limit");
    free(big);
    for (int i = 0; i < n; i++)
        free(small[i]);
    CHECK(stats_of(a).live_blocks == 0, "blocks left");
    CHECK(malloc_arena_destroy(a) == 0, "destroy");
}

static void test_trim(void) {
    begin("trim");
    arena_hd *a = malloc_new_arena();
    enum { N = 2000 };
    static void *blocks[N];
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc_arena_malloc(a, 8000);
        memset(blocks[i], 1, 8000);
    }
    void *large = malloc_arena_malloc(a, 8 * MiB);
    memset(large, 2, 8 * MiB);
    size_t full = stats_of(a).resident_bytes;
    CHECK(full >= N * 8000 + 8 * MiB, "only %zu resident", full);
    for (int i = 0; i < N; i++)
        free(blocks[i]);
    free(large);
    size_t freed = stats_of(a).resident_bytes;
    CHECK(malloc_arena_trim(a) == 1, "trim after freeing should release memory");
    size_t trimmed = stats_of(a).resident_bytes;
    CHECK(trimmed + 8 * MiB <= freed, "resident %zu -> %zu only", freed, trimmed);
    CHECK(trimmed < MiB, "%zu bytes resident with no block", trimmed);
    CHECK(malloc_arena_trim(a) == 0, "a second trim should have nothing to release");
    CHECK(malloc_arena_trim(malloc_default_arena()) >= 0, "trim the default arena");
    CHECK(malloc_arena_destroy(a) == 0, "destroy");
}

static void test_destroy_and_stale_handles(void) {
    begin("destroy and stale handles");
    arena_hd *def = malloc_default_arena();
    arena_hd *d = malloc_new_arena();
    CHECK(malloc_arena_set_limit(d, 64 * MiB) == 0, "set_limit");
    /* 24 MiB of small blocks and 24 MiB of large ones, all written */
    size_t rss0 = rss_bytes();
    for (int i = 0; i < 24 * 256; i++) {
        void *p = malloc_arena_malloc(d, 4 * KiB);
        if (p)
            memset(p, 3, 4 * KiB);
    }
    for (int i = 0; i < 6; i++) {
        void *p = malloc_arena_malloc(d, 4 * MiB);
        if (p)
            memset(p, 4, 4 * MiB);
    }
    struct malloc_arena_stats s = stats_of(d);
    CHECK(s.live_blocks == 24 * 256 + 6, "%zu live blocks", s.live_blocks);
    CHECK(s.resident_bytes >= 48 * MiB, "only %zu resident", s.resident_bytes);
    size_t rss1 = rss_bytes();
    CHECK(rss1 >= rss0 + 40 * MiB, "RSS %zu -> %zu", rss0, rss1);
    CHECK(malloc_arena_destroy(d) == 0, "destroy a live arena");
    size_t rss2 = rss_bytes();
    CHECK(rss1 - rss2 >= s.resident_bytes / 10 * 9, "RSS fell by %zu only, the arena had %zu resident",
          rss1 - rss2, s.resident_bytes);

    struct malloc_arena_stats out;
    CHECK_ERRNO(malloc_set_arena(d), IS_NULL, EINVAL, "set to a destroyed arena");
    CHECK(malloc_get_arena() == def, "a refused set changed the arena");
    CHECK_ERRNO(malloc_arena_stats(d, &out), IS_MINUS_ONE, EINVAL, "stats");
    CHECK_ERRNO(malloc_arena_trim(d), IS_MINUS_ONE, EINVAL, "trim");
    CHECK_ERRNO(malloc_arena_set_limit(d, MiB), IS_MINUS_ONE, EINVAL, "set_limit");
    CHECK_ERRNO(malloc_arena_set_limit(d, 0), IS_MINUS_ONE, EINVAL, "set_limit(0)");
    CHECK_ERRNO(malloc_arena_malloc(d, 64), IS_NULL, EINVAL, "arena malloc");
    CHECK_ERRNO(malloc_arena_malloc(d, 2 * MiB), IS_NULL, EINVAL, "arena malloc, large");
    CHECK_ERRNO(malloc_arena_calloc(d, 4, 16), IS_NULL, EINVAL, "arena calloc");
    CHECK_ERRNO(malloc_arena_aligned_alloc(d, 256, 64), IS_NULL, EINVAL, "arena aligned_alloc");
    CHECK_ERRNO(malloc_arena_destroy(d), IS_MINUS_ONE, EINVAL, "destroy twice");
    CHECK_ERRNO(malloc_arena_destroy(def), IS_MINUS_ONE, EINVAL, "destroy the default arena");
    CHECK(malloc_arena_stats(def, &out) == 0, "the default arena is still live");
    CHECK_ERRNO(malloc_arena_destroy(NULL), IS_MINUS_ONE, EINVAL, "destroy NULL");
    CHECK_ERRNO(malloc_set_arena(NULL), IS_NULL, EINVAL, "set NULL");
    CHECK_ERRNO(malloc_arena_malloc(NULL, 8), IS_NULL, EINVAL, "arena malloc of NULL");
    arena_hd *made_up = (arena_hd *)(uintptr_t)0x0000000500000fffull;
    CHECK_ERRNO(malloc_set_arena(made_up), IS_NULL, EINVAL, "set a made-up handle");
    CHECK_ERRNO(malloc_arena_malloc(made_up, 8), IS_NULL, EINVAL, "arena malloc, made-up handle");
    CHECK_ERRNO(malloc_arena_destroy(made_up), IS_MINUS_ONE, EINVAL, "destroy a made-up handle");

    /* the slot comes back under another handle; the old one stays refused */
    arena_hd *n = malloc_new_arena();
    CHECK(n != NULL && n != d, "a new arena reused the destroyed arena's handle");
    s = stats_of(n);
    CHECK(s.live_blocks == 0 && s.mapped_bytes == 0 && s.limit_bytes == 0 && s.peak_in_use_bytes == 0,
          "the new arena inherited figures: %zu blocks, %zu mapped, limit %zu, peak %zu", s.live_blocks,
          s.mapped_bytes, s.limit_bytes, s.peak_in_use_bytes);
    void *p = malloc_arena_malloc(n, 64);
    CHECK(p != NULL && stats_of(n).live_blocks == 1, "the new arena allocates");
    CHECK_ERRNO(malloc_arena_malloc(d, 64), IS_NULL, EINVAL, "the old handle after reuse");
    CHECK_ERRNO(malloc_arena_stats(d, &out), IS_MINUS_ONE, EINVAL, "stats, old handle after reuse");
    CHECK(stats_of(n).live_blocks == 1, "the old handle reached the new arena");
    free(p);
    CHECK(malloc_arena_destroy(n) == 0, "destroy the new arena");

    /* a thread's blocks in the default arena are unaffected by all this */
    char *q = malloc(100);
    CHECK(q != NULL, "malloc in the default arena");
    free(q);
}

/* --- threads ------------------------------------------------------------ */

static pthread_barrier_t step;
static arena_hd *shared_arena;

static void *enter_and_wait(void *arg) {
    int leave_early = arg != NULL;
    arena_hd *prev = malloc_set_arena(shared_arena);
    void *p = malloc(200);
    pthread_barrier_wait(&step); /* 1: all in */
    pthread_barrier_wait(&step); /* 2: counted */
    free(p);
    if (leave_early)
        malloc_set_arena(prev);
    pthread_barrier_wait(&step); /* 3: some left */
    pthread_barrier_wait(&step); /* 4: counted; the others exit in the arena */
    return NULL;
}

static void test_thread_counts(void) {
    begin("thread counts");
    enum { T = 4 };
    shared_arena = malloc_new_arena();
    pthread_barrier_init(&step, NULL, T + 1);
    pthread_t threads[T];
    for (intptr_t i = 0; i < T; i++)
        pthread_create(&threads[i], NULL, enter_and_wait, i < 2 ? (void *)1 : NULL);
    pthread_barrier_wait(&step); /* 1 */
    CHECK(stats_of(shared_arena).threads == T, "%zu threads, %d entered", stats_of(shared_arena).threads, T);
    CHECK(stats_of(shared_arena).live_blocks == T, "one block per thread");
    pthread_barrier_wait(&step); /* 2 */
    pthread_barrier_wait(&step); /* 3 */
    CHECK(stats_of(shared_arena).threads == T - 2, "%zu threads after two left",
          stats_of(shared_arena).threads);
    pthread_barrier_wait(&step); /* 4 */
    for (int i = 0; i < T; i++)
        pthread_join(threads[i], NULL);
    struct malloc_arena_stats s = stats_of(shared_arena);
    CHECK(s.threads == 0 && s.live_blocks == 0, "after exit: %zu threads, %zu blocks", s.threads,
          s.live_blocks);
    pthread_barrier_destroy(&step);
    CHECK(malloc_arena_destroy(shared_arena) == 0, "destroy");
}

static pthread_barrier_t parked, resumed;
static arena_hd *doomed;
static int fallback_ok, fallback_alloc_ok, fallback_reset_refused;

static void *prefer_doomed(void *arg) {
    (void)arg;
    malloc_set_arena(doomed);
    void *a = malloc(48), *b = malloc(300 * KiB);
    memset(a, 1, 48);
    memset(b, 1, 300 * KiB);
    pthread_barrier_wait(&parked);
    /* destroyed while this thread waits, not allocating */
    pthread_barrier_wait(&resumed);
    fallback_ok = malloc_get_arena() == malloc_default_arena();
    int ok = 1;
    for (int i = 0; i < 1000; i++) {
        size_t size = 16 + (size_t)i * 97;
        unsigned char *p = malloc(size);
        if (!p) {
            ok = 0;
            break;
        }
        fill(p, size, (unsigned)i);
        ok &= intact(p, size, (unsigned)i);
        free(p);
    }
    void *large = malloc(2 * MiB);
    ok &= large != NULL;
    free(large);
    fallback_alloc_ok = ok;
    errno = 0;
    fallback_reset_refused = malloc_set_arena(doomed) == NULL && errno == EINVAL;
    return NULL;
}

static void test_destroy_while_preferred(void) {
    begin("a thread whose arena is destroyed");
    doomed = malloc_new_arena();
    pthread_barrier_init(&parked, NULL, 2);
    pthread_barrier_init(&resumed, NULL, 2);
    pthread_t t;
    pthread_create(&t, NULL, prefer_doomed, NULL);
    pthread_barrier_wait(&parked);
    struct malloc_arena_stats s = stats_of(doomed);
    CHECK(s.threads == 1 && s.live_blocks == 2, "before destroy: %zu threads, %zu blocks", s.threads,
          s.live_blocks);
    CHECK(malloc_arena_destroy(doomed) == 0, "destroy the arena another thread prefers");
    pthread_barrier_wait(&resumed);
    pthread_join(t, NULL);
    CHECK(fallback_ok, "the thread does not prefer the default arena after the destroy");
    CHECK(fallback_alloc_ok, "the thread's allocations failed after the destroy");
    CHECK(fallback_reset_refused, "the thread could set the destroyed arena again");
    pthread_barrier_destroy(&parked);
    pthread_barrier_destroy(&resumed);
}

/* --- the glibc extensions in the header --------------------------------- */

static void test_extensions(void) {
    begin("free_sized, free_aligned_sized, malloc_usable_size, malloc_trim, malloc_stats, "
          "malloc_info, mallopt");
    arena_hd *a = malloc_new_arena();
    void *p = malloc_arena_malloc(a, 100);
    void *q = malloc_arena_aligned_alloc(a, 256, 1000);
    CHECK(malloc_usable_size(p) >= 100 && malloc_usable_size(q) >= 1000, "usable sizes");
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL)");
    free_sized(p, 100);
    free_aligned_sized(q, 256, 1000);
    CHECK(stats_of(a).live_blocks == 0, "free_sized / free_aligned_sized left blocks in the arena");
    free_sized(NULL, 0);
    void *big = malloc(16 * MiB);
    memset(big, 1, 16 * MiB);
    free(big);
    int t = malloc_trim(0);
    CHECK(t == 0 || t == 1, "malloc_trim returned %d", t);
    CHECK(malloc_trim(0) == 0, "a second malloc_trim released memory again");
    malloc_stats();
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f != NULL, "open_memstream");
    if (f) {
        int rc = malloc_info(0, f);
        fclose(f);
        CHECK(rc == 0 && buf && strstr(buf, "arenalloc") != NULL,
              "malloc_info does not name arenalloc: the allocator linked is not ours (%s)", buf ? buf : "");
        free(buf);
    }
    FILE *g = tmpfile();
    if (g) {
        CHECK_ERRNO(malloc_info(1, g), IS_MINUS_ONE, EINVAL, "malloc_info with options");
        fclose(g);
    }
    CHECK(mallopt(1 /* M_MXFAST */, 64) == 1, "mallopt(M_MXFAST)");
    CHECK(mallopt(12345, 1) == 0, "mallopt of an unknown parameter");
    CHECK(malloc_arena_destroy(a) == 0, "destroy");
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    test_default_and_current();
    test_set_and_get();
    test_arena_allocation();
    test_stats_errors();
    test_stats_sizes();
    test_arena_of();
    test_limit();
    test_trim();
    test_destroy_and_stale_handles();
    test_thread_counts();
    test_destroy_while_preferred();
    test_extensions();
    printf("%lu passed, %lu failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
