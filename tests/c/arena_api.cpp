// Every function of capi/include/arenalloc.h, from C++: the dedicated
// arenas through RAII wrappers (a scope that switches the thread's arena
// and restores it, also when an exception leaves the scope), a standard
// allocator over malloc_arena_*, operator new in a preferred arena (and
// std::bad_alloc past an arena's limit), std::thread, the errors of every
// function (EINVAL, ENOMEM) and the glibc extensions the header declares.
//
// Built by tests/c_arena_api.rs with -Wall -Wextra -Werror and linked with
// libarenalloc.a. Every failed check prints a line starting with "FAIL"; the
// program ends with "N passed, M failed" and exits 1 if M > 0.
//
// <malloc.h> is not included: after arenalloc.h it does not compile in C++
// (see the ignored test in tests/c_arena_api.rs).
#include "arenalloc.h"

#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

unsigned long passed, failed;
const char *section = "";

void fail_line(int line, const std::string &what) {
    failed++;
    std::printf("FAIL [%s] arena_api.cpp:%d: %s\n", section, line, what.c_str());
    std::fflush(stdout);
}

// CHECK(condition, message): the message (a std::string expression) is only
// built when the check fails, so checks cost no allocation in an arena.
#define CHECK(cond, what)              \
    do {                               \
        if (cond)                      \
            passed++;                  \
        else                           \
            fail_line(__LINE__, what); \
    } while (0)

// The call fails (as `failed_if` says) with errno `err`.
template <class R, class F>
void check_errno(int line, const char *what, R result, int seen, F failed_if, int err) {
    if (failed_if(result) && seen == err)
        passed++;
    else
        fail_line(line, std::string(what) + ": expected failure with errno " + std::to_string(err) +
                            ", got errno " + std::to_string(seen));
}
#define CHECK_ERRNO(call, failed_if, err)                                 \
    do {                                                                  \
        errno = 0;                                                        \
        auto r_ = (call);                                                 \
        int e_ = errno;                                                   \
        check_errno(__LINE__, #call, r_, e_, failed_if, err);             \
    } while (0)
const auto is_null = [](const void *p) { return p == nullptr; };
const auto is_minus_one = [](int r) { return r == -1; };

void begin(const char *name) {
    section = name;
    std::printf("== %s\n", name);
    std::fflush(stdout);
}

std::string num(std::size_t n) { return std::to_string(n); }

// In C++ the function malloc_arena_stats hides the struct's plain name (as
// stat() does struct stat's).
using Stats = struct malloc_arena_stats;

Stats stats_of(arena_hd *a) {
    Stats s;
    std::memset(&s, 0xff, sizeof s);
    int rc = malloc_arena_stats(a, &s);
    CHECK(rc == 0, "malloc_arena_stats failed, errno " + std::to_string(errno));
    return s;
}

// An arena owned by a scope: destroyed with it.
class OwnedArena {
  public:
    OwnedArena() : handle_(malloc_new_arena()) {
        if (handle_ == nullptr)
            throw std::bad_alloc();
    }
    ~OwnedArena() {
        if (handle_ != nullptr)
            malloc_arena_destroy(handle_);
    }
    OwnedArena(const OwnedArena &) = delete;
    OwnedArena &operator=(const OwnedArena &) = delete;
    arena_hd *get() const { return handle_; }
    // Destroys it now; the handle stays for the stale-handle checks.
    int destroy() {
        int rc = malloc_arena_destroy(handle_);
        stale_ = handle_;
        handle_ = nullptr;
        return rc;
    }
    arena_hd *stale() const { return stale_; }

  private:
    arena_hd *handle_;
    arena_hd *stale_ = nullptr;
};

// Makes an arena the thread's preferred one for a scope.
class ArenaScope {
  public:
    explicit ArenaScope(arena_hd *arena) : previous_(malloc_set_arena(arena)) {}
    ~ArenaScope() { malloc_set_arena(previous_); }
    ArenaScope(const ArenaScope &) = delete;
    ArenaScope &operator=(const ArenaScope &) = delete;
    arena_hd *previous() const { return previous_; }

  private:
    arena_hd *previous_;
};

// A standard allocator over one arena, without switching the thread.
template <class T>
struct ArenaAllocator {
    using value_type = T;
    arena_hd *arena;
    explicit ArenaAllocator(arena_hd *a) : arena(a) {}
    template <class U>
    ArenaAllocator(const ArenaAllocator<U> &other) : arena(other.arena) {}
    T *allocate(std::size_t n) {
        if (n > SIZE_MAX / sizeof(T))
            throw std::bad_alloc();
        void *p = malloc_arena_aligned_alloc(arena, alignof(T) < 16 ? 16 : alignof(T), n * sizeof(T));
        if (p == nullptr)
            throw std::bad_alloc();
        return static_cast<T *>(p);
    }
    void deallocate(T *p, std::size_t n) { free_sized(p, n * sizeof(T)); }
};
template <class T, class U>
bool operator==(const ArenaAllocator<T> &a, const ArenaAllocator<U> &b) {
    return a.arena == b.arena;
}
template <class T, class U>
bool operator!=(const ArenaAllocator<T> &a, const ArenaAllocator<U> &b) {
    return a.arena != b.arena;
}

class Barrier {
  public:
    explicit Barrier(std::size_t n) : n_(n) {}
    void wait() {
        std::unique_lock<std::mutex> lock(m_);
        std::size_t generation = generation_;
        if (++count_ == n_) {
            generation_++;
            count_ = 0;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return generation != generation_; });
        }
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    std::size_t n_, count_ = 0, generation_ = 0;
};

bool all_bytes(const void *p, std::size_t n, unsigned char v) {
    const unsigned char *b = static_cast<const unsigned char *>(p);
    for (std::size_t i = 0; i < n; i++)
        if (b[i] != v)
            return false;
    return true;
}

void test_scopes_and_operator_new() {
    begin("scopes, operator new, exceptions");
    arena_hd *def = malloc_default_arena();
    CHECK(def != nullptr && malloc_get_arena() == def, "a new thread prefers the default arena");
    OwnedArena a;
    CHECK(a.get() != def, "a new arena has its own handle");
    int *ints;
    std::unique_ptr<std::string> text;
    std::vector<int> *vec;
    {
        ArenaScope in(a.get());
        CHECK(in.previous() == def, "the scope saw the default arena as previous");
        CHECK(malloc_get_arena() == a.get(), "malloc_get_arena in the scope");
        CHECK(stats_of(a.get()).threads == 1, "the arena counts this thread");
        ints = new int[1000];
        text = std::make_unique<std::string>(300, 'x');
        vec = new std::vector<int>(5000, 7);
    }
    CHECK(malloc_get_arena() == def, "the scope restored the default arena");
    Stats s = stats_of(a.get());
    // new int[], the unique_ptr's string object and its buffer, the vector
    // object and its buffer.
    CHECK(s.live_blocks == 5, "operator new in the arena: " + num(s.live_blocks) + " live blocks, expected 5");
    CHECK(s.threads == 0, "threads after the scope: " + num(s.threads));
    CHECK(s.live_bytes >= 1000 * sizeof(int) + 300 + 5000 * sizeof(int), "live_bytes " + num(s.live_bytes));
    delete[] ints;
    text.reset();
    delete vec;
    s = stats_of(a.get());
    CHECK(s.live_blocks == 0 && s.live_bytes == 0, "after delete: " + num(s.live_blocks) + " blocks");

    // An exception leaving the scope restores the arena; the exception
    // object was allocated in the arena and goes back to it.
    bool caught = false;
    try {
        ArenaScope in(a.get());
        throw std::runtime_error(std::string(200, 'e'));
    } catch (const std::runtime_error &e) {
        caught = std::strlen(e.what()) == 200;
        CHECK(malloc_get_arena() == def, "unwinding did not restore the arena");
        CHECK(stats_of(a.get()).live_blocks >= 1, "the exception was not allocated in the arena");
    }
    CHECK(caught, "the exception was not caught intact");
    CHECK(stats_of(a.get()).live_blocks == 0, "the exception's memory was not returned");

    // Nested scopes.
    OwnedArena b;
    {
        ArenaScope outer(a.get());
        {
            ArenaScope inner(b.get());
            CHECK(malloc_get_arena() == b.get(), "inner scope");
            CHECK(stats_of(a.get()).threads == 0 && stats_of(b.get()).threads == 1, "counts, inner");
        }
        CHECK(malloc_get_arena() == a.get(), "inner scope restored the outer arena");
    }
    CHECK(malloc_get_arena() == def, "outer scope restored the default arena");
}

void test_standard_allocator() {
    begin("a standard allocator over malloc_arena_aligned_alloc");
    OwnedArena a;
    {
        std::vector<std::uint64_t, ArenaAllocator<std::uint64_t>> v{ArenaAllocator<std::uint64_t>(a.get())};
        std::size_t capacity = v.capacity();
        int regrowths = 0;
        bool counted = true;
        for (std::uint64_t i = 0; i < 200000; i++) {
            v.push_back(i);
            if (v.capacity() != capacity) {
                capacity = v.capacity();
                regrowths++;
                Stats s = stats_of(a.get());
                counted &= s.live_blocks == 1 && s.live_bytes == malloc_usable_size(v.data());
            }
        }
        CHECK(regrowths >= 10, "the vector grew only " + std::to_string(regrowths) + " times");
        CHECK(counted, "the arena's figures did not follow the vector's block");
        bool ok = true;
        for (std::uint64_t i = 0; i < v.size(); i++)
            ok &= v[i] == i;
        CHECK(ok, "the vector's contents changed");
        CHECK(malloc_get_arena() == malloc_default_arena(), "the allocator switched the thread");
        CHECK(stats_of(a.get()).threads == 0, "the allocator made the thread prefer the arena");
    }
    Stats s = stats_of(a.get());
    CHECK(s.live_blocks == 0 && s.live_bytes == 0, "after the vector: " + num(s.live_blocks) + " blocks");
}

void test_arena_functions() {
    begin("malloc_arena_malloc, calloc, aligned_alloc, stats");
    OwnedArena a;
    std::vector<void *> blocks;
    std::size_t sum = 0;
    for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{100}, 4 * KiB, 100 * KiB, 3 * MiB}) {
        void *m = malloc_arena_malloc(a.get(), size);
        void *c = malloc_arena_calloc(a.get(), 1, size);
        void *al = malloc_arena_aligned_alloc(a.get(), 4096, size);
        CHECK(m && c && al, "allocation of " + num(size) + " failed");
        CHECK(all_bytes(c, size, 0), "calloc(" + num(size) + ") not zeroed");
        CHECK((reinterpret_cast<std::uintptr_t>(al) & 4095) == 0, "aligned_alloc(4096) misaligned");
        for (void *p : {m, c, al}) {
            std::memset(p, 0x5a, size);
            sum += malloc_usable_size(p);
            blocks.push_back(p);
        }
    }
    Stats s = stats_of(a.get());
    CHECK(s.live_blocks == blocks.size(), num(s.live_blocks) + " live blocks, " + num(blocks.size()) + " allocated");
    CHECK(s.live_bytes == sum, "live_bytes " + num(s.live_bytes) + ", usable sizes sum to " + num(sum));
    CHECK(s.mapped_bytes >= s.in_use_bytes && s.in_use_bytes >= s.live_bytes && s.peak_in_use_bytes >= s.in_use_bytes,
          "mapped >= in use >= live, peak >= in use");
    for (void *p : blocks)
        std::free(p);
    CHECK(stats_of(a.get()).live_blocks == 0, "blocks left");
    CHECK_ERRNO(malloc_arena_calloc(a.get(), SIZE_MAX / 4, 8), is_null, ENOMEM);
    CHECK_ERRNO(malloc_arena_aligned_alloc(a.get(), 48, 100), is_null, EINVAL);
    CHECK_ERRNO(malloc_arena_stats(a.get(), nullptr), is_minus_one, EINVAL);
    Stats out;
    CHECK_ERRNO(malloc_arena_stats(nullptr, &out), is_minus_one, EINVAL);
}

void test_limit() {
    begin("limits: NULL, ENOMEM, std::bad_alloc");
    OwnedArena a;
    CHECK(malloc_arena_set_limit(a.get(), 4 * MiB) == 0, "set_limit");
    CHECK(stats_of(a.get()).limit_bytes == 4 * MiB, "limit_bytes");
    CHECK_ERRNO(malloc_arena_malloc(a.get(), 8 * MiB), is_null, ENOMEM);
    {
        ArenaScope in(a.get());
        char *p = new (std::nothrow) char[8 * MiB];
        CHECK(p == nullptr, "new (nothrow) past the limit returned memory");
        bool threw = false;
        try {
            char *q = new char[8 * MiB];
            delete[] q;
        } catch (const std::bad_alloc &) {
            threw = true;
        }
        CHECK(threw, "operator new past the limit did not throw std::bad_alloc");
        std::unique_ptr<char[]> fits(new char[MiB]);
        CHECK(fits != nullptr, "1 MiB under a 4 MiB limit");
    }
    bool threw = false;
    try {
        std::vector<char, ArenaAllocator<char>> v(8 * MiB, 'x', ArenaAllocator<char>(a.get()));
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK(threw, "a vector past the limit did not throw std::bad_alloc");
    CHECK(malloc_arena_set_limit(a.get(), 0) == 0 && stats_of(a.get()).limit_bytes == 0, "lift the limit");
    {
        ArenaScope in(a.get());
        std::unique_ptr<char[]> big(new char[8 * MiB]);
        CHECK(big != nullptr, "8 MiB without a limit");
    }
    CHECK(stats_of(a.get()).live_blocks == 0, "blocks left");
}

void test_trim() {
    begin("trim");
    OwnedArena a;
    {
        std::vector<std::unique_ptr<char[]>> blocks;
        ArenaScope in(a.get());
        blocks.reserve(2000);
        for (int i = 0; i < 2000; i++) {
            blocks.emplace_back(new char[8000]);
            std::memset(blocks.back().get(), 1, 8000);
        }
        std::unique_ptr<char[]> large(new char[8 * MiB]);
        std::memset(large.get(), 2, 8 * MiB);
        CHECK(stats_of(a.get()).resident_bytes >= 2000 * 8000 + 8 * MiB, "resident before freeing");
    }
    std::size_t freed = stats_of(a.get()).resident_bytes;
    CHECK(malloc_arena_trim(a.get()) == 1, "trim after freeing released nothing");
    std::size_t trimmed = stats_of(a.get()).resident_bytes;
    CHECK(trimmed + 8 * MiB <= freed, "resident " + num(freed) + " -> " + num(trimmed));
    CHECK(trimmed < MiB, num(trimmed) + " bytes resident with no block");
    CHECK(malloc_arena_trim(a.get()) == 0, "a second trim released memory again");
}

void test_destroy_and_stale_handles() {
    begin("destroy and stale handles");
    arena_hd *def = malloc_default_arena();
    OwnedArena a;
    {
        ArenaScope in(a.get());
        for (int i = 0; i < 1000; i++)
            new std::string(100, 'x'); // freed by the destroy
    }
    CHECK(stats_of(a.get()).live_blocks == 2000, "strings in the arena");
    CHECK(a.destroy() == 0, "destroy");
    arena_hd *d = a.stale();
    Stats out;
    CHECK_ERRNO(malloc_set_arena(d), is_null, EINVAL);
    CHECK(malloc_get_arena() == def, "a refused set changed the arena");
    CHECK_ERRNO(malloc_arena_stats(d, &out), is_minus_one, EINVAL);
    CHECK_ERRNO(malloc_arena_trim(d), is_minus_one, EINVAL);
    CHECK_ERRNO(malloc_arena_set_limit(d, MiB), is_minus_one, EINVAL);
    CHECK_ERRNO(malloc_arena_malloc(d, 64), is_null, EINVAL);
    CHECK_ERRNO(malloc_arena_calloc(d, 2, 64), is_null, EINVAL);
    CHECK_ERRNO(malloc_arena_aligned_alloc(d, 64, 64), is_null, EINVAL);
    CHECK_ERRNO(malloc_arena_destroy(d), is_minus_one, EINVAL);
    CHECK_ERRNO(malloc_arena_destroy(def), is_minus_one, EINVAL);
    CHECK_ERRNO(malloc_arena_destroy(nullptr), is_minus_one, EINVAL);
    CHECK_ERRNO(malloc_set_arena(nullptr), is_null, EINVAL);
    CHECK(malloc_arena_stats(def, &out) == 0, "the default arena is live");
    OwnedArena again;
    CHECK(again.get() != d, "a new arena got the destroyed arena's handle");
    CHECK(stats_of(again.get()).mapped_bytes == 0, "the new arena inherited mappings");
    CHECK_ERRNO(malloc_arena_malloc(d, 64), is_null, EINVAL);
}

void test_threads() {
    begin("std::thread: counts, and an arena destroyed under a thread");
    constexpr int T = 3;
    OwnedArena shared;
    Barrier step(T + 1);
    std::vector<std::thread> threads;
    for (int i = 0; i < T; i++)
        threads.emplace_back([&] {
            ArenaScope in(shared.get());
            std::unique_ptr<int> mine(new int(1));
            step.wait(); // 1: all in
            step.wait(); // 2: counted
        });
    step.wait();
    CHECK(stats_of(shared.get()).threads == T, num(stats_of(shared.get()).threads) + " threads, 3 entered");
    CHECK(stats_of(shared.get()).live_blocks == T, "one block per thread");
    step.wait();
    for (auto &t : threads)
        t.join();
    CHECK(stats_of(shared.get()).threads == 0, "threads after they left");
    CHECK(stats_of(shared.get()).live_blocks == 0, "blocks after they left");

    OwnedArena doomed;
    Barrier parked(2), resumed(2);
    bool fell_back = false, works = false, refused = false;
    std::thread t([&] {
        malloc_set_arena(doomed.get());
        new std::vector<int>(1000, 1); // freed by the destroy
        parked.wait();
        // destroyed while this thread waits here
        resumed.wait();
        fell_back = malloc_get_arena() == malloc_default_arena();
        std::vector<std::string> strings;
        for (int i = 0; i < 1000; i++)
            strings.emplace_back(static_cast<std::size_t>(i % 300), 'a');
        bool ok = true;
        for (int i = 0; i < 1000; i++)
            ok &= strings[static_cast<std::size_t>(i)] == std::string(static_cast<std::size_t>(i % 300), 'a');
        std::unique_ptr<char[]> big(new char[2 * MiB]);
        works = ok && big != nullptr;
        errno = 0;
        refused = malloc_set_arena(doomed.stale()) == nullptr && errno == EINVAL;
    });
    parked.wait();
    CHECK(stats_of(doomed.get()).threads == 1 && stats_of(doomed.get()).live_blocks == 2,
          "the parked thread's figures");
    CHECK(doomed.destroy() == 0, "destroy the arena a parked thread prefers");
    resumed.wait();
    t.join();
    CHECK(fell_back, "the thread does not prefer the default arena after the destroy");
    CHECK(works, "the thread's allocations failed after the destroy");
    CHECK(refused, "the destroyed arena could be set again");
}

void test_extensions() {
    begin("free_sized, free_aligned_sized, malloc_usable_size, malloc_trim, malloc_stats, malloc_info, mallopt");
    OwnedArena a;
    void *p = malloc_arena_malloc(a.get(), 100);
    void *q = malloc_arena_aligned_alloc(a.get(), 256, 1000);
    CHECK(malloc_usable_size(p) >= 100 && malloc_usable_size(q) >= 1000, "usable sizes");
    CHECK(malloc_usable_size(nullptr) == 0, "malloc_usable_size(nullptr)");
    free_sized(p, 100);
    free_aligned_sized(q, 256, 1000);
    CHECK(stats_of(a.get()).live_blocks == 0, "free_sized / free_aligned_sized left blocks");
    int t = malloc_trim(0);
    CHECK(t == 0 || t == 1, "malloc_trim returned " + std::to_string(t));
    malloc_stats();
    char *buf = nullptr;
    std::size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f != nullptr, "open_memstream");
    if (f != nullptr) {
        int rc = malloc_info(0, f);
        std::fclose(f);
        CHECK(rc == 0 && buf != nullptr && std::strstr(buf, "arenalloc") != nullptr,
              "malloc_info does not name arenalloc: the allocator linked is not ours");
        std::free(buf);
    }
    FILE *g = std::tmpfile();
    if (g != nullptr) {
        CHECK_ERRNO(malloc_info(1, g), is_minus_one, EINVAL);
        std::fclose(g);
    }
    CHECK(mallopt(1 /* M_MXFAST */, 64) == 1, "mallopt(M_MXFAST)");
    CHECK(mallopt(12345, 1) == 0, "mallopt of an unknown parameter");
}

} // namespace

int main() {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    test_scopes_and_operator_new();
    test_standard_allocator();
    test_arena_functions();
    test_limit();
    test_trim();
    test_destroy_and_stale_handles();
    test_threads();
    test_extensions();
    std::printf("%lu passed, %lu failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
