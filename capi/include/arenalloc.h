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

#ifdef __cplusplus
}
#endif

#endif /* ARENALLOC_H */
