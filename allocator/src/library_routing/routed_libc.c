/*
 * Stand-ins for the C library's allocating functions, put into a routed
 * library's GOT: each switches the calling thread to its routing slot's
 * arena, calls the real function (whose own malloc calls then land in that
 * arena) and switches back. There is one copy per slot (the slot is a
 * constant in each), since a stand-in cannot tell its caller reliably: a
 * library's tail call (`jmp strdup@plt`) leaves its own caller's return
 * address on the stack.
 *
 * Written in C because several are variadic (asprintf, the scanf family with
 * %m), which stable Rust cannot define, and because the compiler checks each
 * stand-in against the C library's own prototype (__typeof__ below).
 *
 * The list comes from glibc 2.36's exported functions that return or keep
 * memory from malloc: string copies, formatted and line input, paths, memory
 * streams and FILE/DIR objects, search trees and tables, regex, name lookup,
 * locale and message catalogues, the environment; and, for C++ libraries, the
 * operator new family (reached through dlsym, as libstdc++ may be absent).
 * Functions that only free (free, tdelete, globfree, ...) are left alone:
 * free follows the block's owner.
 */
#define _GNU_SOURCE
#include <argz.h>
#include <dirent.h>
#include <dlfcn.h>
#include <envz.h>
#include <errno.h>
#include <execinfo.h>
#include <glob.h>
#include <iconv.h>
#include <ifaddrs.h>
#include <libintl.h>
#include <locale.h>
#include <netdb.h>
#include <nl_types.h>
#include <regex.h>
#include <search.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wchar.h>
#include <wordexp.h>

#define HIDDEN __attribute__((visibility("hidden")))
#define NOINLINE __attribute__((noinline))
/* The stand-ins' code goes in the section of code most programs never run,
 * which the shared library's link puts after everything else (capi/build.rs):
 * a program that routes nothing never faults in their pages (about 75 KiB
 * of them). */
#define STAND_IN __attribute__((section("arenalloc_cold")))

/* Must equal MAX_ROUTED_OBJECTS in mod.rs (checked there at start-up). */
#define SLOTS 32
HIDDEN const size_t arenalloc_routed_slots = SLOTS;

/* Set by the Rust side before any stand-in is put in a GOT. */
struct arenalloc_routing_hooks {
    /* Switches the thread to `slot`'s arena; returns what `leave` needs to
     * switch back. Both leave errno as it was. */
    uint64_t (*enter)(uint32_t slot);
    void (*leave)(uint64_t previous);
};
HIDDEN struct arenalloc_routing_hooks arenalloc_routing_hooks;


/* Switches back when the stand-in's scope ends: by return, and also when an
 * exception (a C++ bad_alloc from operator new) or a thread cancellation
 * unwinds through it (this file is compiled with -fexceptions). A longjmp
 * out of a callback (scandir, glob, tsearch) skips it: documented. */
STAND_IN static void leave_scope(uint64_t *previous) { arenalloc_routing_hooks.leave(*previous); }
#define ENTER(slot)                                                                                \
    __attribute__((cleanup(leave_scope))) uint64_t previous__ =                                    \
        arenalloc_routing_hooks.enter(slot)

/* M(slot, ...) for every slot. */
#define FOR_SLOTS(M, ...)                                                                          \
    M(0, __VA_ARGS__) M(1, __VA_ARGS__) M(2, __VA_ARGS__) M(3, __VA_ARGS__) M(4, __VA_ARGS__)      \
    M(5, __VA_ARGS__) M(6, __VA_ARGS__) M(7, __VA_ARGS__) M(8, __VA_ARGS__) M(9, __VA_ARGS__)      \
    M(10, __VA_ARGS__) M(11, __VA_ARGS__) M(12, __VA_ARGS__) M(13, __VA_ARGS__)                    \
    M(14, __VA_ARGS__) M(15, __VA_ARGS__) M(16, __VA_ARGS__) M(17, __VA_ARGS__)                    \
    M(18, __VA_ARGS__) M(19, __VA_ARGS__) M(20, __VA_ARGS__) M(21, __VA_ARGS__)                    \
    M(22, __VA_ARGS__) M(23, __VA_ARGS__) M(24, __VA_ARGS__) M(25, __VA_ARGS__)                    \
    M(26, __VA_ARGS__) M(27, __VA_ARGS__) M(28, __VA_ARGS__) M(29, __VA_ARGS__)                    \
    M(30, __VA_ARGS__) M(31, __VA_ARGS__)

/* A stand-in's address by slot, for the look-up functions at the end. */
#define SLOT_CASE(slot, id)                                                                        \
    case slot:                                                                                     \
        return (void *)routed_##id##_##slot;

/* A parenthesised list without its parentheses. */
#define UNPAREN(...) __VA_ARGS__

/* A stand-in with the real function's exact type (checked by __typeof__),
 * for each slot: it passes its slot on to one body per function (a tail
 * call, a few bytes), which switches the arena around the real call. A body
 * per slot made these stand-ins half of the library's machine code. */
#define ROUTE_ONE(slot, ret, name, params, args)                                                   \
    static __typeof__(name) routed_##name##_##slot;                                                \
    STAND_IN static ret routed_##name##_##slot params { return routed_body_##name(UNPAREN args, slot); }
#define ROUTE(ret, name, params, args)                                                             \
    STAND_IN NOINLINE static ret routed_body_##name(UNPAREN params, unsigned slot) {                        \
        ENTER(slot);                                                                               \
        return name args;                                                                          \
    }                                                                                              \
    FOR_SLOTS(ROUTE_ONE, ret, name, params, args)
/* The same for a function without parameters. */
#define ROUTE_NO_ARGS_ONE(slot, ret, name)                                                         \
    static __typeof__(name) routed_##name##_##slot;                                                \
    STAND_IN static ret routed_##name##_##slot(void) { return routed_body_##name(slot); }
#define ROUTE_NO_ARGS(ret, name)                                                                   \
    STAND_IN NOINLINE static ret routed_body_##name(unsigned slot) {                                        \
        ENTER(slot);                                                                               \
        return name();                                                                             \
    }                                                                                              \
    FOR_SLOTS(ROUTE_NO_ARGS_ONE, ret, name)

/* A variadic function: takes its arguments here and passes them on as a
 * va_list to the body of `vfunction`'s stand-ins (routed above), which
 * switches the arena around the call. */
#define ROUTE_VARIADIC_ONE(slot, id, params, last, vfunction, vargs)                               \
    STAND_IN static int routed_##id##_##slot params {                                                       \
        va_list ap;                                                                                \
        va_start(ap, last);                                                                        \
        int result = routed_body_##vfunction(UNPAREN vargs, slot);                                 \
        va_end(ap);                                                                                \
        return result;                                                                             \
    }
#define ROUTE_VARIADIC(id, params, last, vfunction, vargs)                                         \
    FOR_SLOTS(ROUTE_VARIADIC_ONE, id, params, last, vfunction, vargs)

/* glibc exports these under internal names too, and a library built against
 * older headers or with _FORTIFY_SOURCE calls them. */
extern char *__strdup(const char *);
extern char *__strndup(const char *, size_t);
extern ssize_t __getdelim(char **, size_t *, int, FILE *);
extern int __asprintf(char **, const char *, ...);
extern int __asprintf_chk(char **, int, const char *, ...);
extern int __vasprintf_chk(char **, int, const char *, va_list);
extern char *__realpath_chk(const char *, char *, size_t);
extern char *__getcwd_chk(char *, size_t, size_t);
/* The scanf family by exact symbol: the plain names keep glibc's old %a
 * meaning, the __isoc99_ ones are what C99 callers link against. */
extern int libc_vsscanf(const char *, const char *, va_list) __asm__("vsscanf");
extern int libc_vfscanf(FILE *, const char *, va_list) __asm__("vfscanf");
extern int libc_isoc99_vsscanf(const char *, const char *, va_list) __asm__("__isoc99_vsscanf");
extern int libc_isoc99_vfscanf(FILE *, const char *, va_list) __asm__("__isoc99_vfscanf");

ROUTE(char *, strdup, (const char *s), (s))
ROUTE(char *, __strdup, (const char *s), (s))
ROUTE(char *, strndup, (const char *s, size_t n), (s, n))
ROUTE(char *, __strndup, (const char *s, size_t n), (s, n))
ROUTE(wchar_t *, wcsdup, (const wchar_t *s), (s))
ROUTE(int, vasprintf, (char **out, const char *format, va_list ap), (out, format, ap))
ROUTE(int, __vasprintf_chk, (char **out, int flag, const char *format, va_list ap),
      (out, flag, format, ap))
ROUTE(ssize_t, getline, (char **line, size_t *n, FILE *stream), (line, n, stream))
ROUTE(ssize_t, getdelim, (char **line, size_t *n, int delim, FILE *stream), (line, n, delim, stream))
ROUTE(ssize_t, __getdelim, (char **line, size_t *n, int delim, FILE *stream),
      (line, n, delim, stream))
ROUTE(char *, realpath, (const char *path, char *resolved), (path, resolved))
ROUTE(char *, __realpath_chk, (const char *path, char *resolved, size_t size),
      (path, resolved, size))
ROUTE(char *, canonicalize_file_name, (const char *path), (path))
ROUTE_NO_ARGS(char *, get_current_dir_name)
ROUTE(char *, getcwd, (char *buf, size_t size), (buf, size))
ROUTE(char *, __getcwd_chk, (char *buf, size_t size, size_t buflen), (buf, size, buflen))
ROUTE(char *, tempnam, (const char *dir, const char *prefix), (dir, prefix))
ROUTE(FILE *, open_memstream, (char **buf, size_t *size), (buf, size))
ROUTE(FILE *, open_wmemstream, (wchar_t **buf, size_t *size), (buf, size))
ROUTE(FILE *, fmemopen, (void *buf, size_t size, const char *mode), (buf, size, mode))
ROUTE(FILE *, fopen, (const char *path, const char *mode), (path, mode))
ROUTE(FILE *, fopen64, (const char *path, const char *mode), (path, mode))
ROUTE(FILE *, fdopen, (int fd, const char *mode), (fd, mode))
ROUTE(FILE *, freopen, (const char *path, const char *mode, FILE *stream), (path, mode, stream))
ROUTE(FILE *, popen, (const char *command, const char *mode), (command, mode))
ROUTE_NO_ARGS(FILE *, tmpfile)
ROUTE_NO_ARGS(FILE *, tmpfile64)
ROUTE(FILE *, freopen64, (const char *path, const char *mode, FILE *stream), (path, mode, stream))
ROUTE(DIR *, opendir, (const char *path), (path))
ROUTE(DIR *, fdopendir, (int fd), (fd))
ROUTE(int, scandir,
      (const char *dir, struct dirent ***list, int (*keep)(const struct dirent *),
       int (*order)(const struct dirent **, const struct dirent **)),
      (dir, list, keep, order))
ROUTE(int, scandirat,
      (int dirfd, const char *dir, struct dirent ***list, int (*keep)(const struct dirent *),
       int (*order)(const struct dirent **, const struct dirent **)),
      (dirfd, dir, list, keep, order))
ROUTE(int, glob,
      (const char *pattern, int flags, int (*on_error)(const char *, int), glob_t *out),
      (pattern, flags, on_error, out))
ROUTE(int, glob64,
      (const char *pattern, int flags, int (*on_error)(const char *, int), glob64_t *out),
      (pattern, flags, on_error, out))
ROUTE(int, scandir64,
      (const char *dir, struct dirent64 ***list, int (*keep)(const struct dirent64 *),
       int (*order)(const struct dirent64 **, const struct dirent64 **)),
      (dir, list, keep, order))
ROUTE(int, scandirat64,
      (int dirfd, const char *dir, struct dirent64 ***list,
       int (*keep)(const struct dirent64 *),
       int (*order)(const struct dirent64 **, const struct dirent64 **)),
      (dirfd, dir, list, keep, order))
ROUTE(void *, tsearch, (const void *key, void **root, int (*compare)(const void *, const void *)),
      (key, root, compare))
ROUTE(int, hcreate, (size_t n), (n))
ROUTE(int, hcreate_r, (size_t n, struct hsearch_data *table), (n, table))
ROUTE(int, regcomp, (regex_t *re, const char *pattern, int flags), (re, pattern, flags))
ROUTE(int, getaddrinfo,
      (const char *node, const char *service, const struct addrinfo *hints,
       struct addrinfo **out),
      (node, service, hints, out))
ROUTE(int, getifaddrs, (struct ifaddrs **out), (out))
ROUTE(char **, backtrace_symbols, (void *const *frames, int n), (frames, n))
ROUTE(locale_t, newlocale, (int mask, const char *name, locale_t base), (mask, name, base))
ROUTE(locale_t, duplocale, (locale_t locale), (locale))
ROUTE(char *, setlocale, (int category, const char *name), (category, name))
ROUTE(iconv_t, iconv_open, (const char *to, const char *from), (to, from))
ROUTE(nl_catd, catopen, (const char *name, int flag), (name, flag))
ROUTE(char *, textdomain, (const char *domain), (domain))
ROUTE(char *, bindtextdomain, (const char *domain, const char *dir), (domain, dir))
ROUTE(char *, bind_textdomain_codeset, (const char *domain, const char *codeset),
      (domain, codeset))
ROUTE(char *, dcgettext, (const char *domain, const char *id, int category), (domain, id, category))
ROUTE(char *, dgettext, (const char *domain, const char *id), (domain, id))
ROUTE(char *, gettext, (const char *id), (id))
ROUTE(int, setenv, (const char *name, const char *value, int overwrite), (name, value, overwrite))
ROUTE(int, putenv, (char *entry), (entry))
ROUTE(int, wordexp, (const char *words, wordexp_t *out, int flags), (words, out, flags))
ROUTE(error_t, argz_create, (char *const argv[], char **argz, size_t *len), (argv, argz, len))
ROUTE(error_t, argz_create_sep, (const char *string, int sep, char **argz, size_t *len),
      (string, sep, argz, len))
ROUTE(error_t, argz_add, (char **argz, size_t *len, const char *str), (argz, len, str))
ROUTE(error_t, argz_append, (char **argz, size_t *len, const char *buf, size_t buf_len),
      (argz, len, buf, buf_len))
ROUTE(error_t, envz_add, (char **envz, size_t *len, const char *name, const char *value),
      (envz, len, name, value))

ROUTE(int, libc_vsscanf, (const char *s, const char *format, va_list ap), (s, format, ap))
ROUTE(int, libc_vfscanf, (FILE * stream, const char *format, va_list ap), (stream, format, ap))
ROUTE(int, libc_isoc99_vsscanf, (const char *s, const char *format, va_list ap), (s, format, ap))
ROUTE(int, libc_isoc99_vfscanf, (FILE * stream, const char *format, va_list ap),
      (stream, format, ap))

ROUTE_VARIADIC(asprintf, (char **out, const char *format, ...), format, vasprintf,
               (out, format, ap))
ROUTE_VARIADIC(__asprintf, (char **out, const char *format, ...), format, vasprintf,
               (out, format, ap))
ROUTE_VARIADIC(__asprintf_chk, (char **out, int flag, const char *format, ...), format,
               __vasprintf_chk, (out, flag, format, ap))
ROUTE_VARIADIC(sscanf, (const char *s, const char *format, ...), format, libc_vsscanf,
               (s, format, ap))
ROUTE_VARIADIC(fscanf, (FILE * stream, const char *format, ...), format, libc_vfscanf,
               (stream, format, ap))
ROUTE_VARIADIC(isoc99_sscanf, (const char *s, const char *format, ...), format,
               libc_isoc99_vsscanf, (s, format, ap))
ROUTE_VARIADIC(isoc99_fscanf, (FILE * stream, const char *format, ...), format,
               libc_isoc99_vfscanf, (stream, format, ap))

/* C++ operator new: a C++ library's `new` reaches malloc from libstdc++'s
 * code, which is not routed, so the operator itself is. Each slot's are
 * found in the routed object's own scope (a C++ library opened with
 * RTLD_LOCAL has libstdc++ only there) before any stand-in of the slot is
 * put in a GOT; a word whose operator was not found is left alone. */
HIDDEN void *arenalloc_operator_new[SLOTS][8];
HIDDEN const char *const arenalloc_operator_new_names[8] = {
    "_Znwm", "_Znam", "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t", "_ZnamSt11align_val_t", "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
};
typedef void *(*new_fn)(size_t);
typedef void *(*new_nothrow_fn)(size_t, const void *);
typedef void *(*new_aligned_fn)(size_t, size_t);
typedef void *(*new_aligned_nothrow_fn)(size_t, size_t, const void *);
#define ROUTE_NEW_ONE(slot, index, fn_type, params, args)                                          \
    STAND_IN static void *routed_new##index##_##slot params {                                               \
        return routed_new_body##index(UNPAREN args, slot);                                         \
    }
#define ROUTE_NEW(index, fn_type, params, args)                                                    \
    STAND_IN NOINLINE static void *routed_new_body##index(UNPAREN params, unsigned slot) {                  \
        ENTER(slot);                                                                               \
        return ((fn_type)arenalloc_operator_new[slot][index]) args;                                \
    }                                                                                              \
    FOR_SLOTS(ROUTE_NEW_ONE, index, fn_type, params, args)
ROUTE_NEW(0, new_fn, (size_t n), (n))
ROUTE_NEW(1, new_fn, (size_t n), (n))
ROUTE_NEW(2, new_nothrow_fn, (size_t n, const void *tag), (n, tag))
ROUTE_NEW(3, new_nothrow_fn, (size_t n, const void *tag), (n, tag))
ROUTE_NEW(4, new_aligned_fn, (size_t n, size_t align), (n, align))
ROUTE_NEW(5, new_aligned_fn, (size_t n, size_t align), (n, align))
ROUTE_NEW(6, new_aligned_nothrow_fn, (size_t n, size_t align, const void *tag), (n, align, tag))
ROUTE_NEW(7, new_aligned_nothrow_fn, (size_t n, size_t align, const void *tag), (n, align, tag))

/* Every routed function of this file: M(name, stand-ins' id). */
#define SAME(M, name) M(#name, name)
#define ROUTED_LIBC(M) \
    SAME(M, strdup) SAME(M, __strdup) SAME(M, strndup) SAME(M, __strndup) SAME(M, wcsdup) \
    SAME(M, asprintf) SAME(M, __asprintf) SAME(M, __asprintf_chk) SAME(M, vasprintf) \
    SAME(M, __vasprintf_chk) SAME(M, getline) SAME(M, getdelim) SAME(M, __getdelim) \
    SAME(M, realpath) SAME(M, __realpath_chk) SAME(M, canonicalize_file_name) \
    SAME(M, get_current_dir_name) SAME(M, getcwd) SAME(M, __getcwd_chk) SAME(M, tempnam) \
    SAME(M, open_memstream) SAME(M, open_wmemstream) SAME(M, fmemopen) SAME(M, fopen) \
    SAME(M, fopen64) SAME(M, fdopen) SAME(M, freopen) SAME(M, popen) SAME(M, tmpfile) \
    SAME(M, opendir) SAME(M, fdopendir) SAME(M, scandir) SAME(M, scandirat) SAME(M, glob) \
    SAME(M, tmpfile64) SAME(M, freopen64) SAME(M, glob64) SAME(M, scandir64) \
    SAME(M, scandirat64) SAME(M, tsearch) SAME(M, hcreate) SAME(M, hcreate_r) SAME(M, regcomp) \
    SAME(M, getaddrinfo) SAME(M, getifaddrs) SAME(M, backtrace_symbols) SAME(M, newlocale) \
    SAME(M, duplocale) SAME(M, setlocale) SAME(M, iconv_open) SAME(M, catopen) \
    SAME(M, textdomain) SAME(M, bindtextdomain) SAME(M, bind_textdomain_codeset) \
    SAME(M, dcgettext) SAME(M, dgettext) SAME(M, gettext) SAME(M, setenv) SAME(M, putenv) \
    SAME(M, wordexp) SAME(M, argz_create) SAME(M, argz_create_sep) SAME(M, argz_add) \
    SAME(M, argz_append) SAME(M, envz_add) SAME(M, sscanf) SAME(M, fscanf) \
    M("__isoc99_sscanf", isoc99_sscanf) M("__isoc99_fscanf", isoc99_fscanf) \
    M("vsscanf", libc_vsscanf) M("vfscanf", libc_vfscanf) \
    M("__isoc99_vsscanf", libc_isoc99_vsscanf) M("__isoc99_vfscanf", libc_isoc99_vfscanf) \
    M("_Znwm", new0) M("_Znam", new1) M("_ZnwmRKSt9nothrow_t", new2) \
    M("_ZnamRKSt9nothrow_t", new3) M("_ZnwmSt11align_val_t", new4) \
    M("_ZnamSt11align_val_t", new5) M("_ZnwmSt11align_val_tRKSt9nothrow_t", new6) \
    M("_ZnamSt11align_val_tRKSt9nothrow_t", new7)

/* The routed functions' names and stand-ins, looked up by code rather than
 * read from a table of addresses: such a table (90 names, 32 slots) was
 * 21 KiB of pointers that the dynamic linker relocated, so private dirty
 * pages in every process, routing or not. */
#define ONE(name, id) +1
HIDDEN const size_t arenalloc_routed_libc_count = 0 ROUTED_LIBC(ONE);

/* The name of routed function `index`; NULL past the end. */
STAND_IN const char *arenalloc_routed_libc_name(size_t index) {
#define NAME_IF_INDEX(name, id)                                                                    \
    if (index-- == 0)                                                                              \
        return name;
    ROUTED_LIBC(NAME_IF_INDEX)
    return NULL;
}

/* The stand-in of routed function `index` for `slot`; NULL past the ends. */
STAND_IN void *arenalloc_routed_libc_stand_in(size_t index, size_t slot) {
#define STAND_IN_IF_INDEX(name, id)                                                                \
    if (index-- == 0) {                                                                            \
        switch (slot) { FOR_SLOTS(SLOT_CASE, id) }                                                 \
        return NULL;                                                                               \
    }
    ROUTED_LIBC(STAND_IN_IF_INDEX)
    return NULL;
}
