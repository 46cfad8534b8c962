/*
 * tests/check_helpers.c - the state behind tests/helpers.h's counting
 * allocator. It defines no suite (it is linked into check_floodgate only
 * because its name matches tests/check_*.c).
 */
#include <stdlib.h>

#include "helpers.h"

th_alloc_state th_alloc;

void *th_count_malloc(size_t size) {
    long attempt = __atomic_add_fetch(&th_alloc.attempts, 1, __ATOMIC_RELAXED);
    long fail_at = __atomic_load_n(&th_alloc.fail_at, __ATOMIC_RELAXED);
    void *p;

    if (__atomic_load_n(&th_alloc.fail_all, __ATOMIC_RELAXED) ||
        (fail_at != 0 && attempt == fail_at)) {
        th_alloc.injected = 1;
        return NULL;
    }
    p = malloc(size);
    if (p != NULL) {
        __atomic_add_fetch(&th_alloc.allocs, 1, __ATOMIC_RELAXED);
    }
    return p;
}

void th_count_free(void *p) {
    if (p != NULL) {
        __atomic_add_fetch(&th_alloc.frees, 1, __ATOMIC_RELAXED);
    }
    free(p);
}

void th_alloc_reset(void) {
    th_alloc.attempts = 0;
    th_alloc.allocs = 0;
    th_alloc.frees = 0;
    th_alloc.fail_at = 0;
    th_alloc.fail_all = 0;
    th_alloc.injected = 0;
}
