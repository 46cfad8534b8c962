/*
 * floodgate/config.h - JSON configuration: a registry of the program's
 * handlers and stage factories, validation with errors a user can act on,
 * and loading a config into a runtime (floodgate/runtime.h) while traffic
 * flows.
 *
 * A config names limiters and breakers, the chain's stages in order, and
 * the routes with their matches, splits, per-route stages and handlers.
 * Loading compiles the whole config aside, validates every part, and only
 * then swaps it into the runtime; a config with any error changes nothing
 * and the old one keeps serving. Limiters and keyed limiters are carried
 * over by name: a limiter whose rate or burst changed keeps its tokens (see
 * docs/config.md for the rules per component). docs/config.md is the
 * schema reference.
 */
#ifndef FLOODGATE_CONFIG_H
#define FLOODGATE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "chain.h"
#include "common.h"
#include "runtime.h"
#include "stage.h"

FG_BEGIN_DECLS

#define FG_CONFIG_MAX_ERRORS 32          /* errors reported per load; the rest are counted */
#define FG_CONFIG_MAX_BYTES  (16u << 20) /* a config document's size */
#define FG_CONFIG_NAME_MAX   128         /* a handler, stage factory or component name */

/* One problem in a config: where (a JSON path such as
 * "routes[3].match.when", and line and column for syntax errors, else 0)
 * and what. */
typedef struct fg_config_error {
    char path[192];    /* the JSON path; "" for the document as a whole */
    int line;          /* 1-based, for a syntax error; else 0 */
    int column;        /* 1-based, for a syntax error; else 0 */
    char message[224]; /* what is wrong */
} fg_config_error;

/* Every problem a load found, up to FG_CONFIG_MAX_ERRORS (in document
 * order); `omitted` counts the ones past that. */
typedef struct fg_config_errors {
    size_t count;                                /* entries used in items */
    size_t omitted;                              /* problems not kept */
    fg_config_error items[FG_CONFIG_MAX_ERRORS]; /* the problems, in document order */
} fg_config_errors;

/*
 * fg_config_errors_format - the errors as text, one per line:
 * "path: message" (just "message" when the path is empty, as for syntax
 * errors, which end in " (line L, column C)"), then "... and N more" when
 * some were omitted. NUL-terminated, cut to cap.
 * Returns: the length written (without the NUL). Thread-safety: MT-safe.
 */
FG_API size_t fg_config_errors_format(const fg_config_errors *errors, char *buf, size_t cap);

/* ---- the registry ---------------------------------------------------------------- */

/* The names a config may use: handlers, fallbacks, custom stages (opaque). */
typedef struct fg_registry fg_registry;

/*
 * A custom stage factory: make a stage from the options a config gives it
 * (the JSON text of the stage's "options" object, "{}" when none). On a bad
 * option return a negative code and write a one-line reason into why (a
 * buffer of why_cap bytes); it becomes a config error at the stage's path.
 */
typedef int (*fg_stage_factory)(const char *options_json, size_t len, void *arg,
                                fg_stage **out, char *why, size_t why_cap);

/*
 * fg_registry_new / fg_registry_free - the names a config may use. Register
 * everything before loading; a registry may serve several runtimes.
 * Returns: 0 and *out; FG_EINVAL; FG_ENOMEM.
 * Thread-safety: building is not thread-safe; loading only reads it.
 */
FG_API int fg_registry_new(fg_registry **out);
FG_API void fg_registry_free(fg_registry *registry);

/*
 * fg_registry_add_handler - a handler a route (or "handler") may name.
 * Returns: 0; FG_EEXIST for a name already registered; FG_EINVAL for NULL
 * arguments or an empty name; FG_ETOOLONG past FG_CONFIG_NAME_MAX; FG_ENOMEM.
 * Ownership: copies name; arg is the handler's, passed to every call.
 */
FG_API int fg_registry_add_handler(fg_registry *registry, const char *name, fg_handler_fn fn,
                                   void *arg);

/*
 * fg_registry_add_fallback - a fallback a config may name, at the top level
 * ("fallback": name, for every route) or per route (a route's own wins).
 * It receives the requests a stage (or the chain: out of time, canceled)
 * rejected and those whose handler failed, with the code, when they run
 * through fg_runtime_call; with the split API the caller handles them. A
 * request no route matched gets the top-level one (code FG_ENOROUTE).
 * Returns, Ownership: as fg_registry_add_handler.
 */
FG_API int fg_registry_add_fallback(fg_registry *registry, const char *name, fg_fallback_fn fn,
                                    void *arg);

/*
 * fg_registry_add_stage - a custom stage kind, used in a config as
 * {"custom": "name", "options": {...}} in any stage list.
 * Returns, Ownership: as fg_registry_add_handler.
 */
FG_API int fg_registry_add_stage(fg_registry *registry, const char *name,
                                 fg_stage_factory factory, void *arg);

/* ---- validating and loading -------------------------------------------------------- */

/*
 * fg_config_check - validate a config without loading it: everything
 * fg_runtime_load_json checks, nothing swapped. registry may be NULL, and
 * then handler and custom stage names are not checked (what `floodgate
 * check` does without the program's registry).
 *
 * Returns: 0 when valid; FG_ECONFIG with *errors filled when not (errors
 * may be NULL); FG_ETOOLONG past FG_CONFIG_MAX_BYTES; FG_EINVAL; FG_ENOMEM.
 * Thread-safety: MT-safe.
 */
FG_API int fg_config_check(const fg_registry *registry, const char *text, size_t len,
                           fg_config_errors *errors);

/*
 * fg_runtime_load_json - compile a config and make it the runtime's
 * current one. Limiters and keyed limiters of the same name and kind are
 * kept, with new rate and burst applied in place (tokens kept); ones whose
 * other settings changed are made fresh; ones the config no longer names go
 * when no request uses them. All of this happens only once the whole
 * config is valid.
 *
 * Returns: 0; FG_ECONFIG with *errors when the config is invalid (the
 * runtime is unchanged); FG_EINVAL for a NULL rt or registry; others as
 * fg_config_check.
 * Ownership: reads text; the registry must outlive the runtime (handlers
 * and factories are called through it).
 * Thread-safety: MT-safe; loads on one runtime are serialised, requests
 * never wait for them.
 */
FG_API int fg_runtime_load_json(fg_runtime *rt, const fg_registry *registry, const char *text,
                                size_t len, fg_config_errors *errors);

/*
 * fg_runtime_load_file - fg_runtime_load_json on a file's contents.
 * Returns: as fg_runtime_load_json; FG_ESYS when the file cannot be read
 * (errors then holds one entry naming the file and the reason).
 */
FG_API int fg_runtime_load_file(fg_runtime *rt, const fg_registry *registry, const char *path,
                                fg_config_errors *errors);

/* ---- watching a file or an etcd key ----------------------------------------------- */

#define FG_ETCD_ENDPOINT_MAX 1024 /* bytes of an etcd endpoint URL */
#define FG_ETCD_KEY_MAX      1024 /* bytes of an etcd key */

/* A watcher of a config file or an etcd key (opaque): fg_runtime_watch and
 * fg_runtime_watch_etcd start one. */
typedef struct fg_watch fg_watch;

/*
 * A reload callback: called after every load attempt of a watched file or
 * key. rc is 0 or the load's code: for a file as fg_runtime_load_file
 * (FG_ECONFIG, FG_ESYS when the file is missing or unreadable, FG_ETOOLONG,
 * FG_ENOMEM); for etcd as listed at fg_runtime_watch_etcd. errors is NULL
 * when rc == 0, else the load's errors (count 0 for codes that carry none),
 * valid only during the call. The first attempt runs on the thread that
 * starts the watcher, every later one on the watcher's thread, one at a
 * time. A slow callback delays the next reload, never a request.
 */
typedef void (*fg_reload_fn)(fg_runtime *rt, int rc, const fg_config_errors *errors,
                             void *arg);

/* fg_watch_options - how a file or an etcd key is watched. Zero means the
 * default everywhere; a file watcher ignores the etcd fields. */
typedef struct fg_watch_options {
    /* A file: after a change, wait until the file has been quiet this
     * long, then reload once (0: 100 ms). etcd ignores it. */
    uint64_t debounce_ns;
    fg_reload_fn on_reload; /* called after every attempt (NULL: none) */
    void *arg;              /* passed to on_reload */
    /* etcd: the bound on one HTTP request (0: 2 s): connecting, a whole
     * read of the key, and a watch stream's first answer ("created"); the
     * stream itself is long-lived and has no overall bound. */
    uint64_t timeout_ns;
    /* etcd: the wait before reconnecting after a lost stream starts at
     * backoff_min_ns and doubles up to backoff_max_ns, less up to 50%
     * random jitter (0: 50 ms and 2 s); it starts again from the minimum
     * once a stream is established. */
    uint64_t backoff_min_ns;
    uint64_t backoff_max_ns; /* etcd: the longest wait between reconnects */
} fg_watch_options;

/* Defaults: 100 ms debounce, no callback; etcd: 2 s timeout, 50 ms to 2 s
 * backoff. */
#define FG_WATCH_OPTIONS_INIT                                                                 \
    { 0, NULL, NULL, 0, 0, 0 }

/*
 * fg_watch_stats - load attempts of a watcher, the first one included.
 * attempts counts the loads begun, loaded and failed the ones finished
 * (attempts - loaded - failed is 1 while a load runs, else 0).
 */
typedef struct fg_watch_stats {
    uint64_t attempts; /* loads begun */
    uint64_t loaded;   /* loads that succeeded */
    uint64_t failed;   /* loads that failed */
    /* etcd: the mod_revision of the key's value that serves now (the last
     * one loaded); 0 for a file watcher. */
    uint64_t revision;
    /* etcd: reconnections begun after a watch stream ended or could not be
     * opened (each retry counts); 0 for a file watcher. */
    uint64_t reconnects;
} fg_watch_stats;

/*
 * fg_runtime_watch - load a config file now, then reload it whenever it
 * changes. The file is watched through its directory (inotify), so writes
 * in place, a temporary file renamed over it, and delete-and-recreate are
 * all seen; changes are debounced. Every attempt is counted and reported to
 * on_reload; a failed one (an invalid config, or a missing file while it is
 * being replaced) changes nothing and the old config keeps serving.
 * The directory is resolved to an absolute path now; it must stay (the
 * watcher sees nothing once it is removed or renamed).
 *
 * Returns: 0 and *out when the first load succeeded and the watcher runs.
 * When the first load fails, its code (as fg_runtime_load_file; on_reload
 * has the errors) and nothing runs. FG_EINVAL for NULL arguments or a path
 * ending in '/'; FG_ETOOLONG for a file name over 255 bytes; FG_ESYS when
 * the directory cannot be resolved or watched or the thread cannot start
 * (errno says why); FG_ENOMEM. On any error *out is NULL and no thread runs
 * (a successful first load stays in the runtime).
 * Ownership: copies path and opts; the caller owns *out (fg_watch_stop).
 * rt and registry are borrowed: both must outlive the watcher.
 * Thread-safety: MT-safe (loads on rt are serialised with any others).
 */
FG_API int fg_runtime_watch(fg_runtime *rt, const fg_registry *registry, const char *path,
                            const fg_watch_options *opts, fg_watch **out);

/*
 * fg_etcd_available - whether this build of floodgate has the etcd config
 * source (it was built with libcurl).
 * Returns: 1 when fg_runtime_watch_etcd works, 0 when it always returns
 * FG_ESTATE. Thread-safety: MT-safe.
 */
FG_API int fg_etcd_available(void);

/*
 * fg_runtime_watch_etcd - load a config from an etcd key now, then reload
 * it whenever the key changes. endpoint is an etcd v3 client URL such as
 * "http://127.0.0.1:2379" ("http://" or "https://", an optional path prefix, no
 * query);
 * the key's value is the config's JSON text. etcd is reached through its
 * JSON gateway (POST /v3/kv/range, /v3/watch) with libcurl.
 *
 * Every change goes through fg_runtime_load_json, as a file reload does:
 * an invalid config is rejected and the old one keeps serving. The watcher
 * applies the newest PUT of each batch of events it receives (last wins)
 * and never one of a revision at or below one it has seen. A DELETE keeps
 * the old config serving and is reported as a failed attempt (FG_ENOTFOUND,
 * one error: "key deleted at revision N; ..."); a later PUT applies again. After a
 * lost stream (etcd restarted, network) it reconnects with backoff and
 * resumes from the last revision seen + 1, so no change is missed; when
 * etcd has compacted that revision away it reads the key afresh instead.
 * A stream not confirmed by etcd within timeout_ns is re-opened too. A
 * watch message (or a read's answer) over the bound, base64 of
 * FG_CONFIG_MAX_BYTES plus 64 KiB, or that is not the JSON etcd sends, is
 * a failed attempt (FG_ETOOLONG, FG_EPARSE) after which the key is read
 * afresh; nothing is allocated past that bound. Reconnections are counted
 * in fg_watch_stats.reconnects, not reported to on_reload (nothing was
 * loaded).
 *
 * Codes of an attempt (the return value for the first, on_reload for
 * all): 0; FG_ESYS when etcd cannot be reached or answers an HTTP error
 * (one error naming the endpoint and the reason; the first load only: the
 * watcher retries those, as reconnections); FG_ENOTFOUND when the
 * key does not exist or was deleted; FG_ECONFIG for an invalid config;
 * FG_ETOOLONG for a value over FG_CONFIG_MAX_BYTES; FG_EPARSE for an answer
 * that is not what etcd sends; FG_ENOMEM. Errors of etcd itself carry the
 * key as their path.
 *
 * Returns: 0 and *out when the first load succeeded and the watcher runs;
 * else the first load's code (above; on_reload has its errors) and nothing
 * runs. Also FG_EINVAL for NULL arguments, an empty key or an endpoint
 * that is not an http:// or https:// URL; FG_ETOOLONG for an endpoint over
 * FG_ETCD_ENDPOINT_MAX or a key over FG_ETCD_KEY_MAX bytes; FG_ESYS when
 * the thread cannot start; FG_ENOMEM; FG_ESTATE when built without libcurl
 * (fg_etcd_available). On any error *out is NULL and no thread runs (a
 * successful first load stays in the runtime).
 * Ownership: copies endpoint, key and opts; the caller owns *out
 * (fg_watch_stop). rt and registry are borrowed: both must outlive the
 * watcher.
 * Thread-safety: MT-safe (loads on rt are serialised with any others).
 * libcurl is initialised once (curl_global_init) on the first call.
 */
FG_API int fg_runtime_watch_etcd(fg_runtime *rt, const fg_registry *registry,
                                 const char *endpoint, const char *key,
                                 const fg_watch_options *opts, fg_watch **out);

/*
 * fg_watch_stats_get - the watcher's counters into *stats (each read
 * atomically; loaded + failed never exceeds attempts).
 * Returns: 0; FG_EINVAL for NULL arguments.
 * Thread-safety: MT-safe, lock-free; any thread, while the watcher runs.
 */
FG_API int fg_watch_stats_get(const fg_watch *w, fg_watch_stats *stats);

/*
 * fg_watch_stop - stop watching (a file or an etcd key): wake the
 * watcher's thread, wait for a load or callback in progress to finish,
 * join it, and free w. No callback runs after it returns. Call it before
 * fg_runtime_free. Called from on_reload itself it cannot wait for its own
 * thread: it returns at once, and the thread frees w and ends when the
 * callback returns, using neither rt nor the registry again; nothing marks
 * that end, so do not call fg_set_alloc_funcs right after. NULL does
 * nothing.
 * Ownership: takes w.
 * Thread-safety: not thread-safe: once per watcher, and no other call on w
 * may run or follow.
 */
FG_API void fg_watch_stop(fg_watch *w);

FG_END_DECLS

#endif /* FLOODGATE_CONFIG_H */
