/* The ARENALLOC_STATS=1 exit summary from a C program whose first
 * allocation comes from inside glibc's atexit: its 33rd registration
 * allocates a new block of handlers while holding the lock that atexit
 * takes. An allocator that registered its summary with atexit at that
 * moment would deadlock here. The program then allocates and frees a
 * little and exits; the test checks that it ends and prints the summary. */
#include <stdlib.h>
#include <string.h>

static volatile int handlers_run;

static void handler(void) { handlers_run++; }

int main(void) {
    /* No stdio before this: printf's buffer would be the first malloc. */
    for (int i = 0; i < 40; i++) {
        if (atexit(handler) != 0) {
            return 2;
        }
    }
    char *blocks[1000];
    for (int i = 0; i < 1000; i++) {
        blocks[i] = malloc(100 + i);
        if (blocks[i] == NULL) {
            return 3;
        }
        memset(blocks[i], i & 0xff, 100 + i);
    }
    for (int i = 0; i < 1000; i++) {
        free(blocks[i]);
    }
    return 0;
}
