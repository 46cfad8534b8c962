/*
 * tests/check_baggage.c - W3C Baggage: fg_baggage_parse, parse_ctx, get
 * (percent-decoding), set, remove, format (percent-encoding) and
 * fg_ctx_baggage (floodgate/trace.h, "baggage").
 *
 * Written from the header's contract and the W3C Baggage grammar: members
 * separated by ',' with optional whitespace; a member is key OWS '=' OWS
 * value, then ';'-separated properties (key, or key OWS '=' OWS value); keys
 * are HTTP tokens; values are baggage-octets (printable ASCII but '"' ','
 * ';' '\\' and space), percent-encoding the rest. Unlike tracestate, a bad
 * member is skipped and counted (b->malformed, FG_EPARSE) and the others are
 * kept; members past 64, or past 8192 bytes of formatted value, are dropped
 * and counted (b->dropped, FG_ETOOMANY). properties is the raw text after
 * the member's first ';' (and the optional whitespace around it).
 *
 * get decodes %XX (either case) and keeps a '%' that is not followed by two
 * hex digits; set takes raw bytes and format encodes every byte outside the
 * value set, and '%', as %XX with uppercase hex (RFC 3986 section 2.1), so
 * parse -> get gives back exactly the bytes that were set. Every input is
 * copied into a heap buffer of exactly its length (AddressSanitizer catches
 * a read past it) and every output buffer has canary bytes after cap.
 *
 * Last, 20,000 fixed-seed pseudo-random inputs check the invariants: codes
 * and counters agree, every slice lies inside the input and obeys the
 * grammar, generated valid lists parse to exactly their members, one bad
 * member costs exactly that member, get agrees with a reference decoder,
 * and format re-parses to the same members.
 *
 * Tests marked "LIB DISAGREES" say what the header promises and what
 * lib/baggage.c did instead.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

/* ---- helpers ------------------------------------------------------------------------- */

/* Whether a slice lies inside base[0 .. len); an empty slice anywhere (or NULL). */
static int slice_inside(fg_str s, const char *base, size_t len) {
    uintptr_t p = (uintptr_t)s.ptr, b = (uintptr_t)base;
    if (s.len == 0) {
        return 1;
    }
    return s.ptr != NULL && p >= b && s.len <= len && p - b <= len - s.len;
}

/*
 * fg_baggage_get into a buffer of exactly cap bytes plus a canary. On 0 the
 * value (and its NUL) is copied to out and *len set.
 */
static int get_checked(const fg_baggage *b, const char *key, size_t cap, char *out,
                       size_t *len) {
    char *buf = th_canary_buf(cap);
    size_t n = (size_t)-1;
    int rc = fg_baggage_get(b, key, strlen(key), buf, cap, &n);

    th_assert_canary(buf, cap, "get");
    if (rc == 0) {
        ck_assert_uint_lt(n, cap);
        ck_assert_msg(buf[n] == '\0', "get: no NUL at *len %zu", n);
        memcpy(out, buf, n + 1);
        *len = n;
    }
    free(buf);
    return rc;
}

/* fg_baggage_format likewise; out must hold FG_BAGGAGE_MAX_BYTES + 1. */
static int format_checked(const fg_baggage *b, size_t cap, char *out, size_t *len) {
    char *buf = th_canary_buf(cap);
    size_t n = (size_t)-1;
    int rc = fg_baggage_format(b, buf, cap, &n);

    th_assert_canary(buf, cap, "format");
    if (rc == 0) {
        ck_assert_uint_lt(n, cap);
        ck_assert_msg(buf[n] == '\0', "format: no NUL at *len %zu", n);
        ck_assert_uint_eq(strlen(buf), n);
        ck_assert_uint_le(n, FG_BAGGAGE_MAX_BYTES);
        memcpy(out, buf, n + 1);
        *len = n;
    } else if (rc == FG_ETOOLONG && cap > 0) {
        ck_assert_msg(buf[0] == '\0', "format: buf is not \"\" after FG_ETOOLONG (cap %zu)",
                      cap);
    }
    free(buf);
    return rc;
}

/* fg_ctx_baggage likewise. */
static int ctx_get_checked(const fg_ctx *ctx, const char *key, size_t cap, char *out,
                           size_t *len) {
    char *buf = th_canary_buf(cap);
    size_t n = (size_t)-1;
    int rc = fg_ctx_baggage(ctx, key, strlen(key), buf, cap, &n);

    th_assert_canary(buf, cap, "fg_ctx_baggage");
    if (rc == 0) {
        ck_assert_uint_lt(n, cap);
        ck_assert_msg(buf[n] == '\0', "fg_ctx_baggage: no NUL at *len %zu", n);
        memcpy(out, buf, n + 1);
        *len = n;
    }
    free(buf);
    return rc;
}

/* b holds exactly the NULL-terminated key, value, properties, ... list. */
static void assert_members(const fg_baggage *b, const char *const *want, const char *what) {
    uint32_t n = 0;

    while (want[3 * n] != NULL) {
        n++;
    }
    ck_assert_msg(b->n == n, "%s: %u members, want %u", what, (unsigned)b->n, (unsigned)n);
    for (uint32_t i = 0; i < n; i++) {
        const fg_baggage_member *m = &b->members[i];
        const char *k = want[3 * i], *v = want[3 * i + 1], *p = want[3 * i + 2];
        ck_assert_msg(th_str_is(m->key, k, strlen(k)),
                      "%s: member %u key \"%.*s\", want \"%s\"", what, (unsigned)i,
                      (int)m->key.len, m->key.ptr, k);
        ck_assert_msg(th_str_is(m->value, v, strlen(v)),
                      "%s: member %u value \"%.*s\", want \"%s\"", what, (unsigned)i,
                      (int)m->value.len, m->value.ptr, v);
        ck_assert_msg(th_str_is(m->properties, p, strlen(p)),
                      "%s: member %u properties \"%.*s\", want \"%s\"", what, (unsigned)i,
                      (int)m->properties.len, m->properties.ptr, p);
    }
}

static void assert_inside(const fg_baggage *b, const char *base, size_t len) {
    for (uint32_t i = 0; i < b->n; i++) {
        const fg_baggage_member *m = &b->members[i];
        ck_assert_msg(slice_inside(m->key, base, len) && slice_inside(m->value, base, len) &&
                          slice_inside(m->properties, base, len),
                      "member %u outside the input", (unsigned)i);
        ck_assert_int_eq(m->plain, 0);
    }
}

/* ---- the parse table ----------------------------------------------------------------- */

typedef struct bg_case {
    const char *in;
    size_t len; /* 0: strlen(in) */
    int rc;
    uint32_t malformed;
    const char *want[13]; /* key, value, properties, ... NULL */
} bg_case;

#define BG_OK(in, ...)                                                                        \
    {                                                                                         \
        in, 0, 0, 0, { __VA_ARGS__, NULL }                                                    \
    }
#define BG_BAD(in, mal, ...)                                                                  \
    {                                                                                         \
        in, 0, FG_EPARSE, mal, { __VA_ARGS__, NULL }                                          \
    }
#define BG_NONE(in, rc, mal)                                                                  \
    {                                                                                         \
        in, 0, rc, mal, { NULL }                                                              \
    }

/* Every baggage-octet: %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E. */
#define BAGCHR                                                                                \
    "!#$%&'()*+-./0123456789:<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxy"   \
    "z{|}~"
/* Every tchar (RFC 9110). */
#define TCHARS "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

static const bg_case parse_cases[] = {
    /*
     * The W3C Baggage examples. properties is the raw text after the first ';'
     * less the optional whitespace the grammar puts on either side of it
     * (OWS ";" OWS property): "; propertyKey=..." gives "propertyKey=...".
     * (The header's "raw text after the first ';'" could be read as keeping
     * that leading space; the tests take the grammar's reading.)
     */
    BG_OK("key1=value1;property1;property2, key2 = value2, key3=value3; "
          "propertyKey=propertyValue",
          "key1", "value1", "property1;property2", "key2", "value2", "", "key3", "value3",
          "propertyKey=propertyValue"),
    BG_OK("key1=value1", "key1", "value1", ""),
    BG_OK("userId=alice,serverNode=DF%2028,isProduction=false", "userId", "alice", "",
          "serverNode", "DF%2028", "", "isProduction", "false", ""),

    /* OWS around '=' and members */
    BG_OK("a = b", "a", "b", ""),
    BG_OK("a\t=\tb", "a", "b", ""),
    BG_OK("a =b", "a", "b", ""),
    BG_OK("a= b", "a", "b", ""),
    BG_OK(" a=b , c=d ", "a", "b", "", "c", "d", ""),
    BG_OK("\ta=b\t,\tc=d\t", "a", "b", "", "c", "d", ""),
    BG_OK("a=b,c=d", "a", "b", "", "c", "d", ""),
    BG_OK("k=v\t", "k", "v", ""),

    /* values */
    BG_OK("k=", "k", "", ""),
    BG_OK("k= ", "k", "", ""),
    BG_OK("k=,a=1", "k", "", "", "a", "1", ""),
    BG_OK("k=a=b", "k", "a=b", ""),
    BG_OK("k==", "k", "=", ""),
    BG_OK("k=%20%2C", "k", "%20%2C", ""),
    BG_OK("k=%", "k", "%", ""),
    BG_OK("k=" BAGCHR, "k", BAGCHR, ""),

    /* keys: every tchar, any case */
    BG_OK(TCHARS "=v", TCHARS, "v", ""),
    BG_OK("Key=Value", "Key", "Value", ""),
    BG_OK("k=1,K=2", "k", "1", "", "K", "2", ""),

    /* properties */
    BG_OK("k=v;p", "k", "v", "p"),
    BG_OK("k=v;p=1", "k", "v", "p=1"),
    BG_OK("k=v;ttl=60;private", "k", "v", "ttl=60;private"),
    BG_OK("k=v;p;q=1;r", "k", "v", "p;q=1;r"),
    BG_OK("k=v;p=%20", "k", "v", "p=%20"),
    BG_OK("k=v;p=", "k", "v", "p="),
    BG_OK("k=v ;p", "k", "v", "p"),
    BG_OK("k=v;p ,c=d", "k", "v", "p", "c", "d", ""),
    BG_OK("k=v;p=1 , c=d;q", "k", "v", "p=1", "c", "d", "q"),
    BG_OK("k=;p", "k", "", "p"),
    /* inside, properties stay as they came, whitespace and all */
    BG_OK("k=v; p ; q=1 ", "k", "v", "p ; q=1"),
    BG_OK("k=v;\tp;q = 1", "k", "v", "p;q = 1"),

    /* duplicates are all kept (get takes the last) */
    BG_OK("k=1,k=2", "k", "1", "", "k", "2", ""),

    /* a bad member is skipped and counted; its neighbours are kept */
    BG_BAD("a=1,bad,c=3", 1, "a", "1", "", "c", "3", ""),
    BG_BAD("x=1,=v,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k v=1,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k(=1,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k\"=1,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k/=1,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k@=1,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,\xc3\xa9=1,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=a b,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=a\"b,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=\"q\",y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=a\\b,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=\x80,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=caf\xc3\xa9,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=a\x01,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=a\x7f,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=a\tb,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=v;p=\"x\",y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=v;(p),y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=v;=x,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=v;p=a b,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=v;p q,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k;p=1,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("x=1,k=a,b,y=2", 1, "x", "1", "", "k", "a", "", "y", "2", ""),
    BG_BAD("x=1,k=a\nb,y=2", 1, "x", "1", "", "y", "2", ""),
    BG_BAD("bad,k=v", 1, "k", "v", ""),
    BG_BAD("k=v,bad", 1, "k", "v", ""),
    BG_BAD("a b,c d,k=v,e f", 3, "k", "v", ""),
    BG_NONE("x,y", FG_EPARSE, 2),
    BG_NONE("=", FG_EPARSE, 1),
    BG_NONE("k=\"\"", FG_EPARSE, 1),

    /* nothing at all */
    BG_NONE("", 0, 0),
};

#define NPARSE TH_NELEM(parse_cases)

START_TEST(test_parse_table) {
    const bg_case *c = &parse_cases[_i];
    size_t len = c->len != 0 ? c->len : strlen(c->in);
    char *buf = th_exact_copy(c->in, len);
    char what[32];
    fg_baggage b;

    memset(&b, 0xA5, sizeof(b)); /* parse replaces whatever b held */
    int rc = fg_baggage_parse(&b, buf, len);
    ck_assert_msg(rc == c->rc, "case %d \"%.*s\": %s, want %s", _i, (int)len, c->in,
                  fg_err_name(rc), fg_err_name(c->rc));
    ck_assert_msg(b.malformed == c->malformed, "case %d: malformed %u, want %u", _i,
                  (unsigned)b.malformed, (unsigned)c->malformed);
    ck_assert_uint_eq(b.dropped, 0);
    snprintf(what, sizeof(what), "case %d", _i);
    assert_members(&b, c->want, what);
    assert_inside(&b, buf, len);
    free(buf);
}
END_TEST

/* The length is the caller's; a failed parse's counters are replaced by the next. */
START_TEST(test_parse_length_and_reset) {
    static const char s[] = "a=1,b=2,bad";
    fg_baggage b;

    ck_assert_int_eq(fg_baggage_parse(&b, s, sizeof(s) - 1), FG_EPARSE);
    ck_assert_uint_eq(b.n, 2);
    ck_assert_uint_eq(b.malformed, 1);
    ck_assert_int_eq(fg_baggage_parse(&b, s, 7), 0);
    ck_assert_uint_eq(b.n, 2);
    ck_assert_uint_eq(b.malformed, 0);
    ck_assert_uint_eq(b.dropped, 0);
    ck_assert_int_eq(fg_baggage_parse(&b, s, 3), 0);
    ck_assert_uint_eq(b.n, 1);
    ck_assert_int_eq(fg_baggage_parse(&b, s, 0), 0);
    ck_assert_uint_eq(b.n, 0);
    ck_assert_uint_eq(b.malformed, 0);
}
END_TEST

/* ---- limits -------------------------------------------------------------------------- */

static size_t build_members(char *s, int n, const char *prefix) {
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        len += (size_t)sprintf(s + len, "%s%s%d=v%d", i ? "," : "", prefix, i, i);
    }
    return len;
}

START_TEST(test_limit_members) {
    char s[2048];

    for (int n = 60; n <= 70; n++) {
        size_t len = build_members(s, n, "k");
        char *buf = th_exact_copy(s, len);
        fg_baggage b;
        int want = n <= FG_BAGGAGE_MAX_MEMBERS ? 0 : FG_ETOOMANY;
        int rc = fg_baggage_parse(&b, buf, len);

        ck_assert_msg(rc == want, "%d members: %s, want %s", n, fg_err_name(rc),
                      fg_err_name(want));
        ck_assert_uint_eq(b.n, n <= 64 ? (uint32_t)n : 64);
        ck_assert_uint_eq(b.dropped, n <= 64 ? 0 : (uint32_t)(n - 64));
        ck_assert_uint_eq(b.malformed, 0);
        /* the first 64 are the ones kept */
        for (uint32_t i = 0; i < b.n; i++) {
            char k[16];
            int kl = sprintf(k, "k%u", (unsigned)i);
            ck_assert(th_str_is(b.members[i].key, k, (size_t)kl));
        }
        free(buf);
    }
}
END_TEST

/* Malformed members do not count towards 64; malformed wins the code. */
START_TEST(test_limit_members_malformed) {
    char s[2048];
    size_t len = build_members(s, 30, "a");
    len += (size_t)sprintf(s + len, ",bad one,");
    len += build_members(s + len, 34, "b");
    char *buf = th_exact_copy(s, len);
    fg_baggage b;

    ck_assert_int_eq(fg_baggage_parse(&b, buf, len), FG_EPARSE);
    ck_assert_uint_eq(b.n, 64);
    ck_assert_uint_eq(b.malformed, 1);
    ck_assert_uint_eq(b.dropped, 0);
    ck_assert(th_str_is(b.members[63].key, "b33", 3));
    free(buf);

    /* 65 valid and one malformed: both counted, FG_EPARSE */
    len = build_members(s, 65, "k");
    len += (size_t)sprintf(s + len, ",=x");
    buf = th_exact_copy(s, len);
    ck_assert_int_eq(fg_baggage_parse(&b, buf, len), FG_EPARSE);
    ck_assert_uint_eq(b.n, 64);
    ck_assert_uint_eq(b.malformed, 1);
    ck_assert_uint_eq(b.dropped, 1);
    free(buf);
}
END_TEST

/* A member of exactly total characters: key "k" + letter, '=', value. */
static size_t big_member(char *dst, char letter, size_t total) {
    dst[0] = 'k';
    dst[1] = letter;
    dst[2] = '=';
    th_fill(dst + 3, total - 3, "abc%20");
    return total;
}

typedef struct bytes_case {
    size_t lens[4]; /* formatted member lengths, 0-terminated */
    uint32_t kept;
} bytes_case;

static const bytes_case bytes_cases[] = {
    {{4000, 4000, 300, 0}, 2},
    {{4096, 4095, 0}, 2}, /* 8192 exactly */
    {{4096, 4096, 0}, 1}, /* 8193 */
    {{8192, 0}, 1},
    {{8193, 0}, 0},
    {{9000, 0}, 0},
    {{100, 8091, 0}, 2}, /* 8192 */
    {{100, 8092, 0}, 1},
};

/* Parse: members past 8192 bytes of value are dropped and counted. */
START_TEST(test_limit_bytes_parse) {
    const bytes_case *c = &bytes_cases[_i];
    char *s = malloc(20000);
    size_t len = 0;
    int n = 0;
    fg_baggage b;

    ck_assert_ptr_nonnull(s);
    for (n = 0; c->lens[n] != 0; n++) {
        if (n > 0) {
            s[len++] = ',';
        }
        len += big_member(s + len, (char)('a' + n), c->lens[n]);
    }
    char *buf = th_exact_copy(s, len);
    int want = c->kept == (uint32_t)n ? 0 : FG_ETOOMANY;
    int rc = fg_baggage_parse(&b, buf, len);
    ck_assert_msg(rc == want, "case %d: %s, want %s", _i, fg_err_name(rc), fg_err_name(want));
    ck_assert_uint_eq(b.n, c->kept);
    ck_assert_uint_eq(b.dropped, (uint32_t)n - c->kept);
    ck_assert_uint_eq(b.malformed, 0);
    for (uint32_t i = 0; i < b.n; i++) {
        ck_assert_uint_eq(b.members[i].key.len + 1 + b.members[i].value.len, c->lens[i]);
    }
    free(buf);
    free(s);
}
END_TEST

/* Format: members past 8192 bytes are left out from the right. */
START_TEST(test_limit_bytes_format) {
    const bytes_case *c = &bytes_cases[_i];
    char *vals = malloc(30000);
    char *out = malloc(FG_BAGGAGE_MAX_BYTES + 1);
    char *want = malloc(30000);
    static const char keys[] = "abcd";
    size_t wn = 0, off = 0;
    fg_baggage b = {0};

    ck_assert_ptr_nonnull(vals);
    ck_assert_ptr_nonnull(out);
    ck_assert_ptr_nonnull(want);
    for (int n = 0; c->lens[n] != 0; n++) {
        /* key "x", '=', then a value of plain letters */
        size_t vl = c->lens[n] - 2;
        th_fill(vals + off, vl, "xyz");
        ck_assert_int_eq(fg_baggage_set(&b, keys + n, 1, vals + off, vl), 0);
        if ((uint32_t)n < c->kept) {
            if (wn > 0) {
                want[wn++] = ',';
            }
            want[wn++] = keys[n];
            want[wn++] = '=';
            memcpy(want + wn, vals + off, vl);
            wn += vl;
        }
        off += vl;
    }
    want[wn] = '\0';
    size_t len;
    int rc = format_checked(&b, FG_BAGGAGE_MAX_BYTES + 1, out, &len);
    ck_assert_msg(rc == 0, "case %d: %s", _i, fg_err_name(rc));
    ck_assert_msg(len == wn && strcmp(out, want) == 0, "case %d: %zu bytes, want %zu", _i, len,
                  wn);
    ck_assert_int_eq(format_checked(&b, wn + 1, out, &len), 0);
    ck_assert_int_eq(format_checked(&b, wn, out, &len), FG_ETOOLONG);
    free(vals);
    free(out);
    free(want);
}
END_TEST

/* The 8192 bytes are counted encoded: 2730 spaces are "a=" + 8190. */
START_TEST(test_limit_bytes_encoded) {
    char *sp = malloc(3000);
    char *out = malloc(FG_BAGGAGE_MAX_BYTES + 1);
    fg_baggage b = {0};
    size_t len;

    ck_assert_ptr_nonnull(sp);
    ck_assert_ptr_nonnull(out);
    memset(sp, ' ', 3000);
    ck_assert_int_eq(fg_baggage_set(&b, "a", 1, sp, 2730), 0);
    ck_assert_int_eq(format_checked(&b, FG_BAGGAGE_MAX_BYTES + 1, out, &len), 0);
    ck_assert_uint_eq(len, 8192);
    ck_assert(memcmp(out, "a=%20%20", 8) == 0);
    ck_assert(memcmp(out + 8189, "%20", 3) == 0);

    ck_assert_int_eq(fg_baggage_set(&b, "a", 1, sp, 2731), 0);
    ck_assert_uint_eq(b.n, 1);
    ck_assert_int_eq(format_checked(&b, FG_BAGGAGE_MAX_BYTES + 1, out, &len), 0);
    ck_assert_str_eq(out, "");
    ck_assert_uint_eq(len, 0);
    free(sp);
    free(out);
}
END_TEST

/* ---- get: percent-decoding ----------------------------------------------------------- */

typedef struct dec_case {
    const char *wire;
    const char *want;
    size_t want_len; /* 0: strlen(want) */
} dec_case;

static const dec_case dec_cases[] = {
    {"plain", "plain", 0},
    {"", "", 0},
    {"%20", " ", 0},
    {"a%20b", "a b", 0},
    {"a%2Cb", "a,b", 0},
    {"a%2cb", "a,b", 0},
    {"%3B%2C%22%5C", ";,\"\\", 0},
    {"%E4%B8%AD", "\xe4\xb8\xad", 0},
    {"%e4%b8%ad", "\xe4\xb8\xad", 0},
    {"%E4%b8%Ad%E6%96%87", "\xe4\xb8\xad\xe6\x96\x87", 0},
    {"Gr%C3%BC%C3%9Fe",
     "Gr\xc3\xbc\xc3\x9f"
     "e",
     0},
    {"%41%42%43", "ABC", 0},
    {"%7e%7E", "~~", 0},
    {"%ff%FF", "\xff\xff", 0},
    {"%00", "\0", 1},
    {"a%00b", "a\0b", 3},
    {"100%25", "100%", 0},
    {"%2525", "%25", 0},
    {"+", "+", 0},
    {"a+b", "a+b", 0},
    /* a '%' not followed by two hex digits is kept as it is */
    {"%", "%", 0},
    {"a%", "a%", 0},
    {"%2", "%2", 0},
    {"a%2", "a%2", 0},
    {"%zz", "%zz", 0},
    {"%2g", "%2g", 0},
    {"%g2", "%g2", 0},
    {"%%", "%%", 0},
    {"%%41", "%A", 0},
    {"%4%41", "%4A", 0},
    {"%-1", "%-1", 0},
    {"%+F", "%+F", 0},
    {"%20%", " %", 0},
    {"%%%", "%%%", 0},
    {BAGCHR,
     "!#$%&'()*+-./0123456789:<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstu"
     "vwxyz{|}~",
     0},
};

START_TEST(test_get_decode) {
    const dec_case *c = &dec_cases[_i];
    size_t wl = strlen(c->wire);
    size_t want_len = c->want_len != 0 ? c->want_len : strlen(c->want);
    char in[256], out[256];
    size_t inl = (size_t)sprintf(in, "x=1,k=%s;p=%%41,y=2", c->wire);
    char *buf = th_exact_copy(in, inl);
    fg_baggage b;
    size_t len;

    ck_assert_int_eq(fg_baggage_parse(&b, buf, inl), 0);
    ck_assert_uint_eq(b.n, 3);
    ck_assert(th_str_is(b.members[1].value, c->wire, wl));

    int rc = get_checked(&b, "k", want_len + 1, out, &len);
    ck_assert_msg(rc == 0, "case %d \"%s\": %s", _i, c->wire, fg_err_name(rc));
    ck_assert_msg(len == want_len && memcmp(out, c->want, want_len) == 0,
                  "case %d \"%s\": got %zu bytes \"%.*s\", want %zu", _i, c->wire, len,
                  (int)len, out, want_len);
    /* one byte less does not fit */
    ck_assert_int_eq(get_checked(&b, "k", want_len, out, &len), FG_ETOOLONG);
    /* a roomy buffer gives the same */
    ck_assert_int_eq(get_checked(&b, "k", 200, out, &len), 0);
    ck_assert_uint_eq(len, want_len);
    ck_assert(memcmp(out, c->want, want_len) == 0);
    free(buf);
}
END_TEST

START_TEST(test_get_lookup) {
    static const char s[] = "k=1,kk=2;p,K=3,k=4, x = y ,bad,k=5 5,z=";
    char *buf = th_exact_copy(s, sizeof(s) - 1);
    fg_baggage b;
    char out[64];
    size_t len;

    ck_assert_int_eq(fg_baggage_parse(&b, buf, sizeof(s) - 1), FG_EPARSE);
    ck_assert_uint_eq(b.malformed, 2);
    /* the last of several wins; a malformed one never matches */
    ck_assert_int_eq(get_checked(&b, "k", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "4");
    ck_assert_uint_eq(len, 1);
    ck_assert_int_eq(get_checked(&b, "kk", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "2");
    /* keys are case-sensitive */
    ck_assert_int_eq(get_checked(&b, "K", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "3");
    ck_assert_int_eq(get_checked(&b, "x", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "y");
    ck_assert_int_eq(get_checked(&b, "z", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "");
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(get_checked(&b, "z", 1, out, &len), 0);
    ck_assert_int_eq(get_checked(&b, "z", 0, out, &len), FG_ETOOLONG);
    ck_assert_int_eq(get_checked(&b, "bad", sizeof(out), out, &len), FG_ENOTFOUND);
    ck_assert_int_eq(get_checked(&b, "p", sizeof(out), out, &len), FG_ENOTFOUND);
    ck_assert_int_eq(get_checked(&b, "kkk", sizeof(out), out, &len), FG_ENOTFOUND);
    ck_assert_int_eq(get_checked(&b, "", sizeof(out), out, &len), FG_ENOTFOUND);
    ck_assert_int_eq(get_checked(&b, "k", 1, out, &len), FG_ETOOLONG);
    ck_assert_int_eq(get_checked(&b, "k", 2, out, &len), 0);

    /* the key length is the caller's; len may be NULL */
    char small[8];
    memset(small, 'Z', sizeof(small));
    ck_assert_int_eq(fg_baggage_get(&b, "kkk", 2, small, sizeof(small), NULL), 0);
    ck_assert_str_eq(small, "2");
    ck_assert_int_eq(fg_baggage_get(&b, "kkk", 1, small, sizeof(small), &len), 0);
    ck_assert_str_eq(small, "4");
    free(buf);

    fg_baggage e = {0};
    ck_assert_int_eq(get_checked(&e, "k", sizeof(out), out, &len), FG_ENOTFOUND);
}
END_TEST

/* ---- set, format, round trips -------------------------------------------------------- */

typedef struct enc_case {
    const char *raw;
    size_t raw_len; /* 0: strlen(raw) */
    const char *wire;
} enc_case;

static const enc_case enc_cases[] = {
    {"hello", 0, "hello"},
    {"", 0, ""},
    {"a b", 0, "a%20b"},
    {" ", 0, "%20"},
    {"a,b", 0, "a%2Cb"},
    {"a;b", 0, "a%3Bb"},
    {"a\\b", 0, "a%5Cb"},
    {"a\"b", 0, "a%22b"},
    {"100%", 0, "100%25"},
    {"%41", 0, "%2541"},
    {"%", 0, "%25"},
    {"\xe4\xb8\xad", 0, "%E4%B8%AD"},
    {"J\xc3\xb6rg", 0, "J%C3%B6rg"},
    {"\x01\x1f\x7f\x80\xff", 0, "%01%1F%7F%80%FF"},
    {"\0", 1, "%00"},
    {"a\0b", 3, "a%00b"},
    {"\t\r\n", 0, "%09%0D%0A"},
    {"a=b", 0, "a=b"},
    {"+", 0, "+"},
    {"!#$&'()*+-./0123456789:<=>?@AZ[]^_`az{|}~", 0,
     "!#$&'()*+-./0123456789:<=>?@AZ[]^_`az{|}~"},
    {" ,;\\\"%", 0, "%20%2C%3B%5C%22%25"},
    {"key1=value1;property1", 0, "key1=value1%3Bproperty1"},
};

START_TEST(test_set_format_round_trip) {
    const enc_case *c = &enc_cases[_i];
    size_t rl = c->raw_len != 0 ? c->raw_len : strlen(c->raw);
    char *raw = th_exact_copy(c->raw, rl);
    char want[256], out[FG_BAGGAGE_MAX_BYTES + 1];
    size_t len;
    fg_baggage b = {0};

    ck_assert_int_eq(fg_baggage_set(&b, "k", 1, raw, rl), 0);
    ck_assert_uint_eq(b.n, 1);
    ck_assert_int_eq(b.members[0].plain, 1);
    ck_assert_uint_eq(b.members[0].properties.len, 0);
    ck_assert_ptr_eq(b.members[0].value.ptr, raw); /* borrowed, not copied */

    /* get on a plain value: the raw bytes, not decoded */
    ck_assert_int_eq(get_checked(&b, "k", rl + 1, out, &len), 0);
    ck_assert_uint_eq(len, rl);
    ck_assert(memcmp(out, raw, rl) == 0);

    /* format encodes it */
    int wl = sprintf(want, "k=%s", c->wire);
    int rc = format_checked(&b, sizeof(out), out, &len);
    ck_assert_msg(rc == 0, "case %d: %s", _i, fg_err_name(rc));
    ck_assert_msg(strcmp(out, want) == 0, "case %d: \"%s\", want \"%s\"", _i, out, want);
    ck_assert_uint_eq(len, (size_t)wl);

    /* and it parses back to the same bytes */
    char *wire = th_exact_copy(out, len);
    fg_baggage p;
    ck_assert_int_eq(fg_baggage_parse(&p, wire, len), 0);
    ck_assert_uint_eq(p.n, 1);
    ck_assert_int_eq(p.members[0].plain, 0);
    ck_assert_int_eq(get_checked(&p, "k", rl + 1, out, &len), 0);
    ck_assert_msg(len == rl && memcmp(out, raw, rl) == 0, "case %d: round trip differs", _i);
    free(wire);
    free(raw);
}
END_TEST

START_TEST(test_format_parsed) {
    char out[FG_BAGGAGE_MAX_BYTES + 1];
    size_t len;
    fg_baggage b;

    /* parsed values are passed on as they came, properties unchanged */
    static const char s1[] = "k=v;ttl=60;private,k2=%20x,k3=";
    ck_assert_int_eq(fg_baggage_parse(&b, s1, sizeof(s1) - 1), 0);
    ck_assert_int_eq(format_checked(&b, sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, s1);
    ck_assert_uint_eq(len, sizeof(s1) - 1);

    /* OWS and malformed members are not kept */
    static const char s2[] = " a = 1 ,bad, b=2;p ,\tc=%41;q=1;r\t";
    ck_assert_int_eq(fg_baggage_parse(&b, s2, sizeof(s2) - 1), FG_EPARSE);
    ck_assert_int_eq(format_checked(&b, sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "a=1,b=2;p,c=%41;q=1;r");

    /* an empty list writes "" */
    fg_baggage e = {0};
    ck_assert_int_eq(format_checked(&e, 1, out, &len), 0);
    ck_assert_str_eq(out, "");
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(format_checked(&e, 0, out, &len), FG_ETOOLONG);

    /* len may be NULL */
    char small[32];
    ck_assert_int_eq(fg_baggage_parse(&b, "a=1,b=2", 7), 0);
    ck_assert_int_eq(fg_baggage_format(&b, small, sizeof(small), NULL), 0);
    ck_assert_str_eq(small, "a=1,b=2");
}
END_TEST

/* Every cap from 0 up: FG_ETOOLONG and "" below len + 1, never a byte past cap. */
START_TEST(test_format_caps) {
    fg_baggage b;
    char out[FG_BAGGAGE_MAX_BYTES + 1];
    size_t len;
    static const char raw[] = "a b,c";

    ck_assert_int_eq(fg_baggage_parse(&b, "x=1;p,y=2", 9), 0);
    ck_assert_int_eq(fg_baggage_set(&b, "z", 1, raw, 5), 0);
    static const char want[] = "x=1;p,y=2,z=a%20b%2Cc";
    for (size_t cap = 0; cap <= sizeof(want) + 4; cap++) {
        int rc = format_checked(&b, cap, out, &len);
        if (cap >= sizeof(want)) {
            ck_assert_msg(rc == 0, "cap %zu: %s", cap, fg_err_name(rc));
            ck_assert_str_eq(out, want);
        } else {
            ck_assert_msg(rc == FG_ETOOLONG, "cap %zu: %s", cap, fg_err_name(rc));
        }
    }
    /* and get: every cap below the value's length + 1 */
    for (size_t cap = 0; cap <= 8; cap++) {
        int rc = get_checked(&b, "z", cap, out, &len);
        ck_assert_int_eq(rc, cap >= 6 ? 0 : FG_ETOOLONG);
        if (rc == 0) {
            ck_assert_str_eq(out, "a b,c");
        }
    }
}
END_TEST

START_TEST(test_set_semantics) {
    static const char s[] = "a=1,b=2;p,a=3,c=4";
    char out[FG_BAGGAGE_MAX_BYTES + 1];
    size_t len;
    fg_baggage b;

    ck_assert_int_eq(fg_baggage_parse(&b, s, sizeof(s) - 1), 0);

    /* replace: the old member goes, the new one is last, without properties */
    ck_assert_int_eq(fg_baggage_set(&b, "b", 1, "x y", 3), 0);
    static const char *const w1[] = {"a", "1", "",  "a",   "3", "",  "c",
                                     "4", "",  "b", "x y", "",  NULL};
    assert_members(&b, w1, "set b");
    ck_assert_int_eq(b.members[3].plain, 1);
    ck_assert_int_eq(format_checked(&b, sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "a=1,a=3,c=4,b=x%20y");

    /* every member with the key is replaced */
    ck_assert_int_eq(fg_baggage_set(&b, "a", 1, "new", 3), 0);
    static const char *const w2[] = {"c", "4", "", "b", "x y", "", "a", "new", "", NULL};
    assert_members(&b, w2, "set a");
    ck_assert_int_eq(get_checked(&b, "a", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "new");

    /* a new key is appended */
    ck_assert_int_eq(fg_baggage_set(&b, "Z-1", 3, "", 0), 0);
    ck_assert_uint_eq(b.n, 4);
    ck_assert_int_eq(format_checked(&b, sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "c=4,b=x%20y,a=new,Z-1=");

    /* a key that is not a token: FG_EINVAL, b unchanged */
    static const char *const bad[] = {"",      "a b", "a,b",      "a;b", "a=b", "(",
                                      "\"k\"", "k\t", "\xc3\xa9", "@",   "a/b", "{x}"};
    for (int i = 0; i < TH_NELEM(bad); i++) {
        fg_baggage before;
        memcpy(&before, &b, sizeof(b));
        int rc = fg_baggage_set(&b, bad[i], strlen(bad[i]), "v", 1);
        ck_assert_msg(rc == FG_EINVAL, "key \"%s\": %s", bad[i], fg_err_name(rc));
        ck_assert_msg(memcmp(&b, &before, sizeof(b)) == 0, "key \"%s\": b changed", bad[i]);
    }
    fg_baggage before;
    memcpy(&before, &b, sizeof(b));
    ck_assert_int_eq(fg_baggage_set(&b, "a\0", 2, "v", 1), FG_EINVAL);
    ck_assert(memcmp(&b, &before, sizeof(b)) == 0);
    /* every tchar is fine */
    ck_assert_int_eq(fg_baggage_set(&b, TCHARS, strlen(TCHARS), "v", 1), 0);
    ck_assert_uint_eq(b.n, 5);
}
END_TEST

START_TEST(test_set_full) {
    char s[2048];
    size_t len = build_members(s, 64, "k");
    fg_baggage b;

    ck_assert_int_eq(fg_baggage_parse(&b, s, len), 0);
    ck_assert_uint_eq(b.n, 64);

    fg_baggage before;
    memcpy(&before, &b, sizeof(b));
    ck_assert_int_eq(fg_baggage_set(&b, "new", 3, "v", 1), FG_ETOOMANY);
    ck_assert(memcmp(&b, &before, sizeof(b)) == 0);

    /* an existing key still works, and goes last */
    ck_assert_int_eq(fg_baggage_set(&b, "k5", 2, "w", 1), 0);
    ck_assert_uint_eq(b.n, 64);
    ck_assert(th_str_is(b.members[63].key, "k5", 2));
    ck_assert(th_str_is(b.members[5].key, "k6", 2));

    /* after a remove there is room again */
    ck_assert_int_eq(fg_baggage_remove(&b, "k0", 2), 0);
    ck_assert_int_eq(fg_baggage_set(&b, "new", 3, "v", 1), 0);
    ck_assert_uint_eq(b.n, 64);
    ck_assert(th_str_is(b.members[63].key, "new", 3));

    /* building 64 distinct keys with set: the 65th is refused */
    fg_baggage e = {0};
    char keys[65][16];
    for (int i = 0; i < 65; i++) {
        int kl = sprintf(keys[i], "s%d", i);
        int rc = fg_baggage_set(&e, keys[i], (size_t)kl, "v", 1);
        ck_assert_int_eq(rc, i < 64 ? 0 : FG_ETOOMANY);
    }
    ck_assert_uint_eq(e.n, 64);
}
END_TEST

START_TEST(test_remove) {
    static const char s[] = "a=1,b=2;p,a=3,c=4";
    fg_baggage b;
    char out[FG_BAGGAGE_MAX_BYTES + 1];
    size_t len;

    ck_assert_int_eq(fg_baggage_parse(&b, s, sizeof(s) - 1), 0);
    ck_assert_int_eq(fg_baggage_remove(&b, "a", 1), 0);
    static const char *const w1[] = {"b", "2", "p", "c", "4", "", NULL};
    assert_members(&b, w1, "remove a");
    ck_assert_int_eq(get_checked(&b, "a", sizeof(out), out, &len), FG_ENOTFOUND);

    fg_baggage before;
    memcpy(&before, &b, sizeof(b));
    ck_assert_int_eq(fg_baggage_remove(&b, "a", 1), FG_ENOTFOUND);
    ck_assert_int_eq(fg_baggage_remove(&b, "B", 1), FG_ENOTFOUND);
    ck_assert_int_eq(fg_baggage_remove(&b, "", 0), FG_ENOTFOUND);
    ck_assert_int_eq(fg_baggage_remove(&b, "cc", 2), FG_ENOTFOUND);
    ck_assert(memcmp(&b, &before, sizeof(b)) == 0);

    ck_assert_int_eq(fg_baggage_remove(&b, "cc", 1), 0); /* key_len is the caller's */
    ck_assert_int_eq(format_checked(&b, sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "b=2;p");
    ck_assert_int_eq(fg_baggage_remove(&b, "b", 1), 0);
    ck_assert_uint_eq(b.n, 0);
    ck_assert_int_eq(format_checked(&b, sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "");
}
END_TEST

/* ---- parse_ctx and fg_ctx_baggage ---------------------------------------------------- */

START_TEST(test_parse_ctx) {
    fg_ctx ctx;
    th_heap_list h = {0};
    fg_baggage b;

    th_ctx_new(&ctx);
    th_add_header(&ctx, &h, "baggage", "a=1");
    th_add_header(&ctx, &h, "x-baggage", "z=9");
    th_add_header(&ctx, &h, "Baggage", "b=2;p");
    th_add_header(&ctx, &h, "baggagex", "z=9");
    th_add_header(&ctx, &h, "BAGGAGE", "bad, c=%20");
    th_add_header(&ctx, &h, "baggage", "");
    th_add_header(&ctx, &h, "bAgGaGe", "a=4");

    ck_assert_int_eq(fg_baggage_parse(&b, "q=1", 3), 0);
    ck_assert_int_eq(fg_baggage_parse_ctx(&b, &ctx), FG_EPARSE);
    ck_assert_uint_eq(b.malformed, 1);
    ck_assert_uint_eq(b.dropped, 0);
    static const char *const want[] = {"a",   "1", "",  "b", "2", "p", "c",
                                       "%20", "",  "a", "4", "",  NULL};
    assert_members(&b, want, "parse_ctx");
    ck_assert(slice_inside(b.members[0].key, ctx.headers[0].value.ptr, 3));
    ck_assert(slice_inside(b.members[1].properties, ctx.headers[2].value.ptr, 5));
    ck_assert(slice_inside(b.members[2].value, ctx.headers[4].value.ptr, 10));
    ck_assert(slice_inside(b.members[3].value, ctx.headers[6].value.ptr, 3));
    th_heap_free(&h);

    /* no baggage headers: an empty list */
    th_ctx_new(&ctx);
    th_add_header(&ctx, &h, "tracestate", "a=1");
    ck_assert_int_eq(fg_baggage_parse_ctx(&b, &ctx), 0);
    ck_assert_uint_eq(b.n, 0);
    ck_assert_uint_eq(b.malformed, 0);
    th_heap_free(&h);

    /* members never run across a header boundary */
    th_ctx_new(&ctx);
    th_add_header(&ctx, &h, "baggage", "a=1;p");
    th_add_header(&ctx, &h, "baggage", "b=2");
    th_add_header(&ctx, &h, "baggage", "k");
    th_add_header(&ctx, &h, "baggage", "=v");
    ck_assert_int_eq(fg_baggage_parse_ctx(&b, &ctx), FG_EPARSE);
    ck_assert_uint_eq(b.malformed, 2);
    static const char *const w2[] = {"a", "1", "p", "b", "2", "", NULL};
    assert_members(&b, w2, "boundaries");
    th_heap_free(&h);
}
END_TEST

START_TEST(test_parse_ctx_limits) {
    char s1[1024], s2[1024];
    fg_ctx ctx;
    th_heap_list h = {0};
    fg_baggage b;

    build_members(s1, 40, "a");
    build_members(s2, 30, "b");
    th_ctx_new(&ctx);
    th_add_header(&ctx, &h, "baggage", s1);
    th_add_header(&ctx, &h, "baggage", s2);
    ck_assert_int_eq(fg_baggage_parse_ctx(&b, &ctx), FG_ETOOMANY);
    ck_assert_uint_eq(b.n, 64);
    ck_assert_uint_eq(b.dropped, 6);
    ck_assert(th_str_is(b.members[39].key, "a39", 3));
    ck_assert(th_str_is(b.members[63].key, "b23", 3));
    th_heap_free(&h);

    /* bytes: two headers of 4100, one member each, are 8201 formatted */
    char *m1 = malloc(4101), *m2 = malloc(4101);
    ck_assert_ptr_nonnull(m1);
    ck_assert_ptr_nonnull(m2);
    big_member(m1, 'a', 4100);
    m1[4100] = '\0';
    big_member(m2, 'b', 4100);
    m2[4100] = '\0';
    th_ctx_new(&ctx);
    th_add_header(&ctx, &h, "baggage", m1);
    th_add_header(&ctx, &h, "baggage", m2);
    ck_assert_int_eq(fg_baggage_parse_ctx(&b, &ctx), FG_ETOOMANY);
    ck_assert_uint_eq(b.n, 1);
    ck_assert_uint_eq(b.dropped, 1);
    ck_assert(th_str_is(b.members[0].key, "ka", 2));
    th_heap_free(&h);
    free(m1);
    free(m2);
}
END_TEST

START_TEST(test_ctx_baggage) {
    fg_ctx ctx;
    th_heap_list h = {0};
    char out[64];
    size_t len;

    th_ctx_new(&ctx);
    ck_assert_int_eq(ctx_get_checked(&ctx, "env", sizeof(out), out, &len), FG_ENOTFOUND);
    th_add_header(&ctx, &h, "accept", "*/*");
    th_add_header(&ctx, &h, "baggage", "user=alice, env=gray;ttl=60, name=J%C3%B6rg%20K");
    th_add_header(&ctx, &h, "x-baggage", "env=red");

    ck_assert_int_eq(ctx_get_checked(&ctx, "env", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "gray");
    ck_assert_uint_eq(len, 4);
    ck_assert_int_eq(ctx_get_checked(&ctx, "user", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "alice");
    ck_assert_int_eq(ctx_get_checked(&ctx, "name", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "J\xc3\xb6rg K");
    ck_assert_uint_eq(len, 7);

    /* missing, prefixes, case */
    ck_assert_int_eq(ctx_get_checked(&ctx, "nope", sizeof(out), out, &len), FG_ENOTFOUND);
    ck_assert_int_eq(ctx_get_checked(&ctx, "en", sizeof(out), out, &len), FG_ENOTFOUND);
    ck_assert_int_eq(ctx_get_checked(&ctx, "envx", sizeof(out), out, &len), FG_ENOTFOUND);
    ck_assert_int_eq(ctx_get_checked(&ctx, "Env", sizeof(out), out, &len), FG_ENOTFOUND);
    ck_assert_int_eq(ctx_get_checked(&ctx, "ttl", sizeof(out), out, &len), FG_ENOTFOUND);
    ck_assert_int_eq(ctx_get_checked(&ctx, "", sizeof(out), out, &len), FG_ENOTFOUND);

    /* buffer sizes: "gray" needs 5 */
    for (size_t cap = 0; cap <= 6; cap++) {
        int rc = ctx_get_checked(&ctx, "env", cap, out, &len);
        ck_assert_msg(rc == (cap >= 5 ? 0 : FG_ETOOLONG), "cap %zu: %s", cap, fg_err_name(rc));
        if (rc == 0) {
            ck_assert_str_eq(out, "gray");
        }
    }
    /* key_len is the caller's; len may be NULL */
    char small[8];
    memset(small, 'Z', sizeof(small));
    ck_assert_int_eq(fg_ctx_baggage(&ctx, "envelope", 3, small, sizeof(small), NULL), 0);
    ck_assert_str_eq(small, "gray");

    /* a later header wins; a malformed member never matches */
    th_add_header(&ctx, &h, "Baggage", "env=blue");
    th_add_header(&ctx, &h, "BAGGAGE", "env=bad value, env, env=\"x\"");
    ck_assert_int_eq(ctx_get_checked(&ctx, "env", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "blue");
    th_add_header(&ctx, &h, "baggage", "a=1,env=%2Cgreen%2C");
    ck_assert_int_eq(ctx_get_checked(&ctx, "env", sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, ",green,");
    th_heap_free(&h);
}
END_TEST

/* ---- arguments ----------------------------------------------------------------------- */

START_TEST(test_null_args) {
    fg_baggage b = {0};
    char buf[16];
    size_t len;
    fg_ctx ctx;

    ck_assert_int_eq(fg_baggage_parse(NULL, "a=1", 3), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_parse(NULL, NULL, 0), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_parse(&b, NULL, 1), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_parse(&b, "a=1", 3), 0);
    ck_assert_int_eq(fg_baggage_parse(&b, NULL, 0), 0); /* the empty value */
    ck_assert_uint_eq(b.n, 0);

    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_baggage_parse_ctx(NULL, &ctx), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_parse_ctx(&b, NULL), FG_EINVAL);

    ck_assert_int_eq(fg_baggage_parse(&b, "a=1", 3), 0);
    ck_assert_int_eq(fg_baggage_get(NULL, "a", 1, buf, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_get(&b, NULL, 1, buf, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_get(&b, "a", 1, NULL, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_get(&b, "a", 1, buf, sizeof(buf), NULL), 0);
    ck_assert_str_eq(buf, "1");

    fg_baggage before;
    memcpy(&before, &b, sizeof(b));
    ck_assert_int_eq(fg_baggage_set(NULL, "k", 1, "v", 1), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_set(&b, NULL, 1, "v", 1), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_set(&b, "k", 1, NULL, 1), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_remove(NULL, "a", 1), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_remove(&b, NULL, 1), FG_EINVAL);
    ck_assert(memcmp(&b, &before, sizeof(b)) == 0);

    ck_assert_int_eq(fg_baggage_format(NULL, buf, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_format(&b, NULL, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_baggage_format(&b, buf, sizeof(buf), NULL), 0);
    ck_assert_str_eq(buf, "a=1");

    th_heap_list h = {0};
    th_add_header(&ctx, &h, "baggage", "a=1");
    ck_assert_int_eq(fg_ctx_baggage(NULL, "a", 1, buf, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_baggage(&ctx, NULL, 1, buf, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_baggage(&ctx, "a", 1, NULL, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_baggage(&ctx, "a", 1, buf, sizeof(buf), NULL), 0);
    ck_assert_str_eq(buf, "1");
    th_heap_free(&h);
}
END_TEST

/* ---- garbage in ---------------------------------------------------------------------- */

static int is_tchar(int c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int is_boctet(int c) {
    return c == 0x21 || (c >= 0x23 && c <= 0x2b) || (c >= 0x2d && c <= 0x3a) ||
           (c >= 0x3c && c <= 0x5b) || (c >= 0x5d && c <= 0x7e);
}

static int hexv(int c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* The reference decoder: %XX of either case; any other '%' kept. */
static size_t ref_decode(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexv((unsigned char)s[i + 1]) >= 0 &&
            hexv((unsigned char)s[i + 2]) >= 0) {
            out[o++] =
                (char)(hexv((unsigned char)s[i + 1]) * 16 + hexv((unsigned char)s[i + 2]));
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    return o;
}

static const char key_alpha[] = TCHARS;
static const char val_alpha[] = "abcXYZ09=%%%2C4e!#&'()*+-./:<>?@[]^_`{|}~";
static const char *const bad_members[] = {
    "k v=1",       "=v",      "k(=1", "k=a b",  "k=a\"b",     "k=a\\b",  "k=\x80",
    "k=v;p=\"x\"", "k=v;(p)", "k",    "k=v;=x", "\xc3\xa9=1", "k=a\x01", "k=v;p q"};
static const char noise_alpha[] = "ab=,;; \t%2C\"\\(\x80\x01AZ9!~";

typedef struct gen_member {
    size_t k, kl, v, vl, p, pl; /* offsets into the input */
    int bad;
} gen_member;

/*
 * mode 0: noise. mode 1: a valid list (OWS around members and '=', no
 * empty members, properties without OWS). mode 2: the same with one member
 * replaced by one from bad_members.
 */
static size_t gen_input(uint64_t *seed, char *s, int mode, gen_member *gm, int *ngm) {
    size_t n = 0;

    *ngm = 0;
    if (mode == 0) {
        size_t len = th_rng_below(seed, 40);
        for (size_t i = 0; i < len; i++) {
            s[n++] = noise_alpha[th_rng_below(seed, sizeof(noise_alpha) - 1)];
        }
        return n;
    }
    int members = 1 + (int)th_rng_below(seed, 12);
    int bad = mode == 2 ? (int)th_rng_below(seed, (size_t)members) : -1;
    for (int m = 0; m < members; m++) {
        gen_member *g = &gm[(*ngm)++];
        memset(g, 0, sizeof(*g));
        if (m > 0) {
            s[n++] = ',';
        }
        for (size_t w = th_rng_below(seed, 3); w > 0; w--) {
            s[n++] = " \t"[th_rng_below(seed, 2)];
        }
        if (m == bad) {
            const char *bm = bad_members[th_rng_below(seed, TH_NELEM(bad_members))];
            memcpy(s + n, bm, strlen(bm));
            n += strlen(bm);
            g->bad = 1;
            continue;
        }
        g->k = n;
        g->kl = 1 + th_rng_below(seed, 4);
        for (size_t i = 0; i < g->kl; i++) {
            /* a small key space, so duplicates happen */
            s[n++] = key_alpha[th_rng_below(seed, i == 0 ? 3 : sizeof(key_alpha) - 1)];
        }
        for (size_t w = th_rng_below(seed, 2); w > 0; w--) {
            s[n++] = ' ';
        }
        s[n++] = '=';
        for (size_t w = th_rng_below(seed, 2); w > 0; w--) {
            s[n++] = '\t';
        }
        g->v = n;
        g->vl = th_rng_below(seed, 8);
        for (size_t i = 0; i < g->vl; i++) {
            s[n++] = val_alpha[th_rng_below(seed, sizeof(val_alpha) - 1)];
        }
        if (th_rng_below(seed, 3) == 0) {
            s[n++] = ';';
            g->p = n;
            for (size_t q = 1 + th_rng_below(seed, 3); q > 0; q--) {
                s[n++] = key_alpha[th_rng_below(seed, sizeof(key_alpha) - 1)];
                if (th_rng_below(seed, 2)) {
                    s[n++] = '=';
                    s[n++] = val_alpha[th_rng_below(seed, sizeof(val_alpha) - 1)];
                }
                if (q > 1) {
                    s[n++] = ';';
                }
            }
            g->pl = n - g->p;
        }
        for (size_t w = th_rng_below(seed, 3); w > 0; w--) {
            s[n++] = " \t"[th_rng_below(seed, 2)];
        }
    }
    return n;
}

#define NGARBAGE 20000

START_TEST(test_garbage_in) {
    uint64_t seed = UINT64_C(0x6261676761676521);
    static char s[4096];
    static char out[FG_BAGGAGE_MAX_BYTES + 1 + TH_CANARY_LEN];
    gen_member gm[16];
    int ngm, counts[3] = {0, 0, 0};

    for (int iter = 0; iter < NGARBAGE; iter++) {
        int mode = iter % 3;
        size_t len = gen_input(&seed, s, mode, gm, &ngm);
        char *buf = th_exact_copy(s, len);
        fg_baggage b;
        int rc = fg_baggage_parse(&b, buf, len);

        /* codes and counters agree */
        TH_FAST_ASSERT(rc == 0 || rc == FG_EPARSE || rc == FG_ETOOMANY, "input %d: %s", iter,
                       fg_err_name(rc));
        TH_FAST_ASSERT((rc == FG_EPARSE) == (b.malformed > 0),
                       "input %d: %s with %u malformed", iter, fg_err_name(rc),
                       (unsigned)b.malformed);
        TH_FAST_ASSERT((rc == 0) == (b.malformed == 0 && b.dropped == 0),
                       "input %d: %s, malformed %u dropped %u", iter, fg_err_name(rc),
                       (unsigned)b.malformed, (unsigned)b.dropped);
        TH_FAST_ASSERT(b.n <= FG_BAGGAGE_MAX_MEMBERS, "input %d: n %u", iter, (unsigned)b.n);
        counts[rc == 0 ? 0 : rc == FG_EPARSE ? 1 : 2]++;

        /* every slice inside the input and within the grammar */
        for (uint32_t i = 0; i < b.n; i++) {
            const fg_baggage_member *m = &b.members[i];
            TH_FAST_ASSERT(slice_inside(m->key, buf, len) &&
                               slice_inside(m->value, buf, len) &&
                               slice_inside(m->properties, buf, len),
                           "input %d member %u outside the input", iter, (unsigned)i);
            TH_FAST_ASSERT(m->key.len > 0 && m->plain == 0, "input %d member %u", iter,
                           (unsigned)i);
            for (size_t j = 0; j < m->key.len; j++) {
                TH_FAST_ASSERT(is_tchar((unsigned char)m->key.ptr[j]), "input %d: key byte",
                               iter);
            }
            for (size_t j = 0; j < m->value.len; j++) {
                TH_FAST_ASSERT(is_boctet((unsigned char)m->value.ptr[j]),
                               "input %d: value byte", iter);
            }
            for (size_t j = 0; j < m->properties.len; j++) {
                int c = (unsigned char)m->properties.ptr[j];
                TH_FAST_ASSERT(is_boctet(c) || c == ';' || c == ' ' || c == '\t',
                               "input %d: properties byte 0x%02x", iter, (unsigned)c);
            }
        }

        /* generated lists: exactly the members written, minus the bad one */
        if (mode != 0) {
            uint32_t k = 0;
            TH_FAST_ASSERT(rc == (mode == 2 ? FG_EPARSE : 0),
                           "input %d (mode %d) \"%.*s\": %s", iter, mode, (int)len, buf,
                           fg_err_name(rc));
            TH_FAST_ASSERT(b.malformed == (mode == 2 ? 1u : 0u), "input %d: malformed %u",
                           iter, (unsigned)b.malformed);
            for (int g = 0; g < ngm; g++) {
                if (gm[g].bad) {
                    continue;
                }
                TH_FAST_ASSERT(k < b.n, "input %d: too few members", iter);
                const fg_baggage_member *m = &b.members[k++];
                TH_FAST_ASSERT(m->key.ptr == buf + gm[g].k && m->key.len == gm[g].kl,
                               "input %d \"%.*s\": member %u key", iter, (int)len, buf,
                               (unsigned)(k - 1));
                TH_FAST_ASSERT(m->value.len == gm[g].vl &&
                                   (gm[g].vl == 0 || m->value.ptr == buf + gm[g].v),
                               "input %d \"%.*s\": member %u value", iter, (int)len, buf,
                               (unsigned)(k - 1));
                TH_FAST_ASSERT(m->properties.len == gm[g].pl &&
                                   (gm[g].pl == 0 || m->properties.ptr == buf + gm[g].p),
                               "input %d \"%.*s\": member %u properties", iter, (int)len, buf,
                               (unsigned)(k - 1));
            }
            TH_FAST_ASSERT(k == b.n, "input %d: %u members, want %u", iter, (unsigned)b.n,
                           (unsigned)k);
        }

        /* get agrees with the reference decoder (the last member with the key) */
        for (uint32_t i = 0; i < b.n; i++) {
            char key[64], want[64], got[64];
            const fg_baggage_member *last = NULL;
            size_t glen = 0;
            TH_FAST_ASSERT(b.members[i].key.len < sizeof(key), "key too long");
            memcpy(key, b.members[i].key.ptr, b.members[i].key.len);
            for (uint32_t j = 0; j < b.n; j++) {
                if (th_str_is(b.members[j].key, key, b.members[i].key.len)) {
                    last = &b.members[j];
                }
            }
            size_t wl = ref_decode(last->value.ptr, last->value.len, want);
            int g = fg_baggage_get(&b, key, b.members[i].key.len, got, sizeof(got), &glen);
            TH_FAST_ASSERT(g == 0 && glen == wl && memcmp(got, want, wl) == 0 &&
                               got[wl] == '\0',
                           "input %d: get \"%.*s\": %s, %zu bytes, want %zu", iter,
                           (int)b.members[i].key.len, key, fg_err_name(g), glen, wl);
        }

        /* format, then parse back: the same members */
        size_t olen = 0;
        memset(out, TH_CANARY, sizeof(out));
        int f = fg_baggage_format(&b, out, FG_BAGGAGE_MAX_BYTES + 1, &olen);
        TH_FAST_ASSERT(f == 0, "input %d: format %s", iter, fg_err_name(f));
        for (int c = 0; c < TH_CANARY_LEN; c++) {
            TH_FAST_ASSERT((unsigned char)out[FG_BAGGAGE_MAX_BYTES + 1 + c] == TH_CANARY,
                           "input %d: format wrote past cap", iter);
        }
        char *again = th_exact_copy(out, olen);
        fg_baggage b2;
        int rc2 = fg_baggage_parse(&b2, again, olen);
        TH_FAST_ASSERT(rc2 == 0 && b2.n == b.n, "input %d: re-parse of \"%s\": %s, %u of %u",
                       iter, out, fg_err_name(rc2), (unsigned)b2.n, (unsigned)b.n);
        for (uint32_t i = 0; i < b.n; i++) {
            const fg_baggage_member *x = &b.members[i], *y = &b2.members[i];
            TH_FAST_ASSERT(th_str_is(y->key, x->key.ptr, x->key.len) &&
                               th_str_is(y->value, x->value.ptr, x->value.len) &&
                               th_str_is(y->properties, x->properties.ptr, x->properties.len),
                           "input %d: member %u differs after format \"%s\"", iter,
                           (unsigned)i, out);
        }
        free(again);
        free(buf);
    }
    ck_assert_int_gt(counts[0], NGARBAGE / 3);
    ck_assert_int_gt(counts[1], NGARBAGE / 3);
}
END_TEST

/* ---- the suite ----------------------------------------------------------------------- */

Suite *fg_suite_baggage(void) {
    Suite *s = suite_create("baggage");
    TCase *tc;

    tc = tcase_create("parse");
    tcase_add_loop_test(tc, test_parse_table, 0, NPARSE);
    tcase_add_test(tc, test_parse_length_and_reset);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    tcase_add_test(tc, test_limit_members);
    tcase_add_test(tc, test_limit_members_malformed);
    tcase_add_loop_test(tc, test_limit_bytes_parse, 0, TH_NELEM(bytes_cases));
    tcase_add_loop_test(tc, test_limit_bytes_format, 0, TH_NELEM(bytes_cases));
    tcase_add_test(tc, test_limit_bytes_encoded);
    suite_add_tcase(s, tc);

    tc = tcase_create("get");
    tcase_add_loop_test(tc, test_get_decode, 0, TH_NELEM(dec_cases));
    tcase_add_test(tc, test_get_lookup);
    suite_add_tcase(s, tc);

    tc = tcase_create("edit");
    tcase_add_loop_test(tc, test_set_format_round_trip, 0, TH_NELEM(enc_cases));
    tcase_add_test(tc, test_format_parsed);
    tcase_add_test(tc, test_format_caps);
    tcase_add_test(tc, test_set_semantics);
    tcase_add_test(tc, test_set_full);
    tcase_add_test(tc, test_remove);
    suite_add_tcase(s, tc);

    tc = tcase_create("ctx");
    tcase_add_test(tc, test_parse_ctx);
    tcase_add_test(tc, test_parse_ctx_limits);
    tcase_add_test(tc, test_ctx_baggage);
    suite_add_tcase(s, tc);

    tc = tcase_create("args");
    tcase_add_test(tc, test_null_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("garbage");
    tcase_add_test(tc, test_garbage_in);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    return s;
}
