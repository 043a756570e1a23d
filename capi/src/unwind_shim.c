/*
 * The two unwinder entry points the library-routing stand-ins' cleanups
 * need (they are compiled with -fexceptions, so that a C++ exception or a
 * thread cancellation through a stand-in switches the arena back), found at
 * run time in libgcc_s instead of linked against it.
 *
 * Why: linking libgcc_s made every program that preloads libarenalloc.so
 * map it and fault in about 100 KiB of it at start-up, although a plain C
 * program never unwinds. An unwind through a stand-in comes from an
 * unwinder that is already loaded: libgcc_s, brought in by libstdc++ for an
 * exception, or by glibc for a thread cancellation. So the first call
 * finds the unwinder that called the personality routine (dladdr on the
 * return address, then dlopen with RTLD_NOLOAD, which finds an object
 * however it was loaded, also into a local scope; libgcc_s by name as a
 * fallback) and both calls pass on to it.
 *
 * Linked into the shared library only (capi/build.rs), hidden: a program
 * that links libarenalloc.a keeps its own unwinder.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

/* The Itanium C++ ABI's unwinding types (the part used here), declared
 * here rather than taken from <unwind.h>, which declares these functions
 * with default visibility. */
struct _Unwind_Exception;
struct _Unwind_Context;
typedef int _Unwind_Reason_Code;
typedef int _Unwind_Action;
typedef uint64_t _Unwind_Exception_Class;
enum { URC_CONTINUE_UNWIND = 8 };

#define HIDDEN __attribute__((visibility("hidden")))

typedef _Unwind_Reason_Code (*personality_fn)(int, _Unwind_Action, _Unwind_Exception_Class,
                                              struct _Unwind_Exception *, struct _Unwind_Context *);
typedef void (*resume_fn)(struct _Unwind_Exception *);

/* The unwinder's entry points, from the first unwind that reached a
 * stand-in. The objects they come from are never closed (the handles
 * dlopen returns are kept open on purpose), so the addresses stay valid. */
static personality_fn real_personality;
static resume_fn real_resume;

/* The object holding `code` (the unwinder that called the personality
 * routine), or else libgcc_s, if loaded. RTLD_NOLOAD never loads anything
 * and, for a name with a slash, searches no directory. */
static void *unwinder_object(void *code)
{
    Dl_info info;
    if (code != NULL && dladdr(code, &info) != 0 && info.dli_fname != NULL &&
        info.dli_fname[0] != '\0') {
        void *object = dlopen(info.dli_fname, RTLD_NOLOAD | RTLD_LAZY);
        if (object != NULL)
            return object;
    }
    return dlopen("libgcc_s.so.1", RTLD_NOLOAD | RTLD_LAZY);
}

/* Finds both entry points in the unwinder that holds `code`, and keeps
 * them if none were kept before (a process has one unwinder in practice:
 * with libgcc_s linked, as before, it had exactly one). Null if they are
 * not there. */
__attribute__((noinline)) static personality_fn find_unwinder(void *code)
{
    void *object = unwinder_object(code);
    if (object == NULL)
        return NULL;
    personality_fn personality = (personality_fn)dlsym(object, "__gcc_personality_v0");
    resume_fn resume = (resume_fn)dlsym(object, "_Unwind_Resume");
    if (personality == NULL || resume == NULL)
        return NULL;
    resume_fn none = NULL;
    if (__atomic_compare_exchange_n(&real_resume, &none, resume, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
        __atomic_store_n(&real_personality, personality, __ATOMIC_RELEASE);
    return personality;
}

HIDDEN _Unwind_Reason_Code __gcc_personality_v0(int version, _Unwind_Action actions,
                                                 _Unwind_Exception_Class exception_class,
                                                 struct _Unwind_Exception *exception,
                                                 struct _Unwind_Context *context)
{
    personality_fn real = __atomic_load_n(&real_personality, __ATOMIC_ACQUIRE);
    if (real == NULL) {
        real = find_unwinder(__builtin_return_address(0));
        /* No libgcc_s-compatible unwinder found (one linked statically
         * into the program without its symbols): the stand-in's cleanup
         * is skipped, and the thread keeps the routed arena as its
         * preferred one (docs/design.md, "The library is no_std"). */
        if (real == NULL)
            return URC_CONTINUE_UNWIND;
    }
    return real(version, actions, exception_class, exception, context);
}

/* `_Unwind_Resume` when the personality routine above has not run: in a
 * build of the library that unwinds itself (std's landing pads bind to this
 * shim too), from libgcc_s, which such a build links. Aborts if there is
 * none. */
__attribute__((noinline, cold)) static resume_fn find_resume(void)
{
    find_unwinder(NULL);
    resume_fn real = __atomic_load_n(&real_resume, __ATOMIC_ACQUIRE);
    if (real == NULL) {
        static const char message[] =
            "arenalloc: _Unwind_Resume: no unwinder found; aborting\n";
        (void)!write(2, message, sizeof message - 1);
        abort();
    }
    return real;
}

/* A tail call, so that the real `_Unwind_Resume` finds the landing pad that
 * called it as its caller, not a frame of this shim. */
HIDDEN void _Unwind_Resume(struct _Unwind_Exception *exception)
{
    resume_fn real = __atomic_load_n(&real_resume, __ATOMIC_ACQUIRE);
    if (__builtin_expect(real == NULL, 0))
        real = find_resume();
    real(exception);
}
