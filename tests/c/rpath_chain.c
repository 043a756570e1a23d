/* A dlopen whose search depends on its caller's loader chain, for
 * tests/library_routing.rs: the program links libchainx.so, which has a
 * DT_RPATH naming the directory of libchainz.so and links libchainy.so
 * (no search path of its own), whose chain_y_open() calls
 * dlopen("libchainz.so"). glibc finds it through libchainx's DT_RPATH, as
 * the loader of libchainy. Built four ways: -DPART_Z, -DPART_Y, -DPART_X,
 * -DPART_MAIN. */
#include <dlfcn.h>
#include <stdio.h>

#if defined(PART_Z)
int chain_z(void) { return 42; }
#elif defined(PART_Y)
int chain_y_open(void) {
    void *handle = dlopen("libchainz.so", RTLD_NOW);
    if (!handle) {
        printf("dlopen(libchainz.so) failed: %s\n", dlerror());
        return 0;
    }
    int (*z)(void) = (int (*)(void))dlsym(handle, "chain_z");
    return z ? z() : 0;
}
#elif defined(PART_X)
int chain_y_open(void);
int chain_x_open(void) { return chain_y_open(); }
#elif defined(PART_MAIN)
int chain_x_open(void);
int main(void) {
    int got = chain_x_open();
    printf("chain: %d\n", got);
    return got == 42 ? 0 : 1;
}
#endif
