/*
 * tests/check_errval.c - error values (floodgate/error.h, "error values"):
 * fg_error_new / _wrap / _from_ctx, the setters and NULL-tolerant getters,
 * the cause chain, the JSON log line and out-of-memory behaviour.
 *
 * Every log line is parsed back with jansson (json_loads, duplicate keys
 * refused) and checked field by field, so the test does not depend on the
 * order of keys or on how a string is escaped, only on what it means.
 * fg_error_from_ctx is fed by real chains on a fake clock: a trace stage,
 * then a "gate" stage of our own that rejects or asks for retries.
 * Out of memory uses the allocator hook (as tests/check_alloc.c does): an
 * allocator that fails every call, or only the Nth, and counts what it hands
 * out so a leak shows as allocations without frees.
 *
 * Tests marked "LIB DISAGREES" say what the header promises and what
 * lib/errval.c did instead.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>
#include <jansson.h>

#include "helpers.h"
#include "suites.h"

/* ---- helpers ------------------------------------------------------------------------- */

#define T0 UINT64_C(7000000000)

#define TID "4bf92f3577b34da6a3ce929d0e0e4736"
#define PID "00f067aa0ba902b7"
#define SID "a3ce929d0e0e4736"

#define LOG_BUF    16384
#define CANARY     0x5A
#define MSG_FILLER 'm'

/*
 * Write err's log line into a fresh buffer, check the length contract and
 * that it is one compact line, and parse it back. The caller json_decrefs.
 */
static char logbuf[LOG_BUF];

static json_t *log_parse(const fg_error *err, const char *level) {
    size_t len = 999999;
    json_error_t je;
    json_t *j;

    memset(logbuf, 0xA5, sizeof(logbuf));
    ck_assert_int_eq(fg_error_log_json(err, level, logbuf, sizeof(logbuf), &len), 0);
    ck_assert_uint_eq(len, strlen(logbuf));
    ck_assert_uint_gt(len, 0);
    for (size_t i = 0; i < len; i++) {
        ck_assert_msg((unsigned char)logbuf[i] >= 0x20,
                      "raw control byte 0x%02x at %zu in the log line", logbuf[i], i);
    }
    j = json_loadb(logbuf, len, JSON_REJECT_DUPLICATES, &je);
    ck_assert_msg(j != NULL, "not JSON (%s at %d): %s", je.text, je.position, logbuf);
    ck_assert_msg(json_is_object(j), "not an object: %s", logbuf);
    return j;
}

static const char *jstr(const json_t *obj, const char *key) {
    const json_t *v = json_object_get(obj, key);
    ck_assert_msg(v != NULL, "no \"%s\" in %s", key, logbuf);
    ck_assert_msg(json_is_string(v), "\"%s\" is not a string in %s", key, logbuf);
    return json_string_value(v);
}

static json_int_t jint(const json_t *obj, const char *key) {
    const json_t *v = json_object_get(obj, key);
    ck_assert_msg(v != NULL, "no \"%s\" in %s", key, logbuf);
    ck_assert_msg(json_is_integer(v), "\"%s\" is not an integer in %s", key, logbuf);
    return json_integer_value(v);
}

static void jabsent(const json_t *obj, const char *key) {
    ck_assert_msg(json_object_get(obj, key) == NULL, "unexpected \"%s\" in %s", key, logbuf);
}

/* ---- a gate stage and a chain for fg_error_from_ctx ---------------------------------- */

typedef struct gate {
    int reject;
    uint64_t retry_after;
    int retries;
    int retried;
} gate;

static int gate_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    gate *g = state;
    (void)slot;
    if (g->reject != 0) {
        ctx->retry_after_ns = g->retry_after;
        return g->reject;
    }
    return 0;
}

static int gate_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    gate *g = state;
    (void)ctx;
    (void)outcome;
    (void)slot;
    if (g->retried < g->retries) {
        g->retried++;
        return FG_STAGE_RETRY;
    }
    return 0;
}

static const fg_stage_ops gate_ops = {"gate", gate_enter, gate_exit, NULL};

typedef struct cfx {
    fg_fake_clock *fc;
    fg_chain *chain;
    gate g;
    int h_ret;
} cfx;

/* A chain on a fake clock: the trace stage (when traced), then the gate. */
static void cfx_init(cfx *c, int traced) {
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    fg_stage *s = NULL;

    memset(c, 0, sizeof(*c));
    ck_assert_int_eq(fg_fake_clock_new(T0, &c->fc), 0);
    co.clock = fg_fake_clock_as_clock(c->fc);
    ck_assert_int_eq(fg_chain_new(&co, &c->chain), 0);
    if (traced) {
        fg_trace_options o = FG_TRACE_OPTIONS_INIT;
        ck_assert_int_eq(fg_stage_trace(&o, &s), 0);
        ck_assert_int_eq(fg_chain_use(c->chain, s), 0);
    }
    ck_assert_int_eq(fg_stage_new(&gate_ops, &c->g, "gate", &s), 0);
    ck_assert_int_eq(fg_chain_use(c->chain, s), 0);
}

static void cfx_free(cfx *c) {
    fg_chain_free(c->chain);
    fg_fake_clock_free(c->fc);
}

static int c_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    return ((cfx *)arg)->h_ret;
}

static int cfx_call(cfx *c, fg_ctx *ctx) {
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/orders"), 0);
    ck_assert_int_eq(fg_ctx_add_header(ctx, "traceparent", "00-" TID "-" PID "-01"), 0);
    return fg_chain_call(c->chain, ctx, c_handler, c);
}

/* ---- construction ---------------------------------------------------------------------- */

START_TEST(test_new_basic) {
    fg_error *e = fg_error_new(FG_ELIMITED, "limit %d for %s (%.2f)", 5, "api", 0.5);

    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(fg_error_code(e), FG_ELIMITED);
    ck_assert_str_eq(fg_error_message(e), "limit 5 for api (0.50)");
    ck_assert_ptr_null(fg_error_cause(e));
    ck_assert_int_eq(fg_error_trace(e, NULL, NULL), FG_ENOTFOUND);
    ck_assert_uint_eq(fg_error_retry_count(e), 0);
    ck_assert_uint_eq(fg_error_retry_after_ns(e), 0);
    ck_assert_ptr_null(fg_error_stage(e));
    ck_assert_int_eq(fg_error_has(e, FG_ELIMITED), 1);
    ck_assert_int_eq(fg_error_has(e, FG_EBREAKER), 0);
    fg_error_free(e);

    e = fg_error_new(FG_EINVAL, "%s", "");
    ck_assert_str_eq(fg_error_message(e), "");
    fg_error_free(e);
}
END_TEST

/* The message is copied: the caller's buffer may change. */
START_TEST(test_new_copies) {
    char buf[32];
    fg_error *e;

    snprintf(buf, sizeof(buf), "first");
    e = fg_error_new(FG_EPARSE, "%s", buf);
    snprintf(buf, sizeof(buf), "second");
    ck_assert_str_eq(fg_error_message(e), "first");
    fg_error_free(e);
}
END_TEST

/* NULL fmt: the code's fg_strerror, for every code in the table and others. */
static const int all_codes[] = {
#define CODE_(name, value, msg) FG_##name,
    FG_ERRNO_MAP(CODE_)
#undef CODE_
        - 999,
    -12345,
};

START_TEST(test_new_null_fmt) {
    int code = all_codes[_i];
    fg_error *e = fg_error_new(code, NULL);

    ck_assert_int_eq(fg_error_code(e), code);
    ck_assert_str_eq(fg_error_message(e), fg_strerror(code));
    fg_error_free(e);

    /* and the log line names the code as fg_err_name does */
    e = fg_error_new(code, "x");
    json_t *j = log_parse(e, NULL);
    ck_assert_str_eq(jstr(j, "code"), fg_err_name(code));
    json_decref(j);
    fg_error_free(e);
}
END_TEST

/* Messages are cut at FG_ERROR_MESSAGE_MAX bytes. */
START_TEST(test_message_truncated) {
    char *big = malloc(5 * FG_ERROR_MESSAGE_MAX);
    fg_error *e;
    size_t n;

    ck_assert_ptr_nonnull(big);
    for (int i = 0; i < 5 * FG_ERROR_MESSAGE_MAX - 1; i++) {
        big[i] = (char)('a' + i % 26);
    }
    big[5 * FG_ERROR_MESSAGE_MAX - 1] = '\0';

    e = fg_error_new(FG_EINVAL, "%s", big);
    n = strlen(fg_error_message(e));
    ck_assert_msg(n == FG_ERROR_MESSAGE_MAX || n == FG_ERROR_MESSAGE_MAX - 1,
                  "a %zu-byte message kept as %zu bytes", strlen(big), n);
    ck_assert(memcmp(fg_error_message(e), big, n) == 0);
    fg_error_free(e);

    /* cut the same way when it is made of several arguments */
    e = fg_error_new(FG_EINVAL, "%.*s%s", 1000, big, big + 1000);
    ck_assert_uint_eq(strlen(fg_error_message(e)), n);
    ck_assert(memcmp(fg_error_message(e), big, n) == 0);
    fg_error_free(e);

    /* and by wrap */
    e = fg_error_wrap(fg_error_new(FG_EINVAL, "inner"), FG_EHANDLER, "%s", big);
    ck_assert_uint_eq(strlen(fg_error_message(e)), n);
    ck_assert(memcmp(fg_error_message(e), big, n) == 0);
    fg_error_free(e);

    /* 1023 bytes always fit whole */
    big[FG_ERROR_MESSAGE_MAX - 1] = '\0';
    e = fg_error_new(FG_EINVAL, "%s", big);
    ck_assert_str_eq(fg_error_message(e), big);
    fg_error_free(e);
    free(big);
}
END_TEST

/* ---- wrapping -------------------------------------------------------------------------- */

START_TEST(test_wrap_chain) {
    fg_error *e1 = fg_error_new(FG_ETIMEDOUT, "db timeout after %d ms", 30);
    fg_error *e2 = fg_error_wrap(e1, FG_EHANDLER, "query %s failed", "q1");
    fg_error *e3 = fg_error_wrap(e2, FG_EREJECTED, NULL);

    ck_assert_ptr_ne(e2, e1);
    ck_assert_ptr_ne(e3, e2);
    ck_assert_ptr_eq(fg_error_cause(e3), e2);
    ck_assert_ptr_eq(fg_error_cause(e2), e1);
    ck_assert_ptr_null(fg_error_cause(e1));
    ck_assert_int_eq(fg_error_code(e3), FG_EREJECTED);
    ck_assert_int_eq(fg_error_code(e2), FG_EHANDLER);
    ck_assert_int_eq(fg_error_code(e1), FG_ETIMEDOUT);
    ck_assert_str_eq(fg_error_message(e3), fg_strerror(FG_EREJECTED));
    ck_assert_str_eq(fg_error_message(e2), "query q1 failed");
    ck_assert_str_eq(fg_error_message(e1), "db timeout after 30 ms");

    ck_assert_int_eq(fg_error_has(e3, FG_EREJECTED), 1);
    ck_assert_int_eq(fg_error_has(e3, FG_EHANDLER), 1);
    ck_assert_int_eq(fg_error_has(e3, FG_ETIMEDOUT), 1);
    ck_assert_int_eq(fg_error_has(e3, FG_ELIMITED), 0);
    ck_assert_int_eq(fg_error_has(e2, FG_EREJECTED), 0);
    ck_assert_int_eq(fg_error_has(e1, FG_EHANDLER), 0);
    ck_assert_int_eq(fg_error_has(e1, FG_ETIMEDOUT), 1);
    fg_error_free(e3); /* frees the chain: ASan / the OOM counters see leaks */
}
END_TEST

START_TEST(test_wrap_null_cause) {
    fg_error *e = fg_error_wrap(NULL, FG_ECANCELED, "gone %d", 1);

    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(fg_error_code(e), FG_ECANCELED);
    ck_assert_str_eq(fg_error_message(e), "gone 1");
    ck_assert_ptr_null(fg_error_cause(e));
    fg_error_free(e);
}
END_TEST

/* A wrap starts with the cause's trace and retry count; setting it later
 * changes only the wrapper. */
START_TEST(test_wrap_inherits) {
    uint8_t tid[16], sid[8], t2[16], s2[8], got_t[16], got_s[8];
    fg_error *e1 = fg_error_new(FG_ETIMEDOUT, "inner");
    fg_error *e2;

    th_unhex(TID, tid, 16);
    th_unhex(PID, sid, 8);
    th_unhex("0102030405060708090a0b0c0d0e0f10", t2, 16);
    th_unhex("1112131415161718", s2, 8);
    fg_error_set_trace(e1, tid, sid);
    fg_error_set_retry_count(e1, 3);
    e2 = fg_error_wrap(e1, FG_EHANDLER, "outer");
    ck_assert_int_eq(fg_error_trace(e2, got_t, got_s), 0);
    ck_assert_mem_eq(got_t, tid, 16);
    ck_assert_mem_eq(got_s, sid, 8);
    ck_assert_uint_eq(fg_error_retry_count(e2), 3);

    fg_error_set_trace(e2, t2, s2);
    fg_error_set_retry_count(e2, 9);
    ck_assert_int_eq(fg_error_trace(e1, got_t, got_s), 0);
    ck_assert_mem_eq(got_t, tid, 16);
    ck_assert_mem_eq(got_s, sid, 8);
    ck_assert_uint_eq(fg_error_retry_count(e1), 3);
    ck_assert_int_eq(fg_error_trace(e2, got_t, got_s), 0);
    ck_assert_mem_eq(got_t, t2, 16);
    ck_assert_uint_eq(fg_error_retry_count(e2), 9);
    fg_error_free(e2);
}
END_TEST

/* ---- setters and getters --------------------------------------------------------------- */

START_TEST(test_set_trace) {
    uint8_t tid[16], sid[8], zero16[16] = {0}, got_t[16], got_s[8];
    fg_error *e = fg_error_new(FG_EINVAL, "x");

    th_unhex(TID, tid, 16);
    th_unhex(SID, sid, 8);
    fg_error_set_trace(e, tid, sid);
    memset(got_t, 0xEE, 16);
    memset(got_s, 0xEE, 8);
    ck_assert_int_eq(fg_error_trace(e, got_t, got_s), 0);
    ck_assert_mem_eq(got_t, tid, 16);
    ck_assert_mem_eq(got_s, sid, 8);
    ck_assert_int_eq(fg_error_trace(e, NULL, got_s), 0);
    ck_assert_int_eq(fg_error_trace(e, got_t, NULL), 0);
    ck_assert_int_eq(fg_error_trace(e, NULL, NULL), 0);

    /* the caller's arrays are copied */
    tid[0] ^= 0xFF;
    ck_assert_int_eq(fg_error_trace(e, got_t, NULL), 0);
    ck_assert_uint_eq(got_t[0], (uint8_t)(tid[0] ^ 0xFF));
    tid[0] ^= 0xFF;

    /* NULL span: zero */
    fg_error_set_trace(e, tid, NULL);
    memset(got_s, 0xEE, 8);
    ck_assert_int_eq(fg_error_trace(e, got_t, got_s), 0);
    ck_assert_mem_eq(got_t, tid, 16);
    ck_assert(th_is_zero(got_s, 8));

    /* all-zero or NULL trace-id: detached */
    fg_error_set_trace(e, zero16, sid);
    ck_assert_int_eq(fg_error_trace(e, got_t, got_s), FG_ENOTFOUND);
    fg_error_set_trace(e, tid, sid);
    ck_assert_int_eq(fg_error_trace(e, NULL, NULL), 0);
    fg_error_set_trace(e, NULL, sid);
    ck_assert_int_eq(fg_error_trace(e, got_t, got_s), FG_ENOTFOUND);
    fg_error_free(e);
}
END_TEST

START_TEST(test_retry_count) {
    fg_error *e = fg_error_new(FG_EINVAL, "x");

    fg_error_set_retry_count(e, 7);
    ck_assert_uint_eq(fg_error_retry_count(e), 7);
    fg_error_set_retry_count(e, UINT32_MAX);
    ck_assert_uint_eq(fg_error_retry_count(e), UINT32_MAX);
    fg_error_set_retry_count(e, 0);
    ck_assert_uint_eq(fg_error_retry_count(e), 0);
    fg_error_free(e);
}
END_TEST

START_TEST(test_null_tolerant) {
    uint8_t tid[16], sid[8];
    char buf[64];
    size_t len = 0;

    th_unhex(TID, tid, 16);
    th_unhex(SID, sid, 8);
    ck_assert_int_eq(fg_error_code(NULL), 0);
    ck_assert_ptr_nonnull(fg_error_message(NULL));
    ck_assert_str_eq(fg_error_message(NULL), "");
    ck_assert_ptr_null(fg_error_cause(NULL));
    ck_assert_int_eq(fg_error_trace(NULL, tid, sid), FG_ENOTFOUND);
    ck_assert_int_eq(fg_error_trace(NULL, NULL, NULL), FG_ENOTFOUND);
    ck_assert_uint_eq(fg_error_retry_count(NULL), 0);
    ck_assert_uint_eq(fg_error_retry_after_ns(NULL), 0);
    ck_assert_ptr_null(fg_error_stage(NULL));
    ck_assert_int_eq(fg_error_has(NULL, FG_EINVAL), 0);
    ck_assert_int_eq(fg_error_has(NULL, 0), 0);
    fg_error_set_trace(NULL, tid, sid);
    fg_error_set_retry_count(NULL, 3);
    fg_error_free(NULL);
    ck_assert_ptr_null(fg_error_from_ctx(NULL));
    ck_assert_int_eq(fg_error_log_json(NULL, NULL, buf, sizeof(buf), &len), FG_EINVAL);

    fg_error *e = fg_error_new(FG_EINVAL, "x");
    ck_assert_int_eq(fg_error_log_json(e, NULL, NULL, sizeof(buf), &len), FG_EINVAL);
    ck_assert_int_eq(fg_error_log_json(e, NULL, buf, sizeof(buf), NULL),
                     0); /* len may be NULL */
    fg_error_free(e);
}
END_TEST

/* ---- fg_error_from_ctx ----------------------------------------------------------------- */

START_TEST(test_from_ctx_rejection) {
    cfx c;
    fg_ctx ctx;
    fg_error *e;
    uint8_t got_t[16], got_s[8];
    char tid_hex[33], sid_hex[17];

    cfx_init(&c, 1);
    c.g.reject = FG_ELIMITED;
    c.g.retry_after = 250 * FG_NS_PER_MS;
    ck_assert_int_eq(cfx_call(&c, &ctx), FG_ELIMITED);
    ck_assert_int_ne(ctx.trace.valid, 0);
    e = fg_error_from_ctx(&ctx);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(fg_error_code(e), FG_ELIMITED);
    ck_assert_str_eq(fg_error_message(e), "rejected by stage 'gate': rate limited");
    ck_assert_ptr_nonnull(fg_error_stage(e));
    ck_assert_str_eq(fg_error_stage(e), "gate");
    ck_assert_uint_eq(fg_error_retry_after_ns(e), 250 * FG_NS_PER_MS);
    ck_assert_uint_eq(fg_error_retry_count(e), 0);
    ck_assert_int_eq(fg_error_trace(e, got_t, got_s), 0);
    ck_assert_mem_eq(got_t, ctx.trace.trace_id, 16);
    ck_assert_mem_eq(got_s, ctx.trace.span_id, 8);
    ck_assert_ptr_null(fg_error_cause(e));

    /* the log line */
    json_t *j = log_parse(e, "warn");
    th_tohex(ctx.trace.trace_id, 16, tid_hex);
    th_tohex(ctx.trace.span_id, 8, sid_hex);
    ck_assert_str_eq(jstr(j, "level"), "warn");
    ck_assert_str_eq(jstr(j, "msg"), "rejected by stage 'gate': rate limited");
    ck_assert_str_eq(jstr(j, "code"), "FG_ELIMITED");
    ck_assert_str_eq(jstr(j, "trace_id"), tid_hex);
    ck_assert_str_eq(jstr(j, "trace_id"), TID);
    ck_assert_str_eq(jstr(j, "span_id"), sid_hex);
    ck_assert_int_eq(jint(j, "retry"), 0);
    ck_assert_str_eq(jstr(j, "stage"), "gate");
    ck_assert_int_eq(jint(j, "retry_after_ms"), 250);
    jabsent(j, "causes");
    jabsent(j, "causes_omitted");
    json_decref(j);

    /* wrapping keeps the stage and trace */
    e = fg_error_wrap(e, FG_EHANDLER, "upstream said no");
    ck_assert_str_eq(fg_error_stage(e), "gate");
    ck_assert_int_eq(fg_error_trace(e, got_t, NULL), 0);
    ck_assert_mem_eq(got_t, ctx.trace.trace_id, 16);
    ck_assert_int_eq(fg_error_has(e, FG_ELIMITED), 1);
    fg_error_free(e);
    cfx_free(&c);
}
END_TEST

/* The error owns what it says: the stage name outlives the chain. */
START_TEST(test_from_ctx_outlives_chain) {
    cfx c;
    fg_ctx ctx;
    fg_error *e;

    cfx_init(&c, 1);
    c.g.reject = FG_EBREAKER;
    ck_assert_int_eq(cfx_call(&c, &ctx), FG_EBREAKER);
    e = fg_error_from_ctx(&ctx);
    cfx_free(&c);
    memset(&ctx, 0xCC, sizeof(ctx));
    ck_assert_int_eq(fg_error_code(e), FG_EBREAKER);
    ck_assert_str_eq(fg_error_stage(e), "gate");
    ck_assert_str_eq(fg_error_message(e), "rejected by stage 'gate': circuit breaker open");
    ck_assert_uint_eq(fg_error_retry_after_ns(e), 0);
    json_t *j = log_parse(e, NULL);
    ck_assert_str_eq(jstr(j, "stage"), "gate");
    jabsent(j, "retry_after_ms"); /* no hint was given */
    json_decref(j);
    fg_error_free(e);
}
END_TEST

/* A handler failure after retries: no stage, the strerror alone, the count. */
START_TEST(test_from_ctx_handler_failure) {
    cfx c;
    fg_ctx ctx;
    fg_error *e;

    cfx_init(&c, 1);
    c.g.retries = 2;
    c.h_ret = FG_ETIMEDOUT;
    ck_assert_int_eq(cfx_call(&c, &ctx), FG_ETIMEDOUT);
    ck_assert_uint_eq(ctx.retry_count, 2);
    e = fg_error_from_ctx(&ctx);
    ck_assert_int_eq(fg_error_code(e), FG_ETIMEDOUT);
    ck_assert_str_eq(fg_error_message(e), "deadline exceeded");
    ck_assert_ptr_null(fg_error_stage(e));
    ck_assert_uint_eq(fg_error_retry_count(e), 2);
    ck_assert_int_eq(fg_error_trace(e, NULL, NULL), 0);
    json_t *j = log_parse(e, NULL);
    ck_assert_str_eq(jstr(j, "level"), "error");
    ck_assert_str_eq(jstr(j, "code"), "FG_ETIMEDOUT");
    ck_assert_int_eq(jint(j, "retry"), 2);
    jabsent(j, "stage");
    jabsent(j, "retry_after_ms");
    json_decref(j);
    fg_error_free(e);
    cfx_free(&c);
}
END_TEST

/* No trace stage: no trace in the error or its log line. */
START_TEST(test_from_ctx_untraced) {
    cfx c;
    fg_ctx ctx;
    fg_error *e;

    cfx_init(&c, 0);
    c.g.reject = FG_EOVERLOADED;
    c.g.retry_after = 2 * FG_NS_PER_S;
    ck_assert_int_eq(cfx_call(&c, &ctx), FG_EOVERLOADED);
    e = fg_error_from_ctx(&ctx);
    ck_assert_int_eq(fg_error_trace(e, NULL, NULL), FG_ENOTFOUND);
    json_t *j = log_parse(e, NULL);
    jabsent(j, "trace_id");
    jabsent(j, "span_id");
    ck_assert_int_eq(jint(j, "retry_after_ms"), 2000);
    ck_assert_str_eq(jstr(j, "code"), "FG_EOVERLOADED");
    json_decref(j);
    fg_error_free(e);
    cfx_free(&c);
}
END_TEST

START_TEST(test_from_ctx_success) {
    cfx c;
    fg_ctx ctx;

    cfx_init(&c, 1);
    ck_assert_int_eq(cfx_call(&c, &ctx), 0);
    ck_assert_ptr_null(fg_error_from_ctx(&ctx));
    /* a fresh ctx has status 0 too */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_ptr_null(fg_error_from_ctx(&ctx));
    cfx_free(&c);
}
END_TEST

/* ---- the log line ---------------------------------------------------------------------- */

START_TEST(test_log_minimal) {
    fg_error *e = fg_error_new(FG_ELIMITED, "too many");
    json_t *j = log_parse(e, NULL);

    ck_assert_str_eq(jstr(j, "level"), "error");
    ck_assert_str_eq(jstr(j, "msg"), "too many");
    ck_assert_str_eq(jstr(j, "code"), "FG_ELIMITED");
    ck_assert_int_eq(jint(j, "retry"), 0);
    jabsent(j, "trace_id");
    jabsent(j, "span_id");
    jabsent(j, "stage");
    jabsent(j, "retry_after_ms");
    jabsent(j, "causes");
    jabsent(j, "causes_omitted");
    ck_assert_uint_eq(json_object_size(j), 4);
    json_decref(j);
    fg_error_free(e);

    /* compact: no space or newline outside strings */
    e = fg_error_new(FG_ELIMITED, "x");
    json_decref(log_parse(e, NULL));
    ck_assert_ptr_null(strchr(logbuf, ' '));
    ck_assert_ptr_null(strchr(logbuf, '\n'));
    ck_assert_int_eq(logbuf[0], '{');
    ck_assert_int_eq(logbuf[strlen(logbuf) - 1], '}');
    fg_error_free(e);
}
END_TEST

START_TEST(test_log_trace_and_retry) {
    uint8_t tid[16], sid[8];
    fg_error *e = fg_error_new(FG_EHANDLER, "boom");

    th_unhex("0a1b2c3d4e5f60718293a4b5c6d7e8f9", tid, 16);
    th_unhex("fedcba9876543210", sid, 8);
    fg_error_set_trace(e, tid, sid);
    fg_error_set_retry_count(e, 4);
    json_t *j = log_parse(e, "info");
    ck_assert_str_eq(jstr(j, "level"), "info");
    ck_assert_str_eq(jstr(j, "trace_id"), "0a1b2c3d4e5f60718293a4b5c6d7e8f9");
    ck_assert_str_eq(jstr(j, "span_id"), "fedcba9876543210");
    ck_assert_int_eq(jint(j, "retry"), 4);
    json_decref(j);

    /* detached again: gone from the line */
    fg_error_set_trace(e, NULL, NULL);
    j = log_parse(e, NULL);
    jabsent(j, "trace_id");
    jabsent(j, "span_id");
    json_decref(j);
    fg_error_free(e);
}
END_TEST

/* Causes: outermost first, each with its code and message. */
START_TEST(test_log_causes) {
    fg_error *e = fg_error_new(FG_ETIMEDOUT, "db timeout");
    e = fg_error_wrap(e, FG_EHANDLER, "query failed");
    e = fg_error_wrap(e, FG_EREJECTED, "request failed");
    json_t *j = log_parse(e, NULL);
    const json_t *causes = json_object_get(j, "causes");

    ck_assert_str_eq(jstr(j, "msg"), "request failed");
    ck_assert_str_eq(jstr(j, "code"), "FG_EREJECTED");
    ck_assert_msg(json_is_array(causes), "no causes array: %s", logbuf);
    ck_assert_uint_eq(json_array_size(causes), 2);
    ck_assert_str_eq(jstr(json_array_get(causes, 0), "code"), "FG_EHANDLER");
    ck_assert_str_eq(jstr(json_array_get(causes, 0), "msg"), "query failed");
    ck_assert_str_eq(jstr(json_array_get(causes, 1), "code"), "FG_ETIMEDOUT");
    ck_assert_str_eq(jstr(json_array_get(causes, 1), "msg"), "db timeout");
    jabsent(j, "causes_omitted");
    json_decref(j);
    fg_error_free(e);
}
END_TEST

/* FG_ERROR_LOG_CAUSES are listed, the rest counted. */
static const int ncauses_cases[] = {1,
                                    FG_ERROR_LOG_CAUSES - 1,
                                    FG_ERROR_LOG_CAUSES,
                                    FG_ERROR_LOG_CAUSES + 1,
                                    FG_ERROR_LOG_CAUSES + 4,
                                    100};

START_TEST(test_log_causes_omitted) {
    /* top -> cause 0 -> cause 1 -> ... -> cause ncauses-1 (the innermost) */
    int ncauses = ncauses_cases[_i];
    int listed = ncauses < FG_ERROR_LOG_CAUSES ? ncauses : FG_ERROR_LOG_CAUSES;
    fg_error *e = fg_error_new(FG_ECONFIG, "cause %d", ncauses - 1);

    for (int i = ncauses - 2; i >= 0; i--) {
        e = fg_error_wrap(e, i % 2 ? FG_EHANDLER : FG_ECANCELED, "cause %d", i);
    }
    e = fg_error_wrap(e, FG_EREJECTED, "top");

    json_t *j = log_parse(e, NULL);
    const json_t *causes = json_object_get(j, "causes");
    ck_assert_msg(json_is_array(causes), "no causes array: %s", logbuf);
    ck_assert_uint_eq(json_array_size(causes), (size_t)listed);
    for (int i = 0; i < listed; i++) {
        char want[32];
        const json_t *c = json_array_get(causes, (size_t)i);
        snprintf(want, sizeof(want), "cause %d", i);
        ck_assert_str_eq(jstr(c, "msg"), want);
        if (i < ncauses - 1) {
            ck_assert_str_eq(jstr(c, "code"), fg_err_name(i % 2 ? FG_EHANDLER : FG_ECANCELED));
        } else {
            ck_assert_str_eq(jstr(c, "code"), "FG_ECONFIG");
        }
    }
    if (ncauses > FG_ERROR_LOG_CAUSES) {
        ck_assert_int_eq(jint(j, "causes_omitted"), ncauses - FG_ERROR_LOG_CAUSES);
    } else {
        jabsent(j, "causes_omitted");
    }
    json_decref(j);
    fg_error_free(e);
}
END_TEST

/* Strings are JSON-escaped: what is parsed back is what went in. */
static const char *const escape_msgs[] = {
    "say \"hi\"",
    "back\\slash",
    "two\nlines\r\n",
    "tab\there",
    "ctl \x01\x02\x1f\x7f end",
    "\b\f",
    "</script>",
    "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", /* UTF-8: e-acute, euro, emoji */
    "{\"msg\":\"fake\",\"code\":\"FG_OK\"}",
    "",
};

START_TEST(test_log_escaping) {
    const char *msg = escape_msgs[_i];
    fg_error *e = fg_error_new(FG_EINVAL, "%s", msg);

    fg_error_set_retry_count(e, 1);
    e = fg_error_wrap(e, FG_EHANDLER, "outer %s", msg);
    json_t *j = log_parse(e, msg[0] != '\0' ? msg : NULL);
    char outer[256];

    snprintf(outer, sizeof(outer), "outer %s", msg);
    ck_assert_str_eq(jstr(j, "msg"), outer);
    ck_assert_str_eq(jstr(j, "level"), msg[0] != '\0' ? msg : "error");
    ck_assert_str_eq(jstr(json_array_get(json_object_get(j, "causes"), 0), "msg"), msg);
    ck_assert_int_eq(jint(j, "retry"), 1);
    json_decref(j);
    fg_error_free(e);
}
END_TEST

/* Bytes that are not UTF-8 still give a line that parses, with a msg string. */
START_TEST(test_log_not_utf8) {
    fg_error *e = fg_error_new(FG_EPARSE, "bad \xff\xfe bytes \xc3");
    json_t *j = log_parse(e, NULL);

    ck_assert_uint_gt(strlen(jstr(j, "msg")), 0);
    ck_assert_str_eq(jstr(j, "code"), "FG_EPARSE");
    json_decref(j);
    fg_error_free(e);
}
END_TEST

/* The longest message, all quotes: twice as long escaped, still one line. */
START_TEST(test_log_long_escaped) {
    char *q = malloc(3 * FG_ERROR_MESSAGE_MAX);
    fg_error *e;
    size_t n;

    ck_assert_ptr_nonnull(q);
    memset(q, '"', 3 * FG_ERROR_MESSAGE_MAX - 1);
    q[3 * FG_ERROR_MESSAGE_MAX - 1] = '\0';
    e = fg_error_new(FG_EINVAL, "%s", q);
    n = strlen(fg_error_message(e));
    json_t *j = log_parse(e, NULL);
    ck_assert_uint_eq(strlen(jstr(j, "msg")), n);
    ck_assert_uint_gt(strlen(logbuf), 2 * n);
    json_decref(j);
    fg_error_free(e);
    free(q);
}
END_TEST

/* Small buffers: FG_ETOOLONG, "" in buf, nothing at or past cap. */
START_TEST(test_log_small_buffers) {
    uint8_t tid[16], sid[8];
    fg_error *e = fg_error_new(FG_ETIMEDOUT, "inner \"quoted\"");
    char full[LOG_BUF];
    size_t full_len = 0, len;

    th_unhex(TID, tid, 16);
    th_unhex(SID, sid, 8);
    fg_error_set_trace(e, tid, sid);
    e = fg_error_wrap(e, FG_EHANDLER, "outer");
    ck_assert_int_eq(fg_error_log_json(e, NULL, full, sizeof(full), &full_len), 0);
    ck_assert_uint_eq(full_len, strlen(full));

    const size_t caps[] = {0, 1, 2, 3, 10, 64, full_len / 2, full_len - 1, full_len};
    for (int i = 0; i < TH_NELEM(caps); i++) {
        size_t cap = caps[i];
        unsigned char *buf = malloc(cap + 1);

        ck_assert_ptr_nonnull(buf);
        memset(buf, 0xA5, cap);
        buf[cap] = CANARY;
        len = 777;
        ck_assert_msg(fg_error_log_json(e, NULL, (char *)buf, cap, &len) == FG_ETOOLONG,
                      "cap %zu of %zu + 1 accepted", cap, full_len);
        ck_assert_msg(buf[cap] == CANARY, "cap %zu: the byte at cap was written", cap);
        if (cap > 0) {
            ck_assert_msg(buf[0] == '\0', "cap %zu: buf does not hold \"\"", cap);
        }
        free(buf);
    }

    /* exactly the line and its NUL */
    unsigned char *buf = malloc(full_len + 2);
    ck_assert_ptr_nonnull(buf);
    buf[full_len + 1] = CANARY;
    len = 0;
    ck_assert_int_eq(fg_error_log_json(e, NULL, (char *)buf, full_len + 1, &len), 0);
    ck_assert_uint_eq(len, full_len);
    ck_assert_str_eq((char *)buf, full);
    ck_assert_int_eq(buf[full_len + 1], CANARY);
    free(buf);
    fg_error_free(e);
}
END_TEST

/* ---- out of memory --------------------------------------------------------------------- */

static void oom_setup(void) {
    th_alloc_reset();
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
}

static void oom_teardown(void) {
    fg_set_alloc_funcs(NULL, NULL);
    th_alloc_reset();
}

static void assert_no_leak(void) {
    ck_assert_msg(th_alloc.allocs == th_alloc.frees, "%ld blocks allocated, %ld freed",
                  th_alloc.allocs, th_alloc.frees);
}

START_TEST(test_oom_new) {
    uint8_t tid[16];
    fg_error *e, *e2;

    th_unhex(TID, tid, 16);
    th_alloc.fail_all = 1;
    e = fg_error_new(FG_EINVAL, "x %d", 1);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(fg_error_code(e), FG_ENOMEM);
    ck_assert_ptr_nonnull(fg_error_message(e));
    ck_assert_ptr_null(fg_error_cause(e));
    /* setters leave the shared error unchanged */
    fg_error_set_retry_count(e, 5);
    ck_assert_uint_eq(fg_error_retry_count(e), 0);
    fg_error_set_trace(e, tid, NULL);
    ck_assert_int_eq(fg_error_trace(e, NULL, NULL), FG_ENOTFOUND);
    /* it is shared: the next one is the same, and freeing is harmless */
    e2 = fg_error_new(FG_ELIMITED, NULL);
    ck_assert_ptr_eq(e2, e);
    fg_error_free(e);
    fg_error_free(e);
    ck_assert_int_eq(fg_error_code(e2), FG_ENOMEM);
    ck_assert_int_eq(fg_error_has(e2, FG_ENOMEM), 1);
    fg_error_free(e2);
    /* wrap of nothing is new: the same */
    e = fg_error_wrap(NULL, FG_EINVAL, "y");
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(fg_error_code(e), FG_ENOMEM);
    fg_error_free(e);
    ck_assert_int_eq(th_alloc.injected, 1);
    th_alloc.fail_all = 0;
    assert_no_leak();

    /* once memory is back, errors are real again */
    e = fg_error_new(FG_EINVAL, "x %d", 2);
    ck_assert_int_eq(fg_error_code(e), FG_EINVAL);
    ck_assert_str_eq(fg_error_message(e), "x 2");
    fg_error_free(e);
    assert_no_leak();
}
END_TEST

START_TEST(test_oom_wrap) {
    uint8_t tid[16];
    fg_error *c = fg_error_new(FG_ETIMEDOUT, "db");
    fg_error *w;

    th_unhex(TID, tid, 16);
    fg_error_set_trace(c, tid, NULL);
    fg_error_set_retry_count(c, 2);
    th_alloc.fail_all = 1;
    w = fg_error_wrap(c, FG_EHANDLER, "query %s", "q");
    ck_assert_ptr_eq(w, c);
    ck_assert_int_eq(fg_error_code(w), FG_ETIMEDOUT);
    ck_assert_str_eq(fg_error_message(w), "db");
    ck_assert_uint_eq(fg_error_retry_count(w), 2);
    ck_assert_int_eq(fg_error_trace(w, NULL, NULL), 0);
    th_alloc.fail_all = 0;
    fg_error_free(w);
    assert_no_leak();
}
END_TEST

START_TEST(test_oom_from_ctx) {
    cfx c;
    fg_ctx ctx;
    fg_error *e;

    cfx_init(&c, 1);
    c.g.reject = FG_ELIMITED;
    ck_assert_int_eq(cfx_call(&c, &ctx), FG_ELIMITED);
    th_alloc.fail_all = 1;
    e = fg_error_from_ctx(&ctx);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(fg_error_code(e), FG_ENOMEM);
    fg_error_free(e);
    th_alloc.fail_all = 0;
    cfx_free(&c);
    assert_no_leak();
}
END_TEST

/* The shared error writes a log line too (or says FG_ENOMEM). */
START_TEST(test_oom_log_json) {
    fg_error *e;
    char buf[1024];
    size_t len = 0;
    int rc;

    th_alloc.fail_all = 1;
    e = fg_error_new(FG_EINVAL, "x");
    rc = fg_error_log_json(e, NULL, buf, sizeof(buf), &len);
    th_alloc.fail_all = 0;
    ck_assert_msg(rc == 0 || rc == FG_ENOMEM, "log_json under OOM: %s", fg_err_name(rc));
    if (rc == 0) {
        json_t *j = log_parse(e, NULL);
        ck_assert_str_eq(jstr(j, "code"), "FG_ENOMEM");
        json_decref(j);
    }
    fg_error_free(e);
    assert_no_leak();
}
END_TEST

/*
 * The chaos test: fail the Nth allocation for N = 1, 2, ... while building a
 * three-deep chain and logging it; every result is usable and nothing leaks.
 */
START_TEST(test_oom_chaos) {
    for (long n = 1; n < 200; n++) {
        fg_error *e;
        char *buf = malloc(LOG_BUF);
        size_t len = 0;
        int rc;

        ck_assert_ptr_nonnull(buf);
        th_alloc_reset();
        th_alloc.fail_at = n;
        e = fg_error_new(FG_ETIMEDOUT, "db %d", 1);
        fg_error_set_retry_count(e, 1);
        e = fg_error_wrap(e, FG_EHANDLER, "query");
        e = fg_error_wrap(e, FG_EREJECTED, "request");
        ck_assert_ptr_nonnull(e);
        ck_assert_msg(fg_error_has(e, FG_EREJECTED) || fg_error_has(e, FG_ENOMEM) ||
                          fg_error_has(e, FG_EHANDLER) || fg_error_has(e, FG_ETIMEDOUT),
                      "N=%ld: an error with code %d", n, fg_error_code(e));
        rc = fg_error_log_json(e, NULL, buf, LOG_BUF, &len);
        ck_assert_msg(rc == 0 || rc == FG_ENOMEM, "N=%ld: log_json %s", n, fg_err_name(rc));
        if (rc == 0) {
            json_error_t je;
            json_t *j = json_loads(buf, 0, &je);
            ck_assert_msg(j != NULL, "N=%ld: not JSON: %s", n, buf);
            json_decref(j);
        }
        fg_error_free(e);
        ck_assert_msg(th_alloc.allocs == th_alloc.frees,
                      "N=%ld: %ld blocks allocated, %ld freed", n, th_alloc.allocs,
                      th_alloc.frees);
        free(buf);
        if (!th_alloc.injected) {
            /* the whole sequence ran without the failure: it was all real */
            ck_assert_int_gt(n, 1);
            return;
        }
    }
    ck_abort_msg("still failing after 200 allocations");
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

Suite *fg_suite_errval(void) {
    Suite *s = suite_create("errval");
    TCase *tc;

    tc = tcase_create("new");
    tcase_add_test(tc, test_new_basic);
    tcase_add_test(tc, test_new_copies);
    tcase_add_loop_test(tc, test_new_null_fmt, 0, TH_NELEM(all_codes));
    tcase_add_test(tc, test_message_truncated);
    suite_add_tcase(s, tc);

    tc = tcase_create("wrap");
    tcase_add_test(tc, test_wrap_chain);
    tcase_add_test(tc, test_wrap_null_cause);
    tcase_add_test(tc, test_wrap_inherits);
    suite_add_tcase(s, tc);

    tc = tcase_create("fields");
    tcase_add_test(tc, test_set_trace);
    tcase_add_test(tc, test_retry_count);
    tcase_add_test(tc, test_null_tolerant);
    suite_add_tcase(s, tc);

    tc = tcase_create("from_ctx");
    tcase_add_test(tc, test_from_ctx_rejection);
    tcase_add_test(tc, test_from_ctx_outlives_chain);
    tcase_add_test(tc, test_from_ctx_handler_failure);
    tcase_add_test(tc, test_from_ctx_untraced);
    tcase_add_test(tc, test_from_ctx_success);
    suite_add_tcase(s, tc);

    tc = tcase_create("log_json");
    tcase_add_test(tc, test_log_minimal);
    tcase_add_test(tc, test_log_trace_and_retry);
    tcase_add_test(tc, test_log_causes);
    tcase_add_loop_test(tc, test_log_causes_omitted, 0, TH_NELEM(ncauses_cases));
    tcase_add_loop_test(tc, test_log_escaping, 0, TH_NELEM(escape_msgs));
    tcase_add_test(tc, test_log_not_utf8);
    tcase_add_test(tc, test_log_long_escaped);
    tcase_add_test(tc, test_log_small_buffers);
    suite_add_tcase(s, tc);

    tc = tcase_create("oom");
    tcase_add_checked_fixture(tc, oom_setup, oom_teardown);
    tcase_add_test(tc, test_oom_new);
    tcase_add_test(tc, test_oom_wrap);
    tcase_add_test(tc, test_oom_from_ctx);
    tcase_add_test(tc, test_oom_log_json);
    tcase_add_test(tc, test_oom_chaos);
    suite_add_tcase(s, tc);

    return s;
}
