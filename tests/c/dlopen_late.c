/* Loads libarenalloc.so (argv[1]) with dlopen after start-up, when a thread
 * already runs, and allocates through it from that thread, from the main
 * thread and from a thread started afterwards, with frees across threads.
 * The library keeps its thread state in initial-exec TLS, which a late
 * dlopen must place in the static TLS of every thread, old ones included.
 * Prints "dlopen_late: ok" and exits 0, or says what went wrong. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void *(*malloc_fn)(size_t);
typedef void (*free_fn)(void *);
typedef size_t (*usable_fn)(void *);

static malloc_fn lib_malloc;
static free_fn lib_free;
static usable_fn lib_usable;
static pthread_barrier_t loaded;

enum { BLOCKS = 2000 };

static void fail(const char *what) {
    fprintf(stderr, "dlopen_late: %s\n", what);
    exit(1);
}

/* Allocates BLOCKS blocks of several sizes, fills each with its own byte,
 * checks every one, and returns them for another thread to free. */
static void **allocate_and_check(unsigned char tag) {
    void **blocks = lib_malloc(BLOCKS * sizeof(void *));
    if (blocks == NULL) fail("malloc of the block table failed");
    for (int i = 0; i < BLOCKS; i++) {
        size_t size = 16 + (size_t)(i % 37) * 24;
        blocks[i] = lib_malloc(size);
        if (blocks[i] == NULL) fail("malloc returned NULL");
        if (lib_usable(blocks[i]) < size) fail("usable size below the request");
        memset(blocks[i], tag + i % 7, size);
    }
    for (int i = 0; i < BLOCKS; i++) {
        size_t size = 16 + (size_t)(i % 37) * 24;
        const unsigned char *b = blocks[i];
        for (size_t k = 0; k < size; k++)
            if (b[k] != (unsigned char)(tag + i % 7)) fail("a block was overwritten");
    }
    return blocks;
}

static void free_all(void **blocks) {
    for (int i = 0; i < BLOCKS; i++) lib_free(blocks[i]);
    lib_free(blocks);
}

static void *early_thread(void *main_blocks_slot) {
    /* Started before the library was loaded. */
    pthread_barrier_wait(&loaded);
    void **mine = allocate_and_check(0x40);
    free_all(*(void ***)main_blocks_slot); /* remote frees of main's blocks */
    return mine;
}

static void *late_thread(void *from_early) {
    void **mine = allocate_and_check(0x80);
    free_all(from_early);
    free_all(mine);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) fail("usage: dlopen_late LIBARENALLOC_SO");
    pthread_t early, late;
    pthread_barrier_init(&loaded, NULL, 2);
    /* The early thread gets main's blocks through this slot, set before
     * the barrier releases it. */
    static void **main_blocks;
    if (pthread_create(&early, NULL, early_thread, &main_blocks) != 0) fail("pthread_create");
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "dlopen_late: dlopen failed: %s\n", dlerror());
        return 1;
    }
    lib_malloc = (malloc_fn)dlsym(lib, "malloc");
    lib_free = (free_fn)dlsym(lib, "free");
    lib_usable = (usable_fn)dlsym(lib, "malloc_usable_size");
    if (!lib_malloc || !lib_free || !lib_usable) fail("dlsym failed");
    main_blocks = allocate_and_check(0x10);
    pthread_barrier_wait(&loaded);
    void *from_early;
    if (pthread_join(early, &from_early) != 0) fail("pthread_join early");
    if (pthread_create(&late, NULL, late_thread, from_early) != 0) fail("pthread_create late");
    if (pthread_join(late, NULL) != 0) fail("pthread_join late");
    puts("dlopen_late: ok");
    return 0;
}
