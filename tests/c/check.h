/* The checking harness the C test programs share: counters, the current
 * section, a failure line (at most 200 printed) and CHECK. Each program
 * prints "N passed, M failed" at the end from `passed` and `failed`. */
#ifndef ARENALLOC_TEST_CHECK_H
#define ARENALLOC_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_FAILURE_LINES 200

static unsigned long passed, failed;
static unsigned long failures_printed;
static const char *section = "";

static void fail_line(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_line(const char *file, int line, const char *fmt, ...) {
    failed++;
    if (failures_printed++ >= MAX_FAILURE_LINES) {
        if (failures_printed == MAX_FAILURE_LINES + 1)
            printf("FAIL (further failure lines suppressed)\n");
        return;
    }
    const char *base = strrchr(file, '/');
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL [%s] %s:%d: ", section, base ? base + 1 : file, line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

/* CHECK(condition, "what was expected and what was seen", args...) */
#define CHECK(cond, ...)                                \
    do {                                                \
        if (cond)                                       \
            passed++;                                   \
        else                                            \
            fail_line(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

#endif
