/*
 * tests/fuzz/fuzz_baggage.c - libFuzzer target for the baggage API
 * (`make fuzz`). The input, copied to a heap buffer of its exact size (so
 * ASan sees any read past it), is parsed as one baggage header value. A
 * reference written here from the W3C Baggage grammar splits it into
 * members and says which are well-formed: the parser must keep exactly
 * those (their key and value slices, inside the input), count the others
 * as malformed and report a code that agrees with its counts; past the
 * limits (64 members, FG_BAGGAGE_MAX_BYTES) it keeps a prefix of them.
 * fg_baggage_get of every key must give the percent-decoded value of its
 * last member into a big buffer and FG_ETOOLONG into one too small;
 * formatting must parse back to the same keys, decoded values and
 * properties; a raw value fg_baggage_set puts in must come back
 * byte for byte. fg_ctx_baggage on a ctx holding the input as its baggage
 * header must agree with fg_baggage_get. Then the first byte splits the
 * rest into two "baggage" headers: fg_baggage_parse_ctx must give what
 * fg_baggage_parse gives for the two joined by ','.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <floodgate.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* abort() with the failed condition, so a crash report says which one. */
#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            (void)fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

#define SMALL_CAP 8             /* the small buffer for fg_baggage_get */
#define SET_KEY   "fuzz.set"    /* the key fg_baggage_set adds */
#define ABSENT    "fuzz~absent" /* a key looked up when the input lacks it */
#define RAW_MAX   48            /* bytes of input used as a raw value */
#define CTX_KEYS  4             /* keys looked up through fg_ctx_baggage */

/* ---- the grammar, written independently of lib/ --------------------------- */

static int is_ows(char c) { return c == ' ' || c == '\t'; }

/* tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 *         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static int is_tchar(char ch) {
    unsigned char c = (unsigned char)ch;
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E */
static int is_octet(char ch) {
    unsigned char c = (unsigned char)ch;
    return c == 0x21 || (c >= 0x23 && c <= 0x2b) || (c >= 0x2d && c <= 0x3a) ||
           (c >= 0x3c && c <= 0x5b) || (c >= 0x5d && c <= 0x7e);
}

static size_t skip_ows(const char *s, size_t i, size_t e) {
    while (i < e && is_ows(s[i]))
        i++;
    return i;
}

static int all_tchar(fg_str s) {
    if (s.len == 0)
        return 0;
    for (size_t i = 0; i < s.len; i++)
        if (!is_tchar(s.ptr[i]))
            return 0;
    return 1;
}

static int all_octet(fg_str s) {
    for (size_t i = 0; i < s.len; i++)
        if (!is_octet(s.ptr[i]))
            return 0;
    return 1;
}

/* properties = property *(OWS ";" OWS property), with OWS at either end;
 * property = key OWS "=" OWS value / key OWS */
static int props_ok(const char *s, size_t e) {
    size_t i = 0;
    for (;;) {
        i = skip_ows(s, i, e);
        size_t k = i;
        while (i < e && is_tchar(s[i]))
            i++;
        if (i == k)
            return 0;
        i = skip_ows(s, i, e);
        if (i < e && s[i] == '=') {
            i = skip_ows(s, i + 1, e);
            while (i < e && is_octet(s[i]))
                i++;
            i = skip_ows(s, i, e);
        }
        if (i == e)
            return 1;
        if (s[i] != ';')
            return 0;
        i++;
    }
}

typedef struct ref_member {
    fg_str key, value, props;
} ref_member;

enum { REF_EMPTY, REF_MALFORMED, REF_VALID };

/* One comma-separated segment: OWS key OWS "=" OWS value OWS [";" props]. */
static int ref_member_parse(const char *s, size_t n, ref_member *m) {
    size_t i = skip_ows(s, 0, n), e = n;
    while (e > i && is_ows(s[e - 1]))
        e--;
    if (i == e)
        return REF_EMPTY;
    size_t k = i;
    while (i < e && is_tchar(s[i]))
        i++;
    if (i == k)
        return REF_MALFORMED;
    m->key = (fg_str){s + k, i - k};
    i = skip_ows(s, i, e);
    if (i == e || s[i] != '=')
        return REF_MALFORMED;
    i = skip_ows(s, i + 1, e);
    size_t v = i;
    while (i < e && is_octet(s[i]))
        i++;
    m->value = (fg_str){s + v, i - v};
    i = skip_ows(s, i, e);
    m->props = (fg_str){s + i, 0};
    if (i == e)
        return REF_VALID;
    if (s[i] != ';')
        return REF_MALFORMED;
    m->props = (fg_str){s + i + 1, e - i - 1};
    return props_ok(m->props.ptr, m->props.len) ? REF_VALID : REF_MALFORMED;
}

typedef struct ref_list {
    ref_member *m; /* the valid members */
    size_t valid, malformed, empty;
} ref_list;

static int ref_parse(const char *s, size_t len, ref_list *r) {
    size_t segments = 1;
    for (size_t i = 0; i < len; i++)
        segments += s[i] == ',';
    r->m = malloc(segments * sizeof(*r->m));
    r->valid = r->malformed = r->empty = 0;
    if (r->m == NULL)
        return -1;
    size_t pos = 0;
    for (;;) {
        const char *comma = pos < len ? memchr(s + pos, ',', len - pos) : NULL;
        size_t end = comma ? (size_t)(comma - s) : len;
        switch (ref_member_parse(s + pos, end - pos, &r->m[r->valid])) {
        case REF_EMPTY:
            r->empty++;
            break;
        case REF_MALFORMED:
            r->malformed++;
            break;
        default:
            r->valid++;
        }
        if (comma == NULL)
            break;
        pos = end + 1;
    }
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode v into out (at least v.len bytes); a '%' not followed by
 * two hex digits stays as it is. Returns the decoded length. */
static size_t decode(fg_str v, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < v.len; i++) {
        int hi, lo;
        if (v.ptr[i] == '%' && i + 2 < v.len && (hi = hexval(v.ptr[i + 1])) >= 0 &&
            (lo = hexval(v.ptr[i + 2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = v.ptr[i];
        }
    }
    return o;
}

static int str_eq(fg_str a, fg_str b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* The same bytes of the input (any pointer will do for an empty one). */
static int same_slice(fg_str a, fg_str b) {
    return a.len == b.len && (a.len == 0 || a.ptr == b.ptr);
}

static fg_str trim(fg_str s) {
    while (s.len && is_ows(s.ptr[0])) {
        s.ptr++;
        s.len--;
    }
    while (s.len && is_ows(s.ptr[s.len - 1]))
        s.len--;
    return s;
}

static int inside(fg_str s, const char *base, size_t size) {
    uintptr_t p = (uintptr_t)s.ptr, b = (uintptr_t)base;
    return s.ptr != NULL && p >= b && s.len <= size && p - b <= size - s.len;
}

/* Decoded values of a and b are equal. */
static int same_decoded(fg_str a, fg_str b) {
    char *da = malloc(a.len + 1), *db = malloc(b.len + 1);
    CHECK(da != NULL && db != NULL);
    size_t la = decode(a, da), lb = decode(b, db);
    int eq = la == lb && memcmp(da, db, la) == 0;
    free(da);
    free(db);
    return eq;
}

/* ---- checks on a list ------------------------------------------------------- */

/* The counts and the code agree; every member is well-formed. */
static void check_counts(const fg_baggage *b, int rc) {
    CHECK(rc == 0 || rc == FG_EPARSE || rc == FG_ETOOMANY);
    CHECK(b->n <= FG_BAGGAGE_MAX_MEMBERS);
    CHECK((rc == 0) == (b->malformed == 0 && b->dropped == 0));
    CHECK((rc == FG_EPARSE) == (b->malformed > 0));
    CHECK((rc == FG_ETOOMANY) == (b->malformed == 0 && b->dropped > 0));
    for (uint32_t i = 0; i < b->n; i++) {
        const fg_baggage_member *m = &b->members[i];
        CHECK(m->plain == 0);
        CHECK(all_tchar(m->key));
        CHECK(all_octet(m->value));
        CHECK(m->properties.len == 0 || props_ok(m->properties.ptr, m->properties.len));
    }
}

/* The decoded value of the last member with this key, into a fresh buffer
 * of at least the value's length; -1 when there is none. */
static long expected_value(const fg_baggage *b, fg_str key, char **out) {
    for (uint32_t i = b->n; i-- > 0;) {
        if (str_eq(b->members[i].key, key)) {
            *out = malloc(b->members[i].value.len + 1);
            CHECK(*out != NULL);
            return (long)decode(b->members[i].value, *out);
        }
    }
    *out = NULL;
    return -1;
}

/* fg_baggage_get (or fg_ctx_baggage, when ctx) of key agrees with b. */
static void check_get(const fg_baggage *b, const fg_ctx *ctx, const char *key,
                      size_t key_len) {
    fg_str k = {key, key_len};
    char *want;
    long wlen = expected_value(b, k, &want);
    size_t cap = wlen < 0 ? 16 : (size_t)wlen + 1;
    char *big = malloc(cap), small[SMALL_CAP];
    CHECK(big != NULL);
    size_t len = (size_t)-1;
    int rc = ctx ? fg_ctx_baggage(ctx, key, key_len, big, cap, &len)
                 : fg_baggage_get(b, key, key_len, big, cap, &len);
    if (wlen < 0) {
        CHECK(rc == FG_ENOTFOUND);
        free(big);
        return;
    }
    CHECK(rc == 0);
    CHECK(len == (size_t)wlen && memcmp(big, want, len) == 0 && big[len] == '\0');
    /* No room for the NUL. */
    rc = ctx ? fg_ctx_baggage(ctx, key, key_len, big, cap - 1, NULL)
             : fg_baggage_get(b, key, key_len, big, cap - 1, NULL);
    CHECK(rc == FG_ETOOLONG);
    rc = ctx ? fg_ctx_baggage(ctx, key, key_len, small, sizeof(small), &len)
             : fg_baggage_get(b, key, key_len, small, sizeof(small), &len);
    if ((size_t)wlen < sizeof(small))
        CHECK(rc == 0 && len == (size_t)wlen && memcmp(small, want, len) == 0);
    else
        CHECK(rc == FG_ETOOLONG);
    free(big);
    free(want);
}

/* fg_ctx_baggage of a few of b's keys, the last one among them: each call
 * scans the whole header, so every key would make a big input slow. */
static void check_ctx_gets(const fg_baggage *b, const fg_ctx *ctx) {
    uint32_t step = b->n / CTX_KEYS + 1;
    for (uint32_t i = 0; i < b->n; i += step)
        check_get(b, ctx, b->members[i].key.ptr, b->members[i].key.len);
    if (b->n > 0)
        check_get(b, ctx, b->members[b->n - 1].key.ptr, b->members[b->n - 1].key.len);
}

static int has_key(const fg_baggage *b, const char *key, size_t len) {
    fg_str k = {key, len};
    for (uint32_t i = 0; i < b->n; i++)
        if (str_eq(b->members[i].key, k))
            return 1;
    return 0;
}

/* Format b; it must parse back to a prefix of its members (all when they
 * fit) with the same keys, decoded values and properties. out has room for
 * FG_BAGGAGE_MAX_BYTES + 1. Returns the length. */
static size_t check_format(const fg_baggage *b, char *out, fg_baggage *again) {
    size_t len = (size_t)-1;
    CHECK(fg_baggage_format(b, out, FG_BAGGAGE_MAX_BYTES + 1, &len) == 0);
    CHECK(len <= FG_BAGGAGE_MAX_BYTES && strlen(out) == len);
    CHECK(fg_baggage_parse(again, out, len) == 0);
    check_counts(again, 0);
    CHECK(again->n <= b->n);
    size_t need = 0; /* a bound on the full length, every value encoded */
    for (uint32_t i = 0; i < b->n; i++) {
        const fg_baggage_member *m = &b->members[i];
        need += m->key.len + 1 + 3 * m->value.len + 1 + m->properties.len + 1;
    }
    if (need <= FG_BAGGAGE_MAX_BYTES)
        CHECK(again->n == b->n);
    for (uint32_t i = 0; i < again->n; i++) {
        const fg_baggage_member *m = &b->members[i], *a = &again->members[i];
        CHECK(str_eq(a->key, m->key));
        if (m->plain) {
            char *d = malloc(a->value.len + 1);
            CHECK(d != NULL);
            size_t dl = decode(a->value, d);
            CHECK(dl == m->value.len && (dl == 0 || memcmp(d, m->value.ptr, dl) == 0));
            free(d);
        } else {
            CHECK(same_decoded(a->value, m->value));
        }
        CHECK(str_eq(trim(a->properties), trim(m->properties)));
    }
    /* No room for the NUL: FG_ETOOLONG and "". */
    char *small = malloc(len + 1);
    CHECK(small != NULL);
    small[0] = 'x';
    CHECK(fg_baggage_format(b, small, len, NULL) == FG_ETOOLONG);
    CHECK(len == 0 ? small[0] == 'x' : small[0] == '\0');
    free(small);
    return len;
}

/* fg_baggage_set of a raw value (bytes of the input: anything at all). */
static void check_set(const fg_baggage *orig, const char *raw, size_t raw_len) {
    fg_baggage b = *orig;
    const size_t klen = sizeof(SET_KEY) - 1;
    uint32_t had = 0;
    for (uint32_t i = 0; i < b.n; i++)
        had += str_eq(b.members[i].key, (fg_str){SET_KEY, klen});
    int rc = fg_baggage_set(&b, SET_KEY, klen, raw, raw_len);
    if (had == 0 && orig->n == FG_BAGGAGE_MAX_MEMBERS) {
        CHECK(rc == FG_ETOOMANY && b.n == orig->n);
        return;
    }
    CHECK(rc == 0);
    CHECK(b.n == orig->n - had + 1);
    const fg_baggage_member *last = &b.members[b.n - 1];
    CHECK(str_eq(last->key, (fg_str){SET_KEY, klen}) && last->plain);
    CHECK(has_key(&b, SET_KEY, klen));
    char got[RAW_MAX + 1];
    size_t glen;
    CHECK(fg_baggage_get(&b, SET_KEY, klen, got, sizeof(got), &glen) == 0);
    CHECK(glen == raw_len && (raw_len == 0 || memcmp(got, raw, raw_len) == 0));

    char *out = malloc(FG_BAGGAGE_MAX_BYTES + 1);
    fg_baggage *again = malloc(sizeof(*again));
    CHECK(out != NULL && again != NULL);
    check_format(&b, out, again);
    if (again->n == b.n) {
        CHECK(fg_baggage_get(again, SET_KEY, klen, got, sizeof(got), &glen) == 0);
        CHECK(glen == raw_len && (raw_len == 0 || memcmp(got, raw, raw_len) == 0));
    }
    free(again);
    free(out);

    CHECK(fg_baggage_remove(&b, SET_KEY, klen) == 0);
    CHECK(b.n == orig->n - had);
    CHECK(fg_baggage_get(&b, SET_KEY, klen, got, sizeof(got), NULL) == FG_ENOTFOUND);
    CHECK(fg_baggage_remove(&b, SET_KEY, klen) == FG_ENOTFOUND);
    CHECK(fg_baggage_set(&b, "bad key", 7, "v", 1) == FG_EINVAL);
}

/* ---- the entry points --------------------------------------------------------- */

static void check_parse(const char *in, size_t size) {
    fg_baggage *b = malloc(sizeof(*b));
    CHECK(b != NULL);
    memset(b, 0xa5, sizeof(*b)); /* parse must not depend on what b held */
    int rc = fg_baggage_parse(b, in, size);
    check_counts(b, rc);

    ref_list ref;
    if (ref_parse(in, size, &ref) != 0) {
        free(b);
        return;
    }
    size_t total = (size_t)b->n + b->malformed + b->dropped;
    CHECK(total >= ref.valid + ref.malformed &&
          total <= ref.valid + ref.malformed + ref.empty);
    for (uint32_t i = 0; i < b->n; i++) {
        const fg_baggage_member *m = &b->members[i];
        CHECK(inside(m->key, in, size));
        CHECK(m->properties.len == 0 || inside(m->properties, in, size));
        if (m->value.len > 0) {
            /* key OWS "=" OWS value, in the input (an empty value's
             * pointer may be anything) */
            CHECK(inside(m->value, in, size));
            const char *p = m->key.ptr + m->key.len;
            while (p < m->value.ptr && is_ows(*p))
                p++;
            CHECK(p < m->value.ptr && *p == '=');
            for (p++; p < m->value.ptr; p++)
                CHECK(is_ows(*p));
        }
        if (i > 0)
            CHECK(m->key.ptr > b->members[i - 1].value.ptr);
    }
    if (b->dropped == 0) {
        /* Exactly the reference's members. */
        CHECK(b->n == ref.valid);
        CHECK(b->malformed >= ref.malformed && b->malformed <= ref.malformed + ref.empty);
        for (uint32_t i = 0; i < b->n; i++) {
            CHECK(same_slice(b->members[i].key, ref.m[i].key));
            CHECK(same_slice(b->members[i].value, ref.m[i].value));
            CHECK(str_eq(trim(b->members[i].properties), trim(ref.m[i].props)));
        }
    } else {
        /* Past a limit: some of the reference's members, in order; all of
         * the first 64 when the bytes cannot have been the limit. */
        size_t j = 0;
        for (uint32_t i = 0; i < b->n; i++) {
            while (j < ref.valid && !same_slice(ref.m[j].key, b->members[i].key))
                j++;
            CHECK(j < ref.valid && same_slice(ref.m[j].value, b->members[i].value));
            j++;
        }
        if (size <= FG_BAGGAGE_MAX_BYTES) {
            CHECK(b->n == FG_BAGGAGE_MAX_MEMBERS);
            for (uint32_t i = 0; i < b->n; i++)
                CHECK(same_slice(b->members[i].key, ref.m[i].key));
        }
    }
    free(ref.m);

    /* Every key, and one the input lacks. */
    for (uint32_t i = 0; i < b->n; i++)
        check_get(b, NULL, b->members[i].key.ptr, b->members[i].key.len);
    check_get(b, NULL, ABSENT, sizeof(ABSENT) - 1);

    /* Lookups straight from a ctx's header. */
    fg_ctx ctx;
    CHECK(fg_ctx_init(&ctx, "GET", "/") == 0);
    int hrc = fg_ctx_add_header_n(&ctx, "baggage", 7, in, size);
    CHECK(hrc == 0 || (hrc == FG_ETOOLONG && size > FG_HEADER_VALUE_MAX));
    if (hrc == 0) {
        /* The same limits apply (lib/baggage.c feeds both from one
         * scanner): a member dropped from b is not found here either. */
        check_ctx_gets(b, &ctx);
        check_get(b, &ctx, ABSENT, sizeof(ABSENT) - 1);
    }

    char *out = malloc(FG_BAGGAGE_MAX_BYTES + 1);
    fg_baggage *again = malloc(sizeof(*again));
    CHECK(out != NULL && again != NULL);
    check_format(b, out, again);
    free(again);
    free(out);

    check_set(b, in, size < RAW_MAX ? size : RAW_MAX);
    free(b);
}

/* The first byte splits the rest into two "baggage" headers (with another
 * header between them, which must be ignored); the result must be
 * fg_baggage_parse's for the two joined by ',' (HTTP's list rule). An
 * empty member may or may not count as malformed, so the malformed count
 * may differ by the empty members of the joined value. */
static void check_parse_ctx(const char *in, size_t size) {
    if (size == 0)
        return;
    size_t rest = size - 1, cut = (unsigned char)in[0] % size;
    const char *h1 = in + 1, *h2 = in + 1 + cut;
    size_t n1 = cut, n2 = rest - cut;
    if (n1 > FG_HEADER_VALUE_MAX || n2 > FG_HEADER_VALUE_MAX)
        return;
    fg_ctx ctx;
    CHECK(fg_ctx_init(&ctx, "GET", "/") == 0);
    CHECK(fg_ctx_add_header_n(&ctx, "baggage", 7, h1, n1) == 0);
    CHECK(fg_ctx_add_header(&ctx, "tracestate", "a=b") == 0);
    CHECK(fg_ctx_add_header_n(&ctx, "Baggage", 7, h2, n2) == 0);

    char *joined = malloc(size);
    fg_baggage *bc = malloc(sizeof(*bc)), *bj = malloc(sizeof(*bj));
    CHECK(joined != NULL && bc != NULL && bj != NULL);
    memcpy(joined, h1, n1);
    joined[n1] = ',';
    memcpy(joined + n1 + 1, h2, n2);

    memset(bc, 0xa5, sizeof(*bc));
    int rc = fg_baggage_parse_ctx(bc, &ctx);
    int rj = fg_baggage_parse(bj, joined, size);
    check_counts(bc, rc);
    check_counts(bj, rj);
    ref_list ref;
    if (ref_parse(joined, size, &ref) == 0) {
        long diff = (long)bc->malformed - (long)bj->malformed;
        CHECK(diff <= (long)ref.empty && -diff <= (long)ref.empty);
        free(ref.m);
    }
    if (size <= FG_BAGGAGE_MAX_BYTES || (bc->dropped == 0 && bj->dropped == 0)) {
        CHECK(bc->n == bj->n && bc->dropped == bj->dropped);
        for (uint32_t i = 0; i < bc->n; i++) {
            const fg_baggage_member *m = &bc->members[i], *j = &bj->members[i];
            CHECK(str_eq(m->key, j->key) && str_eq(m->value, j->value));
            CHECK(str_eq(trim(m->properties), trim(j->properties)));
            /* Each slice borrows one header's bytes. */
            int in1 =
                inside(m->key, h1, n1) && (m->value.len == 0 || inside(m->value, h1, n1));
            int in2 =
                inside(m->key, h2, n2) && (m->value.len == 0 || inside(m->value, h2, n2));
            CHECK(in1 || in2);
        }
    }
    /* fg_ctx_baggage reads both headers: the last member of a key wins. */
    check_ctx_gets(bc, &ctx);

    fg_ctx none;
    CHECK(fg_ctx_init(&none, "GET", "/") == 0);
    CHECK(fg_baggage_parse_ctx(bc, &none) == 0 && bc->n == 0);
    free(bj);
    free(bc);
    free(joined);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *in = malloc(size ? size : 1);
    if (in == NULL)
        return 0;
    if (size)
        memcpy(in, data, size);
    check_parse(in, size);
    check_parse_ctx(in, size);
    free(in);
    return 0;
}
