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

/* glibc extensions, as glibc declares them in <malloc.h>. */
size_t malloc_usable_size(void *ptr);
int malloc_trim(size_t pad); /* 1 if memory was returned to the OS, else 0 */
void malloc_stats(void);
int malloc_info(int options, FILE *stream);
int mallopt(int param, int value); /* accepted, no effect on arenalloc */

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
void *malloc_arena_malloc(arena_hd *arena, size_t size);
void *malloc_arena_calloc(arena_hd *arena, size_t count, size_t size);
void *malloc_arena_aligned_alloc(arena_hd *arena, size_t alignment, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* ARENALLOC_H */
