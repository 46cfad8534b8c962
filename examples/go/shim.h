/*
 * examples/go/shim.h - the C side of the Go package: a per-request object
 * in C memory that holds the fg_ctx and the bytes it borrows, one call that
 * prepares and enters a request, the handler trampoline that tells Go which
 * config handler a route names, and a file watcher that keeps its last
 * errors for Go to read.
 *
 * Why C memory: a fg_ctx borrows its method, path and header bytes until
 * the request exits, which is after the cgo call that entered it returns.
 * cgo's pointer rules forbid C from keeping a Go pointer past a call, so
 * both the ctx and every byte it points to live in C memory (fggo_req),
 * which Go fills through unsafe.Slice without a call.
 */
#ifndef FLOODGATE_GO_SHIM_H
#define FLOODGATE_GO_SHIM_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <floodgate.h>

/* One request, reused for many (one at a time). Go writes the inputs into
 * it, fggo_enter reads them and fills the outputs. */
typedef struct fggo_req {
    fg_ctx ctx;       /* ctx.user points back here */
    char *arena;      /* method, path, then each header's name and value */
    size_t arena_cap; /* bytes at arena (malloc'd) */
    /* inputs */
    uint32_t method_len, path_len, nheaders;
    uint32_t name_len[FG_CTX_MAX_HEADERS];
    uint32_t value_len[FG_CTX_MAX_HEADERS];
    /* outputs of fggo_enter */
    int bad_header; /* index of the header fg_ctx_add_header refused, or -1 */
    int handler;    /* index of the handler the routed target names, or -1 */
    int has_trace;  /* 1 when a trace stage ran: trace_id, traceparent set */
    char trace_id[33];
    char traceparent[FG_TRACEPARENT_LEN + 1]; /* this hop's span as the parent */
} fggo_req;

/* fggo_req_new - a zeroed request with an arena of cap bytes; NULL when out
 * of memory. fggo_req_free frees it and its arena (NULL: nothing). */
fggo_req *fggo_req_new(size_t cap);
void fggo_req_free(fggo_req *r);

/* fggo_req_reserve - make the arena hold at least need bytes, keeping its
 * contents. Returns 0 or FG_ENOMEM (the old arena stays). */
int fggo_req_reserve(fggo_req *r, size_t need);

/*
 * fggo_enter - prepare r->ctx from the inputs (fg_ctx_init_n, then
 * fg_ctx_add_header_n for each header), enter the runtime's current chain
 * (fg_runtime_enter) and, once admitted, ask the routed target which
 * handler it names (fg_route_dispatch on the trampoline). Fills the
 * outputs either way.
 *
 * Returns: 0 when admitted (the caller must call fg_runtime_exit once);
 * the init or add_header code (r->bad_header says which header; nothing
 * entered); the rejection code (nothing to exit); or a dispatch failure,
 * after which the request has already exited with that code.
 * Thread-safety: MT-safe on distinct r.
 *
 * The pointers on the request path (here, in fggo_exit and in the limiter
 * calls below) are passed as uintptr_t. Go 1.19's cgo heap-allocates 8
 * bytes per call for an argument that points to an incomplete (opaque)
 * struct type such as fg_runtime, and checks every pointer argument
 * (cgocheck) by looking it up in the Go heap; an integer costs neither.
 * These are C pointers, which the Go garbage collector never moves.
 */
int fggo_enter(uintptr_t rt, uintptr_t req);

/* fggo_exit - fg_runtime_exit(rt, &req->ctx, status). */
int fggo_exit(uintptr_t rt, uintptr_t req, int status);

/* fggo_registry_add - register name as a config handler whose call records
 * index in the request's fggo_req (the trampoline does nothing else).
 * Returns: as fg_registry_add_handler. */
int fggo_registry_add(fg_registry *reg, const char *name, int index);

/* A limiter decision, returned by value so that Go passes no pointer. */
typedef struct fggo_try {
    int rc;
    uint64_t wait_ns;
} fggo_try;

/* fggo_limiter_try_now - fg_limiter_try_now(l, n, &wait), l a fg_limiter
 * pointer (see fggo_enter); fggo_limiter_allow - fg_limiter_try_now(l, 1,
 * NULL). */
fggo_try fggo_limiter_try_now(uintptr_t l, uint64_t n);
int fggo_limiter_allow(uintptr_t l);

/* A watched config file and the outcome of its last load attempt. */
typedef struct fggo_watch {
    fg_watch *w;
    pthread_mutex_t mu; /* guards last_rc and last */
    int last_rc;
    fg_config_errors last;
} fggo_watch;

/*
 * fggo_watch_start - fg_runtime_watch with a callback that keeps each
 * attempt's result in *out. *out is set even when the first load fails
 * (its errors are then in it, and nothing runs): free it with
 * fggo_watch_free.
 */
int fggo_watch_start(fg_runtime *rt, const fg_registry *reg, const char *path,
                     uint64_t debounce_ns, fggo_watch **out);

/* fggo_watch_last - the last attempt's code, with its errors copied into
 * *errors (count 0 when none). */
int fggo_watch_last(fggo_watch *fw, fg_config_errors *errors);

/* fggo_watch_free - stop the watcher (if it runs) and free fw. */
void fggo_watch_free(fggo_watch *fw);

#endif /* FLOODGATE_GO_SHIM_H */
