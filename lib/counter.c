/*
 * lib/counter.c - fg_counter: a monotonic counter sharded per thread.
 *
 * One shared word costs every thread a cache-line transfer per add once two
 * of them count at the same rate. Here the counter is FG_COUNTER_SHARDS
 * words, each alone on its cache line; a thread adds only to "its" shard,
 * chosen once per thread (not per counter) round-robin, so two threads
 * counting at once share a line only when more than FG_COUNTER_SHARDS
 * threads have counted. A read sums the shards.
 */
#include <stdint.h>

#include "floodgate/error.h"
#include "floodgate/histogram.h"

#include "alloc.h"
#include "atomic.h"

#define FG_COUNTER_SHARDS 16 /* a power of two: see fg_counter_shard */
#define FG_CACHE_LINE     64

struct fg_counter_shard {
    uint64_t value; /* atomic; only ever incremented (modulo 2^64) */
    unsigned char pad[FG_CACHE_LINE - sizeof(uint64_t)];
};

struct fg_counter {
    struct fg_counter_shard shard[FG_COUNTER_SHARDS];
};

_Static_assert(sizeof(struct fg_counter_shard) == FG_CACHE_LINE, "one shard per cache line");

/* The calling thread's shard number plus one (0: not chosen yet), and the
 * next number to hand out. initial-exec: a direct %fs-relative access on
 * the add path, as in lib/trace.c (the library is linked at start-up, not
 * dlopen'ed late). */
static _Thread_local __attribute__((tls_model("initial-exec"))) unsigned fg_counter_slot;
static uint32_t fg_counter_next; /* atomic */

static unsigned fg_counter_shard(void) {
    unsigned s = fg_counter_slot;
    if (s == 0) {
        /* The fetch-add only has to hand out numbers that spread threads;
         * it guards nothing else. Wrapping at 2^32 keeps the round-robin,
         * since FG_COUNTER_SHARDS divides 2^32. */
        s = (fg__faa_u32(&fg_counter_next, 1) & (FG_COUNTER_SHARDS - 1)) + 1;
        fg_counter_slot = s;
    }
    return s - 1;
}

int fg_counter_new(fg_counter **out) {
    if (out == NULL)
        return FG_EINVAL;
    *out = fg__aligned_calloc(sizeof(fg_counter), FG_CACHE_LINE);
    return *out ? 0 : FG_ENOMEM;
}

void fg_counter_free(fg_counter *c) { fg__aligned_free(c); }

void fg_counter_add(fg_counter *c, uint64_t n) {
    if (c == NULL)
        return;
    /* Atomic because two threads may share a shard (more threads than
     * shards); the full barrier that comes with it on x86 is not needed
     * for counting, but a plain locked add costs the same. */
    (void)fg__faa_u64(&c->shard[fg_counter_shard()].value, n);
}

/*
 * Each shard only grows, and coherence orders the successive values of one
 * word: a later load of a shard never returns an older value than an
 * earlier load did. A read that follows another (program order or
 * happens-before) loads each shard after the first read loaded it, so each
 * term, and the sum, is at least what the first read saw.
 */
uint64_t fg_counter_read(const fg_counter *c) {
    if (c == NULL)
        return 0;
    uint64_t total = 0;
    for (int i = 0; i < FG_COUNTER_SHARDS; i++)
        total += fg__load_u64(&c->shard[i].value);
    return total;
}
