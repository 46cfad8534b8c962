/*
 * lib/runtime_internal.h - what the config compiler needs from the runtime:
 * swapping in a snapshot that owns more than its chain (the components it
 * references), a serialisation lock for loads, and a slot for the config
 * compiler's own state (the table of components carried over by name).
 * Not installed.
 */
#ifndef FG_LIB_RUNTIME_INTERNAL_H
#define FG_LIB_RUNTIME_INTERNAL_H

#include <pthread.h>

#include "floodgate/metrics.h"
#include "floodgate/runtime.h"

/*
 * fg_runtime_swap, and when the snapshot is freed (after its chain),
 * release(release_arg) runs, on whichever thread frees it. On error the
 * chain is freed and release(release_arg) runs at once.
 */
int fg__runtime_swap_with(fg_runtime *rt, fg_chain *chain, const char *version,
                          void (*release)(void *), void *release_arg);

/* Held by the config compiler for a whole load: loads are serialised. */
pthread_mutex_t *fg__runtime_load_lock(fg_runtime *rt);

/* The config compiler's state for rt (NULL until set), and setting it with
 * the function fg_runtime_free calls on it (after the last snapshot). Only
 * under the load lock. */
void *fg__runtime_config_state(fg_runtime *rt);
void fg__runtime_set_config_state(fg_runtime *rt, void *state, void (*free_fn)(void *));

/* The clock configs compiled for rt use (fg_runtime_set_clock). */
fg_clock fg__runtime_clock(fg_runtime *rt);

/* The breaker listener configs compiled for rt attach (may be NULL). */
fg_runtime_breaker_fn fg__runtime_breaker_listener(fg_runtime *rt, void **arg);

/* The registry's clock follows the runtime's (lib/metrics.c). */
void fg__metrics_set_clock(fg_metrics *m, fg_clock clock);

#endif /* FG_LIB_RUNTIME_INTERNAL_H */
