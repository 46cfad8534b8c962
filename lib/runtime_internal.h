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

#include "floodgate/cluster.h"
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

/* The cluster limiter listener configs compiled for rt attach (may be NULL). */
fg_cluster_listener fg__runtime_cluster_listener(fg_runtime *rt, void **arg);

/* The registry's clock follows the runtime's (lib/metrics.c). */
void fg__metrics_set_clock(fg_metrics *m, fg_clock clock);

/*
 * The cluster limiters a config made, exported by name (lib/metrics.c):
 * the floodgate_cluster_* families and the JSON "clusters" array.
 *
 * fg__metrics_add_cluster: from now on every export reads cl's counters
 * (fg_cluster_limiter_stats, under the registry's lock) into the series of
 * `name`. Returns 0; FG_ETOOLONG (name); FG_ETOOMANY beyond 256 names;
 * FG_ENOMEM.
 *
 * fg__metrics_remove_cluster: cl's counters as they are now are folded
 * into its name's totals and cl is no longer read; call it before
 * fg_cluster_limiter_free. A cl never added, or a NULL m, is ignored.
 *
 * Several limiters of one name (a reload's old and new, for as long as
 * both live) make one series: their counters are summed with those of the
 * limiters of that name already gone, so a counter never goes backwards
 * when a reload replaces a limiter; the mode is the newest one's. The
 * series goes when the last limiter of its name is removed.
 *
 * fg__metrics_cluster_event: remember a limiter's latest mode change (the
 * reason it gave) for the JSON export. The counts themselves come from
 * fg_cluster_limiter_stats. Returns 0; FG_EINVAL; FG_ETOOLONG;
 * FG_ETOOMANY; FG_ENOMEM.
 *
 * Thread-safety: MT-safe; each takes the registry's mutex.
 */
int fg__metrics_add_cluster(fg_metrics *m, const char *name, const fg_cluster_limiter *cl);
void fg__metrics_remove_cluster(fg_metrics *m, const fg_cluster_limiter *cl);
int fg__metrics_cluster_event(fg_metrics *m, const char *name, const fg_cluster_event *ev);

#endif /* FG_LIB_RUNTIME_INTERNAL_H */
