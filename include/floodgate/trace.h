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
 * Not yet here (same issue, later): tracestate, baggage, the trace stage,
 * trace-aware errors and the span hook.
 */
#ifndef FLOODGATE_TRACE_H
#define FLOODGATE_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

FG_BEGIN_DECLS

#define FG_TRACEPARENT_LEN    55   /* characters in a version-00 traceparent */
#define FG_TRACEPARENT_MAX    512  /* longest traceparent value accepted (future versions) */
#define FG_TRACE_FLAG_SAMPLED 0x01 /* the caller recorded this trace */
#define FG_TRACE_FLAG_RANDOM  0x02 /* Level 2: the trace-id's right 7 bytes are random */

/* A parsed traceparent (binary ids). */
typedef struct fg_traceparent {
    uint8_t version;
    uint8_t trace_id[16];
    uint8_t parent_id[8];
    uint8_t flags;
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

typedef struct fg_sampler {
    fg_sampler_kind kind;
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

FG_END_DECLS

#endif /* FLOODGATE_TRACE_H */
