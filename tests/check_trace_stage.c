/*
 * tests/check_trace_stage.c - the trace stage, finished spans and outgoing
 * headers (floodgate/trace.h, "the trace stage, spans and outgoing headers"),
 * and the keyed limit stage keyed by a baggage entry (FG_KEY_BAGGAGE).
 *
 * Every test runs real chains on a fake clock: a trace stage, optionally
 * followed by a "gate" stage of our own that can reject, move the clock or
 * ask for retries. A recording span hook keeps a deep copy of every span it
 * is given, so a test asserts exactly what was reported and how often.
 *
 * The incoming traceparent is checked against the W3C rules trace.h adopts
 * (a table of valid and of malformed values); sampling follows the sampler;
 * the hook sees each request once with its ids, clock readings, outcome,
 * retries, method and path; fg_trace_outgoing writes the exact downstream
 * headers, refuses small buffers without writing past them, and always fits
 * FG_TRACE_HEADERS_MAX. A threaded test runs 80,000 requests through one
 * chain and checks every span is reported once, with distinct ids.
 *
 * Tests marked "LIB DISAGREES" say what the header promises and what
 * lib/trace_stage.c did instead.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

/* ---- helpers ------------------------------------------------------------------------- */

#define T0 UINT64_C(5000000000) /* the fake clock's start: 5 s */
#define S  FG_NS_PER_S

#define TID  "4bf92f3577b34da6a3ce929d0e0e4736"
#define PID  "00f067aa0ba902b7"
#define IDS  TID "-" PID
#define ZTID "00000000000000000000000000000000"
#define ZPID "0000000000000000"

/* Assert that a borrowed slice holds exactly want. */
#define STR_EQ(s, want) str_eq_at((s), (want), #s, __LINE__)
static void str_eq_at(fg_str s, const char *want, const char *what, int line) {
    size_t n = strlen(want);
    ck_assert_msg(s.len == n && (n == 0 || (s.ptr != NULL && memcmp(s.ptr, want, n) == 0)),
                  "line %d: %s is \"%.*s\" (%zu bytes), want \"%s\" (%zu bytes)", line, what,
                  (int)(s.len > 600 ? 600 : s.len), s.ptr != NULL ? s.ptr : "", s.len, want,
                  n);
}

/* ---- the gate: a stage of our own after the trace stage ----------------------------- */

typedef struct gate {
    fg_fake_clock *fc;
    int reject;           /* enter returns this when nonzero */
    uint64_t retry_after; /* and sets ctx->retry_after_ns to this */
    uint64_t advance;     /* enter moves the fake clock by this */
    int retries;          /* exit returns FG_STAGE_RETRY this many times */
    int retried;
    int enters;
} gate;

static int gate_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    gate *g = state;
    (void)slot;
    g->enters++;
    if (g->advance != 0) {
        fg_fake_clock_advance(g->fc, g->advance);
    }
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

/* No destroy: the gate lives in the fixture. */
static const fg_stage_ops gate_ops = {"gate", gate_enter, gate_exit, NULL};

/* ---- the fixture: a chain, a recording hook, a handler -------------------------------- */

#define SPAN_MAX  8
#define NAME_KEEP (FG_PATH_MAX + 1)

/* A deep copy of one reported span. */
typedef struct span_rec {
    char name[NAME_KEEP];
    size_t name_len;
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_id[8];
    uint8_t flags;
    int remote_parent;
    uint64_t start_ns;
    uint64_t duration_ns;
    uint64_t start_unix_ns;
    fg_outcome_kind outcome;
    int code;
    int has_rejected_by;
    char rejected_by[FG_STAGE_NAME_MAX + 1];
    uint32_t retry_count;
    char method[FG_METHOD_MAX + 1];
    size_t method_len;
    char path[256];
    size_t path_len;
    const fg_ctx *ctx;
    int ids_match_ctx; /* the span's ids equal span->ctx->trace's during the call */
    void *arg;
    pthread_t thread;
} span_rec;

typedef struct fx {
    fg_fake_clock *fc;
    fg_chain *chain;
    fg_stage *trace; /* our own reference */
    gate g;
    int with_gate;

    int nspans; /* hook calls */
    span_rec rec[SPAN_MAX];

    /* the handler */
    int h_calls;
    int h_ret;
    uint64_t h_advance;
    fg_trace_fields h_trace; /* ctx->trace as the handler saw it */
    int h_outgoing;          /* call fg_trace_outgoing from the handler */
    const char *h_vendor;
    int h_out_rc;
    fg_trace_headers h_out;
    char h_buf[FG_TRACE_HEADERS_MAX];
} fx;

static void copy_str(char *dst, size_t cap, size_t *len, fg_str s) {
    ck_assert_msg(s.len < cap, "span string of %zu bytes too long for the test", s.len);
    ck_assert(s.len == 0 || s.ptr != NULL);
    if (s.len > 0) {
        memcpy(dst, s.ptr, s.len);
    }
    dst[s.len] = '\0';
    *len = s.len;
}

static void rec_span(const fg_span *sp, void *arg) {
    fx *f = arg;
    span_rec *r;

    f->nspans++;
    if (f->nspans > SPAN_MAX) {
        return;
    }
    r = &f->rec[f->nspans - 1];
    copy_str(r->name, sizeof(r->name), &r->name_len, sp->name);
    memcpy(r->trace_id, sp->trace_id, 16);
    memcpy(r->span_id, sp->span_id, 8);
    memcpy(r->parent_id, sp->parent_id, 8);
    r->flags = sp->flags;
    r->remote_parent = sp->remote_parent;
    r->start_ns = sp->start_ns;
    r->duration_ns = sp->duration_ns;
    r->start_unix_ns = sp->start_unix_ns;
    r->outcome = sp->outcome;
    r->code = sp->code;
    r->has_rejected_by = sp->rejected_by != NULL;
    snprintf(r->rejected_by, sizeof(r->rejected_by), "%s",
             sp->rejected_by != NULL ? sp->rejected_by : "");
    r->retry_count = sp->retry_count;
    copy_str(r->method, sizeof(r->method), &r->method_len, sp->method);
    copy_str(r->path, sizeof(r->path), &r->path_len, sp->path);
    r->ctx = sp->ctx;
    r->ids_match_ctx = sp->ctx != NULL && sp->ctx->trace.valid &&
                       memcmp(sp->trace_id, sp->ctx->trace.trace_id, 16) == 0 &&
                       memcmp(sp->span_id, sp->ctx->trace.span_id, 8) == 0 &&
                       memcmp(sp->parent_id, sp->ctx->trace.parent_id, 8) == 0 &&
                       sp->flags == sp->ctx->trace.flags;
    r->arg = arg;
    r->thread = pthread_self();
}

static int h_run(fg_ctx *ctx, void *arg) {
    fx *f = arg;

    f->h_calls++;
    f->h_trace = ctx->trace;
    if (f->h_advance != 0) {
        fg_fake_clock_advance(f->fc, f->h_advance);
    }
    if (f->h_outgoing) {
        f->h_out_rc =
            fg_trace_outgoing(ctx, f->h_vendor, f->h_buf, sizeof(f->h_buf), &f->h_out);
    }
    return f->h_ret;
}

/*
 * A chain on a fake clock at T0: the trace stage made from opts (NULL: the
 * defaults with our hook), then the gate when with_gate. When opts has no
 * hook, ours is put in (pass hook_off to keep none).
 */
static fx *fx_new_opts(const fg_trace_options *opts, int with_gate, int hook_off) {
    fx *f = calloc(1, sizeof(*f));
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;

    ck_assert_ptr_nonnull(f);
    if (opts != NULL) {
        o = *opts;
    }
    if (o.on_span == NULL && !hook_off) {
        o.on_span = rec_span;
        o.on_span_arg = f;
    }
    ck_assert_int_eq(fg_fake_clock_new(T0, &f->fc), 0);
    co.name = "traced";
    co.clock = fg_fake_clock_as_clock(f->fc);
    ck_assert_int_eq(fg_chain_new(&co, &f->chain), 0);
    ck_assert_int_eq(fg_stage_trace(&o, &f->trace), 0);
    ck_assert_ptr_nonnull(f->trace);
    ck_assert_int_eq(fg_chain_use(f->chain, fg_stage_ref(f->trace)), 0);
    f->g.fc = f->fc;
    f->with_gate = with_gate;
    if (with_gate) {
        fg_stage *gs = NULL;
        ck_assert_int_eq(fg_stage_new(&gate_ops, &f->g, "gate", &gs), 0);
        ck_assert_int_eq(fg_chain_use(f->chain, gs), 0);
    }
    return f;
}

static fx *fx_new(const fg_trace_options *opts) { return fx_new_opts(opts, 0, 0); }

static void fx_free(fx *f) {
    fg_chain_free(f->chain);
    fg_stage_unref(f->trace);
    fg_fake_clock_free(f->fc);
    free(f);
}

/* Prepare ctx with method, path and headers (name, value pairs; NULL ends). */
static void ctx_prep(fg_ctx *ctx, const char *method, const char *path,
                     const char *const *hdrs) {
    ck_assert_int_eq(fg_ctx_init(ctx, method, path), 0);
    for (int i = 0; hdrs != NULL && hdrs[i] != NULL; i += 2) {
        ck_assert_int_eq(fg_ctx_add_header(ctx, hdrs[i], hdrs[i + 1]), 0);
    }
}

/* One synchronous request: GET /api/items with hdrs. */
static int fx_call(fx *f, fg_ctx *ctx, const char *const *hdrs) {
    ctx_prep(ctx, "GET", "/api/items", hdrs);
    return fg_chain_call(f->chain, ctx, h_run, f);
}

/* A request with one traceparent header (NULL: none). */
static int fx_call_tp(fx *f, fg_ctx *ctx, const char *tp) {
    const char *h[] = {"traceparent", tp, NULL};
    return fx_call(f, ctx, tp != NULL ? h : NULL);
}

/* The split API: enter with hdrs; the caller exits. */
static int fx_enter(fx *f, fg_ctx *ctx, const char *const *hdrs) {
    ctx_prep(ctx, "GET", "/api/items", hdrs);
    return fg_chain_enter(f->chain, ctx);
}

/* ctx->trace continues the incoming trace TID / PID. */
static void assert_continues(const fg_trace_fields *t) {
    uint8_t tid[16], pid[8];

    th_unhex(TID, tid, 16);
    th_unhex(PID, pid, 8);
    ck_assert_int_ne(t->valid, 0);
    ck_assert_mem_eq(t->trace_id, tid, 16);
    ck_assert_mem_eq(t->parent_id, pid, 8);
    ck_assert(!th_is_zero(t->span_id, 8));
    ck_assert(memcmp(t->span_id, pid, 8) != 0);
}

/* ctx->trace is a trace we started. */
static void assert_started(const fg_trace_fields *t) {
    uint8_t tid[16];

    th_unhex(TID, tid, 16);
    ck_assert_int_ne(t->valid, 0);
    ck_assert(!th_is_zero(t->trace_id, 16));
    ck_assert(memcmp(t->trace_id, tid, 16) != 0);
    ck_assert(th_is_zero(t->parent_id, 8));
    ck_assert(!th_is_zero(t->span_id, 8));
    ck_assert_uint_eq(t->flags & FG_TRACE_FLAG_RANDOM, FG_TRACE_FLAG_RANDOM);
}

/* ---- building the stage --------------------------------------------------------------- */

START_TEST(test_options_init) {
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fg_stage *s = NULL;

    ck_assert_ptr_null(o.name);
    ck_assert_ptr_null(o.span_name);
    ck_assert_int_eq(o.sampler.kind, FG_SAMPLER_PARENT_BASED);
    ck_assert(o.sampler.ratio == 1.0);
    ck_assert_int_eq(o.sampler.root, FG_SAMPLER_ALWAYS_ON);
    ck_assert(o.on_span == NULL);
    ck_assert_ptr_null(o.on_span_arg);
    ck_assert_int_eq(o.hook_unsampled, 0);

    ck_assert_int_eq(fg_stage_trace(&o, &s), 0);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(fg_stage_name(s), "trace");
    ck_assert_uint_gt(strlen(fg_stage_kind(s)), 0);
    fg_stage_unref(s);

    o.name = "edge";
    ck_assert_int_eq(fg_stage_trace(&o, &s), 0);
    ck_assert_str_eq(fg_stage_name(s), "edge");
    fg_stage_unref(s);
}
END_TEST

/* The defaults: parent-based, always on for new traces, no hook needed. */
START_TEST(test_defaults_behaviour) {
    fx *f = fx_new_opts(NULL, 0, 1);
    fg_ctx ctx;

    ck_assert_int_eq(fx_call_tp(f, &ctx, "00-" IDS "-01"), 0);
    assert_continues(&f->h_trace);
    ck_assert_uint_eq(f->h_trace.flags, 0x01);
    ck_assert_int_eq(fx_call_tp(f, &ctx, "00-" IDS "-00"), 0);
    ck_assert_uint_eq(f->h_trace.flags, 0x00);
    ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), 0);
    assert_started(&f->h_trace);
    ck_assert_uint_eq(f->h_trace.flags, FG_TRACE_FLAG_RANDOM | FG_TRACE_FLAG_SAMPLED);
    ck_assert_int_eq(f->h_calls, 3);
    ck_assert_int_eq(f->nspans, 0);
    fx_free(f);
}
END_TEST

typedef struct bad_sampler {
    int kind;
    double ratio;
    int root;
} bad_sampler;

static const bad_sampler bad_samplers[] = {
    {4, 0.5, FG_SAMPLER_ALWAYS_ON},
    {99, 0.5, FG_SAMPLER_ALWAYS_ON},
    {-1, 0.5, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, -0.1, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, 1.0000001, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, 2.0, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, HUGE_VAL, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, NAN, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_PARENT_BASED, 0.5, FG_SAMPLER_PARENT_BASED},
    {FG_SAMPLER_PARENT_BASED, 0.5, 4},
    {FG_SAMPLER_PARENT_BASED, 0.5, -1},
    {FG_SAMPLER_PARENT_BASED, -0.5, FG_SAMPLER_RATIO},
    {FG_SAMPLER_PARENT_BASED, 1.5, FG_SAMPLER_RATIO},
    {FG_SAMPLER_PARENT_BASED, NAN, FG_SAMPLER_RATIO},
};

START_TEST(test_invalid_sampler) {
    const bad_sampler *c = &bad_samplers[_i];
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fg_stage *s = NULL;

    o.sampler.kind = (fg_sampler_kind)c->kind;
    o.sampler.ratio = c->ratio;
    o.sampler.root = (fg_sampler_kind)c->root;
    ck_assert_msg(fg_stage_trace(&o, &s) == FG_EINVAL,
                  "sampler {kind %d, ratio %g, root %d} accepted", c->kind, c->ratio, c->root);
}
END_TEST

START_TEST(test_build_args) {
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fg_stage *s = NULL;
    char *name = malloc(FG_PATH_MAX + 2);

    ck_assert_ptr_nonnull(name);
    ck_assert_int_eq(fg_stage_trace(&o, NULL), FG_EINVAL);

    /* name: FG_STAGE_NAME_MAX bytes are fine, one more is not */
    memset(name, 'n', FG_STAGE_NAME_MAX + 1);
    name[FG_STAGE_NAME_MAX] = '\0';
    o.name = name;
    ck_assert_int_eq(fg_stage_trace(&o, &s), 0);
    ck_assert_str_eq(fg_stage_name(s), name);
    fg_stage_unref(s);
    name[FG_STAGE_NAME_MAX] = 'n';
    name[FG_STAGE_NAME_MAX + 1] = '\0';
    ck_assert_int_eq(fg_stage_trace(&o, &s), FG_ETOOLONG);
    o.name = NULL;

    /* span_name: FG_PATH_MAX bytes are fine, one more is not */
    memset(name, 's', FG_PATH_MAX + 1);
    name[FG_PATH_MAX] = '\0';
    o.span_name = name;
    s = NULL;
    ck_assert_int_eq(fg_stage_trace(&o, &s), 0);
    fg_stage_unref(s);
    name[FG_PATH_MAX] = 's';
    name[FG_PATH_MAX + 1] = '\0';
    ck_assert_int_eq(fg_stage_trace(&o, &s), FG_ETOOLONG);
    free(name);
}
END_TEST

/* Names are copied: the caller's buffers may go away. */
START_TEST(test_names_copied) {
    char name[16], span_name[16];
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fx *f;
    fg_ctx ctx;

    snprintf(name, sizeof(name), "tr");
    snprintf(span_name, sizeof(span_name), "ingress");
    o.name = name;
    o.span_name = span_name;
    f = fx_new(&o);
    memset(name, 'X', sizeof(name) - 1);
    memset(span_name, 'Y', sizeof(span_name) - 1);
    ck_assert_str_eq(fg_stage_name(f->trace), "tr");
    ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), 0);
    ck_assert_int_eq(f->nspans, 1);
    ck_assert_str_eq(f->rec[0].name, "ingress");
    fx_free(f);
}
END_TEST

/* ---- incoming traceparent ------------------------------------------------------------- */

typedef struct valid_case {
    const char *tp;
    fg_sampler sampler;
    uint8_t flags; /* what the hop's flags must be */
} valid_case;

#define SAMP_PARENT                                                                           \
    { FG_SAMPLER_PARENT_BASED, 1.0, FG_SAMPLER_ALWAYS_ON }
#define SAMP_ON                                                                               \
    { FG_SAMPLER_ALWAYS_ON, 0.0, FG_SAMPLER_ALWAYS_ON }
#define SAMP_OFF                                                                              \
    { FG_SAMPLER_ALWAYS_OFF, 0.0, FG_SAMPLER_ALWAYS_ON }
#define SAMP_R0                                                                               \
    { FG_SAMPLER_RATIO, 0.0, FG_SAMPLER_ALWAYS_ON }
#define SAMP_R1                                                                               \
    { FG_SAMPLER_RATIO, 1.0, FG_SAMPLER_ALWAYS_ON }

static const valid_case valid_cases[] = {
    /* parent-based: the caller's sampled bit; its random bit as it is */
    {"00-" IDS "-01", SAMP_PARENT, 0x01},
    {"00-" IDS "-00", SAMP_PARENT, 0x00},
    {"00-" IDS "-03", SAMP_PARENT, 0x03},
    {"00-" IDS "-02", SAMP_PARENT, 0x02},
    /* HTTP optional whitespace around the value */
    {" \t00-" IDS "-01 \t", SAMP_PARENT, 0x01},
    /* a future version: parsed as 00, longer, continued with '-' */
    {"cc-" IDS "-01-what-the-future-will-be-like", SAMP_PARENT, 0x01},
    {"01-" IDS "-00", SAMP_PARENT, 0x00},
    /* the sampler overrides the caller's bit; the random bit stays */
    {"00-" IDS "-01", SAMP_OFF, 0x00},
    {"00-" IDS "-03", SAMP_OFF, 0x02},
    {"00-" IDS "-00", SAMP_ON, 0x01},
    {"00-" IDS "-02", SAMP_ON, 0x03},
    {"00-" IDS "-01", SAMP_R0, 0x00},
    {"00-" IDS "-00", SAMP_R1, 0x01},
    {"00-" IDS "-02", SAMP_R1, 0x03},
};

START_TEST(test_valid_traceparent) {
    const valid_case *c = &valid_cases[_i];
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fx *f;
    fg_ctx ctx;

    o.sampler = c->sampler;
    o.hook_unsampled = 1;
    f = fx_new(&o);
    ck_assert_int_eq(fx_call_tp(f, &ctx, c->tp), 0);
    ck_assert_int_eq(ctx.status, 0);
    ck_assert_int_eq(f->h_calls, 1);
    assert_continues(&f->h_trace);
    ck_assert_msg(f->h_trace.flags == c->flags, "case %d \"%s\": flags %02x, want %02x", _i,
                  c->tp, f->h_trace.flags, c->flags);
    /* the trace fields stay in the ctx after the request */
    ck_assert_mem_eq(&ctx.trace, &f->h_trace, sizeof(ctx.trace));
    ck_assert_int_eq(f->nspans, 1);
    ck_assert_int_ne(f->rec[0].remote_parent, 0);
    ck_assert_uint_eq(f->rec[0].flags, c->flags);
    fx_free(f);
}
END_TEST

/* The header name is matched case-insensitively, and the first one counts. */
START_TEST(test_traceparent_first_header) {
    static const char *const h1[] = {"TraceParent", "00-" IDS "-01", NULL};
    static const char *const h2[] = {"traceparent", "00-" IDS "-01", "traceparent",
                                     "00-11111111111111111111111111111111-2222222222222222-00",
                                     NULL};
    static const char *const h3[] = {"traceparent", "00-" IDS "-0", "traceparent",
                                     "00-" IDS "-01", NULL};
    fx *f = fx_new(NULL);
    fg_ctx ctx;

    ck_assert_int_eq(fx_call(f, &ctx, h1), 0);
    assert_continues(&f->h_trace);
    ck_assert_int_eq(fx_call(f, &ctx, h2), 0);
    assert_continues(&f->h_trace);
    ck_assert_uint_eq(f->h_trace.flags, 0x01);
    /* the first is malformed: a new trace, not the second header's */
    ck_assert_int_eq(fx_call(f, &ctx, h3), 0);
    assert_started(&f->h_trace);
    fx_free(f);
}
END_TEST

static const char *const bad_tps[] = {
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", /* uppercase */
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902B7-01", /* one uppercase digit */
    "ff-" IDS "-01",                                           /* version ff */
    "00-" ZTID "-" PID "-01",                                  /* zero trace-id */
    "00-" TID "-" ZPID "-01",                                  /* zero parent-id */
    "00-" IDS "-1",                                            /* short */
    "00-" IDS,                                                 /* no flags */
    "00-" IDS "-01-",                                          /* 00 is exactly 55 */
    "00-" IDS "-01-extra",                                     /* 00 is exactly 55 */
    "00_" IDS "-01",                                           /* separator */
    "00-" TID "_" PID "-01",                                   /* separator */
    "0-" IDS "-01",                                            /* short version */
    "00-" IDS "-0g",                                           /* not hex */
    "",                                                        /* empty */
    "hello",                                                   /* garbage */
};

/* A malformed traceparent never fails the request: a new trace is started. */
START_TEST(test_invalid_traceparent) {
    const char *tp = bad_tps[_i];
    const char *const h[] = {"traceparent", tp, "tracestate", "congo=t61rcWkgMzE", NULL};

    for (int root_on = 0; root_on < 2; root_on++) {
        fg_trace_options o = FG_TRACE_OPTIONS_INIT;
        fx *f;
        fg_ctx ctx;
        fg_trace_fields first;
        uint8_t want = FG_TRACE_FLAG_RANDOM | (root_on ? FG_TRACE_FLAG_SAMPLED : 0);

        o.sampler.root = root_on ? FG_SAMPLER_ALWAYS_ON : FG_SAMPLER_ALWAYS_OFF;
        f = fx_new(&o);
        f->h_outgoing = 1;
        ck_assert_msg(fx_call(f, &ctx, h) == 0, "\"%s\" failed the request", tp);
        ck_assert_int_eq(ctx.status, 0);
        ck_assert_int_eq(f->h_calls, 1);
        assert_started(&f->h_trace);
        ck_assert_msg(f->h_trace.flags == want, "\"%s\" root %d: flags %02x, want %02x", tp,
                      root_on, f->h_trace.flags, want);
        /* we started the trace: the caller's tracestate is not passed on */
        ck_assert_int_eq(f->h_out_rc, 0);
        ck_assert_uint_eq(f->h_out.tracestate.len, 0);
        first = f->h_trace;
        ck_assert_int_eq(f->nspans, root_on ? 1 : 0);
        if (root_on) {
            ck_assert_int_eq(f->rec[0].remote_parent, 0);
            ck_assert(th_is_zero(f->rec[0].parent_id, 8));
        }

        /* a second request gets other ids */
        ck_assert_int_eq(fx_call(f, &ctx, h), 0);
        assert_started(&f->h_trace);
        ck_assert(memcmp(first.trace_id, f->h_trace.trace_id, 16) != 0);
        ck_assert(memcmp(first.span_id, f->h_trace.span_id, 8) != 0);
        fx_free(f);
    }
}
END_TEST

/* No traceparent at all: the same as a malformed one. */
START_TEST(test_absent_traceparent) {
    fx *f = fx_new(NULL);
    fg_ctx ctx;
    fg_trace_fields t[2];

    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), 0);
        ck_assert_int_eq(ctx.status, 0);
        assert_started(&f->h_trace);
        ck_assert_uint_eq(f->h_trace.flags, FG_TRACE_FLAG_RANDOM | FG_TRACE_FLAG_SAMPLED);
        t[i] = f->h_trace;
    }
    ck_assert(memcmp(t[0].trace_id, t[1].trace_id, 16) != 0);
    ck_assert(memcmp(t[0].span_id, t[1].span_id, 8) != 0);
    ck_assert_int_eq(f->h_calls, 2);
    ck_assert_int_eq(f->nspans, 2);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(f->rec[i].remote_parent, 0);
        ck_assert_mem_eq(f->rec[i].trace_id, t[i].trace_id, 16);
    }
    fx_free(f);
}
END_TEST

/* ---- samplers --------------------------------------------------------------------------- */

START_TEST(test_always_off) {
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fx *f;
    fg_ctx ctx;

    o.sampler.kind = FG_SAMPLER_ALWAYS_OFF;
    f = fx_new(&o);
    ck_assert_int_eq(fx_call_tp(f, &ctx, "00-" IDS "-01"), 0);
    ck_assert_uint_eq(f->h_trace.flags & FG_TRACE_FLAG_SAMPLED, 0);
    ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), 0);
    ck_assert_uint_eq(f->h_trace.flags, FG_TRACE_FLAG_RANDOM);
    ck_assert_int_eq(f->h_calls, 2);
    ck_assert_int_eq(f->nspans, 0);
    fx_free(f);

    /* hook_unsampled: reported all the same, with the bit clear */
    o.hook_unsampled = 1;
    f = fx_new(&o);
    ck_assert_int_eq(fx_call_tp(f, &ctx, "00-" IDS "-01"), 0);
    ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), 0);
    ck_assert_int_eq(f->nspans, 2);
    ck_assert_uint_eq(f->rec[0].flags, 0x00);
    ck_assert_uint_eq(f->rec[1].flags, FG_TRACE_FLAG_RANDOM);
    fx_free(f);
}
END_TEST

/* Parent-based: a caller's 00 is not reported, its 01 is. */
START_TEST(test_parent_based_hook) {
    fx *f = fx_new(NULL);
    fg_ctx ctx;

    ck_assert_int_eq(fx_call_tp(f, &ctx, "00-" IDS "-00"), 0);
    ck_assert_int_eq(f->nspans, 0);
    ck_assert_int_eq(fx_call_tp(f, &ctx, "00-" IDS "-01"), 0);
    ck_assert_int_eq(f->nspans, 1);
    ck_assert_uint_eq(f->rec[0].flags, 0x01);
    fx_free(f);
}
END_TEST

START_TEST(test_ratio_extremes) {
    for (int one = 0; one < 2; one++) {
        /* as the top-level rule and as the root rule of parent-based */
        for (int as_root = 0; as_root < 2; as_root++) {
            fg_trace_options o = FG_TRACE_OPTIONS_INIT;
            fx *f;
            fg_ctx ctx;

            if (as_root) {
                o.sampler.kind = FG_SAMPLER_PARENT_BASED;
                o.sampler.root = FG_SAMPLER_RATIO;
            } else {
                o.sampler.kind = FG_SAMPLER_RATIO;
            }
            o.sampler.ratio = one ? 1.0 : 0.0;
            f = fx_new(&o);
            for (int i = 0; i < 200; i++) {
                ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), 0);
                TH_FAST_ASSERT((f->h_trace.flags & FG_TRACE_FLAG_SAMPLED) == (one ? 1 : 0),
                               "ratio %d as_root %d request %d: flags %02x", one, as_root, i,
                               f->h_trace.flags);
            }
            ck_assert_int_eq(f->h_calls, 200);
            ck_assert_int_eq(f->nspans, one ? 200 : 0);
            fx_free(f);
        }
    }
}
END_TEST

/* A ratio in between decides as fg_sampler_decide does for the same trace-id. */
START_TEST(test_ratio_matches_decide) {
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fx *f;
    fg_ctx ctx;
    int sampled = 0;

    o.sampler.kind = FG_SAMPLER_RATIO;
    o.sampler.ratio = 0.5;
    o.hook_unsampled = 1;
    f = fx_new(&o);
    for (int i = 0; i < 400; i++) {
        int want;
        ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), 0);
        want = fg_sampler_decide(&o.sampler, f->h_trace.trace_id, 0, 0);
        TH_FAST_ASSERT((f->h_trace.flags & 1) == want, "request %d: flags %02x, decide %d", i,
                       f->h_trace.flags, want);
        sampled += want;
    }
    ck_assert_int_gt(sampled, 100);
    ck_assert_int_lt(sampled, 300);
    fx_free(f);
}
END_TEST

/* ---- the span hook -----------------------------------------------------------------------
 */

static void assert_span_ids(const span_rec *r, const fg_trace_fields *t) {
    ck_assert_mem_eq(r->trace_id, t->trace_id, 16);
    ck_assert_mem_eq(r->span_id, t->span_id, 8);
    ck_assert_mem_eq(r->parent_id, t->parent_id, 8);
    ck_assert_uint_eq(r->flags, t->flags);
    ck_assert_int_ne(r->ids_match_ctx, 0);
}

/* start_unix_ns: within a day of now minus the duration. */
static void assert_unix_plausible(const span_rec *r) {
    const double day = 86400.0 * 1e9;
    double want = (double)time(NULL) * 1e9 - (double)r->duration_ns;
    double got = (double)r->start_unix_ns;

    ck_assert_msg(fabs(got - want) < day, "start_unix_ns %llu, want about %.0f",
                  (unsigned long long)r->start_unix_ns, want);
}

START_TEST(test_hook_ok) {
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fx *f;
    fg_ctx ctx;
    const char *const h[] = {"traceparent", "00-" IDS "-01", NULL};

    o.span_name = "ingress";
    f = fx_new(&o);
    f->h_advance = 1234567;
    ctx_prep(&ctx, "POST", "/v1/orders", h);
    ck_assert_int_eq(fg_chain_call(f->chain, &ctx, h_run, f), 0);
    ck_assert_int_eq(f->nspans, 1);
    const span_rec *r = &f->rec[0];
    ck_assert_str_eq(r->name, "ingress");
    assert_span_ids(r, &f->h_trace);
    ck_assert_int_ne(r->remote_parent, 0);
    ck_assert_uint_eq(r->start_ns, T0);
    ck_assert_uint_eq(r->start_ns, ctx.now_ns);
    ck_assert_uint_eq(r->duration_ns, 1234567);
    assert_unix_plausible(r);
    ck_assert_int_eq(r->outcome, FG_OUTCOME_OK);
    ck_assert_int_eq(r->code, 0);
    ck_assert_int_eq(r->has_rejected_by, 0);
    ck_assert_uint_eq(r->retry_count, 0);
    ck_assert_str_eq(r->method, "POST");
    ck_assert_str_eq(r->path, "/v1/orders");
    ck_assert_ptr_eq(r->ctx, &ctx);
    ck_assert_ptr_eq(r->arg, f);
    ck_assert(pthread_equal(r->thread, pthread_self()));
    fx_free(f);
}
END_TEST

/* No span_name: the span is named by the request's path; no method is fine. */
START_TEST(test_hook_name_is_path) {
    fx *f = fx_new(NULL);
    fg_ctx ctx;

    ck_assert_int_eq(fg_ctx_init(&ctx, NULL, "/healthz"), 0);
    ck_assert_int_eq(fg_chain_call(f->chain, &ctx, h_run, f), 0);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/a/b?c=d"), 0);
    ck_assert_int_eq(fg_chain_call(f->chain, &ctx, h_run, f), 0);
    ck_assert_int_eq(f->nspans, 2);
    ck_assert_str_eq(f->rec[0].name, "/healthz");
    ck_assert_uint_eq(f->rec[0].method_len, 0);
    ck_assert_str_eq(f->rec[0].path, "/healthz");
    ck_assert_str_eq(f->rec[1].name, "/a/b?c=d");
    ck_assert_str_eq(f->rec[1].method, "GET");
    fx_free(f);
}
END_TEST

/* A span_name of exactly FG_PATH_MAX bytes arrives whole. */
START_TEST(test_hook_long_span_name) {
    char *name = malloc(FG_PATH_MAX + 1);
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fx *f;
    fg_ctx ctx;

    ck_assert_ptr_nonnull(name);
    memset(name, 'q', FG_PATH_MAX);
    name[FG_PATH_MAX] = '\0';
    o.span_name = name;
    f = fx_new(&o);
    free(name);
    ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), 0);
    ck_assert_int_eq(f->nspans, 1);
    ck_assert_uint_eq(f->rec[0].name_len, FG_PATH_MAX);
    ck_assert(f->rec[0].name[0] == 'q' && f->rec[0].name[FG_PATH_MAX - 1] == 'q');
    fx_free(f);
}
END_TEST

START_TEST(test_hook_failed) {
    fx *f = fx_new(NULL);
    fg_ctx ctx;

    f->h_ret = FG_ETIMEDOUT;
    f->h_advance = 42;
    ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), FG_ETIMEDOUT);
    ck_assert_int_eq(f->nspans, 1);
    ck_assert_int_eq(f->rec[0].outcome, FG_OUTCOME_FAILED);
    ck_assert_int_eq(f->rec[0].code, FG_ETIMEDOUT);
    ck_assert_int_eq(f->rec[0].has_rejected_by, 0);
    ck_assert_uint_eq(f->rec[0].duration_ns, 42);
    assert_span_ids(&f->rec[0], &f->h_trace);

    /* a positive return is FG_EHANDLER */
    f->h_ret = 7;
    ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), FG_EHANDLER);
    ck_assert_int_eq(f->nspans, 2);
    ck_assert_int_eq(f->rec[1].outcome, FG_OUTCOME_FAILED);
    ck_assert_int_eq(f->rec[1].code, FG_EHANDLER);
    fx_free(f);
}
END_TEST

/* A stage after the trace stage rejects: the span says who and why. */
START_TEST(test_hook_rejected) {
    fx *f = fx_new_opts(NULL, 1, 0);
    fg_ctx ctx;

    f->g.reject = FG_ELIMITED;
    f->g.retry_after = 250 * FG_NS_PER_MS;
    f->g.advance = 3000;
    ck_assert_int_eq(fx_call_tp(f, &ctx, "00-" IDS "-01"), FG_ELIMITED);
    ck_assert_int_eq(f->h_calls, 0);
    ck_assert_int_eq(f->nspans, 1);
    const span_rec *r = &f->rec[0];
    ck_assert_int_eq(r->outcome, FG_OUTCOME_REJECTED);
    ck_assert_int_eq(r->code, FG_ELIMITED);
    ck_assert_int_ne(r->has_rejected_by, 0);
    ck_assert_str_eq(r->rejected_by, "gate");
    ck_assert_uint_eq(r->start_ns, T0);
    ck_assert_uint_eq(r->duration_ns, 3000);
    assert_span_ids(r, &ctx.trace);
    assert_continues(&ctx.trace);
    ck_assert_int_ne(r->remote_parent, 0);
    assert_unix_plausible(r);

    /* and through the split API: enter reports it at once */
    f->g.reject = FG_EOVERLOADED;
    ck_assert_int_eq(fx_enter(f, &ctx, NULL), FG_EOVERLOADED);
    ck_assert_int_eq(f->nspans, 2);
    ck_assert_int_eq(f->rec[1].outcome, FG_OUTCOME_REJECTED);
    ck_assert_int_eq(f->rec[1].code, FG_EOVERLOADED);
    ck_assert_str_eq(f->rec[1].rejected_by, "gate");
    ck_assert_int_eq(f->rec[1].remote_parent, 0);
    fx_free(f);
}
END_TEST

/* A stage before the trace stage rejects: no span, no trace. */
START_TEST(test_rejected_before_trace) {
    gate g = {0};
    fg_fake_clock *fc;
    fg_chain *chain;
    fg_stage *gs, *ts;
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fx *f = calloc(1, sizeof(*f));
    fg_ctx ctx;
    fg_trace_headers out;
    char buf[FG_TRACE_HEADERS_MAX];

    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    co.clock = fg_fake_clock_as_clock(fc);
    ck_assert_int_eq(fg_chain_new(&co, &chain), 0);
    g.reject = FG_ELIMITED;
    ck_assert_int_eq(fg_stage_new(&gate_ops, &g, "front", &gs), 0);
    o.on_span = rec_span;
    o.on_span_arg = f;
    ck_assert_int_eq(fg_stage_trace(&o, &ts), 0);
    ck_assert_int_eq(fg_chain_use(chain, gs), 0);
    ck_assert_int_eq(fg_chain_use(chain, ts), 0);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "traceparent", "00-" IDS "-01"), 0);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, h_run, f), FG_ELIMITED);
    ck_assert_int_eq(f->nspans, 0);
    ck_assert_int_eq(ctx.trace.valid, 0);
    ck_assert_int_eq(fg_trace_outgoing(&ctx, NULL, buf, sizeof(buf), &out), FG_ESTATE);
    fg_chain_free(chain);
    fg_fake_clock_free(fc);
    free(f);
}
END_TEST

/* A stage after the trace stage retries: still one span, with the count. */
START_TEST(test_hook_retries) {
    fx *f = fx_new_opts(NULL, 1, 0);
    fg_ctx ctx;

    f->g.retries = 2;
    f->h_advance = 100;
    ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), 0);
    ck_assert_int_eq(f->h_calls, 3);
    ck_assert_int_eq(f->nspans, 1);
    ck_assert_uint_eq(f->rec[0].retry_count, 2);
    ck_assert_uint_eq(f->rec[0].duration_ns, 300);
    ck_assert_uint_eq(f->rec[0].start_ns, T0);
    ck_assert_int_eq(f->rec[0].outcome, FG_OUTCOME_OK);
    /* one trace stage entry: the span id is the one every attempt saw */
    assert_span_ids(&f->rec[0], &f->h_trace);
    fx_free(f);
}
END_TEST

typedef struct exit_job {
    const fg_chain *chain;
    fg_ctx *ctx;
    int status;
    int rc;
    pthread_t self;
} exit_job;

static void *exit_thread(void *arg) {
    exit_job *job = arg;

    job->self = pthread_self();
    job->rc = fg_chain_exit(job->chain, job->ctx, job->status);
    return NULL;
}

START_TEST(test_hook_split) {
    fx *f = fx_new(NULL);
    fg_ctx ctx;
    const char *const h[] = {"traceparent", "00-" IDS "-01", NULL};
    fg_trace_fields t;
    exit_job job;
    pthread_t th;

    ck_assert_int_eq(fx_enter(f, &ctx, h), 0);
    assert_continues(&ctx.trace);
    ck_assert_uint_eq(ctx.trace.flags, 0x01);
    ck_assert_int_eq(f->nspans, 0);
    t = ctx.trace;
    fg_fake_clock_advance(f->fc, 5 * FG_NS_PER_MS);
    ck_assert_int_eq(fg_chain_exit(f->chain, &ctx, 0), 0);
    ck_assert_int_eq(f->nspans, 1);
    assert_span_ids(&f->rec[0], &t);
    ck_assert_uint_eq(f->rec[0].start_ns, T0);
    ck_assert_uint_eq(f->rec[0].duration_ns, 5 * FG_NS_PER_MS);
    ck_assert_int_eq(f->rec[0].outcome, FG_OUTCOME_OK);
    ck_assert_ptr_eq(f->rec[0].ctx, &ctx);
    assert_unix_plausible(&f->rec[0]);

    /* a failure reported by exit, on another thread: the hook runs there */
    fg_fake_clock_set(f->fc, 2 * T0);
    ck_assert_int_eq(fx_enter(f, &ctx, NULL), 0);
    assert_started(&ctx.trace);
    fg_fake_clock_advance(f->fc, 777);
    job.chain = f->chain;
    job.ctx = &ctx;
    job.status = FG_ECANCELED;
    job.rc = 12345;
    ck_assert_int_eq(pthread_create(&th, NULL, exit_thread, &job), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_int_eq(job.rc, 0);
    ck_assert_int_eq(f->nspans, 2);
    ck_assert_uint_eq(f->rec[1].start_ns, 2 * T0);
    ck_assert_uint_eq(f->rec[1].duration_ns, 777);
    ck_assert_int_eq(f->rec[1].outcome, FG_OUTCOME_FAILED);
    ck_assert_int_eq(f->rec[1].code, FG_ECANCELED);
    ck_assert_int_eq(f->rec[1].remote_parent, 0);
    ck_assert(pthread_equal(f->rec[1].thread, job.self));
    fx_free(f);
}
END_TEST

/* ---- fg_trace_outgoing ----------------------------------------------------------------- */

/* The exact traceparent for ctx's trace: "00-<trace>-<span>-<flags>". */
static void want_traceparent(const fg_trace_fields *t, char out[FG_TRACEPARENT_LEN + 1]) {
    char tid[33], sid[17];

    th_tohex(t->trace_id, 16, tid);
    th_tohex(t->span_id, 8, sid);
    snprintf(out, FG_TRACEPARENT_LEN + 1, "00-%s-%s-%02x", tid, sid, t->flags);
}

/* Each slice lies in buf and ends with a NUL. */
static void assert_in_buf(const fg_trace_headers *out, const char *buf, size_t cap) {
    const fg_str *v[3] = {&out->traceparent, &out->tracestate, &out->baggage};

    for (int i = 0; i < 3; i++) {
        if (v[i]->len == 0) {
            continue;
        }
        ck_assert(v[i]->ptr >= buf && v[i]->ptr + v[i]->len < buf + cap);
        ck_assert_int_eq(v[i]->ptr[v[i]->len], '\0');
    }
}

START_TEST(test_outgoing_traceparent) {
    static const char *const tps[] = {"00-" IDS "-01", "00-" IDS "-00", "00-" IDS "-03", NULL};
    fx *f = fx_new(NULL);
    char want[FG_TRACEPARENT_LEN + 1];

    for (int i = 0; i < TH_NELEM(tps); i++) {
        fg_ctx ctx;
        ck_assert_int_eq(fx_call_tp(f, &ctx, NULL), 0); /* a warm-up request in between */
        f->h_outgoing = 1;
        f->h_vendor = NULL;
        ck_assert_int_eq(fx_call_tp(f, &ctx, tps[i]), 0);
        f->h_outgoing = 0;
        ck_assert_int_eq(f->h_out_rc, 0);
        want_traceparent(&f->h_trace, want);
        STR_EQ(f->h_out.traceparent, want);
        if (tps[i] != NULL) {
            ck_assert(strncmp(f->h_out.traceparent.ptr, "00-" TID "-", 36) == 0);
        }
        assert_in_buf(&f->h_out, f->h_buf, sizeof(f->h_buf));
        /* parsing it back gives our span as the parent */
        fg_traceparent tp;
        ck_assert_int_eq(
            fg_traceparent_parse(f->h_out.traceparent.ptr, f->h_out.traceparent.len, &tp), 0);
        ck_assert_mem_eq(tp.parent_id, f->h_trace.span_id, 8);
        ck_assert_uint_eq(tp.flags, f->h_trace.flags);
        ck_assert_uint_eq(f->h_out.tracestate.len, 0);
        ck_assert_uint_eq(f->h_out.baggage.len, 0);
    }
    fx_free(f);
}
END_TEST

typedef struct ts_case {
    const char *ts1;    /* tracestate header (NULL: none) */
    const char *ts2;    /* a second tracestate header (NULL: none) */
    const char *vendor; /* vendor key */
    const char *want;   /* "%s" stands for our span id in hex */
} ts_case;

static const ts_case ts_cases[] = {
    {"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", NULL, "rojo", "rojo=%s,congo=t61rcWkgMzE"},
    {"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", NULL, NULL,
     "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
    {"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", NULL, "rojo", "rojo=%s,congo=t61rcWkgMzE"},
    {"congo=t61rcWkgMzE", NULL, "acme", "acme=%s,congo=t61rcWkgMzE"},
    {"congo=t61rcWkgMzE", NULL, "tenant@acme", "tenant@acme=%s,congo=t61rcWkgMzE"},
    {"congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7", NULL,
     "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
    {"congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7", "rojo", "rojo=%s,congo=t61rcWkgMzE"},
    {NULL, NULL, NULL, ""},
    {NULL, NULL, "rojo", "rojo=%s"},
    /* an invalid tracestate is discarded */
    {"Congo=t61rcWkgMzE", NULL, NULL, ""},
    {"congo=a,congo=b", NULL, NULL, ""},
    {"congo=t61rcWkgMzE", "rojo", NULL, ""},
};

START_TEST(test_outgoing_tracestate) {
    const ts_case *c = &ts_cases[_i];
    const char *h[8];
    int n = 0;
    fx *f = fx_new(NULL);
    fg_ctx ctx;
    fg_trace_headers out;
    char buf[FG_TRACE_HEADERS_MAX];
    char sid[17], want[1024], tpw[FG_TRACEPARENT_LEN + 1];

    h[n++] = "traceparent";
    h[n++] = "00-" IDS "-01";
    if (c->ts1 != NULL) {
        h[n++] = "tracestate";
        h[n++] = c->ts1;
    }
    if (c->ts2 != NULL) {
        h[n++] = "tracestate";
        h[n++] = c->ts2;
    }
    h[n] = NULL;
    ck_assert_int_eq(fx_enter(f, &ctx, h), 0);
    ck_assert_int_eq(fg_trace_outgoing(&ctx, c->vendor, buf, sizeof(buf), &out), 0);
    th_tohex(ctx.trace.span_id, 8, sid);
    snprintf(want, sizeof(want), c->want, sid);
    want_traceparent(&ctx.trace, tpw);
    STR_EQ(out.traceparent, tpw);
    ck_assert_msg(out.tracestate.len == strlen(want) &&
                      (want[0] == '\0' || memcmp(out.tracestate.ptr, want, strlen(want)) == 0),
                  "case %d: tracestate \"%.*s\", want \"%s\"", _i, (int)out.tracestate.len,
                  out.tracestate.ptr != NULL ? out.tracestate.ptr : "", want);
    assert_in_buf(&out, buf, sizeof(buf));
    ck_assert_int_eq(fg_chain_exit(f->chain, &ctx, 0), 0);
    fx_free(f);
}
END_TEST

/* We started the trace: no tracestate goes out, whatever came in. */
START_TEST(test_outgoing_tracestate_dropped) {
    static const char *const h1[] = {"tracestate", "congo=t61rcWkgMzE", NULL};
    static const char *const h2[] = {"traceparent", "00-" ZTID "-" PID "-01", "tracestate",
                                     "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", NULL};
    const char *const *hs[] = {h1, h2};
    fx *f = fx_new(NULL);

    for (int i = 0; i < 2; i++) {
        fg_ctx ctx;
        fg_trace_headers out;
        char buf[FG_TRACE_HEADERS_MAX];
        char tpw[FG_TRACEPARENT_LEN + 1];

        ck_assert_int_eq(fx_enter(f, &ctx, hs[i]), 0);
        assert_started(&ctx.trace);
        ck_assert_int_eq(fg_trace_outgoing(&ctx, NULL, buf, sizeof(buf), &out), 0);
        want_traceparent(&ctx.trace, tpw);
        STR_EQ(out.traceparent, tpw);
        ck_assert_uint_eq(out.tracestate.len, 0);
        ck_assert_int_eq(fg_chain_exit(f->chain, &ctx, 0), 0);
    }
    fx_free(f);
}
END_TEST

typedef struct bg_case {
    const char *bg1;
    const char *bg2;
    const char *want;
} bg_case;

static const bg_case bg_cases[] = {
    {NULL, NULL, ""},
    {"userId=alice", NULL, "userId=alice"},
    {"userId=alice,serverNode=DF%2028,isProduction=false", NULL,
     "userId=alice,serverNode=DF%2028,isProduction=false"},
    {"userId = alice , isProduction=false", NULL, "userId=alice,isProduction=false"},
    {"k=v;ttl=60", NULL, "k=v;ttl=60"},
    {"a=1", "b=2", "a=1,b=2"},
    {"a=1,=x,b=2", NULL, "a=1,b=2"}, /* a malformed member is left out */
    {"a=1,nokey,b=2", NULL, "a=1,b=2"},
};

START_TEST(test_outgoing_baggage) {
    const bg_case *c = &bg_cases[_i];
    const char *h[8];
    int n = 0;
    fx *f = fx_new(NULL);
    fg_ctx ctx;
    fg_trace_headers out;
    char buf[FG_TRACE_HEADERS_MAX];

    h[n++] = "traceparent";
    h[n++] = "00-" IDS "-01";
    if (c->bg1 != NULL) {
        h[n++] = "baggage";
        h[n++] = c->bg1;
    }
    if (c->bg2 != NULL) {
        h[n++] = "baggage";
        h[n++] = c->bg2;
    }
    h[n] = NULL;
    ck_assert_int_eq(fx_enter(f, &ctx, h), 0);
    ck_assert_int_eq(fg_trace_outgoing(&ctx, NULL, buf, sizeof(buf), &out), 0);
    ck_assert_msg(
        out.baggage.len == strlen(c->want) &&
            (c->want[0] == '\0' || memcmp(out.baggage.ptr, c->want, strlen(c->want)) == 0),
        "case %d: baggage \"%.*s\", want \"%s\"", _i, (int)out.baggage.len,
        out.baggage.ptr != NULL ? out.baggage.ptr : "", c->want);
    assert_in_buf(&out, buf, sizeof(buf));
    ck_assert_int_eq(fg_chain_exit(f->chain, &ctx, 0), 0);

    /* baggage goes out for a trace we started, too */
    h[0] = "x-other";
    ck_assert_int_eq(fx_enter(f, &ctx, h), 0);
    ck_assert_int_eq(fg_trace_outgoing(&ctx, NULL, buf, sizeof(buf), &out), 0);
    STR_EQ(out.baggage, c->want);
    ck_assert_int_eq(fg_chain_exit(f->chain, &ctx, 0), 0);
    fx_free(f);
}
END_TEST

/* From the handler of a synchronous call, as a service would use it. */
START_TEST(test_outgoing_in_handler) {
    static const char *const h[] = {"traceparent", "00-" IDS "-01",
                                    "tracestate",  "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
                                    "baggage",     "tenant=acme",
                                    NULL};
    fx *f = fx_new(NULL);
    fg_ctx ctx;
    char sid[17], want[128];

    f->h_outgoing = 1;
    f->h_vendor = "rojo";
    ck_assert_int_eq(fx_call(f, &ctx, h), 0);
    ck_assert_int_eq(f->h_out_rc, 0);
    th_tohex(f->h_trace.span_id, 8, sid);
    snprintf(want, sizeof(want), "00-" TID "-%s-01", sid);
    STR_EQ(f->h_out.traceparent, want);
    snprintf(want, sizeof(want), "rojo=%s,congo=t61rcWkgMzE", sid);
    STR_EQ(f->h_out.tracestate, want);
    STR_EQ(f->h_out.baggage, "tenant=acme");
    fx_free(f);
}
END_TEST

START_TEST(test_outgoing_estate) {
    fg_ctx ctx;
    fg_trace_headers out;
    char buf[FG_TRACE_HEADERS_MAX];

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "traceparent", "00-" IDS "-01"), 0);
    ck_assert_int_eq(fg_trace_outgoing(&ctx, NULL, buf, sizeof(buf), &out), FG_ESTATE);
    ck_assert_int_eq(fg_trace_outgoing(&ctx, "rojo", buf, sizeof(buf), &out), FG_ESTATE);
}
END_TEST

START_TEST(test_outgoing_einval) {
    static const char *const bad_vendors[] = {"Bad", "", "a b", "1abc", "rojo=", "a,b", "x@Y"};
    fx *f = fx_new(NULL);
    fg_ctx ctx;
    fg_trace_headers out;
    char buf[FG_TRACE_HEADERS_MAX];

    ck_assert_int_eq(fx_enter(f, &ctx, NULL), 0);
    for (int i = 0; i < TH_NELEM(bad_vendors); i++) {
        ck_assert_msg(fg_trace_outgoing(&ctx, bad_vendors[i], buf, sizeof(buf), &out) ==
                          FG_EINVAL,
                      "vendor key \"%s\" accepted", bad_vendors[i]);
    }
    ck_assert_int_eq(fg_trace_outgoing(NULL, NULL, buf, sizeof(buf), &out), FG_EINVAL);
    ck_assert_int_eq(fg_trace_outgoing(&ctx, NULL, NULL, sizeof(buf), &out), FG_EINVAL);
    ck_assert_int_eq(fg_trace_outgoing(&ctx, NULL, buf, sizeof(buf), NULL), FG_EINVAL);
    /* and a good one still works */
    ck_assert_int_eq(fg_trace_outgoing(&ctx, "rojo", buf, sizeof(buf), &out), 0);
    ck_assert_int_eq(fg_chain_exit(f->chain, &ctx, 0), 0);
    fx_free(f);
}
END_TEST

/* Small buffers: FG_ETOOLONG, *out empty, nothing written at or past cap. */
START_TEST(test_outgoing_small_buffers) {
    static const char *const h[] = {
        "traceparent", "00-" IDS "-01",    "tracestate", "congo=t61rcWkgMzE",
        "baggage",     "userId=alice,k=v", NULL};
    fx *f = fx_new(NULL);
    fg_ctx ctx;
    fg_trace_headers out;
    char big[FG_TRACE_HEADERS_MAX];
    size_t need;

    ck_assert_int_eq(fx_enter(f, &ctx, h), 0);
    ck_assert_int_eq(fg_trace_outgoing(&ctx, "rojo", big, sizeof(big), &out), 0);
    ck_assert_uint_eq(out.traceparent.len, FG_TRACEPARENT_LEN);
    ck_assert_uint_eq(out.tracestate.len, strlen("rojo=0123456789abcdef,congo=t61rcWkgMzE"));
    STR_EQ(out.baggage, "userId=alice,k=v");
    need = out.traceparent.len + 1 + out.tracestate.len + 1 + out.baggage.len + 1;

    const size_t caps[] = {0, 1, 2, 10, 54, 55, 56, 57, 70, need - 20, need - 2, need - 1};
    for (int i = 0; i < TH_NELEM(caps); i++) {
        size_t cap = caps[i];
        unsigned char *buf = malloc(cap + 1);

        ck_assert_ptr_nonnull(buf);
        memset(buf, 0xA5, cap);
        buf[cap] = 0x5A;
        memset(&out, 0x77, sizeof(out));
        ck_assert_msg(fg_trace_outgoing(&ctx, "rojo", (char *)buf, cap, &out) == FG_ETOOLONG,
                      "cap %zu of %zu accepted", cap, need);
        ck_assert_msg(buf[cap] == 0x5A, "cap %zu: byte at cap written", cap);
        ck_assert_uint_eq(out.traceparent.len, 0);
        ck_assert_uint_eq(out.tracestate.len, 0);
        ck_assert_uint_eq(out.baggage.len, 0);
        free(buf);
    }
    ck_assert_int_eq(fg_chain_exit(f->chain, &ctx, 0), 0);
    fx_free(f);
}
END_TEST

/* Exactly the three values and their NULs are enough. */
START_TEST(test_outgoing_exact_buffer) {
    static const char *const h[] = {
        "traceparent", "00-" IDS "-01",    "tracestate", "congo=t61rcWkgMzE",
        "baggage",     "userId=alice,k=v", NULL};
    fx *f = fx_new(NULL);
    fg_ctx ctx;
    fg_trace_headers out, ref;
    char big[FG_TRACE_HEADERS_MAX];
    char tp[FG_TRACEPARENT_LEN + 1], ts[64], bg[64];
    size_t need;
    unsigned char *buf;

    ck_assert_int_eq(fx_enter(f, &ctx, h), 0);
    ck_assert_int_eq(fg_trace_outgoing(&ctx, "rojo", big, sizeof(big), &ref), 0);
    need = ref.traceparent.len + 1 + ref.tracestate.len + 1 + ref.baggage.len + 1;
    snprintf(tp, sizeof(tp), "%.*s", (int)ref.traceparent.len, ref.traceparent.ptr);
    snprintf(ts, sizeof(ts), "%.*s", (int)ref.tracestate.len, ref.tracestate.ptr);
    snprintf(bg, sizeof(bg), "%.*s", (int)ref.baggage.len, ref.baggage.ptr);
    buf = malloc(need + 1);
    ck_assert_ptr_nonnull(buf);
    buf[need] = 0x5A;
    ck_assert_msg(fg_trace_outgoing(&ctx, "rojo", (char *)buf, need, &out) == 0,
                  "a buffer of exactly %zu bytes (three values and NULs) refused", need);
    ck_assert_int_eq(buf[need], 0x5A);
    STR_EQ(out.traceparent, tp);
    STR_EQ(out.tracestate, ts);
    STR_EQ(out.baggage, bg);
    assert_in_buf(&out, (char *)buf, need);
    free(buf);
    ck_assert_int_eq(fg_chain_exit(f->chain, &ctx, 0), 0);
    fx_free(f);
}
END_TEST

/* The largest tracestate and baggage there can be still fit FG_TRACE_HEADERS_MAX. */
START_TEST(test_outgoing_max_fits) {
    /* 32 tracestate members of 240-byte values (all "large"), 32 of 12 bytes */
    static char ts_large[8192], ts_small[1024], bg1[8192], bg2[8192];
    size_t n = 0;
    const char *const *hs;

    for (int i = 0; i < 32; i++) {
        n += (size_t)snprintf(ts_large + n, sizeof(ts_large) - n, "%sk%02d=", i ? "," : "", i);
        memset(ts_large + n, 'v', 240);
        n += 240;
    }
    ts_large[n] = '\0';
    ck_assert_uint_le(n, FG_HEADER_VALUE_MAX);
    n = 0;
    for (int i = 0; i < 32; i++) {
        n += (size_t)snprintf(ts_small + n, sizeof(ts_small) - n, "%sv%02d=abcdefghijkl",
                              i ? "," : "", i);
    }
    ck_assert_uint_gt(n, FG_TRACESTATE_PROPAGATE);
    /* baggage: 2 headers of 40 members with 150-byte values: past every limit */
    for (int b = 0; b < 2; b++) {
        char *bg = b ? bg2 : bg1;
        n = 0;
        for (int i = 0; i < 40; i++) {
            n += (size_t)snprintf(bg + n, 8192 - n, "%sb%d%02d=", i ? "," : "", b, i);
            memset(bg + n, b ? 'y' : 'x', 150);
            n += 150;
        }
        bg[n] = '\0';
        ck_assert_uint_le(n, FG_HEADER_VALUE_MAX);
    }
    const char *const h1[] = {
        "traceparent", "00-" IDS "-01", "tracestate", ts_large, "baggage",
        bg1,           "baggage",       bg2,          NULL};
    const char *const h2[] = {
        "traceparent", "00-" IDS "-01", "tracestate", ts_small, "baggage",
        bg1,           "baggage",       bg2,          NULL};
    const char *const *all[] = {h1, h2};
    static const char *const vendors[] = {NULL, "rojo", "k05"};
    fx *f = fx_new(NULL);
    unsigned char *buf = malloc(FG_TRACE_HEADERS_MAX + 1);

    ck_assert_ptr_nonnull(buf);
    for (int i = 0; i < 2; i++) {
        hs = all[i];
        for (int v = 0; v < TH_NELEM(vendors); v++) {
            fg_ctx ctx;
            fg_trace_headers out;
            char tpw[FG_TRACEPARENT_LEN + 1];

            ck_assert_int_eq(fx_enter(f, &ctx, hs), 0);
            buf[FG_TRACE_HEADERS_MAX] = 0x5A;
            ck_assert_msg(fg_trace_outgoing(&ctx, vendors[v], (char *)buf,
                                            FG_TRACE_HEADERS_MAX, &out) == 0,
                          "set %d vendor %s: refused", i, vendors[v] ? vendors[v] : "NULL");
            ck_assert_int_eq(buf[FG_TRACE_HEADERS_MAX], 0x5A);
            want_traceparent(&ctx.trace, tpw);
            STR_EQ(out.traceparent, tpw);
            ck_assert_uint_le(out.tracestate.len, FG_TRACESTATE_PROPAGATE);
            ck_assert_uint_le(out.baggage.len, FG_BAGGAGE_MAX_BYTES);
            ck_assert_uint_gt(out.baggage.len, 0);
            assert_in_buf(&out, (char *)buf, FG_TRACE_HEADERS_MAX);
            if (vendors[v] != NULL) {
                char sid[17], want[64];
                th_tohex(ctx.trace.span_id, 8, sid);
                snprintf(want, sizeof(want), "%s=%s", vendors[v], sid);
                ck_assert_msg(out.tracestate.len >= strlen(want) &&
                                  memcmp(out.tracestate.ptr, want, strlen(want)) == 0,
                              "tracestate does not start with %s", want);
            }
            if (i == 1) {
                ck_assert_uint_gt(out.tracestate.len, 0);
            }
            ck_assert_int_eq(fg_chain_exit(f->chain, &ctx, 0), 0);
        }
    }
    free(buf);
    fx_free(f);
}
END_TEST

/* ---- a keyed limit stage keyed by a baggage entry ----------------------------------------
 */

typedef struct kfx {
    fx *f;
    fg_keyed_limiter *k;
    fg_stage *limit; /* our reference */
} kfx;

/* trace stage, then a keyed stage on baggage "tenant": 1 token, 1 per second. */
static void kfx_init(kfx *kf, fg_key_missing missing) {
    fg_keyed_limiter_options ko = FG_KEYED_LIMITER_OPTIONS_INIT;
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    fx *f = calloc(1, sizeof(*f));

    ck_assert_ptr_nonnull(f);
    kf->f = f;
    ck_assert_int_eq(fg_fake_clock_new(T0, &f->fc), 0);
    ko.bucket.rate = 1;
    ko.bucket.period_ns = S;
    ko.bucket.burst = 1;
    ko.bucket.clock = fg_fake_clock_as_clock(f->fc);
    ko.max_keys = 64;
    ck_assert_int_eq(fg_keyed_limiter_new(&ko, &kf->k), 0);
    so.name = "tenants";
    so.key_source = FG_KEY_BAGGAGE;
    so.key_name = "tenant";
    so.missing = missing;
    ck_assert_int_eq(fg_stage_limit_keyed(kf->k, &so, &kf->limit), 0);
    co.clock = fg_fake_clock_as_clock(f->fc);
    ck_assert_int_eq(fg_chain_new(&co, &f->chain), 0);
    o.on_span = rec_span;
    o.on_span_arg = f;
    ck_assert_int_eq(fg_stage_trace(&o, &f->trace), 0);
    ck_assert_int_eq(fg_chain_use(f->chain, fg_stage_ref(f->trace)), 0);
    ck_assert_int_eq(fg_chain_use(f->chain, fg_stage_ref(kf->limit)), 0);
}

static void kfx_free(kfx *kf) {
    fg_chain_free(kf->f->chain);
    fg_stage_unref(kf->limit);
    fg_stage_unref(kf->f->trace);
    fg_keyed_limiter_free(kf->k);
    fg_fake_clock_free(kf->f->fc);
    free(kf->f);
}

/* One request with a baggage header (NULL: none). */
static int kcall(kfx *kf, fg_ctx *ctx, const char *baggage) {
    const char *const h[] = {"baggage", baggage, NULL};
    return fx_call(kf->f, ctx, baggage != NULL ? h : NULL);
}

static uint64_t ktokens(kfx *kf, const char *key) {
    return fg_keyed_limiter_tokens(kf->k, key, strlen(key), T0);
}

START_TEST(test_keyed_baggage) {
    kfx kf;
    fg_ctx ctx;
    fg_limit_stats st;

    kfx_init(&kf, FG_KEY_MISSING_ADMIT);
    ck_assert_int_eq(kcall(&kf, &ctx, "tenant=a"), 0);
    ck_assert_int_eq(kcall(&kf, &ctx, "tenant=a"), FG_ELIMITED);
    ck_assert_int_eq(ctx.status, FG_ELIMITED);
    ck_assert_ptr_eq(ctx.rejected_by, kf.limit);
    ck_assert_uint_eq(ctx.retry_after_ns, S);
    ck_assert_int_eq(kcall(&kf, &ctx, "tenant=b"), 0);
    /* other members and properties around it */
    ck_assert_int_eq(kcall(&kf, &ctx, "user=x, tenant = c;ttl=5,region=eu"), 0);
    ck_assert_uint_eq(ktokens(&kf, "c"), 0);
    ck_assert_int_eq(kcall(&kf, &ctx, "region=eu,tenant=c"), FG_ELIMITED);
    /* the last of several wins */
    ck_assert_int_eq(kcall(&kf, &ctx, "tenant=a,tenant=d"), 0);
    ck_assert_uint_eq(ktokens(&kf, "d"), 0);
    ck_assert_int_eq(kf.f->h_calls, 4);
    /* every request was traced, the rejected ones too */
    ck_assert_int_eq(kf.f->nspans, 6);
    ck_assert_int_eq(kf.f->rec[1].outcome, FG_OUTCOME_REJECTED);
    ck_assert_str_eq(kf.f->rec[1].rejected_by, "tenants");
    ck_assert_int_eq(kf.f->rec[1].code, FG_ELIMITED);
    /* a second later "a" has a token again */
    fg_fake_clock_advance(kf.f->fc, S);
    ck_assert_int_eq(kcall(&kf, &ctx, "tenant=a"), 0);
    ck_assert_int_eq(fg_limit_stage_stats(kf.limit, &st), 0);
    ck_assert_uint_eq(st.admitted, 5);
    ck_assert_uint_eq(st.rejected, 2);
    ck_assert_uint_eq(st.missing_key, 0);
    kfx_free(&kf);
}
END_TEST

/* The key is the percent-decoded value. */
START_TEST(test_keyed_baggage_decoded) {
    kfx kf;
    fg_ctx ctx;

    kfx_init(&kf, FG_KEY_MISSING_ADMIT);
    ck_assert_uint_eq(ktokens(&kf, "a b"), 1);
    ck_assert_int_eq(kcall(&kf, &ctx, "tenant=a%20b"), 0);
    ck_assert_uint_eq(ktokens(&kf, "a b"), 0);
    ck_assert_uint_eq(ktokens(&kf, "a%20b"), 1);
    ck_assert_int_eq(kcall(&kf, &ctx, "tenant=a%20b"), FG_ELIMITED);
    /* "%2520" decodes to "%20": another key */
    ck_assert_int_eq(kcall(&kf, &ctx, "tenant=a%2520b"), 0);
    ck_assert_uint_eq(ktokens(&kf, "a%20b"), 0);
    /* "%2F" and "%2f" both decode to "/" */
    ck_assert_int_eq(kcall(&kf, &ctx, "tenant=x%2Fy"), 0);
    ck_assert_int_eq(kcall(&kf, &ctx, "tenant=x%2fy"), FG_ELIMITED);
    ck_assert_uint_eq(ktokens(&kf, "x/y"), 0);
    kfx_free(&kf);
}
END_TEST

START_TEST(test_keyed_baggage_missing) {
    static const char *const missing_bags[] = {NULL, "user=alice", "tenant", "tenants=a"};

    for (int m = 0; m < 3; m++) {
        kfx kf;
        fg_ctx ctx;
        fg_limit_stats st;

        kfx_init(&kf, (fg_key_missing)m);
        for (int i = 0; i < TH_NELEM(missing_bags); i++) {
            int rc = kcall(&kf, &ctx, missing_bags[i]);
            int want;
            if (m == FG_KEY_MISSING_ADMIT) {
                want = 0;
            } else if (m == FG_KEY_MISSING_REJECT) {
                want = FG_ELIMITED;
            } else {
                want = i == 0 ? 0 : FG_ELIMITED; /* one shared bucket of 1 token */
            }
            ck_assert_msg(rc == want, "missing %d, baggage \"%s\": %s, want %s", m,
                          missing_bags[i] ? missing_bags[i] : "(none)", fg_err_name(rc),
                          fg_err_name(want));
        }
        /* a request that has the key is limited as usual */
        ck_assert_int_eq(kcall(&kf, &ctx, "tenant=a"), 0);
        ck_assert_int_eq(fg_limit_stage_stats(kf.limit, &st), 0);
        ck_assert_uint_eq(st.missing_key, TH_NELEM(missing_bags));
        if (m == FG_KEY_MISSING_SHARED) {
            ck_assert_uint_eq(fg_keyed_limiter_tokens(kf.k, "", 0, T0), 0);
        }
        kfx_free(&kf);
    }
}
END_TEST

START_TEST(test_keyed_baggage_too_long_and_args) {
    kfx kf;
    fg_ctx ctx;
    char bag[128];
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    fg_stage *s = NULL;

    kfx_init(&kf, FG_KEY_MISSING_ADMIT);
    /* key_max is FG_KEYED_KEY_MAX_DEFAULT: one byte more is refused */
    snprintf(bag, sizeof(bag), "tenant=%0*d", FG_KEYED_KEY_MAX_DEFAULT, 7);
    ck_assert_int_eq(kcall(&kf, &ctx, bag), 0);
    snprintf(bag, sizeof(bag), "tenant=%0*d", FG_KEYED_KEY_MAX_DEFAULT + 1, 7);
    ck_assert_int_eq(kcall(&kf, &ctx, bag), FG_ETOOLONG);
    /* a decoded key that fits, though its encoding would not */
    snprintf(bag, sizeof(bag), "tenant=");
    for (int i = 0; i < FG_KEYED_KEY_MAX_DEFAULT; i++) {
        strcat(bag, i % 2 ? "%20" : "z");
    }
    ck_assert_int_eq(kcall(&kf, &ctx, bag), 0);

    so.key_source = FG_KEY_BAGGAGE;
    ck_assert_int_eq(fg_stage_limit_keyed(kf.k, &so, &s), FG_EINVAL); /* no key_name */
    kfx_free(&kf);
}
END_TEST

/* ---- threads -------------------------------------------------------------------------- */

#define MT_THREADS 4
#define MT_REQS    20000
#define MT_SAMPLE  1000

typedef struct mt_job {
    const fg_chain *chain;
    uint8_t tid[16]; /* TID in binary */
    pthread_barrier_t *start;
    uint64_t spans;      /* spans of this thread's requests (hook, this thread) */
    uint64_t bad;        /* requests with an unexpected result */
    uint64_t ids_differ; /* span ids not equal to the ctx's */
    uint64_t wrong_tid;  /* continued traces with another trace-id */
    int nids;
    uint8_t ids[MT_SAMPLE][8];
} mt_job;

static uint64_t mt_total; /* every hook call, atomically */

static void mt_hook(const fg_span *sp, void *arg) {
    mt_job *job = sp->ctx->user;

    (void)arg;
    __atomic_add_fetch(&mt_total, 1, __ATOMIC_RELAXED);
    job->spans++;
    if (memcmp(sp->span_id, sp->ctx->trace.span_id, 8) != 0) {
        job->ids_differ++;
    }
    if (job->nids < MT_SAMPLE) {
        memcpy(job->ids[job->nids++], sp->span_id, 8);
    }
}

static void *mt_run(void *arg) {
    mt_job *job = arg;

    pthread_barrier_wait(job->start);
    for (int i = 0; i < MT_REQS; i++) {
        fg_ctx ctx;
        int rc;

        fg_ctx_init(&ctx, "GET", "/mt");
        ctx.user = job;
        if (i % 2 == 0) {
            fg_ctx_add_header(&ctx, "traceparent", "00-" IDS "-01");
        }
        if (i % 3 == 0) {
            rc = fg_chain_enter(job->chain, &ctx);
            if (rc == 0) {
                rc = fg_chain_exit(job->chain, &ctx, 0);
            }
        } else {
            rc = fg_chain_call(job->chain, &ctx, th_ok_handler, NULL);
        }
        if (rc != 0 || !ctx.trace.valid || (ctx.trace.flags & 1) == 0) {
            job->bad++;
        }
        if (i % 2 == 0 && memcmp(ctx.trace.trace_id, job->tid, 16) != 0) {
            job->wrong_tid++;
        }
    }
    return NULL;
}

static int cmp_id(const void *a, const void *b) { return memcmp(a, b, 8); }

START_TEST(test_threads) {
    static mt_job jobs[MT_THREADS];
    static uint8_t all[MT_THREADS * MT_SAMPLE][8];
    pthread_t th[MT_THREADS];
    pthread_barrier_t start;
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    fg_fake_clock *fc;
    fg_chain *chain;
    fg_stage *ts;

    __atomic_store_n(&mt_total, 0, __ATOMIC_RELAXED);
    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    co.clock = fg_fake_clock_as_clock(fc);
    ck_assert_int_eq(fg_chain_new(&co, &chain), 0);
    o.on_span = mt_hook;
    ck_assert_int_eq(fg_stage_trace(&o, &ts), 0);
    ck_assert_int_eq(fg_chain_use(chain, ts), 0);
    ck_assert_int_eq(pthread_barrier_init(&start, NULL, MT_THREADS), 0);
    for (int t = 0; t < MT_THREADS; t++) {
        memset(&jobs[t], 0, sizeof(jobs[t]));
        jobs[t].chain = chain;
        jobs[t].start = &start;
        th_unhex(TID, jobs[t].tid, 16);
        ck_assert_int_eq(pthread_create(&th[t], NULL, mt_run, &jobs[t]), 0);
    }
    for (int t = 0; t < MT_THREADS; t++) {
        ck_assert_int_eq(pthread_join(th[t], NULL), 0);
    }
    pthread_barrier_destroy(&start);
    ck_assert_uint_eq(__atomic_load_n(&mt_total, __ATOMIC_RELAXED),
                      (uint64_t)MT_THREADS * MT_REQS);
    for (int t = 0; t < MT_THREADS; t++) {
        mt_job *job = &jobs[t];
        ck_assert_msg(job->bad == 0, "thread %d: %llu bad requests", t,
                      (unsigned long long)job->bad);
        ck_assert_uint_eq(job->spans, MT_REQS);
        ck_assert_uint_eq(job->ids_differ, 0);
        ck_assert_uint_eq(job->wrong_tid, 0);
        ck_assert_int_eq(job->nids, MT_SAMPLE);
        qsort(job->ids, MT_SAMPLE, 8, cmp_id);
        for (int i = 1; i < MT_SAMPLE; i++) {
            TH_FAST_ASSERT(memcmp(job->ids[i - 1], job->ids[i], 8) != 0,
                           "thread %d: span id repeated", t);
        }
        memcpy((uint8_t *)all + (size_t)t * MT_SAMPLE * 8, job->ids, sizeof(job->ids));
    }
    /* and no two threads produced the same ids */
    qsort(all, MT_THREADS * MT_SAMPLE, 8, cmp_id);
    for (int i = 1; i < MT_THREADS * MT_SAMPLE; i++) {
        TH_FAST_ASSERT(memcmp(all[i - 1], all[i], 8) != 0, "span id repeated across threads");
    }
    fg_chain_free(chain);
    fg_fake_clock_free(fc);
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

Suite *fg_suite_trace_stage(void) {
    Suite *s = suite_create("trace_stage");
    TCase *tc;

    tc = tcase_create("build");
    tcase_add_test(tc, test_options_init);
    tcase_add_test(tc, test_defaults_behaviour);
    tcase_add_loop_test(tc, test_invalid_sampler, 0, TH_NELEM(bad_samplers));
    tcase_add_test(tc, test_build_args);
    tcase_add_test(tc, test_names_copied);
    suite_add_tcase(s, tc);

    tc = tcase_create("incoming");
    tcase_add_loop_test(tc, test_valid_traceparent, 0, TH_NELEM(valid_cases));
    tcase_add_test(tc, test_traceparent_first_header);
    tcase_add_loop_test(tc, test_invalid_traceparent, 0, TH_NELEM(bad_tps));
    tcase_add_test(tc, test_absent_traceparent);
    suite_add_tcase(s, tc);

    tc = tcase_create("sampler");
    tcase_add_test(tc, test_always_off);
    tcase_add_test(tc, test_parent_based_hook);
    tcase_add_test(tc, test_ratio_extremes);
    tcase_add_test(tc, test_ratio_matches_decide);
    suite_add_tcase(s, tc);

    tc = tcase_create("span");
    tcase_add_test(tc, test_hook_ok);
    tcase_add_test(tc, test_hook_name_is_path);
    tcase_add_test(tc, test_hook_long_span_name);
    tcase_add_test(tc, test_hook_failed);
    tcase_add_test(tc, test_hook_rejected);
    tcase_add_test(tc, test_rejected_before_trace);
    tcase_add_test(tc, test_hook_retries);
    tcase_add_test(tc, test_hook_split);
    suite_add_tcase(s, tc);

    tc = tcase_create("outgoing");
    tcase_add_test(tc, test_outgoing_traceparent);
    tcase_add_loop_test(tc, test_outgoing_tracestate, 0, TH_NELEM(ts_cases));
    tcase_add_test(tc, test_outgoing_tracestate_dropped);
    tcase_add_loop_test(tc, test_outgoing_baggage, 0, TH_NELEM(bg_cases));
    tcase_add_test(tc, test_outgoing_in_handler);
    tcase_add_test(tc, test_outgoing_estate);
    tcase_add_test(tc, test_outgoing_einval);
    tcase_add_test(tc, test_outgoing_small_buffers);
    tcase_add_test(tc, test_outgoing_exact_buffer);
    tcase_add_test(tc, test_outgoing_max_fits);
    suite_add_tcase(s, tc);

    tc = tcase_create("keyed_baggage");
    tcase_add_test(tc, test_keyed_baggage);
    tcase_add_test(tc, test_keyed_baggage_decoded);
    tcase_add_test(tc, test_keyed_baggage_missing);
    tcase_add_test(tc, test_keyed_baggage_too_long_and_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_add_test(tc, test_threads);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    return s;
}
