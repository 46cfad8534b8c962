/*
 * floodgate/runtime.h - a runtime: the chain that is current now, swapped
 * while requests flow.
 *
 * A runtime holds one current chain (with its router and stages: a
 * snapshot). fg_runtime_swap installs a new one; requests that started on
 * the old one finish on it, requests that start afterwards use the new one,
 * and the old one is freed once no request can still be using it. Readers
 * never block and never take a lock: the sync path is an epoch section
 * (Concurrency Kit's ck_epoch) around an ordinary chain call, so the swap
 * costs requests nothing. The split API, whose enter and exit may run on
 * different threads, holds a reference on the snapshot between them.
 *
 * The JSON config center (a later part of this component) compiles a
 * config into a chain and swaps it in here; a program can already build
 * chains in code and swap them. docs/adr/0005-runtime-snapshots.md has the
 * design.
 */
#ifndef FLOODGATE_RUNTIME_H
#define FLOODGATE_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "breaker.h"
#include "chain.h"
#include "clock.h"
#include "cluster.h"
#include "common.h"
#include "ctx.h"

FG_BEGIN_DECLS

/* A runtime (opaque): fg_runtime_new makes one. */
typedef struct fg_runtime fg_runtime;

/*
 * fg_runtime_new - a runtime with no chain yet (requests get FG_ESTATE
 * until the first fg_runtime_swap).
 *
 * Returns: 0 and *out; FG_EINVAL; FG_ENOMEM.
 * Ownership: the caller owns *out (fg_runtime_free).
 * Thread-safety: MT-safe.
 */
FG_API int fg_runtime_new(fg_runtime **out);

/*
 * fg_runtime_swap - make chain the current one. Requests already inside
 * the previous chain finish there; it is freed (fg_chain_free) when the last
 * of them has finished, by whichever later swap, exit or free notices.
 * version is a label for logs and fg_runtime_version (copied; NULL: "").
 *
 * Returns: 0; FG_EINVAL for NULL rt or chain; FG_ETOOLONG for a version
 * over 256 bytes; FG_ENOMEM. On error the current chain stays and chain is
 * freed.
 * Ownership: takes chain, on success and on error alike.
 * Thread-safety: MT-safe; swaps are serialised with each other, never with
 * requests.
 */
FG_API int fg_runtime_swap(fg_runtime *rt, fg_chain *chain, const char *version);

/*
 * fg_runtime_call - fg_chain_call on the current chain.
 *
 * Returns: as fg_chain_call; FG_ESTATE also when no chain was swapped in.
 * Thread-safety: MT-safe, lock-free: any number of threads, each with its
 * own ctx, while other threads swap.
 */
FG_API int fg_runtime_call(fg_runtime *rt, fg_ctx *ctx, fg_handler_fn handler, void *arg);

/*
 * fg_runtime_enter / fg_runtime_exit - fg_chain_enter on the current
 * chain, and fg_chain_exit on the chain the request entered (which a swap
 * in between does not change). exit may run on another thread.
 *
 * Returns: as fg_chain_enter / fg_chain_exit; FG_ESTATE also when no chain
 * was swapped in, or for exit, when ctx did not enter through rt.
 * Thread-safety: MT-safe, as fg_runtime_call.
 */
FG_API int fg_runtime_enter(fg_runtime *rt, fg_ctx *ctx);
FG_API int fg_runtime_exit(fg_runtime *rt, fg_ctx *ctx, int status);

/*
 * fg_runtime_set_clock - the clock that chains, limiters and breakers
 * compiled from a config (floodgate/config.h) read, instead of the
 * monotonic clock: a fake clock for tests and for replaying a recorded
 * trace on virtual time. Chains swapped in with fg_runtime_swap keep their
 * own clocks.
 *
 * Returns: 0; FG_ESTATE once a chain or config has been loaded (set it
 * first); FG_EINVAL for NULL rt or clock.now.
 * Ownership: copies clock; its arg must outlive the runtime.
 * Thread-safety: MT-safe.
 */
FG_API int fg_runtime_set_clock(fg_runtime *rt, fg_clock clock);

/*
 * A breaker event from a breaker a config made: the breaker's name in the
 * config, and the event (floodgate/breaker.h). Called on the thread that
 * caused the change; it must not block.
 */
typedef void (*fg_runtime_breaker_fn)(const char *name, const fg_breaker_event *event,
                                      void *arg);

/*
 * fg_runtime_set_breaker_listener - report every state change of the
 * breakers configs compile for rt (replay's timeline, logs, metrics).
 *
 * Returns: 0; FG_ESTATE once a config has been loaded (set it first);
 * FG_EINVAL for NULL rt.
 * Ownership: fn and arg must outlive the runtime. Thread-safety: MT-safe.
 */
FG_API int fg_runtime_set_breaker_listener(fg_runtime *rt, fg_runtime_breaker_fn fn,
                                           void *arg);

/*
 * fg_runtime_set_cluster_listener - report every mode change of the
 * cluster limiters (floodgate/cluster.h) configs compile for rt, with the
 * limiter's name in the config: entering fallback (Redis unreachable, slow
 * or failing, with the reason) and coming back (health checks, logs,
 * alerts). The runtime's metrics count them either way (floodgate_cluster_*
 * in docs/observability.md). Called on the thread that saw the change (a
 * request's, or the limiter's background thread); it must not block and
 * must not call into rt's config loading.
 *
 * Returns: 0; FG_ESTATE once a config has been loaded (set it first);
 * FG_EINVAL for NULL rt.
 * Ownership: fn and arg must outlive the runtime. Thread-safety: MT-safe.
 */
FG_API int fg_runtime_set_cluster_listener(fg_runtime *rt, fg_cluster_listener fn, void *arg);

/*
 * fg_runtime_generation - how many swaps have happened (0 before the
 * first). Thread-safety: MT-safe.
 */
FG_API uint64_t fg_runtime_generation(const fg_runtime *rt);

/*
 * fg_runtime_version - the current chain's version label, copied with a
 * NUL into buf (cut to cap - 1 bytes).
 * Returns: 0; FG_ESTATE before the first swap; FG_EINVAL.
 * Thread-safety: MT-safe.
 */
FG_API int fg_runtime_version(fg_runtime *rt, char *buf, size_t cap);

/*
 * fg_runtime_free - free the runtime and its chains.
 * Thread-safety: not thread-safe: no request may be in flight through rt
 * (split requests included) and no thread may use it afterwards.
 */
FG_API void fg_runtime_free(fg_runtime *rt);

FG_END_DECLS

#endif /* FLOODGATE_RUNTIME_H */
