/*
 * examples/tracing.c - W3C trace context through a chain.
 *
 * A trace stage continues the caller's trace (or starts one), a keyed limit
 * stage allows each tenant, named by the baggage entry "tenant", one request
 * per second with a burst of 1, and the handler prints the headers it would
 * send to a downstream service. Every finished span is printed as one line by
 * the span hook, and the rejected request is logged as a JSON line that
 * carries its trace-id, so the log line and the trace can be joined.
 *
 * The chain runs on a fake clock so that the timings (and the retry-after
 * hint) are the same on every run; a service leaves the clocks at their
 * defaults. The ids of this hop's spans are random, so they differ per run.
 */
#include <floodgate.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* The incoming request's trace headers, as a caller would send them. */
static const char *const in_traceparent =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
static const char *const in_tracestate = "congo=t61rcWkgMzE";
static const char *const in_baggage = "tenant=acme,env=gray";

static void hex(const uint8_t *id, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 15];
    }
    out[2 * n] = '\0';
}

/* The span hook: runs on the request's thread when the trace stage exits.
 * Everything in *span is borrowed for the call only. */
static void print_span(const fg_span *span, void *arg) {
    static const char *const outcomes[] = {"ok", "failed", "rejected"};
    char trace_id[33], span_id[17], parent_id[17];
    (void)arg;
    hex(span->trace_id, 16, trace_id);
    hex(span->span_id, 8, span_id);
    hex(span->parent_id, 8, parent_id);
    printf("span %.*s trace=%s span=%s parent=%s flags=%02x %s %" PRIu64 "ms %s %s",
           (int)span->name.len, span->name.ptr, trace_id, span_id, parent_id, span->flags,
           span->remote_parent ? "remote" : "root", span->duration_ns / FG_NS_PER_MS,
           outcomes[span->outcome], fg_err_name(span->code));
    if (span->rejected_by != NULL)
        printf(" by=%s", span->rejected_by);
    putchar('\n');
}

/* The handler: "works" for 12 ms on the fake clock and shows what it would
 * propagate to a downstream call. */
static int handler(fg_ctx *ctx, void *arg) {
    static char buf[FG_TRACE_HEADERS_MAX]; /* one request at a time here */
    fg_trace_headers out;
    char tenant[64];

    fg_fake_clock_advance(arg, 12 * FG_NS_PER_MS);
    if (fg_ctx_baggage(ctx, "tenant", strlen("tenant"), tenant, sizeof tenant, NULL) == 0)
        printf("  handler: serving tenant %s\n", tenant);
    int rc = fg_trace_outgoing(ctx, "floodgate", buf, sizeof buf, &out);
    if (rc != 0)
        return rc;
    /* An empty slice means: do not send that header. */
    if (out.traceparent.len > 0)
        printf("  -> traceparent: %s\n", out.traceparent.ptr);
    if (out.tracestate.len > 0)
        printf("  -> tracestate: %s\n", out.tracestate.ptr);
    if (out.baggage.len > 0)
        printf("  -> baggage: %s\n", out.baggage.ptr);
    return 0;
}

static int build(fg_fake_clock *fake, fg_keyed_limiter **keyed, fg_chain **chain) {
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    fg_trace_options to = FG_TRACE_OPTIONS_INIT;
    fg_keyed_limiter_options ko = FG_KEYED_LIMITER_OPTIONS_INIT;
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    fg_stage *stage;
    int rc;

    co.name = "api";
    co.clock = fg_fake_clock_as_clock(fake);
    if ((rc = fg_chain_new(&co, chain)) != 0)
        return rc;

    /* First, so every later stage (and the error of a rejected request)
     * sees the trace. Follow the caller's decision; sample 10% of the
     * traces we start ourselves. */
    to.sampler.kind = FG_SAMPLER_PARENT_BASED;
    to.sampler.root = FG_SAMPLER_RATIO;
    to.sampler.ratio = 0.1;
    to.on_span = print_span;
    if ((rc = fg_stage_trace(&to, &stage)) != 0 || (rc = fg_chain_use(*chain, stage)) != 0)
        return rc;

    /* One bucket per tenant: 1 request per second, burst 1. */
    ko.bucket.rate = 1;
    ko.bucket.burst = 1;
    ko.bucket.clock = co.clock;
    ko.max_keys = 1000;
    if ((rc = fg_keyed_limiter_new(&ko, keyed)) != 0)
        return rc;
    so.name = "tenant-limit";
    so.key_source = FG_KEY_BAGGAGE;
    so.key_name = "tenant";
    so.missing = FG_KEY_MISSING_ADMIT;
    if ((rc = fg_stage_limit_keyed(*keyed, &so, &stage)) != 0 ||
        (rc = fg_chain_use(*chain, stage)) != 0)
        return rc;
    return 0;
}

int main(void) {
    static const uint64_t at_ms[3] = {0, 250, 1000}; /* when each request arrives */
    fg_fake_clock *fake = NULL;
    fg_keyed_limiter *keyed = NULL;
    fg_chain *chain = NULL;
    int rc;

    if ((rc = fg_fake_clock_new(1000 * FG_NS_PER_S, &fake)) != 0 ||
        (rc = build(fake, &keyed, &chain)) != 0) {
        (void)fprintf(stderr, "setup: %s\n", fg_strerror(rc));
        fg_chain_free(chain);
        fg_keyed_limiter_free(keyed);
        fg_fake_clock_free(fake);
        return 1;
    }

    for (int i = 0; i < 3; i++) {
        fg_ctx ctx;
        fg_fake_clock_set(fake, 1000 * FG_NS_PER_S + at_ms[i] * FG_NS_PER_MS);
        printf("request %d at %" PRIu64 " ms\n", i + 1, at_ms[i]);
        if (fg_ctx_init(&ctx, "GET", "/orders/42") != 0 ||
            fg_ctx_add_header(&ctx, "traceparent", in_traceparent) != 0 ||
            fg_ctx_add_header(&ctx, "tracestate", in_tracestate) != 0 ||
            fg_ctx_add_header(&ctx, "baggage", in_baggage) != 0)
            return 1;
        rc = fg_chain_call(chain, &ctx, handler, fake);
        printf("  result: %s\n", fg_err_name(rc));
        if (rc != 0) {
            /* The log line for the failure, joined to the trace. */
            char line[2048];
            fg_error *err = fg_error_from_ctx(&ctx);
            if (fg_error_log_json(err, "warn", line, sizeof line, NULL) == 0)
                printf("  log: %s\n", line);
            fg_error_free(err);
        }
    }

    fg_chain_free(chain);         /* the stage borrows the keyed limiter */
    fg_keyed_limiter_free(keyed); /* which borrows the clock */
    fg_fake_clock_free(fake);
    return 0;
}
