/* A shared library for the library-routing tests (tests/library_routing.rs):
 * it allocates every way a real library does, so each path can be checked to
 * land in the library's own arena. Built twice: bound lazily without RELRO,
 * and bound at load with full RELRO (-z now), where its GOT is read-only. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A data word initialised to malloc's address (an R_X86_64_64 relocation;
 * exported so the compiler cannot fold it into a direct call). */
void *(*routed_lib_stored_malloc)(size_t) = malloc;
static void *constructor_block;

__attribute__((constructor)) static void allocate_at_load(void) {
    constructor_block = malloc(100);
}

void *routed_lib_constructor_block(void) { return constructor_block; }
void *routed_lib_malloc(size_t n) { return malloc(n); }
void *routed_lib_calloc(size_t n) { return calloc(n, 1); }
void *routed_lib_realloc(void *p, size_t n) { return realloc(p, n); }
void *routed_lib_aligned(size_t n) { return aligned_alloc(256, n); }
void *routed_lib_posix_memalign(size_t n) {
    void *p = NULL;
    return posix_memalign(&p, 64, n) == 0 ? p : NULL;
}
char *routed_lib_strdup(const char *s) { return strdup(s); }
char *routed_lib_strndup(const char *s, size_t n) { return strndup(s, n); }
char *routed_lib_asprintf(int value) {
    char *out = NULL;
    return asprintf(&out, "value %d %s", value, "formatted") >= 0 ? out : NULL;
}
void *routed_lib_via_stored_pointer(size_t n) { return routed_lib_stored_malloc(n); }

/* The address taken at run time (a GLOB_DAT GOT entry), called through a
 * volatile pointer so the compiler cannot turn it back into a direct call. */
void *routed_lib_via_taken_pointer(size_t n) {
    void *(*volatile taken)(size_t) = &malloc;
    return taken(n);
}

/* A block allocated by a thread the library starts. */
static void *thread_body(void *size) { return malloc((size_t)size); }
void *routed_lib_from_thread(size_t n) {
    pthread_t thread;
    void *block = NULL;
    if (pthread_create(&thread, NULL, thread_body, (void *)n) != 0)
        return NULL;
    pthread_join(thread, &block);
    return block;
}

/* One line read with getline from `in` (closed after), or NULL. */
static char *read_line(FILE *in) {
    if (!in)
        return NULL;
    char *line = NULL;
    size_t size = 0;
    ssize_t got = getline(&line, &size, in);
    fclose(in);
    if (got < 0) {
        free(line);
        return NULL;
    }
    return line;
}

/* The buffer getline allocates on the library's behalf. */
char *routed_lib_getline(const char *text) {
    return read_line(fmemopen((void *)text, strlen(text), "r"));
}

/* Reads a line from `fd` with getline, which blocks in read(), a
 * cancellation point, inside the routed getline: a thread cancelled there
 * unwinds through the stand-in. */
char *routed_lib_getline_fd(int fd) { return read_line(fdopen(fd, "r")); }
