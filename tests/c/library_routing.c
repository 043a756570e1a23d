/* Drives tests/c/routed_lib.c under libarenalloc.so (tests/library_routing.rs).
 *
 *   library_routing startup      linked against the test library; run with
 *                                ARENALLOC_LIBRARY_ARENAS naming it
 *   library_routing unset        the same binary without the variable
 *   library_routing dlopen PATH  opens the library after start-up (the
 *                                variable set), closes and reopens it
 *   library_routing api PATH     no variable: opens the library, then routes
 *                                it with malloc_route_library
 *   library_routing hooks PATH   the variable set: the program replaces the
 *                                library's stored malloc pointer with its own
 *                                hook; a later rescan must leave the hook
 *   library_routing cxx PATH     the variable set: opens the C++ library with
 *                                RTLD_LOCAL; its `new` is routed and a
 *                                bad_alloc thrown through it leaves the
 *                                thread's arena as it was
 *   library_routing cancel PATH  the variable set: a thread cancelled while
 *                                the library blocks in the routed getline
 *                                unwinds through its stand-in, which must
 *                                switch the thread's arena back
 *
 * Every block the library allocates must be in one arena that is neither the
 * default arena nor NULL (or, unset, in the default arena); the program's
 * own blocks stay in the default arena. Prints "N passed, M failed". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../capi/include/arenalloc.h"
#include "check.h"

struct library {
    void *(*constructor_block)(void);
    void *(*malloc_)(size_t);
    void *(*calloc_)(size_t);
    void *(*realloc_)(void *, size_t);
    void *(*aligned)(size_t);
    void *(*posix_memalign_)(size_t);
    char *(*strdup_)(const char *);
    char *(*strndup_)(const char *, size_t);
    char *(*asprintf_)(int);
    void *(*via_stored_pointer)(size_t);
    void *(*via_taken_pointer)(size_t);
    void *(*from_thread)(size_t);
    char *(*getline_)(const char *);
};

static void *symbol(void *handle, const char *name) {
    void *f = dlsym(handle, name);
    if (!f) {
        printf("FATAL: %s not found: %s\n", name, dlerror());
        exit(2);
    }
    return f;
}

/* The library at `path`, opened with `flags`; exits if it cannot be. */
static void *open_library(const char *path, int flags) {
    void *handle = dlopen(path, flags);
    if (!handle) {
        printf("FATAL: dlopen %s: %s\n", path, dlerror());
        exit(2);
    }
    return handle;
}

static struct library bind(void *handle) {
    struct library lib;
    lib.constructor_block = symbol(handle, "routed_lib_constructor_block");
    lib.malloc_ = symbol(handle, "routed_lib_malloc");
    lib.calloc_ = symbol(handle, "routed_lib_calloc");
    lib.realloc_ = symbol(handle, "routed_lib_realloc");
    lib.aligned = symbol(handle, "routed_lib_aligned");
    lib.posix_memalign_ = symbol(handle, "routed_lib_posix_memalign");
    lib.strdup_ = symbol(handle, "routed_lib_strdup");
    lib.strndup_ = symbol(handle, "routed_lib_strndup");
    lib.asprintf_ = symbol(handle, "routed_lib_asprintf");
    lib.via_stored_pointer = symbol(handle, "routed_lib_via_stored_pointer");
    lib.via_taken_pointer = symbol(handle, "routed_lib_via_taken_pointer");
    lib.from_thread = symbol(handle, "routed_lib_from_thread");
    lib.getline_ = symbol(handle, "routed_lib_getline");
    return lib;
}

/* Checks that every way the library allocates lands in `expected` (NULL:
 * one arena, neither default nor NULL, which is returned). Frees the blocks
 * from here, the application, as a user would. */
static arena_hd *check_library(struct library lib, arena_hd *expected, int constructor_too) {
    arena_hd *deflt = malloc_default_arena();
    void *blocks[16];
    const char *what[16];
    int n = 0;
#define TAKE(expr)             \
    do {                       \
        what[n] = #expr;       \
        blocks[n++] = (expr);  \
    } while (0)
    if (constructor_too)
        TAKE(lib.constructor_block());
    TAKE(lib.malloc_(40));
    TAKE(lib.malloc_(300000)); /* a large block: its own mapping */
    TAKE(lib.calloc_(64));
    TAKE(lib.realloc_(NULL, 72));
    TAKE(lib.aligned(512));
    TAKE(lib.posix_memalign_(96));
    TAKE(lib.strdup_("a string the library copies"));
    TAKE(lib.strndup_("a string the library copies", 8));
    TAKE(lib.asprintf_(42));
    TAKE(lib.via_stored_pointer(48));
    TAKE(lib.via_taken_pointer(56));
    TAKE(lib.from_thread(64));
    TAKE(lib.getline_("first line\nsecond\n"));
#undef TAKE
    arena_hd *arena = expected;
    for (int i = 0; i < n; i++) {
        CHECK(blocks[i] != NULL, "%s returned NULL", what[i]);
        if (!blocks[i])
            continue;
        arena_hd *owner = malloc_arena_of(blocks[i]);
        if (arena == NULL) {
            CHECK(owner != NULL && owner != deflt,
                  "%s: block %p is in arena %p; expected a routed arena (default is %p)",
                  what[i], blocks[i], (void *)owner, (void *)deflt);
            arena = owner;
        } else {
            CHECK(owner == arena, "%s: block %p is in arena %p, expected %p", what[i], blocks[i],
                  (void *)owner, (void *)arena);
        }
    }
    /* A block the library reallocates moves or grows within its arena. */
    void *grown = lib.realloc_(lib.malloc_(24), 100000);
    CHECK(grown && malloc_arena_of(grown) == arena, "realloc by the library left its arena");
    free(grown);
    for (int i = 0; i < n; i++)
        free(blocks[i]);
    return arena;
}

static void check_application_blocks(void) {
    arena_hd *deflt = malloc_default_arena();
    void *mine = malloc(40);
    char *copy = strdup("the application's own string");
    CHECK(malloc_arena_of(mine) == deflt, "the application's malloc left the default arena");
    CHECK(malloc_arena_of(copy) == deflt, "the application's strdup left the default arena");
    free(mine);
    free(copy);
}

static int counted;
static void *counting_malloc(size_t n) {
    counted++;
    return malloc(n);
}

/* Mode cancel: the reader thread's arena as its cleanup handler sees it,
 * after the cancellation has unwound through the routed getline. */
static int reader_pipe[2];
static arena_hd *arena_at_cleanup;
static int cleanup_ran;

static void record_arena(void *unused) {
    (void)unused;
    arena_at_cleanup = malloc_get_arena();
    cleanup_ran = 1;
}

static void *blocked_reader(void *getline_fd) {
    char *(*read_line)(int) = (char *(*)(int))getline_fd;
    pthread_cleanup_push(record_arena, NULL);
    /* Never returns: the pipe stays empty until the thread is cancelled. */
    free(read_line(reader_pipe[0]));
    pthread_cleanup_pop(0);
    return NULL;
}

/* Defined by the test library when linked at start-up (mode startup). */
extern void *routed_lib_constructor_block(void) __attribute__((weak));

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "startup") == 0 || strcmp(mode, "unset") == 0) {
        section = mode;
        if (!routed_lib_constructor_block) {
            printf("FATAL: built without the test library\n");
            return 2;
        }
        struct library lib = bind(RTLD_DEFAULT);
        if (strcmp(mode, "startup") == 0)
            check_library(lib, NULL, 1);
        else
            check_library(lib, malloc_default_arena(), 1);
        check_application_blocks();
    } else if (strcmp(mode, "dlopen") == 0 && argc > 2) {
        section = "dlopen";
        void *handle = open_library(argv[2], RTLD_NOW);
        arena_hd *first = check_library(bind(handle), NULL, 0);
        check_application_blocks();
        section = "dlopen again";
        CHECK(dlclose(handle) == 0, "dlclose failed");
        handle = open_library(argv[2], RTLD_LAZY);
        check_library(bind(handle), first, 0);
        check_application_blocks();
    } else if (strcmp(mode, "hooks") == 0 && argc > 3) {
        section = "hooks";
        void *handle = open_library(argv[2], RTLD_NOW);
        CHECK(dlerror() == NULL, "dlerror() reports an error after a successful dlopen");
        struct library lib = bind(handle);
        void *(**hook)(size_t) = symbol(handle, "routed_lib_stored_malloc");
        *hook = counting_malloc;
        /* Any dlopen the allocator sees makes it rescan the routed objects. */
        void *other = dlopen(argv[3], RTLD_NOW);
        CHECK(other != NULL, "dlopen %s failed", argv[3]);
        void *p = lib.via_stored_pointer(40);
        CHECK(counted == 1, "the program's hook was called %d times (expected 1): a rescan "
              "rewrote it", counted);
        free(p);
    } else if (strcmp(mode, "cxx") == 0 && argc > 2) {
        section = "cxx";
        void *handle = open_library(argv[2], RTLD_NOW | RTLD_LOCAL);
        void *(*cxx_new)(size_t) = symbol(handle, "routed_cxx_new");
        void (*cxx_delete)(void *) = symbol(handle, "routed_cxx_delete");
        int (*cxx_new_throws)(void) = symbol(handle, "routed_cxx_new_throws");
        void *p = cxx_new(64);
        arena_hd *owner = malloc_arena_of(p);
        CHECK(owner != NULL && owner != malloc_default_arena(),
              "new in the RTLD_LOCAL C++ library gave a block in arena %p (default %p)",
              (void *)owner, (void *)malloc_default_arena());
        cxx_delete(p);
        arena_hd *before = malloc_get_arena();
        CHECK(cxx_new_throws() == 1, "operator new of a huge size did not throw bad_alloc");
        arena_hd *after = malloc_get_arena();
        CHECK(after == before,
              "after a bad_alloc thrown through the routed operator new the thread's arena is %p, "
              "not %p as before", (void *)after, (void *)before);
        void *mine = malloc(32);
        CHECK(malloc_arena_of(mine) == malloc_default_arena(),
              "the program's malloc after the exception left the default arena");
        free(mine);
    } else if (strcmp(mode, "cancel") == 0 && argc > 2) {
        section = "cancel";
        void *handle = open_library(argv[2], RTLD_NOW);
        void *getline_fd = symbol(handle, "routed_lib_getline_fd");
        CHECK(pipe(reader_pipe) == 0, "pipe failed");
        arena_hd *before = malloc_get_arena();
        pthread_t reader;
        CHECK(pthread_create(&reader, NULL, blocked_reader, getline_fd) == 0,
              "pthread_create failed");
        /* Deferred cancellation: acted on in the read() under getline,
         * whether the reader is blocked there already or not yet. */
        CHECK(pthread_cancel(reader) == 0, "pthread_cancel failed");
        void *result = NULL;
        CHECK(pthread_join(reader, &result) == 0, "pthread_join failed");
        CHECK(result == PTHREAD_CANCELED, "the reader was not cancelled");
        CHECK(cleanup_ran, "the reader's cleanup handler did not run");
        CHECK(arena_at_cleanup == before,
              "after a cancellation unwound through the routed getline the thread's arena is %p, "
              "not %p as before", (void *)arena_at_cleanup, (void *)before);
    } else if (strcmp(mode, "api") == 0 && argc > 2) {
        section = "api";
        void *handle = open_library(argv[2], RTLD_NOW);
        struct library lib = bind(handle);
        check_library(lib, malloc_default_arena(), 0);
        errno = 0;
        CHECK(malloc_route_library(NULL) == -1 && errno == EINVAL, "NULL pattern accepted");
        CHECK(malloc_route_library("") == -1 && errno == EINVAL, "empty pattern accepted");
        int named = malloc_route_library("libroutedtest*");
        CHECK(named == 1, "malloc_route_library named %d objects, expected 1", named);
        arena_hd *arena = check_library(lib, NULL, 0);
        errno = 0;
        CHECK(malloc_arena_destroy(arena) == -1 && errno == EBUSY,
              "a routed library's arena could be destroyed (errno %d)", errno);
        check_application_blocks();
    } else {
        printf("usage: %s startup|unset|dlopen PATH|api PATH|hooks PATH OTHER|cxx PATH|cancel PATH\n",
               argv[0]);
        return 2;
    }
    printf("%lu passed, %lu failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
