/* A C program whose first allocation comes from inside glibc's
 * pthread_atfork: past its 48 built-in slots, a registration allocates
 * while holding the lock that pthread_atfork takes. An allocator that
 * registered its own fork handlers at that moment would deadlock here.
 * Then it allocates, forks, and the child allocates too. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void handler(void) {}

int main(void) {
    for (int i = 0; i < 100; i++) {
        if (pthread_atfork(handler, handler, handler) != 0) {
            return 2;
        }
    }
    char *p = malloc(100);
    if (p == NULL) {
        return 3;
    }
    memset(p, 1, 100);
    free(p);
    pid_t child = fork();
    if (child < 0) {
        return 4;
    }
    if (child == 0) {
        char *q = malloc(50);
        free(q);
        _exit(q == NULL ? 1 : 0);
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child) {
        return 5;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 6;
}
