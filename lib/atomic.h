/*
 * lib/atomic.h - the atomic operations floodgate uses, in one place.
 *
 * Normally these are Concurrency Kit's ck_pr operations. ck_pr on x86_64 is
 * inline assembly, which ThreadSanitizer cannot see: it would report every
 * ck_pr load racing with a ck_pr CAS. So in a TSAN=1 build (FG_TSAN defined)
 * the same operations map to the compiler's __atomic builtins with the same
 * ordering, which ThreadSanitizer understands. Nothing else differs.
 *
 * Ordering: loads are acquire, stores are release, read-modify-writes are
 * full barriers (sequentially consistent), matching ck_pr on x86_64 (TSO).
 */
#ifndef FG_LIB_ATOMIC_H
#define FG_LIB_ATOMIC_H

#include <stdbool.h>
#include <stdint.h>

#ifdef FG_TSAN

static inline uint64_t fg__load_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void fg__store_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline uint32_t fg__load_u32(const uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void fg__store_u32(uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline uint64_t fg__faa_u64(uint64_t *p, uint64_t d) {
    return __atomic_fetch_add(p, d, __ATOMIC_SEQ_CST);
}
static inline uint32_t fg__faa_u32(uint32_t *p, uint32_t d) {
    return __atomic_fetch_add(p, d, __ATOMIC_SEQ_CST);
}
/* On failure *expected is NOT updated (ck_pr_cas semantics). */
static inline bool fg__cas_u64(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
static inline bool fg__cas_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
static inline uint8_t fg__xchg_u8(uint8_t *p, uint8_t v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
static inline uint64_t fg__xchg_u64(uint64_t *p, uint64_t v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
static inline uint8_t fg__load_u8(const uint8_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
/* Every read-modify-write above is sequentially consistent, so the fence
 * that follows one adds nothing here; ThreadSanitizer does not model
 * stand-alone fences (GCC rejects them under -fsanitize=thread). */
static inline void fg__fence_acquire(void) {}
static inline void fg__pause(void) {}

#else

#include <ck_pr.h>

static inline uint64_t fg__load_u64(const uint64_t *p) {
    uint64_t v = ck_pr_load_64(p);
    ck_pr_fence_load(); /* acquire: later loads may not move above this one */
    return v;
}
static inline void fg__store_u64(uint64_t *p, uint64_t v) {
    ck_pr_fence_store(); /* release: earlier stores may not move below this one */
    ck_pr_store_64(p, v);
}
static inline uint32_t fg__load_u32(const uint32_t *p) {
    uint32_t v = ck_pr_load_32(p);
    ck_pr_fence_load();
    return v;
}
static inline void fg__store_u32(uint32_t *p, uint32_t v) {
    ck_pr_fence_store();
    ck_pr_store_32(p, v);
}
/* lock xadd is a full barrier on x86; elsewhere ck_pr_faa is fully ordered. */
static inline uint64_t fg__faa_u64(uint64_t *p, uint64_t d) { return ck_pr_faa_64(p, d); }
static inline uint32_t fg__faa_u32(uint32_t *p, uint32_t d) { return ck_pr_faa_32(p, d); }
static inline bool fg__cas_u64(uint64_t *p, uint64_t expected, uint64_t desired) {
    return ck_pr_cas_64(p, expected, desired);
}
static inline bool fg__cas_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return ck_pr_cas_32(p, expected, desired);
}
/* xchg with a memory operand is implicitly locked: a full barrier. */
static inline uint8_t fg__xchg_u8(uint8_t *p, uint8_t v) { return ck_pr_fas_8(p, v); }
static inline uint64_t fg__xchg_u64(uint64_t *p, uint64_t v) { return ck_pr_fas_64(p, v); }
static inline uint8_t fg__load_u8(const uint8_t *p) {
    uint8_t v = ck_pr_load_8(p);
    ck_pr_fence_load();
    return v;
}
static inline void fg__fence_acquire(void) { ck_pr_fence_acquire(); }
/* A spin-wait hint (x86 PAUSE): lets the sibling hyper-thread run. */
static inline void fg__pause(void) { ck_pr_stall(); }

#endif

#include <sched.h>

/* Give the CPU away while spinning on a lock whose holder may have been
 * preempted (2 cores: spinning for a whole time slice would waste it). */
static inline void fg__yield(void) { (void)sched_yield(); }

#endif /* FG_LIB_ATOMIC_H */
