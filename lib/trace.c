/*
 * lib/trace.c - W3C traceparent parsing and formatting, random ids, and
 * sampling decisions.
 *
 * The parser is a straight scan over a bounded buffer: fixed offsets for
 * version 00's 55 characters, a lookup table for lowercase hex, no
 * allocation. Ids come from a per-thread xoshiro256** generator seeded from
 * the OS on first use: fast, lock-free, never shared between threads.
 */
#include <pthread.h>
#include <string.h>

#include "floodgate/error.h"
#include "floodgate/trace.h"

#include "internal.h"
#include "siphash.h" /* fg__os_random */

/* Lowercase hex digit values; -1 for every other byte (uppercase is
 * invalid in traceparent). A table: the parser's inner loop is two loads. */
static const int8_t fg_hex_value[256] = {
    ['0'] = 0,  ['1'] = 1,  ['2'] = 2,  ['3'] = 3,  ['4'] = 4,  ['5'] = 5,
    ['6'] = 6,  ['7'] = 7,  ['8'] = 8,  ['9'] = 9,  ['a'] = 10, ['b'] = 11,
    ['c'] = 12, ['d'] = 13, ['e'] = 14, ['f'] = 15,
};

static int fg_hex(unsigned char c) {
    /* The table's unnamed entries are 0, like '0': tell them apart. */
    return (fg_hex_value[c] != 0 || c == '0') ? fg_hex_value[c] : -1;
}

/* Decode n bytes of lowercase hex from s (2n characters). Returns 0 or -1.
 * Errors are OR-ed together and checked once, so the loop has no branch. */
static int fg_unhex(const char *s, uint8_t *out, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        int hi = fg_hex((unsigned char)s[2 * i]);
        int lo = fg_hex((unsigned char)s[2 * i + 1]);
        bad |= hi | lo; /* negative if either is not a digit */
        out[i] = (uint8_t)(((hi & 15) << 4) | (lo & 15));
    }
    return bad < 0 ? -1 : 0;
}

int fg__all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

static int fg_ows(char c) { return c == ' ' || c == '\t'; }

int fg_traceparent_parse(const char *s, size_t len, fg_traceparent *out) {
    if (out == NULL || (s == NULL && len > 0))
        return FG_EINVAL;
    memset(out, 0, sizeof(*out));
    if (len > FG_TRACEPARENT_MAX)
        return FG_EPARSE;
    while (len > 0 && fg_ows(s[0])) {
        s++;
        len--;
    }
    while (len > 0 && fg_ows(s[len - 1]))
        len--;
    /* Every version starts with version 00's layout: "vv-<32>-<16>-ff". */
    if (len < FG_TRACEPARENT_LEN || s[2] != '-' || s[35] != '-' || s[52] != '-')
        return FG_EPARSE;
    fg_traceparent tp;
    if (fg_unhex(s, &tp.version, 1) != 0 || tp.version == 0xff)
        return FG_EPARSE;
    /* Version 00 is exactly 55 characters; a later version may carry more
     * fields, which must start with a '-' (and are not ours to read). */
    if (tp.version == 0 ? len != FG_TRACEPARENT_LEN
                        : len > FG_TRACEPARENT_LEN && s[FG_TRACEPARENT_LEN] != '-')
        return FG_EPARSE;
    if (fg_unhex(s + 3, tp.trace_id, 16) != 0 || fg_unhex(s + 36, tp.parent_id, 8) != 0 ||
        fg_unhex(s + 53, &tp.flags, 1) != 0)
        return FG_EPARSE;
    if (fg__all_zero(tp.trace_id, 16) || fg__all_zero(tp.parent_id, 8))
        return FG_EPARSE;
    *out = tp;
    return 0;
}

void fg__tohex(const uint8_t *in, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

int fg_traceparent_format(const fg_traceparent *tp, char *buf, size_t cap) {
    if (tp == NULL || buf == NULL || fg__all_zero(tp->trace_id, 16) ||
        fg__all_zero(tp->parent_id, 8))
        return FG_EINVAL;
    if (cap < FG_TRACEPARENT_LEN + 1)
        return FG_ETOOLONG;
    buf[0] = '0';
    buf[1] = '0';
    buf[2] = '-';
    fg__tohex(tp->trace_id, 16, buf + 3);
    buf[35] = '-';
    fg__tohex(tp->parent_id, 8, buf + 36);
    buf[52] = '-';
    fg__tohex(&tp->flags, 1, buf + 53);
    buf[FG_TRACEPARENT_LEN] = '\0';
    return 0;
}

/* ---- ids: a per-thread xoshiro256** ---------------------------------------- */

/* initial-exec: a direct %fs-relative access instead of a __tls_get_addr
 * call per id (this library is linked at start-up, not dlopen'ed late). */
#define FG_TLS _Thread_local __attribute__((tls_model("initial-exec")))
static FG_TLS uint64_t fg_rng[4];
static FG_TLS int fg_rng_seeded;

static uint64_t fg_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* A forked child inherits its parent's generator state and would repeat the
 * parent's ids; the only thread in the child is the one that forked, so
 * forgetting its seed there is enough. */
static void fg_rng_forget_in_child(void) { fg_rng_seeded = 0; }
static void fg_rng_register_fork(void) {
    (void)pthread_atfork(NULL, NULL, fg_rng_forget_in_child);
}
static pthread_once_t fg_rng_fork_once = PTHREAD_ONCE_INIT;

static uint64_t fg_rng_next(void) {
    if (!fg_rng_seeded) {
        (void)pthread_once(&fg_rng_fork_once, fg_rng_register_fork);
        /* An all-zero state would stay zero; the OS source gives 256 bits.
         * Should it fail (no entropy source at all), fall back to the
         * thread's stack address and the clock, which are at least distinct. */
        if (fg__os_random(fg_rng, sizeof(fg_rng)) != 0 || (fg_rng[0] | fg_rng[1]) == 0) {
            uint64_t seed = (uint64_t)(uintptr_t)&seed ^ UINT64_C(0x9e3779b97f4a7c15);
            for (int i = 0; i < 4; i++) {
                seed += UINT64_C(0x9e3779b97f4a7c15); /* splitmix64 */
                uint64_t z = seed;
                z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
                z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
                fg_rng[i] = z ^ (z >> 31);
            }
        }
        fg_rng_seeded = 1;
    }
    uint64_t *s = fg_rng;
    uint64_t result = fg_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = fg_rotl(s[3], 45);
    return result;
}

uint64_t fg__random_u64(void) { return fg_rng_next(); }

static void fg_random_id(uint8_t *id, size_t n) {
    do {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t r = fg_rng_next();
            size_t k = n - i < 8 ? n - i : 8;
            memcpy(id + i, &r, k);
        }
    } while (fg__all_zero(id, n)); /* never all zero (p = 2^-64 per try) */
}

void fg_trace_id_new(uint8_t id[16]) {
    if (id)
        fg_random_id(id, 16);
}

void fg_span_id_new(uint8_t id[8]) {
    if (id)
        fg_random_id(id, 8);
}

/* ---- sampling ----------------------------------------------------------------- */

static int fg_sample_simple(fg_sampler_kind kind, double ratio, const uint8_t trace_id[16]) {
    switch (kind) {
    case FG_SAMPLER_ALWAYS_OFF:
        return 0;
    case FG_SAMPLER_ALWAYS_ON:
        return 1;
    case FG_SAMPLER_RATIO: {
        if (ratio != ratio || ratio < 0 || ratio > 1)
            return FG_EINVAL;
        /* The rightmost 7 bytes, big-endian: the part Level 2 requires to be
         * random, so the share sampled is the ratio, and every service
         * that compares the same way decides the same for a trace. */
        uint64_t v = 0;
        for (int i = 9; i < 16; i++)
            v = (v << 8) | trace_id[i];
        /* v < ratio * 2^56, in integers: a 56-bit v does not fit a double's
         * mantissa. The product is exact (a power-of-two scale); for a whole
         * v, v < x exactly when v < ceil(x). */
        double x = ratio * (double)(UINT64_C(1) << 56);
        uint64_t bound = (uint64_t)x;
        bound += x > (double)bound;
        return v < bound;
    }
    default:
        return FG_EINVAL;
    }
}

int fg_sampler_decide(const fg_sampler *sampler, const uint8_t trace_id[16], int has_parent,
                      int parent_sampled) {
    if (sampler == NULL || trace_id == NULL)
        return FG_EINVAL;
    if (sampler->kind != FG_SAMPLER_PARENT_BASED)
        return fg_sample_simple(sampler->kind, sampler->ratio, trace_id);
    if (sampler->root == FG_SAMPLER_PARENT_BASED)
        return FG_EINVAL;
    int root = fg_sample_simple(sampler->root, sampler->ratio, trace_id);
    if (root < 0)
        return root; /* the root rule is invalid even when a parent decides */
    return has_parent ? parent_sampled != 0 : root;
}
