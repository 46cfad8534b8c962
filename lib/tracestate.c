/*
 * lib/tracestate.c - the W3C tracestate header: parse, look up, update,
 * format with the recommendation's truncation.
 *
 * A list is a fixed array of borrowed (key, value) slices, so parsing is one
 * bounded pass over the bytes with no allocation. Members are validated as
 * they are found; the first bad one, a duplicate key or a 33rd member
 * discards the whole list (a tracestate that cannot be trusted is not
 * propagated), while the traceparent it came with stays valid.
 */
#include <string.h>

#include "floodgate/error.h"
#include "floodgate/trace.h"

#include "internal.h"

#define FG_TS_TENANT_MAX 241
#define FG_TS_SYSTEM_MAX 14

static int fg_ts_ows(char c) { return c == ' ' || c == '\t'; }
static int fg_ts_lcalpha(unsigned char c) { return c >= 'a' && c <= 'z'; }
static int fg_ts_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* Character classes, one table lookup per byte: bit 1 a key character
 * after the first (lcalpha / DIGIT / "_" / "-" / "*" / "/"), bit 2 a value
 * character (chr: 0x20-0x7e except ',' and '='). */
enum { FG_TS_KEY = 1, FG_TS_VAL = 2 };
/* Generated from the two definitions above, in byte order. */
static const uint8_t fg_ts_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 0, 3, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    2, 2, 2, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

static int fg_ts_all(const char *s, size_t n, uint8_t cls) {
    uint8_t all = cls;
    for (size_t i = 0; i < n; i++)
        all &= fg_ts_class[(unsigned char)s[i]];
    return all == cls;
}

static int fg_ts_keychars(const char *s, size_t n) { return fg_ts_all(s, n, FG_TS_KEY); }

/* simple-key / tenant-id "@" system-id, with their lengths. */
int fg__tracestate_key_valid(const char *k, size_t n) {
    if (n == 0 || n > FG_TRACESTATE_KEY_MAX)
        return 0;
    const char *at = memchr(k, '@', n);
    if (at == NULL)
        return fg_ts_lcalpha((unsigned char)k[0]) && fg_ts_keychars(k + 1, n - 1);
    size_t tn = (size_t)(at - k), sn = n - tn - 1;
    if (tn == 0 || tn > FG_TS_TENANT_MAX || sn == 0 || sn > FG_TS_SYSTEM_MAX)
        return 0;
    unsigned char t0 = (unsigned char)k[0];
    return (fg_ts_lcalpha(t0) || fg_ts_digit(t0)) && fg_ts_keychars(k + 1, tn - 1) &&
           fg_ts_lcalpha((unsigned char)at[1]) && fg_ts_keychars(at + 2, sn - 1);
}

/* 0*255(chr) nblk-chr: chr is 0x20-0x7e except ',' and '='; the last one is
 * not a space. */
static int fg_ts_value_valid(const char *v, size_t n) {
    if (n == 0 || n > FG_TRACESTATE_VALUE_MAX || v[n - 1] == ' ')
        return 0;
    return fg_ts_all(v, n, FG_TS_VAL);
}

static int fg_ts_find(const fg_tracestate *ts, const char *key, size_t key_len) {
    for (uint32_t i = 0; i < ts->n; i++)
        if (ts->members[i].key.len == key_len &&
            memcmp(ts->members[i].key.ptr, key, key_len) == 0)
            return (int)i;
    return -1;
}

/* Append the members of one header value; 0 or FG_EPARSE. */
static int fg_ts_append(fg_tracestate *ts, const char *s, size_t len) {
    size_t pos = 0;
    for (;;) {
        const char *comma = len > pos ? memchr(s + pos, ',', len - pos) : NULL;
        size_t end = comma ? (size_t)(comma - s) : len;
        size_t a = pos, b = end;
        while (a < b && fg_ts_ows(s[a]))
            a++;
        while (b > a && fg_ts_ows(s[b - 1]))
            b--;
        if (a < b) { /* empty and whitespace-only members are allowed */
            const char *eq = memchr(s + a, '=', b - a);
            if (eq == NULL)
                return FG_EPARSE;
            size_t klen = (size_t)(eq - (s + a));
            size_t vlen = b - a - klen - 1;
            if (!fg__tracestate_key_valid(s + a, klen) || !fg_ts_value_valid(eq + 1, vlen))
                return FG_EPARSE;
            if (ts->n == FG_TRACESTATE_MAX_MEMBERS)
                return FG_EPARSE; /* duplicates are found once all headers are in */
            ts->members[ts->n].key = (fg_str){s + a, klen};
            ts->members[ts->n].value = (fg_str){eq + 1, vlen};
            ts->n++;
        }
        if (comma == NULL)
            return 0;
        pos = end + 1;
    }
}

/* Whether two members share a key: hash every key once (FNV-1a), compare
 * hashes pairwise, and bytes only when hashes are equal, so 32 members cost
 * 496 integer compares rather than 496 memcmp calls. */
static int fg_ts_has_duplicates(const fg_tracestate *ts) {
    uint32_t h[FG_TRACESTATE_MAX_MEMBERS];
    for (uint32_t i = 0; i < ts->n; i++) {
        uint32_t x = 2166136261u;
        const fg_str *k = &ts->members[i].key;
        for (size_t j = 0; j < k->len; j++)
            x = (x ^ (unsigned char)k->ptr[j]) * 16777619u;
        h[i] = x;
        for (uint32_t p = 0; p < i; p++)
            if (h[p] == x && ts->members[p].key.len == k->len &&
                memcmp(ts->members[p].key.ptr, k->ptr, k->len) == 0)
                return 1;
    }
    return 0;
}

int fg_tracestate_parse(fg_tracestate *ts, const char *s, size_t len) {
    if (ts == NULL || (s == NULL && len > 0))
        return FG_EINVAL;
    ts->n = 0;
    int rc = fg_ts_append(ts, s, len);
    if (rc == 0 && fg_ts_has_duplicates(ts))
        rc = FG_EPARSE;
    if (rc != 0)
        ts->n = 0;
    return rc;
}

int fg_tracestate_parse_ctx(fg_tracestate *ts, const fg_ctx *ctx) {
    if (ts == NULL || ctx == NULL)
        return FG_EINVAL;
    ts->n = 0;
    uint32_t n = ctx->nheaders <= FG_CTX_MAX_HEADERS ? ctx->nheaders : FG_CTX_MAX_HEADERS;
    for (uint32_t i = 0; i < n; i++) {
        const fg_header *h = &ctx->headers[i];
        if (!fg__name_equal(&h->name, "tracestate", 10))
            continue;
        /* Several lines of one list header mean the same as one line joined
         * with commas: appending member by member is exactly that. */
        int rc = fg_ts_append(ts, h->value.ptr, h->value.len);
        if (rc != 0) {
            ts->n = 0;
            return rc;
        }
    }
    if (fg_ts_has_duplicates(ts)) {
        ts->n = 0;
        return FG_EPARSE;
    }
    return 0;
}

int fg_tracestate_get(const fg_tracestate *ts, const char *key, size_t key_len,
                      fg_str *value) {
    if (value != NULL)
        *value = (fg_str){NULL, 0};
    if (ts == NULL || key == NULL || value == NULL)
        return FG_EINVAL;
    int i = fg_ts_find(ts, key, key_len);
    if (i < 0)
        return FG_ENOTFOUND;
    *value = ts->members[i].value;
    return 0;
}

static void fg_ts_delete(fg_tracestate *ts, uint32_t i) {
    memmove(&ts->members[i], &ts->members[i + 1], (ts->n - i - 1) * sizeof(ts->members[0]));
    ts->n--;
}

int fg_tracestate_set(fg_tracestate *ts, const char *key, size_t key_len, const char *value,
                      size_t value_len) {
    if (ts == NULL || key == NULL || value == NULL || ts->n > FG_TRACESTATE_MAX_MEMBERS ||
        !fg__tracestate_key_valid(key, key_len) || !fg_ts_value_valid(value, value_len))
        return FG_EINVAL;
    int old = fg_ts_find(ts, key, key_len);
    if (old >= 0)
        fg_ts_delete(ts, (uint32_t)old);
    else if (ts->n == FG_TRACESTATE_MAX_MEMBERS)
        ts->n--; /* the rightmost member makes room */
    memmove(&ts->members[1], &ts->members[0], ts->n * sizeof(ts->members[0]));
    ts->members[0].key = (fg_str){key, key_len};
    ts->members[0].value = (fg_str){value, value_len};
    ts->n++;
    return 0;
}

int fg_tracestate_remove(fg_tracestate *ts, const char *key, size_t key_len) {
    if (ts == NULL || key == NULL || ts->n > FG_TRACESTATE_MAX_MEMBERS)
        return FG_EINVAL;
    int i = fg_ts_find(ts, key, key_len);
    if (i < 0)
        return FG_ENOTFOUND;
    fg_ts_delete(ts, (uint32_t)i);
    return 0;
}

int fg_tracestate_format(const fg_tracestate *ts, char *buf, size_t cap, size_t *len) {
    if (len != NULL)
        *len = 0;
    if (ts == NULL || buf == NULL || ts->n > FG_TRACESTATE_MAX_MEMBERS)
        return FG_EINVAL;
    /* Which members to keep: the whole list when it fits the propagation
     * limit; else, as the recommendation orders, drop every large member
     * first, then members from the right until it fits. Lengths count the
     * commas between members. */
    uint8_t keep[FG_TRACESTATE_MAX_MEMBERS];
    size_t total = 0, kept = 0;
    for (uint32_t i = 0; i < ts->n; i++) {
        keep[i] = 1;
        total += ts->members[i].key.len + 1 + ts->members[i].value.len;
        kept++;
    }
#define FG_TS_LENGTH() (total + (kept > 0 ? kept - 1 : 0))
    for (int pass = 0; pass < 2 && FG_TS_LENGTH() > FG_TRACESTATE_PROPAGATE; pass++) {
        for (uint32_t i = ts->n;
             i-- > 0 && (pass == 0 || FG_TS_LENGTH() > FG_TRACESTATE_PROPAGATE);) {
            size_t m = ts->members[i].key.len + 1 + ts->members[i].value.len;
            if (keep[i] && (pass == 1 || m > FG_TRACESTATE_LARGE)) {
                keep[i] = 0;
                total -= m;
                kept--;
            }
        }
    }
    size_t need = FG_TS_LENGTH();
#undef FG_TS_LENGTH
    if (need + 1 > cap) {
        if (cap > 0)
            buf[0] = '\0';
        return FG_ETOOLONG;
    }
    char *p = buf;
    int first = 1;
    for (uint32_t i = 0; i < ts->n; i++) {
        if (!keep[i])
            continue;
        const fg_tracestate_member *m = &ts->members[i];
        if (!first)
            *p++ = ',';
        first = 0;
        memcpy(p, m->key.ptr, m->key.len);
        p += m->key.len;
        *p++ = '=';
        memcpy(p, m->value.ptr, m->value.len);
        p += m->value.len;
    }
    *p = '\0';
    if (len != NULL)
        *len = (size_t)(p - buf);
    return 0;
}
