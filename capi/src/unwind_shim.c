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
 * exception, or by glibc for a thread cancellation. So these look it up by
 * name when first called (dlopen with RTLD_NOLOAD finds it however it was
 * loaded, also into a local scope) and pass the call on.
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

/* The address of `name` in the loaded libgcc_s, or null. Not cached in a
 * lock: two threads that look at once find the same address. */
static void *unwinder_symbol(const char *name)
{
    void *unwinder = dlopen("libgcc_s.so.1", RTLD_NOLOAD | RTLD_LAZY);
    if (unwinder == NULL)
        return NULL;
    return dlsym(unwinder, name);
}

static personality_fn real_personality;
static resume_fn real_resume;

HIDDEN _Unwind_Reason_Code __gcc_personality_v0(int version, _Unwind_Action actions,
                                                 _Unwind_Exception_Class exception_class,
                                                 struct _Unwind_Exception *exception,
                                                 struct _Unwind_Context *context)
{
    personality_fn real = __atomic_load_n(&real_personality, __ATOMIC_ACQUIRE);
    if (real == NULL) {
        real = (personality_fn)unwinder_symbol("__gcc_personality_v0");
        /* An unwinder other than libgcc_s (linked statically into the
         * program): the stand-in's cleanup is skipped, and the thread keeps
         * the routed arena as its preferred one (docs/design.md, "C++"). */
        if (real == NULL)
            return URC_CONTINUE_UNWIND;
        __atomic_store_n(&real_personality, real, __ATOMIC_RELEASE);
    }
    return real(version, actions, exception_class, exception, context);
}

HIDDEN void _Unwind_Resume(struct _Unwind_Exception *exception)
{
    resume_fn real = __atomic_load_n(&real_resume, __ATOMIC_ACQUIRE);
    if (real == NULL) {
        real = (resume_fn)unwinder_symbol("_Unwind_Resume");
        if (real == NULL) {
            /* Only a cleanup that the personality above ran can get here,
             * and it found libgcc_s. */
            static const char message[] =
                "arenalloc: _Unwind_Resume: libgcc_s is not loaded; aborting\n";
            (void)!write(2, message, sizeof message - 1);
            abort();
        }
        __atomic_store_n(&real_resume, real, __ATOMIC_RELEASE);
    }
    real(exception);
    __builtin_unreachable();
}
