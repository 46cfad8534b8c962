/*
 * floodgate/ctx.h - the per-request context.
 *
 * A fg_ctx describes one request as it passes through a chain: its method and
 * path, a bounded set of headers (borrowed pointers, never copied), the clock
 * reading taken when it entered, its deadline, retry count and trace fields,
 * and, once it has been decided, who rejected it and why. It lives on the
 * caller's stack (its size is public), so a request touches no heap.
 *
 * Every string in a ctx is borrowed: the caller keeps the method, path and
 * header bytes alive and unchanged until the request has exited the chain.
 * Strings are (pointer, length) pairs and need not be NUL-terminated.
 *
 * A ctx belongs to one request. It is not thread-safe: one thread at a time
 * may use it, and handing it to another thread (as the split API does, from an
 * event loop to a worker and back) needs the usual synchronisation of the
 * hand-off itself, e.g. a queue. A ctx serves one request: after it has exited
 * a chain, fg_ctx_init it again for the next.
 *
 * ABI: the size and layout of fg_ctx are part of the ABI. Within one soname
 * they only change by appending; a caller that cannot include this header
 * (a foreign-language binding) should allocate fg_ctx_size() bytes, aligned
 * for a uint64_t.
 */
#ifndef FLOODGATE_CTX_H
#define FLOODGATE_CTX_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

FG_BEGIN_DECLS

/* Bounds, inclusive: a value of exactly the bound is accepted, one more is
 * refused with a code by the call that would exceed it. */
#define FG_CTX_MAX_HEADERS  32   /* headers/metadata entries per request */
#define FG_HEADER_NAME_MAX  256  /* bytes in one header name */
#define FG_HEADER_VALUE_MAX 8192 /* bytes in one header value */
#define FG_METHOD_MAX       32   /* bytes in the method */
#define FG_PATH_MAX         8192 /* bytes in the path (route key) */
#define FG_CTX_MAX_DEPTH    32   /* stages one request may have entered at once */
#define FG_CTX_MAX_PARAMS   8    /* path parameters a matched route pattern may bind */

/* Handles, defined in floodgate/stage.h and floodgate/chain.h. */
typedef struct fg_stage fg_stage;
typedef struct fg_chain fg_chain;

/* A borrowed byte string: ptr may be NULL only when len is 0. */
typedef struct fg_str {
    const char *ptr; /* the first byte; need not be NUL-terminated */
    size_t len;      /* bytes */
} fg_str;

/* One request header or metadata entry (both borrowed). */
typedef struct fg_header {
    fg_str name;  /* the header (or metadata) name */
    fg_str value; /* its value */
} fg_header;

/*
 * Trace fields of this hop, in binary. The trace-context component fills
 * them; until it runs they are all zero (valid == 0).
 */
typedef struct fg_trace_fields {
    uint8_t trace_id[16]; /* the W3C trace-id */
    uint8_t span_id[8];   /* this hop's span */
    uint8_t parent_id[8]; /* the caller's span; all zero when we started the trace */
    uint8_t flags;        /* W3C trace-flags: 0x01 sampled, 0x02 random */
    uint8_t valid;        /* nonzero when trace_id and span_id are set */
} fg_trace_fields;

/* One entered stage, as the chain records it. Private to floodgate. */
typedef struct fg_ctx_frame {
    const fg_stage *stage; /* the stage entered */
    uint64_t slot;         /* the word its enter hook wrote, for its exit hook */
    uint64_t enter_ns;     /* ctx->now_ns when it was entered */
} fg_ctx_frame;

/*
 * fg_ctx - fields above `priv` may be read by stages and handlers; the
 * comments say who writes them. `priv` is floodgate's alone: never read or
 * write it; what it holds may change in any release (its size only with
 * the soname, like the rest of the struct).
 */
typedef struct fg_ctx {
    fg_str method;        /* set by fg_ctx_init; may be empty */
    fg_str path;          /* set by fg_ctx_init: the route key */
    uint64_t now_ns;      /* the chain's clock, read once at enter */
    uint64_t deadline_ns; /* absolute, on the chain's clock; 0 = none. Caller or stages. */
    uint32_t retry_count; /* attempts after the first; the chain counts them */
    uint32_t nheaders;    /* entries used in headers[]; fg_ctx_add_header */
    void *user;           /* the caller's; floodgate never touches it */
    /* This hop's trace, set by the trace stage (floodgate/trace.h). */
    fg_trace_fields trace;
    /* The decision, written by the chain: 0 while admitted or when the handler
     * succeeded, else the rejection or failure code. */
    int status;
    const fg_stage *rejected_by; /* the stage that rejected, or NULL */
    uint64_t retry_after_ns; /* a rejecting stage's hint: retry after this long; 0 = none */
    /* Admitted, but start the handler only this long after now_ns (a
     * smoothing limiter reserved a later slot). Stages raise it to the
     * largest wait any of them needs; fg_chain_call sleeps it on the chain's
     * clock before calling the handler; after fg_chain_enter the caller
     * schedules the handler that much later itself. */
    uint64_t delay_ns;
    fg_header headers[FG_CTX_MAX_HEADERS]; /* the first nheaders are set (fg_ctx_add_header) */
    /* Written by the router (floodgate/router.h) when it has chosen: the
     * route's and target's names (NULL before), and the path parameters of
     * a pattern route, name without its ':' or '*', value borrowing path.
     * The names belong to the chain; once a request through a runtime has
     * finished (see fg_ctx_route) they point at copies inside the ctx. */
    const char *route;                   /* the route's name, or NULL */
    const char *target;                  /* the target's name, or NULL */
    uint32_t nparams;                    /* entries used in params */
    fg_header params[FG_CTX_MAX_PARAMS]; /* the path parameters */

    struct {
        const fg_chain *chain;
        uint32_t state;
        uint32_t depth;
        const void *route_target;  /* the router's chosen target */
        void *snapshot;            /* the runtime snapshot a split request holds */
        uint32_t canceled;         /* atomic: fg_ctx_cancel (floodgate/deadline.h) */
        const char *rejected_name; /* the rejecting stage's name, once kept */
        /* The route, target and rejecting stage names, copied when a request
         * through a runtime finishes (they would otherwise die with its chain
         * at the next reload); 128 bytes each (FG_ROUTE_NAME_MAX,
         * FG_STAGE_NAME_MAX) and a NUL. */
        char names[3][129];
        fg_ctx_frame frames[FG_CTX_MAX_DEPTH];
    } priv; /* floodgate's alone */
} fg_ctx;

/*
 * fg_ctx_init - prepare ctx for a new request with NUL-terminated method and
 * path. method may be NULL or "" (no method, e.g. a message rather than an
 * HTTP request). Every field is reset; the header array is not cleared (it is
 * only read up to nheaders), so init costs a few stores, not a memset.
 * Detecting a ctx that was never initialised is best effort (the private
 * state must hold one of a few magic values): always call this first.
 *
 * Returns: 0; FG_EINVAL when ctx or path is NULL or the method is not an
 * HTTP token; FG_ETOOLONG past FG_METHOD_MAX or FG_PATH_MAX. On error the
 * ctx is left unusable (fg_chain_enter refuses it with FG_ESTATE).
 * Ownership: borrows method and path until the request has exited.
 * Thread-safety: not thread-safe (a ctx belongs to one request).
 */
FG_API int fg_ctx_init(fg_ctx *ctx, const char *method, const char *path);

/*
 * fg_ctx_init_n - fg_ctx_init with explicit lengths; the bytes need not be
 * NUL-terminated. method may be NULL when method_len is 0.
 *
 * Returns, Ownership, Thread-safety: as fg_ctx_init.
 */
FG_API int fg_ctx_init_n(fg_ctx *ctx, const char *method, size_t method_len, const char *path,
                         size_t path_len);

/*
 * fg_ctx_add_header - add a request header or metadata entry
 * (NUL-terminated). Duplicate names are kept, in order.
 *
 * Returns: 0; FG_EINVAL when an argument is NULL or the name is empty or not
 * an HTTP token; FG_ETOOLONG past FG_HEADER_NAME_MAX or FG_HEADER_VALUE_MAX;
 * FG_ETOOMANY when FG_CTX_MAX_HEADERS are already set; FG_ESTATE when the ctx
 * was not initialised or has already entered a chain (headers describe the
 * request as it arrives). On error the ctx is unchanged.
 * Ownership: borrows name and value until the request has exited.
 * Thread-safety: not thread-safe.
 */
FG_API int fg_ctx_add_header(fg_ctx *ctx, const char *name, const char *value);

/*
 * fg_ctx_add_header_n - fg_ctx_add_header with explicit lengths. value may be
 * NULL when value_len is 0.
 *
 * Returns, Ownership, Thread-safety: as fg_ctx_add_header.
 */
FG_API int fg_ctx_add_header_n(fg_ctx *ctx, const char *name, size_t name_len,
                               const char *value, size_t value_len);

/*
 * fg_ctx_header - the value of the first header whose name equals name,
 * compared ASCII case-insensitively (HTTP field names are).
 *
 * Returns: 0 and *value; FG_ENOTFOUND (and *value = {NULL, 0}) when absent;
 * FG_EINVAL when an argument is NULL.
 * Ownership: *value borrows the caller's bytes.
 * Thread-safety: safe to call from several threads on a ctx nobody writes.
 */
FG_API int fg_ctx_header(const fg_ctx *ctx, const char *name, fg_str *value);

/*
 * fg_ctx_header_n - fg_ctx_header with an explicit name length; name need
 * not be NUL-terminated.
 *
 * Returns, Ownership, Thread-safety: as fg_ctx_header.
 */
FG_API int fg_ctx_header_n(const fg_ctx *ctx, const char *name, size_t name_len,
                           fg_str *value);

/*
 * fg_ctx_size - sizeof(fg_ctx) as this library was built, for bindings that
 * allocate the ctx without the header, and for a start-up check that the
 * header a program was compiled with matches the library it runs with.
 *
 * Thread-safety: MT-safe.
 */
FG_API size_t fg_ctx_size(void);

/* ---- for bindings: a ctx on the heap and its decision, without the layout ---- */

/*
 * fg_ctx_new / fg_ctx_free - a ctx allocated by the library (through
 * fg_set_alloc_funcs' functions), for callers that cannot embed struct
 * fg_ctx (Python's ctypes, other FFIs). The new ctx is zeroed and must
 * still be prepared with fg_ctx_init before each request; it may be reused
 * for any number of requests, one at a time. fg_ctx_free(NULL) does
 * nothing.
 *
 * Returns: 0 and *out; FG_EINVAL for NULL out; FG_ENOMEM.
 * Ownership: the caller owns *out. A ctx must not be freed while it is
 * inside a chain (between an admitted enter and its exit).
 * Thread-safety: MT-safe.
 */
FG_API int fg_ctx_new(fg_ctx **out);
FG_API void fg_ctx_free(fg_ctx *ctx);

/*
 * fg_ctx_status - ctx->status: 0 while admitted or when the handler
 * succeeded, else the rejection or failure code. FG_EINVAL for NULL.
 * Thread-safety: as any read of the ctx: the thread that owns it.
 */
FG_API int fg_ctx_status(const fg_ctx *ctx);

/*
 * fg_ctx_route / fg_ctx_target - the names of the route and the split
 * target the router chose (ctx->route, ctx->target); fg_ctx_rejected_by -
 * the name of the stage that rejected (fg_stage_name of ctx->rejected_by).
 *
 * How long a name stays valid: during the request (stages, handler,
 * fallback), always. After it, a chain's names live as long as the chain;
 * a runtime (floodgate/runtime.h) may free an old chain at any reload, so
 * when a request through a runtime finishes, the runtime copies the names
 * into the ctx first: after fg_runtime_enter rejected, after
 * fg_runtime_exit, and after an fg_runtime_call during which a reload
 * happened. They then stay valid until the ctx is initialised again or
 * freed. (One gap: after an fg_runtime_call that no reload overlapped,
 * the names are the chain's and outlive the call until the second reload
 * after it; read them in the handler or fallback, or use the split API, if
 * reloads may be that frequent.) ctx->rejected_by itself is the stage and
 * lives as the chain does; prefer fg_ctx_rejected_by after the request.
 *
 * Returns: the name; NULL when there is none or ctx is NULL.
 * Thread-safety: as fg_ctx_status.
 */
FG_API const char *fg_ctx_route(const fg_ctx *ctx);
FG_API const char *fg_ctx_target(const fg_ctx *ctx);
FG_API const char *fg_ctx_rejected_by(const fg_ctx *ctx);

/*
 * fg_ctx_retry_after - ctx->retry_after_ns, a rejecting stage's hint (0:
 * none); fg_ctx_delay - ctx->delay_ns, how long after enter an admitted
 * request should start. 0 for NULL. Thread-safety: as fg_ctx_status.
 */
FG_API uint64_t fg_ctx_retry_after(const fg_ctx *ctx);
FG_API uint64_t fg_ctx_delay(const fg_ctx *ctx);

/*
 * fg_ctx_trace_id - this hop's trace id as 32 lowercase hex digits and a
 * NUL into buf (at least 33 bytes), once a trace stage has run.
 * Returns: 0; FG_ENOTFOUND when the ctx has no trace (buf then holds "");
 * FG_EINVAL for NULL arguments; FG_ETOOLONG when cap < 33.
 * Thread-safety: as fg_ctx_status.
 */
FG_API int fg_ctx_trace_id(const fg_ctx *ctx, char *buf, size_t cap);

FG_END_DECLS

#endif /* FLOODGATE_CTX_H */
