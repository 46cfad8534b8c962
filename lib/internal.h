/*
 * lib/internal.h - definitions shared between the core's source files: the
 * stage object and the ctx life-cycle states. Not installed.
 */
#ifndef FG_LIB_INTERNAL_H
#define FG_LIB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "floodgate/ctx.h"
#include "floodgate/stage.h"

/*
 * ctx->priv.state. The values are unlikely bit patterns rather than 0, 1, 2
 * so that a ctx the caller forgot to initialise (stack garbage) is refused
 * with FG_ESTATE far more often than it is mistaken for a valid one.
 */
enum {
    FG_CTX_INVALID = 0,            /* init failed */
    FG_CTX_READY = 0x46475244u,    /* initialised, not yet entered */
    FG_CTX_ADMITTED = 0x46474144u, /* entered, waiting for fg_chain_exit */
    FG_CTX_FINISHED = 0x4647464eu, /* exited or rejected */
    FG_CTX_RUNNING = 0x46475255u,  /* inside fg_chain_call */
};

struct fg_stage {
    const fg_stage_ops *ops; /* borrowed, static in practice */
    void *state;             /* owned: ops->destroy(state) with the last reference */
    char *name;              /* owned copy */
    uint32_t refs;           /* atomic reference count */
};

/* HTTP text helpers (lib/ctx.c). fg__is_token: every byte of s is an RFC
 * 9110 tchar (true for len 0). fg__name_equal: a equals b, ASCII
 * case-insensitively, as HTTP field names compare. */
int fg__is_tchar(unsigned char c);
int fg__is_token(const char *s, size_t len);
/* Copy the ctx's route, target and rejecting stage names into the ctx itself
 * and point at the copies, and forget the chain, so that nothing read from a
 * finished ctx points into a chain a reload may free (lib/ctx.c; the runtime
 * calls it as a request finishes). */
void fg__ctx_keep_names(fg_ctx *ctx);
int fg__name_equal(const fg_str *a, const char *b, size_t blen);

/* Trace helpers (lib/trace.c): lowercase hex of n bytes into 2n chars (no
 * NUL); whether n bytes are all zero. */
void fg__tohex(const uint8_t *in, size_t n, char *out);
int fg__all_zero(const uint8_t *p, size_t n);

/* 64 random bits from the calling thread's generator (lib/trace.c): fast,
 * lock-free, seeded from the OS; not for secrets. */
uint64_t fg__random_u64(void);

/* Whether k is a valid tracestate key (lib/tracestate.c). */
int fg__tracestate_key_valid(const char *k, size_t n);

#endif /* FG_LIB_INTERNAL_H */
