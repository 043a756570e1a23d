/* seed_case: issue 12 part 2 on real Debian libraries.
 *
 * `cargo run --release -p arenalloc-demo` builds and runs it in five modes
 * (demo/src/seed_case.rs). By hand (Debian 12: scripts/install-demo-deps.sh):
 *   gcc -O2 -Wall -o seed_case demo/seed/seed_case.c -lgnutls -lcurl -lpthread -ldl
 * Run:
 *   demo/seed/seed_case MODE [N [LIB [S]]]
 *   LD_PRELOAD=/work/main/target/release/libarenalloc.so demo/seed/seed_case explicit 400
 *     MODE  plain       no allocator calls
 *           glibc-trim  malloc_trim(0) once, right after the application's free
 *           explicit    every library call runs inside malloc_set_arena(lib)/restore
 *                       (arenalloc's functions are found with dlsym: under plain
 *                       glibc this mode runs as plain and says alloc=glibc)
 *     N     requests (default 400)
 *     LIB   the per-request library: curl (default), none
 *     S     strings per request (default 1200; one buffer per 133 strings)
 *
 * The application: N requests; each builds S strings of 32-512 B and S/133
 * buffers of 4-64 KiB (about 650 KB for S = 1200, every byte written), and
 * halfway through the request's strings makes one call into the library:
 *   curl  one real HTTP/1.1 GET with libcurl (cookie engine on) to a loopback
 *         server thread of this program (which never allocates); the response
 *         sets five cookies scoped to the tenant's path, so libcurl's cookie
 *         jar (Curl_cookie_add) keeps, for good, per request: five struct
 *         Cookie (calloc in libcurl) and their name, value, path, spath and
 *         domain (strdup: malloc called from libc): ~24 blocks, ~1.3 KB requested
 *         (~1.8 KB in arenalloc size classes) per request.
 *   none  no per-request library: the trust store alone.
 * At request N/2 it loads the GnuTLS system trust store into credentials it
 * keeps (gnutls_certificate_set_x509_system_trust: ~3.7 MB, ~22 000 blocks,
 * almost all allocated by libtasn1, in one burst).
 * It prints "phase free" (and "phase trim") as it gets there, for the chart.
 * Then it frees every record, idles 1.5 s and prints one line:
 *   result mode alloc lib n s certs build_ms rss_start_kb
 *   rss_peak_kb (VmHWM) rss_free_kb (VmRSS just after the free / trim)
 *   rss_after_kb (VmRSS after the idle) anon_start_kb anon_after_kb (RssAnon:
 *   VmRSS less the shared libraries' file pages) live_app_bytes (what the
 *   records held) lib_live_kb (bytes the per-request library keeps: live bytes
 *   after the free less those at the start and the trust store's)
 *   tls_live_kb (live bytes across the trust-store load), from mallinfo2; under
 *   glibc they include chunks parked in the tcache, so they read a little high;
 *   under arenalloc also the default and library arenas' live and resident KB.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <gnutls/gnutls.h>

/* Per request: S strings (argv[4], default 1200) and one 4-64 KiB buffer
 * per 133 strings (9 for 1200), about 650 KB for S = 1200. */
static int strings_per_request = 1200, buffers_per_request = 9;

/* ---- arenalloc, if it is there (resolved at run time) ---- */
typedef struct arena_hd arena_hd;
struct arena_stats8 { /* the eight fields the symbol malloc_arena_stats writes */
    size_t live_bytes, live_blocks, resident_bytes, mapped_bytes,
           in_use_bytes, peak_in_use_bytes, limit_bytes, threads;
};
static arena_hd *(*p_new_arena)(void);
static arena_hd *(*p_set_arena)(arena_hd *);
static arena_hd *(*p_default_arena)(void);
static int (*p_arena_stats)(arena_hd *, struct arena_stats8 *);
static arena_hd *lib_arena;
static int explicit_mode;

static void resolve_arenalloc(void) {
    p_new_arena = (arena_hd * (*)(void)) dlsym(RTLD_DEFAULT, "malloc_new_arena");
    p_set_arena = (arena_hd * (*)(arena_hd *)) dlsym(RTLD_DEFAULT, "malloc_set_arena");
    p_default_arena = (arena_hd * (*)(void)) dlsym(RTLD_DEFAULT, "malloc_default_arena");
    p_arena_stats = (int (*)(arena_hd *, struct arena_stats8 *))dlsym(RTLD_DEFAULT, "malloc_arena_stats");
}

/* Bytes in live blocks now: arenalloc's uordblks counts large blocks too,
 * glibc's leaves mmapped chunks to hblkhd. */
static long live_now(void) {
    struct mallinfo2 m = mallinfo2();
    return p_new_arena ? (long)m.uordblks : (long)(m.uordblks + m.hblkhd);
}

/* Every call into a library goes through LIBCALL: in explicit mode it runs
 * inside the library's arena, and the caller's arena is restored after. */
#define LIBCALL(stmt)                                                           \
    do {                                                                        \
        arena_hd *prev_ = explicit_mode ? p_set_arena(lib_arena) : NULL;        \
        stmt;                                                                   \
        if (explicit_mode) p_set_arena(prev_);                                  \
    } while (0)

/* ---- /proc/self/status ---- */
static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t k = strlen(key);
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, k) && line[k] == ':') { v = strtol(line + k + 1, NULL, 10); break; }
    fclose(f);
    return v;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
static size_t range(size_t lo, size_t hi) { return lo + next() % (hi - lo + 1); }
static void fill(char *p, size_t n) {
    for (size_t i = 0; i + 8 <= n; i += 8) { uint64_t x = next(); memcpy(p + i, &x, 8); }
}

/* ---- libcurl: a loopback HTTP server thread (it never allocates) ---- */
static int listen_fd, port;
static char response[4096];
static void *server(void *unused) {
    (void)unused;
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0) continue;
        char buf[4096];
        size_t got = 0;
        while (got < sizeof buf - 1) {
            ssize_t k = read(fd, buf + got, sizeof buf - 1 - got);
            if (k <= 0) break;
            got += (size_t)k;
            buf[got] = 0;
            if (strstr(buf, "\r\n\r\n")) break;
        }
        size_t len = strlen(response), off = 0;
        while (off < len) {
            ssize_t k = write(fd, response + off, len - off);
            if (k <= 0) break;
            off += (size_t)k;
        }
        close(fd);
    }
    return NULL;
}
static size_t sink(char *b, size_t s, size_t n, void *u) { (void)b; (void)u; return s * n; }

static CURL *curl;
static void curl_setup(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t al = sizeof a;
    pthread_t t;
    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) || listen(listen_fd, 16) ||
        getsockname(listen_fd, (struct sockaddr *)&a, &al)) { perror("listen"); exit(1); }
    port = ntohs(a.sin_port);
    pthread_create(&t, NULL, server, NULL);
    char resolve[64];
    snprintf(resolve, sizeof resolve, "api.example.com:%d:127.0.0.1", port);
    LIBCALL({
        curl_global_init(CURL_GLOBAL_DEFAULT);
        curl = curl_easy_init();
        struct curl_slist *res = curl_slist_append(NULL, resolve);
        curl_easy_setopt(curl, CURLOPT_RESOLVE, res);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, sink);
        curl_easy_setopt(curl, CURLOPT_COOKIEFILE, ""); /* cookie engine on, in memory */
    });
}

static void token(char *out, size_t len) {
    static const char b64[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    for (size_t i = 0; i < len; i++) out[i] = b64[next() & 63];
    out[len] = 0;
}

/* One request to the upstream API: a real HTTP/1.1 exchange through libcurl.
 * The response sets the cookies a typical web API sets, scoped to the
 * tenant's path, so each one is new to the jar and stays there. */
static void curl_request(int r) {
    char url[160], path[96], sid[512], csrf[64], jwt[512], pref[128];
    token(sid, range(32, 128));
    token(csrf, 43);
    token(jwt, range(150, 400));
    token(pref, range(20, 90));
    snprintf(path, sizeof path, "/api/v2/tenants/%08x-%04x-4%03x-a%03x-%012llx", (unsigned)next(),
             (unsigned)(next() & 0xffff), (unsigned)(next() & 0xfff), (unsigned)(next() & 0xfff),
             (unsigned long long)(next() & 0xffffffffffffull));
    snprintf(response, sizeof response,
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
             "Set-Cookie: SESSIONID=%s; Path=%s; Secure; HttpOnly\r\n"
             "Set-Cookie: csrftoken=%s; Path=%s\r\n"
             "Set-Cookie: auth_token=%s; Path=%s; HttpOnly\r\n"
             "Set-Cookie: prefs=%s; Path=%s\r\n"
             "Set-Cookie: lb_affinity=node-%d; Path=%s\r\n"
             "Content-Length: 13\r\n\r\n{\"ok\": true}\n",
             sid, path, csrf, path, jwt, path, pref, path, r % 7, path);
    snprintf(url, sizeof url, "http://api.example.com:%d%s/items?request=%d", port, path, r);
    CURLcode rc;
    LIBCALL({
        curl_easy_setopt(curl, CURLOPT_URL, url);
        rc = curl_easy_perform(curl);
    });
    if (rc != CURLE_OK) { fprintf(stderr, "curl: %s\n", curl_easy_strerror(rc)); exit(1); }
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "plain";
    int n = argc > 2 ? atoi(argv[2]) : 400;
    const char *lib = argc > 3 ? argv[3] : "curl";
    if (argc > 4) strings_per_request = atoi(argv[4]);
    buffers_per_request = (strings_per_request * 9 + 600) / 1200;
    if (buffers_per_request < 1) buffers_per_request = 1;
    if (n < 1 || strings_per_request < 2) { fprintf(stderr, "bad N or S\n"); return 2; }
    int every = strings_per_request / buffers_per_request;
    if (strcmp(mode, "plain") && strcmp(mode, "glibc-trim") && strcmp(mode, "explicit")) {
        fprintf(stderr, "usage: %s plain|glibc-trim|explicit [N [curl|none [S]]]\n", argv[0]);
        return 2;
    }
    resolve_arenalloc();
    int arenalloc = p_new_arena && p_set_arena;
    if (!strcmp(mode, "explicit") && arenalloc) {
        lib_arena = p_new_arena();
        if (!lib_arena) { perror("malloc_new_arena"); return 1; }
        explicit_mode = 1;
    }
    long rss_start = status_kb("VmRSS"), anon_start = status_kb("RssAnon");
    long live_start = live_now(), live_tls = 0; /* after the constructors, before any library call */
    int use_curl = !strcmp(lib, "curl");
    if (use_curl) curl_setup();

    size_t nrec = (size_t)n * (strings_per_request + buffers_per_request), k = 0;
    char **rec = malloc(nrec * sizeof *rec);
    size_t live_app = 0;
    gnutls_certificate_credentials_t cred = NULL;
    int certs = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < n; r++) {
        if (r == n / 2) { /* the trust store, once, part-way through */
            long before = live_now();
            LIBCALL({
                gnutls_global_init();
                gnutls_certificate_allocate_credentials(&cred);
                certs = gnutls_certificate_set_x509_system_trust(cred);
            });
            live_tls = live_now() - before;
        }
        int buffers = 0;
        for (int i = 0; i < strings_per_request; i++) {
            if (i == strings_per_request / 2) {
                if (use_curl) curl_request(r);
            }
            size_t len = range(32, 511);
            char *s = malloc(len + 1);
            fill(s, len);
            s[len] = 0;
            rec[k++] = s;
            live_app += len + 1;
            if (i % every == every - 1 && buffers < buffers_per_request) { /* buffers among the strings */
                buffers++;
                size_t b = range(4096, 65536);
                char *p = malloc(b);
                fill(p, b);
                rec[k++] = p;
                live_app += b;
            }
        }
        for (; buffers < buffers_per_request; buffers++) {
            size_t b = range(4096, 65536);
            char *p = malloc(b);
            fill(p, b);
            rec[k++] = p;
            live_app += b;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long build_ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;

    printf("phase free\n");
    fflush(stdout);
    for (size_t i = 0; i < k; i++) free(rec[i]);
    free(rec);
    long live_libs = live_now() - live_start; /* the app holds nothing now */
    if (!strcmp(mode, "glibc-trim")) {
        printf("phase trim\n");
        fflush(stdout);
        malloc_trim(0);
    }
    long rss_free = status_kb("VmRSS");
    struct timespec idle = {1, 500000000};
    nanosleep(&idle, NULL);
    long rss_after = status_kb("VmRSS"), rss_peak = status_kb("VmHWM");
    long anon_after = status_kb("RssAnon");

    printf("result mode=%s alloc=%s lib=%s n=%d s=%d certs=%d build_ms=%ld rss_start_kb=%ld "
           "rss_peak_kb=%ld rss_free_kb=%ld rss_after_kb=%ld anon_start_kb=%ld anon_after_kb=%ld "
           "live_app_bytes=%zu lib_live_kb=%ld tls_live_kb=%ld",
           mode, arenalloc ? "arenalloc" : "glibc", lib, n, strings_per_request, certs, build_ms,
           rss_start, rss_peak, rss_free, rss_after, anon_start, anon_after, live_app,
           (live_libs - live_tls) / 1024, live_tls / 1024);
    if (arenalloc && p_arena_stats && p_default_arena) {
        struct arena_stats8 d = {0}, l = {0};
        p_arena_stats(p_default_arena(), &d);
        printf(" default_arena_live_kb=%zu default_arena_resident_kb=%zu", d.live_bytes / 1024,
               d.resident_bytes / 1024);
        if (lib_arena && p_arena_stats(lib_arena, &l) == 0)
            printf(" lib_arena_live_kb=%zu lib_arena_resident_kb=%zu", l.live_bytes / 1024,
                   l.resident_bytes / 1024);
    }
    printf("\n");
    fflush(stdout);
    _exit(0); /* the library state stays live to the end, as in a service */
}
