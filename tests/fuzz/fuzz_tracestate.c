/*
 * tests/fuzz/fuzz_tracestate.c - libFuzzer target for the tracestate API
 * (`make fuzz`). The input, copied to a heap buffer of its exact size (so
 * ASan sees any read past it), is parsed as one tracestate header value.
 * The result must agree with a small reference parser written here from
 * the recommendation's grammar (accept or refuse, and the same member
 * slices); an accepted list must hold members that lie inside the input,
 * obey the grammar, have distinct keys and number at most 32; it must
 * format to at most FG_TRACESTATE_PROPAGATE characters that parse back to
 * the same members in the same order (a subset, chosen by the truncation
 * rules, when the whole list is longer); fg_tracestate_set of a vendor key
 * must put it first and keep the rest in order. Then the first byte splits
 * the rest into two "tracestate" headers of a ctx: fg_tracestate_parse_ctx
 * must give what fg_tracestate_parse gives for the two joined by ','.
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

/* A vendor's entry, as fg_trace_outgoing would write it. */
static const char vendor_key[] = "fuzz@floodgate";
static const char vendor_value[] = "00f067aa0ba902b7";
#define VENDOR_KEY_LEN   (sizeof(vendor_key) - 1)
#define VENDOR_VALUE_LEN (sizeof(vendor_value) - 1)

/* ---- the grammar, written independently of lib/ --------------------------- */

static int is_ows(char c) { return c == ' ' || c == '\t'; }
static int is_lcalpha(char c) { return c >= 'a' && c <= 'z'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int is_keychar(char c) {
    return is_lcalpha(c) || is_digit(c) || c == '_' || c == '-' || c == '*' || c == '/';
}

/* simple-key = lcalpha 0*255(keychar);
 * multi-tenant-key = (lcalpha / DIGIT) 0*240(keychar) "@" lcalpha 0*13(keychar) */
static int key_ok(const char *k, size_t n) {
    const char *at = n ? memchr(k, '@', n) : NULL;
    if (at == NULL) {
        if (n < 1 || n > 256 || !is_lcalpha(k[0]))
            return 0;
        for (size_t i = 1; i < n; i++)
            if (!is_keychar(k[i]))
                return 0;
        return 1;
    }
    size_t t = (size_t)(at - k), s = n - t - 1;
    if (t < 1 || t > 241 || s < 1 || s > 14)
        return 0;
    if (!is_lcalpha(k[0]) && !is_digit(k[0]))
        return 0;
    for (size_t i = 1; i < t; i++)
        if (!is_keychar(k[i]))
            return 0;
    if (!is_lcalpha(at[1]))
        return 0;
    for (size_t i = 1; i < s; i++)
        if (!is_keychar(at[1 + i]))
            return 0;
    return 1;
}

/* value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr;
 * nblk-chr = %x21-2B / %x2D-3C / %x3E-7E */
static int value_ok(const char *v, size_t n) {
    if (n < 1 || n > 256 || v[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=')
            return 0;
    }
    return 1;
}

static int str_eq(fg_str a, fg_str b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static int str_eq_c(fg_str a, const char *b, size_t n) {
    return a.len == n && (n == 0 || memcmp(a.ptr, b, n) == 0);
}

static int inside(fg_str s, const char *base, size_t size) {
    uintptr_t p = (uintptr_t)s.ptr, b = (uintptr_t)base;
    return s.ptr != NULL && p >= b && s.len <= size && p - b <= size - s.len;
}

/*
 * The reference parser: list = member *(OWS "," OWS member), empty members
 * skipped, member = key "=" value. Returns 1 and the members in ref when
 * the whole value is acceptable (every member well-formed, distinct keys,
 * at most 32), else 0.
 */
static int ref_parse(const char *s, size_t len, fg_tracestate_member *ref, uint32_t *nref) {
    uint32_t n = 0;
    size_t pos = 0;
    for (;;) {
        const char *comma = pos < len ? memchr(s + pos, ',', len - pos) : NULL;
        size_t end = comma ? (size_t)(comma - s) : len, i = pos, e = end;
        while (i < e && is_ows(s[i]))
            i++;
        while (e > i && is_ows(s[e - 1]))
            e--;
        if (i < e) {
            const char *eq = memchr(s + i, '=', e - i);
            if (eq == NULL || n == FG_TRACESTATE_MAX_MEMBERS)
                return 0;
            fg_str k = {s + i, (size_t)(eq - (s + i))};
            fg_str v = {eq + 1, (size_t)((s + e) - (eq + 1))};
            if (!key_ok(k.ptr, k.len) || !value_ok(v.ptr, v.len))
                return 0;
            for (uint32_t j = 0; j < n; j++)
                if (str_eq(ref[j].key, k))
                    return 0;
            ref[n].key = k;
            ref[n].value = v;
            n++;
        }
        if (comma == NULL)
            break;
        pos = end + 1;
    }
    *nref = n;
    return 1;
}

/* ---- checks on a list ------------------------------------------------------- */

/* Every member well-formed, distinct keys, n <= 32. */
static void check_members(const fg_tracestate *ts) {
    CHECK(ts->n <= FG_TRACESTATE_MAX_MEMBERS);
    for (uint32_t i = 0; i < ts->n; i++) {
        const fg_tracestate_member *m = &ts->members[i];
        CHECK(key_ok(m->key.ptr, m->key.len));
        CHECK(value_ok(m->value.ptr, m->value.len));
        for (uint32_t j = 0; j < i; j++)
            CHECK(!str_eq(ts->members[j].key, m->key));
        fg_str v = {NULL, 0};
        CHECK(fg_tracestate_get(ts, m->key.ptr, m->key.len, &v) == 0);
        CHECK(str_eq(v, m->value));
    }
}

static size_t member_len(const fg_tracestate_member *m) {
    return m->key.len + 1 + m->value.len;
}

/*
 * Format ts; the value must be at most FG_TRACESTATE_PROPAGATE characters
 * and parse back to a subset of ts's members in their order: all of them
 * when the whole list fits, else as the truncation rule says (members
 * longer than FG_TRACESTATE_LARGE go first, then members from the right).
 * Returns the re-parsed list in *again (it borrows *out).
 */
static void check_format(const fg_tracestate *ts, char out[FG_TRACESTATE_PROPAGATE + 1],
                         fg_tracestate *again) {
    size_t len = (size_t)-1;
    CHECK(fg_tracestate_format(ts, out, FG_TRACESTATE_PROPAGATE + 1, &len) == 0);
    CHECK(len <= FG_TRACESTATE_PROPAGATE);
    CHECK(strlen(out) == len);
    CHECK(fg_tracestate_parse(again, out, len) == 0);
    check_members(again);

    /* The same members, in order: a subsequence of ts. */
    int kept[FG_TRACESTATE_MAX_MEMBERS] = {0};
    uint32_t j = 0;
    for (uint32_t i = 0; i < again->n; i++) {
        while (j < ts->n && !str_eq(ts->members[j].key, again->members[i].key))
            j++;
        CHECK(j < ts->n);
        CHECK(str_eq(ts->members[j].value, again->members[i].value));
        kept[j++] = 1;
    }

    size_t full = 0;
    for (uint32_t i = 0; i < ts->n; i++)
        full += member_len(&ts->members[i]) + (i > 0);
    if (full <= FG_TRACESTATE_PROPAGATE) {
        CHECK(again->n == ts->n);
    } else {
        /* When a member of at most FG_TRACESTATE_LARGE characters was left
         * out, every longer one was too, the kept short ones are the first
         * short ones, and the next short one would not have fitted. */
        size_t kept_len = 0;
        int short_dropped = 0;
        for (uint32_t i = 0; i < ts->n; i++) {
            size_t ml = member_len(&ts->members[i]);
            if (kept[i]) {
                kept_len += ml + (kept_len > 0);
                CHECK(!short_dropped);
            } else if (ml <= FG_TRACESTATE_LARGE && !short_dropped) {
                short_dropped = 1;
                CHECK(kept_len + ml + (kept_len > 0) > FG_TRACESTATE_PROPAGATE);
            }
        }
        if (short_dropped)
            for (uint32_t i = 0; i < ts->n; i++)
                if (kept[i])
                    CHECK(member_len(&ts->members[i]) <= FG_TRACESTATE_LARGE);
    }

    /* One byte short: FG_ETOOLONG and "" (nothing when cap is 0). */
    char small[FG_TRACESTATE_PROPAGATE + 1];
    small[0] = 'x';
    CHECK(fg_tracestate_format(ts, small, len, NULL) == FG_ETOOLONG);
    CHECK(len == 0 ? small[0] == 'x' : small[0] == '\0');
}

/* fg_tracestate_set of the vendor key, as a vendor does before propagating:
 * it goes first, any older entry goes, the rest keep their order, and a
 * 33rd member falls off the right. Then remove it again. */
static void check_set(const fg_tracestate *ts) {
    fg_tracestate t = *ts;
    CHECK(fg_tracestate_set(&t, vendor_key, VENDOR_KEY_LEN, vendor_value, VENDOR_VALUE_LEN) ==
          0);
    uint32_t n = 1;
    for (uint32_t i = 0; i < ts->n && n < FG_TRACESTATE_MAX_MEMBERS; i++) {
        if (str_eq_c(ts->members[i].key, vendor_key, VENDOR_KEY_LEN))
            continue;
        CHECK(n < t.n);
        CHECK(str_eq(t.members[n].key, ts->members[i].key));
        CHECK(str_eq(t.members[n].value, ts->members[i].value));
        n++;
    }
    CHECK(t.n == n);
    CHECK(str_eq_c(t.members[0].key, vendor_key, VENDOR_KEY_LEN));
    CHECK(str_eq_c(t.members[0].value, vendor_value, VENDOR_VALUE_LEN));
    check_members(&t);

    char out[FG_TRACESTATE_PROPAGATE + 1];
    fg_tracestate again;
    check_format(&t, out, &again);
    CHECK(again.n >= 1);
    CHECK(str_eq_c(again.members[0].key, vendor_key, VENDOR_KEY_LEN));
    CHECK(str_eq_c(again.members[0].value, vendor_value, VENDOR_VALUE_LEN));

    /* Updating the last member moves it to the front, the count unchanged. */
    if (ts->n > 0) {
        fg_tracestate u = *ts;
        fg_str last = ts->members[ts->n - 1].key;
        CHECK(fg_tracestate_set(&u, last.ptr, last.len, "v", 1) == 0);
        CHECK(u.n == ts->n);
        CHECK(str_eq(u.members[0].key, last));
        CHECK(str_eq_c(u.members[0].value, "v", 1));
        for (uint32_t i = 0; i + 1 < ts->n; i++)
            CHECK(str_eq(u.members[i + 1].key, ts->members[i].key));
    }

    /* A bad key or value changes nothing. */
    fg_tracestate bad = *ts;
    CHECK(fg_tracestate_set(&bad, "Vendor", 6, "v", 1) == FG_EINVAL);
    CHECK(fg_tracestate_set(&bad, "vendor", 6, "v ", 2) == FG_EINVAL);
    CHECK(fg_tracestate_set(&bad, "vendor", 6, "a=b", 3) == FG_EINVAL);
    CHECK(bad.n == ts->n);
    for (uint32_t i = 0; i < ts->n; i++)
        CHECK(str_eq(bad.members[i].key, ts->members[i].key) &&
              str_eq(bad.members[i].value, ts->members[i].value));

    CHECK(fg_tracestate_remove(&t, vendor_key, VENDOR_KEY_LEN) == 0);
    CHECK(t.n == n - 1);
    fg_str v;
    CHECK(fg_tracestate_get(&t, vendor_key, VENDOR_KEY_LEN, &v) == FG_ENOTFOUND);
    CHECK(fg_tracestate_remove(&t, vendor_key, VENDOR_KEY_LEN) == FG_ENOTFOUND);
}

/* ---- the two entry points --------------------------------------------------- */

static void check_parse(const char *in, size_t size) {
    fg_tracestate ts, ref;
    memset(&ts, 0xa5, sizeof(ts)); /* parse must not depend on what ts held */
    int rc = fg_tracestate_parse(&ts, in, size);
    CHECK(rc == 0 || rc == FG_EPARSE);
    int ref_ok = ref_parse(in, size, ref.members, &ref.n);
    CHECK((rc == 0) == ref_ok);
    if (rc != 0) {
        CHECK(ts.n == 0);
        return;
    }
    check_members(&ts);
    CHECK(ts.n == ref.n);
    for (uint32_t i = 0; i < ts.n; i++) {
        const fg_tracestate_member *m = &ts.members[i];
        CHECK(inside(m->key, in, size) && inside(m->value, in, size));
        CHECK(m->key.ptr == ref.members[i].key.ptr && m->key.len == ref.members[i].key.len);
        CHECK(m->value.ptr == ref.members[i].value.ptr &&
              m->value.len == ref.members[i].value.len);
    }
    char out[FG_TRACESTATE_PROPAGATE + 1];
    fg_tracestate again;
    check_format(&ts, out, &again);
    check_set(&ts);
}

/* The first byte splits the rest into two "tracestate" headers (with a
 * traceparent between them, which must be ignored); the result must be
 * fg_tracestate_parse's for the two joined by ',' (HTTP's list rule). */
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
    CHECK(fg_ctx_add_header_n(&ctx, "tracestate", 10, h1, n1) == 0);
    CHECK(fg_ctx_add_header(&ctx, "traceparent",
                            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == 0);
    CHECK(fg_ctx_add_header_n(&ctx, "TraceState", 10, h2, n2) == 0);

    char *joined = malloc(size);
    if (joined == NULL)
        return;
    memcpy(joined, h1, n1);
    joined[n1] = ',';
    memcpy(joined + n1 + 1, h2, n2);

    fg_tracestate tc, tj;
    memset(&tc, 0xa5, sizeof(tc));
    int rc = fg_tracestate_parse_ctx(&tc, &ctx);
    int rj = fg_tracestate_parse(&tj, joined, size);
    CHECK(rc == rj);
    CHECK(tc.n == tj.n);
    for (uint32_t i = 0; i < tc.n; i++) {
        const fg_tracestate_member *m = &tc.members[i];
        CHECK(str_eq(m->key, tj.members[i].key) && str_eq(m->value, tj.members[i].value));
        /* Each slice borrows one header's bytes. */
        CHECK((inside(m->key, h1, n1) && inside(m->value, h1, n1)) ||
              (inside(m->key, h2, n2) && inside(m->value, h2, n2)));
    }
    free(joined);

    /* No header at all: an empty list. */
    fg_ctx none;
    CHECK(fg_ctx_init(&none, "GET", "/") == 0);
    CHECK(fg_tracestate_parse_ctx(&tc, &none) == 0 && tc.n == 0);
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
