/* arenalloc: the C interface.
 *
 * libarenalloc.so (LD_PRELOAD) and libarenalloc.a export the standard
 * malloc family (<stdlib.h>, <malloc.h>) with glibc's contract. This header
 * declares what the system headers may lack.
 */
#ifndef ARENALLOC_H
#define ARENALLOC_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* C23 sized deallocation; the size and alignment are not needed by arenalloc. */
void free_sized(void *ptr, size_t size);
void free_aligned_sized(void *ptr, size_t alignment, size_t size);

/* glibc extensions: malloc_usable_size, malloc_trim (1 if memory was
 * returned to the OS, else 0), malloc_stats, malloc_info, mallopt (accepted,
 * no effect on arenalloc). On glibc, from <malloc.h> itself, so that C++
 * sees one declaration with glibc's exception specification. */
#if defined(__GLIBC__)
#include <malloc.h>
#else
size_t malloc_usable_size(void *ptr);
int malloc_trim(size_t pad);
void malloc_stats(void);
int malloc_info(int options, FILE *stream);
int mallopt(int param, int value);
#endif

/* Dedicated arenas. An arena is a separate set of memory: blocks of two
 * arenas never share a page, so an arena's freed memory can go back to the
 * OS even while another arena keeps long-lived blocks. Handles are checked:
 * a stale or made-up one is refused with EINVAL, never dereferenced.
 *
 *   arena_hd *lib = malloc_new_arena();          // NULL + errno on failure
 *   arena_hd *previous = malloc_set_arena(lib);  // this thread now allocates in lib
 *   library_call();
 *   malloc_set_arena(previous);                  // restore
 *
 * free() and realloc() of a block, from any thread, keep it in the arena
 * that owns it.
 */
typedef struct arena_hd arena_hd;

arena_hd *malloc_new_arena(void);
arena_hd *malloc_set_arena(arena_hd *arena); /* returns the previous arena */
arena_hd *malloc_get_arena(void);
arena_hd *malloc_default_arena(void);
/* The arena that owns `ptr` (any address inside one of its blocks or
 * mappings), or NULL for memory that is not arenalloc's (and for NULL). */
arena_hd *malloc_arena_of(const void *ptr);
void *malloc_arena_malloc(arena_hd *arena, size_t size);
void *malloc_arena_calloc(arena_hd *arena, size_t count, size_t size);
void *malloc_arena_aligned_alloc(arena_hd *arena, size_t alignment, size_t size);

/* Frees every block of the arena at once and returns its memory to the OS.
 * Threads that prefer it fall back to the default arena; the handle (and
 * every copy of it) is refused from now on. No block of the arena may be
 * used afterwards, and no other thread may allocate in, free to or switch
 * to the arena while this runs. 0, or -1 with errno EINVAL for the default
 * arena or a stale or foreign handle, EBUSY for a routed library's arena. */
int malloc_arena_destroy(arena_hd *arena);

/* Returns the arena's free memory to the OS now: 1 if memory was released,
 * 0 if there was nothing to release, -1 (EINVAL) for a bad handle. */
int malloc_arena_trim(arena_hd *arena);

struct malloc_arena_stats {
    size_t live_bytes;        /* bytes in live blocks (usable sizes) */
    size_t live_blocks;       /* live blocks */
    size_t resident_bytes;    /* bytes of the arena's mappings in RAM now */
    size_t mapped_bytes;      /* bytes the arena has mapped */
    size_t in_use_bytes;      /* spans holding blocks + large blocks: what the limit counts */
    size_t peak_in_use_bytes; /* most in_use_bytes ever: peak live bytes, rounded up to spans */
    size_t limit_bytes;       /* 0: no limit */
    size_t threads;           /* threads whose preferred arena this is */
    size_t pending_remote_spans; /* spans holding blocks other threads freed, not yet
                                    collected (they count as live and in use until then;
                                    an allocation refused for the limit collects them) */
};

/* Fills the first `out_size` bytes of `*out` (at most the whole struct of
 * this library's version): 0, or -1 (EINVAL) for a bad handle, a NULL out or
 * an `out_size` of 0. New fields are only ever added at the end, so a
 * program built against an older header gets the fields it knows. */
int malloc_arena_stats_sized(arena_hd *arena, struct malloc_arena_stats *out, size_t out_size);

/* The same for the fields up to `threads` only: what programs built before
 * `pending_remote_spans` was added expect of this symbol. Code compiled
 * against this header calls `malloc_arena_stats_sized` through the macro
 * below, with its struct's size. */
int malloc_arena_stats(arena_hd *arena, struct malloc_arena_stats *out);
#define malloc_arena_stats(arena, out) \
    malloc_arena_stats_sized((arena), (out), sizeof(struct malloc_arena_stats))

/* Past `bytes` in use, allocations in the arena fail with NULL and ENOMEM.
 * 0 removes the limit. 0, or -1 (EINVAL) for a bad handle. */
int malloc_arena_set_limit(arena_hd *arena, size_t bytes);

/* Library arenas with no code change: every loaded shared object whose file
 * name (or path, for a pattern containing '/') matches the glob `pattern`,
 * and every one loaded later, gets an arena of its own, and what its code
 * allocates goes there from every thread: through malloc and its family,
 * through a function pointer to them it stored, and through the C library's
 * allocating functions (strdup, asprintf, getline, fopen, ...). Blocks are
 * freed as usual, by anyone. The environment variable
 * ARENALLOC_LIBRARY_ARENAS=pattern,pattern does the same at start-up.
 * Returns how many loaded objects the pattern names now (0 is not an error:
 * a later dlopen may match), or -1 with errno EINVAL (NULL, empty or longer
 * than 255 bytes), ENOSPC (more than 16 patterns) or ENOTSUP (this library
 * is not the process's malloc). */
int malloc_route_library(const char *pattern);

#ifdef __cplusplus
}
#endif

#endif /* ARENALLOC_H */
