/*
 * Helpers every drop-in workload uses: failing with a message, the scale
 * argument, a deterministic PRNG (xorshift64*), and a byte pattern written
 * into each block when it is allocated and checked before it is freed, so
 * an allocator that hands out overlapping or corrupted blocks is caught.
 * The including file defines BENCH_NAME first.
 */
#ifndef DROPIN_COMMON_H
#define DROPIN_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Starts a thread's own state (its counters, written in its hot loop) on a
 * 128-byte boundary: two cache lines, the pair Intel's adjacent-line
 * prefetcher fetches together. Without it two threads' counters in one
 * array shared a line in some runs and not in others (wherever the stack or
 * data segment put the array), and every allocator's two-thread times
 * changed by up to 2x from run to run with it.
 */
#define THREAD_OWNED _Alignas(128)
/* Put after the type of a thread's own state: the build fails unless the
 * type is 128-byte aligned (THREAD_OWNED on a member). A member that another
 * thread writes gets THREAD_OWNED of its own and an offsetof assert. */
#define ASSERT_THREAD_OWNED(type) \
    _Static_assert(_Alignof(type) >= 128, #type " must start with THREAD_OWNED")

static void die(const char *msg)
{
    fprintf(stderr, BENCH_NAME ": error: %s\n", msg);
    exit(1);
}

static long parse_scale(int argc, char **argv)
{
    if (argc < 2)
        return 1;
    char *end;
    long s = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || s < 1 || s > 100000) {
        fprintf(stderr, "usage: %s [scale >= 1]\n", argv[0]);
        exit(2);
    }
    return s;
}

/* xorshift64* */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline uint64_t rng_range(uint64_t *s, uint64_t lo, uint64_t hi)
{
    return lo + rng_next(s) % (hi - lo + 1);
}

/* Write a recognisable pattern derived from v: first byte, 8 bytes after it
 * (if room), one byte per 4 KiB page and the last byte. */
static inline void stamp(unsigned char *p, size_t n, uint64_t v)
{
    p[0] = (unsigned char)v;
    if (n >= 10)
        memcpy(p + 1, &v, 8);
    for (size_t off = 4096; off + 1 < n; off += 4096)
        p[off] = (unsigned char)(v >> 16);
    p[n - 1] = (unsigned char)(v >> 8);
}

static inline void verify(const unsigned char *p, size_t n, uint64_t v)
{
    int ok;
    if (n == 1) {
        ok = p[0] == (unsigned char)(v >> 8);
    } else {
        ok = p[0] == (unsigned char)v && p[n - 1] == (unsigned char)(v >> 8);
        if (ok && n >= 10)
            ok = memcmp(p + 1, &v, 8) == 0;
        for (size_t off = 4096; ok && off + 1 < n; off += 4096)
            ok = p[off] == (unsigned char)(v >> 16);
    }
    if (!ok)
        die("block contents corrupted");
}

#endif
