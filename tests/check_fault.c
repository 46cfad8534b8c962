/*
 * tests/check_fault.c - the fault injection stage (fg_stage_fault).
 *
 * The draws are a documented function of the seed (fault.h): a reference
 * written here from that description must agree with the stage on every
 * decision and every delay. Then: the fractions over 1e5 requests against
 * binomial bounds, abort and delay independent of each other (exactly, by
 * comparing with single-fault stages on the same seed); reproducibility
 * with a fixed seed and variety without one; header and rule targeting;
 * the abort's code, retry-after hint and rejecting stage; fixed and uniform
 * delays, added to what earlier stages asked for; the sync chain sleeping
 * the delay on a fake clock; shadow mode; 0 % and 100 %; option errors and
 * out-of-memory paths; and two threads on one stage.
 *
 * Time comes from a fake clock, never a sleep: the split API (enter/exit)
 * observes a decision without waiting, and fg_chain_call's wait advances
 * the fake clock.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

#define MS FG_NS_PER_MS
#define T0 (UINT64_C(1000) * FG_NS_PER_S)

/* ---- helpers --------------------------------------------------------------------------- */

/* A fault stage in a chain on a fake clock. The chain owns the stage. */
typedef struct rig {
    fg_fake_clock *fc;
    fg_chain *chain;
    const fg_stage *stage;
} rig;

static void rig_make_with(rig *r, const fg_fault_options *o, fg_stage *before) {
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    fg_stage *stage = NULL;

    ck_assert_int_eq(fg_fake_clock_new(T0, &r->fc), 0);
    co.clock = fg_fake_clock_as_clock(r->fc);
    ck_assert_int_eq(fg_chain_new(&co, &r->chain), 0);
    if (before != NULL)
        ck_assert_int_eq(fg_chain_use(r->chain, before), 0);
    int rc = fg_stage_fault(o, "drill", &stage);
    ck_assert_msg(rc == 0, "fg_stage_fault: %s", fg_err_name(rc));
    r->stage = stage;
    ck_assert_int_eq(fg_chain_use(r->chain, stage), 0);
}

static void rig_make(rig *r, const fg_fault_options *o) { rig_make_with(r, o, NULL); }

static void rig_free(rig *r) {
    fg_chain_free(r->chain);
    fg_fake_clock_free(r->fc);
}

static fg_fault_stats stats_of(const fg_stage *stage) {
    fg_fault_stats s;
    ck_assert_int_eq(fg_fault_stats_get(stage, &s), 0);
    return s;
}

/* One request's fate, observed through the split API (no waiting). */
typedef struct verdict {
    int rc;         /* 0 admitted, else the rejection */
    uint64_t delay; /* ctx->delay_ns after enter */
    uint64_t retry; /* ctx->retry_after_ns */
    const void *by; /* ctx->rejected_by */
} verdict;

/* Enter (and exit when admitted) one request with the given headers
 * (name, value pairs, NULL-terminated list; string literals). */
static verdict decide_h(const rig *r, const char *const *hdrs) {
    fg_ctx ctx;
    verdict v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
    for (int i = 0; hdrs != NULL && hdrs[i] != NULL; i += 2)
        ck_assert_int_eq(fg_ctx_add_header(&ctx, hdrs[i], hdrs[i + 1]), 0);
    v.rc = fg_chain_enter(r->chain, &ctx);
    v.delay = ctx.delay_ns;
    v.retry = ctx.retry_after_ns;
    v.by = ctx.rejected_by;
    if (v.rc == 0)
        ck_assert_int_eq(fg_chain_exit(r->chain, &ctx, 0), 0);
    return v;
}

static verdict decide(const rig *r) { return decide_h(r, NULL); }

/* A handler that records when it ran on the fake clock. */
typedef struct hrec {
    fg_fake_clock *fc;
    int calls;
    uint64_t clock_seen, now_seen, delay_seen;
} hrec;

static int rec_handler(fg_ctx *ctx, void *arg) {
    hrec *h = arg;
    h->calls++;
    h->clock_seen = fg_fake_clock_now(h->fc);
    h->now_seen = ctx->now_ns;
    h->delay_seen = ctx->delay_ns;
    return 0;
}

/* A stage that asks for a delay of its own (a smoothing limiter's, say):
 * raises ctx->delay_ns to the uint64_t its state points to. */
static int wait_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)slot;
    uint64_t w = *(const uint64_t *)state;
    if (w > ctx->delay_ns)
        ctx->delay_ns = w;
    return 0;
}

static const fg_stage_ops wait_ops = {"wait", wait_enter, NULL, NULL};

static fg_stage *mk_wait_stage(uint64_t *w) {
    fg_stage *s = NULL;
    ck_assert_int_eq(fg_stage_new(&wait_ops, w, "wait", &s), 0);
    return s;
}

/* ---- the reference: the draws as fault.h and the guide describe them ------------------- */

static uint64_t ref_splitmix(uint64_t seed, uint64_t k) {
    uint64_t z = seed + (k + 1) * UINT64_C(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint32_t ref_ppm(double percent) { return (uint32_t)(percent * 10000.0 + 0.5); }

static int ref_hit(uint64_t draw, uint32_t ppm) {
    return ((draw >> 32) * UINT64_C(1000000)) >> 32 < ppm;
}

__extension__ typedef unsigned __int128 u128;

/* The verdict of eligible request n. */
static verdict ref_verdict(const fg_fault_options *o, uint64_t n) {
    verdict v = {0, 0, 0, NULL};
    if (ref_hit(ref_splitmix(o->seed, 3 * n), ref_ppm(o->abort_percent))) {
        v.rc = o->abort_code ? o->abort_code : FG_EINJECTED;
        v.retry = o->abort_retry_after_ns;
        return v;
    }
    if (ref_hit(ref_splitmix(o->seed, 3 * n + 1), ref_ppm(o->delay_percent))) {
        uint64_t d = ref_splitmix(o->seed, 3 * n + 2);
        v.delay = o->delay_ns;
        if (o->delay_max_ns != 0 && o->delay_max_ns > o->delay_ns)
            v.delay += (uint64_t)(((u128)d * (o->delay_max_ns - o->delay_ns + 1)) >> 64);
    }
    return v;
}

/* ---- 1. the documented draws ----------------------------------------------------------- */

/* splitmix64's published first outputs for seed 0 pin the generator. */
START_TEST(test_splitmix_vectors) {
    ck_assert_uint_eq(ref_splitmix(0, 0), UINT64_C(0xe220a8397b1dcdaf));
    ck_assert_uint_eq(ref_splitmix(0, 1), UINT64_C(0x6e789e6aa1b965f4));
    ck_assert_uint_eq(ref_splitmix(0, 2), UINT64_C(0x06c45d188009454f));
}
END_TEST

START_TEST(test_matches_reference) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    rig r;

    o.seed = UINT64_C(0x5eed) + (uint64_t)_i;
    o.abort_percent = 7.5;
    o.abort_code = FG_EOVERLOADED;
    o.abort_retry_after_ns = 3 * MS;
    o.delay_percent = 20;
    o.delay_ns = 10 * MS;
    o.delay_max_ns = _i == 0 ? 0 : 30 * MS;
    rig_make(&r, &o);
    for (uint64_t n = 0; n < 20000; n++) {
        verdict got = decide(&r), want = ref_verdict(&o, n);
        TH_FAST_ASSERT(got.rc == want.rc && got.delay == want.delay && got.retry == want.retry,
                       "request %" PRIu64 ": rc %d delay %" PRIu64 " retry %" PRIu64
                       ", want rc %d delay %" PRIu64 " retry %" PRIu64,
                       n, got.rc, got.delay, got.retry, want.rc, want.delay, want.retry);
    }
    rig_free(&r);
}
END_TEST

/* ---- 2. fractions ---------------------------------------------------------------------- */

/*
 * Each count over N = 1e5 eligible requests is binomial(N, p), with standard
 * deviation sigma = sqrt(N p (1 - p)). The tolerances below are about 4.5
 * sigma, so a fair generator fails one check in roughly 150,000; the seeds
 * are fixed, so a run is reproducible and a failure is a real bias.
 *   abort 5 %:     mean 5,000,  sigma 68.9  -> +-300 (4.7 % .. 5.3 %)
 *   delay 1 %:     mean 1,000,  sigma 31.5  -> +-140
 *   abort 50 %:    mean 50,000, sigma 158.1 -> +-700
 *   delay 99.5 %:  mean 99,500, sigma 22.3  -> +-100
 *   abort 5 %, delay 10 %: aborted as above; delayed is binomial with
 *                  p = 0.95 x 0.10 = 0.095 (an aborted request is not delayed):
 *                  mean 9,500, sigma 92.7   -> +-420
 */
#define NFRAC 100000

typedef struct frac_case {
    double abort_pct, delay_pct;
    uint64_t want_aborted, tol_aborted;
    uint64_t want_delayed, tol_delayed;
} frac_case;

static const frac_case frac_cases[] = {
    {5, 0, 5000, 300, 0, 0},     {0, 1, 0, 0, 1000, 140},       {50, 0, 50000, 700, 0, 0},
    {0, 99.5, 0, 0, 99500, 100}, {5, 10, 5000, 300, 9500, 420},
};
static const uint64_t frac_seeds[] = {1, UINT64_C(0x9e3779b97f4a7c15), 424242};
#define NFRAC_RUNS (TH_NELEM(frac_cases) * TH_NELEM(frac_seeds))

static void assert_near(const char *what, uint64_t got, uint64_t want, uint64_t tol) {
    uint64_t diff = got > want ? got - want : want - got;
    ck_assert_msg(diff <= tol, "%s: %" PRIu64 ", want %" PRIu64 " +- %" PRIu64, what, got,
                  want, tol);
}

START_TEST(test_fractions) {
    const frac_case *c = &frac_cases[_i / TH_NELEM(frac_seeds)];
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    uint64_t aborted = 0, delayed = 0;
    rig r;

    o.seed = frac_seeds[_i % TH_NELEM(frac_seeds)];
    o.abort_percent = c->abort_pct;
    o.delay_percent = c->delay_pct;
    o.delay_ns = MS;
    rig_make(&r, &o);
    for (int i = 0; i < NFRAC; i++) {
        verdict v = decide(&r);
        aborted += v.rc == FG_EINJECTED;
        delayed += v.rc == 0 && v.delay == MS;
        TH_FAST_ASSERT(v.rc == 0 || v.rc == FG_EINJECTED, "rc %d", v.rc);
    }
    assert_near("aborted", aborted, c->want_aborted, c->tol_aborted);
    assert_near("delayed", delayed, c->want_delayed, c->tol_delayed);
    fg_fault_stats s = stats_of(r.stage);
    ck_assert_uint_eq(s.requests, NFRAC);
    ck_assert_uint_eq(s.eligible, NFRAC);
    ck_assert_uint_eq(s.aborted, aborted);
    ck_assert_uint_eq(s.delayed, delayed);
    ck_assert_uint_eq(s.delay_ns_total, delayed * MS);
    ck_assert_uint_eq(s.shadow_aborted + s.shadow_delayed, 0);
    rig_free(&r);
}
END_TEST

/*
 * Abort and delay are drawn independently. Three stages on one seed: abort
 * only, delay only, both. The combined stage must abort exactly the
 * requests the abort-only one aborts and delay exactly the others that the
 * delay-only one delays. And the delay draw is independent of the abort
 * draw: requests both would hit number about N x 5 % x 10 % = 500 (sigma
 * sqrt(1e5 x 0.005 x 0.995) = 22.3; +-100 is 4.5 sigma).
 */
START_TEST(test_independent) {
    fg_fault_options oa = FG_FAULT_OPTIONS_INIT, od, ob;
    rig ra, rd, rb;
    uint64_t both = 0;

    oa.seed = 77;
    oa.delay_ns = MS;
    od = oa;
    oa.abort_percent = 5;
    od.delay_percent = 10;
    ob = oa;
    ob.delay_percent = 10;
    rig_make(&ra, &oa);
    rig_make(&rd, &od);
    rig_make(&rb, &ob);
    for (int i = 0; i < NFRAC; i++) {
        verdict a = decide(&ra), d = decide(&rd), b = decide(&rb);
        int ab = a.rc != 0, dl = d.delay != 0;
        both += ab && dl;
        TH_FAST_ASSERT((b.rc != 0) == ab, "request %d: abort differs", i);
        TH_FAST_ASSERT((b.delay != 0) == (dl && !ab), "request %d: delay differs", i);
    }
    assert_near("requests hit by both draws", both, 500, 100);
    fg_fault_stats s = stats_of(rb.stage);
    ck_assert_uint_eq(s.aborted, stats_of(ra.stage).aborted);
    ck_assert_uint_eq(s.delayed + both, stats_of(rd.stage).delayed);
    rig_free(&ra);
    rig_free(&rd);
    rig_free(&rb);
}
END_TEST

/* ---- 3. seeds -------------------------------------------------------------------------- */

static void mixed_opts(fg_fault_options *o, uint64_t seed) {
    fg_fault_options d = FG_FAULT_OPTIONS_INIT;
    *o = d;
    o->seed = seed;
    o->abort_percent = 30;
    o->delay_percent = 30;
    o->delay_ns = MS;
    o->delay_max_ns = 100 * MS;
}

/* Same seed, same decisions and delays, request by request; another seed
 * differs (in about 60 % of 1e4 requests). */
START_TEST(test_seed_reproducible) {
    fg_fault_options o;
    rig a, b, c;
    int differ = 0;

    mixed_opts(&o, 12345);
    rig_make(&a, &o);
    rig_make(&b, &o);
    o.seed = 12346;
    rig_make(&c, &o);
    for (int i = 0; i < 10000; i++) {
        verdict va = decide(&a), vb = decide(&b), vc = decide(&c);
        TH_FAST_ASSERT(va.rc == vb.rc && va.delay == vb.delay, "request %d differs", i);
        differ += va.rc != vc.rc || va.delay != vc.delay;
    }
    ck_assert_int_gt(differ, 1000);
    rig_free(&a);
    rig_free(&b);
    rig_free(&c);
}
END_TEST

/* Seed 0: each stage draws its own seed; two such stages disagree. */
START_TEST(test_seed_random) {
    fg_fault_options o;
    rig a, b;
    int differ = 0;

    mixed_opts(&o, 0);
    rig_make(&a, &o);
    rig_make(&b, &o);
    for (int i = 0; i < 10000; i++) {
        verdict va = decide(&a), vb = decide(&b);
        differ += va.rc != vb.rc || va.delay != vb.delay;
    }
    ck_assert_int_gt(differ, 1000);
    rig_free(&a);
    rig_free(&b);
}
END_TEST

/* ---- 4. targeting ---------------------------------------------------------------------- */

static const char *const h_gray[] = {"x-env", "gray", NULL};
static const char *const h_gray_uc[] = {"X-Env", "gray", NULL};
static const char *const h_gray_val_uc[] = {"x-env", "Gray", NULL};
static const char *const h_blue[] = {"x-env", "blue", NULL};
static const char *const h_empty[] = {"x-env", "", NULL};
static const char *const h_other[] = {"x-user", "gray", NULL};
static const char *const h_blue_gray[] = {"x-env", "blue", "x-env", "gray", NULL};
static const char *const h_gray_acme[] = {"x-env", "gray", "x-tenant", "acme", NULL};
static const char *const h_blue_acme[] = {"x-env", "blue", "x-tenant", "acme", NULL};
static const char *const h_gray_beta[] = {"x-env", "gray", "x-tenant", "beta", NULL};

START_TEST(test_header_value) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    rig r;

    o.abort_percent = 100;
    o.header = "x-env";
    o.header_value = "gray";
    rig_make(&r, &o);
    ck_assert_int_eq(decide_h(&r, h_gray).rc, FG_EINJECTED);
    ck_assert_int_eq(decide_h(&r, h_gray_uc).rc, FG_EINJECTED); /* names: any case */
    ck_assert_int_eq(decide_h(&r, h_gray_val_uc).rc, 0);        /* values: exact */
    ck_assert_int_eq(decide_h(&r, h_blue).rc, 0);
    ck_assert_int_eq(decide_h(&r, h_empty).rc, 0);
    ck_assert_int_eq(decide_h(&r, h_other).rc, 0);
    ck_assert_int_eq(decide_h(&r, h_blue_gray).rc, 0); /* the first x-env counts */
    ck_assert_int_eq(decide(&r).rc, 0);
    fg_fault_stats s = stats_of(r.stage);
    ck_assert_uint_eq(s.requests, 8);
    ck_assert_uint_eq(s.eligible, 2);
    ck_assert_uint_eq(s.aborted, 2);
    rig_free(&r);
}
END_TEST

START_TEST(test_header_presence) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    rig r;

    o.abort_percent = 100;
    o.header = "X-ENV";
    rig_make(&r, &o);
    ck_assert_int_eq(decide_h(&r, h_gray).rc, FG_EINJECTED);
    ck_assert_int_eq(decide_h(&r, h_blue).rc, FG_EINJECTED);
    ck_assert_int_eq(decide_h(&r, h_empty).rc, FG_EINJECTED);
    ck_assert_int_eq(decide_h(&r, h_other).rc, 0);
    ck_assert_int_eq(decide(&r).rc, 0);
    ck_assert_uint_eq(stats_of(r.stage).eligible, 3);
    rig_free(&r);
}
END_TEST

static fg_expr *compile(const char *src) {
    fg_expr *e = NULL;
    fg_parse_error err;
    int rc = fg_expr_compile(src, strlen(src), &e, &err);
    ck_assert_msg(rc == 0, "%s: %s at %zu", src, err.message, err.column);
    return e;
}

START_TEST(test_rule) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    fg_expr *when = compile("header[\"x-env\"] == \"gray\"");
    rig r;

    o.abort_percent = 100;
    o.when = when;
    rig_make(&r, &o);
    ck_assert_int_eq(decide_h(&r, h_gray).rc, FG_EINJECTED);
    ck_assert_int_eq(decide_h(&r, h_blue).rc, 0);
    ck_assert_int_eq(decide(&r).rc, 0);
    fg_fault_stats s = stats_of(r.stage);
    ck_assert_uint_eq(s.requests, 3);
    ck_assert_uint_eq(s.eligible, 1);
    rig_free(&r);
    fg_expr_free(when);
}
END_TEST

/* Header and rule: both must hold. */
START_TEST(test_header_and_rule) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    fg_expr *when = compile("header[\"x-env\"] == \"gray\"");
    rig r;

    o.abort_percent = 100;
    o.when = when;
    o.header = "x-tenant";
    o.header_value = "acme";
    rig_make(&r, &o);
    ck_assert_int_eq(decide_h(&r, h_gray_acme).rc, FG_EINJECTED);
    ck_assert_int_eq(decide_h(&r, h_blue_acme).rc, 0);
    ck_assert_int_eq(decide_h(&r, h_gray_beta).rc, 0);
    ck_assert_int_eq(decide_h(&r, h_gray).rc, 0);
    ck_assert_uint_eq(stats_of(r.stage).eligible, 1);
    rig_free(&r);
    fg_expr_free(when);
}
END_TEST

/* Mixed traffic, 20 % abort and 20 % delay: only gray requests are ever
 * touched, and the gray ones see exactly the decisions of an untargeted
 * stage on the same seed (only eligible requests take a draw). */
START_TEST(test_targeting_only_eligible) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT, plain;
    fg_expr *when = compile("baggage.tenant == \"acme\"");
    rig r, ref;
    uint64_t rng = 99, gray = 0;

    o.seed = 5;
    o.abort_percent = 20;
    o.delay_percent = 20;
    o.delay_ns = MS;
    plain = o;
    o.header = "x-env";
    o.header_value = "gray";
    rig_make(&r, &o);
    rig_make(&ref, &plain);
    for (int i = 0; i < 20000; i++) {
        int is_gray = th_rng_below(&rng, 4) == 0;
        verdict v = decide_h(&r, is_gray ? h_gray : h_blue);
        if (!is_gray) {
            TH_FAST_ASSERT(v.rc == 0 && v.delay == 0, "request %d: not gray but faulted", i);
            continue;
        }
        gray++;
        verdict w = decide(&ref);
        TH_FAST_ASSERT(v.rc == w.rc && v.delay == w.delay, "gray request %d differs", i);
    }
    fg_fault_stats s = stats_of(r.stage);
    ck_assert_uint_eq(s.requests, 20000);
    ck_assert_uint_eq(s.eligible, gray);
    ck_assert_uint_gt(s.aborted, 0);
    ck_assert_uint_gt(s.delayed, 0);
    rig_free(&r);
    rig_free(&ref);

    /* A tenant in baggage, by rule. */
    plain.when = when;
    rig_make(&r, &plain);
    static const char *const acme[] = {"baggage", "tenant=acme,region=eu", NULL};
    static const char *const beta[] = {"baggage", "tenant=beta", NULL};
    uint64_t faulted = 0;
    for (int i = 0; i < 1000; i++) {
        verdict v = decide_h(&r, beta);
        TH_FAST_ASSERT(v.rc == 0 && v.delay == 0, "beta request %d faulted", i);
        v = decide_h(&r, acme);
        faulted += v.rc != 0 || v.delay != 0;
    }
    ck_assert_uint_eq(stats_of(r.stage).eligible, 1000);
    ck_assert_uint_gt(faulted, 200);
    rig_free(&r);
    fg_expr_free(when);
}
END_TEST

/* ---- 5. aborts ------------------------------------------------------------------------- */

START_TEST(test_abort_call) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    hrec h = {0};
    fg_ctx ctx;
    rig r;

    o.abort_percent = 100;
    o.abort_code = FG_EOVERLOADED;
    o.abort_retry_after_ns = 2 * FG_NS_PER_S;
    rig_make(&r, &o);
    h.fc = r.fc;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_EOVERLOADED);
    ck_assert_int_eq(h.calls, 0);
    ck_assert_int_eq(ctx.status, FG_EOVERLOADED);
    ck_assert_ptr_eq(ctx.rejected_by, r.stage);
    ck_assert_uint_eq(ctx.retry_after_ns, 2 * FG_NS_PER_S);
    ck_assert_uint_eq(ctx.delay_ns, 0);
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0);

    fg_error *e = fg_error_from_ctx(&ctx);
    ck_assert_int_eq(fg_error_code(e), FG_EOVERLOADED);
    ck_assert_str_eq(fg_error_stage(e), "drill");
    ck_assert_uint_eq(fg_error_retry_after_ns(e), 2 * FG_NS_PER_S);
    fg_error_free(e);
    rig_free(&r);

    /* The defaults: FG_EINJECTED, no hint; 0 means the default code too. */
    for (int i = 0; i < 2; i++) {
        fg_fault_options d = FG_FAULT_OPTIONS_INIT;
        d.abort_percent = 100;
        if (i == 1)
            d.abort_code = 0;
        rig_make(&r, &d);
        verdict v = decide(&r);
        ck_assert_int_eq(v.rc, FG_EINJECTED);
        ck_assert_ptr_eq(v.by, r.stage);
        ck_assert_uint_eq(v.retry, 0);
        fg_fault_stats s = stats_of(r.stage);
        ck_assert_uint_eq(s.aborted, 1);
        ck_assert_uint_eq(s.delayed, 0);
        rig_free(&r);
    }
}
END_TEST

/* Every outcome code is accepted as the abort code and returned as is. */
START_TEST(test_abort_codes) {
    static const int codes[] = {FG_ELIMITED,  FG_EBREAKER,    FG_ENOROUTE,
                                FG_ETIMEDOUT, FG_EOVERLOADED, FG_EINJECTED,
                                FG_EHANDLER,  FG_ECANCELED,   FG_EREJECTED};
    for (int i = 0; i < TH_NELEM(codes); i++) {
        fg_fault_options o = FG_FAULT_OPTIONS_INIT;
        rig r;
        o.abort_percent = 100;
        o.abort_code = codes[i];
        rig_make(&r, &o);
        ck_assert_int_eq(decide(&r).rc, codes[i]);
        rig_free(&r);
    }
}
END_TEST

/* Behind a retrying stage each attempt is a new request with its own draw. */
static int retry_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    (void)state, (void)outcome, (void)slot;
    return ctx->retry_count < 2 ? FG_STAGE_RETRY : 0;
}

static const fg_stage_ops retry_ops = {"retry", NULL, retry_exit, NULL};

START_TEST(test_abort_retried) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    fg_stage *retry = NULL;
    hrec h = {0};
    fg_ctx ctx;
    rig r;

    o.abort_percent = 100;
    ck_assert_int_eq(fg_stage_new(&retry_ops, NULL, "retry", &retry), 0);
    rig_make_with(&r, &o, retry);
    h.fc = r.fc;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_EINJECTED);
    ck_assert_int_eq(h.calls, 0);
    ck_assert_uint_eq(ctx.retry_count, 2);
    fg_fault_stats s = stats_of(r.stage);
    ck_assert_uint_eq(s.requests, 3);
    ck_assert_uint_eq(s.aborted, 3);
    rig_free(&r);
}
END_TEST

/* ---- 6. delays ------------------------------------------------------------------------- */

START_TEST(test_delay_fixed) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    rig r;

    o.delay_percent = 100;
    o.delay_ns = 200 * MS;
    rig_make(&r, &o);
    for (int i = 0; i < 1000; i++) {
        verdict v = decide(&r);
        TH_FAST_ASSERT(v.rc == 0 && v.delay == 200 * MS, "request %d: delay %" PRIu64, i,
                       v.delay);
    }
    fg_fault_stats s = stats_of(r.stage);
    ck_assert_uint_eq(s.delayed, 1000);
    ck_assert_uint_eq(s.delay_ns_total, 1000 * 200 * MS);
    rig_free(&r);

    /* delay_max_ns equal to delay_ns: fixed as well. */
    o.delay_max_ns = o.delay_ns;
    rig_make(&r, &o);
    ck_assert_uint_eq(decide(&r).delay, 200 * MS);
    rig_free(&r);
}
END_TEST

/*
 * Uniform in [10 ms, 20 ms]: every delay inside, both ends approached (the
 * chance that 1e4 uniform draws all miss the lowest 1/1000 of the range is
 * 0.999^1e4 = 4.5e-5), and the mean near 15 ms: its sigma is
 * 10 ms / sqrt(12 x 1e4) = 28.9 us, and +-150 us is 5.2 sigma.
 */
START_TEST(test_delay_uniform) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    const uint64_t lo = 10 * MS, hi = 20 * MS, n = 10000;
    uint64_t min = UINT64_MAX, max = 0;
    rig r;

    o.seed = 31337;
    o.delay_percent = 100;
    o.delay_ns = lo;
    o.delay_max_ns = hi;
    rig_make(&r, &o);
    for (uint64_t i = 0; i < n; i++) {
        verdict v = decide(&r);
        TH_FAST_ASSERT(v.delay >= lo && v.delay <= hi, "delay %" PRIu64 " outside", v.delay);
        min = v.delay < min ? v.delay : min;
        max = v.delay > max ? v.delay : max;
    }
    ck_assert_uint_lt(min, lo + (hi - lo) / 1000);
    ck_assert_uint_gt(max, hi - (hi - lo) / 1000);
    fg_fault_stats s = stats_of(r.stage);
    ck_assert_uint_eq(s.delayed, n);
    assert_near("mean delay", s.delay_ns_total / n, (lo + hi) / 2, 150 * FG_NS_PER_US);
    rig_free(&r);

    /* A range of two values: both occur, nothing else. */
    o.delay_ns = 1;
    o.delay_max_ns = 2;
    rig_make(&r, &o);
    int seen[3] = {0, 0, 0};
    for (int i = 0; i < 1000; i++) {
        uint64_t d = decide(&r).delay;
        ck_assert(d == 1 || d == 2);
        seen[d]++;
    }
    ck_assert(seen[1] > 400 && seen[2] > 400);
    rig_free(&r);

    /* The widest range does not overflow. */
    o.delay_ns = 0;
    o.delay_max_ns = UINT64_MAX;
    rig_make(&r, &o);
    uint64_t top = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t d = decide(&r).delay;
        top = d > top ? d : top;
    }
    ck_assert_uint_gt(top, UINT64_MAX / 2);
    rig_free(&r);
}
END_TEST

/* The injected delay is added to an earlier stage's wait, saturating. The
 * stage does not shorten it to fit the deadline: the chain then rejects a
 * request that could only start after its deadline (FG_ETIMEDOUT), which
 * is what a latency drill is meant to provoke. */
START_TEST(test_delay_adds) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    uint64_t wait = 50 * MS;
    fg_ctx ctx;
    rig r;

    o.delay_percent = 100;
    o.delay_ns = 200 * MS;
    rig_make_with(&r, &o, mk_wait_stage(&wait));
    ck_assert_uint_eq(decide(&r).delay, 250 * MS);
    wait = UINT64_MAX - MS;
    ck_assert_uint_eq(decide(&r).delay, UINT64_MAX);
    wait = 0;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
    ctx.deadline_ns = T0 + 10 * MS;
    ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), FG_ETIMEDOUT);
    ck_assert_uint_eq(ctx.delay_ns, 200 * MS);
    ck_assert_ptr_null(ctx.rejected_by); /* the chain, not a stage */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
    ctx.deadline_ns = T0 + 200 * MS; /* exactly enough */
    ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), 0);
    ck_assert_uint_eq(ctx.delay_ns, 200 * MS);
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0); /* split API: the caller waits */
    ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, 0), 0);
    rig_free(&r);
}
END_TEST

/* fg_chain_call on a fake clock: the handler runs delay_ns later. */
START_TEST(test_delay_call) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    uint64_t wait = 0;
    hrec h = {0};
    fg_ctx ctx;
    rig r;

    o.delay_percent = 100;
    o.delay_ns = 200 * MS;
    rig_make_with(&r, &o, mk_wait_stage(&wait));
    h.fc = r.fc;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_uint_eq(h.now_seen, T0);
    ck_assert_uint_eq(h.delay_seen, 200 * MS);
    ck_assert_uint_eq(h.clock_seen, T0 + 200 * MS);

    /* On top of a 50 ms wait an earlier stage asked for. */
    wait = 50 * MS;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_uint_eq(h.now_seen, T0 + 200 * MS);
    ck_assert_uint_eq(h.clock_seen, T0 + 200 * MS + 250 * MS);
    rig_free(&r);
}
END_TEST

/* ---- 7. shadow mode -------------------------------------------------------------------- */

/* Nothing is injected; the shadow counters count exactly what the same
 * stage, enforcing, does on the same seed. */
START_TEST(test_shadow) {
    fg_fault_options o;
    hrec h = {0};
    rig live, sh;

    mixed_opts(&o, 2024);
    o.abort_retry_after_ns = MS;
    rig_make(&live, &o);
    o.shadow = 1;
    rig_make(&sh, &o);
    h.fc = sh.fc;
    for (int i = 0; i < 5000; i++) {
        fg_ctx ctx;
        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
        TH_FAST_ASSERT(fg_chain_call(sh.chain, &ctx, rec_handler, &h) == 0, "request %d", i);
        TH_FAST_ASSERT(ctx.delay_ns == 0 && ctx.retry_after_ns == 0 && ctx.rejected_by == NULL,
                       "request %d: ctx touched", i);
        (void)decide(&live);
    }
    ck_assert_int_eq(h.calls, 5000);
    ck_assert_uint_eq(fg_fake_clock_now(sh.fc), T0);
    fg_fault_stats l = stats_of(live.stage), s = stats_of(sh.stage);
    ck_assert_uint_eq(s.requests, 5000);
    ck_assert_uint_eq(s.eligible, 5000);
    ck_assert_uint_eq(s.aborted, 0);
    ck_assert_uint_eq(s.delayed, 0);
    ck_assert_uint_eq(s.delay_ns_total, 0);
    ck_assert_uint_eq(s.shadow_aborted, l.aborted);
    ck_assert_uint_eq(s.shadow_delayed, l.delayed);
    ck_assert_uint_gt(s.shadow_aborted, 1000);
    ck_assert_uint_gt(s.shadow_delayed, 500);
    ck_assert_uint_eq(l.shadow_aborted + l.shadow_delayed, 0);
    rig_free(&live);
    rig_free(&sh);
}
END_TEST

/* ---- 8. 0 % and 100 % ------------------------------------------------------------------ */

START_TEST(test_extremes) {
    static const struct {
        double abort_pct, delay_pct;
        int aborted, delayed; /* 1: every request, 0: none */
    } cases[] = {
        {0, 0, 0, 0},     {100, 0, 1, 0},           {0, 100, 0, 1},
        {100, 100, 1, 0}, {0.00004, 0.00004, 0, 0},
    };
    for (int c = 0; c < TH_NELEM(cases); c++) {
        fg_fault_options o = FG_FAULT_OPTIONS_INIT;
        rig r;
        o.seed = (uint64_t)c + 1;
        o.abort_percent = cases[c].abort_pct;
        o.delay_percent = cases[c].delay_pct;
        o.delay_ns = MS;
        rig_make(&r, &o);
        for (int i = 0; i < 20000; i++) {
            verdict v = decide(&r);
            TH_FAST_ASSERT((v.rc != 0) == cases[c].aborted &&
                               (v.delay != 0) == cases[c].delayed,
                           "case %d request %d: rc %d delay %" PRIu64, c, i, v.rc, v.delay);
        }
        fg_fault_stats s = stats_of(r.stage);
        ck_assert_uint_eq(s.aborted, cases[c].aborted ? 20000 : 0);
        ck_assert_uint_eq(s.delayed, cases[c].delayed ? 20000 : 0);
        rig_free(&r);
    }
}
END_TEST

/* ---- 9. options, names, stats ---------------------------------------------------------- */

static int make_rc(const fg_fault_options *o, const char *name) {
    fg_stage *s = (fg_stage *)&s; /* a sentinel: must be left alone on error */
    fg_stage *const sentinel = s;
    int rc = fg_stage_fault(o, name, &s);
    if (rc == 0) {
        ck_assert_ptr_nonnull(s);
        fg_stage_unref(s);
    } else {
        ck_assert_ptr_eq(s, sentinel);
    }
    return rc;
}

START_TEST(test_bad_options) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    fg_stage *s = NULL;
    char name[FG_STAGE_NAME_MAX + 2];
    char *hdr = malloc(FG_HEADER_NAME_MAX + 2), *val = malloc(FG_HEADER_VALUE_MAX + 2);

    ck_assert_ptr_nonnull(hdr);
    ck_assert_ptr_nonnull(val);
    ck_assert_int_eq(fg_stage_fault(NULL, "f", &s), FG_EINVAL);
    ck_assert_int_eq(fg_stage_fault(&o, "f", NULL), FG_EINVAL);
    ck_assert_int_eq(make_rc(&o, NULL), 0);

    static const double bad_pct[] = {-0.0001, 100.0001, -1e300, 1e300};
    for (int i = 0; i < TH_NELEM(bad_pct) + 3; i++) {
        double p = i < TH_NELEM(bad_pct)        ? bad_pct[i]
                   : i == TH_NELEM(bad_pct)     ? NAN
                   : i == TH_NELEM(bad_pct) + 1 ? INFINITY
                                                : -INFINITY;
        o = (fg_fault_options)FG_FAULT_OPTIONS_INIT;
        o.abort_percent = p;
        ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
        o = (fg_fault_options)FG_FAULT_OPTIONS_INIT;
        o.delay_percent = p;
        ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    }
    o = (fg_fault_options)FG_FAULT_OPTIONS_INIT;
    o.abort_percent = 100;
    o.delay_percent = 0;
    ck_assert_int_eq(make_rc(&o, NULL), 0);

    o = (fg_fault_options)FG_FAULT_OPTIONS_INIT;
    o.delay_ns = 10;
    o.delay_max_ns = 9;
    ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    o.delay_max_ns = 10;
    ck_assert_int_eq(make_rc(&o, NULL), 0);
    o.delay_max_ns = 0; /* unset: fixed */
    ck_assert_int_eq(make_rc(&o, NULL), 0);

    static const int bad_codes[] = {FG_EINVAL, FG_ENOMEM, FG_EPARSE, 1,    42,
                                    -99,       -109,      -150,      -200, INT32_MIN};
    for (int i = 0; i < TH_NELEM(bad_codes); i++) {
        o = (fg_fault_options)FG_FAULT_OPTIONS_INIT;
        o.abort_code = bad_codes[i];
        ck_assert_msg(make_rc(&o, NULL) == FG_EINVAL, "abort_code %d", bad_codes[i]);
    }

    o = (fg_fault_options)FG_FAULT_OPTIONS_INIT;
    o.header_value = "gray";
    ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    o.header = "";
    ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    o.header = "x env";
    ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    o.header = "x-env:";
    ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    th_fill(hdr, FG_HEADER_NAME_MAX, "x-hdr");
    hdr[FG_HEADER_NAME_MAX] = '\0';
    o.header = hdr;
    ck_assert_int_eq(make_rc(&o, NULL), 0);
    hdr[FG_HEADER_NAME_MAX] = 'x';
    hdr[FG_HEADER_NAME_MAX + 1] = '\0';
    ck_assert_int_eq(make_rc(&o, NULL), FG_ETOOLONG);
    o.header = "x-env";
    th_fill(val, FG_HEADER_VALUE_MAX, "gray ");
    val[FG_HEADER_VALUE_MAX] = '\0';
    o.header_value = val;
    ck_assert_int_eq(make_rc(&o, NULL), 0);
    val[FG_HEADER_VALUE_MAX] = 'y';
    val[FG_HEADER_VALUE_MAX + 1] = '\0';
    ck_assert_int_eq(make_rc(&o, NULL), FG_ETOOLONG);
    o.header_value = "";
    ck_assert_int_eq(make_rc(&o, NULL), 0);

    o = (fg_fault_options)FG_FAULT_OPTIONS_INIT;
    th_fill(name, FG_STAGE_NAME_MAX, "fault-");
    name[FG_STAGE_NAME_MAX] = '\0';
    ck_assert_int_eq(make_rc(&o, name), 0);
    name[FG_STAGE_NAME_MAX] = 'x';
    name[FG_STAGE_NAME_MAX + 1] = '\0';
    ck_assert_int_eq(make_rc(&o, name), FG_ETOOLONG);
    free(hdr);
    free(val);
}
END_TEST

static const fg_stage_ops other_ops = {"fault", NULL, NULL, NULL};

START_TEST(test_names_and_stats) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    fg_stage *s = NULL, *other = NULL;
    fg_fault_stats st;
    char name[] = "drill";
    char hdr[] = "x-env", val[] = "gray";

    ck_assert_int_eq(fg_stage_fault(&o, NULL, &s), 0);
    ck_assert_str_eq(fg_stage_kind(s), "fault");
    ck_assert_str_eq(fg_stage_name(s), "fault");
    ck_assert_int_eq(fg_fault_stats_get(s, &st), 0);
    ck_assert(th_is_zero(&st, sizeof(st)));
    ck_assert_int_eq(fg_fault_stats_get(s, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_fault_stats_get(NULL, &st), FG_EINVAL);
    fg_stage_unref(s);

    /* The name and the header strings are copied. */
    o.abort_percent = 100;
    o.header = hdr;
    o.header_value = val;
    ck_assert_int_eq(fg_stage_fault(&o, name, &s), 0);
    name[0] = 'X';
    hdr[0] = 'y';
    val[0] = 'b';
    ck_assert_str_eq(fg_stage_name(s), "drill");
    rig r;
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    ck_assert_int_eq(fg_fake_clock_new(T0, &r.fc), 0);
    co.clock = fg_fake_clock_as_clock(r.fc);
    ck_assert_int_eq(fg_chain_new(&co, &r.chain), 0);
    r.stage = s;
    ck_assert_int_eq(fg_chain_use(r.chain, s), 0);
    ck_assert_int_eq(decide_h(&r, h_gray).rc, FG_EINJECTED);
    rig_free(&r);

    /* Another kind, even one called "fault", has no fault stats. */
    ck_assert_int_eq(fg_stage_new(&other_ops, NULL, "fault", &other), 0);
    ck_assert_int_eq(fg_fault_stats_get(other, &st), FG_EINVAL);
    fg_stage_unref(other);
    fg_limiter_options lo = FG_LIMITER_OPTIONS_INIT;
    fg_limiter *l = NULL;
    lo.rate = 1;
    lo.burst = 1;
    ck_assert_int_eq(fg_limiter_new(&lo, &l), 0);
    ck_assert_int_eq(fg_stage_limit(l, NULL, &other), 0);
    ck_assert_int_eq(fg_fault_stats_get(other, &st), FG_EINVAL);
    fg_stage_unref(other);
    fg_limiter_free(l);
}
END_TEST

/* ---- 10. out of memory ----------------------------------------------------------------- */

static void oom_teardown(void) {
    fg_set_alloc_funcs(NULL, NULL);
    th_alloc_reset();
}

/* Fail the 1st, 2nd, ... allocation of a full construction (state, header,
 * value, stage, name): FG_ENOMEM each time and nothing leaks. */
START_TEST(test_oom) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    o.header = "x-env";
    o.header_value = "gray";
    o.seed = 1;
    for (long n = 1; n < 50; n++) {
        fg_stage *s = NULL;
        th_alloc_reset();
        ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
        th_alloc.fail_at = n;
        int rc = fg_stage_fault(&o, "drill", &s);
        if (rc == 0)
            fg_stage_unref(s);
        fg_set_alloc_funcs(NULL, NULL);
        ck_assert_msg(th_alloc.allocs == th_alloc.frees,
                      "N=%ld: %ld blocks allocated, %ld freed", n, th_alloc.allocs,
                      th_alloc.frees);
        if (!th_alloc.injected) {
            ck_assert_int_eq(rc, 0);
            ck_assert_int_eq(n, 6); /* state, header, value, stage, name: 5 */
            return;
        }
        ck_assert_msg(rc == FG_ENOMEM, "N=%ld: %s", n, fg_err_name(rc));
    }
    ck_abort_msg("still failing after 50 allocations");
}
END_TEST

/* ---- 11. threads ----------------------------------------------------------------------- */

#define NTHREADS   2
#define PER_THREAD 50000

typedef struct worker {
    const rig *r;
    uint64_t aborted, delayed, delay_sum;
    int bad;
} worker;

/* Each thread runs its requests through fg_chain_call; a delay advances
 * the shared fake clock (atomically) by exactly the delay. */
static void *worker_main(void *arg) {
    worker *w = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        fg_ctx ctx;
        if (fg_ctx_init(&ctx, "GET", "/orders") != 0) {
            w->bad++;
            continue;
        }
        int rc = fg_chain_call(w->r->chain, &ctx, th_ok_handler, NULL);
        if (rc == FG_EINJECTED) {
            w->aborted++;
        } else if (rc == 0) {
            w->delayed += ctx.delay_ns != 0;
            w->delay_sum += ctx.delay_ns;
        } else {
            w->bad++;
        }
    }
    return NULL;
}

/*
 * Two threads share one stage. Counters are exact, and because the draws
 * are numbered, the threads between them receive exactly the decisions one
 * thread gets from the same seed for the same number of requests: the same
 * counts and the same total delay.
 */
START_TEST(test_threads) {
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    worker w[NTHREADS];
    pthread_t th[NTHREADS];
    uint64_t aborted = 0, delayed = 0, delay_sum = 0;
    rig r, one;

    o.seed = 8;
    o.abort_percent = 5;
    o.delay_percent = 10;
    o.delay_ns = 1;
    o.delay_max_ns = 1000;
    rig_make(&r, &o);
    memset(w, 0, sizeof(w));
    for (int i = 0; i < NTHREADS; i++) {
        w[i].r = &r;
        ck_assert_int_eq(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < NTHREADS; i++) {
        ck_assert_int_eq(w[i].bad, 0);
        aborted += w[i].aborted;
        delayed += w[i].delayed;
        delay_sum += w[i].delay_sum;
    }
    fg_fault_stats s = stats_of(r.stage);
    ck_assert_uint_eq(s.requests, NTHREADS * PER_THREAD);
    ck_assert_uint_eq(s.eligible, NTHREADS * PER_THREAD);
    ck_assert_uint_eq(s.aborted, aborted);
    ck_assert_uint_eq(s.delayed, delayed);
    ck_assert_uint_eq(s.delay_ns_total, delay_sum);
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0 + delay_sum);

    rig_make(&one, &o);
    for (int i = 0; i < NTHREADS * PER_THREAD; i++)
        (void)decide(&one);
    fg_fault_stats t = stats_of(one.stage);
    ck_assert_uint_eq(s.aborted, t.aborted);
    ck_assert_uint_eq(s.delayed, t.delayed);
    ck_assert_uint_eq(s.delay_ns_total, t.delay_ns_total);
    rig_free(&r);
    rig_free(&one);
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

Suite *fg_suite_fault(void) {
    Suite *s = suite_create("fault");
    TCase *tc;

    tc = tcase_create("draws");
    tcase_add_test(tc, test_splitmix_vectors);
    tcase_add_loop_test(tc, test_matches_reference, 0, 2);
    tcase_add_test(tc, test_seed_reproducible);
    tcase_add_test(tc, test_seed_random);
    suite_add_tcase(s, tc);

    tc = tcase_create("fractions");
    tcase_add_loop_test(tc, test_fractions, 0, NFRAC_RUNS);
    tcase_add_test(tc, test_independent);
    tcase_add_test(tc, test_extremes);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("targeting");
    tcase_add_test(tc, test_header_value);
    tcase_add_test(tc, test_header_presence);
    tcase_add_test(tc, test_rule);
    tcase_add_test(tc, test_header_and_rule);
    tcase_add_test(tc, test_targeting_only_eligible);
    suite_add_tcase(s, tc);

    tc = tcase_create("abort");
    tcase_add_test(tc, test_abort_call);
    tcase_add_test(tc, test_abort_codes);
    tcase_add_test(tc, test_abort_retried);
    suite_add_tcase(s, tc);

    tc = tcase_create("delay");
    tcase_add_test(tc, test_delay_fixed);
    tcase_add_test(tc, test_delay_uniform);
    tcase_add_test(tc, test_delay_adds);
    tcase_add_test(tc, test_delay_call);
    suite_add_tcase(s, tc);

    tc = tcase_create("shadow");
    tcase_add_test(tc, test_shadow);
    suite_add_tcase(s, tc);

    tc = tcase_create("options");
    tcase_add_test(tc, test_bad_options);
    tcase_add_test(tc, test_names_and_stats);
    suite_add_tcase(s, tc);

    tc = tcase_create("oom");
    tcase_add_checked_fixture(tc, NULL, oom_teardown);
    tcase_add_test(tc, test_oom);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_add_test(tc, test_threads);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    return s;
}
