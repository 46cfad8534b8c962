/*
 * lib/etcd.c - a config kept in an etcd key, loaded now and reloaded when it
 * changes (fg_runtime_watch_etcd, floodgate/config.h).
 *
 * etcd v3 is spoken through its JSON gateway with libcurl: POST
 * /v3/kv/range reads the key, POST /v3/watch opens a stream that sends one
 * JSON object per line for as long as it stays open. Keys and values are
 * base64 in that JSON and 64-bit integers are strings; fields at their zero
 * value are left out (a PUT event has no "type", an empty value no
 * "value").
 *
 * The first read runs on the caller's thread; then one thread owns a curl
 * multi handle and runs one transfer at a time on it: a watch stream from
 * the last revision seen + 1, or, after a compaction or a message it could
 * not use, a read of the key. It blocks in curl_multi_poll, which
 * fg_watch_stop interrupts with curl_multi_wakeup, so stopping is prompt
 * wherever the thread waits: inside a transfer or between two (the backoff
 * wait is a curl_multi_poll with no transfer).
 *
 * Revisions. `seen` is the highest revision the watcher knows the key's
 * state at: a read's header revision (the whole store at that revision),
 * or the mod_revision of the newest event received. Events at or below it
 * are skipped, so an older value never replaces a newer one, and a stream
 * re-opened at seen + 1 after a disconnect delivers exactly the changes
 * made meanwhile. A watch message may carry several events: only the
 * newest one for the key is acted on (last wins); a DELETE keeps the old
 * config and is reported.
 *
 * Failures. A stream that ends (etcd restarted, the network), cannot be
 * opened, or is accepted but not confirmed ("created") within the timeout
 * is re-opened after a backoff: backoff_min, doubling up to backoff_max,
 * less up to half of it at random; it starts over once a stream has been
 * served for backoff_max, so a server that drops every stream at once is
 * not hammered. TCP keepalive (10 s idle, then a probe every 5 s) notices a
 * peer gone without a word. These are counted in reconnects, not reported:
 * nothing was loaded. A message that is not what etcd sends, or is over the
 * bound, is a failed attempt (FG_EPARSE, FG_ETOOLONG), since a change may
 * have been in it, and the key is read afresh.
 *
 * Bounds. A streamed message, and a read's whole body, may be at most
 * FG_ETCD_MESSAGE_MAX bytes (room for a value of FG_CONFIG_MAX_BYTES in
 * base64, plus the JSON around it); the buffer grows to that and no
 * further. A body past it is cut off and the transfer ended: for a read,
 * a second read with keys_only learns the revision, so that the too-long
 * value is reported once and not read again.
 */
#include <stdint.h>
#include <string.h>

#include "floodgate/config.h"
#include "floodgate/error.h"

#ifndef FG_HAVE_CURL

int fg_etcd_available(void) { return 0; }

int fg_runtime_watch_etcd(fg_runtime *rt, const fg_registry *registry, const char *endpoint,
                          const char *key, const fg_watch_options *opts, fg_watch **out) {
    (void)rt;
    (void)registry;
    (void)endpoint;
    (void)key;
    (void)opts;
    if (out != NULL)
        *out = NULL;
    return FG_ESTATE;
}

#else /* FG_HAVE_CURL */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>

#include "alloc.h"
#include "internal.h"
#include "watch_internal.h"

#define FG_ETCD_TIMEOUT_NS     2000000000ull /* the default bound on one request: 2 s */
#define FG_ETCD_BACKOFF_MIN_NS 50000000ull   /* the default first backoff: 50 ms */
#define FG_ETCD_BACKOFF_MAX_NS 2000000000ull /* the default longest backoff: 2 s */
/* One streamed message or read body: a FG_CONFIG_MAX_BYTES value in base64
 * and 64 KiB for the JSON around it. */
#define FG_ETCD_MESSAGE_MAX    (((size_t)FG_CONFIG_MAX_BYTES + 2) / 3 * 4 + 65536)
#define FG_ETCD_KEY_B64_MAX    (((size_t)FG_ETCD_KEY_MAX + 2) / 3 * 4) /* the key in base64 */
#define FG_ETCD_BUF_KEEP       65536 /* a buffer larger than this is freed between transfers */
#define FG_ETCD_KEEPIDLE_S     10 /* TCP keepalive on the stream: idle seconds, then probes */
#define FG_ETCD_KEEPINTVL_S    5
#define FG_ETCD_POLL_MS        1000 /* the longest curl_multi_poll; stops wake it anyway */

/* What a step of the watcher's loop leads to. */
enum fg_etcd_next {
    FG_ETCD_NEXT = 0, /* go on */
    FG_ETCD_RETRY,    /* back off, then re-open the stream from seen + 1 */
    FG_ETCD_RESYNC,   /* back off, read the key afresh, then re-open the stream */
    FG_ETCD_STOP,     /* end the thread: fg_watch_stop */
};

enum fg_etcd_mode { FG_ETCD_READ, FG_ETCD_STREAM };

/* An etcd watcher: the common part (lib/watch_internal.h) first. */
struct fg_etcd {
    struct fg_watch w;
    char *endpoint;  /* as given, without trailing '/' (for messages) */
    char *url_range; /* endpoint + "/v3/kv/range" */
    char *url_watch; /* endpoint + "/v3/watch" */
    char *key;       /* as given: the path of etcd's errors */
    char *key_b64;   /* the key in base64, as requests and events carry it */
    uint64_t timeout_ns;
    long timeout_ms; /* the same, rounded up, for libcurl */
    uint64_t backoff_min_ns, backoff_max_ns;
    uint64_t delay_ns; /* the next backoff, before jitter */
    CURLM *multi;
    CURL *easy;
    struct curl_slist *headers;
    char curl_err[CURL_ERROR_SIZE];
    /* The transfer in progress (the loading thread only). */
    enum fg_etcd_mode mode;
    char *buf; /* a read's body, or a stream's partial message */
    size_t len, cap;
    long status;         /* the stream's HTTP status, once known */
    int overflow;        /* a body or message was past FG_ETCD_MESSAGE_MAX */
    int nomem;           /* the buffer could not grow */
    int created;         /* the stream said "created": etcd is serving it */
    uint64_t created_at; /* when it did */
    int action;          /* enum fg_etcd_next the stream's messages asked for */
    /* What is known of the key (the loading thread only). */
    int64_t seen;    /* see the file comment */
    int64_t applied; /* the mod_revision of the value serving now */
    int present;     /* the key existed at seen */
};

/* ---- base64 (etcd's keys and values; the standard alphabet, padded) ------------------- */

/* The 64 digits, then the padding at index 64. */
static const char fg_b64_digits[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";

static int fg_b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* The base64 of n bytes, NUL-terminated, or NULL when out of memory. */
static char *fg_b64_encode(const unsigned char *in, size_t n) {
    char *out = fg__malloc((n + 2) / 3 * 4 + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = fg_b64_digits[v >> 18 & 63];
        out[o++] = fg_b64_digits[v >> 12 & 63];
        out[o++] = fg_b64_digits[i + 1 < n ? v >> 6 & 63 : 64];
        out[o++] = fg_b64_digits[i + 2 < n ? v & 63 : 64];
    }
    out[o] = '\0';
    return out;
}

/* The length base64 text of len bytes decodes to, or SIZE_MAX when it is
 * not a whole number of 4-character groups. */
static size_t fg_b64_decoded_len(const char *in, size_t len) {
    if (len % 4 != 0)
        return SIZE_MAX;
    size_t n = len / 4 * 3;
    if (len > 0 && in[len - 1] == '=')
        n -= (len > 1 && in[len - 2] == '=') ? 2 : 1;
    return n;
}

/*
 * Strict decoding: whole groups of four, padding only at the very end,
 * and the unused bits of the last group zero (the one canonical text of
 * the bytes, which is what etcd sends). out has fg_b64_decoded_len bytes.
 * Returns 0, or -1 for anything else.
 */
static int fg_b64_decode(const char *in, size_t len, unsigned char *out) {
    if (len % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int last = i + 4 == len;
        int a = fg_b64_value((unsigned char)in[i]);
        int b = fg_b64_value((unsigned char)in[i + 1]);
        if (a < 0 || b < 0)
            return -1;
        if (last && in[i + 2] == '=' && in[i + 3] == '=') {
            if ((b & 15) != 0)
                return -1;
            out[o++] = (unsigned char)(a << 2 | b >> 4);
            break;
        }
        int c = fg_b64_value((unsigned char)in[i + 2]);
        if (c < 0)
            return -1;
        if (last && in[i + 3] == '=') {
            if ((c & 3) != 0)
                return -1;
            out[o++] = (unsigned char)(a << 2 | b >> 4);
            out[o++] = (unsigned char)((b & 15) << 4 | c >> 2);
            break;
        }
        int d = fg_b64_value((unsigned char)in[i + 3]);
        if (d < 0)
            return -1;
        out[o++] = (unsigned char)(a << 2 | b >> 4);
        out[o++] = (unsigned char)((b & 15) << 4 | c >> 2);
        out[o++] = (unsigned char)((c & 3) << 6 | d);
    }
    return 0;
}

/* ---- reading etcd's JSON ---------------------------------------------------------- */

/*
 * A revision field of obj: a JSON string of decimal digits (how the
 * gateway writes int64), or a non-negative integer. A missing field is 0,
 * as proto3 leaves zero values out. Returns 0, or -1 for anything else.
 */
static int fg_etcd_int(const json_t *obj, const char *name, int64_t *out) {
    const json_t *v = json_object_get(obj, name);
    *out = 0;
    if (v == NULL)
        return 0;
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < 0)
            return -1;
        *out = (int64_t)i;
        return 0;
    }
    if (!json_is_string(v))
        return -1;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n == 0 || n > 19)
        return -1;
    int64_t r = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        int digit = s[i] - '0';
        if (r > (INT64_MAX - digit) / 10)
            return -1;
        r = r * 10 + digit;
    }
    *out = r;
    return 0;
}

/* A string field of obj (missing: ""). Returns 0, or -1 when not a string. */
static int fg_etcd_str(const json_t *obj, const char *name, const char **s, size_t *n) {
    const json_t *v = json_object_get(obj, name);
    *s = "";
    *n = 0;
    if (v == NULL)
        return 0;
    if (!json_is_string(v))
        return -1;
    *s = json_string_value(v);
    *n = json_string_length(v);
    return 0;
}

/* Whether a kv's (or event's) key is ours: base64 of the same bytes is the
 * same text. */
static int fg_etcd_is_our_key(const struct fg_etcd *e, const json_t *kv) {
    const char *k;
    size_t n;
    return fg_etcd_str(kv, "key", &k, &n) == 0 && n == strlen(e->key_b64) &&
           memcmp(k, e->key_b64, n) == 0;
}

/* ---- attempts ----------------------------------------------------------------------- */

/*
 * Decodes a value (base64) and loads it. Does not count: the caller has
 * begun the attempt and ends it with the code. Returns as
 * fg_runtime_load_json, FG_ETOOLONG, FG_EPARSE or FG_ENOMEM, with w.errors
 * filled.
 */
static int fg_etcd_load_value(struct fg_etcd *e, const char *b64, size_t n, int64_t rev) {
    size_t len = fg_b64_decoded_len(b64, n);
    if (len == SIZE_MAX) {
        fg__watch_error(
            &e->w, e->key,
            "malformed etcd answer: the value of revision %" PRId64 " is not base64", rev);
        return FG_EPARSE;
    }
    if (len > FG_CONFIG_MAX_BYTES) {
        fg__watch_error(&e->w, e->key,
                        "the value of revision %" PRId64 " is %zu bytes, over the bound of %u",
                        rev, len, (unsigned)FG_CONFIG_MAX_BYTES);
        return FG_ETOOLONG;
    }
    unsigned char *text = fg__malloc(len > 0 ? len : 1);
    if (text == NULL) {
        memset(&e->w.errors, 0, sizeof(e->w.errors));
        return FG_ENOMEM;
    }
    if (fg_b64_decode(b64, n, text) != 0) {
        fg__free(text);
        fg__watch_error(
            &e->w, e->key,
            "malformed etcd answer: the value of revision %" PRId64 " is not base64", rev);
        return FG_EPARSE;
    }
    int rc =
        fg_runtime_load_json(e->w.rt, e->w.registry, (const char *)text, len, &e->w.errors);
    fg__free(text);
    return rc;
}

/*
 * One attempt that ends with rc (w.errors filled by the caller); when it
 * loaded the value of revision rev, that revision is the one serving. The
 * revision is stored before fg__watch_end's release, so a reader of the
 * stats that sees the load also sees its revision. Returns FG_ETCD_STOP
 * when on_reload stopped the watcher, else FG_ETCD_NEXT.
 */
static int fg_etcd_finish(struct fg_etcd *e, int rc, int64_t rev) {
    if (rc == 0) {
        e->applied = rev;
        __atomic_store_n(&e->w.revision, (uint64_t)rev, __ATOMIC_RELAXED);
    }
    return fg__watch_end(&e->w, rc) ? FG_ETCD_STOP : FG_ETCD_NEXT;
}

/* An attempt that applies the value of a PUT. */
static int fg_etcd_apply(struct fg_etcd *e, const char *b64, size_t n, int64_t rev) {
    fg__watch_begin(&e->w);
    e->present = 1;
    return fg_etcd_finish(e, fg_etcd_load_value(e, b64, n, rev), rev);
}

/* A failed attempt: the key is gone; the old config keeps serving. */
static int fg_etcd_deleted(struct fg_etcd *e, int64_t rev) {
    fg__watch_begin(&e->w);
    e->present = 0;
    fg__watch_error(&e->w, e->key,
                    "key deleted at revision %" PRId64 "; the config of revision %" PRId64
                    " keeps serving",
                    rev, e->applied);
    return fg_etcd_finish(e, FG_ENOTFOUND, 0);
}

/* A failed attempt for a watch message that could not be used. */
static int fg_etcd_bad_answer(struct fg_etcd *e, int rc, const char *what) {
    fg__watch_begin(&e->w);
    fg__watch_error(&e->w, e->key, "%s: %s",
                    rc == FG_EPARSE ? "malformed etcd watch message" : "etcd watch message",
                    what);
    return fg_etcd_finish(e, rc, 0);
}

/* ---- transfers ------------------------------------------------------------------------ */

/* Makes room for n more bytes in e->buf, up to FG_ETCD_MESSAGE_MAX.
 * Returns 0, or -1 with overflow or nomem set. */
static int fg_etcd_reserve(struct fg_etcd *e, size_t n) {
    if (n > FG_ETCD_MESSAGE_MAX - e->len) {
        e->overflow = 1;
        return -1;
    }
    if (e->len + n <= e->cap)
        return 0;
    size_t cap = e->cap ? e->cap : 16384;
    while (cap < e->len + n)
        cap = cap > FG_ETCD_MESSAGE_MAX / 2 ? FG_ETCD_MESSAGE_MAX : cap * 2;
    char *b = fg__malloc(cap);
    if (b == NULL) {
        e->nomem = 1;
        return -1;
    }
    if (e->len > 0)
        memcpy(b, e->buf, e->len);
    fg__free(e->buf);
    e->buf = b;
    e->cap = cap;
    return 0;
}

static int fg_etcd_message(struct fg_etcd *e, const char *line, size_t n);

/*
 * One piece of a streamed body: complete lines are messages, handled as
 * they complete; a partial one waits in e->buf. A line that starts in
 * e->buf is completed there; one that starts and ends in the piece is read
 * in place. Returns 0, or -1 to end the transfer (e->action says why, or
 * overflow / nomem).
 */
static int fg_etcd_stream(struct fg_etcd *e, const char *p, size_t n) {
    while (n > 0) {
        if (fg__watch_stopping(&e->w))
            return -1; /* no further attempt once fg_watch_stop has begun */
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;
        if (nl == NULL || e->len > 0) {
            if (fg_etcd_reserve(e, take) != 0)
                return -1;
            memcpy(e->buf + e->len, p, take);
            e->len += take;
        }
        if (nl == NULL)
            return 0;
        if (e->len == 0 && take > FG_ETCD_MESSAGE_MAX) {
            e->overflow = 1; /* a whole line in one piece, yet over the bound */
            return -1;
        }
        int next =
            e->len > 0 ? fg_etcd_message(e, e->buf, e->len) : fg_etcd_message(e, p, take);
        e->len = 0;
        if (next != FG_ETCD_NEXT) {
            e->action = next;
            return -1;
        }
        p += take + 1;
        n -= take + 1;
    }
    return 0;
}

static size_t fg_etcd_on_data(char *ptr, size_t size, size_t nmemb, void *arg) {
    struct fg_etcd *e = arg;
    size_t n = size * nmemb;
    if (e->mode == FG_ETCD_READ) {
        if (fg_etcd_reserve(e, n) != 0)
            return 0; /* ends the transfer: CURLE_WRITE_ERROR */
        memcpy(e->buf + e->len, ptr, n);
        e->len += n;
        return n;
    }
    if (e->status == 0)
        (void)curl_easy_getinfo(e->easy, CURLINFO_RESPONSE_CODE, &e->status);
    if (e->status != 200)
        return 0; /* not a stream: reconnect */
    return fg_etcd_stream(e, ptr, n) == 0 ? n : 0;
}

/* Forgets the last transfer's body; a large buffer goes back. */
static void fg_etcd_reset_buf(struct fg_etcd *e) {
    e->len = 0;
    if (e->cap > FG_ETCD_BUF_KEEP) {
        fg__free(e->buf);
        e->buf = NULL;
        e->cap = 0;
    }
}

/*
 * Sets up e->easy for a POST of body to url. A read is bounded by the
 * timeout as a whole; a stream only while connecting, with TCP keepalive
 * so that a peer that vanished without a word is noticed.
 */
static int fg_etcd_setup(struct fg_etcd *e, const char *url, const char *body,
                         enum fg_etcd_mode mode) {
    CURL *h = e->easy;
    curl_easy_reset(h);
    e->mode = mode;
    e->status = 0;
    e->overflow = 0;
    e->nomem = 0;
    e->created = 0;
    e->action = FG_ETCD_NEXT;
    fg_etcd_reset_buf(e);
    e->curl_err[0] = '\0';
    CURLcode c = curl_easy_setopt(h, CURLOPT_URL, url);
    if (c == CURLE_OK)
        c = curl_easy_setopt(h, CURLOPT_COPYPOSTFIELDS, body);
    if (c == CURLE_OK)
        c = curl_easy_setopt(h, CURLOPT_HTTPHEADER, e->headers);
    if (c == CURLE_OK)
        c = curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, fg_etcd_on_data);
    if (c == CURLE_OK)
        c = curl_easy_setopt(h, CURLOPT_WRITEDATA, e);
    if (c == CURLE_OK)
        c = curl_easy_setopt(h, CURLOPT_ERRORBUFFER, e->curl_err);
    if (c == CURLE_OK)
        c = curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (c == CURLE_OK)
        c = curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, e->timeout_ms);
    if (c == CURLE_OK && mode == FG_ETCD_READ)
        c = curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, e->timeout_ms);
    if (c == CURLE_OK && mode == FG_ETCD_STREAM) {
        c = curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
        if (c == CURLE_OK)
            c = curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, (long)FG_ETCD_KEEPIDLE_S);
        if (c == CURLE_OK)
            c = curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, (long)FG_ETCD_KEEPINTVL_S);
    }
    if (c == CURLE_OK) {
#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85: the string form */
        c = curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
        c = curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    }
    if (c == CURLE_OK)
        return 0;
    fg__watch_error(&e->w, e->key, "cannot set up a request to %s: %s", e->endpoint,
                    curl_easy_strerror(c));
    return c == CURLE_OUT_OF_MEMORY ? FG_ENOMEM : FG_ESYS;
}

static uint64_t fg_etcd_now(void) {
    struct timespec ts;
    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * Runs the transfer set up on e->easy until it ends or fg_watch_stop
 * begins. A stream that has not said "created" within the timeout is ended
 * (CURLE_OPERATION_TIMEDOUT): etcd accepted the connection but does not
 * serve the watch. Returns 1 when stopped, else 0 with *result the
 * transfer's code.
 */
static int fg_etcd_run(struct fg_etcd *e, CURLcode *result) {
    *result = CURLE_OK;
    if (curl_multi_add_handle(e->multi, e->easy) != CURLM_OK) {
        *result = CURLE_OUT_OF_MEMORY;
        return 0;
    }
    uint64_t now = fg_etcd_now();
    uint64_t created_by =
        now + (e->timeout_ns < UINT64_MAX - now ? e->timeout_ns : UINT64_MAX - now);
    int stopped = 0, done = 0;
    while (!done) {
        if (fg__watch_stopping(&e->w)) {
            stopped = 1;
            break;
        }
        int running = 0;
        CURLMcode mc = curl_multi_perform(e->multi, &running);
        if (mc != CURLM_OK) {
            *result = mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT;
            break;
        }
        int left;
        CURLMsg *m;
        while ((m = curl_multi_info_read(e->multi, &left)) != NULL) {
            if (m->msg == CURLMSG_DONE) {
                *result = m->data.result;
                done = 1;
            }
        }
        if (done || running == 0)
            break;
        int wait_ms = FG_ETCD_POLL_MS;
        if (e->mode == FG_ETCD_STREAM && !e->created) {
            now = fg_etcd_now();
            if (now >= created_by) {
                *result = CURLE_OPERATION_TIMEDOUT;
                break;
            }
            uint64_t left_ms = (created_by - now + 999999) / 1000000;
            if (left_ms < (uint64_t)wait_ms)
                wait_ms = (int)left_ms;
        }
        /* Waits for the socket, curl's own timers, or curl_multi_wakeup. */
        mc = curl_multi_poll(e->multi, NULL, 0, wait_ms, NULL);
        if (mc != CURLM_OK) {
            *result = CURLE_FAILED_INIT;
            break;
        }
    }
    (void)curl_multi_remove_handle(e->multi, e->easy);
    return stopped;
}

/* What a read of the key found. */
struct fg_etcd_read {
    int rc;          /* 0, or the attempt's code (w.errors filled) */
    int stopped;     /* fg_watch_stop began */
    int reached;     /* etcd answered (rc may still be an HTTP error) */
    int64_t rev;     /* the header revision: the key's state is as of it */
    int present;     /* the key exists */
    int64_t mod_rev; /* its mod_revision */
    json_t *root;    /* owns value */
    const char *value;
    size_t value_len;
};

/* Parses a range answer into r (the key, or its absence). Returns 0 or
 * FG_EPARSE with w.errors filled. */
static int fg_etcd_parse_range(struct fg_etcd *e, struct fg_etcd_read *r) {
    json_error_t jerr;
    r->root = json_loadb(e->buf ? e->buf : "", e->len, 0, &jerr);
    const json_t *header = json_object_get(r->root, "header");
    const json_t *kvs = json_object_get(r->root, "kvs");
    if (!json_is_object(r->root) || !json_is_object(header) ||
        fg_etcd_int(header, "revision", &r->rev) != 0 || r->rev <= 0 ||
        (kvs != NULL && !json_is_array(kvs))) {
        fg__watch_error(&e->w, e->key, "malformed etcd answer to a read of the key%s%s",
                        r->root == NULL ? ": " : "", r->root == NULL ? jerr.text : "");
        return FG_EPARSE;
    }
    size_t i;
    const json_t *kv;
    json_array_foreach(kvs, i, kv) {
        if (!json_is_object(kv) || !fg_etcd_is_our_key(e, kv))
            continue;
        if (fg_etcd_int(kv, "mod_revision", &r->mod_rev) != 0 || r->mod_rev <= 0 ||
            fg_etcd_str(kv, "value", &r->value, &r->value_len) != 0) {
            fg__watch_error(&e->w, e->key, "malformed etcd answer to a read of the key");
            return FG_EPARSE;
        }
        r->present = 1;
    }
    return 0;
}

/* An HTTP error's reason: etcd's "message" (or "error") when the body
 * has one. */
static void fg_etcd_http_error(struct fg_etcd *e, long status) {
    json_t *root = e->len > 0 ? json_loadb(e->buf, e->len, 0, NULL) : NULL;
    const json_t *m = json_object_get(root, "message");
    if (!json_is_string(m))
        m = json_object_get(root, "error");
    fg__watch_error(&e->w, e->key, "%s answered HTTP %ld%s%s", e->endpoint, status,
                    json_is_string(m) ? ": " : "",
                    json_is_string(m) ? json_string_value(m) : "");
    json_decref(root);
}

/*
 * Reads the key: POST /v3/kv/range. A body past the bound is cut off, and
 * a second read with keys_only learns the revisions, so that the caller can
 * report the value as too long once (rc FG_ETOOLONG, rev and mod_rev set).
 */
static void fg_etcd_read(struct fg_etcd *e, struct fg_etcd_read *r) {
    memset(r, 0, sizeof(*r));
    char body[64 + FG_ETCD_KEY_B64_MAX];
    for (int keys_only = 0; keys_only < 2; keys_only++) {
        (void)snprintf(body, sizeof(body), "{\"key\":\"%s\"%s}", e->key_b64,
                       keys_only ? ",\"keys_only\":true" : "");
        r->rc = fg_etcd_setup(e, e->url_range, body, FG_ETCD_READ);
        if (r->rc != 0)
            return;
        CURLcode c;
        if (fg_etcd_run(e, &c)) {
            r->stopped = 1;
            return;
        }
        if (e->nomem) {
            memset(&e->w.errors, 0, sizeof(e->w.errors));
            r->rc = FG_ENOMEM;
            return;
        }
        if (e->overflow) {
            if (keys_only) { /* cannot happen: no value, a short answer */
                fg__watch_error(&e->w, e->key, "etcd's answer is over %zu bytes",
                                (size_t)FG_ETCD_MESSAGE_MAX);
                r->rc = FG_ETOOLONG;
                return;
            }
            continue; /* learn the revision without the value */
        }
        if (c != CURLE_OK) {
            fg__watch_error(&e->w, e->key, "cannot read from %s: %s", e->endpoint,
                            e->curl_err[0] ? e->curl_err : curl_easy_strerror(c));
            r->rc = c == CURLE_OUT_OF_MEMORY ? FG_ENOMEM : FG_ESYS;
            return;
        }
        r->reached = 1;
        long status = 0;
        (void)curl_easy_getinfo(e->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status != 200) {
            fg_etcd_http_error(e, status);
            r->rc = FG_ESYS;
            return;
        }
        r->rc = fg_etcd_parse_range(e, r);
        if (r->rc == 0 && keys_only) {
            /* The value itself was past the bound: at least its base64. */
            fg__watch_error(&e->w, e->key,
                            "the value of revision %" PRId64 " is over the bound of %u bytes",
                            r->mod_rev, (unsigned)FG_CONFIG_MAX_BYTES);
            r->rc = FG_ETOOLONG;
        }
        return;
    }
}

static void fg_etcd_read_done(struct fg_etcd *e, struct fg_etcd_read *r) {
    json_decref(r->root);
    r->root = NULL;
    fg_etcd_reset_buf(e);
}

/* ---- the watch stream ------------------------------------------------------------------ */

/*
 * One message of the stream. Returns FG_ETCD_NEXT to read on, or what the
 * loop should do: RETRY for an error etcd reported (the stream is over),
 * RESYNC when the watch was canceled (its start revision compacted away) or
 * the message could not be used (a failed attempt, FG_EPARSE), STOP when
 * on_reload stopped the watcher.
 */
static int fg_etcd_message(struct fg_etcd *e, const char *line, size_t n) {
    if (n > 0 && line[n - 1] == '\r')
        n--;
    if (n == 0)
        return FG_ETCD_NEXT;
    json_error_t jerr;
    json_t *root = json_loadb(line, n, 0, &jerr);
    const json_t *result = json_object_get(root, "result");
    int next = FG_ETCD_NEXT;
    if (!json_is_object(result)) {
        if (json_is_object(root) && json_object_get(root, "error") != NULL)
            next = FG_ETCD_RETRY; /* etcd ended the stream: no leader, shutting down */
        else
            next = fg_etcd_bad_answer(e, FG_EPARSE,
                                      root == NULL ? jerr.text : "not a watch response") ==
                           FG_ETCD_STOP
                       ? FG_ETCD_STOP
                       : FG_ETCD_RESYNC;
        json_decref(root);
        return next;
    }
    int64_t compact = 0;
    const json_t *events = json_object_get(result, "events");
    int bad = fg_etcd_int(result, "compact_revision", &compact) != 0 ||
              (events != NULL && !json_is_array(events));
    /* The newest event for the key, after checking them all. */
    const json_t *last = NULL;
    int64_t last_rev = 0, top = 0;
    size_t i;
    const json_t *ev;
    json_array_foreach(events, i, ev) {
        const json_t *kv = json_object_get(ev, "kv");
        int64_t rev;
        const char *type;
        size_t tlen;
        if (bad || !json_is_object(kv) || fg_etcd_int(kv, "mod_revision", &rev) != 0 ||
            rev <= 0 || fg_etcd_str(ev, "type", &type, &tlen) != 0 ||
            (tlen != 0 && strcmp(type, "PUT") != 0 && strcmp(type, "DELETE") != 0)) {
            bad = 1;
            break;
        }
        if (rev > top)
            top = rev;
        if (fg_etcd_is_our_key(e, kv) && rev > e->seen && rev >= last_rev) {
            last = ev;
            last_rev = rev;
        }
    }
    if (bad) {
        json_decref(root);
        next = fg_etcd_bad_answer(e, FG_EPARSE, "an event or field of the wrong form");
        return next == FG_ETCD_STOP ? FG_ETCD_STOP : FG_ETCD_RESYNC;
    }
    if (!e->created && json_is_true(json_object_get(result, "created"))) {
        e->created = 1;
        e->created_at = fg_etcd_now();
    }
    if (last != NULL) {
        const json_t *kv = json_object_get(last, "kv");
        const char *type, *value;
        size_t tlen, vlen;
        (void)fg_etcd_str(last, "type", &type, &tlen);
        if (fg_etcd_str(kv, "value", &value, &vlen) != 0) {
            e->seen = top > e->seen ? top : e->seen;
            next = fg_etcd_bad_answer(e, FG_EPARSE, "a value that is not a string");
            json_decref(root);
            return next == FG_ETCD_STOP ? FG_ETCD_STOP : FG_ETCD_RESYNC;
        }
        e->seen = top > e->seen ? top : e->seen;
        next = tlen != 0 && strcmp(type, "DELETE") == 0
                   ? fg_etcd_deleted(e, last_rev)
                   : fg_etcd_apply(e, value, vlen, last_rev);
    } else if (top > e->seen) {
        e->seen = top;
    }
    if (next == FG_ETCD_NEXT &&
        (compact > 0 || json_is_true(json_object_get(result, "canceled"))))
        next = FG_ETCD_RESYNC; /* seen + 1 is gone: read the key afresh */
    json_decref(root);
    return next;
}

/* Opens a watch stream from seen + 1 and follows it until it ends. */
static int fg_etcd_watch(struct fg_etcd *e) {
    char body[96 + FG_ETCD_KEY_B64_MAX];
    (void)snprintf(body, sizeof(body),
                   "{\"create_request\":{\"key\":\"%s\",\"start_revision\":\"%" PRId64 "\"}}",
                   e->key_b64, e->seen + 1);
    if (fg_etcd_setup(e, e->url_watch, body, FG_ETCD_STREAM) != 0)
        return FG_ETCD_RETRY;
    CURLcode c;
    if (fg_etcd_run(e, &c))
        return FG_ETCD_STOP;
    int next = e->action;
    if (next == FG_ETCD_NEXT && e->nomem)
        next = FG_ETCD_RESYNC; /* a message was lost */
    if (next == FG_ETCD_NEXT && e->overflow) {
        char what[96];
        (void)snprintf(what, sizeof(what),
                       "over the bound of %zu bytes; reading the key afresh",
                       (size_t)FG_ETCD_MESSAGE_MAX);
        next = fg_etcd_bad_answer(e, FG_ETOOLONG, what) == FG_ETCD_STOP ? FG_ETCD_STOP
                                                                        : FG_ETCD_RESYNC;
    }
    fg_etcd_reset_buf(e);
    return next == FG_ETCD_NEXT ? FG_ETCD_RETRY : next;
}

/*
 * Reads the key afresh (after a compaction or an unusable message) and
 * acts on what is new: a value of a later revision is applied, a key gone
 * since is reported as deleted, a value over the bound as too long.
 * Returns NEXT, RETRY (etcd unreachable: nothing counted) or STOP.
 */
static int fg_etcd_resync(struct fg_etcd *e) {
    struct fg_etcd_read r;
    fg_etcd_read(e, &r);
    int next = FG_ETCD_NEXT;
    if (r.stopped) {
        next = FG_ETCD_STOP;
    } else if (r.rc == FG_ESYS || (r.rc == FG_ENOMEM && !r.reached)) {
        next = FG_ETCD_RETRY;
    } else if (r.rc == FG_ETOOLONG) {
        e->present = r.present;
        if (r.mod_rev > e->seen) {
            fg__watch_begin(&e->w);
            next = fg_etcd_finish(e, FG_ETOOLONG, 0);
        }
    } else if (r.rc != 0) {
        fg__watch_begin(&e->w);
        next = fg_etcd_finish(e, r.rc, 0);
        if (next == FG_ETCD_NEXT)
            next = FG_ETCD_RETRY;
        fg_etcd_read_done(e, &r);
        return next;
    } else if (r.present && r.mod_rev > e->seen) {
        next = fg_etcd_apply(e, r.value, r.value_len, r.mod_rev);
    } else if (!r.present && e->present) {
        next = fg_etcd_deleted(e, r.rev);
    }
    if (r.rev > e->seen)
        e->seen = r.rev;
    fg_etcd_read_done(e, &r);
    return next;
}

/* ---- the thread ------------------------------------------------------------------------ */

/* The wait before the next reconnection: the backoff less up to half of it
 * at random, so that many instances do not reconnect in step; then the
 * backoff doubles. Returns NEXT or STOP. */
static int fg_etcd_pause(struct fg_etcd *e) {
    uint64_t d = e->delay_ns;
    d -= fg__random_u64() % (d / 2 + 1);
    e->delay_ns = e->delay_ns > e->backoff_max_ns / 2 ? e->backoff_max_ns : e->delay_ns * 2;
    uint64_t now = fg_etcd_now();
    uint64_t due = now + d;
    for (;;) {
        if (fg__watch_stopping(&e->w))
            return FG_ETCD_STOP;
        if (now >= due)
            return FG_ETCD_NEXT;
        uint64_t ms = (due - now + 999999) / 1000000;
        /* No transfer is attached: this waits for the time or a wakeup. */
        (void)curl_multi_poll(e->multi, NULL, 0, ms > INT_MAX ? INT_MAX : (int)ms, NULL);
        now = fg_etcd_now();
    }
}

static void fg_etcd_destroy(struct fg_watch *base);

static void *fg_etcd_main(void *arg) {
    struct fg_etcd *e = arg;
    int resync = 0, wait = 0;
    for (;;) {
        if (wait) {
            if (fg_etcd_pause(e) == FG_ETCD_STOP)
                break;
            __atomic_fetch_add(&e->w.reconnects, 1, __ATOMIC_RELAXED);
        }
        wait = 1;
        if (resync) {
            int r = fg_etcd_resync(e);
            if (r == FG_ETCD_STOP)
                break;
            if (r == FG_ETCD_RETRY)
                continue;
            resync = 0;
        }
        int next = fg_etcd_watch(e);
        if (next == FG_ETCD_STOP)
            break;
        /* A stream that etcd served for a while starts the backoff over; one
         * that ended soon after it began does not, so that a server that
         * accepts watches and drops them at once is not hammered. */
        if (e->created && fg_etcd_now() - e->created_at >= e->backoff_max_ns)
            e->delay_ns = e->backoff_min_ns;
        if (next == FG_ETCD_RESYNC)
            resync = 1;
    }
    if (e->w.stop_in_callback)
        fg_etcd_destroy(&e->w); /* the thread is detached: nobody joins it */
    return NULL;
}

/* ---- the handle ------------------------------------------------------------------------ */

static void fg_etcd_wake(struct fg_watch *base) {
    struct fg_etcd *e = (struct fg_etcd *)base;
    (void)curl_multi_wakeup(e->multi);
}

static void fg_etcd_destroy(struct fg_watch *base) {
    struct fg_etcd *e = (struct fg_etcd *)base;
    int saved = errno;
    if (e->easy != NULL)
        curl_easy_cleanup(e->easy);
    if (e->multi != NULL)
        (void)curl_multi_cleanup(e->multi);
    curl_slist_free_all(e->headers);
    fg__free(e->buf);
    fg__free(e->endpoint);
    fg__free(e->url_range);
    fg__free(e->url_watch);
    fg__free(e->key);
    fg__free(e->key_b64);
    fg__free(e);
    errno = saved;
}

static const struct fg__watch_ops fg_etcd_ops = {fg_etcd_wake, fg_etcd_destroy};

static pthread_once_t fg_etcd_once = PTHREAD_ONCE_INIT;
static CURLcode fg_etcd_global;

static void fg_etcd_global_init(void) {
    fg_etcd_global = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/*
 * Whether endpoint is an http:// or https:// URL with a host, and nothing
 * libcurl would take for more than the base of our paths: no query, no
 * fragment, no spaces or control bytes.
 */
static int fg_etcd_endpoint_ok(const char *s, size_t len) {
    size_t skip;
    if (len >= 7 && strncmp(s, "http://", 7) == 0)
        skip = 7;
    else if (len >= 8 && strncmp(s, "https://", 8) == 0)
        skip = 8;
    else
        return 0;
    if (skip == len || s[skip] == '/')
        return 0; /* no host */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f || c == '?' || c == '#')
            return 0;
    }
    return 1;
}

/* base + tail, NUL-terminated, or NULL. */
static char *fg_etcd_join(const char *base, size_t blen, const char *tail) {
    size_t tlen = strlen(tail);
    char *s = fg__malloc(blen + tlen + 1);
    if (s != NULL) {
        memcpy(s, base, blen);
        memcpy(s + blen, tail, tlen + 1);
    }
    return s;
}

int fg_etcd_available(void) { return 1; }

int fg_runtime_watch_etcd(fg_runtime *rt, const fg_registry *registry, const char *endpoint,
                          const char *key, const fg_watch_options *opts, fg_watch **out) {
    if (out != NULL)
        *out = NULL;
    if (rt == NULL || registry == NULL || endpoint == NULL || key == NULL || out == NULL)
        return FG_EINVAL;
    size_t elen = strnlen(endpoint, FG_ETCD_ENDPOINT_MAX + 1);
    size_t klen = strnlen(key, FG_ETCD_KEY_MAX + 1);
    if (elen > FG_ETCD_ENDPOINT_MAX || klen > FG_ETCD_KEY_MAX)
        return FG_ETOOLONG;
    if (klen == 0 || !fg_etcd_endpoint_ok(endpoint, elen))
        return FG_EINVAL;
    while (elen > 0 && endpoint[elen - 1] == '/')
        elen--;
    (void)pthread_once(&fg_etcd_once, fg_etcd_global_init);
    if (fg_etcd_global != CURLE_OK)
        return fg_etcd_global == CURLE_OUT_OF_MEMORY ? FG_ENOMEM : FG_ESYS;

    struct fg_etcd *e = fg__calloc(1, sizeof(*e));
    if (e == NULL)
        return FG_ENOMEM;
    fg__watch_init(&e->w, &fg_etcd_ops, rt, registry, opts);
    uint64_t timeout = opts && opts->timeout_ns ? opts->timeout_ns : FG_ETCD_TIMEOUT_NS;
    e->timeout_ns = timeout;
    uint64_t ms = timeout / 1000000u + (timeout % 1000000u != 0);
    e->timeout_ms = ms > LONG_MAX ? LONG_MAX : (long)ms;
    e->backoff_min_ns =
        opts && opts->backoff_min_ns ? opts->backoff_min_ns : FG_ETCD_BACKOFF_MIN_NS;
    e->backoff_max_ns =
        opts && opts->backoff_max_ns ? opts->backoff_max_ns : FG_ETCD_BACKOFF_MAX_NS;
    if (e->backoff_max_ns < e->backoff_min_ns)
        e->backoff_max_ns = e->backoff_min_ns;
    e->delay_ns = e->backoff_min_ns;
    e->endpoint = fg__strndup(endpoint, elen);
    e->url_range = fg_etcd_join(endpoint, elen, "/v3/kv/range");
    e->url_watch = fg_etcd_join(endpoint, elen, "/v3/watch");
    e->key = fg__strndup(key, klen);
    e->key_b64 = fg_b64_encode((const unsigned char *)key, klen);
    e->multi = curl_multi_init();
    e->easy = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    e->headers = h ? curl_slist_append(h, "Expect:") : NULL;
    if (e->headers == NULL)
        curl_slist_free_all(h);
    if (e->endpoint == NULL || e->url_range == NULL || e->url_watch == NULL ||
        e->key == NULL || e->key_b64 == NULL || e->multi == NULL || e->easy == NULL ||
        e->headers == NULL) {
        fg_etcd_destroy(&e->w);
        return FG_ENOMEM;
    }

    /* The first load: an attempt whatever its outcome, as a file's is. */
    struct fg_etcd_read r;
    fg__watch_begin(&e->w);
    fg_etcd_read(e, &r);
    int rc = r.rc;
    if (rc == 0 && !r.present) {
        fg__watch_error(&e->w, e->key, "no such key in %s (revision %" PRId64 ")", e->endpoint,
                        r.rev);
        rc = FG_ENOTFOUND;
    }
    if (rc == 0)
        rc = fg_etcd_load_value(e, r.value, r.value_len, r.mod_rev);
    if (rc == 0)
        e->present = 1;
    (void)fg_etcd_finish(e, rc, r.mod_rev);
    e->seen = r.rev;
    fg_etcd_read_done(e, &r);
    if (rc == 0)
        rc = fg__watch_start(&e->w, fg_etcd_main);
    if (rc != 0) {
        fg_etcd_destroy(&e->w);
        return rc;
    }
    *out = &e->w;
    return 0;
}

#endif /* FG_HAVE_CURL */
