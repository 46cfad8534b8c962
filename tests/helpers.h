/*
 * tests/helpers.h - helpers shared by the Check suites (tests/check_*.c).
 *
 * Everything here is static inline (or a macro), so a suite pays only for
 * what it uses; the one exception is the counting, failure-injecting
 * allocator for fg_set_alloc_funcs, whose counters live in
 * tests/check_helpers.c. Every name starts with th_ (TH_ for macros).
 */
#ifndef FLOODGATE_TESTS_HELPERS_H
#define FLOODGATE_TESTS_HELPERS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#define TH_NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* For loops of thousands of checks: only calls into Check when the condition fails. */
#define TH_FAST_ASSERT(cond, ...)                                                             \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            ck_abort_msg(__VA_ARGS__);                                                        \
        }                                                                                     \
    } while (0)

/* ---- pseudo-random numbers ----------------------------------------------------------- */

/* xorshift64*: a fixed-seed generator, the same sequence on every run. */
static inline uint64_t th_rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

/* A number below n, from the generator's high bits. */
static inline size_t th_rng_below(uint64_t *s, size_t n) {
    return (size_t)(th_rng_next(s) >> 33) % n;
}

/* ---- bytes, hex and slices ----------------------------------------------------------- */

/* A heap copy of exactly len bytes (malloc(1) for len 0), so ASan sees overruns. */
static inline char *th_exact_copy(const char *s, size_t len) {
    char *p = malloc(len > 0 ? len : 1);
    ck_assert_ptr_nonnull(p);
    if (len > 0) {
        memcpy(p, s, len);
    }
    return p;
}

/* The value of one lowercase hex digit (test vectors only: aborts on anything else). */
static inline int th_hexval(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    ck_abort_msg("bad hex digit in a test vector: 0x%02x", (unsigned)(unsigned char)c);
    return -1;
}

/* Decode exactly n bytes of lowercase hex (test vectors only). */
static inline void th_unhex(const char *hex, uint8_t *out, size_t n) {
    ck_assert_uint_eq(strlen(hex), 2 * n);
    for (size_t i = 0; i < n; i++) {
        out[i] = (uint8_t)(th_hexval(hex[2 * i]) << 4 | th_hexval(hex[2 * i + 1]));
    }
}

/* Lowercase hex of n bytes and a NUL into out (2n + 1 bytes). */
static inline void th_tohex(const uint8_t *in, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Whether all n bytes at p are zero. */
static inline int th_is_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] != 0) {
            return 0;
        }
    }
    return 1;
}

/* Fill dst[0 .. n) cycling through pattern. */
static inline void th_fill(char *dst, size_t n, const char *pattern) {
    size_t pl = strlen(pattern);
    for (size_t i = 0; i < n; i++) {
        dst[i] = pattern[i % pl];
    }
}

/* Whether a slice holds exactly want[0 .. want_len). */
static inline int th_str_is(fg_str s, const char *want, size_t want_len) {
    return s.len == want_len && (want_len == 0 || memcmp(s.ptr, want, want_len) == 0);
}

/* ---- canary-guarded output buffers --------------------------------------------------- */

#define TH_CANARY     0x5C
#define TH_CANARY_LEN 8

/* A heap buffer of cap bytes (filled with 'Z') followed by TH_CANARY_LEN canary bytes. */
static inline char *th_canary_buf(size_t cap) {
    char *p = malloc(cap + TH_CANARY_LEN);
    ck_assert_ptr_nonnull(p);
    memset(p, 'Z', cap);
    memset(p + cap, TH_CANARY, TH_CANARY_LEN);
    return p;
}

/* Fails if a byte past cap was written; what (if not NULL) prefixes the message. */
static inline void th_assert_canary(const char *p, size_t cap, const char *what) {
    for (size_t i = 0; i < TH_CANARY_LEN; i++) {
        if (what != NULL) {
            ck_assert_msg((unsigned char)p[cap + i] == TH_CANARY,
                          "%s: byte %zu past cap %zu was written (0x%02x)", what, i, cap,
                          (unsigned)(unsigned char)p[cap + i]);
        } else {
            ck_assert_msg((unsigned char)p[cap + i] == TH_CANARY,
                          "byte %zu past cap %zu was written (0x%02x)", i, cap,
                          (unsigned)(unsigned char)p[cap + i]);
        }
    }
}

/* ---- contexts and handlers ----------------------------------------------------------- */

/* A context with the usual method and path. */
static inline void th_ctx_new(fg_ctx *ctx) {
    memset(ctx, 0, sizeof(*ctx));
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/"), 0);
}

/* Heap copies of header names and values (exact lengths), freed together. */
typedef struct th_heap_list {
    char *p[2 * FG_CTX_MAX_HEADERS + 8];
    int n;
} th_heap_list;

static inline void th_add_header(fg_ctx *ctx, th_heap_list *h, const char *name,
                                 const char *value) {
    size_t nl = strlen(name), vl = strlen(value);
    char *nb = th_exact_copy(name, nl), *vb = th_exact_copy(value, vl);

    ck_assert_int_lt(h->n + 2, TH_NELEM(h->p));
    h->p[h->n++] = nb;
    h->p[h->n++] = vb;
    ck_assert_int_eq(fg_ctx_add_header_n(ctx, nb, nl, vb, vl), 0);
}

static inline void th_heap_free(th_heap_list *h) {
    for (int i = 0; i < h->n; i++) {
        free(h->p[i]);
    }
    h->n = 0;
}

/* A handler that does nothing and succeeds. */
static inline int th_ok_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

/* A handler that counts its calls in the int at arg and succeeds. */
static inline int th_count_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (*(int *)arg)++;
    return 0;
}

/* ---- a counting, failure-injecting allocator (tests/check_helpers.c) ----------------- */

typedef struct th_alloc_state {
    long attempts; /* calls to th_count_malloc, failed ones included */
    long allocs;   /* non-NULL blocks handed out */
    long frees;    /* non-NULL blocks given back */
    long fail_at;  /* fail the attempt with this number (1-based); 0 = never */
    int fail_all;  /* fail every attempt */
    int injected;  /* a failure has been injected */
} th_alloc_state;

extern th_alloc_state th_alloc;

/* For fg_set_alloc_funcs: count, and fail as th_alloc.fail_at / fail_all say. */
void *th_count_malloc(size_t size);
void th_count_free(void *p);

/* Zero every counter and stop injecting failures. */
void th_alloc_reset(void);

/* A fixture teardown: back to the default allocator. */
static inline void th_alloc_teardown(void) { fg_set_alloc_funcs(NULL, NULL); }

#endif /* FLOODGATE_TESTS_HELPERS_H */
