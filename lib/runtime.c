/*
 * lib/runtime.c - the current chain of a runtime, swapped under epoch
 * protection (docs/adr/0005-runtime-snapshots.md).
 *
 * A snapshot (a chain and its version label) is reference-counted: one
 * reference for being current, one per split request between enter and
 * exit. Sync requests take no reference: they run inside a ck_epoch read
 * section, and a retired snapshot drops its "current" reference only in an
 * epoch callback, after every section that could have seen it has ended.
 * Each thread keeps its epoch record for a runtime in a small thread-local
 * cache keyed by the runtime's unique id (never its address, which a later
 * runtime may reuse); a thread that exits gives its records back for
 * recycling.
 */
#include <pthread.h>
#include <string.h>

#include <ck_epoch.h>

#include "floodgate/error.h"
#include "floodgate/runtime.h"

#include "alloc.h"
#include "atomic.h"
#include "internal.h"
#include "runtime_internal.h"

#ifdef FG_TSAN
/* libck is not built with ThreadSanitizer, so the order ck_epoch creates
 * between a reader's section end and the writer's reclamation is invisible
 * to it; these annotations state it. */
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define FG_TSAN_RELEASE(p) __tsan_release(p)
#define FG_TSAN_ACQUIRE(p) __tsan_acquire(p)
#else
#define FG_TSAN_RELEASE(p) ((void)(p))
#define FG_TSAN_ACQUIRE(p) ((void)(p))
#endif

#define FG_VERSION_MAX 256
#define FG_RT_CACHE    4 /* runtimes a thread keeps a record for at once */

struct fg_snapshot {
    ck_epoch_entry_t entry; /* for ck_epoch_call */
    fg_chain *chain;        /* owned */
    char *version;          /* owned */
    uint32_t refs;          /* atomic: current + split requests in flight */
    struct fg_runtime *rt;
    void (*release)(void *); /* what else the snapshot owns (config components) */
    void *release_arg;
};

struct fg_rt_record {
    ck_epoch_record_t rec;
    struct fg_rt_record *next;
};

struct fg_runtime {
    ck_epoch_t epoch;
    struct fg_snapshot *current; /* atomic pointer */
    uint64_t generation;         /* atomic */
    uint64_t id;
    pthread_mutex_t lock; /* swaps, record registration and release */
    struct fg_rt_record *writer;
    struct fg_rt_record *records; /* every record made, freed with the runtime */
    struct fg_runtime *next_live; /* in the live list below */
    pthread_mutex_t load_lock;    /* config loads (lib/config.c) */
    void *config_state;
    void (*config_state_free)(void *);
    fg_clock clock; /* for compiled configs; under load_lock */
    fg_runtime_breaker_fn breaker_fn;
    void *breaker_arg;
    fg_cluster_listener cluster_fn;
    void *cluster_arg;
    fg_metrics *metrics; /* every config's metrics stage counts here */
};

/* ---- live runtimes, for threads giving records back ----------------------------- */

static pthread_mutex_t fg_live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fg_runtime *fg_live; /* under fg_live_lock */
static uint64_t fg_next_id = 1;    /* under fg_live_lock */

struct fg_rt_slot {
    uint64_t id;
    ck_epoch_record_t *rec;
};
static _Thread_local struct fg_rt_slot fg_rt_cache[FG_RT_CACHE];
static _Thread_local unsigned fg_rt_victim;

static pthread_key_t fg_rt_key;
static pthread_once_t fg_rt_key_once = PTHREAD_ONCE_INIT;

/* Give a thread's record back (it becomes recyclable), if its runtime is
 * still alive; a freed runtime took its records with it. */
static void fg_rt_release(struct fg_rt_slot *slot) {
    if (slot->id == 0)
        return;
    pthread_mutex_lock(&fg_live_lock);
    for (struct fg_runtime *rt = fg_live; rt != NULL; rt = rt->next_live) {
        if (rt->id == slot->id) {
            pthread_mutex_lock(&rt->lock);
            ck_epoch_unregister(slot->rec);
            pthread_mutex_unlock(&rt->lock);
            break;
        }
    }
    pthread_mutex_unlock(&fg_live_lock);
    slot->id = 0;
    slot->rec = NULL;
}

static void fg_rt_thread_exit(void *unused) {
    (void)unused;
    for (int i = 0; i < FG_RT_CACHE; i++)
        fg_rt_release(&fg_rt_cache[i]);
}

static void fg_rt_make_key(void) { (void)pthread_key_create(&fg_rt_key, fg_rt_thread_exit); }

/* A new or recycled record of rt's epoch, or NULL (out of memory). */
static ck_epoch_record_t *fg_rt_new_record(struct fg_runtime *rt) {
    pthread_mutex_lock(&rt->lock);
    ck_epoch_record_t *rec = ck_epoch_recycle(&rt->epoch, NULL);
    if (rec == NULL) {
        struct fg_rt_record *r = fg__aligned_calloc(sizeof(*r), 64);
        if (r != NULL) {
            ck_epoch_register(&rt->epoch, &r->rec, NULL);
            r->next = rt->records;
            rt->records = r;
            rec = &r->rec;
        }
    }
    pthread_mutex_unlock(&rt->lock);
    return rec;
}

/* The calling thread's record for rt: a few compares when cached. */
static ck_epoch_record_t *fg_rt_record(struct fg_runtime *rt) {
    for (int i = 0; i < FG_RT_CACHE; i++)
        if (fg_rt_cache[i].id == rt->id)
            return fg_rt_cache[i].rec;
    (void)pthread_once(&fg_rt_key_once, fg_rt_make_key);
    (void)pthread_setspecific(fg_rt_key, fg_rt_cache); /* so the destructor runs */
    ck_epoch_record_t *rec = fg_rt_new_record(rt);
    if (rec == NULL)
        return NULL;
    struct fg_rt_slot *slot = &fg_rt_cache[fg_rt_victim++ % FG_RT_CACHE];
    fg_rt_release(slot);
    slot->id = rt->id;
    slot->rec = rec;
    return rec;
}

/* ---- snapshots ------------------------------------------------------------------- */

static void fg_snapshot_free(struct fg_snapshot *s) {
    fg_chain_free(s->chain);
    if (s->release != NULL)
        s->release(s->release_arg);
    fg__free(s->version);
    fg__free(s);
}

static void fg_snapshot_unref(struct fg_snapshot *s) {
    if (fg__faa_u32(&s->refs, (uint32_t)-1) == 1)
        fg_snapshot_free(s);
}

/* The epoch callback: the grace period after a swap has passed, so no
 * read section still sees s as current: drop that reference. */
static void fg_snapshot_retired(ck_epoch_entry_t *entry) {
    struct fg_snapshot *s = (struct fg_snapshot *)entry; /* entry is the first member */
    FG_TSAN_ACQUIRE(&s->rt->epoch);
    fg_snapshot_unref(s);
}

/* ---- the runtime ------------------------------------------------------------------ */

int fg_runtime_new(fg_runtime **out) {
    if (out == NULL)
        return FG_EINVAL;
    *out = NULL;
    struct fg_runtime *rt = fg__calloc(1, sizeof(*rt));
    if (rt == NULL)
        return FG_ENOMEM;
    if (pthread_mutex_init(&rt->lock, NULL) != 0) {
        fg__free(rt);
        return FG_ENOMEM;
    }
    if (pthread_mutex_init(&rt->load_lock, NULL) != 0) {
        pthread_mutex_destroy(&rt->lock);
        fg__free(rt);
        return FG_ENOMEM;
    }
    ck_epoch_init(&rt->epoch);
    rt->clock = fg_clock_monotonic();
    rt->writer = fg__aligned_calloc(sizeof(*rt->writer), 64);
    if (rt->writer == NULL || fg_metrics_new(&rt->clock, &rt->metrics) != 0) {
        fg__aligned_free(rt->writer);
        pthread_mutex_destroy(&rt->load_lock);
        pthread_mutex_destroy(&rt->lock);
        fg__free(rt);
        return FG_ENOMEM;
    }
    ck_epoch_register(&rt->epoch, &rt->writer->rec, NULL);
    pthread_mutex_lock(&fg_live_lock);
    rt->id = fg_next_id++;
    rt->next_live = fg_live;
    fg_live = rt;
    pthread_mutex_unlock(&fg_live_lock);
    *out = rt;
    return 0;
}

int fg_runtime_swap(fg_runtime *rt, fg_chain *chain, const char *version) {
    int rc = fg__runtime_swap_with(rt, chain, version, NULL, NULL);
    if (rt != NULL)
        (void)fg_metrics_reload(rt->metrics, rc == 0,
                                rc == 0 ? (version ? version : "") : NULL);
    return rc;
}

int fg__runtime_swap_with(fg_runtime *rt, fg_chain *chain, const char *version,
                          void (*release)(void *), void *release_arg) {
    int rc = rt == NULL || chain == NULL ? FG_EINVAL : 0;
    const char *v = version ? version : "";
    size_t vlen = strnlen(v, FG_VERSION_MAX + 1);
    if (rc == 0 && vlen > FG_VERSION_MAX)
        rc = FG_ETOOLONG;
    struct fg_snapshot *s = rc == 0 ? fg__calloc(1, sizeof(*s)) : NULL;
    char *copy = rc == 0 ? fg__strndup(v, vlen) : NULL;
    if (rc == 0 && (s == NULL || copy == NULL))
        rc = FG_ENOMEM;
    if (rc != 0) {
        fg__free(s);
        fg__free(copy);
        fg_chain_free(chain);
        if (release != NULL)
            release(release_arg);
        return rc;
    }
    s->release = release;
    s->release_arg = release_arg;
    s->chain = chain;
    s->version = copy;
    s->refs = 1; /* current */
    s->rt = rt;
    pthread_mutex_lock(&rt->lock);
    /* Release: a reader that loads the new pointer sees the chain built. */
    struct fg_snapshot *old = __atomic_exchange_n(&rt->current, s, __ATOMIC_ACQ_REL);
    fg__faa_u64(&rt->generation, 1);
    if (old != NULL)
        ck_epoch_call(&rt->writer->rec, &old->entry, fg_snapshot_retired);
    /* Reclaim what earlier swaps retired, if their grace periods are over;
     * never wait for readers here. */
    (void)ck_epoch_poll(&rt->writer->rec);
    pthread_mutex_unlock(&rt->lock);
    return 0;
}

static struct fg_snapshot *fg_rt_current(struct fg_runtime *rt) {
    return __atomic_load_n(&rt->current, __ATOMIC_ACQUIRE);
}

int fg_runtime_call(fg_runtime *rt, fg_ctx *ctx, fg_handler_fn handler, void *arg) {
    if (rt == NULL || ctx == NULL)
        return FG_EINVAL;
    ck_epoch_record_t *rec = fg_rt_record(rt);
    if (rec == NULL)
        return FG_ENOMEM;
    ck_epoch_begin(rec, NULL);
    struct fg_snapshot *s = fg_rt_current(rt);
    int rc = s ? fg_chain_call(s->chain, ctx, handler, arg) : FG_ESTATE;
    /* A reload during the call may free s soon after the section ends:
     * keep the names the ctx points at (fg_ctx_route). */
    if (s != NULL && fg_rt_current(rt) != s)
        fg__ctx_keep_names(ctx);
    FG_TSAN_RELEASE(&rt->epoch);
    ck_epoch_end(rec, NULL);
    return rc;
}

int fg_runtime_enter(fg_runtime *rt, fg_ctx *ctx) {
    if (rt == NULL || ctx == NULL)
        return FG_EINVAL;
    ck_epoch_record_t *rec = fg_rt_record(rt);
    if (rec == NULL)
        return FG_ENOMEM;
    /* Inside the section the snapshot cannot be retired-and-freed, so the
     * reference taken here is on a live object; after it, the reference
     * keeps it alive until exit. */
    ck_epoch_begin(rec, NULL);
    struct fg_snapshot *s = fg_rt_current(rt);
    if (s != NULL)
        fg__faa_u32(&s->refs, 1);
    FG_TSAN_RELEASE(&rt->epoch);
    ck_epoch_end(rec, NULL);
    if (s == NULL)
        return FG_ESTATE;
    int rc = fg_chain_enter(s->chain, ctx);
    if (rc == 0) {
        ctx->priv.snapshot = s;
    } else {
        /* Rejected (finished) or refused: no exit follows, and the names
         * must outlive the reference (fg_ctx_route). */
        fg__ctx_keep_names(ctx);
        fg_snapshot_unref(s);
    }
    return rc;
}

int fg_runtime_exit(fg_runtime *rt, fg_ctx *ctx, int status) {
    if (rt == NULL || ctx == NULL)
        return FG_EINVAL;
    struct fg_snapshot *s = ctx->priv.snapshot;
    if (s == NULL || s->rt != rt)
        return FG_ESTATE;
    int rc = fg_chain_exit(s->chain, ctx, status);
    if (rc == 0) {
        fg__ctx_keep_names(ctx);
        ctx->priv.snapshot = NULL;
        fg_snapshot_unref(s);
    }
    return rc;
}

uint64_t fg_runtime_generation(const fg_runtime *rt) {
    return rt ? fg__load_u64(&((fg_runtime *)rt)->generation) : 0;
}

int fg_runtime_version(fg_runtime *rt, char *buf, size_t cap) {
    if (rt == NULL || buf == NULL || cap == 0)
        return FG_EINVAL;
    ck_epoch_record_t *rec = fg_rt_record(rt);
    if (rec == NULL)
        return FG_ENOMEM;
    ck_epoch_begin(rec, NULL);
    struct fg_snapshot *s = fg_rt_current(rt);
    int rc = FG_ESTATE;
    buf[0] = '\0';
    if (s != NULL) {
        size_t n = strlen(s->version);
        if (n > cap - 1)
            n = cap - 1;
        memcpy(buf, s->version, n);
        buf[n] = '\0';
        rc = 0;
    }
    FG_TSAN_RELEASE(&rt->epoch);
    ck_epoch_end(rec, NULL);
    return rc;
}

void fg_runtime_free(fg_runtime *rt) {
    if (rt == NULL)
        return;
    pthread_mutex_lock(&fg_live_lock);
    for (struct fg_runtime **p = &fg_live; *p != NULL; p = &(*p)->next_live)
        if (*p == rt) {
            *p = rt->next_live;
            break;
        }
    pthread_mutex_unlock(&fg_live_lock);
    /* No request is in flight (the contract), so the barrier only runs the
     * pending retirements. */
    ck_epoch_barrier(&rt->writer->rec);
    FG_TSAN_ACQUIRE(&rt->epoch);
    if (rt->current != NULL)
        fg_snapshot_unref(rt->current);
    /* This thread's cache may name rt; forget it (other threads' entries
     * carry rt's id, which no later runtime reuses). */
    for (int i = 0; i < FG_RT_CACHE; i++)
        if (fg_rt_cache[i].id == rt->id)
            fg_rt_cache[i] = (struct fg_rt_slot){0, NULL};
    while (rt->records != NULL) {
        struct fg_rt_record *next = rt->records->next;
        fg__aligned_free(rt->records);
        rt->records = next;
    }
    fg__aligned_free(rt->writer);
    if (rt->config_state_free != NULL)
        rt->config_state_free(rt->config_state);
    fg_metrics_free(rt->metrics); /* after every snapshot: their stages used it */
    pthread_mutex_destroy(&rt->load_lock);
    pthread_mutex_destroy(&rt->lock);
    fg__free(rt);
}

pthread_mutex_t *fg__runtime_load_lock(fg_runtime *rt) { return &rt->load_lock; }

void *fg__runtime_config_state(fg_runtime *rt) { return rt->config_state; }

void fg__runtime_set_config_state(fg_runtime *rt, void *state, void (*free_fn)(void *)) {
    rt->config_state = state;
    rt->config_state_free = free_fn;
}

fg_clock fg__runtime_clock(fg_runtime *rt) { return rt->clock; }

int fg_runtime_set_clock(fg_runtime *rt, fg_clock clock) {
    if (rt == NULL || clock.now == NULL)
        return FG_EINVAL;
    pthread_mutex_lock(&rt->load_lock);
    int rc = rt->config_state != NULL || fg_rt_current(rt) != NULL ? FG_ESTATE : 0;
    if (rc == 0) {
        rt->clock = clock;
        fg__metrics_set_clock(rt->metrics, clock);
    }
    pthread_mutex_unlock(&rt->load_lock);
    return rc;
}

fg_metrics *fg_runtime_metrics(fg_runtime *rt) { return rt != NULL ? rt->metrics : NULL; }

fg_runtime_breaker_fn fg__runtime_breaker_listener(fg_runtime *rt, void **arg) {
    *arg = rt->breaker_arg;
    return rt->breaker_fn;
}

int fg_runtime_set_breaker_listener(fg_runtime *rt, fg_runtime_breaker_fn fn, void *arg) {
    if (rt == NULL)
        return FG_EINVAL;
    pthread_mutex_lock(&rt->load_lock);
    int rc = rt->config_state != NULL ? FG_ESTATE : 0;
    if (rc == 0) {
        rt->breaker_fn = fn;
        rt->breaker_arg = arg;
    }
    pthread_mutex_unlock(&rt->load_lock);
    return rc;
}

fg_cluster_listener fg__runtime_cluster_listener(fg_runtime *rt, void **arg) {
    *arg = rt->cluster_arg;
    return rt->cluster_fn;
}

int fg_runtime_set_cluster_listener(fg_runtime *rt, fg_cluster_listener fn, void *arg) {
    if (rt == NULL)
        return FG_EINVAL;
    pthread_mutex_lock(&rt->load_lock);
    int rc = rt->config_state != NULL ? FG_ESTATE : 0;
    if (rc == 0) {
        rt->cluster_fn = fn;
        rt->cluster_arg = arg;
    }
    pthread_mutex_unlock(&rt->load_lock);
    return rc;
}
