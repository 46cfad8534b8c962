/*
 * lib/errval.c - fg_error values: an error code with its message, trace,
 * retry count, rejecting stage and cause chain, and its JSON log line.
 *
 * An error is one allocation: the struct, then its message and stage name.
 * Constructors never hand back NULL for a real error: out of memory gives
 * a shared static error whose code is FG_ENOMEM, which setters and
 * fg_error_free leave alone. The log line is built with jansson (which
 * escapes strings correctly) and dumped into the caller's buffer.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "floodgate/ctx.h"
#include "floodgate/error.h"
#include "floodgate/stage.h"

#include "alloc.h"
#include "internal.h"

struct fg_error {
    int code;
    int has_trace;
    uint32_t retry_count;
    uint64_t retry_after_ns;
    uint8_t trace_id[16];
    uint8_t span_id[8];
    const char *message; /* in the same allocation */
    const char *stage;   /* in the same allocation, or NULL */
    fg_error *cause;     /* owned */
};

static fg_error fg_error_oom = {FG_ENOMEM, 0, 0, 0, {0}, {0}, "out of memory", NULL, NULL};

/* A new error with message fmt/ap (NULL fmt: fg_strerror(code)) and room for
 * a stage name of stage_len bytes (copied from stage when not NULL). */
static fg_error *fg_error_alloc(int code, const char *stage, const char *fmt, va_list ap) {
    char stack[256];
    const char *msg = stack;
    size_t msg_len;
    if (fmt == NULL) {
        msg = fg_strerror(code);
        msg_len = strlen(msg);
    } else {
        va_list ap2;
        va_copy(ap2, ap);
        int n = vsnprintf(stack, sizeof(stack), fmt, ap2);
        va_end(ap2);
        msg_len = n < 0 ? 0 : (size_t)n;
        if (msg_len >= FG_ERROR_MESSAGE_MAX)
            msg_len = FG_ERROR_MESSAGE_MAX - 1; /* cut: the bound is the point */
        if (n < 0)
            stack[0] = '\0';
    }
    size_t stage_len = stage ? strlen(stage) : 0;
    fg_error *e = fg__malloc(sizeof(*e) + msg_len + 1 + (stage ? stage_len + 1 : 0));
    if (e == NULL)
        return NULL;
    memset(e, 0, sizeof(*e));
    char *text = (char *)(e + 1);
    if (fmt != NULL && msg_len >= sizeof(stack))
        (void)vsnprintf(text, msg_len + 1, fmt, ap); /* longer than the stack copy */
    else
        memcpy(text, msg, msg_len);
    text[msg_len] = '\0';
    e->message = text;
    if (stage != NULL) {
        char *s = text + msg_len + 1;
        memcpy(s, stage, stage_len + 1);
        e->stage = s;
    }
    e->code = code;
    return e;
}

fg_error *fg_error_new(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fg_error *e = fg_error_alloc(code, NULL, fmt, ap);
    va_end(ap);
    return e ? e : &fg_error_oom;
}

fg_error *fg_error_wrap(fg_error *cause, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fg_error *e = fg_error_alloc(code, cause ? cause->stage : NULL, fmt, ap);
    va_end(ap);
    if (e == NULL)
        return cause ? cause : &fg_error_oom;
    if (cause != NULL) {
        e->has_trace = cause->has_trace;
        memcpy(e->trace_id, cause->trace_id, sizeof(e->trace_id));
        memcpy(e->span_id, cause->span_id, sizeof(e->span_id));
        e->retry_count = cause->retry_count;
        e->retry_after_ns = cause->retry_after_ns;
        e->cause = cause;
    }
    return e;
}

/* fg_error_alloc with a ready message (no format string to interpret). */
static fg_error *fg_error_with(int code, const char *stage, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fg_error *e = fg_error_alloc(code, stage, fmt, ap);
    va_end(ap);
    return e;
}

fg_error *fg_error_from_ctx(const struct fg_ctx *ctx) {
    if (ctx == NULL || ctx->status == 0)
        return NULL;
    const char *stage = ctx->rejected_by ? fg_stage_name(ctx->rejected_by) : NULL;
    fg_error *e = stage ? fg_error_with(ctx->status, stage, "rejected by stage '%s': %s",
                                        stage, fg_strerror(ctx->status))
                        : fg_error_with(ctx->status, NULL, "%s", fg_strerror(ctx->status));
    if (e == NULL)
        return &fg_error_oom;
    if (ctx->trace.valid)
        fg_error_set_trace(e, ctx->trace.trace_id, ctx->trace.span_id);
    e->retry_count = ctx->retry_count;
    e->retry_after_ns = ctx->retry_after_ns;
    return e;
}

void fg_error_set_trace(fg_error *err, const uint8_t trace_id[16], const uint8_t span_id[8]) {
    if (err == NULL || err == &fg_error_oom)
        return;
    if (trace_id == NULL || fg__all_zero(trace_id, 16)) {
        err->has_trace = 0;
        memset(err->trace_id, 0, sizeof(err->trace_id));
        memset(err->span_id, 0, sizeof(err->span_id));
        return;
    }
    err->has_trace = 1;
    memcpy(err->trace_id, trace_id, sizeof(err->trace_id));
    if (span_id != NULL)
        memcpy(err->span_id, span_id, sizeof(err->span_id));
    else
        memset(err->span_id, 0, sizeof(err->span_id));
}

void fg_error_set_retry_count(fg_error *err, uint32_t retry_count) {
    if (err != NULL && err != &fg_error_oom)
        err->retry_count = retry_count;
}

int fg_error_code(const fg_error *err) { return err ? err->code : 0; }
const char *fg_error_message(const fg_error *err) { return err ? err->message : ""; }
const fg_error *fg_error_cause(const fg_error *err) { return err ? err->cause : NULL; }
uint32_t fg_error_retry_count(const fg_error *err) { return err ? err->retry_count : 0; }
uint64_t fg_error_retry_after_ns(const fg_error *err) { return err ? err->retry_after_ns : 0; }
const char *fg_error_stage(const fg_error *err) { return err ? err->stage : NULL; }

int fg_error_trace(const fg_error *err, uint8_t trace_id[16], uint8_t span_id[8]) {
    if (err == NULL || !err->has_trace)
        return FG_ENOTFOUND;
    if (trace_id != NULL)
        memcpy(trace_id, err->trace_id, 16);
    if (span_id != NULL)
        memcpy(span_id, err->span_id, 8);
    return 0;
}

int fg_error_has(const fg_error *err, int code) {
    /* The chain is finite (each error owns its cause, so no cycles). */
    for (; err != NULL; err = err->cause)
        if (err->code == code)
            return 1;
    return 0;
}

void fg_error_free(fg_error *err) {
    while (err != NULL && err != &fg_error_oom) {
        fg_error *cause = err->cause;
        fg__free(err);
        err = cause;
    }
}

/* ---- the log line ------------------------------------------------------------- */

/* A JSON string for s, which may not be UTF-8 (messages carry user text):
 * invalid bytes become '?' rather than losing the field. */
static json_t *fg_json_text(const char *s) {
    json_t *j = json_string(s);
    if (j != NULL)
        return j;
    size_t n = strlen(s);
    char *copy = fg__malloc(n + 1);
    if (copy == NULL)
        return NULL;
    for (size_t i = 0; i <= n; i++) {
        copy[i] = s[i];
        if ((unsigned char)s[i] >= 0x80)
            copy[i] = '?';
    }
    j = json_string(copy);
    fg__free(copy);
    return j;
}

/* obj[key] = value, stealing value; 0 or -1 (value freed). */
static int fg_json_put(json_t *obj, const char *key, json_t *value) {
    return value != NULL && json_object_set_new(obj, key, value) == 0 ? 0 : -1;
}

static int fg_json_hex(json_t *obj, const char *key, const uint8_t *id, size_t n) {
    char hex[33];
    fg__tohex(id, n, hex);
    hex[2 * n] = '\0';
    return fg_json_put(obj, key, json_string(hex));
}

static json_t *fg_error_json(const fg_error *err, const char *level) {
    json_t *obj = json_object();
    if (obj == NULL)
        return NULL;
    int bad = 0;
    bad |= fg_json_put(obj, "level", fg_json_text(level ? level : "error"));
    bad |= fg_json_put(obj, "msg", fg_json_text(err->message));
    bad |= fg_json_put(obj, "code", json_string(fg_err_name(err->code)));
    if (err->has_trace) {
        bad |= fg_json_hex(obj, "trace_id", err->trace_id, 16);
        bad |= fg_json_hex(obj, "span_id", err->span_id, 8);
    }
    bad |= fg_json_put(obj, "retry", json_integer(err->retry_count));
    if (err->stage != NULL)
        bad |= fg_json_put(obj, "stage", fg_json_text(err->stage));
    if (err->retry_after_ns > 0) {
        uint64_t ms = (err->retry_after_ns + 999999) / 1000000; /* round up: never too early */
        bad |= fg_json_put(obj, "retry_after_ms", json_integer((json_int_t)ms));
    }
    if (err->cause != NULL) {
        json_t *causes = json_array();
        bad |= causes == NULL;
        uint32_t listed = 0, omitted = 0;
        for (const fg_error *c = err->cause; c != NULL && causes != NULL; c = c->cause) {
            if (listed == FG_ERROR_LOG_CAUSES) {
                omitted++;
                continue;
            }
            json_t *one = json_object();
            bad |= one == NULL;
            if (one != NULL) {
                bad |= fg_json_put(one, "code", json_string(fg_err_name(c->code)));
                bad |= fg_json_put(one, "msg", fg_json_text(c->message));
                bad |= json_array_append_new(causes, one) != 0;
            }
            listed++;
        }
        bad |= fg_json_put(obj, "causes", causes);
        if (omitted > 0)
            bad |= fg_json_put(obj, "causes_omitted", json_integer(omitted));
    }
    if (bad) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

int fg_error_log_json(const fg_error *err, const char *level, char *buf, size_t cap,
                      size_t *len) {
    if (len != NULL)
        *len = 0;
    if (err == NULL || buf == NULL)
        return FG_EINVAL;
    if (cap > 0)
        buf[0] = '\0';
    json_t *obj = fg_error_json(err, level);
    if (obj == NULL)
        return FG_ENOMEM;
    size_t need = json_dumpb(obj, buf, cap, JSON_COMPACT);
    json_decref(obj);
    if (need == 0)
        return FG_ENOMEM;
    if (need >= cap) {
        if (cap > 0)
            buf[0] = '\0';
        return FG_ETOOLONG;
    }
    buf[need] = '\0';
    if (len != NULL)
        *len = need;
    return 0;
}
