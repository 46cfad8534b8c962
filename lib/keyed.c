/*
 * lib/keyed.c - one token bucket per key, in a fixed-size sharded table.
 *
 * The table is split into a power-of-two number of shards (about a thousand
 * keys each, at least 16 shards for mid-sized tables), each an
 * open-addressing (linear probing) array behind its own spinlock. A key's
 * SipHash picks the shard (top bits), the home slot (middle bits) and a
 * 32-bit tag (low bits). Tags live in their own dense array, sixteen to a
 * cache line, so a probe touches one tag line and then the one entry whose
 * tag matches: two cache misses for a cold key, not one per probed slot.
 * The lock is held for the probe and the GCRA decision only.
 *
 * Memory is allocated once, at creation: requests never allocate. The table
 * holds at most max_keys keys (a global count, changed only when a key takes
 * an empty slot or leaves one). Each shard also has a hard cap of its share
 * plus four standard deviations of hashing imbalance, and slots for that cap
 * at a load factor of 4/5.
 *
 * When the table is full, a new key replaces a key whose bucket has refilled
 * to full (a full bucket is the same as a fresh one, so nothing is lost):
 * first one on its own probe run, whose slot it takes; otherwise one found
 * by a rotating hand that looks at up to FG_IDLE_SCAN slots of the shard,
 * which is deleted (backward-shift deletion keeps every probe run whole,
 * so no tombstones) to make room. Only when neither finds an idle key does
 * the when_full policy decide. The scan is bounded so that a flood of new
 * keys against a table full of active ones costs each request a fixed,
 * small amount of work.
 */
#include <pthread.h>
#include <string.h>

#include "floodgate/error.h"
#include "floodgate/limiter.h"

#include "alloc.h"
#include "atomic.h"
#include "gcra.h"
#include "limiter_internal.h"
#include "siphash.h"

/* An entry: [tat : 8][len : 1][key : key_max], padded to 8 bytes. */
#define FG_ENTRY_HEADER 9

/* Slots the rotating hand examines per new key when the table is full. */
#define FG_IDLE_SCAN 64

/* One shard. The first cache line holds everything a try reads; the
 * counters, written only in rare cases, sit on the second. */
struct fg_kshard {
    uint32_t lock;
    uint32_t live;
    uint64_t last_seen; /* latest reading seen in this shard: no time runs backwards */
    uint32_t *tags;     /* 0: never used; live tags have the low bit set */
    unsigned char *entries;
    uint64_t interval; /* the bucket settings, copied per shard so that a */
    uint64_t tau;      /* setting change converts one shard at a time */
    uint64_t burst;
    uint64_t max_wait;
    uint64_t evictions;
    uint64_t full_rejected;
    uint64_t full_admitted;
    uint32_t hand; /* where the idle scan resumes */
    char pad[64 - 3 * sizeof(uint64_t) - sizeof(uint32_t)];
};

struct fg_keyed_limiter {
    uint64_t live; /* keys held, all shards: at most max_keys */
    char pad_live[64 - sizeof(uint64_t)];
    uint64_t k0, k1; /* SipHash key, random per table */
    uint64_t max_keys;
    uint32_t shard_bits;
    uint32_t nshards;
    uint32_t slots;     /* per shard */
    uint32_t shard_cap; /* keys per shard, at most */
    uint32_t key_max;
    uint32_t stride; /* bytes per entry */
    fg_keyed_when_full when_full;
    struct fg_kshard *shards; /* cache-line aligned */
    uint32_t *tags;
    unsigned char *entries;
    size_t bytes;
    fg_clock clock;         /* anchors setting changes; the tries' clock */
    pthread_mutex_t writer; /* serialises set_rate / set_burst */
    struct fg_lparams p;    /* current settings, under writer */
};

static void fg_kshard_lock(struct fg_kshard *s) {
    /* Test-and-test-and-set: wait on a plain load so waiting threads do not
     * bounce the line with failed CASes; the CAS is a full barrier, so the
     * critical section cannot start before the lock is ours. */
    unsigned spins = 0;
    while (!fg__cas_u32(&s->lock, 0, 1)) {
        while (fg__load_u32(&s->lock) != 0) {
            if (++spins % 256 == 0)
                fg__yield(); /* the holder may have been preempted */
            else
                fg__pause();
        }
    }
}

static void fg_kshard_unlock(struct fg_kshard *s) {
    fg__store_u32(&s->lock, 0); /* release: the section's writes precede it */
}

static unsigned char *fg_entry(const fg_keyed_limiter *k, const struct fg_kshard *s,
                               uint32_t i) {
    return s->entries + (size_t)i * k->stride;
}

static uint64_t fg_entry_tat(const unsigned char *e) {
    uint64_t v;
    memcpy(&v, e, sizeof(v));
    return v;
}

static void fg_entry_set_tat(unsigned char *e, uint64_t tat) { memcpy(e, &tat, sizeof(tat)); }

static void fg_entry_fill(unsigned char *e, const char *key, size_t len) {
    fg_entry_set_tat(e, 0); /* TAT 0: full at any time */
    e[8] = (unsigned char)len;
    if (len)
        memcpy(e + FG_ENTRY_HEADER, key, len);
}

static int fg_entry_is(const unsigned char *e, const char *key, size_t len) {
    return e[8] == len && (len == 0 || memcmp(e + FG_ENTRY_HEADER, key, len) == 0);
}

static uint32_t fg_isqrt(uint32_t n) {
    uint32_t r = 0;
    while ((uint64_t)(r + 1) * (r + 1) <= n)
        r++;
    return r;
}

int fg_keyed_limiter_new(const fg_keyed_limiter_options *opts, fg_keyed_limiter **out) {
    if (opts == NULL || out == NULL || opts->max_keys == 0 || opts->bucket.warmup_ns != 0)
        return FG_EINVAL;
    if (opts->key_max > FG_KEYED_KEY_MAX_LIMIT ||
        (opts->when_full != FG_KEYED_REJECT_NEW && opts->when_full != FG_KEYED_ADMIT_NEW))
        return FG_EINVAL;
    if (opts->max_keys > FG_KEYED_MAX_KEYS)
        return FG_ERANGE;
    struct fg_lparams p;
    int rc = fg__lparams_from_options(&opts->bucket, &p);
    if (rc != 0)
        return rc;
    fg_keyed_limiter *k = fg__aligned_calloc(sizeof(*k), 64);
    if (k == NULL)
        return FG_ENOMEM;
    uint64_t seed[2];
    if (fg__os_random(seed, sizeof(seed)) != 0) {
        fg__aligned_free(k);
        return FG_ESYS;
    }
    k->k0 = seed[0];
    k->k1 = seed[1];
    k->max_keys = opts->max_keys;
    k->key_max = opts->key_max ? opts->key_max : FG_KEYED_KEY_MAX_DEFAULT;
    k->stride = (FG_ENTRY_HEADER + k->key_max + 7) / 8 * 8;
    k->when_full = opts->when_full;
    k->clock = opts->bucket.clock.now ? opts->bucket.clock : fg_clock_monotonic();
    k->p = p;
    /* About 1024 keys per shard keeps the imbalance between shards small
     * (4 sigma is 12% of the share); at least 16 shards when there are 32+
     * keys each, so that threads rarely meet on a lock. */
    uint32_t bits = 0;
    while (bits < 12 && (opts->max_keys >> (bits + 1)) >= 1024)
        bits++;
    while (bits < 4 && (opts->max_keys >> (bits + 1)) >= 32)
        bits++;
    k->shard_bits = bits;
    k->nshards = UINT32_C(1) << bits;
    uint32_t share = (opts->max_keys + k->nshards - 1) / k->nshards;
    uint32_t cap = share + 4 * (fg_isqrt(share) + 1) + 4;
    k->shard_cap = cap;
    k->slots = cap + cap / 4 + 1; /* load factor <= 4/5 at the cap */
    size_t nslots = (size_t)k->nshards * k->slots;
    k->shards = fg__aligned_calloc((size_t)k->nshards * sizeof(*k->shards), 64);
    k->tags = fg__slab_calloc(nslots * sizeof(*k->tags));
    k->entries = fg__slab_calloc(nslots * k->stride);
    if (k->shards == NULL || k->tags == NULL || k->entries == NULL ||
        pthread_mutex_init(&k->writer, NULL) != 0) {
        fg__aligned_free(k->shards);
        fg__aligned_free(k->tags);
        fg__aligned_free(k->entries);
        fg__aligned_free(k);
        return FG_ENOMEM;
    }
    for (uint32_t i = 0; i < k->nshards; i++) {
        struct fg_kshard *s = &k->shards[i];
        s->tags = k->tags + (size_t)i * k->slots;
        s->entries = k->entries + (size_t)i * k->slots * k->stride;
        s->interval = p.interval;
        s->tau = p.tau;
        s->burst = p.burst;
        s->max_wait = p.max_wait;
    }
    k->bytes = sizeof(*k) + (size_t)k->nshards * sizeof(*k->shards) +
               nslots * (sizeof(*k->tags) + k->stride);
    *out = k;
    return 0;
}

void fg_keyed_limiter_free(fg_keyed_limiter *k) {
    if (k == NULL)
        return;
    pthread_mutex_destroy(&k->writer);
    fg__aligned_free(k->shards);
    fg__aligned_free(k->tags);
    fg__aligned_free(k->entries);
    fg__aligned_free(k);
}

static struct fg_kshard *fg_shard_for(const fg_keyed_limiter *k, uint64_t h) {
    return k->shard_bits ? &k->shards[h >> (64 - k->shard_bits)] : &k->shards[0];
}

/* A key's tag: 32 middle bits of its hash, low bit set (0 marks a slot
 * never used). The home slot is derived from the tag alone, so that
 * deletion can find any entry's home without hashing its key again. */
static uint32_t fg_tag(uint64_t h) { return (uint32_t)(h >> 16) | 1u; }

static uint32_t fg_home(const fg_keyed_limiter *k, uint32_t tag) {
    return (uint32_t)(((uint64_t)tag * k->slots) >> 32);
}

/* Search key's probe run, reading only tags until one matches. Returns the
 * key's entry, or NULL with *empty the never-used slot that ends the run.
 * Called with the shard locked. */
static unsigned char *fg_probe(const fg_keyed_limiter *k, const struct fg_kshard *s,
                               uint64_t h, const char *key, size_t len, uint32_t *empty) {
    uint32_t tag = fg_tag(h);
    uint32_t i = fg_home(k, tag);
    *empty = UINT32_MAX;
    /* The shard is never full (cap < slots), so an empty slot ends the run. */
    for (uint32_t n = 0; n < k->slots; n++) {
        uint32_t st = s->tags[i];
        if (st == 0) {
            *empty = i;
            return NULL;
        }
        if (st == tag) {
            unsigned char *e = fg_entry(k, s, i);
            if (fg_entry_is(e, key, len))
                return e;
        }
        if (++i == k->slots)
            i = 0;
    }
    return NULL;
}

/* The first slot on key's probe run (home .. end) whose bucket is full at t,
 * or UINT32_MAX: its key may be replaced at no cost. */
static uint32_t fg_find_idle_on_run(const fg_keyed_limiter *k, const struct fg_kshard *s,
                                    uint32_t tag, uint32_t end, uint64_t t) {
    for (uint32_t i = fg_home(k, tag); i != end;) {
        if (fg_entry_tat(fg_entry(k, s, i)) <= t)
            return i;
        if (++i == k->slots)
            i = 0;
    }
    return UINT32_MAX;
}

/* Whether slot x lies cyclically in (lo, hi]. */
static int fg_between(uint32_t lo, uint32_t x, uint32_t hi) {
    return lo <= hi ? (lo < x && x <= hi) : (lo < x || x <= hi);
}

/* Delete slot i's key (Knuth's algorithm R): walk the rest of its cluster
 * and move back every entry whose home does not lie between the hole and
 * itself, so that every remaining key stays reachable from its home. */
static void fg_delete(const fg_keyed_limiter *k, struct fg_kshard *s, uint32_t i) {
    uint32_t j = i;
    for (;;) {
        if (++j == k->slots)
            j = 0;
        if (s->tags[j] == 0)
            break;
        if (!fg_between(i, fg_home(k, s->tags[j]), j)) {
            s->tags[i] = s->tags[j];
            memcpy(fg_entry(k, s, i), fg_entry(k, s, j), k->stride);
            i = j;
        }
    }
    s->tags[i] = 0;
    s->live--;
}

/* Make room in a full table: delete one idle key found by the shard's
 * rotating hand within FG_IDLE_SCAN slots. Returns 1 if it did. */
static int fg_evict_by_hand(const fg_keyed_limiter *k, struct fg_kshard *s, uint64_t t) {
    uint32_t i = s->hand;
    for (uint32_t n = 0; n < FG_IDLE_SCAN && n < k->slots; n++) {
        uint32_t at = i;
        if (++i == k->slots)
            i = 0;
        if (s->tags[at] != 0 && fg_entry_tat(fg_entry(k, s, at)) <= t) {
            fg_delete(k, s, at);
            s->hand = i;
            return 1;
        }
    }
    s->hand = i;
    return 0;
}

static unsigned char *fg_claim(const fg_keyed_limiter *k, struct fg_kshard *s, uint32_t slot,
                               uint32_t tag, const char *key, size_t len) {
    s->tags[slot] = tag;
    unsigned char *e = fg_entry(k, s, slot);
    fg_entry_fill(e, key, len);
    return e;
}

/* Find key's entry or make one; NULL when the table has no room for it. */
static unsigned char *fg_find_or_claim(fg_keyed_limiter *k, struct fg_kshard *s, uint64_t h,
                                       const char *key, size_t len, uint64_t t) {
    uint32_t empty;
    unsigned char *e = fg_probe(k, s, h, key, len, &empty);
    if (e != NULL)
        return e;
    uint32_t tag = fg_tag(h);
    if (s->live < k->shard_cap) {
        /* The global count is the table's bound; it changes only here and in
         * nowhere else but a deletion followed by a claim (net zero). */
        if (fg__faa_u64(&k->live, 1) < k->max_keys) {
            s->live++;
            return fg_claim(k, s, empty, tag, key, len);
        }
        fg__faa_u64(&k->live, UINT64_MAX); /* undo: the table is full */
    }
    /* Full: first an idle key on this key's own run gives up its slot. */
    uint32_t idle = fg_find_idle_on_run(k, s, tag, empty, t);
    if (idle != UINT32_MAX) {
        s->evictions++;
        return fg_claim(k, s, idle, tag, key, len);
    }
    /* Then one found by the hand is deleted, and the key probes again for
     * its (possibly moved) empty slot. */
    if (fg_evict_by_hand(k, s, t)) {
        s->evictions++;
        s->live++;
        (void)fg_probe(k, s, h, key, len, &empty);
        return fg_claim(k, s, empty, tag, key, len);
    }
    return NULL;
}

int fg_keyed_limiter_try(fg_keyed_limiter *k, const char *key, size_t key_len, uint64_t now_ns,
                         uint64_t n, uint64_t max_wait_ns, uint64_t *wait_ns) {
    if (wait_ns)
        *wait_ns = 0;
    if (k == NULL || n == 0 || (key == NULL && key_len != 0))
        return FG_EINVAL;
    if (key_len > k->key_max)
        return FG_ETOOLONG;
    uint64_t h = fg__siphash13(k->k0, k->k1, key, key_len);
    struct fg_kshard *s = fg_shard_for(k, h);
    /* Start loading the home tag and entry while the lock is taken: for a
     * cold key in a large table these are the two cache misses, and the
     * home slot holds the key most of the time. */
    size_t first = (size_t)(s - k->shards) * k->slots + fg_home(k, fg_tag(h));
    __builtin_prefetch(&k->tags[first]);
    __builtin_prefetch(k->entries + first * k->stride);
    uint64_t now = fg__time_clamp(now_ns);
    int rc;
    uint64_t wait = 0;
    fg_kshard_lock(s);
    /* No time runs backwards within a shard: an earlier reading counts as
     * no time elapsed. */
    uint64_t t = now > s->last_seen ? now : s->last_seen;
    s->last_seen = t;
    if (n > s->burst) {
        rc = FG_ERANGE;
    } else {
        unsigned char *e = fg_find_or_claim(k, s, h, key, key_len, t);
        if (e == NULL) {
            if (k->when_full == FG_KEYED_ADMIT_NEW) {
                s->full_admitted++;
                rc = 0;
            } else {
                s->full_rejected++;
                wait = s->interval; /* a slot may free up by then: a hint, no promise */
                rc = FG_ELIMITED;
            }
        } else {
            uint64_t bound = s->max_wait < max_wait_ns ? s->max_wait : max_wait_ns;
            uint64_t new_tat;
            if (fg__gcra_decide(fg_entry_tat(e), t, n * s->interval, s->tau, bound, &new_tat,
                                &wait)) {
                fg_entry_set_tat(e, new_tat);
                rc = 0;
            } else {
                rc = FG_ELIMITED;
            }
        }
    }
    fg_kshard_unlock(s);
    if (wait_ns)
        *wait_ns = wait;
    return rc;
}

uint64_t fg_keyed_limiter_tokens(fg_keyed_limiter *k, const char *key, size_t key_len,
                                 uint64_t now_ns) {
    if (k == NULL || (key == NULL && key_len != 0) || key_len > k->key_max)
        return 0;
    uint64_t h = fg__siphash13(k->k0, k->k1, key, key_len);
    struct fg_kshard *s = fg_shard_for(k, h);
    uint64_t now = fg__time_clamp(now_ns);
    fg_kshard_lock(s);
    uint64_t t = now > s->last_seen ? now : s->last_seen;
    uint32_t empty;
    const unsigned char *e = fg_probe(k, s, h, key, key_len, &empty);
    uint64_t tokens = e ? fg__gcra_tokens(fg_entry_tat(e), t, s->interval, s->tau) : s->burst;
    fg_kshard_unlock(s);
    return tokens;
}

/* Apply new settings shard by shard, converting every live bucket at the
 * shard's current time so that each keeps its tokens. */
static int fg_keyed_update(fg_keyed_limiter *k, uint64_t rate, uint64_t period, uint64_t burst,
                           uint64_t now_ns) {
    uint64_t now = fg__time_clamp(now_ns);
    if (pthread_mutex_lock(&k->writer) != 0)
        return FG_ESYS;
    struct fg_lparams np;
    int rc = fg__lparams_change(&k->p, rate, period, burst, &np);
    if (rc == 0) {
        for (uint32_t i = 0; i < k->nshards; i++) {
            struct fg_kshard *s = &k->shards[i];
            fg_kshard_lock(s);
            uint64_t at = now > s->last_seen ? now : s->last_seen;
            s->last_seen = at;
            for (uint32_t j = 0; j < k->slots; j++) {
                if (s->tags[j] == 0)
                    continue;
                unsigned char *e = fg_entry(k, s, j);
                fg_entry_set_tat(e, fg__gcra_convert(fg_entry_tat(e), at, s->interval,
                                                     s->burst, np.interval, np.burst));
            }
            s->interval = np.interval;
            s->tau = np.tau;
            s->burst = np.burst;
            s->max_wait = np.max_wait;
            fg_kshard_unlock(s);
        }
        k->p = np;
    }
    pthread_mutex_unlock(&k->writer);
    return rc;
}

int fg_keyed_limiter_set_rate(fg_keyed_limiter *k, uint64_t rate, uint64_t period_ns) {
    if (k == NULL || rate == 0)
        return FG_EINVAL;
    return fg_keyed_update(k, rate, period_ns, 0, fg_clock_read(&k->clock));
}

int fg_keyed_limiter_set_burst(fg_keyed_limiter *k, uint64_t burst) {
    if (k == NULL || burst == 0)
        return FG_EINVAL;
    return fg_keyed_update(k, 0, 0, burst, fg_clock_read(&k->clock));
}

int fg_keyed_limiter_stats(fg_keyed_limiter *k, fg_keyed_stats *st) {
    if (k == NULL || st == NULL)
        return FG_EINVAL;
    memset(st, 0, sizeof(*st));
    for (uint32_t i = 0; i < k->nshards; i++) {
        struct fg_kshard *s = &k->shards[i];
        fg_kshard_lock(s);
        st->keys += s->live;
        st->evictions += s->evictions;
        st->full_rejected += s->full_rejected;
        st->full_admitted += s->full_admitted;
        fg_kshard_unlock(s);
    }
    st->capacity = k->max_keys;
    st->bytes = k->bytes;
    return 0;
}

uint64_t fg__keyed_burst(fg_keyed_limiter *k) {
    if (pthread_mutex_lock(&k->writer) != 0)
        return 0;
    uint64_t burst = k->p.burst;
    pthread_mutex_unlock(&k->writer);
    return burst;
}
