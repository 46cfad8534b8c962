/*
 * tests/check_tracestate.c - W3C tracestate: fg_tracestate_parse,
 * fg_tracestate_parse_ctx, get, set, remove and format with the
 * recommendation's truncation (floodgate/trace.h, "tracestate").
 *
 * The tests are written from the header's contract and the W3C Trace
 * Context Level 1 grammar: simple keys (a lowercase letter then up to 255 of
 * a-z 0-9 _ - * /), multi-tenant keys tenant@system (tenant: a-z or 0-9 then
 * up to 240 more; system: a-z then up to 13 more), values of 1 to 256
 * printable ASCII characters other than ',' and '=' not ending in a space,
 * optional spaces and tabs around members, empty members skipped, at most 32
 * members, no duplicate keys, and one bad member spoiling the whole list
 * (ts->n = 0, FG_EPARSE). Every length bound is tried at the bound and one
 * past it. Every input is copied into a heap buffer of exactly its length,
 * so AddressSanitizer (make check SANITIZE=1) catches a read past `len`, and
 * every buffer a call writes has canary bytes after `cap`.
 *
 * Format is checked byte for byte, including truncation to 512 characters:
 * members over 128 characters are left out first, then members from the
 * right. Where the recommendation's wording allows two readings (must all
 * members over 128 go, or only as many as needed?) the test follows the
 * header's ("members longer than FG_TRACESTATE_LARGE characters are left
 * out first") and says so.
 *
 * Last, 20,000 fixed-seed pseudo-random inputs are compared against a small
 * reference parser written from the grammar in this file, and every
 * accepted list is formatted, compared with the reference's truncation and
 * parsed back.
 *
 * Tests marked "LIB DISAGREES" say what the header promises and what
 * lib/tracestate.c did instead.
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

/* Whether a slice lies entirely inside base[0 .. len). */
static int slice_inside(fg_str s, const char *base, size_t len) {
    uintptr_t p = (uintptr_t)s.ptr, b = (uintptr_t)base;
    return s.ptr != NULL && p >= b && s.len <= len && p - b <= len - s.len;
}

/*
 * Format ts into a buffer of exactly cap bytes plus a canary; returns the
 * code, and on 0 checks *len against strlen and the NUL. The result is
 * copied into out (at least FG_TRACESTATE_PROPAGATE + 1 bytes).
 */
static int format_checked(const fg_tracestate *ts, size_t cap, char *out, size_t *len) {
    char *buf = th_canary_buf(cap);
    size_t n = (size_t)-1;
    int rc = fg_tracestate_format(ts, buf, cap, &n);

    th_assert_canary(buf, cap, NULL);
    if (rc == 0) {
        ck_assert_uint_lt(n, cap);
        ck_assert_msg(buf[n] == '\0', "no NUL at *len %zu", n);
        ck_assert_uint_eq(strlen(buf), n);
        ck_assert_uint_le(n, FG_TRACESTATE_PROPAGATE);
        memcpy(out, buf, n + 1);
        *len = n;
    } else if (rc == FG_ETOOLONG && cap > 0) {
        ck_assert_msg(buf[0] == '\0', "buf is not \"\" after FG_ETOOLONG (cap %zu)", cap);
    }
    free(buf);
    return rc;
}

/* ts holds exactly the NULL-terminated key, value, key, value, ... list. */
static void assert_members(const fg_tracestate *ts, const char *const *want,
                           const char *what) {
    uint32_t n = 0;

    while (want[2 * n] != NULL) {
        n++;
    }
    ck_assert_msg(ts->n == n, "%s: %u members, want %u", what, (unsigned)ts->n, (unsigned)n);
    for (uint32_t i = 0; i < n; i++) {
        const fg_tracestate_member *m = &ts->members[i];
        ck_assert_msg(th_str_is(m->key, want[2 * i], strlen(want[2 * i])),
                      "%s: member %u key \"%.*s\", want \"%s\"", what, (unsigned)i,
                      (int)m->key.len, m->key.ptr, want[2 * i]);
        ck_assert_msg(th_str_is(m->value, want[2 * i + 1], strlen(want[2 * i + 1])),
                      "%s: member %u value \"%.*s\", want \"%s\"", what, (unsigned)i,
                      (int)m->value.len, m->value.ptr, want[2 * i + 1]);
    }
}

static void assert_inside(const fg_tracestate *ts, const char *base, size_t len) {
    for (uint32_t i = 0; i < ts->n; i++) {
        ck_assert_msg(slice_inside(ts->members[i].key, base, len), "key %u outside the input",
                      (unsigned)i);
        ck_assert_msg(slice_inside(ts->members[i].value, base, len),
                      "value %u outside the input", (unsigned)i);
    }
}

/* ---- the parse table ----------------------------------------------------------------- */

typedef struct ts_case {
    const char *in;
    size_t len; /* 0: strlen(in) */
    int rc;
    const char *want[9]; /* key, value, ... NULL */
} ts_case;

#define TS_OK(in, ...)                                                                        \
    {                                                                                         \
        in, 0, 0, { __VA_ARGS__, NULL }                                                       \
    }
#define TS_EMPTY(in)                                                                          \
    {                                                                                         \
        in, 0, 0, { NULL }                                                                    \
    }
#define TS_BAD(in)                                                                            \
    {                                                                                         \
        in, 0, FG_EPARSE, { NULL }                                                            \
    }
#define TS_BADN(in, n)                                                                        \
    {                                                                                         \
        in, n, FG_EPARSE, { NULL }                                                            \
    }

/* Every printable ASCII character a value may hold: all but ',' and '='. */
#define ALLCHR                                                                                \
    "!\"#$%&'()*+-./0123456789:;<>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrst"    \
    "uvwxyz{|}~"

static const ts_case parse_cases[] = {
    /* the recommendation's examples */
    TS_OK("congo=t61rcWkgMzE", "congo", "t61rcWkgMzE"),
    TS_OK("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "rojo", "00f067aa0ba902b7", "congo",
          "t61rcWkgMzE"),
    TS_OK("congo=ucfJifl5GOE,rojo=00f067aa0ba902b7", "congo", "ucfJifl5GOE", "rojo",
          "00f067aa0ba902b7"),
    TS_OK("a=1,b=2,c=3", "a", "1", "b", "2", "c", "3"),

    /* simple keys */
    TS_OK("a=v", "a", "v"),
    TS_OK("z=v", "z", "v"),
    TS_OK("a0=v", "a0", "v"),
    TS_OK("a_-*/=v", "a_-*/", "v"),
    TS_OK("abc123xyz=v", "abc123xyz", "v"),
    TS_OK("a/b/c=v", "a/b/c", "v"),
    TS_OK("z9_=v", "z9_", "v"),
    /* multi-tenant keys */
    TS_OK("a@b=v", "a@b", "v"),
    TS_OK("0@a=v", "0@a", "v"),
    TS_OK("9tenant@sys=v", "9tenant@sys", "v"),
    TS_OK("t3n_-*/@s_-*/9=v", "t3n_-*/@s_-*/9", "v"),
    TS_OK("fw529a3039@dt=v", "fw529a3039@dt", "v"),
    TS_OK("a@b=1,a=2,b@a=3", "a@b", "1", "a", "2", "b@a", "3"),

    /* keys that break the grammar */
    TS_BAD("A=v"),
    TS_BAD("aB=v"),
    TS_BAD("Congo=v"),
    TS_BAD("0a=v"),
    TS_BAD("9=v"),
    TS_BAD("_a=v"),
    TS_BAD("-a=v"),
    TS_BAD("*a=v"),
    TS_BAD("/a=v"),
    TS_BAD("a.b=v"),
    TS_BAD("a+b=v"),
    TS_BAD("a:b=v"),
    TS_BAD("a b=v"),
    TS_BAD("a\tb=v"),
    TS_BAD("a =v"),
    TS_BAD("a\t=v"),
    TS_BAD("=v"),
    TS_BAD("a@=v"),
    TS_BAD("@a=v"),
    TS_BAD("@=v"),
    TS_BAD("a@0b=v"),
    TS_BAD("a@_b=v"),
    TS_BAD("a@B=v"),
    TS_BAD("A@b=v"),
    TS_BAD("_@b=v"),
    TS_BAD("a@b@c=v"),
    TS_BAD("\xc3\xa9=v"),
    TS_BAD("a\xc3\xa9=v"),
    TS_BADN("a\0=v", 4),
    TS_BAD("a\x7f=v"),

    /* values: every allowed character, spaces inside, a leading space */
    TS_OK("k=" ALLCHR, "k", ALLCHR),
    TS_OK("k=a b", "k", "a b"),
    TS_OK("k=a  b c", "k", "a  b c"),
    TS_OK("k= 1", "k", " 1"),
    TS_OK("k=1 b", "k", "1 b"),
    TS_OK("k=!", "k", "!"),
    TS_OK("k=~", "k", "~"),
    TS_OK("k=\"q\"", "k", "\"q\""),
    TS_OK("k=;:<>", "k", ";:<>"),
    /* trailing spaces and tabs are OWS, not part of the value */
    TS_OK("k=1 ", "k", "1"),
    TS_OK("k=1\t", "k", "1"),
    TS_OK("k=a b \t ", "k", "a b"),
    TS_OK("k=1  ,b=2", "k", "1", "b", "2"),

    /* values that break the grammar */
    TS_BAD("k="),
    TS_BAD("k= "),
    TS_BAD("k=\t"),
    TS_BAD("k=  \t  "),
    TS_BAD("k=,b=2"),
    TS_BAD("k=1=2"),
    TS_BAD("k=="),
    TS_BAD("k=a=b"),
    TS_BAD("k=1;b=2"),
    TS_BAD("k=1 b=2"),
    TS_BAD("k=\tx"),
    TS_BAD("k=a\tb"),
    TS_BAD("k=a\x01"),
    TS_BAD("k=\x1f"),
    TS_BAD("k=a\x7f"),
    TS_BAD("k=\x80"),
    TS_BAD("k=caf\xc3\xa9"),
    TS_BAD("k=\xff"),
    TS_BAD("k=a\nb"),
    TS_BAD("k=a\n"),
    TS_BAD("k=a\r\n"),
    TS_BAD("k=a\r"),
    TS_BAD("k=a\v"),
    TS_BADN("k=a\0", 4),
    TS_BADN("k=\0a", 4),
    TS_BADN("k=1,b=\0", 7),

    /* members that are not key=value */
    TS_BAD("k"),
    TS_BAD("a=1,b"),
    TS_BAD("a=1,b,c=3"),
    TS_BAD("="),
    TS_BAD("=="),
    TS_BAD("a=1,="),
    TS_BAD("a=1;b=2"),
    TS_BAD("a=1 b=2"),
    TS_BAD("a=1\nb=2"),

    /* duplicate keys */
    TS_BAD("a=1,a=2"),
    TS_BAD("a=1,b=2,a=3"),
    TS_BAD("a=1,a=1"),
    TS_BAD("a@b=1,a@b=2"),
    TS_BAD(" a=1 , a=2 "),

    /* optional whitespace around members and commas */
    TS_OK(" a=1", "a", "1"),
    TS_OK("\ta=1", "a", "1"),
    TS_OK(" \t a=1 \t ", "a", "1"),
    TS_OK("a=1 , b=2", "a", "1", "b", "2"),
    TS_OK("a=1\t,\tb=2", "a", "1", "b", "2"),
    TS_OK(" \ta=1\t , \t b=2 \t", "a", "1", "b", "2"),
    TS_OK("a=1,  \t  b=2", "a", "1", "b", "2"),

    /* empty members are skipped */
    TS_OK("a=1,,b=2", "a", "1", "b", "2"),
    TS_OK("a=1, ,b=2", "a", "1", "b", "2"),
    TS_OK("a=1,\t,b=2", "a", "1", "b", "2"),
    TS_OK(",a=1", "a", "1"),
    TS_OK("a=1,", "a", "1"),
    TS_OK(",,a=1,,,b=2,,", "a", "1", "b", "2"),
    TS_OK(" , a=1 , , b=2 , ", "a", "1", "b", "2"),
    TS_EMPTY(""),
    TS_EMPTY(" "),
    TS_EMPTY("\t"),
    TS_EMPTY(" \t \t"),
    TS_EMPTY(","),
    TS_EMPTY(" , "),
    TS_EMPTY(",,,"),
    TS_EMPTY(" ,\t, ,"),

    /* whitespace other than spaces and tabs is not OWS */
    TS_BAD("\na=1"),
    TS_BAD("a=1,\nb=2"),
    TS_BAD("\r"),
    TS_BAD("\n"),
    TS_BAD("\v"),
    TS_BAD("\f"),
    TS_BADN("\0", 1),
    TS_BADN("a=1,\0", 5),
};

#define NPARSE TH_NELEM(parse_cases)

START_TEST(test_parse_table) {
    const ts_case *c = &parse_cases[_i];
    size_t len = c->len != 0 ? c->len : strlen(c->in);
    char *buf = th_exact_copy(c->in, len);
    char what[64];
    fg_tracestate ts;

    memset(&ts, 0xA5, sizeof(ts)); /* parse replaces whatever ts held */
    int rc = fg_tracestate_parse(&ts, buf, len);
    ck_assert_msg(rc == c->rc, "case %d \"%.*s\" (len %zu): %s, want %s", _i, (int)len, c->in,
                  len, fg_err_name(rc), fg_err_name(c->rc));
    snprintf(what, sizeof(what), "case %d", _i);
    if (rc == FG_EPARSE) {
        ck_assert_uint_eq(ts.n, 0);
    } else {
        assert_members(&ts, c->want, what);
        assert_inside(&ts, buf, len);
    }
    free(buf);
}
END_TEST

/* The length is the caller's: bytes past it are not read or counted. */
START_TEST(test_parse_length_is_callers) {
    static const char s[] = "a=1,b=2,BAD";
    fg_tracestate ts;

    ck_assert_int_eq(fg_tracestate_parse(&ts, s, 7), 0);
    ck_assert_uint_eq(ts.n, 2);
    ck_assert_int_eq(fg_tracestate_parse(&ts, s, 5), FG_EPARSE); /* "a=1,b" */
    ck_assert_uint_eq(ts.n, 0);
    ck_assert_int_eq(fg_tracestate_parse(&ts, s, 3), 0);
    ck_assert_uint_eq(ts.n, 1);
    ck_assert_int_eq(fg_tracestate_parse(&ts, s, 0), 0);
    ck_assert_uint_eq(ts.n, 0);
    ck_assert_int_eq(fg_tracestate_parse(&ts, s, sizeof(s) - 1), FG_EPARSE);
    ck_assert_uint_eq(ts.n, 0);
}
END_TEST

/* A failed parse empties a list that held members. */
START_TEST(test_parse_replaces) {
    fg_tracestate ts = {0};

    ck_assert_int_eq(fg_tracestate_parse(&ts, "a=1,b=2", 7), 0);
    ck_assert_uint_eq(ts.n, 2);
    ck_assert_int_eq(fg_tracestate_parse(&ts, "c=3", 3), 0);
    ck_assert_uint_eq(ts.n, 1);
    ck_assert(th_str_is(ts.members[0].key, "c", 1));
    ck_assert_int_eq(fg_tracestate_parse(&ts, "A=1", 3), FG_EPARSE);
    ck_assert_uint_eq(ts.n, 0);
    ck_assert_int_eq(fg_tracestate_parse(&ts, "c=3", 3), 0);
    ck_assert_int_eq(fg_tracestate_parse(&ts, " , ", 3), 0);
    ck_assert_uint_eq(ts.n, 0);
}
END_TEST

/* ---- length bounds ------------------------------------------------------------------- */

enum { LK_SIMPLE, LK_TENANT, LK_SYSTEM, LK_VALUE };

typedef struct len_case {
    int kind;
    size_t len; /* of the key, tenant, system or value */
    int ok;
} len_case;

static const len_case len_cases[] = {
    {LK_SIMPLE, 1, 1},   {LK_SIMPLE, 2, 1},   {LK_SIMPLE, 255, 1},  {LK_SIMPLE, 256, 1},
    {LK_SIMPLE, 257, 0}, {LK_SIMPLE, 300, 0}, {LK_SIMPLE, 1000, 0}, {LK_TENANT, 1, 1},
    {LK_TENANT, 240, 1}, {LK_TENANT, 241, 1}, {LK_TENANT, 242, 0},  {LK_TENANT, 256, 0},
    {LK_SYSTEM, 1, 1},   {LK_SYSTEM, 13, 1},  {LK_SYSTEM, 14, 1},   {LK_SYSTEM, 15, 0},
    {LK_SYSTEM, 40, 0},  {LK_VALUE, 1, 1},    {LK_VALUE, 255, 1},   {LK_VALUE, 256, 1},
    {LK_VALUE, 257, 0},  {LK_VALUE, 400, 0},
};

/*
 * Build "first=1,<key>=<value>,last=2" with the part under test len long:
 * a simple key "k" + pattern; a tenant "7" + pattern with system "s"; a
 * system "s" + pattern with tenant "t"; a value of printable characters
 * (spaces inside) ending in 'Z'. key/value receive the member's parts.
 */
static size_t build_len_case(const len_case *c, char *s, char *key, size_t *klen, char *value,
                             size_t *vlen) {
    static const char kpat[] = "a0_-*/z9";
    size_t n = 0;

    switch (c->kind) {
    case LK_SIMPLE:
        key[0] = 'k';
        th_fill(key + 1, c->len - 1, kpat);
        *klen = c->len;
        break;
    case LK_TENANT:
        key[0] = '7';
        th_fill(key + 1, c->len - 1, kpat);
        memcpy(key + c->len, "@s", 2);
        *klen = c->len + 2;
        break;
    case LK_SYSTEM:
        memcpy(key, "t@s", 3);
        th_fill(key + 3, c->len - 1, kpat);
        *klen = c->len + 2;
        break;
    default:
        key[0] = 'k';
        *klen = 1;
        break;
    }
    if (c->kind == LK_VALUE) {
        th_fill(value, c->len, "v !~\"x:;");
        value[c->len - 1] = 'Z';
        *vlen = c->len;
    } else {
        value[0] = 'v';
        *vlen = 1;
    }
    memcpy(s + n, "first=1,", 8);
    n += 8;
    memcpy(s + n, key, *klen);
    n += *klen;
    s[n++] = '=';
    memcpy(s + n, value, *vlen);
    n += *vlen;
    memcpy(s + n, ",last=2", 7);
    n += 7;
    return n;
}

START_TEST(test_parse_length_bounds) {
    const len_case *c = &len_cases[_i];
    char s[2048], key[1100], value[1100];
    size_t klen, vlen;
    size_t len = build_len_case(c, s, key, &klen, value, &vlen);
    char *buf = th_exact_copy(s, len);
    fg_tracestate ts;

    int rc = fg_tracestate_parse(&ts, buf, len);
    ck_assert_msg(rc == (c->ok ? 0 : FG_EPARSE), "case %d (kind %d, length %zu): %s", _i,
                  c->kind, c->len, fg_err_name(rc));
    if (c->ok) {
        ck_assert_uint_eq(ts.n, 3);
        ck_assert(th_str_is(ts.members[0].key, "first", 5));
        ck_assert(th_str_is(ts.members[1].key, key, klen));
        ck_assert(th_str_is(ts.members[1].value, value, vlen));
        ck_assert(th_str_is(ts.members[2].key, "last", 4));
        ck_assert(th_str_is(ts.members[2].value, "2", 1));
        assert_inside(&ts, buf, len);
    } else {
        ck_assert_uint_eq(ts.n, 0);
    }
    free(buf);

    /* set follows the same bounds, on an empty list */
    fg_tracestate e = {0};
    rc = fg_tracestate_set(&e, key, klen, value, vlen);
    ck_assert_msg(rc == (c->ok ? 0 : FG_EINVAL), "set, case %d: %s", _i, fg_err_name(rc));
    ck_assert_uint_eq(e.n, c->ok ? 1 : 0);
}
END_TEST

/* The longest key (tenant 241 + '@' + system 14 = 256) with the longest value. */
START_TEST(test_parse_longest_member) {
    char s[600];
    size_t n = 0;

    s[n++] = '0';
    th_fill(s + n, 240, "a9/");
    n += 240;
    s[n++] = '@';
    s[n++] = 'z';
    th_fill(s + n, 13, "*_");
    n += 13;
    ck_assert_uint_eq(n, 256);
    s[n++] = '=';
    th_fill(s + n, 256, "~ !");
    n += 256;
    s[n - 1] = '!';
    char *buf = th_exact_copy(s, n);
    fg_tracestate ts;
    ck_assert_int_eq(fg_tracestate_parse(&ts, buf, n), 0);
    ck_assert_uint_eq(ts.n, 1);
    ck_assert_uint_eq(ts.members[0].key.len, 256);
    ck_assert_uint_eq(ts.members[0].value.len, 256);
    ck_assert_ptr_eq(ts.members[0].key.ptr, buf);
    ck_assert_ptr_eq(ts.members[0].value.ptr, buf + 257);
    free(buf);

    /* a 256-character value that ends in spaces, trimmed as OWS, is 250 long */
    memcpy(s, "k=", 2);
    th_fill(s + 2, 250, "x y");
    s[251] = 'y';
    memset(s + 252, ' ', 6);
    buf = th_exact_copy(s, 258);
    ck_assert_int_eq(fg_tracestate_parse(&ts, buf, 258), 0);
    ck_assert_uint_eq(ts.n, 1);
    ck_assert_uint_eq(ts.members[0].value.len, 250);
    free(buf);
}
END_TEST

/* ---- member count -------------------------------------------------------------------- */

/* "m0=0,m1=1,..." with n members, optional empty members between them. */
static size_t build_list(char *s, int n, int with_empties) {
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        if (with_empties) {
            len += (size_t)sprintf(s + len, " ,\t,");
        }
        len += (size_t)sprintf(s + len, "%sm%d=%d", i > 0 ? "," : "", i, i);
    }
    if (with_empties) {
        len += (size_t)sprintf(s + len, ", ,");
    }
    return len;
}

START_TEST(test_parse_member_count) {
    char s[1024];
    fg_tracestate ts;

    for (int n = 0; n <= 40; n++) {
        for (int e = 0; e < 2; e++) {
            size_t len = build_list(s, n, e);
            char *buf = th_exact_copy(s, len);
            int want = n <= FG_TRACESTATE_MAX_MEMBERS ? 0 : FG_EPARSE;
            int rc = fg_tracestate_parse(&ts, buf, len);

            /* empty members are skipped: they do not count towards 32 */
            ck_assert_msg(rc == want, "%d members (empties %d): %s, want %s", n, e,
                          fg_err_name(rc), fg_err_name(want));
            ck_assert_uint_eq(ts.n, want == 0 ? (uint32_t)n : 0);
            for (uint32_t i = 0; i < ts.n; i++) {
                char k[16];
                int kl = sprintf(k, "m%u", (unsigned)i);
                ck_assert(th_str_is(ts.members[i].key, k, (size_t)kl));
                ck_assert(th_str_is(ts.members[i].value, k + 1, (size_t)kl - 1));
            }
            free(buf);
        }
    }
}
END_TEST

/* ---- parse_ctx ----------------------------------------------------------------------- */

START_TEST(test_parse_ctx_combines) {
    fg_ctx ctx;
    th_heap_list h = {0};
    fg_tracestate ts;

    th_ctx_new(&ctx);
    th_add_header(&ctx, &h, "traceparent",
                  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    th_add_header(&ctx, &h, "tracestate", "a=1, b=2 ");
    th_add_header(&ctx, &h, "x-tracestate", "x=9");
    th_add_header(&ctx, &h, "TraceState", "c=3");
    th_add_header(&ctx, &h, "tracestatex", "y=9");
    th_add_header(&ctx, &h, "tracestat", "z=9");
    th_add_header(&ctx, &h, "TRACESTATE", "");
    th_add_header(&ctx, &h, "tracestate", " , ");
    th_add_header(&ctx, &h, "tRaCeStAtE", ",d@e=4,");
    th_add_header(&ctx, &h, "Tracestate", "f=5");

    ck_assert_int_eq(fg_tracestate_parse(&ts, "q=1", 3), 0);
    ck_assert_int_eq(fg_tracestate_parse_ctx(&ts, &ctx), 0);
    static const char *const want[] = {"a",   "1", "b", "2", "c", "3",
                                       "d@e", "4", "f", "5", NULL};
    assert_members(&ts, want, "parse_ctx");

    /* every slice points into its own header's bytes */
    ck_assert(slice_inside(ts.members[0].key, ctx.headers[1].value.ptr, 9));
    ck_assert(slice_inside(ts.members[1].value, ctx.headers[1].value.ptr, 9));
    ck_assert(slice_inside(ts.members[2].key, ctx.headers[3].value.ptr, 3));
    ck_assert(slice_inside(ts.members[3].value, ctx.headers[8].value.ptr, 7));
    ck_assert(slice_inside(ts.members[4].key, ctx.headers[9].value.ptr, 3));
    th_heap_free(&h);
}
END_TEST

/* Members never run across a header boundary: "a=1" + "b=2" is two members. */
START_TEST(test_parse_ctx_boundaries) {
    fg_ctx ctx;
    th_heap_list h = {0};
    fg_tracestate ts;

    th_ctx_new(&ctx);
    th_add_header(&ctx, &h, "tracestate", "a=1");
    th_add_header(&ctx, &h, "tracestate", "b=2");
    th_add_header(&ctx, &h, "tracestate", "c=x y");
    ck_assert_int_eq(fg_tracestate_parse_ctx(&ts, &ctx), 0);
    static const char *const want[] = {"a", "1", "b", "2", "c", "x y", NULL};
    assert_members(&ts, want, "boundaries");
    th_heap_free(&h);

    /* a header that is only "k" is malformed, even if the next starts "=v" */
    th_ctx_new(&ctx);
    th_add_header(&ctx, &h, "tracestate", "a=1,k");
    th_add_header(&ctx, &h, "tracestate", "=v");
    ck_assert_int_eq(fg_tracestate_parse_ctx(&ts, &ctx), FG_EPARSE);
    ck_assert_uint_eq(ts.n, 0);
    th_heap_free(&h);
}
END_TEST

typedef struct ctx_case {
    const char *values[4]; /* "tracestate" header values, NULL-terminated */
    int rc;
    const char *want[9];
} ctx_case;

static const ctx_case ctx_cases[] = {
    {{NULL}, 0, {NULL}},
    {{"", NULL}, 0, {NULL}},
    {{"", " ", ",", NULL}, 0, {NULL}},
    {{"a=1", NULL}, 0, {"a", "1", NULL}},
    {{"a=1", "b=2", NULL}, 0, {"a", "1", "b", "2", NULL}},
    {{"a=1,", ",b=2", "", NULL}, 0, {"a", "1", "b", "2", NULL}},
    /* one bad header spoils the whole */
    {{"a=1", "B=2", NULL}, FG_EPARSE, {NULL}},
    {{"B=2", "a=1", NULL}, FG_EPARSE, {NULL}},
    {{"a=1", "b=2", "c", NULL}, FG_EPARSE, {NULL}},
    {{"a=1", "b=2,c=3=", NULL}, FG_EPARSE, {NULL}},
    {{"a=1", "\n", NULL}, FG_EPARSE, {NULL}},
    /* a duplicate across headers */
    {{"a=1", "a=2", NULL}, FG_EPARSE, {NULL}},
    {{"a=1,b=2", "c=3", "b=4"}, FG_EPARSE, {NULL}},
};

START_TEST(test_parse_ctx_table) {
    const ctx_case *c = &ctx_cases[_i];
    fg_ctx ctx;
    th_heap_list h = {0};
    fg_tracestate ts;
    char what[32];

    th_ctx_new(&ctx);
    th_add_header(&ctx, &h, "accept", "*/*");
    for (int i = 0; i < TH_NELEM(c->values) && c->values[i] != NULL; i++) {
        th_add_header(&ctx, &h, i % 2 ? "TraceState" : "tracestate", c->values[i]);
    }
    ck_assert_int_eq(fg_tracestate_parse(&ts, "q=1", 3), 0);
    int rc = fg_tracestate_parse_ctx(&ts, &ctx);
    ck_assert_msg(rc == c->rc, "case %d: %s, want %s", _i, fg_err_name(rc),
                  fg_err_name(c->rc));
    snprintf(what, sizeof(what), "ctx case %d", _i);
    assert_members(&ts, c->want, what);
    th_heap_free(&h);
}
END_TEST

/* 32 members across headers are fine, 33 are not. */
START_TEST(test_parse_ctx_count) {
    char s1[512], s2[512];

    for (int second = 10; second <= 14; second++) {
        fg_ctx ctx;
        th_heap_list h = {0};
        fg_tracestate ts;
        size_t n1 = 0, n2 = 0;

        for (int i = 0; i < 20; i++) {
            n1 += (size_t)sprintf(s1 + n1, "%sa%d=%d", i ? "," : "", i, i);
        }
        for (int i = 0; i < second; i++) {
            n2 += (size_t)sprintf(s2 + n2, "%sb%d=%d", i ? "," : "", i, i);
        }
        th_ctx_new(&ctx);
        th_add_header(&ctx, &h, "tracestate", s1);
        th_add_header(&ctx, &h, "tracestate", "");
        th_add_header(&ctx, &h, "Tracestate", s2);
        int want = 20 + second <= FG_TRACESTATE_MAX_MEMBERS ? 0 : FG_EPARSE;
        int rc = fg_tracestate_parse_ctx(&ts, &ctx);
        ck_assert_msg(rc == want, "20 + %d members: %s", second, fg_err_name(rc));
        ck_assert_uint_eq(ts.n, want == 0 ? (uint32_t)(20 + second) : 0);
        if (want == 0) {
            ck_assert(th_str_is(ts.members[19].key, "a19", 3));
            ck_assert(th_str_is(ts.members[20].key, "b0", 2));
        }
        th_heap_free(&h);
    }
}
END_TEST

/* ---- get, set, remove ---------------------------------------------------------------- */

START_TEST(test_get) {
    static const char s[] = "a=1,ab=2,a@b=3,b=x y";
    fg_tracestate ts;
    fg_str v;

    ck_assert_int_eq(fg_tracestate_parse(&ts, s, sizeof(s) - 1), 0);
    ck_assert_int_eq(fg_tracestate_get(&ts, "a", 1, &v), 0);
    ck_assert(th_str_is(v, "1", 1));
    ck_assert_ptr_eq(v.ptr, s + 2);
    ck_assert_int_eq(fg_tracestate_get(&ts, "ab", 2, &v), 0);
    ck_assert(th_str_is(v, "2", 1));
    ck_assert_int_eq(fg_tracestate_get(&ts, "a@b", 3, &v), 0);
    ck_assert(th_str_is(v, "3", 1));
    ck_assert_int_eq(fg_tracestate_get(&ts, "b", 1, &v), 0);
    ck_assert(th_str_is(v, "x y", 3));
    /* the key length is the caller's */
    ck_assert_int_eq(fg_tracestate_get(&ts, "abc", 1, &v), 0);
    ck_assert(th_str_is(v, "1", 1));
    ck_assert_int_eq(fg_tracestate_get(&ts, "abc", 2, &v), 0);
    ck_assert(th_str_is(v, "2", 1));
    /* no prefix or case folding */
    ck_assert_int_eq(fg_tracestate_get(&ts, "abc", 3, &v), FG_ENOTFOUND);
    ck_assert_int_eq(fg_tracestate_get(&ts, "A", 1, &v), FG_ENOTFOUND);
    ck_assert_int_eq(fg_tracestate_get(&ts, "a@", 2, &v), FG_ENOTFOUND);
    ck_assert_int_eq(fg_tracestate_get(&ts, "c", 1, &v), FG_ENOTFOUND);
    ck_assert_int_eq(fg_tracestate_get(&ts, "", 0, &v), FG_ENOTFOUND);

    fg_tracestate empty = {0};
    ck_assert_int_eq(fg_tracestate_get(&empty, "a", 1, &v), FG_ENOTFOUND);
}
END_TEST

START_TEST(test_set_front_and_update) {
    fg_tracestate ts = {0};
    static const char k1[] = "rojo", v1[] = "00f067aa0ba902b7";
    static const char k2[] = "congo", v2[] = "t61rcWkgMzE";
    static const char v3[] = "ucfJifl5GOE";

    ck_assert_int_eq(fg_tracestate_set(&ts, k1, 4, v1, 16), 0);
    ck_assert_uint_eq(ts.n, 1);
    /* ts borrows the caller's bytes */
    ck_assert_ptr_eq(ts.members[0].key.ptr, k1);
    ck_assert_ptr_eq(ts.members[0].value.ptr, v1);

    ck_assert_int_eq(fg_tracestate_set(&ts, k2, 5, v2, 11), 0);
    static const char *const want2[] = {"congo", "t61rcWkgMzE", "rojo", "00f067aa0ba902b7",
                                        NULL};
    assert_members(&ts, want2, "set congo");

    /* updating rojo moves it to the front */
    ck_assert_int_eq(fg_tracestate_set(&ts, k1, 4, v3, 11), 0);
    static const char *const want3[] = {"rojo", "ucfJifl5GOE", "congo", "t61rcWkgMzE", NULL};
    assert_members(&ts, want3, "update rojo");

    /* updating the front member keeps the count */
    ck_assert_int_eq(fg_tracestate_set(&ts, k1, 4, v1, 16), 0);
    static const char *const want4[] = {"rojo", "00f067aa0ba902b7", "congo", "t61rcWkgMzE",
                                        NULL};
    assert_members(&ts, want4, "update front");

    /* a middle member of a parsed list */
    fg_tracestate p;
    ck_assert_int_eq(fg_tracestate_parse(&p, "a=1,b=2,c=3,d=4", 15), 0);
    ck_assert_int_eq(fg_tracestate_set(&p, "c", 1, "9", 1), 0);
    static const char *const want5[] = {"c", "9", "a", "1", "b", "2", "d", "4", NULL};
    assert_members(&p, want5, "update middle");
    ck_assert_int_eq(fg_tracestate_set(&p, "d", 1, "8", 1), 0);
    static const char *const want6[] = {"d", "8", "c", "9", "a", "1", "b", "2", NULL};
    assert_members(&p, want6, "update last");

    char out[FG_TRACESTATE_PROPAGATE + 1];
    size_t len;
    ck_assert_int_eq(format_checked(&p, sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "d=8,c=9,a=1,b=2");
    ck_assert_uint_eq(len, 15);
}
END_TEST

START_TEST(test_set_full_drops_rightmost) {
    char s[1024];
    size_t len = build_list(s, 32, 0);
    fg_tracestate ts;

    ck_assert_int_eq(fg_tracestate_parse(&ts, s, len), 0);
    ck_assert_uint_eq(ts.n, 32);

    /* a new key: 33 members, so m31 goes */
    ck_assert_int_eq(fg_tracestate_set(&ts, "new", 3, "v", 1), 0);
    ck_assert_uint_eq(ts.n, 32);
    ck_assert(th_str_is(ts.members[0].key, "new", 3));
    ck_assert(th_str_is(ts.members[1].key, "m0", 2));
    ck_assert(th_str_is(ts.members[31].key, "m30", 3));
    fg_str v;
    ck_assert_int_eq(fg_tracestate_get(&ts, "m31", 3, &v), FG_ENOTFOUND);

    /* an existing key in a full list: moved, nothing dropped */
    ck_assert_int_eq(fg_tracestate_set(&ts, "m30", 3, "w", 1), 0);
    ck_assert_uint_eq(ts.n, 32);
    ck_assert(th_str_is(ts.members[0].key, "m30", 3));
    ck_assert(th_str_is(ts.members[0].value, "w", 1));
    ck_assert(th_str_is(ts.members[1].key, "new", 3));
    ck_assert(th_str_is(ts.members[2].key, "m0", 2));
    ck_assert(th_str_is(ts.members[31].key, "m29", 3));
    ck_assert_int_eq(fg_tracestate_get(&ts, "m29", 3, &v), 0);

    /* and again: another new key drops m29 */
    ck_assert_int_eq(fg_tracestate_set(&ts, "x@y", 3, "1", 1), 0);
    ck_assert_uint_eq(ts.n, 32);
    ck_assert(th_str_is(ts.members[0].key, "x@y", 3));
    ck_assert(th_str_is(ts.members[31].key, "m28", 3));
    ck_assert_int_eq(fg_tracestate_get(&ts, "m29", 3, &v), FG_ENOTFOUND);
}
END_TEST

typedef struct kv_case {
    const char *key;
    size_t klen; /* 0: strlen */
    const char *value;
    size_t vlen; /* 0: strlen */
} kv_case;

/* set refuses these with FG_EINVAL and leaves ts unchanged. */
static const kv_case bad_sets[] = {
    {"A", 0, "v", 0},     {"aB", 0, "v", 0},   {"0a", 0, "v", 0},       {"_a", 0, "v", 0},
    {"", 0, "v", 0},      {"a b", 0, "v", 0},  {"a=", 0, "v", 0},       {"a,", 0, "v", 0},
    {" a", 0, "v", 0},    {"a@", 0, "v", 0},   {"@a", 0, "v", 0},       {"a@0", 0, "v", 0},
    {"a@b@c", 0, "v", 0}, {"a\0", 2, "v", 0},  {"\xc3\xa9", 0, "v", 0}, {"k", 0, "", 0},
    {"k", 0, " ", 0},     {"k", 0, "a ", 0},   {"k", 0, "a,b", 0},      {"k", 0, "a=b", 0},
    {"k", 0, ",", 0},     {"k", 0, "=", 0},    {"k", 0, "a\tb", 0},     {"k", 0, "\x01", 0},
    {"k", 0, "\x7f", 0},  {"k", 0, "\x80", 0}, {"k", 0, "a\n", 0},      {"k", 0, "a\0b", 3},
    {"k", 0, "a\t", 0},
};

START_TEST(test_set_invalid) {
    const kv_case *c = &bad_sets[_i];
    size_t kl = c->klen ? c->klen : strlen(c->key);
    size_t vl = c->vlen ? c->vlen : strlen(c->value);
    char *k = th_exact_copy(c->key, kl), *v = th_exact_copy(c->value, vl);
    fg_tracestate ts, before;

    memset(&ts, 0, sizeof(ts));
    ck_assert_int_eq(fg_tracestate_parse(&ts, "a=1,b=2", 7), 0);
    memcpy(&before, &ts, sizeof(ts));
    int rc = fg_tracestate_set(&ts, k, kl, v, vl);
    ck_assert_msg(rc == FG_EINVAL, "case %d key \"%.*s\" value \"%.*s\": %s", _i, (int)kl, k,
                  (int)vl, v, fg_err_name(rc));
    ck_assert_msg(memcmp(&ts, &before, sizeof(ts)) == 0, "case %d: ts changed", _i);
    free(k);
    free(v);
}
END_TEST

START_TEST(test_remove) {
    fg_tracestate ts, before;
    fg_str v;

    ck_assert_int_eq(fg_tracestate_parse(&ts, "a=1,b=2,c=3,d=4", 15), 0);
    ck_assert_int_eq(fg_tracestate_remove(&ts, "b", 1), 0);
    static const char *const w1[] = {"a", "1", "c", "3", "d", "4", NULL};
    assert_members(&ts, w1, "remove middle");
    ck_assert_int_eq(fg_tracestate_get(&ts, "b", 1, &v), FG_ENOTFOUND);

    ck_assert_int_eq(fg_tracestate_remove(&ts, "d", 1), 0);
    static const char *const w2[] = {"a", "1", "c", "3", NULL};
    assert_members(&ts, w2, "remove last");

    ck_assert_int_eq(fg_tracestate_remove(&ts, "a", 1), 0);
    static const char *const w3[] = {"c", "3", NULL};
    assert_members(&ts, w3, "remove first");

    memcpy(&before, &ts, sizeof(ts));
    ck_assert_int_eq(fg_tracestate_remove(&ts, "b", 1), FG_ENOTFOUND);
    ck_assert_int_eq(fg_tracestate_remove(&ts, "cc", 2), FG_ENOTFOUND);
    ck_assert_int_eq(fg_tracestate_remove(&ts, "C", 1), FG_ENOTFOUND);
    ck_assert_int_eq(fg_tracestate_remove(&ts, "", 0), FG_ENOTFOUND);
    ck_assert(memcmp(&ts, &before, sizeof(ts)) == 0);

    ck_assert_int_eq(fg_tracestate_remove(&ts, "cx", 1), 0); /* key_len is the caller's */
    ck_assert_uint_eq(ts.n, 0);
    ck_assert_int_eq(fg_tracestate_remove(&ts, "c", 1), FG_ENOTFOUND);

    /* remove, then set: the list can grow back to 32 */
    char s[1024];
    size_t len = build_list(s, 32, 0);
    ck_assert_int_eq(fg_tracestate_parse(&ts, s, len), 0);
    ck_assert_int_eq(fg_tracestate_remove(&ts, "m5", 2), 0);
    ck_assert_uint_eq(ts.n, 31);
    ck_assert(th_str_is(ts.members[5].key, "m6", 2));
    ck_assert_int_eq(fg_tracestate_set(&ts, "z", 1, "1", 1), 0);
    ck_assert_uint_eq(ts.n, 32);
    ck_assert(th_str_is(ts.members[31].key, "m31", 3)); /* nothing dropped */
}
END_TEST

/* ---- format -------------------------------------------------------------------------- */

START_TEST(test_format_basic) {
    char out[FG_TRACESTATE_PROPAGATE + 1];
    size_t len;
    fg_tracestate ts = {0};

    /* an empty list writes "" */
    ck_assert_int_eq(format_checked(&ts, 1, out, &len), 0);
    ck_assert_str_eq(out, "");
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(format_checked(&ts, 0, out, &len), FG_ETOOLONG);

    /* OWS and empty members are not kept; the order is */
    static const char in[] = " \trojo=00f067aa0ba902b7 ,, congo=t61rcWkgMzE\t, a@b=x y ,";
    char *buf = th_exact_copy(in, sizeof(in) - 1);
    ck_assert_int_eq(fg_tracestate_parse(&ts, buf, sizeof(in) - 1), 0);
    ck_assert_int_eq(format_checked(&ts, sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,a@b=x y");
    ck_assert_uint_eq(len, strlen("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,a@b=x y"));

    /* len may be NULL */
    char small[64];
    memset(small, 'Z', sizeof(small));
    ck_assert_int_eq(fg_tracestate_format(&ts, small, sizeof(small), NULL), 0);
    ck_assert_str_eq(small, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,a@b=x y");
    free(buf);

    /* a value with every allowed character comes out unchanged */
    fg_tracestate all = {0};
    ck_assert_int_eq(fg_tracestate_set(&all, "k", 1, ALLCHR, strlen(ALLCHR)), 0);
    ck_assert_int_eq(format_checked(&all, sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "k=" ALLCHR);
}
END_TEST

/* Every cap from 0 to the value's length + 1: FG_ETOOLONG and "" below, the
 * value at exactly len + 1, and never a byte past cap. */
START_TEST(test_format_caps) {
    static const char in[] = "a=1,bb=22,c@d=x y z";
    fg_tracestate ts;
    char out[FG_TRACESTATE_PROPAGATE + 1];
    size_t len;

    ck_assert_int_eq(fg_tracestate_parse(&ts, in, sizeof(in) - 1), 0);
    for (size_t cap = 0; cap <= sizeof(in) + 4; cap++) {
        int rc = format_checked(&ts, cap, out, &len);
        if (cap >= sizeof(in)) {
            ck_assert_msg(rc == 0, "cap %zu: %s", cap, fg_err_name(rc));
            ck_assert_str_eq(out, in);
            ck_assert_uint_eq(len, sizeof(in) - 1);
        } else {
            ck_assert_msg(rc == FG_ETOOLONG, "cap %zu: %s", cap, fg_err_name(rc));
        }
    }
}
END_TEST

/* A member of the given total length (key "k" + two letters, '=', value), key i. */
static size_t make_member(char *dst, int i, size_t total) {
    ck_assert_uint_ge(total, 5);
    ck_assert_uint_le(total, 3 + 1 + FG_TRACESTATE_VALUE_MAX);
    dst[0] = 'k';
    dst[1] = (char)('a' + i / 26);
    dst[2] = (char)('a' + i % 26);
    dst[3] = '=';
    th_fill(dst + 4, total - 4, "Vv0~");
    return total;
}

typedef struct trunc_case {
    size_t lens[33];  /* member lengths, 0-terminated */
    const char *keep; /* '1' for each member kept */
} trunc_case;

/* Cases every reading of the truncation rule agrees on. */
static const trunc_case trunc_cases[] = {
    /* exactly 512: nothing goes */
    {{128, 128, 128, 125, 0}, "1111"},
    {{256, 255, 0}, "11"},
    {{200, 100, 100, 0}, "111"},
    {{5, 0}, "1"},
    /* 513 with nothing over 128: the rightmost goes */
    {{128, 128, 128, 126, 0}, "1110"},
    /* 128 is not "longer than 128"; 129 is, and goes first */
    {{129, 128, 128, 128, 0}, "0111"},
    {{128, 128, 128, 129, 0}, "1110"},
    {{130, 100, 100, 100, 100, 100, 0}, "011111"},
    {{100, 100, 100, 100, 100, 130, 0}, "111110"},
    {{100, 100, 200, 100, 100, 100, 0}, "110111"},
    /* from the right, not "whatever still fits": after 5 goes, 515 is still over 512,
     * so the fourth 128 goes and 5 stays out */
    {{128, 128, 128, 128, 5, 0}, "11100"},
    /* a large member first, then from the right */
    {{129, 128, 128, 128, 128, 0}, "01110"},
    {{60, 60, 60, 60, 60, 60, 60, 60, 60, 0}, "111111110"},
    /* 32 members of 17: 28 fit (503), 29 do not (521) */
    {{17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17,
      17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 0},
     "11111111111111111111111111110000"},
};

/*
 * Cases where the recommendation's "entries larger than 128 characters
 * SHOULD be removed first" could also be read as "only as many as needed":
 * the header says members longer than 128 "are left out first", so every one
 * of them goes once the whole list is over 512.
 *
 * LIB DISAGREES (found against a first lib/tracestate.c, which dropped large
 * members one at a time from the right only until the list fitted: {200,
 * 150, 100, 63} kept 200, 100 and 63, 365 characters, where the header's
 * wording keeps 100 and 63, 164; {5, 256, 256, 5} kept 5, 256, 5 where the
 * header keeps 5, 5). lib/tracestate.c now drops every large member first.
 */
static const trunc_case trunc_large_cases[] = {
    {{200, 150, 100, 63, 0}, "0011"},  {{50, 200, 50, 250, 50, 0}, "10101"},
    {{129, 129, 129, 129, 0}, "0000"}, {{256, 256, 0}, "00"},
    {{5, 256, 256, 5, 0}, "1001"},
};

static void run_trunc_case(const trunc_case *c, int idx) {
    char s[32 * 262], want[32 * 262];
    size_t n = 0, wn = 0, total = 0;
    int count = 0;
    fg_tracestate ts;

    for (count = 0; c->lens[count] != 0; count++) {
        char m[300];
        size_t ml = make_member(m, count, c->lens[count]);
        if (count > 0) {
            s[n++] = ',';
        }
        memcpy(s + n, m, ml);
        n += ml;
        if (c->keep[count] == '1') {
            if (wn > 0) {
                want[wn++] = ',';
            }
            memcpy(want + wn, m, ml);
            wn += ml;
        }
        total += ml + (count > 0);
    }
    ck_assert_uint_eq(strlen(c->keep), (size_t)count);
    want[wn] = '\0';
    ck_assert_uint_le(wn, FG_TRACESTATE_PROPAGATE);

    char *buf = th_exact_copy(s, n);
    ck_assert_int_eq(fg_tracestate_parse(&ts, buf, n), 0);
    ck_assert_uint_eq(ts.n, (uint32_t)count);

    char out[FG_TRACESTATE_PROPAGATE + 1];
    size_t len;
    int rc = format_checked(&ts, FG_TRACESTATE_PROPAGATE + 1, out, &len);
    ck_assert_msg(rc == 0, "case %d: %s", idx, fg_err_name(rc));
    ck_assert_msg(len == wn && strcmp(out, want) == 0,
                  "case %d (whole list %zu): kept %zu characters, want %zu (keep %s)", idx,
                  total, len, wn, c->keep);

    /* the exact cap fits, one less does not */
    ck_assert_int_eq(format_checked(&ts, wn + 1, out, &len), 0);
    ck_assert_str_eq(out, want);
    ck_assert_int_eq(format_checked(&ts, wn, out, &len), FG_ETOOLONG);
    /* a much larger buffer changes nothing: 512 is the limit, not cap */
    ck_assert_int_eq(format_checked(&ts, 9000, out, &len), 0);
    ck_assert_str_eq(out, want);
    /* format leaves ts alone */
    ck_assert_uint_eq(ts.n, (uint32_t)count);
    free(buf);
}

START_TEST(test_format_truncate) { run_trunc_case(&trunc_cases[_i], _i); }
END_TEST

START_TEST(test_format_truncate_large) { run_trunc_case(&trunc_large_cases[_i], _i); }
END_TEST

/* A single member of 513 characters (256-character key, 256-character value). */
START_TEST(test_format_single_huge_member) {
    char s[600];
    size_t n = 0;
    fg_tracestate ts;

    s[n++] = 'k';
    th_fill(s + n, 255, "ab");
    n += 255;
    s[n++] = '=';
    th_fill(s + n, 256, "xy");
    n += 256;
    ck_assert_uint_eq(n, 513);
    char *buf = th_exact_copy(s, n);
    ck_assert_int_eq(fg_tracestate_parse(&ts, buf, n), 0);
    ck_assert_uint_eq(ts.n, 1);

    char out[FG_TRACESTATE_PROPAGATE + 1];
    size_t len;
    ck_assert_int_eq(format_checked(&ts, sizeof(out), out, &len), 0);
    ck_assert_str_eq(out, "");
    ck_assert_uint_eq(len, 0);

    /* one character shorter (512) is propagated */
    ck_assert_int_eq(fg_tracestate_parse(&ts, buf, n - 1), 0);
    ck_assert_int_eq(format_checked(&ts, sizeof(out), out, &len), 0);
    ck_assert_uint_eq(len, 512);
    ck_assert(memcmp(out, buf, 512) == 0);
    free(buf);
}
END_TEST

/* ---- arguments ----------------------------------------------------------------------- */

START_TEST(test_null_args) {
    fg_tracestate ts = {0};
    fg_str v;
    char buf[16];
    size_t len;
    fg_ctx ctx;

    ck_assert_int_eq(fg_tracestate_parse(NULL, "a=1", 3), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_parse(NULL, NULL, 0), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_parse(&ts, NULL, 1), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_parse(&ts, NULL, 100), FG_EINVAL);
    /* NULL with length 0 is the empty value */
    ck_assert_int_eq(fg_tracestate_parse(&ts, "a=1", 3), 0);
    ck_assert_int_eq(fg_tracestate_parse(&ts, NULL, 0), 0);
    ck_assert_uint_eq(ts.n, 0);

    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_tracestate_parse_ctx(NULL, &ctx), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_parse_ctx(&ts, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_parse_ctx(NULL, NULL), FG_EINVAL);

    ck_assert_int_eq(fg_tracestate_parse(&ts, "a=1", 3), 0);
    ck_assert_int_eq(fg_tracestate_get(NULL, "a", 1, &v), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_get(&ts, NULL, 1, &v), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_get(&ts, "a", 1, NULL), FG_EINVAL);

    fg_tracestate before;
    memcpy(&before, &ts, sizeof(ts));
    ck_assert_int_eq(fg_tracestate_set(NULL, "b", 1, "2", 1), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_set(&ts, NULL, 1, "2", 1), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_set(&ts, "b", 1, NULL, 1), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_set(&ts, NULL, 0, NULL, 0), FG_EINVAL);
    ck_assert(memcmp(&ts, &before, sizeof(ts)) == 0);

    ck_assert_int_eq(fg_tracestate_remove(NULL, "a", 1), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_remove(&ts, NULL, 1), FG_EINVAL);
    ck_assert(memcmp(&ts, &before, sizeof(ts)) == 0);

    ck_assert_int_eq(fg_tracestate_format(NULL, buf, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_format(&ts, NULL, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_format(&ts, NULL, 0, &len), FG_EINVAL);
    ck_assert_int_eq(fg_tracestate_format(&ts, buf, sizeof(buf), NULL), 0);
    ck_assert_str_eq(buf, "a=1");
}
END_TEST

/* ---- garbage in: a reference parser from the grammar ---------------------------------- */

static int ref_keychar(int c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
           c == '*' || c == '/';
}

static int ref_key_ok(const char *k, size_t n) {
    const char *at = n > 0 ? memchr(k, '@', n) : NULL;

    if (at == NULL) {
        if (n < 1 || n > 256 || !(k[0] >= 'a' && k[0] <= 'z')) {
            return 0;
        }
        for (size_t i = 1; i < n; i++) {
            if (!ref_keychar((unsigned char)k[i])) {
                return 0;
            }
        }
        return 1;
    }
    size_t t = (size_t)(at - k), sl = n - t - 1;
    const char *sys = at + 1;
    if (t < 1 || t > 241 || sl < 1 || sl > 14) {
        return 0;
    }
    if (!((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= '0' && k[0] <= '9'))) {
        return 0;
    }
    for (size_t i = 1; i < t; i++) {
        if (!ref_keychar((unsigned char)k[i])) {
            return 0;
        }
    }
    if (!(sys[0] >= 'a' && sys[0] <= 'z')) {
        return 0;
    }
    for (size_t i = 1; i < sl; i++) {
        if (!ref_keychar((unsigned char)sys[i])) {
            return 0;
        }
    }
    return 1;
}

static int ref_value_ok(const char *v, size_t n) {
    if (n < 1 || n > 256 || v[n - 1] == ' ') {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=') {
            return 0;
        }
    }
    return 1;
}

typedef struct ref_list {
    uint32_t n;
    fg_str key[64], value[64];
} ref_list;

static int ref_parse(const char *s, size_t len, ref_list *r) {
    size_t i = 0;

    r->n = 0;
    while (i <= len) {
        size_t j = i;
        while (j < len && s[j] != ',') {
            j++;
        }
        size_t a = i, b = j;
        while (a < b && (s[a] == ' ' || s[a] == '\t')) {
            a++;
        }
        while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) {
            b--;
        }
        if (a < b) {
            const char *eq = memchr(s + a, '=', b - a);
            if (eq == NULL) {
                return FG_EPARSE;
            }
            size_t e = (size_t)(eq - s);
            if (!ref_key_ok(s + a, e - a) || !ref_value_ok(s + e + 1, b - e - 1)) {
                return FG_EPARSE;
            }
            for (uint32_t m = 0; m < r->n; m++) {
                if (th_str_is(r->key[m], s + a, e - a)) {
                    return FG_EPARSE;
                }
            }
            if (r->n == FG_TRACESTATE_MAX_MEMBERS) {
                return FG_EPARSE;
            }
            r->key[r->n].ptr = s + a;
            r->key[r->n].len = e - a;
            r->value[r->n].ptr = s + e + 1;
            r->value[r->n].len = b - e - 1;
            r->n++;
        }
        i = j + 1;
    }
    return 0;
}

static size_t ref_kept_length(const ref_list *r, const int *keep) {
    size_t total = 0;
    uint32_t k = 0;

    for (uint32_t i = 0; i < r->n; i++) {
        if (keep[i]) {
            total += r->key[i].len + 1 + r->value[i].len + (k > 0);
            k++;
        }
    }
    return total;
}

/*
 * The truncation guidance; keep[i] for each member. all_large: every member
 * over 128 characters goes first (the header's wording), else large members
 * go one at a time from the right only while the list is still too long
 * (the other reading; see trunc_large_cases). Then members from the right.
 */
static void ref_truncate(const ref_list *r, int *keep, int all_large) {
    for (uint32_t i = 0; i < r->n; i++) {
        keep[i] = 1;
    }
    if (ref_kept_length(r, keep) <= FG_TRACESTATE_PROPAGATE) {
        return;
    }
    for (uint32_t i = r->n; i-- > 0;) {
        if (!all_large && ref_kept_length(r, keep) <= FG_TRACESTATE_PROPAGATE) {
            break;
        }
        if (r->key[i].len + 1 + r->value[i].len > FG_TRACESTATE_LARGE) {
            keep[i] = 0;
        }
    }
    for (uint32_t i = r->n; i-- > 0 && ref_kept_length(r, keep) > FG_TRACESTATE_PROPAGATE;) {
        keep[i] = 0;
    }
}

/* The formatted value of the kept members. */
static size_t ref_format(const ref_list *r, const int *keep, char *out) {
    size_t n = 0;
    uint32_t k = 0;

    for (uint32_t i = 0; i < r->n; i++) {
        if (!keep[i]) {
            continue;
        }
        if (k++ > 0) {
            out[n++] = ',';
        }
        memcpy(out + n, r->key[i].ptr, r->key[i].len);
        n += r->key[i].len;
        out[n++] = '=';
        memcpy(out + n, r->value[i].ptr, r->value[i].len);
        n += r->value[i].len;
    }
    out[n] = '\0';
    return n;
}

static const char key_alpha[] = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
static const char value_alpha[] = "abcXYZ019 !~\"#;:<>?@[]^_`{|}";
static const char noise_alpha[] = "abz09_-*/@=,=, , \t\tAZ!~.;\x01\x7f\x80\xff\n";

static size_t gen_key(uint64_t *seed, char *s) {
    size_t n = 0;
    size_t r = th_rng_below(seed, 40);
    size_t len = r == 0 ? 250 + th_rng_below(seed, 10) : 1 + th_rng_below(seed, 4);

    if (th_rng_below(seed, 8) == 0) {
        /* multi-tenant; sometimes at or past the bounds */
        size_t tl = th_rng_below(seed, 30) == 0 ? 238 + th_rng_below(seed, 6)
                                                : 1 + th_rng_below(seed, 3);
        size_t sl = th_rng_below(seed, 10) == 0 ? 12 + th_rng_below(seed, 5)
                                                : 1 + th_rng_below(seed, 3);
        s[n++] = key_alpha[th_rng_below(seed, 36)];
        for (size_t i = 1; i < tl; i++) {
            s[n++] = key_alpha[th_rng_below(seed, sizeof(key_alpha) - 1)];
        }
        s[n++] = '@';
        s[n++] = (char)('a' + th_rng_below(seed, 26));
        for (size_t i = 1; i < sl; i++) {
            s[n++] = key_alpha[th_rng_below(seed, sizeof(key_alpha) - 1)];
        }
        return n;
    }
    s[n++] = (char)('a' + th_rng_below(seed, 26));
    for (size_t i = 1; i < len; i++) {
        s[n++] = key_alpha[th_rng_below(seed, sizeof(key_alpha) - 1)];
    }
    return n;
}

static size_t gen_input(uint64_t *seed, char *s, int structured) {
    size_t n = 0;

    if (!structured) {
        size_t len = th_rng_below(seed, 40);
        for (size_t i = 0; i < len; i++) {
            s[n++] = noise_alpha[th_rng_below(seed, sizeof(noise_alpha) - 1)];
        }
        return n;
    }
    size_t members =
        th_rng_below(seed, 4) == 0 ? 25 + th_rng_below(seed, 11) : th_rng_below(seed, 9);
    for (size_t m = 0; m < members; m++) {
        if (m > 0) {
            s[n++] = ',';
        }
        for (size_t w = th_rng_below(seed, 3); w > 0; w--) {
            s[n++] = " \t"[th_rng_below(seed, 2)];
        }
        if (th_rng_below(seed, 10) == 0) {
            continue; /* an empty member */
        }
        n += gen_key(seed, s + n);
        s[n++] = '=';
        size_t r = th_rng_below(seed, 40);
        size_t vl = r == 0   ? 250 + th_rng_below(seed, 10)
                    : r == 1 ? 0
                             : 1 + th_rng_below(seed, 6);
        for (size_t i = 0; i < vl; i++) {
            s[n++] = value_alpha[th_rng_below(seed, sizeof(value_alpha) - 1)];
        }
        for (size_t w = th_rng_below(seed, 3); w > 0; w--) {
            s[n++] = " \t"[th_rng_below(seed, 2)];
        }
    }
    if (n > 0 && th_rng_below(seed, 6) == 0) {
        s[th_rng_below(seed, n)] = noise_alpha[th_rng_below(seed, sizeof(noise_alpha) - 1)];
    }
    return n;
}

#define NGARBAGE 20000

START_TEST(test_garbage_in) {
    uint64_t seed = UINT64_C(0x7261636573746174);
    static char s[40 * 600];
    int accepted = 0, rejected = 0, truncated = 0, ambiguous = 0;

    for (int iter = 0; iter < NGARBAGE; iter++) {
        size_t len = gen_input(&seed, s, iter % 4 != 0);
        char *buf = th_exact_copy(s, len);
        fg_tracestate ts;
        ref_list ref;
        int want = ref_parse(buf, len, &ref);
        int rc = fg_tracestate_parse(&ts, buf, len);

        TH_FAST_ASSERT(rc == 0 || rc == FG_EPARSE, "input %d: %s", iter, fg_err_name(rc));
        TH_FAST_ASSERT(rc == want, "input %d \"%.*s\": %s, the grammar says %s", iter,
                       (int)len, buf, fg_err_name(rc), fg_err_name(want));
        if (rc != 0) {
            TH_FAST_ASSERT(ts.n == 0, "input %d: n %u after FG_EPARSE", iter, (unsigned)ts.n);
            rejected++;
            free(buf);
            continue;
        }
        accepted++;
        TH_FAST_ASSERT(ts.n == ref.n, "input %d: %u members, want %u", iter, (unsigned)ts.n,
                       (unsigned)ref.n);
        for (uint32_t i = 0; i < ts.n; i++) {
            const fg_tracestate_member *m = &ts.members[i];
            TH_FAST_ASSERT(slice_inside(m->key, buf, len) && slice_inside(m->value, buf, len),
                           "input %d member %u outside the input", iter, (unsigned)i);
            TH_FAST_ASSERT(m->key.ptr == ref.key[i].ptr && m->key.len == ref.key[i].len,
                           "input %d member %u key", iter, (unsigned)i);
            TH_FAST_ASSERT(
                m->value.ptr == ref.value[i].ptr && m->value.len == ref.value[i].len,
                "input %d member %u value \"%.*s\", want \"%.*s\"", iter, (unsigned)i,
                (int)m->value.len, m->value.ptr, (int)ref.value[i].len, ref.value[i].ptr);
            TH_FAST_ASSERT(ref_key_ok(m->key.ptr, m->key.len) &&
                               ref_value_ok(m->value.ptr, m->value.len),
                           "input %d member %u breaks the grammar", iter, (unsigned)i);
        }

        /*
         * format: the reference truncation, byte for byte; then it parses
         * back. Either reading of "large members first" is accepted here
         * (test_format_truncate_large pins the header's); `ambiguous` counts
         * the inputs where they differ.
         */
        int keep_all[64], keep_needed[64], *keep = keep_all;
        char want_out[FG_TRACESTATE_PROPAGATE + 1], alt_out[FG_TRACESTATE_PROPAGATE + 1];
        ref_truncate(&ref, keep_all, 1);
        ref_truncate(&ref, keep_needed, 0);
        size_t wn = ref_format(&ref, keep_all, want_out);
        size_t an = ref_format(&ref, keep_needed, alt_out);
        ambiguous += an != wn || memcmp(want_out, alt_out, wn) != 0;

        char out[FG_TRACESTATE_PROPAGATE + 1 + TH_CANARY_LEN];
        size_t olen = 0;
        memset(out, TH_CANARY, sizeof(out));
        rc = fg_tracestate_format(&ts, out, FG_TRACESTATE_PROPAGATE + 1, &olen);
        TH_FAST_ASSERT(rc == 0, "input %d: format %s", iter, fg_err_name(rc));
        for (int c = 0; c < TH_CANARY_LEN; c++) {
            TH_FAST_ASSERT((unsigned char)out[FG_TRACESTATE_PROPAGATE + 1 + c] == TH_CANARY,
                           "input %d: format wrote past cap", iter);
        }
        if (olen == an && memcmp(out, alt_out, an + 1) == 0) {
            keep = keep_needed;
        } else {
            TH_FAST_ASSERT(olen == wn && memcmp(out, want_out, wn + 1) == 0,
                           "input %d: format \"%s\", want \"%s\"", iter, out, want_out);
        }
        uint32_t nkept = 0;
        for (uint32_t i = 0; i < ref.n; i++) {
            nkept += keep[i] != 0;
        }
        truncated += nkept < ref.n;

        char *again = th_exact_copy(out, olen);
        fg_tracestate ts2;
        rc = fg_tracestate_parse(&ts2, again, olen);
        TH_FAST_ASSERT(rc == 0 && ts2.n == nkept, "input %d: re-parse %s, %u members", iter,
                       fg_err_name(rc), (unsigned)ts2.n);
        for (uint32_t i = 0, k = 0; i < ref.n; i++) {
            if (!keep[i]) {
                continue;
            }
            TH_FAST_ASSERT(
                th_str_is(ts2.members[k].key, ref.key[i].ptr, ref.key[i].len) &&
                    th_str_is(ts2.members[k].value, ref.value[i].ptr, ref.value[i].len),
                "input %d: re-parsed member %u differs", iter, (unsigned)k);
            k++;
        }
        free(again);
        free(buf);
    }
    /* the generator reaches both outcomes, and truncation */
    ck_assert_int_gt(accepted, NGARBAGE / 10);
    ck_assert_int_gt(rejected, NGARBAGE / 10);
    ck_assert_int_gt(truncated, 10);
    ck_assert_int_gt(ambiguous, 0);
}
END_TEST

/* ---- the suite ----------------------------------------------------------------------- */

Suite *fg_suite_tracestate(void) {
    Suite *s = suite_create("tracestate");
    TCase *tc;

    tc = tcase_create("parse");
    tcase_add_loop_test(tc, test_parse_table, 0, NPARSE);
    tcase_add_test(tc, test_parse_length_is_callers);
    tcase_add_test(tc, test_parse_replaces);
    tcase_add_loop_test(tc, test_parse_length_bounds, 0, TH_NELEM(len_cases));
    tcase_add_test(tc, test_parse_longest_member);
    tcase_add_test(tc, test_parse_member_count);
    suite_add_tcase(s, tc);

    tc = tcase_create("parse_ctx");
    tcase_add_test(tc, test_parse_ctx_combines);
    tcase_add_test(tc, test_parse_ctx_boundaries);
    tcase_add_loop_test(tc, test_parse_ctx_table, 0, TH_NELEM(ctx_cases));
    tcase_add_test(tc, test_parse_ctx_count);
    suite_add_tcase(s, tc);

    tc = tcase_create("edit");
    tcase_add_test(tc, test_get);
    tcase_add_test(tc, test_set_front_and_update);
    tcase_add_test(tc, test_set_full_drops_rightmost);
    tcase_add_loop_test(tc, test_set_invalid, 0, TH_NELEM(bad_sets));
    tcase_add_test(tc, test_remove);
    suite_add_tcase(s, tc);

    tc = tcase_create("format");
    tcase_add_test(tc, test_format_basic);
    tcase_add_test(tc, test_format_caps);
    tcase_add_loop_test(tc, test_format_truncate, 0, TH_NELEM(trunc_cases));
    tcase_add_loop_test(tc, test_format_truncate_large, 0, TH_NELEM(trunc_large_cases));
    tcase_add_test(tc, test_format_single_huge_member);
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
