/*
 * lib/baggage.c - the W3C baggage header: parse, look up (percent-decoded),
 * update, format (percent-encoded).
 *
 * One scanner walks a header value member by member and hands each valid
 * member to an accumulator, which either stores it (fg_baggage_parse) or
 * only remembers the last one with a wanted key (fg_ctx_baggage, which
 * needs no 3.6 KiB list on the stack). Both apply the same limits, so a
 * lookup straight from the ctx agrees with a parsed list. No allocation.
 */
#include <string.h>

#include "floodgate/error.h"
#include "floodgate/trace.h"

#include "internal.h"

static int fg_bg_ows(char c) { return c == ' ' || c == '\t'; }

/* baggage-octet: printable US-ASCII except '"' ',' ';' '\\' and space. */
static int fg_bg_octet(unsigned char c) {
    return c >= 0x21 && c <= 0x7e && c != '"' && c != ',' && c != ';' && c != '\\';
}

static int fg_bg_octets(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!fg_bg_octet((unsigned char)s[i]))
            return 0;
    return 1;
}

/* Trim OWS from both ends of s[*a, *b). */
static void fg_bg_trim(const char *s, size_t *a, size_t *b) {
    while (*a < *b && fg_bg_ows(s[*a]))
        (*a)++;
    while (*b > *a && fg_bg_ows(s[*b - 1]))
        (*b)--;
}

/* key OWS "=" OWS value, or (properties only) key OWS: fills key and value.
 * Returns 1 when s[a, b) (already trimmed) is one, else 0. */
static int fg_bg_pair(const char *s, size_t a, size_t b, int value_optional, fg_str *key,
                      fg_str *value) {
    const char *eq = memchr(s + a, '=', b - a);
    size_t ke = eq ? (size_t)(eq - s) : b;
    size_t ka = a;
    fg_bg_trim(s, &ka, &ke);
    if (ka == ke || !fg__is_token(s + ka, ke - ka))
        return 0;
    *key = (fg_str){s + ka, ke - ka};
    *value = (fg_str){s + b, 0};
    if (eq == NULL)
        return value_optional;
    size_t va = (size_t)(eq - s) + 1, ve = b;
    fg_bg_trim(s, &va, &ve);
    if (!fg_bg_octets(s + va, ve - va))
        return 0;
    *value = (fg_str){s + va, ve - va};
    return 1;
}

/* One list-member s[a, b) (trimmed, not empty) -> m. Returns 1 or 0. */
static int fg_bg_member(const char *s, size_t a, size_t b, fg_baggage_member *m) {
    const char *semi = memchr(s + a, ';', b - a);
    size_t me = semi ? (size_t)(semi - s) : b;
    size_t ma = a;
    fg_bg_trim(s, &ma, &me);
    if (!fg_bg_pair(s, ma, me, 0, &m->key, &m->value))
        return 0;
    m->properties = (fg_str){s + b, 0};
    m->plain = 0;
    if (semi == NULL)
        return 1;
    /* Properties: each ';'-separated one is key or key=value. */
    size_t pa = (size_t)(semi - s) + 1, pe = b;
    fg_bg_trim(s, &pa, &pe);
    m->properties = (fg_str){s + pa, pe - pa};
    size_t pos = pa;
    for (;;) {
        const char *next = pe > pos ? memchr(s + pos, ';', pe - pos) : NULL;
        size_t end = next ? (size_t)(next - s) : pe;
        size_t x = pos, y = end;
        fg_bg_trim(s, &x, &y);
        fg_str k, v;
        if (x == y || !fg_bg_pair(s, x, y, 1, &k, &v))
            return 0;
        if (next == NULL)
            return 1;
        pos = end + 1;
    }
}

/* What the scanner feeds: the limits' running totals and either a list to
 * fill or a key to look for. */
struct fg_bg_acc {
    fg_baggage *list; /* store members here, or */
    const char *want; /* remember the last member with this key */
    size_t want_len;
    fg_baggage_member found;
    int have;
    uint32_t n;   /* members kept */
    size_t bytes; /* their text, with separating commas */
    uint32_t malformed;
    uint32_t dropped;
};

static void fg_bg_feed(struct fg_bg_acc *acc, const char *s, size_t len) {
    size_t pos = 0;
    for (;;) {
        const char *comma = len > pos ? memchr(s + pos, ',', len - pos) : NULL;
        size_t end = comma ? (size_t)(comma - s) : len;
        size_t a = pos, b = end;
        fg_bg_trim(s, &a, &b);
        if (a < b) {
            fg_baggage_member m;
            size_t cost = (b - a) + (acc->n > 0);
            if (!fg_bg_member(s, a, b, &m)) {
                acc->malformed++;
            } else if (acc->n == FG_BAGGAGE_MAX_MEMBERS ||
                       acc->bytes + cost > FG_BAGGAGE_MAX_BYTES) {
                acc->dropped++;
            } else {
                if (acc->list != NULL)
                    acc->list->members[acc->n] = m;
                else if (m.key.len == acc->want_len &&
                         memcmp(m.key.ptr, acc->want, acc->want_len) == 0) {
                    acc->found = m;
                    acc->have = 1;
                }
                acc->n++;
                acc->bytes += cost;
            }
        }
        if (comma == NULL)
            return;
        pos = end + 1;
    }
}

static int fg_bg_finish(fg_baggage *b, const struct fg_bg_acc *acc) {
    b->n = acc->n;
    b->malformed = acc->malformed;
    b->dropped = acc->dropped;
    return acc->malformed ? FG_EPARSE : acc->dropped ? FG_ETOOMANY : 0;
}

int fg_baggage_parse(fg_baggage *b, const char *s, size_t len) {
    if (b == NULL || (s == NULL && len > 0))
        return FG_EINVAL;
    struct fg_bg_acc acc = {.list = b};
    fg_bg_feed(&acc, s, len);
    return fg_bg_finish(b, &acc);
}

/* Feed every "baggage" header of ctx, in order. */
static void fg_bg_feed_ctx(struct fg_bg_acc *acc, const fg_ctx *ctx) {
    uint32_t n = ctx->nheaders <= FG_CTX_MAX_HEADERS ? ctx->nheaders : FG_CTX_MAX_HEADERS;
    for (uint32_t i = 0; i < n; i++) {
        const fg_header *h = &ctx->headers[i];
        if (fg__name_equal(&h->name, "baggage", 7))
            fg_bg_feed(acc, h->value.ptr, h->value.len);
    }
}

int fg_baggage_parse_ctx(fg_baggage *b, const fg_ctx *ctx) {
    if (b == NULL || ctx == NULL)
        return FG_EINVAL;
    struct fg_bg_acc acc = {.list = b};
    fg_bg_feed_ctx(&acc, ctx);
    return fg_bg_finish(b, &acc);
}

static int fg_bg_hex(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20; /* either case */
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Copy m's value, decoded unless plain, and a NUL into buf. */
static int fg_bg_decode(const fg_baggage_member *m, char *buf, size_t cap, size_t *len) {
    const char *v = m->value.ptr;
    size_t n = m->value.len, o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        int hi, lo;
        if (!m->plain && c == '%' && i + 2 < n &&
            (hi = fg_bg_hex((unsigned char)v[i + 1])) >= 0 &&
            (lo = fg_bg_hex((unsigned char)v[i + 2])) >= 0) {
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        }
        if (o + 1 >= cap) {
            if (cap > 0)
                buf[0] = '\0';
            return FG_ETOOLONG;
        }
        buf[o++] = (char)c;
    }
    if (cap == 0)
        return FG_ETOOLONG;
    buf[o] = '\0';
    if (len != NULL)
        *len = o;
    return 0;
}

static int fg_bg_last(const fg_baggage *b, const char *key, size_t key_len) {
    for (uint32_t i = b->n; i-- > 0;)
        if (b->members[i].key.len == key_len &&
            memcmp(b->members[i].key.ptr, key, key_len) == 0)
            return (int)i;
    return -1;
}

int fg_baggage_get(const fg_baggage *b, const char *key, size_t key_len, char *buf, size_t cap,
                   size_t *len) {
    if (len != NULL)
        *len = 0;
    if (b == NULL || key == NULL || buf == NULL || b->n > FG_BAGGAGE_MAX_MEMBERS)
        return FG_EINVAL;
    int i = fg_bg_last(b, key, key_len);
    if (i < 0) {
        if (cap > 0)
            buf[0] = '\0';
        return FG_ENOTFOUND;
    }
    return fg_bg_decode(&b->members[i], buf, cap, len);
}

int fg_ctx_baggage(const fg_ctx *ctx, const char *key, size_t key_len, char *buf, size_t cap,
                   size_t *len) {
    if (len != NULL)
        *len = 0;
    if (ctx == NULL || key == NULL || buf == NULL)
        return FG_EINVAL;
    struct fg_bg_acc acc = {.want = key, .want_len = key_len};
    fg_bg_feed_ctx(&acc, ctx);
    if (!acc.have) {
        if (cap > 0)
            buf[0] = '\0';
        return FG_ENOTFOUND;
    }
    return fg_bg_decode(&acc.found, buf, cap, len);
}

int fg_baggage_set(fg_baggage *b, const char *key, size_t key_len, const char *value,
                   size_t value_len) {
    if (b == NULL || key == NULL || (value == NULL && value_len > 0) || key_len == 0 ||
        !fg__is_token(key, key_len) || b->n > FG_BAGGAGE_MAX_MEMBERS)
        return FG_EINVAL;
    uint32_t same = 0;
    for (uint32_t i = 0; i < b->n; i++)
        same += b->members[i].key.len == key_len &&
                memcmp(b->members[i].key.ptr, key, key_len) == 0;
    if (b->n - same >= FG_BAGGAGE_MAX_MEMBERS)
        return FG_ETOOMANY;
    if (same > 0)
        (void)fg_baggage_remove(b, key, key_len);
    b->members[b->n] =
        (fg_baggage_member){{key, key_len}, {value ? value : "", value_len}, {"", 0}, 1};
    b->n++;
    return 0;
}

int fg_baggage_remove(fg_baggage *b, const char *key, size_t key_len) {
    if (b == NULL || key == NULL || b->n > FG_BAGGAGE_MAX_MEMBERS)
        return FG_EINVAL;
    uint32_t w = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        const fg_baggage_member *m = &b->members[i];
        if (m->key.len == key_len && memcmp(m->key.ptr, key, key_len) == 0)
            continue;
        b->members[w++] = *m;
    }
    if (w == b->n)
        return FG_ENOTFOUND;
    b->n = w;
    return 0;
}

/* Bytes m takes when formatted (without a separating comma). */
static size_t fg_bg_encoded_len(const fg_baggage_member *m) {
    size_t n = m->key.len + 1 + m->value.len;
    if (m->plain)
        for (size_t i = 0; i < m->value.len; i++) {
            unsigned char c = (unsigned char)m->value.ptr[i];
            if (!fg_bg_octet(c) || c == '%')
                n += 2;
        }
    if (m->properties.len > 0)
        n += 1 + m->properties.len;
    return n;
}

static char *fg_bg_write(const fg_baggage_member *m, char *p) {
    static const char digits[] = "0123456789ABCDEF";
    memcpy(p, m->key.ptr, m->key.len);
    p += m->key.len;
    *p++ = '=';
    for (size_t i = 0; i < m->value.len; i++) {
        unsigned char c = (unsigned char)m->value.ptr[i];
        if (m->plain && (!fg_bg_octet(c) || c == '%')) {
            *p++ = '%';
            *p++ = digits[c >> 4];
            *p++ = digits[c & 15];
        } else {
            *p++ = (char)c;
        }
    }
    if (m->properties.len > 0) {
        *p++ = ';';
        memcpy(p, m->properties.ptr, m->properties.len);
        p += m->properties.len;
    }
    return p;
}

int fg_baggage_format(const fg_baggage *b, char *buf, size_t cap, size_t *len) {
    if (len != NULL)
        *len = 0;
    if (b == NULL || buf == NULL || b->n > FG_BAGGAGE_MAX_MEMBERS)
        return FG_EINVAL;
    /* The members that fit FG_BAGGAGE_MAX_BYTES, from the left. */
    size_t need = 0;
    uint32_t n = 0;
    for (; n < b->n; n++) {
        size_t m = fg_bg_encoded_len(&b->members[n]) + (n > 0);
        if (need + m > FG_BAGGAGE_MAX_BYTES)
            break;
        need += m;
    }
    if (need + 1 > cap) {
        if (cap > 0)
            buf[0] = '\0';
        return FG_ETOOLONG;
    }
    char *p = buf;
    for (uint32_t i = 0; i < n; i++) {
        if (i > 0)
            *p++ = ',';
        p = fg_bg_write(&b->members[i], p);
    }
    *p = '\0';
    if (len != NULL)
        *len = (size_t)(p - buf);
    return 0;
}
