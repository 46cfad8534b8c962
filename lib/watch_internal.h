/*
 * lib/watch_internal.h - what the config watchers share: the file watcher
 * (lib/watch.c) and the etcd watcher (lib/etcd.c). Not installed.
 *
 * Both hand out the one public handle, fg_watch, so that fg_watch_stats_get
 * and fg_watch_stop work on either. struct fg_watch is the common part; each
 * kind embeds it as its first member and supplies two operations: wake (make
 * its thread notice that w->stopping is set and return) and destroy (free
 * everything once the thread has ended). fg_watch_stop does the rest the same
 * way for both: set stopping, wake, join, destroy.
 */
#ifndef FG_LIB_WATCH_INTERNAL_H
#define FG_LIB_WATCH_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "floodgate/config.h"

struct fg_watch;

struct fg__watch_ops {
    /* Wake the watcher's thread so that it sees w->stopping (set before)
     * and returns. Called from the thread of fg_watch_stop. */
    void (*wake)(struct fg_watch *w);
    /* Free w and all it owns; its thread has ended (or never started).
     * Keeps errno. */
    void (*destroy)(struct fg_watch *w);
};

struct fg_watch {
    const struct fg__watch_ops *ops;
    fg_runtime *rt;
    const fg_registry *registry;
    fg_reload_fn on_reload;
    void *arg;
    pthread_t thread;
    int started;          /* thread is valid */
    int stopping;         /* atomic: fg_watch_stop has begun; the thread ends */
    int stop_in_callback; /* fg_watch_stop ran inside on_reload (watcher's thread only) */
    /* Counters, written by the one thread that loads (the caller of the
     * start function, then the watcher), read by any thread. */
    uint64_t attempts, loaded, failed;
    uint64_t revision;       /* etcd: the mod_revision serving now */
    uint64_t reconnects;     /* etcd: streams re-opened */
    fg_config_errors errors; /* the current attempt's; only the loading thread uses it */
};

/* Fills the common part (zeroing it first): defaults for what opts leaves
 * unset. opts may be NULL. */
void fg__watch_init(struct fg_watch *w, const struct fg__watch_ops *ops, fg_runtime *rt,
                    const fg_registry *registry, const fg_watch_options *opts);

/* An attempt begins: counted in attempts (see fg__watch_end). */
void fg__watch_begin(struct fg_watch *w);

/*
 * The attempt begun last ends with rc: counted in loaded or failed, then
 * reported to on_reload with w->errors when rc != 0. Returns 1 when
 * on_reload called fg_watch_stop (the thread must then unwind, call
 * ops->destroy and end, with no further callback), else 0.
 */
int fg__watch_end(struct fg_watch *w, int rc);

/* w->errors becomes one entry: path (cut to fit) and a printf message. */
void fg__watch_error(struct fg_watch *w, const char *path, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Whether fg_watch_stop has begun (acquire: pairs with its store). */
int fg__watch_stopping(const struct fg_watch *w);

/* Starts the watcher's thread on fn(w), with every signal blocked in it,
 * and marks w started. Returns 0 or FG_ESYS (errno says why). */
int fg__watch_start(struct fg_watch *w, void *(*fn)(void *));

#endif /* FG_LIB_WATCH_INTERNAL_H */
