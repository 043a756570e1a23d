/*
 * The C contract of arenalloc's malloc family (see capi/src/lib.rs and
 * /work/shared/notes/allocator-hazards.md, "The C contract"), checked from C.
 *
 * Built twice by tests/c_abi.rs: linked against libarenalloc.a, and plain
 * (run with LD_PRELOAD=libarenalloc.so). Every check prints a line starting
 * with "FAIL" when it does not hold; the program ends with
 * "N passed, M failed" and exits 1 if M > 0.
 *
 * Arguments:
 *   --expect-arenalloc  also fail unless malloc_info() says "arenalloc"
 *   --identify-only     print the "allocator: ..." line and exit 0
 *
 * Compile with -fno-builtin: the compiler must not reason about malloc and
 * fold away calls whose result it thinks it knows.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Not (or not always) declared by the system headers: cfree was removed from
 * glibc's headers in 2.26, free_sized/free_aligned_sized are C23 and newer
 * than many glibcs. Weak, so the plain build links without them and a
 * missing definition at run time shows up as a null address (a failure)
 * instead of a link error. */
extern void cfree(void *p) __attribute__((weak));
extern void free_sized(void *p, size_t size) __attribute__((weak));
extern void free_aligned_sized(void *p, size_t align, size_t size) __attribute__((weak));

/* glibc's mallopt parameter numbers, in case the header lacks some. */
#ifndef M_MXFAST
#define M_MXFAST 1
#endif
#ifndef M_TRIM_THRESHOLD
#define M_TRIM_THRESHOLD -1
#endif
#ifndef M_TOP_PAD
#define M_TOP_PAD -2
#endif
#ifndef M_MMAP_THRESHOLD
#define M_MMAP_THRESHOLD -3
#endif
#ifndef M_MMAP_MAX
#define M_MMAP_MAX -4
#endif
#ifndef M_CHECK_ACTION
#define M_CHECK_ACTION -5
#endif
#ifndef M_PERTURB
#define M_PERTURB -6
#endif
#ifndef M_ARENA_TEST
#define M_ARENA_TEST -7
#endif
#ifndef M_ARENA_MAX
#define M_ARENA_MAX -8
#endif

#define KiB ((size_t)1024)
#define MiB ((size_t)1024 * 1024)

#include "check.h"

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
static double t_start;

/* Starts a section; the time stamp helps to see which section is slow. */
static void begin(const char *name) {
    section = name;
    printf("== %s (t=%.2f s)\n", name, seconds() - t_start);
    fflush(stdout);
}

/* Values the compiler cannot see through. */
static size_t opaque(size_t x) {
    volatile size_t v = x;
    return v;
}
static void *volatile sink;

static size_t page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static int aligned_to(const void *p, size_t align) { return ((uintptr_t)p & (align - 1)) == 0; }

static size_t next_pow2(size_t x) {
    size_t p = 1;
    while (p < x)
        p <<= 1;
    return p;
}

/* A byte pattern that depends on the position and a seed, so a block copied
 * to the wrong offset or mixed with another block is caught. */
static unsigned char pat(size_t i, unsigned seed) {
    uint64_t x = (uint64_t)i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
    x ^= x >> 29;
    return (unsigned char)(x ^ (x >> 8));
}
static void fill(unsigned char *p, size_t from, size_t to, unsigned seed) {
    for (size_t i = from; i < to; i++)
        p[i] = pat(i, seed);
}
/* Index of the first byte in [from, to) that differs from the pattern, or
 * SIZE_MAX. */
static size_t first_bad(const unsigned char *p, size_t from, size_t to, unsigned seed) {
    for (size_t i = from; i < to; i++)
        if (p[i] != pat(i, seed))
            return i;
    return SIZE_MAX;
}
static size_t first_nonzero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return i;
    return SIZE_MAX;
}

/* Resident set size from /proc/self/statm, in bytes (0 if unknown). */
static size_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    unsigned long size = 0, resident = 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    return n == 2 ? resident * page_size() : 0;
}

static size_t in_use(void) { return mallinfo2().uordblks; }

/* ------------------------------------------------------------------ */

static int allocator_is_arenalloc(void) {
    FILE *f = tmpfile();
    if (!f)
        return 0;
    int rc = malloc_info(0, f);
    rewind(f);
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return rc == 0 && strstr(buf, "arenalloc") != NULL;
}

static void test_identity(int expect_arenalloc) {
    begin("identity");
    int ours = allocator_is_arenalloc();
    printf("allocator: %s\n", ours ? "arenalloc" : "other");
    if (expect_arenalloc)
        CHECK(ours, "malloc_info(0, f) does not mention \"arenalloc\": the malloc in use is not arenalloc's");
    /* Memory that libc allocates internally must be freeable by the free we
     * call (a libc-internal malloc from another allocator would abort or
     * corrupt here). */
    char *s = strdup("interposition");
    CHECK(s && strcmp(s, "interposition") == 0, "strdup failed");
    CHECK(malloc_usable_size(s) >= strlen("interposition") + 1,
          "malloc_usable_size(strdup result) = %zu < %zu", malloc_usable_size(s),
          strlen("interposition") + 1);
    free(s);
    char *a = NULL;
    int len = asprintf(&a, "%s-%d-%0*d", "asprintf", 42, 3000, 7);
    CHECK(len == 3000 + 12 && a && a[len - 1] == '7', "asprintf returned %d", len);
    free(a);
    char *buf = NULL;
    size_t blen = 0;
    FILE *ms = open_memstream(&buf, &blen);
    CHECK(ms != NULL, "open_memstream failed");
    if (ms) {
        for (int i = 0; i < 20000; i++)
            fprintf(ms, "%d,", i);
        fclose(ms);
        CHECK(blen > 20000 && buf && strncmp(buf, "0,1,2,", 6) == 0,
              "open_memstream produced %zu bytes", blen);
        free(buf);
    }
}

static void test_malloc_zero(void) {
    begin("malloc(0)");
    enum { N = 1000 };
    void *ps[N];
    for (int i = 0; i < N; i++) {
        ps[i] = malloc(opaque(0));
        CHECK(ps[i] != NULL, "malloc(0) #%d returned NULL (glibc returns a unique pointer)", i);
        CHECK(aligned_to(ps[i], 16), "malloc(0) returned %p, not 16-byte aligned", ps[i]);
    }
    int dups = 0;
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            if (ps[i] && ps[i] == ps[j])
                dups++;
    CHECK(dups == 0, "malloc(0) returned the same pointer twice while both were live (%d pairs)", dups);
    for (int i = 0; i < N; i++)
        free(ps[i]);
    /* Freed zero-size blocks are reusable: a second round works. */
    for (int i = 0; i < N; i++) {
        void *p = malloc(opaque(0));
        CHECK(p != NULL, "malloc(0) after freeing returned NULL");
        free(p);
    }
}

static void test_free_null(void) {
    begin("free(NULL)");
    errno = 0;
    free(NULL);
    free(opaque(0) ? sink : NULL);
    CHECK(1, "unreachable");
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) = %zu, expected 0",
          malloc_usable_size(NULL));
}

static void test_realloc_null(void) {
    begin("realloc(NULL, n)");
    size_t sizes[] = {0, 1, 15, 16, 17, 100, 4096, 100000, 128 * KiB + 1, 3 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        unsigned char *p = realloc(NULL, opaque(n));
        CHECK(p != NULL, "realloc(NULL, %zu) returned NULL", n);
        if (!p)
            continue;
        CHECK(aligned_to(p, 16), "realloc(NULL, %zu) = %p not 16-byte aligned", n, (void *)p);
        CHECK(malloc_usable_size(p) >= n, "realloc(NULL, %zu): usable size %zu < %zu", n,
              malloc_usable_size(p), n);
        fill(p, 0, n, 1);
        CHECK(first_bad(p, 0, n, 1) == SIZE_MAX, "realloc(NULL, %zu): block not writable", n);
        free(p);
    }
}

static void test_realloc_zero(void) {
    begin("realloc(p, 0)");
    size_t sizes[] = {1, 16, 100, 1000, 64 * KiB, 128 * KiB + 1, 8 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        unsigned char *p = malloc(opaque(n));
        CHECK(p != NULL, "malloc(%zu) returned NULL", n);
        if (!p)
            continue;
        memset(p, 0x5a, n);
        size_t before = in_use();
        void *q = realloc(p, opaque(0));
        size_t after = in_use();
        CHECK(q == NULL, "realloc(p of %zu bytes, 0) returned %p, expected NULL (glibc frees and returns NULL)",
              n, q);
        if (q) {
            free(q);
            continue;
        }
        CHECK(before >= after + n,
              "realloc(p of %zu bytes, 0) did not free p: mallinfo2().uordblks %zu -> %zu (expected a drop of >= %zu)",
              n, before, after, n);
    }
    /* Aligned blocks too. */
    void *a = aligned_alloc(opaque(4096), opaque(5000));
    CHECK(a != NULL, "aligned_alloc(4096, 5000) returned NULL");
    CHECK(realloc(a, opaque(0)) == NULL, "realloc(aligned block, 0) did not return NULL");
    /* A leak would keep every block resident: 512 x 1 MiB touched. */
    const size_t rounds = 512, sz = MiB;
    size_t rss0 = rss_bytes();
    for (size_t i = 0; i < rounds; i++) {
        unsigned char *p = malloc(opaque(sz));
        if (!p) {
            CHECK(0, "malloc(1 MiB) failed in round %zu", i);
            break;
        }
        memset(p, (int)i, sz);
        void *q = realloc(p, opaque(0));
        if (q != NULL) {
            CHECK(0, "realloc(p, 0) returned non-NULL in round %zu", i);
            free(q);
        }
    }
    size_t rss1 = rss_bytes();
    CHECK(rss1 < rss0 + rounds * sz / 2,
          "RSS grew from %zu to %zu bytes over %zu rounds of malloc(%zu)+realloc(p,0): realloc(p,0) leaks",
          rss0, rss1, rounds, sz);
}

/* Sizes that can never be satisfied. */
static const size_t huge_sizes[] = {
    SIZE_MAX,
    SIZE_MAX - 1,
    SIZE_MAX - 15,
    SIZE_MAX - 4096,
    SIZE_MAX - 2 * 1024 * 1024,
    SIZE_MAX / 2 + 1,
    SIZE_MAX / 2,
    (size_t)PTRDIFF_MAX,
    (size_t)1 << 62,
    ((size_t)1 << 62) - 1,     /* arenalloc's MAX_ALLOC (isize::MAX / 2) */
    ((size_t)1 << 62) - 65536,
    (size_t)1 << 58, /* beyond any x86-64/aarch64 address space, below MAX_ALLOC */
    (size_t)1 << 57,
};
#define N_HUGE (sizeof huge_sizes / sizeof *huge_sizes)

static void test_huge(void) {
    begin("huge sizes -> NULL + ENOMEM");
    for (size_t i = 0; i < N_HUGE; i++) {
        size_t n = huge_sizes[i];
        errno = 0;
        void *p = malloc(opaque(n));
        CHECK(p == NULL && errno == ENOMEM, "malloc(%#zx) = %p, errno %d; expected NULL, ENOMEM (%d)", n, p,
              errno, ENOMEM);
        if (p)
            free(p);

        errno = 0;
        p = realloc(NULL, opaque(n));
        CHECK(p == NULL && errno == ENOMEM, "realloc(NULL, %#zx) = %p, errno %d; expected NULL, ENOMEM", n, p,
              errno);
        if (p)
            free(p);

        errno = 0;
        p = calloc(opaque(1), opaque(n));
        CHECK(p == NULL && errno == ENOMEM, "calloc(1, %#zx) = %p, errno %d; expected NULL, ENOMEM", n, p,
              errno);
        if (p)
            free(p);

        size_t aligns[] = {32, 4096, 2 * MiB};
        for (size_t k = 0; k < sizeof aligns / sizeof *aligns; k++) {
            size_t al = aligns[k];
            errno = 0;
            p = aligned_alloc(opaque(al), opaque(n));
            CHECK(p == NULL && errno == ENOMEM, "aligned_alloc(%zu, %#zx) = %p, errno %d; expected NULL, ENOMEM",
                  al, n, p, errno);
            if (p)
                free(p);
            errno = 0;
            p = memalign(opaque(al), opaque(n));
            CHECK(p == NULL && errno == ENOMEM, "memalign(%zu, %#zx) = %p, errno %d; expected NULL, ENOMEM", al,
                  n, p, errno);
            if (p)
                free(p);
            void *out = &out;
            int rc = posix_memalign(&out, opaque(al), opaque(n));
            CHECK(rc == ENOMEM, "posix_memalign(&p, %zu, %#zx) returned %d; expected ENOMEM (%d)", al, n, rc,
                  ENOMEM);
            if (rc == 0)
                free(out);
        }

        errno = 0;
        p = valloc(opaque(n));
        CHECK(p == NULL && errno == ENOMEM, "valloc(%#zx) = %p, errno %d; expected NULL, ENOMEM", n, p, errno);
        if (p)
            free(p);
        errno = 0;
        p = pvalloc(opaque(n));
        CHECK(p == NULL && errno == ENOMEM, "pvalloc(%#zx) = %p, errno %d; expected NULL, ENOMEM", n, p, errno);
        if (p)
            free(p);
    }
    /* Huge power-of-two alignments cannot be satisfied either. */
    size_t huge_aligns[] = {(size_t)1 << 58, (size_t)1 << 62, SIZE_MAX / 2 + 1};
    for (size_t k = 0; k < sizeof huge_aligns / sizeof *huge_aligns; k++) {
        size_t al = huge_aligns[k];
        errno = 0;
        void *p = aligned_alloc(opaque(al), opaque(16));
        CHECK(p == NULL && errno == ENOMEM, "aligned_alloc(%#zx, 16) = %p, errno %d; expected NULL, ENOMEM", al, p,
              errno);
        if (p)
            free(p);
        void *out = NULL;
        int rc = posix_memalign(&out, opaque(al), opaque(16));
        CHECK(rc == ENOMEM, "posix_memalign(&p, %#zx, 16) returned %d; expected ENOMEM", al, rc);
        if (rc == 0)
            free(out);
    }
    /* memalign: an alignment too large to round up to a power of two. */
    errno = 0;
    void *p = memalign(opaque(SIZE_MAX / 2 + 2), opaque(16));
    CHECK(p == NULL && errno == EINVAL, "memalign(SIZE_MAX/2+2, 16) = %p, errno %d; expected NULL, EINVAL", p,
          errno);
}

static void test_failed_realloc_keeps_block(void) {
    begin("failed realloc leaves the block intact");
    size_t sizes[] = {1, 100, 1000, 64 * KiB, 128 * KiB, 128 * KiB + 1, 1 * MiB, 5 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        unsigned char *p = malloc(opaque(n));
        CHECK(p != NULL, "malloc(%zu) returned NULL", n);
        if (!p)
            continue;
        fill(p, 0, n, 7);
        for (size_t k = 0; k < N_HUGE; k++) {
            size_t h = huge_sizes[k];
            errno = 0;
            void *q = realloc(p, opaque(h));
            CHECK(q == NULL && errno == ENOMEM, "realloc(p of %zu, %#zx) = %p, errno %d; expected NULL, ENOMEM",
                  n, h, q, errno);
            if (q) {
                p = q; /* keep going with whatever we got */
                continue;
            }
            size_t bad = first_bad(p, 0, n, 7);
            CHECK(bad == SIZE_MAX, "after failed realloc(p of %zu, %#zx) byte %zu of the old block changed", n,
                  h, bad);
            CHECK(malloc_usable_size(p) >= n, "after failed realloc(p of %zu, %#zx) usable size is %zu", n, h,
                  malloc_usable_size(p));
        }
        /* The old block is still a live, working block. */
        unsigned char *r = realloc(p, opaque(2 * n));
        CHECK(r != NULL, "realloc(p of %zu, %zu) after failed reallocs returned NULL", n, 2 * n);
        if (r) {
            size_t bad = first_bad(r, 0, n, 7);
            CHECK(bad == SIZE_MAX, "realloc(p of %zu, %zu) after failed reallocs lost byte %zu", n, 2 * n, bad);
            free(r);
        } else {
            free(p);
        }
    }
}

static void test_calloc(void) {
    begin("calloc overflow -> NULL + ENOMEM");
    struct {
        size_t n, size;
    } over[] = {
        {SIZE_MAX, SIZE_MAX},
        {SIZE_MAX / 2 + 1, 2},
        {2, SIZE_MAX / 2 + 1},
        {(size_t)1 << 32, (size_t)1 << 32},
        {((size_t)1 << 32) + 1, ((size_t)1 << 32) - 1 + 2},
        {SIZE_MAX / 16 + 1, 16},
        {3, SIZE_MAX / 3 + 1},
        {65537, SIZE_MAX / 65536},
    };
    for (size_t i = 0; i < sizeof over / sizeof *over; i++) {
        errno = 0;
        void *p = calloc(opaque(over[i].n), opaque(over[i].size));
        CHECK(p == NULL && errno == ENOMEM, "calloc(%#zx, %#zx) = %p, errno %d; expected NULL, ENOMEM", over[i].n,
              over[i].size, p, errno);
        if (p)
            free(p);
    }
    /* A product that does not overflow but is too big. */
    errno = 0;
    void *p = calloc(opaque((size_t)1 << 31), opaque((size_t)1 << 31));
    CHECK(p == NULL && errno == ENOMEM, "calloc(2^31, 2^31) = %p, errno %d; expected NULL, ENOMEM", p, errno);
    /* A zero product is fine whatever the other factor. */
    p = calloc(opaque(0), opaque(SIZE_MAX));
    CHECK(p != NULL, "calloc(0, SIZE_MAX) returned NULL (the product is 0; glibc returns a unique block)");
    free(p);
    p = calloc(opaque(SIZE_MAX), opaque(0));
    CHECK(p != NULL, "calloc(SIZE_MAX, 0) returned NULL (the product is 0; glibc returns a unique block)");
    free(p);

    begin("calloc memory is zero (fresh and reused dirty blocks)");
    size_t sizes[] = {1,          8,          16,         24,        100,      128,      1000,
                      1024,       4000,       4096,       10000,     32 * KiB, 64 * KiB, 100 * KiB,
                      128 * KiB,  128 * KiB + 1, 200 * KiB, 1 * MiB,  3 * MiB + 5, 16 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        size_t count = (8 * MiB) / n;
        if (count < 2)
            count = 2;
        if (count > 2000)
            count = 2000;
        unsigned char **ps = malloc(count * sizeof *ps);
        /* Fresh. */
        for (size_t k = 0; k < count; k++) {
            ps[k] = calloc(opaque(1), opaque(n));
            CHECK(ps[k] != NULL, "calloc(1, %zu) returned NULL", n);
            if (ps[k]) {
                size_t nz = first_nonzero(ps[k], n);
                CHECK(nz == SIZE_MAX, "calloc(1, %zu) #%zu: byte %zu is %#x, not 0", n, k, nz, ps[k][nz]);
            }
        }
        for (size_t k = 0; k < count; k++)
            free(ps[k]);
        /* Dirty every block over its whole usable size, free, calloc again:
         * the allocator hands back the same (dirty) memory. */
        for (size_t round = 0; round < 3; round++) {
            for (size_t k = 0; k < count; k++) {
                ps[k] = malloc(opaque(n));
                CHECK(ps[k] != NULL, "malloc(%zu) returned NULL", n);
                if (ps[k])
                    memset(ps[k], 0xa5, malloc_usable_size(ps[k]));
            }
            for (size_t k = 0; k < count; k++)
                free(ps[k]);
            for (size_t k = 0; k < count; k++) {
                /* Alternate the factors: count x size and size x count. */
                ps[k] = (k & 1) ? calloc(opaque(n), opaque(1)) : calloc(opaque(1), opaque(n));
                CHECK(ps[k] != NULL, "calloc(%zu) after dirty free returned NULL", n);
                if (ps[k]) {
                    size_t nz = first_nonzero(ps[k], n);
                    CHECK(nz == SIZE_MAX,
                          "calloc(%zu) reusing a dirtied block (round %zu, #%zu): byte %zu is %#x, not 0", n,
                          round, k, nz, ps[k][nz]);
                }
            }
            for (size_t k = 0; k < count; k++)
                free(ps[k]);
        }
        free(ps);
    }
    /* calloc(n, size) with n > 1 in the same classes as dirty mallocs. */
    for (int round = 0; round < 100; round++) {
        unsigned char *d = malloc(opaque(480));
        memset(d, 0xff, malloc_usable_size(d));
        free(d);
        unsigned char *c = calloc(opaque(30), opaque(16));
        size_t nz = c ? first_nonzero(c, 480) : 0;
        CHECK(c && nz == SIZE_MAX, "calloc(30, 16) after a dirty malloc(480): byte %zu not zero", nz);
        free(c);
    }
    /* A large dirty block grown by realloc (in place, or moved), dirtied,
     * freed, then calloc'ed. */
    for (int round = 0; round < 4; round++) {
        unsigned char *d = malloc(opaque(2 * MiB));
        memset(d, 0x55, 2 * MiB);
        unsigned char *e = realloc(d, opaque(7 * MiB));
        CHECK(e != NULL, "realloc(2 MiB -> 7 MiB) returned NULL");
        if (e) {
            memset(e, 0x44, malloc_usable_size(e));
            free(e);
        } else {
            free(d);
        }
        unsigned char *c = calloc(opaque(7), opaque(MiB));
        size_t nz = c ? first_nonzero(c, 7 * MiB) : 0;
        CHECK(c && nz == SIZE_MAX, "calloc(7, 1 MiB) after a dirty block grown 2 -> 7 MiB: byte %zu not zero", nz);
        free(c);
    }
    /* A large dirty block shrunk by realloc, freed, then calloc'ed bigger. */
    for (int round = 0; round < 4; round++) {
        unsigned char *d = malloc(opaque(6 * MiB));
        memset(d, 0x77, 6 * MiB);
        unsigned char *e = realloc(d, opaque(2 * MiB));
        CHECK(e != NULL, "realloc(6 MiB -> 2 MiB) returned NULL");
        if (e) {
            memset(e, 0x66, malloc_usable_size(e));
            free(e);
        } else {
            free(d);
        }
        unsigned char *c = calloc(opaque(1), opaque(5 * MiB));
        size_t nz = c ? first_nonzero(c, 5 * MiB) : 0;
        CHECK(c && nz == SIZE_MAX, "calloc(1, 5 MiB) after a dirty 6 MiB block shrunk to 2 MiB: byte %zu not zero",
              nz);
        free(c);
    }
}

static void test_reallocarray(void) {
    begin("reallocarray");
    struct {
        size_t n, size;
    } over[] = {
        {SIZE_MAX, SIZE_MAX},
        {SIZE_MAX / 2 + 1, 2},
        {(size_t)1 << 32, (size_t)1 << 32},
        {3, SIZE_MAX / 3 + 1},
    };
    size_t sizes[] = {10, 1000, 200 * KiB};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        size_t n = sizes[s];
        unsigned char *p = malloc(opaque(n));
        CHECK(p != NULL, "malloc(%zu) returned NULL", n);
        if (!p)
            continue;
        fill(p, 0, n, 3);
        for (size_t i = 0; i < sizeof over / sizeof *over; i++) {
            errno = 0;
            void *q = reallocarray(p, opaque(over[i].n), opaque(over[i].size));
            CHECK(q == NULL && errno == ENOMEM,
                  "reallocarray(p of %zu, %#zx, %#zx) = %p, errno %d; expected NULL, ENOMEM", n, over[i].n,
                  over[i].size, q, errno);
            if (q) {
                p = q;
                continue;
            }
            size_t bad = first_bad(p, 0, n, 3);
            CHECK(bad == SIZE_MAX, "after failed reallocarray(p of %zu, %#zx, %#zx) byte %zu changed", n,
                  over[i].n, over[i].size, bad);
        }
        unsigned char *q = reallocarray(p, opaque(n), opaque(3));
        CHECK(q != NULL, "reallocarray(p of %zu, %zu, 3) returned NULL", n, n);
        if (q) {
            size_t bad = first_bad(q, 0, n, 3);
            CHECK(bad == SIZE_MAX, "reallocarray(p of %zu, %zu, 3) lost byte %zu", n, n, bad);
            free(q);
        } else {
            free(p);
        }
    }
    errno = 0;
    void *q = reallocarray(NULL, opaque(SIZE_MAX / 2 + 1), opaque(4));
    CHECK(q == NULL && errno == ENOMEM, "reallocarray(NULL, SIZE_MAX/2+1, 4) = %p, errno %d; expected NULL, ENOMEM",
          q, errno);
    q = reallocarray(NULL, opaque(7), opaque(9));
    CHECK(q != NULL && malloc_usable_size(q) >= 63, "reallocarray(NULL, 7, 9) = %p", q);
    free(q);
}

static void test_posix_memalign_errors(void) {
    begin("posix_memalign: EINVAL returned, errno unchanged");
    size_t bad[] = {0,  1,  2,  4,   3,    5,    6,    12,   17,    24,     48,    100,
                    1000, 4095, 4097, 3 * 4096, (1 << 20) + 8, SIZE_MAX, SIZE_MAX / 2, (size_t)3 << 40};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (sizeof(void *) < 8 && bad[i] == 4)
            continue; /* 4 is a valid alignment on 32-bit targets */
        void *sentinel = &sentinel;
        void *out = sentinel;
        errno = 4242;
        int rc = posix_memalign(&out, opaque(bad[i]), opaque(64));
        int e = errno;
        CHECK(rc == EINVAL, "posix_memalign(&p, %zu, 64) returned %d; expected EINVAL (%d)", bad[i], rc, EINVAL);
        CHECK(e == 4242, "posix_memalign(&p, %zu, 64) changed errno to %d (must report errors by return value only)",
              bad[i], e);
        CHECK(out == sentinel, "posix_memalign(&p, %zu, 64) failed but wrote %p to *memptr", bad[i], out);
        if (rc == 0)
            free(out);
    }
    /* Success leaves errno alone too, and sizeof(void*) itself is valid. */
    size_t good[] = {sizeof(void *), 16, 64, 4096};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        void *out = NULL;
        errno = 4242;
        int rc = posix_memalign(&out, opaque(good[i]), opaque(100));
        CHECK(rc == 0 && out != NULL, "posix_memalign(&p, %zu, 100) returned %d, p=%p", good[i], rc, out);
        CHECK(errno == 4242, "successful posix_memalign(&p, %zu, 100) changed errno to %d", good[i], errno);
        CHECK(aligned_to(out, good[i] < 16 ? 16 : good[i]), "posix_memalign(&p, %zu, 100) = %p misaligned",
              good[i], out);
        free(out);
    }
    void *out = NULL;
    int rc = posix_memalign(&out, opaque(64), opaque(0));
    CHECK(rc == 0, "posix_memalign(&p, 64, 0) returned %d, expected 0", rc);
    if (rc == 0)
        free(out);
}

static void test_aligned_alloc_errors(void) {
    begin("aligned_alloc: not a power of two -> NULL + EINVAL");
    size_t bad[] = {0, 3, 5, 6, 12, 24, 48, 100, 1000, 4095, 4097, 3 * 4096, (1 << 20) + 8, SIZE_MAX, SIZE_MAX / 2};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        errno = 0;
        void *p = aligned_alloc(opaque(bad[i]), opaque(64));
        CHECK(p == NULL && errno == EINVAL, "aligned_alloc(%zu, 64) = %p, errno %d; expected NULL, EINVAL (%d)",
              bad[i], p, errno, EINVAL);
        if (p)
            free(p);
    }
    /* Small powers of two and sizes that are not multiples of the alignment
     * are accepted (as glibc). */
    size_t small[] = {1, 2, 4, 8};
    for (size_t i = 0; i < sizeof small / sizeof *small; i++) {
        void *p = aligned_alloc(opaque(small[i]), opaque(13));
        CHECK(p != NULL && aligned_to(p, 16), "aligned_alloc(%zu, 13) = %p", small[i], p);
        free(p);
    }
    void *p = aligned_alloc(opaque(256), opaque(1000));
    CHECK(p != NULL && aligned_to(p, 256), "aligned_alloc(256, 1000) = %p (size not a multiple of the alignment)",
          p);
    free(p);
}

static void test_memalign_valloc_pvalloc(void) {
    begin("memalign / valloc / pvalloc");
    size_t ps = page_size();
    /* memalign: any alignment; not a power of two is rounded up (glibc). */
    size_t aligns[] = {0, 1, 2, 3, 8, 16, 24, 48, 100, 4095, 4096, 5000, 65536, 100000};
    for (size_t i = 0; i < sizeof aligns / sizeof *aligns; i++) {
        size_t want = next_pow2(aligns[i]);
        if (want < 16)
            want = 16;
        unsigned char *p = memalign(opaque(aligns[i]), opaque(300));
        CHECK(p != NULL, "memalign(%zu, 300) returned NULL", aligns[i]);
        if (!p)
            continue;
        CHECK(aligned_to(p, want), "memalign(%zu, 300) = %p, not aligned to %zu", aligns[i], (void *)p, want);
        memset(p, 1, 300);
        free(p);
    }
    size_t sizes[] = {0, 1, 100, ps - 1, ps, ps + 1, 3 * ps + 5, 100 * KiB, 128 * KiB, 1 * MiB + 1};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        unsigned char *v = valloc(opaque(n));
        CHECK(v != NULL, "valloc(%zu) returned NULL", n);
        if (v) {
            CHECK(aligned_to(v, ps), "valloc(%zu) = %p, not page (%zu) aligned", n, (void *)v, ps);
            CHECK(malloc_usable_size(v) >= n, "valloc(%zu): usable size %zu", n, malloc_usable_size(v));
            memset(v, 2, n);
            free(v);
        }
        size_t rounded = n == 0 ? ps : (n + ps - 1) / ps * ps;
        unsigned char *pv = pvalloc(opaque(n));
        CHECK(pv != NULL, "pvalloc(%zu) returned NULL", n);
        if (pv) {
            CHECK(aligned_to(pv, ps), "pvalloc(%zu) = %p, not page (%zu) aligned", n, (void *)pv, ps);
            CHECK(malloc_usable_size(pv) >= rounded,
                  "pvalloc(%zu): usable size %zu < %zu (the size rounded up to whole pages%s)", n,
                  malloc_usable_size(pv), rounded, n == 0 ? "; pvalloc(0) gives one page" : "");
            /* The rounded size is the caller's to use. */
            if (malloc_usable_size(pv) >= rounded)
                memset(pv, 3, rounded);
            free(pv);
        }
    }
}

static void test_alignments(void) {
    begin("posix_memalign / aligned_alloc / memalign, alignments 16 B .. 4 MiB");
    for (size_t al = 16; al <= 4 * MiB; al <<= 1) {
        size_t sizes[] = {1, 8, al / 2, al - 1, al, al + 1, 2 * al + 16};
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            size_t n = sizes[si];
            for (int fn = 0; fn < 3; fn++) {
                const char *name = fn == 0 ? "posix_memalign" : fn == 1 ? "aligned_alloc" : "memalign";
                unsigned char *p = NULL;
                if (fn == 0) {
                    void *out = NULL;
                    int rc = posix_memalign(&out, opaque(al), opaque(n));
                    CHECK(rc == 0, "posix_memalign(&p, %zu, %zu) returned %d", al, n, rc);
                    p = out;
                } else if (fn == 1) {
                    p = aligned_alloc(opaque(al), opaque(n));
                } else {
                    p = memalign(opaque(al), opaque(n));
                }
                CHECK(p != NULL, "%s(%zu, %zu) returned NULL", name, al, n);
                if (!p)
                    continue;
                CHECK(aligned_to(p, al), "%s(%zu, %zu) = %p, not aligned to %zu", name, al, n, (void *)p, al);
                size_t u = malloc_usable_size(p);
                CHECK(u >= n, "%s(%zu, %zu): malloc_usable_size = %zu < %zu", name, al, n, u, n);
                if (u >= n) {
                    fill(p, 0, u, (unsigned)al);
                    size_t bad = first_bad(p, 0, u, (unsigned)al);
                    CHECK(bad == SIZE_MAX, "%s(%zu, %zu): byte %zu of usable %zu did not hold its value", name, al,
                          n, bad, u);
                }
                free(p);
            }
        }
        /* Several live at once: distinct, aligned, not overlapping. */
        enum { LIVE = 6 };
        unsigned char *live[LIVE];
        size_t n = al < 64 * KiB ? al + 8 : 100;
        for (int k = 0; k < LIVE; k++) {
            live[k] = aligned_alloc(opaque(al), opaque(n));
            CHECK(live[k] && aligned_to(live[k], al), "aligned_alloc(%zu, %zu) #%d = %p", al, n, k, (void *)live[k]);
            if (live[k])
                fill(live[k], 0, n, (unsigned)(al + k));
        }
        for (int k = 0; k < LIVE; k++) {
            if (!live[k])
                continue;
            size_t bad = first_bad(live[k], 0, n, (unsigned)(al + k));
            CHECK(bad == SIZE_MAX, "aligned_alloc(%zu, %zu) #%d: byte %zu overwritten by a neighbour", al, n, k, bad);
            free(live[k]);
        }
    }
    /* Beyond 4 MiB: POSIX sets no upper bound. */
    size_t big[] = {16 * MiB, 64 * MiB};
    for (size_t i = 0; i < sizeof big / sizeof *big; i++) {
        void *out = NULL;
        int rc = posix_memalign(&out, opaque(big[i]), opaque(1000));
        CHECK(rc == 0 && aligned_to(out, big[i]), "posix_memalign(&p, %zu, 1000) returned %d, p=%p", big[i], rc,
              out);
        if (rc == 0) {
            memset(out, 9, 1000);
            free(out);
        }
    }
}

static void test_malloc_alignment(void) {
    begin("every malloc/calloc/realloc result is 16-byte aligned");
    for (size_t n = 0; n <= 4096; n++) {
        void *p = malloc(opaque(n));
        CHECK(p != NULL && aligned_to(p, 16), "malloc(%zu) = %p, not 16-byte aligned", n, p);
        void *c = calloc(opaque(1), opaque(n));
        CHECK(c != NULL && aligned_to(c, 16), "calloc(1, %zu) = %p, not 16-byte aligned", n, c);
        void *r = realloc(p, opaque(n * 2 + 1));
        CHECK(r != NULL && aligned_to(r, 16), "realloc(p, %zu) = %p, not 16-byte aligned", n * 2 + 1, r);
        free(r ? r : p);
        free(c);
    }
    for (size_t n = 4097; n <= 40 * MiB; n += n / 7 + 13) {
        void *p = malloc(opaque(n));
        CHECK(p != NULL && aligned_to(p, 16), "malloc(%zu) = %p, not 16-byte aligned", n, p);
        free(p);
    }
    /* Many live at once, odd sizes. */
    enum { N = 20000 };
    void **ps = malloc(N * sizeof *ps);
    uint32_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 1103515245u + 12345u;
        size_t n = (x >> 8) % 3000;
        ps[i] = malloc(opaque(n));
        CHECK(ps[i] != NULL && aligned_to(ps[i], 16), "malloc(%zu) = %p, not 16-byte aligned", n, ps[i]);
    }
    for (int i = 0; i < N; i++)
        free(ps[i]);
    free(ps);
}

/* Allocates three blocks of size n, fills each one's whole usable size with
 * its own pattern, then checks all three: an overstated usable size would
 * overwrite a neighbour (or allocator metadata). */
static void usable_check(size_t n) {
    unsigned char *b[3];
    size_t u[3];
    for (int k = 0; k < 3; k++) {
        b[k] = malloc(opaque(n));
        CHECK(b[k] != NULL, "malloc(%zu) returned NULL", n);
        if (!b[k])
            return;
        u[k] = malloc_usable_size(b[k]);
        CHECK(u[k] >= n, "malloc_usable_size(malloc(%zu)) = %zu < %zu", n, u[k], n);
    }
    for (int k = 0; k < 3; k++)
        fill(b[k], 0, u[k], (unsigned)(n * 3 + k));
    for (int k = 0; k < 3; k++) {
        size_t bad = first_bad(b[k], 0, u[k], (unsigned)(n * 3 + k));
        CHECK(bad == SIZE_MAX,
              "malloc(%zu) block %d: byte %zu of its usable size %zu was overwritten by writing a neighbour's usable size",
              n, k, bad, u[k]);
    }
    for (int k = 0; k < 3; k++)
        free(b[k]);
}

static void test_usable_size(void) {
    begin("malloc_usable_size >= request, whole usable size writable");
    for (size_t n = 0; n <= 2048; n++)
        usable_check(n);
    for (size_t n = 2049; n <= 40 * MiB; n += n < 64 * KiB ? n / 11 + 1 : n / 3)
        usable_check(n);
    size_t edges[] = {64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 128 * KiB - 1, 128 * KiB, 128 * KiB + 1,
                      2 * MiB - 1,  2 * MiB,  2 * MiB + 1,  4 * MiB - 1,   4 * MiB,   4 * MiB + 1};
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++)
        usable_check(edges[i]);
    /* After realloc in place (shrink and grow). */
    unsigned char *p = malloc(opaque(1000));
    for (size_t n = 1000; n > 0; n = n * 3 / 4) {
        unsigned char *q = realloc(p, opaque(n));
        CHECK(q != NULL, "realloc(p, %zu) returned NULL", n);
        if (!q)
            break;
        p = q;
        size_t u = malloc_usable_size(p);
        CHECK(u >= n, "malloc_usable_size after realloc to %zu = %zu", n, u);
        memset(p, 0x3c, u);
    }
    free(p);
    /* Large blocks resized (in place where the mapping allows): the usable
     * size reported after each step is writable in full. */
    size_t steps[] = {10 * MiB, 5 * MiB, 20 * MiB, 200 * KiB, 129 * KiB, 100 * KiB, 3 * MiB, 3 * MiB + 1, 12 * MiB};
    p = NULL;
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        size_t n = steps[i];
        unsigned char *q = realloc(p, opaque(n));
        CHECK(q != NULL, "realloc(p, %zu) returned NULL", n);
        if (!q)
            break;
        p = q;
        size_t u = malloc_usable_size(p);
        CHECK(u >= n, "malloc_usable_size after realloc to %zu = %zu", n, u);
        if (u >= n) {
            fill(p, 0, u, 11);
            size_t bad = first_bad(p, 0, u, 11);
            CHECK(bad == SIZE_MAX, "after realloc to %zu: byte %zu of usable %zu did not hold its value", n, bad, u);
        }
    }
    free(p);
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) = %zu", malloc_usable_size(NULL));
}

static void test_sized_frees(void) {
    begin("cfree / free_sized / free_aligned_sized");
    CHECK(cfree != NULL, "cfree is not exported by the allocator in use");
    CHECK(free_sized != NULL, "free_sized is not exported by the allocator in use");
    CHECK(free_aligned_sized != NULL, "free_aligned_sized is not exported by the allocator in use");
    if (!cfree || !free_sized || !free_aligned_sized)
        return;
    free_sized(NULL, 0);
    free_aligned_sized(NULL, 64, 0);
    cfree(NULL);

    size_t sizes[] = {0, 1, 24, 1000, 5000, 100 * KiB, 200 * KiB, 3 * MiB};
    enum { COUNT = 64 };
    for (int fn = 0; fn < 3; fn++) {
        const char *name = fn == 0 ? "cfree" : fn == 1 ? "free_sized" : "free_aligned_sized";
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            size_t n = sizes[i];
            size_t al = 64 << (i % 8);
            void *ps[COUNT];
            size_t before = in_use();
            for (int k = 0; k < COUNT; k++) {
                ps[k] = fn == 2 ? aligned_alloc(opaque(al), opaque(n)) : malloc(opaque(n));
                if (ps[k])
                    memset(ps[k], k, n);
            }
            size_t held = in_use();
            for (int k = 0; k < COUNT; k++) {
                if (fn == 0)
                    cfree(ps[k]);
                else if (fn == 1)
                    free_sized(ps[k], n);
                else
                    free_aligned_sized(ps[k], al, n);
            }
            size_t after = in_use();
            CHECK(held >= before + COUNT * n, "%s: %d blocks of %zu: in use %zu -> %zu, expected growth >= %zu",
                  name, COUNT, n, before, held, COUNT * n);
            CHECK(held >= after + COUNT * n,
                  "%s did not free: %d blocks of %zu bytes, mallinfo2().uordblks %zu -> %zu (expected a drop >= %zu)",
                  name, COUNT, n, held, after, COUNT * n);
        }
    }
    /* The memory is reused: a leak would keep all of it resident. */
    const size_t rounds = 512, sz = MiB;
    size_t rss0 = rss_bytes();
    for (size_t i = 0; i < rounds; i++) {
        void *p = (i & 1) ? malloc(opaque(sz)) : aligned_alloc(opaque(4096), opaque(sz));
        if (!p)
            break;
        memset(p, 1, sz);
        if (i % 3 == 0)
            cfree(p);
        else if (i % 3 == 1)
            free_sized(p, sz);
        else
            free_aligned_sized(p, (i & 1) ? 16 : 4096, sz);
    }
    size_t rss1 = rss_bytes();
    CHECK(rss1 < rss0 + rounds * sz / 2, "RSS grew from %zu to %zu over %zu rounds of 1 MiB alloc + sized free",
          rss0, rss1, rounds);
}

static void test_trim(void) {
    begin("malloc_trim");
    int r = malloc_trim(0);
    CHECK(r == 0 || r == 1, "malloc_trim(0) returned %d, expected 0 or 1", r);
    r = malloc_trim(opaque(1 * MiB));
    CHECK(r == 0 || r == 1, "malloc_trim(1 MiB) returned %d, expected 0 or 1", r);
    /* Allocate and touch a lot, small, medium and large, then free it all. */
    enum { SMALL = 200000, MEDIUM = 2000, LARGE = 40 };
    void **s = malloc(SMALL * sizeof *s);
    void **m = malloc(MEDIUM * sizeof *m);
    void **l = malloc(LARGE * sizeof *l);
    for (int i = 0; i < SMALL; i++) {
        s[i] = malloc(opaque(100 + i % 200));
        if (s[i])
            memset(s[i], 1, 100);
    }
    for (int i = 0; i < MEDIUM; i++) {
        m[i] = malloc(opaque(20 * KiB + i));
        if (m[i])
            memset(m[i], 2, 20 * KiB);
    }
    for (int i = 0; i < LARGE; i++) {
        l[i] = malloc(opaque(2 * MiB + i * 4096));
        if (l[i])
            memset(l[i], 3, 2 * MiB);
    }
    for (int i = 0; i < SMALL; i++)
        free(s[i]);
    for (int i = 0; i < MEDIUM; i++)
        free(m[i]);
    for (int i = 0; i < LARGE; i++)
        free(l[i]);
    free(s);
    free(m);
    free(l);
    r = malloc_trim(0);
    CHECK(r == 1, "malloc_trim(0) after freeing ~150 MB returned %d, expected 1 (memory was released)", r);
    r = malloc_trim(0);
    CHECK(r == 0 || r == 1, "second malloc_trim(0) returned %d, expected 0 or 1", r);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static void test_mallinfo(void) {
    begin("mallinfo / mallinfo2");
    /* 10 MB as small blocks, then as large blocks. */
    struct {
        size_t count, size;
    } shapes[] = {{10000, 1000}, {10, 1000 * 1000}, {160, 64000}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        size_t count = shapes[s].count, n = shapes[s].size, total = count * n;
        void **ps = malloc(count * sizeof *ps);
        struct mallinfo2 a2 = mallinfo2();
        struct mallinfo a1 = mallinfo();
        for (size_t i = 0; i < count; i++) {
            ps[i] = malloc(opaque(n));
            if (ps[i])
                memset(ps[i], 1, n);
        }
        struct mallinfo2 b2 = mallinfo2();
        struct mallinfo b1 = mallinfo();
        CHECK(b2.uordblks >= a2.uordblks + total,
              "mallinfo2().uordblks after allocating %zu x %zu bytes: %zu -> %zu, expected growth >= %zu", count, n,
              a2.uordblks, b2.uordblks, total);
        CHECK((size_t)b1.uordblks >= (size_t)a1.uordblks + total,
              "mallinfo().uordblks after allocating %zu x %zu bytes: %d -> %d, expected growth >= %zu", count, n,
              a1.uordblks, b1.uordblks, total);
        CHECK(b2.arena + b2.hblkhd >= b2.uordblks,
              "mallinfo2: arena %zu + hblkhd %zu < uordblks %zu (more in use than mapped)", b2.arena, b2.hblkhd,
              b2.uordblks);
        for (size_t i = 0; i < count; i++)
            free(ps[i]);
        struct mallinfo2 c2 = mallinfo2();
        struct mallinfo c1 = mallinfo();
        CHECK(b2.uordblks >= c2.uordblks + total,
              "mallinfo2().uordblks after freeing %zu x %zu bytes: %zu -> %zu, expected a drop >= %zu", count, n,
              b2.uordblks, c2.uordblks, total);
        CHECK((size_t)b1.uordblks >= (size_t)c1.uordblks + total,
              "mallinfo().uordblks after freeing %zu x %zu bytes: %d -> %d, expected a drop >= %zu", count, n,
              b1.uordblks, c1.uordblks, total);
        free(ps);
    }
}
#pragma GCC diagnostic pop

static void test_malloc_stats(void) {
    begin("malloc_stats");
    fflush(stderr);
    FILE *cap = tmpfile();
    CHECK(cap != NULL, "tmpfile failed");
    if (!cap)
        return;
    int saved = dup(2);
    dup2(fileno(cap), 2);
    malloc_stats();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(cap);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, cap);
    buf[n] = 0;
    fclose(cap);
    int digits = 0;
    for (size_t i = 0; i < n; i++)
        digits += buf[i] >= '0' && buf[i] <= '9';
    CHECK(n > 0 && digits > 0, "malloc_stats() printed %zu bytes to stderr (%d digits); expected a summary", n,
          digits);
    /* Show what it printed, for the log. */
    printf("%s", buf);
}

static void test_mallopt(void) {
    begin("mallopt");
    struct {
        int param, value;
        const char *name;
    } known[] = {
        {M_MMAP_THRESHOLD, 1 << 20, "M_MMAP_THRESHOLD"}, {M_TRIM_THRESHOLD, 1 << 20, "M_TRIM_THRESHOLD"},
        {M_TOP_PAD, 1 << 16, "M_TOP_PAD"},               {M_MMAP_MAX, 1 << 16, "M_MMAP_MAX"},
        {M_ARENA_MAX, 4, "M_ARENA_MAX"},                 {M_ARENA_TEST, 8, "M_ARENA_TEST"},
        {M_MXFAST, 64, "M_MXFAST"},                      {M_CHECK_ACTION, 3, "M_CHECK_ACTION"},
        {M_PERTURB, 0, "M_PERTURB"},
    };
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        int r = mallopt(known[i].param, known[i].value);
        CHECK(r == 1, "mallopt(%s=%d, %d) returned %d, expected 1", known[i].name, known[i].param, known[i].value, r);
    }
    int unknown[] = {12345, -100, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
        int r = mallopt(unknown[i], 1);
        CHECK(r == 0, "mallopt(%d (unknown), 1) returned %d, expected 0", unknown[i], r);
    }
    /* Allocation still works after tuning. */
    void *p = malloc(opaque(3 * MiB));
    CHECK(p != NULL, "malloc after mallopt failed");
    free(p);
}

static void test_realloc_growth(void) {
    begin("realloc growth 1 B -> 64 MiB keeps every byte");
    unsigned char *p = malloc(opaque(1));
    CHECK(p != NULL, "malloc(1) returned NULL");
    if (!p)
        return;
    const unsigned seed = 99;
    size_t size = 1;
    p[0] = pat(0, seed);
    size_t steps = 0;
    while (size < 64 * MiB) {
        size_t next = size < 5000 ? size + 1 : size + size / 8;
        if (next > 64 * MiB)
            next = 64 * MiB;
        unsigned char *q = realloc(p, opaque(next));
        CHECK(q != NULL, "realloc(p, %zu -> %zu) returned NULL", size, next);
        if (!q)
            break;
        p = q;
        CHECK(aligned_to(p, 16), "realloc(p, %zu) = %p not 16-byte aligned", next, (void *)p);
        size_t bad = first_bad(p, 0, size, seed);
        if (bad != SIZE_MAX) {
            CHECK(0, "realloc(p, %zu -> %zu): byte %zu is %#x, expected %#x", size, next, bad, p[bad],
                  pat(bad, seed));
            fill(p, 0, size, seed); /* resynchronise to find later faults */
        } else {
            passed++;
        }
        fill(p, size, next, seed);
        size = next;
        steps++;
    }
    /* And back down. */
    while (size > 1) {
        size_t next = size > 5000 ? size - size / 5 : size - 1;
        unsigned char *q = realloc(p, opaque(next));
        CHECK(q != NULL, "realloc(p, %zu -> %zu) (shrink) returned NULL", size, next);
        if (!q)
            break;
        p = q;
        size_t bad = first_bad(p, 0, next, seed);
        if (bad != SIZE_MAX) {
            CHECK(0, "shrinking realloc(p, %zu -> %zu): byte %zu is %#x, expected %#x", size, next, bad, p[bad],
                  pat(bad, seed));
            fill(p, 0, next, seed);
        } else {
            passed++;
        }
        size = next;
        steps++;
    }
    free(p);
    printf("%zu realloc steps\n", steps);
    /* Several blocks grown in turn, so each one's neighbour is taken and a
     * block cannot always grow where it is: it has to move. */
    enum { RR = 8 };
    unsigned char *rr[RR] = {0};
    size_t rr_size[RR] = {0};
    for (int k = 0; k < RR; k++) {
        rr_size[k] = 100 * KiB + (size_t)k * 4096;
        rr[k] = malloc(opaque(rr_size[k]));
        CHECK(rr[k] != NULL, "malloc(%zu) returned NULL", rr_size[k]);
        if (rr[k])
            fill(rr[k], 0, rr_size[k], 200 + k);
    }
    for (int step = 0; step < 10; step++) {
        for (int k = 0; k < RR; k++) {
            if (!rr[k])
                continue;
            size_t next = rr_size[k] + rr_size[k] / 2 + 4096 * (size_t)k + 1;
            unsigned char *q = realloc(rr[k], opaque(next));
            CHECK(q != NULL, "realloc(block %d, %zu -> %zu) returned NULL", k, rr_size[k], next);
            if (!q)
                continue;
            size_t bad = first_bad(q, 0, rr_size[k], 200 + k);
            CHECK(bad == SIZE_MAX, "realloc(block %d, %zu -> %zu) (neighbours in the way): byte %zu lost", k,
                  rr_size[k], next, bad);
            fill(q, rr_size[k], next, 200 + k);
            rr[k] = q;
            rr_size[k] = next;
        }
    }
    for (int k = 0; k < RR; k++) {
        if (!rr[k])
            continue;
        size_t bad = first_bad(rr[k], 0, rr_size[k], 200 + k);
        CHECK(bad == SIZE_MAX, "block %d of %zu bytes grown among neighbours: byte %zu changed later", k, rr_size[k],
              bad);
        free(rr[k]);
    }
    /* Aligned blocks keep their contents through realloc too. */
    size_t aligns[] = {64, 4096, 64 * KiB, 2 * MiB};
    for (size_t i = 0; i < sizeof aligns / sizeof *aligns; i++) {
        unsigned char *a = memalign(opaque(aligns[i]), opaque(3000));
        if (!a) {
            CHECK(0, "memalign(%zu, 3000) returned NULL", aligns[i]);
            continue;
        }
        fill(a, 0, 3000, 5);
        unsigned char *b = realloc(a, opaque(3 * MiB));
        CHECK(b != NULL, "realloc(memalign(%zu, 3000), 3 MiB) returned NULL", aligns[i]);
        if (b) {
            size_t bad = first_bad(b, 0, 3000, 5);
            CHECK(bad == SIZE_MAX, "realloc(memalign(%zu, 3000), 3 MiB) lost byte %zu", aligns[i], bad);
            free(b);
        } else {
            free(a);
        }
    }
}

int main(int argc, char **argv) {
    int expect_arenalloc = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--expect-arenalloc") == 0) {
            expect_arenalloc = 1;
        } else if (strcmp(argv[i], "--identify-only") == 0) {
            printf("allocator: %s\n", allocator_is_arenalloc() ? "arenalloc" : "other");
            return 0;
        } else {
            fprintf(stderr, "usage: %s [--expect-arenalloc | --identify-only]\n", argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    t_start = seconds();

    test_identity(expect_arenalloc);
    test_malloc_zero();
    test_free_null();
    test_realloc_null();
    test_realloc_zero();
    test_huge();
    test_failed_realloc_keeps_block();
    test_calloc();
    test_reallocarray();
    test_posix_memalign_errors();
    test_aligned_alloc_errors();
    test_memalign_valloc_pvalloc();
    test_alignments();
    test_malloc_alignment();
    test_usable_size();
    test_sized_frees();
    test_trim();
    test_mallinfo();
    test_malloc_stats();
    test_mallopt();
    test_realloc_growth();

    printf("total time %.2f s\n", seconds() - t_start);
    printf("%lu passed, %lu failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
