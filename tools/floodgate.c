/*
 * tools/floodgate.c - the `floodgate` command line.
 *
 *   floodgate check CONFIG...   validate configs; print every error as
 *                               "CONFIG: path: message"; exit 1 on any
 *   floodgate replay [--summary] [--quiet] [--svg FILE] [--metrics FILE] CONFIG
 *                    TRACE.jsonl
 *                               run a traffic trace through a config on a
 *                               virtual clock; one JSON decision per request
 *   floodgate version           print the library version
 *
 * Exit status: 0 success, 1 an invalid config, trace or an SVG that cannot
 * be written, 2 a usage error or a file that cannot be read. docs/cli.md is
 * the manual.
 *
 * Replay reads and validates the whole trace before it runs a single
 * request, so a bad line leaves standard output empty. The trace's strings
 * are copied once into one arena, and requests then borrow them: the replay
 * loop itself allocates nothing per request (names are JSON-escaped once and
 * cached by pointer; output goes through one buffer).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include <floodgate.h>

static void usage(FILE *out) {
    (void)fputs(
        "usage: floodgate check CONFIG...\n"
        "       floodgate replay [--summary] [--quiet] [--svg FILE] [--metrics FILE]\n"
        "                        CONFIG TRACE.jsonl\n"
        "       floodgate version\n"
        "\n"
        "  check    validate each JSON config: syntax (with line and column), every\n"
        "           key, type, value, rule and route; prints each error as\n"
        "           CONFIG: path: message and exits 1 if any config is invalid.\n"
        "           Handler and custom stage names are not checked: they belong\n"
        "           to the program that loads the config.\n"
        "  replay   run a JSONL traffic trace through CONFIG on a virtual clock and\n"
        "           print one JSON decision per request on standard output.\n"
        "           --summary   totals per code, route, target and handler, and every\n"
        "                       breaker transition, on standard error\n"
        "           --quiet     no per-request output\n"
        "           --svg FILE  write a timeline of the replay as SVG\n"
        "           --metrics FILE  write what the replay counted (requests, rejections,\n"
        "                       latency histograms, breaker transitions) in the\n"
        "                       Prometheus text format\n"
        "  version  print the floodgate library version\n",
        out);
}

/* Read a whole file of at most max bytes; NULL with errno on failure. */
static char *read_file(const char *path, size_t max, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
        if (n == cap) {
            if (cap > max) {
                errno = EFBIG;
                free(buf);
                buf = NULL;
                break;
            }
            char *bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    int failed = buf != NULL && ferror(f);
    int saved = errno;
    (void)fclose(f);
    if (failed) {
        free(buf);
        errno = saved ? saved : EIO;
        return NULL;
    }
    *len = n;
    return buf;
}

static void cannot_read(const char *path) {
    /* One thread: strerror is fine here. */
    (void)fprintf(stderr, "%s: cannot read: %s\n", path,
                  strerror(errno)); // NOLINT(concurrency-mt-unsafe)
}

/* ---- replay: the trace ------------------------------------------------------------ */

#define RP_LINE_MAX       65536             /* bytes in one trace line */
#define RP_TRACE_MAX      ((size_t)1 << 34) /* bytes in a trace file */
#define RP_T_MS_MAX       1e12              /* virtual time bound: ~31 years */
#define RP_LATENCY_MS_MAX 1e9               /* a simulated handler's latency */
#define RP_WHY_MAX        384               /* a trace error's message */
#define RP_SVG_BUCKETS    100               /* time intervals of the SVG timeline */
#define RP_CODES          256               /* summary slots: -code in [0, 256) */

static char *rp_u64(char *p, uint64_t v) {
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

/* A millisecond value as the shortest text that reads back the same. The
 * usual case, a whole number of nanoseconds, is written without printf (it
 * reads back the same: both n / 1e6 and strtod round correctly). */
static size_t rp_ms_text(char *buf, size_t cap, double v) {
    uint64_t ns = (uint64_t)(v * 1e6 + 0.5);
    if (cap >= 32 && v >= 0 && v <= RP_T_MS_MAX && (double)ns / 1e6 == v) {
        char *p = rp_u64(buf, ns / FG_NS_PER_MS);
        uint64_t frac = ns % FG_NS_PER_MS;
        if (frac != 0) {
            *p++ = '.';
            for (int k = 5; k >= 0; k--) { /* six digits, then drop trailing zeros */
                p[k] = (char)('0' + frac % 10);
                frac /= 10;
            }
            p += 6;
            while (p[-1] == '0')
                p--;
        }
        *p = '\0';
        return (size_t)(p - buf);
    }
    int n = snprintf(buf, cap, "%.15g", v);
    if (n > 0 && strtod(buf, NULL) != v)
        n = snprintf(buf, cap, "%.17g", v);
    return n > 0 ? (size_t)n : 0;
}

/* A header of a request: offsets into the trace's arena. */
typedef struct rp_header {
    size_t name, name_len, value, value_len;
} rp_header;

/* One request of the trace, validated: everything the replay needs. */
typedef struct rp_request {
    uint64_t t_ns;
    uint64_t latency_ns;
    double t_ms;                               /* as given, echoed in the output */
    size_t method, method_len, path, path_len; /* arena offsets */
    size_t first_header;                       /* into rp_trace.headers */
    uint32_t line;
    uint8_t nheaders;
    uint8_t failed;    /* "status": "error" */
    uint8_t t_integer; /* t_ms was written as an integer */
} rp_request;

/* The whole trace: strings in one arena (NUL-terminated copies), requests
 * and headers in two arrays. Offsets, not pointers, while it grows. */
typedef struct rp_trace {
    char *arena;
    size_t arena_len, arena_cap;
    rp_header *headers;
    size_t nheaders, cap_headers;
    rp_request *reqs;
    size_t nreqs, cap_reqs;
} rp_trace;

/* Make room for need elements of elem bytes in *p (capacity *cap). */
static int rp_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    if (n > SIZE_MAX / elem)
        return FG_ENOMEM;
    void *q = realloc(*p, n * elem);
    if (q == NULL)
        return FG_ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

/* Copy len bytes and a NUL into the arena; *off is where they went. */
static int rp_put(rp_trace *tr, const char *s, size_t len, size_t *off) {
    void *a = tr->arena;
    if (rp_grow(&a, &tr->arena_cap, tr->arena_len + len + 1, 1) != 0)
        return FG_ENOMEM;
    tr->arena = a;
    memcpy(tr->arena + tr->arena_len, s, len);
    tr->arena[tr->arena_len + len] = '\0';
    *off = tr->arena_len;
    tr->arena_len += len + 1;
    return 0;
}

static void rp_trace_free(rp_trace *tr) {
    free(tr->arena);
    free(tr->headers);
    free(tr->reqs);
}

/* A header for the request being parsed: checked on a scratch ctx exactly as
 * the replay will add it, then copied. Returns 0, -1 (why set), FG_ENOMEM. */
static int rp_add_header(rp_trace *tr, fg_ctx *scratch, const char *section, const char *name,
                         const char *value, size_t value_len, char *why) {
    size_t name_len = strlen(name);
    int rc = fg_ctx_add_header_n(scratch, name, name_len, value, value_len);
    if (rc == FG_ETOOMANY) {
        (void)snprintf(why, RP_WHY_MAX,
                       "too many headers: headers, meta and baggage share %d entries",
                       FG_CTX_MAX_HEADERS);
        return -1;
    }
    if (rc != 0) {
        (void)snprintf(why, RP_WHY_MAX, "%s.%.64s: %s", section, name,
                       rc == FG_ETOOLONG
                           ? "name or value too long (name 256, value 8192 bytes)"
                           : "name is not an HTTP token");
        return -1;
    }
    void *h = tr->headers;
    if (rp_grow(&h, &tr->cap_headers, tr->nheaders + 1, sizeof(rp_header)) != 0)
        return FG_ENOMEM;
    tr->headers = h;
    rp_header *e = &tr->headers[tr->nheaders];
    if (rp_put(tr, name, name_len, &e->name) != 0 ||
        rp_put(tr, value, value_len, &e->value) != 0)
        return FG_ENOMEM;
    e->name_len = name_len;
    e->value_len = value_len;
    tr->nheaders++;
    return 0;
}

/* The headers or meta object of a line. */
static int rp_add_headers(rp_trace *tr, fg_ctx *scratch, const char *section, json_t *obj,
                          char *why) {
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        if (!json_is_string(v)) {
            (void)snprintf(why, RP_WHY_MAX, "%s.%.64s: must be a string", section, key);
            return -1;
        }
        int rc = rp_add_header(tr, scratch, section, key, json_string_value(v),
                               json_string_length(v), why);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static const char rp_keys[] = "t_ms, method, path, headers, meta, baggage, status, latency_ms";

/*
 * Validate one line and append its request. prev_ns is the previous line's
 * t_ms in ns (times must not go backwards). Returns 0; -1 with a message in
 * why (RP_WHY_MAX bytes); FG_ENOMEM.
 */
static int rp_parse_line(rp_trace *tr, const char *text, size_t len, uint32_t lineno,
                         uint64_t *prev_ns, double *prev_ms, char *why) {
    json_error_t jerr;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        (void)snprintf(why, RP_WHY_MAX, "%s (column %d)", jerr.text, jerr.column);
        return -1;
    }
    int rc = -1;
    json_t *t = NULL, *method = NULL, *path = NULL, *headers = NULL, *meta = NULL;
    json_t *baggage = NULL, *status = NULL, *latency = NULL;
    if (!json_is_object(doc)) {
        (void)snprintf(why, RP_WHY_MAX, "must be a JSON object");
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(doc, key, v) {
        json_t **slot = strcmp(key, "t_ms") == 0         ? &t
                        : strcmp(key, "method") == 0     ? &method
                        : strcmp(key, "path") == 0       ? &path
                        : strcmp(key, "headers") == 0    ? &headers
                        : strcmp(key, "meta") == 0       ? &meta
                        : strcmp(key, "baggage") == 0    ? &baggage
                        : strcmp(key, "status") == 0     ? &status
                        : strcmp(key, "latency_ms") == 0 ? &latency
                                                         : NULL;
        if (slot == NULL) {
            (void)snprintf(why, RP_WHY_MAX, "%.64s: unknown key (expected one of: %s)", key,
                           rp_keys);
            goto out;
        }
        *slot = v;
    }
    if (t == NULL) {
        (void)snprintf(why, RP_WHY_MAX, "t_ms: required");
        goto out;
    }
    double t_ms = json_number_value(t);
    if (!json_is_number(t) || !(t_ms >= 0 && t_ms <= RP_T_MS_MAX)) {
        (void)snprintf(why, RP_WHY_MAX, "t_ms: must be a number from 0 to 1e12");
        goto out;
    }
    uint64_t t_ns = (uint64_t)(t_ms * 1e6 + 0.5);
    if (tr->nreqs > 0 && t_ns < *prev_ns) {
        char now_text[32], prev_text[32];
        (void)rp_ms_text(now_text, sizeof(now_text), t_ms);
        (void)rp_ms_text(prev_text, sizeof(prev_text), *prev_ms);
        (void)snprintf(why, RP_WHY_MAX, "t_ms: goes backwards (%s after %s)", now_text,
                       prev_text);
        goto out;
    }
    if (path == NULL || !json_is_string(path)) {
        (void)snprintf(why, RP_WHY_MAX, path ? "path: must be a string" : "path: required");
        goto out;
    }
    if (method != NULL && !json_is_string(method)) {
        (void)snprintf(why, RP_WHY_MAX, "method: must be a string");
        goto out;
    }
    double lat_ms = latency ? json_number_value(latency) : 0;
    if (latency != NULL &&
        (!json_is_number(latency) || !(lat_ms >= 0 && lat_ms <= RP_LATENCY_MS_MAX))) {
        (void)snprintf(why, RP_WHY_MAX, "latency_ms: must be a number from 0 to 1e9");
        goto out;
    }
    int failed = 0;
    if (status != NULL) {
        const char *s = json_string_value(status); /* NULL when not a string */
        if (s != NULL && strcmp(s, "error") == 0)
            failed = 1;
        else if (s == NULL || strcmp(s, "ok") != 0) {
            (void)snprintf(why, RP_WHY_MAX, "status: must be \"ok\" or \"error\"");
            goto out;
        }
    }
    if ((headers != NULL && !json_is_object(headers)) ||
        (meta != NULL && !json_is_object(meta))) {
        (void)snprintf(why, RP_WHY_MAX, "%s: must be an object of strings",
                       headers != NULL && !json_is_object(headers) ? "headers" : "meta");
        goto out;
    }
    if (baggage != NULL && !json_is_string(baggage)) {
        (void)snprintf(why, RP_WHY_MAX, "baggage: must be a string");
        goto out;
    }

    const char *m = method ? json_string_value(method) : "GET";
    size_t mlen = method ? json_string_length(method) : 3;
    const char *p = json_string_value(path);
    size_t plen = json_string_length(path);
    fg_ctx scratch;
    int crc = fg_ctx_init_n(&scratch, m, mlen, p, plen);
    if (crc != 0) {
        (void)snprintf(why, RP_WHY_MAX, "%s",
                       mlen > FG_METHOD_MAX ? "method: longer than 32 bytes"
                       : plen > FG_PATH_MAX ? "path: longer than 8192 bytes"
                                            : "method: not an HTTP token");
        goto out;
    }
    void *reqs = tr->reqs;
    if (rp_grow(&reqs, &tr->cap_reqs, tr->nreqs + 1, sizeof(rp_request)) != 0) {
        rc = FG_ENOMEM;
        goto out;
    }
    tr->reqs = reqs;
    rp_request r = {0};
    r.t_ns = t_ns;
    r.latency_ns = (uint64_t)(lat_ms * 1e6 + 0.5);
    r.t_ms = t_ms;
    r.t_integer = (uint8_t)json_is_integer(t);
    r.line = lineno;
    r.failed = (uint8_t)failed;
    r.first_header = tr->nheaders;
    r.method_len = mlen;
    r.path_len = plen;
    if (rp_put(tr, m, mlen, &r.method) != 0 || rp_put(tr, p, plen, &r.path) != 0) {
        rc = FG_ENOMEM;
        goto out;
    }
    if ((headers && (rc = rp_add_headers(tr, &scratch, "headers", headers, why)) != 0) ||
        (meta && (rc = rp_add_headers(tr, &scratch, "meta", meta, why)) != 0) ||
        (baggage &&
         (rc = rp_add_header(tr, &scratch, "baggage", "baggage", json_string_value(baggage),
                             json_string_length(baggage), why)) != 0)) {
        tr->nheaders = r.first_header; /* the line is not kept */
        goto out;
    }
    r.nheaders = (uint8_t)(tr->nheaders - r.first_header);
    tr->reqs[tr->nreqs++] = r;
    *prev_ns = t_ns;
    *prev_ms = t_ms;
    rc = 0;
out:
    json_decref(doc);
    return rc;
}

/*
 * Read and validate the whole trace. Returns 0; 1 after printing
 * "TRACE:LINE: message" for the first bad line; 2 when it cannot be read.
 */
static int rp_load_trace(const char *path, rp_trace *tr) {
    size_t len = 0;
    char *text = read_file(path, RP_TRACE_MAX, &len);
    if (text == NULL) {
        cannot_read(path);
        return 2;
    }
    uint64_t prev_ns = 0;
    double prev_ms = 0;
    uint32_t lineno = 0;
    char why[RP_WHY_MAX];
    int rc = 0;
    for (size_t pos = 0; pos < len && rc == 0;) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl != NULL);
        lineno++;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        size_t blank = 0;
        while (blank < n && (line[blank] == ' ' || line[blank] == '\t'))
            blank++;
        if (blank == n)
            continue; /* empty lines are skipped */
        if (lineno == UINT32_MAX) {
            (void)snprintf(why, sizeof(why), "more than %" PRIu32 " lines", UINT32_MAX - 1);
            rc = -1;
        } else if (n > RP_LINE_MAX) {
            (void)snprintf(why, sizeof(why), "line longer than %d bytes", RP_LINE_MAX);
            rc = -1;
        } else {
            rc = rp_parse_line(tr, line, n, lineno, &prev_ns, &prev_ms, why);
        }
    }
    free(text);
    if (rc == FG_ENOMEM) {
        (void)fprintf(stderr, "%s:%" PRIu32 ": out of memory\n", path, lineno);
        return 1;
    }
    if (rc != 0) {
        (void)fprintf(stderr, "%s:%" PRIu32 ": %s\n", path, lineno, why);
        return 1;
    }
    return 0;
}

/* ---- replay: names, handlers, breakers ------------------------------------------------ */

/* A list of distinct strings (handler and breaker names), in first-seen order. */
typedef struct rp_strings {
    char **items;
    size_t n, cap;
} rp_strings;

/* Index of s, added when absent; -1 when out of memory. */
static long rp_strings_index(rp_strings *l, const char *s) {
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i], s) == 0)
            return (long)i;
    void *items = l->items;
    if (rp_grow(&items, &l->cap, l->n + 1, sizeof(char *)) != 0)
        return -1;
    l->items = items;
    char *copy = strdup(s);
    if (copy == NULL)
        return -1;
    l->items[l->n] = copy;
    return (long)l->n++;
}

static void rp_strings_free(rp_strings *l) {
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
}

/* One breaker transition, as the runtime's listener reported it. */
typedef struct rp_transition {
    uint64_t at_ns;
    uint32_t breaker; /* index into rp_state.breakers */
    uint8_t from, to, reason;
} rp_transition;

/* A config name (route, target or rejecting stage) met in the replay, keyed
 * by its pointer (stable while the one loaded snapshot lives): its JSON
 * text, escaped once, and how often it appeared in each role. */
typedef struct rp_name {
    const char *ptr;
    char *json;
    size_t json_len;
    uint64_t as_route, as_target, as_stage;
} rp_name;

struct rp_state;

/* A handler the config names; arg of the shared simulated handler. */
typedef struct rp_handler {
    struct rp_state *st;
    const char *name; /* in st->handler_names */
    uint64_t calls;
} rp_handler;

typedef struct rp_state {
    fg_fake_clock *fake;
    rp_strings handler_names;
    rp_handler *handlers;
    rp_strings fallback_names; /* fallbacks: simulated like handlers */
    rp_handler *fallbacks;
    rp_strings breakers;
    rp_transition *transitions;
    size_t ntransitions, cap_transitions;
    int oom;
    rp_name *names; /* names[0] is NULL, printed as null */
    size_t nnames, cap_names;
    size_t *slots; /* open addressing: index + 1 into names, 0 = empty */
    size_t nslots;
    uint64_t codes[RP_CODES + 1]; /* by -code; the last counts any other code */
    uint64_t admitted, rejected;
} rp_state;

/* The simulated handler: it takes the request's latency on the virtual
 * clock and answers what the trace says. */
static int rp_handle(fg_ctx *ctx, void *arg) {
    rp_handler *h = arg;
    const rp_request *r = ctx->user;
    h->calls++;
    if (r->latency_ns > 0)
        (void)fg_fake_clock_advance(h->st->fake, r->latency_ns);
    return r->failed ? FG_EHANDLER : 0;
}

/* The simulated fallback: counted; the request keeps the code it had, so
 * the decision lines say what happened before the fallback. */
static int rp_fallback(fg_ctx *ctx, int code, void *arg) {
    (void)ctx;
    rp_handler *f = arg;
    f->calls++;
    return code;
}

static void rp_on_breaker(const char *name, const fg_breaker_event *ev, void *arg) {
    rp_state *st = arg;
    long b = rp_strings_index(&st->breakers, name);
    void *t = st->transitions;
    if (b < 0 ||
        rp_grow(&t, &st->cap_transitions, st->ntransitions + 1, sizeof(rp_transition)) != 0) {
        st->oom = 1;
        return;
    }
    st->transitions = t;
    rp_transition *e = &st->transitions[st->ntransitions++];
    e->at_ns = ev->at_ns;
    e->breaker = (uint32_t)b;
    e->from = (uint8_t)ev->from;
    e->to = (uint8_t)ev->to;
    e->reason = (uint8_t)ev->reason;
}

static size_t rp_hash(const void *p, size_t nslots) {
    uint64_t h = (uint64_t)(uintptr_t)p * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> 32) & (nslots - 1);
}

/* The entry of a config name (NULL: entry 0); NULL when out of memory. */
static rp_name *rp_name_get(rp_state *st, const char *ptr) {
    if (ptr == NULL)
        return &st->names[0];
    size_t i = rp_hash(ptr, st->nslots);
    while (st->slots[i] != 0) {
        rp_name *e = &st->names[st->slots[i] - 1];
        if (e->ptr == ptr)
            return e;
        i = (i + 1) & (st->nslots - 1);
    }
    if (2 * (st->nnames + 1) > st->nslots) { /* keep the table at most half full */
        size_t n = st->nslots * 2;
        size_t *slots = calloc(n, sizeof(size_t));
        if (slots == NULL)
            return NULL;
        for (size_t k = 1; k < st->nnames; k++) {
            size_t j = rp_hash(st->names[k].ptr, n);
            while (slots[j] != 0)
                j = (j + 1) & (n - 1);
            slots[j] = k + 1;
        }
        free(st->slots);
        st->slots = slots;
        st->nslots = n;
        i = rp_hash(ptr, n);
        while (st->slots[i] != 0)
            i = (i + 1) & (n - 1);
    }
    void *names = st->names;
    if (rp_grow(&names, &st->cap_names, st->nnames + 1, sizeof(rp_name)) != 0)
        return NULL;
    st->names = names;
    json_t *s = json_string(ptr);
    char *json = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    json_decref(s);
    if (json == NULL)
        return NULL;
    size_t jl = strlen(json);
    if (jl > 2048) { /* names are at most 128 bytes; keep output lines bounded anyway */
        free(json);
        json = strdup("\"(long name)\"");
        if (json == NULL)
            return NULL;
        jl = strlen(json);
    }
    rp_name *e = &st->names[st->nnames];
    *e = (rp_name){ptr, json, jl, 0, 0, 0};
    st->slots[i] = ++st->nnames;
    return e;
}

static int rp_state_init(rp_state *st) {
    memset(st, 0, sizeof(*st));
    st->nslots = 64;
    st->slots = calloc(st->nslots, sizeof(size_t));
    st->names = malloc(64 * sizeof(rp_name));
    if (st->slots == NULL || st->names == NULL)
        return FG_ENOMEM;
    st->cap_names = 64;
    st->names[0] = (rp_name){NULL, NULL, 4, 0, 0, 0};
    st->nnames = 1;
    return fg_fake_clock_new(0, &st->fake);
}

static void rp_state_free(rp_state *st) {
    for (size_t i = 1; i < st->nnames; i++)
        free(st->names[i].json);
    free(st->names);
    free(st->slots);
    free(st->transitions);
    free(st->handlers);
    rp_strings_free(&st->handler_names);
    free(st->fallbacks);
    rp_strings_free(&st->fallback_names);
    rp_strings_free(&st->breakers);
    fg_fake_clock_free(st->fake);
}

/* Collect a "handler" string of obj. */
static int rp_collect_handler(rp_state *st, const json_t *obj) {
    const char *h = json_string_value(json_object_get(obj, "handler"));
    const char *f = json_string_value(json_object_get(obj, "fallback"));
    int rc = h != NULL && rp_strings_index(&st->handler_names, h) < 0 ? FG_ENOMEM : 0;
    return f != NULL && rp_strings_index(&st->fallback_names, f) < 0 ? FG_ENOMEM : rc;
}

/*
 * Every handler name the config uses (top-level "handler", routes[i].handler,
 * routes[i].split.targets[j].handler) and its breakers' names (so the SVG
 * has a row for each, transitions or not). A config that does not parse
 * collects nothing: the load reports it.
 */
static int rp_collect_names(rp_state *st, const char *text, size_t len) {
    json_t *doc = json_loadb(text, len, 0, NULL);
    if (doc == NULL)
        return 0;
    int rc = rp_collect_handler(st, doc);
    json_t *routes = json_object_get(doc, "routes");
    size_t i, j;
    json_t *route, *target;
    json_array_foreach(routes, i, route) {
        rc |= rp_collect_handler(st, route);
        json_t *targets = json_object_get(json_object_get(route, "split"), "targets");
        json_array_foreach(targets, j, target) rc |= rp_collect_handler(st, target);
    }
    const char *name;
    json_t *v;
    json_object_foreach(json_object_get(doc, "breakers"), name, v) {
        if (rp_strings_index(&st->breakers, name) < 0)
            rc = FG_ENOMEM;
    }
    json_decref(doc);
    return rc ? FG_ENOMEM : 0;
}

/* ---- replay: output ------------------------------------------------------------------- */

/* The output name of a code: "ok", "rate_limited", ... */
static const char *rp_code_name(int rc, char *buf, size_t cap) {
    const char *name = fg_outcome_name(rc);
    if (name != NULL)
        return name;
    const char *n = fg_err_name(rc); /* "FG_E<NAME>" */
    if (strncmp(n, "FG_E", 4) == 0)
        n += 4;
    size_t i = 0;
    for (; n[i] != '\0' && i + 1 < cap; i++)
        buf[i] = (char)(n[i] >= 'A' && n[i] <= 'Z' ? n[i] - 'A' + 'a' : n[i]);
    buf[i] = '\0';
    return buf;
}

static char *rp_cat(char *p, const char *s, size_t n) {
    memcpy(p, s, n);
    return p + n;
}

#define RP_LIT(p, s) rp_cat((p), (s), sizeof(s) - 1)

/* One output line for a request into p (room for 8 KiB); returns its end. */
static char *rp_format(char *p, const rp_request *r, int rc, int reject, const rp_name *stage,
                       const rp_name *route, const rp_name *target, uint64_t retry_after_ns) {
    char code_buf[32];
    const char *code = rp_code_name(rc, code_buf, sizeof(code_buf));
    p = RP_LIT(p, "{\"line\":");
    p = rp_u64(p, r->line);
    p = RP_LIT(p, ",\"t_ms\":");
    if (r->t_integer)
        p = rp_u64(p, (uint64_t)r->t_ms);
    else
        p += rp_ms_text(p, 32, r->t_ms);
    p = reject ? RP_LIT(p, ",\"decision\":\"reject\",\"code\":\"")
               : RP_LIT(p, ",\"decision\":\"admit\",\"code\":\"");
    p = rp_cat(p, code, strlen(code));
    p = RP_LIT(p, "\",\"stage\":");
    p = rp_cat(p, stage->json ? stage->json : "null", stage->json_len);
    p = RP_LIT(p, ",\"route\":");
    p = rp_cat(p, route->json ? route->json : "null", route->json_len);
    p = RP_LIT(p, ",\"target\":");
    p = rp_cat(p, target->json ? target->json : "null", target->json_len);
    if (retry_after_ns > 0) {
        p = RP_LIT(p, ",\"retry_after_ms\":");
        p = rp_u64(p, retry_after_ns / FG_NS_PER_MS + (retry_after_ns % FG_NS_PER_MS != 0));
    }
    return RP_LIT(p, "}\n");
}

/* ---- replay: summary and SVG ------------------------------------------------------------ */

static void rp_summary(const rp_state *st, size_t nreqs) {
    FILE *o = stderr;
    (void)fprintf(o, "# summary: %zu requests, %" PRIu64 " admitted, %" PRIu64 " rejected\n",
                  nreqs, st->admitted, st->rejected);
    char buf[32];
    for (int i = 0; i < RP_CODES; i++)
        if (st->codes[i] > 0)
            (void)fprintf(o, "code %s %" PRIu64 "\n", rp_code_name(-i, buf, sizeof(buf)),
                          st->codes[i]);
    if (st->codes[RP_CODES] > 0)
        (void)fprintf(o, "code other %" PRIu64 "\n", st->codes[RP_CODES]);
    static const char *const roles[] = {"route", "target", "stage"};
    for (int role = 0; role < 3; role++) {
        for (size_t i = 0; i < st->nnames; i++) {
            /* One line per name: several stages (or targets of different
             * routes) can share one, like a limiter named in three routes. */
            uint64_t n = 0;
            int first = 1;
            for (size_t j = 0; j < st->nnames; j++) {
                const rp_name *e = &st->names[j];
                int same =
                    e->ptr == st->names[i].ptr ||
                    (e->ptr && st->names[i].ptr && strcmp(e->ptr, st->names[i].ptr) == 0);
                uint64_t c = role == 0 ? e->as_route : role == 1 ? e->as_target : e->as_stage;
                if (same && j < i && c > 0)
                    first = 0;
                if (same)
                    n += c;
            }
            const rp_name *e = &st->names[i];
            uint64_t mine = role == 0 ? e->as_route : role == 1 ? e->as_target : e->as_stage;
            /* A rejecting stage of none is every admitted request: not listed. */
            if (first && mine > 0 && !(role == 2 && e->ptr == NULL))
                (void)fprintf(o, "%s %s %" PRIu64 "\n", roles[role],
                              e->ptr ? e->ptr : "(none)", n);
        }
    }
    for (size_t i = 0; i < st->handler_names.n; i++)
        (void)fprintf(o, "handler %s %" PRIu64 "\n", st->handler_names.items[i],
                      st->handlers[i].calls);
    for (size_t i = 0; i < st->fallback_names.n; i++)
        (void)fprintf(o, "fallback %s %" PRIu64 "\n", st->fallback_names.items[i],
                      st->fallbacks[i].calls);
    for (size_t i = 0; i < st->ntransitions; i++) {
        const rp_transition *t = &st->transitions[i];
        (void)rp_ms_text(buf, sizeof(buf), (double)t->at_ns / 1e6);
        (void)fprintf(o, "t_ms=%s breaker %s %s -> %s (%s)\n", buf,
                      st->breakers.items[t->breaker],
                      fg_breaker_state_name((fg_breaker_state_kind)t->from),
                      fg_breaker_state_name((fg_breaker_state_kind)t->to),
                      fg_breaker_reason_name((fg_breaker_reason)t->reason));
    }
}

/* SVG text, XML-escaped. */
static void rp_xml(FILE *f, const char *s) {
    for (; *s; s++) {
        const char *esc = *s == '&'    ? "&amp;"
                          : *s == '<'  ? "&lt;"
                          : *s == '>'  ? "&gt;"
                          : *s == '"'  ? "&quot;"
                          : *s == '\'' ? "&apos;"
                                       : NULL;
        if (esc != NULL)
            (void)fputs(esc, f);
        else
            (void)fputc(*s, f);
    }
}

static const char *rp_state_colour(int state) {
    return state == FG_BREAKER_OPEN        ? "#d9534f"
           : state == FG_BREAKER_HALF_OPEN ? "#f0ad4e"
                                           : "#5cb85c";
}

/*
 * The timeline: RP_SVG_BUCKETS intervals over [t0, t1] ns, a stacked bar of
 * admitted (blue, below) and rejected (red, above) per interval, and one band
 * per breaker coloured by its state. Self-contained, no scripts.
 */
static void rp_svg(FILE *f, const rp_state *st, const uint64_t (*buckets)[2], uint64_t t0,
                   uint64_t t1, const char *config, const char *trace) {
    const double left = 130, plot_w = 900, top = 40, plot_h = 300, band_h = 18;
    const double band_top = top + plot_h + 40;
    const double height = band_top + (double)st->breakers.n * (band_h + 6) + 50;
    const double span = t1 > t0 ? (double)(t1 - t0) : 1e6;
    const double bw = plot_w / RP_SVG_BUCKETS;
    uint64_t max = 1;
    for (int i = 0; i < RP_SVG_BUCKETS; i++)
        if (buckets[i][0] + buckets[i][1] > max)
            max = buckets[i][0] + buckets[i][1];
    (void)fprintf(f,
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                  "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"11\">\n",
                  left + plot_w + 40, height, left + plot_w + 40, height);
    (void)fputs("<title>floodgate replay: ", f);
    rp_xml(f, config);
    (void)fputs(" / ", f);
    rp_xml(f, trace);
    (void)fputs("</title>\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n", f);
    (void)fprintf(f,
                  "<text x=\"%.0f\" y=\"20\" font-size=\"13\">requests per interval "
                  "(%.6g ms each): admitted (blue), rejected (red)</text>\n",
                  left, span / 1e6 / RP_SVG_BUCKETS);
    for (int i = 0; i < RP_SVG_BUCKETS; i++) {
        double ha = plot_h * (double)buckets[i][0] / (double)max;
        double hr = plot_h * (double)buckets[i][1] / (double)max;
        double x = left + bw * i;
        (void)fprintf(
            f,
            "<rect class=\"adm\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
            "fill=\"#4a90d9\"><title>%" PRIu64 " admitted</title></rect>\n",
            x, top + plot_h - ha, bw * 0.9, ha, buckets[i][0]);
        (void)fprintf(
            f,
            "<rect class=\"rej\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
            "fill=\"#d9534f\"><title>%" PRIu64 " rejected</title></rect>\n",
            x, top + plot_h - ha - hr, bw * 0.9, hr, buckets[i][1]);
    }
    /* axes: counts on y, virtual time (ms) on x */
    (void)fprintf(f,
                  "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#000\"/>\n"
                  "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#000\"/>\n"
                  "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%" PRIu64 "</text>\n"
                  "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">0</text>\n",
                  left, top, left, top + plot_h, left, top + plot_h, left + plot_w,
                  top + plot_h, left - 4, top + 4, max, left - 4, top + plot_h);
    for (int k = 0; k <= 4; k++) {
        double x = left + plot_w * k / 4;
        char buf[32];
        (void)rp_ms_text(buf, sizeof(buf), ((double)t0 + span * k / 4) / 1e6);
        (void)fprintf(
            f,
            "<line x1=\"%.2f\" y1=\"%.0f\" x2=\"%.2f\" y2=\"%.0f\" stroke=\"#000\"/>\n"
            "<text x=\"%.2f\" y=\"%.0f\" text-anchor=\"middle\">%s ms</text>\n",
            x, top + plot_h, x, top + plot_h + 5, x, top + plot_h + 18, buf);
    }
    /* breaker bands: closed green, open red, half-open amber */
    for (size_t b = 0; b < st->breakers.n; b++) {
        double y = band_top + (double)b * (band_h + 6);
        (void)fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">breaker ", left - 6,
                      y + 13);
        rp_xml(f, st->breakers.items[b]);
        (void)fputs("</text>\n", f);
        int state = FG_BREAKER_CLOSED;
        double from = 0; /* as a share of the span */
        for (size_t i = 0; i <= st->ntransitions; i++) {
            const rp_transition *t = i < st->ntransitions ? &st->transitions[i] : NULL;
            if (t != NULL && t->breaker != b)
                continue;
            double to = 1;
            if (t != NULL)
                to = t->at_ns <= t0 ? 0 : (double)(t->at_ns - t0) / span;
            to = to > 1 ? 1 : to < from ? from : to;
            if (to > from)
                (void)fprintf(f,
                              "<rect class=\"band %s\" x=\"%.2f\" y=\"%.0f\" width=\"%.2f\" "
                              "height=\"%.0f\" fill=\"%s\"/>\n",
                              fg_breaker_state_name((fg_breaker_state_kind)state),
                              left + plot_w * from, y, plot_w * (to - from), band_h,
                              rp_state_colour(state));
            if (t != NULL)
                state = t->to;
            from = to;
        }
    }
    (void)fprintf(f,
                  "<text x=\"%.0f\" y=\"%.0f\">breaker states: closed (green), open (red), "
                  "half-open (amber)</text>\n</svg>\n",
                  left, height - 15);
}

/* ---- replay: the command ---------------------------------------------------------------- */

typedef struct rp_opts {
    int summary, quiet;
    const char *svg, *metrics, *config, *trace;
} rp_opts;

static int rp_parse_args(int argc, char **argv, rp_opts *o) {
    memset(o, 0, sizeof(*o));
    int i = 2, npos = 0;
    const char *pos[2] = {NULL, NULL};
    int opts_done = 0;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!opts_done && strcmp(a, "--") == 0)
            opts_done = 1;
        else if (!opts_done && strcmp(a, "--summary") == 0)
            o->summary = 1;
        else if (!opts_done && strcmp(a, "--quiet") == 0)
            o->quiet = 1;
        else if (!opts_done && strcmp(a, "--svg") == 0 && i + 1 < argc)
            o->svg = argv[++i];
        else if (!opts_done && strncmp(a, "--svg=", 6) == 0 && a[6] != '\0')
            o->svg = a + 6;
        else if (!opts_done && strcmp(a, "--metrics") == 0 && i + 1 < argc)
            o->metrics = argv[++i];
        else if (!opts_done && strncmp(a, "--metrics=", 10) == 0 && a[10] != '\0')
            o->metrics = a + 10;
        else if (!opts_done && a[0] == '-' && a[1] != '\0') {
            (void)fprintf(stderr, "floodgate replay: unknown option %s\n", a);
            return 2;
        } else if (npos < 2)
            pos[npos++] = a;
        else
            npos++;
    }
    if (npos != 2) {
        (void)fputs(
            "usage: floodgate replay [--summary] [--quiet] [--svg FILE] [--metrics FILE] "
            "CONFIG TRACE.jsonl\n",
            stderr);
        return 2;
    }
    o->config = pos[0];
    o->trace = pos[1];
    return 0;
}

/* Load the config into rt on st's virtual clock. Returns 0, 1 or 2. */
static int rp_load_config(const char *path, rp_state *st, fg_registry *reg, fg_runtime *rt) {
    size_t len = 0;
    char *text = read_file(path, FG_CONFIG_MAX_BYTES, &len);
    if (text == NULL) {
        cannot_read(path);
        return 2;
    }
    int rc = rp_collect_names(st, text, len);
    if (rc == 0) {
        st->handlers = calloc(st->handler_names.n + 1, sizeof(rp_handler));
        rc = st->handlers ? 0 : FG_ENOMEM;
    }
    for (size_t i = 0; rc == 0 && i < st->handler_names.n; i++) {
        st->handlers[i] = (rp_handler){st, st->handler_names.items[i], 0};
        rc = fg_registry_add_handler(reg, st->handler_names.items[i], rp_handle,
                                     &st->handlers[i]);
    }
    if (rc == 0) {
        st->fallbacks = calloc(st->fallback_names.n + 1, sizeof(rp_handler));
        rc = st->fallbacks ? 0 : FG_ENOMEM;
    }
    for (size_t i = 0; rc == 0 && i < st->fallback_names.n; i++) {
        st->fallbacks[i] = (rp_handler){st, st->fallback_names.items[i], 0};
        rc = fg_registry_add_fallback(reg, st->fallback_names.items[i], rp_fallback,
                                      &st->fallbacks[i]);
    }
    if (rc == 0)
        rc = fg_runtime_set_clock(rt, fg_fake_clock_as_clock(st->fake));
    if (rc == 0)
        rc = fg_runtime_set_breaker_listener(rt, rp_on_breaker, st);
    fg_config_errors errors;
    errors.count = 0;
    errors.omitted = 0;
    if (rc == 0)
        rc = fg_runtime_load_json(rt, reg, text, len, &errors);
    free(text);
    if (rc == 0)
        return 0;
    if (rc != FG_ECONFIG) {
        (void)fprintf(stderr, "%s: %s\n", path, fg_strerror(rc));
        return 1;
    }
    int custom = 0;
    for (size_t i = 0; i < errors.count; i++) {
        const fg_config_error *e = &errors.items[i];
        (void)fprintf(stderr, "%s: %s%s%s", path, e->path, e->path[0] ? ": " : "", e->message);
        if (e->line > 0)
            (void)fprintf(stderr, " (line %d, column %d)", e->line, e->column);
        (void)fputc('\n', stderr);
        custom |= strncmp(e->message, "unknown stage kind", 18) == 0;
    }
    if (errors.omitted > 0)
        (void)fprintf(stderr, "%s: ... and %zu more\n", path, errors.omitted);
    if (custom)
        (void)fprintf(stderr,
                      "%s: replay cannot run custom stages: they belong to the program "
                      "that registers them\n",
                      path);
    return 1;
}

/* Output through one buffer; write errors are remembered. */
typedef struct rp_out {
    char buf[1 << 16];
    size_t len;
    int failed;
} rp_out;

static void rp_flush(rp_out *o) {
    if (o->len > 0 && fwrite(o->buf, 1, o->len, stdout) != o->len)
        o->failed = 1;
    o->len = 0;
}

/* Run every request. buckets may be NULL (no SVG). */
static int rp_run(const rp_trace *tr, rp_state *st, fg_runtime *rt, int quiet,
                  uint64_t (*buckets)[2]) {
    static rp_out out; /* 64 KiB: not on the stack */
    out.len = 0;
    out.failed = 0;
    uint64_t t0 = tr->nreqs ? tr->reqs[0].t_ns : 0;
    uint64_t span = tr->nreqs ? tr->reqs[tr->nreqs - 1].t_ns - t0 : 0;
    for (size_t i = 0; i < tr->nreqs; i++) {
        rp_request *r = &tr->reqs[i];
        /* Arrivals happen at their own t_ms (which never goes backwards); a
         * previous request's latency moved the clock only for that request. */
        fg_fake_clock_set(st->fake, r->t_ns);
        fg_ctx ctx;
        (void)fg_ctx_init_n(&ctx, tr->arena + r->method, r->method_len, tr->arena + r->path,
                            r->path_len);
        for (size_t h = 0; h < r->nheaders; h++) {
            const rp_header *e = &tr->headers[r->first_header + h];
            (void)fg_ctx_add_header_n(&ctx, tr->arena + e->name, e->name_len,
                                      tr->arena + e->value, e->value_len);
        }
        ctx.user = r; /* read, never written, by rp_handle */
        int rc = fg_runtime_call(rt, &ctx, NULL, NULL);
        int reject = ctx.rejected_by != NULL || rc == FG_ENOROUTE;
        rp_name *stage =
            rp_name_get(st, ctx.rejected_by ? fg_stage_name(ctx.rejected_by) : NULL);
        rp_name *route = rp_name_get(st, ctx.route);
        rp_name *target = rp_name_get(st, ctx.target);
        if (stage == NULL || route == NULL || target == NULL || st->oom) {
            (void)fputs("floodgate replay: out of memory\n", stderr);
            return 1;
        }
        stage->as_stage++;
        route->as_route++;
        target->as_target++;
        st->codes[rc <= 0 && rc > -RP_CODES ? -rc : RP_CODES]++;
        if (reject)
            st->rejected++;
        else
            st->admitted++;
        if (buckets != NULL) {
            size_t b =
                span ? (size_t)((double)(r->t_ns - t0) * RP_SVG_BUCKETS / (double)span) : 0;
            buckets[b < RP_SVG_BUCKETS ? b : RP_SVG_BUCKETS - 1][reject]++;
        }
        if (!quiet) {
            if (out.len > sizeof(out.buf) - 8192)
                rp_flush(&out);
            char *end = rp_format(out.buf + out.len, r, rc, reject, stage, route, target,
                                  ctx.retry_after_ns);
            out.len = (size_t)(end - out.buf);
        }
    }
    rp_flush(&out);
    if (fflush(stdout) != 0 || out.failed) {
        (void)fputs("floodgate replay: cannot write the output\n", stderr);
        return 1;
    }
    return 0;
}

static int rp_write_error(const char *path) {
    (void)fprintf(stderr, "%s: cannot write: %s\n", path,
                  strerror(errno)); // NOLINT(concurrency-mt-unsafe)
    return 1;
}

/* An output file written whole or not at all: opened as PATH.tmp before
 * the replay (so a path that cannot be written fails with nothing on
 * standard output), renamed over PATH at the end. */
typedef struct rp_file {
    const char *path;
    char *tmp;
    FILE *f;
} rp_file;

static int rp_file_open(rp_file *o, const char *path) {
    o->path = path;
    size_t n = strlen(path);
    o->tmp = malloc(n + 5);
    if (o->tmp == NULL) {
        (void)fputs("floodgate replay: out of memory\n", stderr);
        return 1;
    }
    memcpy(o->tmp, path, n);
    memcpy(o->tmp + n, ".tmp", 5);
    o->f = fopen(o->tmp, "wb");
    return o->f == NULL ? rp_write_error(path) : 0;
}

static int rp_file_commit(rp_file *o) {
    int bad = ferror(o->f) || fflush(o->f) != 0 || fsync(fileno(o->f)) != 0;
    bad |= fclose(o->f) != 0;
    o->f = NULL;
    if (bad || rename(o->tmp, o->path) != 0)
        return rp_write_error(o->path);
    free(o->tmp);
    o->tmp = NULL;
    return 0;
}

static void rp_file_drop(rp_file *o) {
    if (o->f != NULL)
        (void)fclose(o->f);
    if (o->tmp != NULL)
        (void)unlink(o->tmp);
    free(o->tmp);
}

/* The Prometheus exposition of everything the replay counted. */
static int rp_write_metrics(fg_runtime *rt, rp_file *o) {
    fg_metrics *m = fg_runtime_metrics(rt);
    size_t need = 0;
    char *buf = NULL;
    int rc = fg_metrics_prometheus(m, NULL, 0, &need);
    for (int tries = 0; rc == FG_ETOOLONG && tries < 4; tries++) {
        free(buf);
        buf = malloc(need + 4096); /* room for a figure that grew meanwhile */
        if (buf == NULL)
            break;
        rc = fg_metrics_prometheus(m, buf, need + 4096, &need);
    }
    if (rc != 0 || buf == NULL) {
        free(buf);
        (void)fprintf(stderr, "floodgate replay: metrics: %s\n",
                      fg_strerror(rc != 0 ? rc : FG_ENOMEM));
        return 1;
    }
    int bad = fwrite(buf, 1, need, o->f) != need;
    free(buf);
    if (bad)
        return rp_write_error(o->path);
    return rp_file_commit(o);
}

static int replay(int argc, char **argv) {
    rp_opts o;
    int rc = rp_parse_args(argc, argv, &o);
    if (rc != 0)
        return rc;
    rp_state st;
    rp_trace tr = {0};
    fg_registry *reg = NULL;
    fg_runtime *rt = NULL;
    rp_file svg = {NULL, NULL, NULL}, metrics = {NULL, NULL, NULL};
    uint64_t(*buckets)[2] = NULL;
    if (rp_state_init(&st) != 0 || fg_registry_new(&reg) != 0 || fg_runtime_new(&rt) != 0) {
        (void)fputs("floodgate replay: out of memory\n", stderr);
        rc = 1;
        goto out;
    }
    rc = rp_load_config(o.config, &st, reg, rt);
    if (rc == 0)
        rc = rp_load_trace(o.trace, &tr);
    if (rc == 0 && o.svg != NULL) {
        buckets = calloc(RP_SVG_BUCKETS, sizeof(*buckets));
        rc = buckets == NULL ? 1 : rp_file_open(&svg, o.svg);
        if (buckets == NULL)
            (void)fputs("floodgate replay: out of memory\n", stderr);
    }
    if (rc == 0 && o.metrics != NULL)
        rc = rp_file_open(&metrics, o.metrics);
    if (rc == 0)
        rc = rp_run(&tr, &st, rt, o.quiet, buckets);
    if (rc == 0 && o.summary)
        rp_summary(&st, tr.nreqs);
    if (rc == 0 && svg.f != NULL) {
        uint64_t t0 = tr.nreqs ? tr.reqs[0].t_ns : 0;
        uint64_t t1 = tr.nreqs ? tr.reqs[tr.nreqs - 1].t_ns : 0;
        for (size_t i = 0; i < st.ntransitions; i++)
            if (st.transitions[i].at_ns > t1)
                t1 = st.transitions[i].at_ns;
        rp_svg(svg.f, &st, (const uint64_t(*)[2])buckets, t0, t1, o.config, o.trace);
        rc = rp_file_commit(&svg);
    }
    if (rc == 0 && metrics.f != NULL)
        rc = rp_write_metrics(rt, &metrics);
out:
    rp_file_drop(&svg);
    rp_file_drop(&metrics);
    free(buckets);
    fg_runtime_free(rt); /* before the registry and the clock it calls */
    fg_registry_free(reg);
    rp_state_free(&st);
    rp_trace_free(&tr);
    return rc;
}

/* ---- check ---------------------------------------------------------------------------- */

static int check_one(const char *path) {
    size_t len = 0;
    char *text = read_file(path, FG_CONFIG_MAX_BYTES, &len);
    if (text == NULL) {
        cannot_read(path);
        return 2;
    }
    fg_config_errors errors;
    int rc = fg_config_check(NULL, text, len, &errors);
    free(text);
    if (rc == 0) {
        printf("%s: ok\n", path);
        return 0;
    }
    if (rc != FG_ECONFIG) {
        (void)fprintf(stderr, "%s: %s\n", path, fg_strerror(rc));
        return rc == FG_ETOOLONG ? 1 : 2;
    }
    for (size_t i = 0; i < errors.count; i++) {
        const fg_config_error *e = &errors.items[i];
        printf("%s: %s%s%s", path, e->path, e->path[0] ? ": " : "", e->message);
        if (e->line > 0)
            printf(" (line %d, column %d)", e->line, e->column);
        putchar('\n');
    }
    if (errors.omitted > 0)
        printf("%s: ... and %zu more\n", path, errors.omitted);
    return 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "version") == 0 && argc == 2) {
        printf("floodgate %s\n", fg_version_string());
        return 0;
    }
    if (argc >= 2 && (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
                      strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "replay") == 0)
        return replay(argc, argv);
    if (argc < 3 || strcmp(argv[1], "check") != 0) {
        usage(stderr);
        return 2;
    }
    int worst = 0;
    for (int i = 2; i < argc; i++) {
        int rc = check_one(argv[i]);
        if (rc > worst)
            worst = rc;
    }
    return worst;
}
