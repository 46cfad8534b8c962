/*
 * lib/fault.c - the fault injection stage: for requests the targeting
 * selects, abort a fraction with a chosen outcome code and delay a fraction
 * by a fixed or uniform amount, from draws that a seed makes reproducible.
 * In shadow mode decide and count, never act.
 *
 * The draws: eligible requests are numbered by one fetch-and-add on the
 * `eligible` counter, and request n reads outputs 3n, 3n+1, 3n+2 of the
 * splitmix64 generator seeded with the stage's seed. splitmix64's k-th
 * output is a pure function of (seed, k), so there is no generator state to
 * share between threads: the counter is the only shared word, and two
 * stages with the same seed hand out the same sequence of decisions.
 */
#include <string.h>

#include "floodgate/error.h"
#include "floodgate/fault.h"

#include "alloc.h"
#include "atomic.h"
#include "internal.h"

__extension__ typedef unsigned __int128 fg_fault_u128;

#define FG_FAULT_PPM    UINT32_C(1000000)            /* 100 % */
#define FG_SPLITMIX_INC UINT64_C(0x9e3779b97f4a7c15) /* splitmix64's increment */

struct fg_fault_stage {
    /* Read-only after creation. */
    uint64_t seed;
    uint32_t delay_ppm; /* parts per million of eligible requests */
    uint32_t abort_ppm;
    uint64_t delay_ns;   /* the least delay */
    uint64_t delay_span; /* delay_max_ns - delay_ns; 0 for a fixed delay */
    uint64_t retry_after_ns;
    int abort_code;
    int shadow;
    char *header; /* NULL: no header condition */
    size_t header_len;
    char *value; /* NULL: presence is enough */
    size_t value_len;
    const fg_expr *when;
    /* Counters, away from the fields above: every request writes some, and
     * the read-only fields should not share a cache line with them. */
    char pad[64];
    uint64_t requests;
    uint64_t eligible; /* also the draw counter: request n is the n-th eligible one */
    uint64_t delayed;
    uint64_t aborted;
    uint64_t delay_ns_total;
    uint64_t shadow_delayed;
    uint64_t shadow_aborted;
};

/* Output k (0-based) of splitmix64 seeded with seed: the generator adds the
 * increment to its state, then mixes (Steele, Lea and Flood, 2014). */
static uint64_t fg_splitmix64_at(uint64_t seed, uint64_t k) {
    uint64_t z = seed + (k + 1) * FG_SPLITMIX_INC;
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* Whether a draw falls below ppm parts per million: the draw's high 32 bits
 * scaled to [0, 1e6) (multiply and shift, off from exact by under 2^-32),
 * so ppm 0 never hits and ppm 1e6 always does. */
static int fg_fault_hit(uint64_t draw, uint32_t ppm) {
    return ((draw >> 32) * FG_FAULT_PPM) >> 32 < ppm;
}

/* A delay uniform in [delay_ns, delay_ns + delay_span], both ends included. */
static uint64_t fg_fault_delay(const struct fg_fault_stage *st, uint64_t draw) {
    if (st->delay_span == 0)
        return st->delay_ns;
    uint64_t off = st->delay_span == UINT64_MAX
                       ? draw
                       : (uint64_t)(((fg_fault_u128)draw * (st->delay_span + 1)) >> 64);
    return st->delay_ns + off;
}

static int fg_fault_eligible(const struct fg_fault_stage *st, const fg_ctx *ctx) {
    if (st->header != NULL) {
        fg_str v;
        if (fg_ctx_header_n(ctx, st->header, st->header_len, &v) != 0)
            return 0;
        if (st->value != NULL &&
            (v.len != st->value_len || (v.len > 0 && memcmp(v.ptr, st->value, v.len) != 0)))
            return 0;
    }
    return st->when == NULL || fg_expr_eval(st->when, ctx) == 1;
}

static int fg_fault_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)slot;
    struct fg_fault_stage *st = state;
    fg__faa_u64(&st->requests, 1);
    if (!fg_fault_eligible(st, ctx))
        return 0;
    /* The fetch-and-add gives this request its own number n, so concurrent
     * requests never share a draw; nothing else is ordered by it. */
    uint64_t n = fg__faa_u64(&st->eligible, 1);
    if (st->abort_ppm != 0 && fg_fault_hit(fg_splitmix64_at(st->seed, 3 * n), st->abort_ppm)) {
        if (st->shadow) {
            fg__faa_u64(&st->shadow_aborted, 1);
            return 0;
        }
        fg__faa_u64(&st->aborted, 1);
        ctx->retry_after_ns = st->retry_after_ns;
        return st->abort_code;
    }
    if (st->delay_ppm != 0 &&
        fg_fault_hit(fg_splitmix64_at(st->seed, 3 * n + 1), st->delay_ppm)) {
        if (st->shadow) {
            fg__faa_u64(&st->shadow_delayed, 1);
            return 0;
        }
        uint64_t d = fg_fault_delay(st, fg_splitmix64_at(st->seed, 3 * n + 2));
        fg__faa_u64(&st->delayed, 1);
        fg__faa_u64(&st->delay_ns_total, d);
        /* Added, not raised: the injected latency comes on top of any wait
         * an earlier stage reserved (fault.h says why). */
        ctx->delay_ns = ctx->delay_ns > UINT64_MAX - d ? UINT64_MAX : ctx->delay_ns + d;
    }
    return 0;
}

static void fg_fault_destroy(void *state) {
    struct fg_fault_stage *st = state;
    if (st == NULL)
        return;
    fg__free(st->header);
    fg__free(st->value);
    fg__free(st);
}

static const fg_stage_ops fg_fault_ops = {"fault", fg_fault_enter, NULL, fg_fault_destroy};

/* A percentage as parts per million, or -1 when it is outside [0, 100]
 * (NaN included: every comparison with it is false). */
static long fg_fault_ppm(double percent) {
    if (!(percent >= 0.0 && percent <= 100.0))
        return -1;
    return (long)(percent * 10000.0 + 0.5);
}

/* Check opts and the header strings' lengths without allocating. */
static int fg_fault_check(const fg_fault_options *opts, size_t *header_len,
                          size_t *value_len) {
    if (fg_fault_ppm(opts->delay_percent) < 0 || fg_fault_ppm(opts->abort_percent) < 0)
        return FG_EINVAL;
    if (opts->delay_max_ns != 0 && opts->delay_max_ns < opts->delay_ns)
        return FG_EINVAL;
    if (opts->abort_code != 0 && !fg_err_is_outcome(opts->abort_code))
        return FG_EINVAL;
    if (opts->header_value != NULL && opts->header == NULL)
        return FG_EINVAL;
    if (opts->header != NULL) {
        *header_len = strnlen(opts->header, FG_HEADER_NAME_MAX + 1);
        if (*header_len > FG_HEADER_NAME_MAX)
            return FG_ETOOLONG;
        if (*header_len == 0 || !fg__is_token(opts->header, *header_len))
            return FG_EINVAL;
    }
    if (opts->header_value != NULL) {
        *value_len = strnlen(opts->header_value, FG_HEADER_VALUE_MAX + 1);
        if (*value_len > FG_HEADER_VALUE_MAX)
            return FG_ETOOLONG;
    }
    return 0;
}

int fg_stage_fault(const fg_fault_options *opts, const char *name, fg_stage **out) {
    if (opts == NULL || out == NULL)
        return FG_EINVAL;
    if (name == NULL)
        name = "fault";
    if (strnlen(name, FG_STAGE_NAME_MAX + 1) > FG_STAGE_NAME_MAX)
        return FG_ETOOLONG;
    size_t header_len = 0, value_len = 0;
    int rc = fg_fault_check(opts, &header_len, &value_len);
    if (rc != 0)
        return rc;

    struct fg_fault_stage *st = fg__calloc(1, sizeof(*st));
    if (st == NULL)
        return FG_ENOMEM;
    st->seed = opts->seed != 0 ? opts->seed : fg__random_u64();
    st->delay_ppm = (uint32_t)fg_fault_ppm(opts->delay_percent);
    st->abort_ppm = (uint32_t)fg_fault_ppm(opts->abort_percent);
    st->delay_ns = opts->delay_ns;
    st->delay_span = opts->delay_max_ns != 0 ? opts->delay_max_ns - opts->delay_ns : 0;
    st->retry_after_ns = opts->abort_retry_after_ns;
    st->abort_code = opts->abort_code != 0 ? opts->abort_code : FG_EINJECTED;
    st->shadow = opts->shadow != 0;
    st->when = opts->when;
    if (opts->header != NULL) {
        st->header = fg__strndup(opts->header, header_len);
        st->header_len = header_len;
        if (st->header == NULL) {
            fg_fault_destroy(st);
            return FG_ENOMEM;
        }
    }
    if (opts->header_value != NULL) {
        st->value = fg__strndup(opts->header_value, value_len);
        st->value_len = value_len;
        if (st->value == NULL) {
            fg_fault_destroy(st);
            return FG_ENOMEM;
        }
    }
    rc = fg_stage_new(&fg_fault_ops, st, name, out);
    if (rc != 0)
        fg_fault_destroy(st);
    return rc;
}

int fg_fault_stats_get(const fg_stage *stage, fg_fault_stats *out) {
    if (stage == NULL || out == NULL || stage->ops != &fg_fault_ops)
        return FG_EINVAL;
    struct fg_fault_stage *st = stage->state;
    out->requests = fg__load_u64(&st->requests);
    out->eligible = fg__load_u64(&st->eligible);
    out->delayed = fg__load_u64(&st->delayed);
    out->aborted = fg__load_u64(&st->aborted);
    out->delay_ns_total = fg__load_u64(&st->delay_ns_total);
    out->shadow_delayed = fg__load_u64(&st->shadow_delayed);
    out->shadow_aborted = fg__load_u64(&st->shadow_aborted);
    return 0;
}
