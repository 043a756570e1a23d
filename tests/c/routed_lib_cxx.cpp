// A C++ test library for tests/library_routing.rs: `new` from a routed
// library, opened with RTLD_LOCAL by a C program (so libstdc++ is only in
// the library's own scope), and a bad_alloc thrown through the routed
// operator new.
#include <cstddef>
#include <new>

extern "C" void *routed_cxx_new(std::size_t n) { return ::operator new(n); }

extern "C" void routed_cxx_delete(void *p) { ::operator delete(p); }

// 1 when operator new threw bad_alloc (and it was caught here).
extern "C" int routed_cxx_new_throws(void) {
    try {
        void *p = ::operator new(~std::size_t(0) >> 2);
        ::operator delete(p);
        return 0;
    } catch (const std::bad_alloc &) {
        return 1;
    }
}
