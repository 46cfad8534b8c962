/*
 * floodgate/trace.h - W3C Trace Context: the traceparent header, trace and
 * span ids, and sampling decisions.
 *
 * traceparent is "version-traceid-parentid-flags" in lowercase hex:
 * "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01". Parsing follows
 * the W3C Trace Context recommendation (Level 1, and Level 2's random flag):
 * version ff is invalid; version 00 must be exactly 55 characters; a higher
 * version is parsed as version 00 is, may be longer, and then continues
 * with a '-' after the flags; hex is lowercase only; an all-zero trace-id
 * or parent-id is invalid. Every parser takes (pointer, length), reads
 * nothing past it, allocates nothing, and reports malformed input as
 * FG_EPARSE: a caller then starts a new trace, as the recommendation says.
 *
 * tracestate (vendor entries) and baggage (application key/values) are
 * parsed into caller-owned fixed arrays of borrowed (pointer, length)
 * slices of the header bytes: parsing copies nothing and allocates nothing.
 * fg_stage_trace puts it together for a chain: it reads the request's
 * headers, starts this hop's span, decides sampling, and reports the
 * finished span to a hook; fg_trace_outgoing writes the headers for a
 * downstream call. docs/tracing.md is the guide.
 */
#ifndef FLOODGATE_TRACE_H
#define FLOODGATE_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "ctx.h"
#include "stage.h"

FG_BEGIN_DECLS

#define FG_TRACEPARENT_LEN    55   /* characters in a version-00 traceparent */
#define FG_TRACEPARENT_MAX    512  /* longest traceparent value accepted (future versions) */
#define FG_TRACE_FLAG_SAMPLED 0x01 /* the caller recorded this trace */
#define FG_TRACE_FLAG_RANDOM  0x02 /* Level 2: the trace-id's right 7 bytes are random */

/* A parsed traceparent (binary ids). */
typedef struct fg_traceparent {
    uint8_t version;      /* the version field */
    uint8_t trace_id[16]; /* the trace-id */
    uint8_t parent_id[8]; /* the caller's span id */
    uint8_t flags;        /* the trace-flags: FG_TRACE_FLAG_* */
} fg_traceparent;

/*
 * fg_traceparent_parse - parse a traceparent header value. Leading and
 * trailing spaces and tabs (HTTP optional whitespace) are skipped.
 *
 * Returns: 0 and *out; FG_EPARSE when the value breaks any rule above
 * (*out is then zeroed); FG_EINVAL when s (with len > 0) or out is NULL.
 * Ownership: borrows s for the call.
 * Thread-safety: MT-safe; allocation-free.
 */
FG_API int fg_traceparent_parse(const char *s, size_t len, fg_traceparent *out);

/*
 * fg_traceparent_format - write tp as a version-00 traceparent (whatever
 * tp->version says: we only speak 00) and a NUL into buf.
 *
 * Returns: 0; FG_ETOOLONG when cap < FG_TRACEPARENT_LEN + 1 (nothing is
 * written); FG_EINVAL for NULL arguments or an all-zero id.
 * Thread-safety: MT-safe.
 */
FG_API int fg_traceparent_format(const fg_traceparent *tp, char *buf, size_t cap);

/*
 * fg_trace_id_new / fg_span_id_new - fresh random ids, never all zero,
 * from a per-thread generator seeded from the OS random source on first use
 * in each thread (no lock, no system call after that; a forked child seeds
 * afresh rather than repeat its parent's ids). A trace-id made here
 * is random in all 16 bytes, so FG_TRACE_FLAG_RANDOM may be set for it.
 *
 * Ownership: writes the caller's array; a NULL id is ignored.
 * Thread-safety: MT-safe, lock-free.
 */
FG_API void fg_trace_id_new(uint8_t id[16]);
FG_API void fg_span_id_new(uint8_t id[8]);

/* Sampling strategies. */
typedef enum fg_sampler_kind {
    FG_SAMPLER_ALWAYS_OFF = 0,
    FG_SAMPLER_ALWAYS_ON = 1,
    FG_SAMPLER_RATIO = 2,        /* a share of traces, decided by the trace-id */
    FG_SAMPLER_PARENT_BASED = 3, /* the caller's sampled flag; `root` for new traces */
} fg_sampler_kind;

/* A sampling rule (fg_sampler_decide). */
typedef struct fg_sampler {
    fg_sampler_kind kind; /* the strategy */
    double ratio;         /* FG_SAMPLER_RATIO (and root RATIO): 0 .. 1 */
    fg_sampler_kind root; /* PARENT_BASED: the rule for traces we start (not PARENT_BASED) */
} fg_sampler;

/*
 * fg_sampler_decide - whether to sample a trace. RATIO compares the
 * trace-id's rightmost 7 bytes (the part Level 2 makes random), read as a
 * big-endian number, with ratio * 2^56: the same trace-id gives the same
 * decision in every service that uses the same ratio, and a higher ratio
 * samples a superset. PARENT_BASED follows parent_sampled when has_parent,
 * else decides by `root`.
 *
 * Returns: 1 to sample, 0 not to; FG_EINVAL for NULL arguments, an unknown
 * kind, a ratio outside 0 .. 1 (or not a number), or a PARENT_BASED root.
 * Thread-safety: MT-safe.
 */
FG_API int fg_sampler_decide(const fg_sampler *sampler, const uint8_t trace_id[16],
                             int has_parent, int parent_sampled);

/* ---- tracestate ----------------------------------------------------------------- */

#define FG_TRACESTATE_MAX_MEMBERS 32  /* list-members in one tracestate */
#define FG_TRACESTATE_KEY_MAX     256 /* bytes in a key */
#define FG_TRACESTATE_VALUE_MAX   256 /* bytes in a value */
#define FG_TRACESTATE_PROPAGATE   512 /* characters fg_tracestate_format keeps */
#define FG_TRACESTATE_LARGE       128 /* members longer than this are dropped first */

/* One list-member: key and value borrow the header (or the caller's) bytes. */
typedef struct fg_tracestate_member {
    fg_str key;   /* the member's key */
    fg_str value; /* its value */
} fg_tracestate_member;

/*
 * A tracestate list, leftmost (most recently updated) member first. Zero it
 * (`fg_tracestate ts = {0};`) or parse into it before use. It lives where
 * the caller puts it (about 1 KiB) and borrows every byte it points to.
 */
typedef struct fg_tracestate {
    uint32_t n; /* members used */
    /* The members; the first n are used. */
    fg_tracestate_member members[FG_TRACESTATE_MAX_MEMBERS];
} fg_tracestate;

/*
 * fg_tracestate_parse - parse one tracestate header value into ts
 * (replacing what ts held). The grammar is the recommendation's: members
 * separated by ',' with optional spaces and tabs around them; empty members
 * are allowed and skipped; a key is a simple key (a lowercase letter, then
 * up to 255 of a-z 0-9 _ - * /) or a multi-tenant key tenant@system (tenant:
 * a-z or 0-9 then up to 240 more; system: a-z then up to 13 more); a value
 * is 1 to 256 printable ASCII characters other than ',' and '=', not ending
 * in a space. The whole value is refused (ts left empty) when any member
 * is malformed, a key appears twice, or there are more than 32 members: a
 * tracestate that cannot be trusted is discarded, and the traceparent it
 * came with is still used.
 *
 * Returns: 0; FG_EPARSE as above (ts->n = 0); FG_EINVAL for a NULL ts, or
 * NULL s with len > 0.
 * Ownership: ts borrows s's bytes: keep them alive while ts is used.
 * Thread-safety: MT-safe on distinct ts; allocation-free.
 */
FG_API int fg_tracestate_parse(fg_tracestate *ts, const char *s, size_t len);

/*
 * fg_tracestate_parse_ctx - parse every "tracestate" header of ctx, in the
 * order they were added, as one list (HTTP allows a list header to be split
 * over several lines). The rules and results are fg_tracestate_parse's,
 * applied to the combination; no headers give an empty list and 0.
 *
 * Returns: as fg_tracestate_parse; FG_EINVAL for a NULL ctx.
 * Ownership: ts borrows the ctx's header bytes.
 * Thread-safety: as fg_tracestate_parse.
 */
FG_API int fg_tracestate_parse_ctx(fg_tracestate *ts, const fg_ctx *ctx);

/*
 * fg_tracestate_get - the value of the member with this key.
 *
 * Returns: 0 and *value (borrowed); FG_ENOTFOUND; FG_EINVAL for NULL
 * arguments.
 * Thread-safety: MT-safe on a ts nobody writes.
 */
FG_API int fg_tracestate_get(const fg_tracestate *ts, const char *key, size_t key_len,
                             fg_str *value);

/*
 * fg_tracestate_set - add or update a member and move it to the front, as a
 * vendor does before propagating: an existing member with this key is
 * removed, the new one goes first, and when that makes 33 members the
 * rightmost is dropped.
 *
 * Returns: 0; FG_EINVAL when key or value breaks the grammar above or an
 * argument is NULL (ts unchanged).
 * Ownership: ts borrows key and value.
 * Thread-safety: not thread-safe on one ts.
 */
FG_API int fg_tracestate_set(fg_tracestate *ts, const char *key, size_t key_len,
                             const char *value, size_t value_len);

/*
 * fg_tracestate_remove - remove the member with this key.
 *
 * Returns: 0; FG_ENOTFOUND; FG_EINVAL for NULL arguments.
 * Thread-safety: not thread-safe on one ts.
 */
FG_API int fg_tracestate_remove(fg_tracestate *ts, const char *key, size_t key_len);

/*
 * fg_tracestate_format - write ts as a header value ("k1=v1,k2=v2") and a
 * NUL into buf, no longer than FG_TRACESTATE_PROPAGATE characters: when the
 * whole list is longer, every member longer than FG_TRACESTATE_LARGE
 * characters is left out first, then members from the right until it fits,
 * as the recommendation's truncation guidance orders. An empty list writes
 * "".
 *
 * Returns: 0 and *len (without the NUL; len may be NULL); FG_ETOOLONG when
 * the value and its NUL do not fit in cap (buf then holds ""
 * when cap > 0); FG_EINVAL for NULL ts or buf.
 * Thread-safety: MT-safe on a ts nobody writes.
 */
FG_API int fg_tracestate_format(const fg_tracestate *ts, char *buf, size_t cap, size_t *len);

/* ---- baggage ---------------------------------------------------------------------- */

#define FG_BAGGAGE_MAX_MEMBERS 64   /* list-members kept (the spec's minimum to propagate) */
#define FG_BAGGAGE_MAX_BYTES   8192 /* bytes in a formatted baggage value */

/*
 * One list-member. key is an HTTP token. value is as on the wire
 * (percent-encoded) when `plain` is 0, and the caller's raw bytes (encoded
 * when formatted) when fg_baggage_set put it there. properties is the raw
 * text after the first ';' and the optional whitespace around it (e.g.
 * "ttl=60;private"), empty when none; formatting passes it on unchanged.
 */
typedef struct fg_baggage_member {
    fg_str key;        /* an HTTP token */
    fg_str value;      /* percent-encoded, unless plain */
    fg_str properties; /* the raw text after the first ';'; may be empty */
    int plain;         /* nonzero: value holds raw bytes (from fg_baggage_set) */
} fg_baggage_member;

/* A baggage list, in header order. Zero it or parse into it before use.
 * Like fg_tracestate it borrows every byte it points to (about 3.6 KiB). */
typedef struct fg_baggage {
    uint32_t n;         /* members used */
    uint32_t malformed; /* members the last parse skipped as malformed */
    uint32_t dropped;   /* members the last parse dropped past the limits */
    /* The members; the first n are used. */
    fg_baggage_member members[FG_BAGGAGE_MAX_MEMBERS];
} fg_baggage;

/*
 * fg_baggage_parse - parse one baggage header value into b (replacing what
 * it held). Grammar (W3C Baggage): members separated by ',' with optional
 * whitespace; a member is key OWS '=' OWS value, then any number of
 * ';'-separated properties (key, or key=value); keys are HTTP tokens;
 * values are printable ASCII other than '"' ',' ';' '\\' and space,
 * percent-encoding the rest; a value may be empty ("k="); empty members
 * are skipped, a ';' with no property after it is malformed. Unlike
 * tracestate, one bad member does not
 * spoil the others: a malformed member is skipped and counted in
 * b->malformed; members past FG_BAGGAGE_MAX_MEMBERS, or past
 * FG_BAGGAGE_MAX_BYTES of value, are dropped and counted in b->dropped.
 *
 * Returns: 0 when every member was kept; FG_EPARSE when some were skipped
 * as malformed; FG_ETOOMANY when some were dropped past the limits and none
 * was malformed. The kept members are in b either way. FG_EINVAL for NULL
 * b, or NULL s with len > 0.
 * Ownership: b borrows s's bytes.
 * Thread-safety: MT-safe on distinct b; allocation-free.
 */
FG_API int fg_baggage_parse(fg_baggage *b, const char *s, size_t len);

/*
 * fg_baggage_parse_ctx - parse every "baggage" header of ctx, in order, as
 * one list.
 *
 * Returns, Ownership, Thread-safety: as fg_baggage_parse; FG_EINVAL for a
 * NULL ctx.
 */
FG_API int fg_baggage_parse_ctx(fg_baggage *b, const fg_ctx *ctx);

/*
 * fg_baggage_get - the value of the member with this key, percent-decoded,
 * and a NUL, into buf. Keys compare exactly (case-sensitive). When a key
 * appears more than once the last one wins (as OpenTelemetry does). A '%' not followed by two
 * hex digits is kept as it is.
 *
 * Returns: 0 and *len (without the NUL; len may be NULL); FG_ENOTFOUND;
 * FG_ETOOLONG when the value and its NUL do not fit in cap; FG_EINVAL for
 * NULL arguments.
 * Thread-safety: MT-safe on a b nobody writes.
 */
FG_API int fg_baggage_get(const fg_baggage *b, const char *key, size_t key_len, char *buf,
                          size_t cap, size_t *len);

/*
 * fg_baggage_set - add a member, or replace every member with this key,
 * with a raw (not yet encoded) value and no properties; it goes last.
 *
 * Returns: 0; FG_EINVAL when key is not an HTTP token or an argument is
 * NULL; FG_ETOOMANY when b already holds FG_BAGGAGE_MAX_MEMBERS other keys.
 * Ownership: b borrows key and value.
 * Thread-safety: not thread-safe on one b.
 */
FG_API int fg_baggage_set(fg_baggage *b, const char *key, size_t key_len, const char *value,
                          size_t value_len);

/*
 * fg_baggage_remove - remove every member with this key.
 *
 * Returns: 0; FG_ENOTFOUND; FG_EINVAL for NULL arguments.
 * Thread-safety: not thread-safe on one b.
 */
FG_API int fg_baggage_remove(fg_baggage *b, const char *key, size_t key_len);

/*
 * fg_baggage_format - write b as a header value ("k=v;prop,k2=v2") and a
 * NUL into buf, percent-encoding plain values (every byte outside the value
 * character set, and '%'). Members that would take the value past
 * FG_BAGGAGE_MAX_BYTES are left out from the right.
 *
 * Returns: 0 and *len (len may be NULL); FG_ETOOLONG when it does not fit
 * in cap (buf then holds "" when cap > 0); FG_EINVAL for NULL b or buf.
 * Thread-safety: MT-safe on a b nobody writes.
 */
FG_API int fg_baggage_format(const fg_baggage *b, char *buf, size_t cap, size_t *len);

/*
 * fg_ctx_baggage - look up one baggage entry straight from ctx's "baggage"
 * headers, percent-decoded, without a fg_baggage: what a router rule or a
 * key extractor uses (e.g. "env" -> "gray"). The member rules and limits
 * are fg_baggage_parse's (malformed members never match, members past
 * FG_BAGGAGE_MAX_MEMBERS or FG_BAGGAGE_MAX_BYTES are not seen; the last of
 * several wins), so it answers as fg_baggage_get on a parsed list would.
 *
 * Returns: as fg_baggage_get; FG_EINVAL for a NULL ctx.
 * Thread-safety: MT-safe on a ctx nobody writes; allocation-free.
 */
FG_API int fg_ctx_baggage(const fg_ctx *ctx, const char *key, size_t key_len, char *buf,
                          size_t cap, size_t *len);

/* ---- the trace stage, spans and outgoing headers ---------------------------------- */

/*
 * A finished span, as the span hook receives it. Everything is valid only
 * during the call: copy what you keep.
 */
typedef struct fg_span {
    fg_str name;          /* the stage's span_name, else the request path */
    uint8_t trace_id[16]; /* the trace-id */
    uint8_t span_id[8];   /* this hop's span */
    uint8_t parent_id[8]; /* the caller's span; all zero for a trace we started */
    uint8_t flags;        /* as propagated: FG_TRACE_FLAG_* */
    int remote_parent;    /* nonzero when the trace came in a traceparent */
    uint64_t start_ns;    /* on the chain's clock (ctx->now_ns at enter) */
    uint64_t duration_ns; /* to the stage's exit, on the chain's clock */
    /* start_ns as Unix time: the wall clock at exit minus duration_ns */
    uint64_t start_unix_ns;
    fg_outcome_kind outcome; /* OK, FAILED (the handler), REJECTED (a stage) */
    int code;                /* 0, or the failure / rejection code */
    const char *rejected_by; /* the rejecting stage's name, or NULL */
    uint32_t retry_count;    /* retries the request made */
    fg_str method;           /* the request's method */
    fg_str path;             /* the request's path */
    const fg_ctx *ctx;       /* the request, for anything else */
} fg_span;

/* The span hook: called once per finished span on the thread that runs the
 * trace stage's exit. It must not block for long: it is on the request's
 * path. */
typedef void (*fg_span_fn)(const fg_span *span, void *arg);

/* Trace stage options. Start from FG_TRACE_OPTIONS_INIT. */
typedef struct fg_trace_options {
    const char *name;      /* the stage's name; copied; NULL means "trace" */
    const char *span_name; /* copied; NULL: each span is named by its path */
    fg_sampler sampler;    /* whether this hop records the trace */
    fg_span_fn on_span;    /* NULL: no hook */
    void *on_span_arg;     /* passed to on_span */
    int hook_unsampled;    /* nonzero: also report spans not sampled */
} fg_trace_options;

/* Parent-based sampling, always on for traces we start; no hook. */
#define FG_TRACE_OPTIONS_INIT                                                                 \
    { NULL, NULL, {FG_SAMPLER_PARENT_BASED, 1.0, FG_SAMPLER_ALWAYS_ON}, NULL, NULL, 0 }

/*
 * fg_stage_trace - the trace stage. On enter: parse the first
 * "traceparent" header of ctx; when it is valid, continue that trace
 * (ctx->trace.trace_id, parent_id = the caller's span, the caller's random
 * flag kept; flag bits version 00 does not define are cleared), else
 * start one (a new random trace-id, parent_id zero, FG_TRACE_FLAG_RANDOM
 * set) — a bad header never fails a request. Then give this hop a new
 * span_id and set the sampled flag as the sampler decides. When ctx->trace
 * is already valid (a retry by an earlier stage re-entering this one), the
 * trace is kept and only a new span id is made. It never rejects. On exit:
 * report the span to on_span (sampled spans only, unless hook_unsampled).
 *
 * Returns: 0 and *out; FG_EINVAL for NULL out or an invalid sampler (as
 * fg_sampler_decide would refuse it); FG_ETOOLONG for a name over
 * FG_STAGE_NAME_MAX or a span_name over FG_PATH_MAX; FG_ENOMEM.
 * Ownership: names copied; the caller owns one reference to *out.
 * Thread-safety: MT-safe; the stage is lock-free and allocation-free per
 * request.
 */
FG_API int fg_stage_trace(const fg_trace_options *opts, fg_stage **out);

/* Outgoing trace headers: slices of the caller's buffer; an empty slice
 * means "do not send this header". */
typedef struct fg_trace_headers {
    fg_str traceparent; /* the traceparent value */
    fg_str tracestate;  /* the tracestate value */
    fg_str baggage;     /* the baggage value */
} fg_trace_headers;

/* A buffer this large always holds all three (with their NULs). */
#define FG_TRACE_HEADERS_MAX                                                                  \
    (FG_TRACEPARENT_LEN + 1 + FG_TRACESTATE_PROPAGATE + 1 + FG_BAGGAGE_MAX_BYTES + 1)

/*
 * fg_trace_outgoing - the headers for a downstream call made while serving
 * ctx: traceparent with the same trace-id, this hop's span id as the
 * parent-id and this hop's flags; tracestate: the caller's members (only
 * when the trace came in a valid traceparent and the caller's tracestate
 * was valid), with vendor_key's entry set to this hop's span id in hex and
 * moved to the front (so a trace we started carries just our entry;
 * vendor_key NULL: the caller's passed on unchanged), truncated to
 * FG_TRACESTATE_PROPAGATE, empty when there is nothing to send; and the
 * caller's baggage (the valid members, re-encoded). Each value is
 * NUL-terminated in buf.
 *
 * Returns: 0 and *out; FG_ESTATE when ctx->trace is not valid (no trace
 * stage ran); FG_ETOOLONG when buf is too small (use FG_TRACE_HEADERS_MAX;
 * *out is then empty); FG_EINVAL for NULL ctx, buf or out, or a vendor_key
 * that is not a tracestate key.
 * Ownership: *out points into buf.
 * Thread-safety: MT-safe on a ctx nobody writes; allocation-free.
 */
FG_API int fg_trace_outgoing(const fg_ctx *ctx, const char *vendor_key, char *buf, size_t cap,
                             fg_trace_headers *out);

FG_END_DECLS

#endif /* FLOODGATE_TRACE_H */
