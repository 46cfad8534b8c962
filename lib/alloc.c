/*
 * lib/alloc.c - the replaceable allocator (fg_set_alloc_funcs).
 *
 * The hook is two plain pointers, read without synchronisation: the contract
 * is that they are set before any other thread uses floodgate.
 */
#define _DEFAULT_SOURCE /* madvise's MADV_HUGEPAGE */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "floodgate/alloc.h"
#include "floodgate/error.h"

#include "alloc.h"

static fg_malloc_fn fg_malloc_hook = malloc;
static fg_free_fn fg_free_hook = free;

int fg_set_alloc_funcs(fg_malloc_fn malloc_fn, fg_free_fn free_fn) {
    if ((malloc_fn == NULL) != (free_fn == NULL))
        return FG_EINVAL;
    fg_malloc_hook = malloc_fn ? malloc_fn : malloc;
    fg_free_hook = free_fn ? free_fn : free;
    return 0;
}

void fg_get_alloc_funcs(fg_malloc_fn *malloc_fn, fg_free_fn *free_fn) {
    if (malloc_fn)
        *malloc_fn = fg_malloc_hook;
    if (free_fn)
        *free_fn = fg_free_hook;
}

void *fg__malloc(size_t size) { return fg_malloc_hook(size ? size : 1); }

void *fg__calloc(size_t n, size_t size) {
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    void *p = fg__malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

void fg__free(void *ptr) {
    if (ptr)
        fg_free_hook(ptr);
}

char *fg__strndup(const char *s, size_t len) {
    if (len == SIZE_MAX)
        return NULL;
    char *copy = fg__malloc(len + 1);
    if (copy) {
        memcpy(copy, s, len);
        copy[len] = '\0';
    }
    return copy;
}

/* Over-allocate, align inside the block, and keep the block's own address in
 * the word just below the aligned pointer, where fg__aligned_free finds it. */
#define FG_HUGE_PAGE ((size_t)2 << 20)

void *fg__aligned_calloc(size_t size, size_t align) {
    if (align < sizeof(void *) || (align & (align - 1)) != 0 || align > FG_HUGE_PAGE ||
        size > SIZE_MAX - align - sizeof(void *))
        return NULL;
    unsigned char *raw = fg__malloc(size + align + sizeof(void *));
    if (raw == NULL)
        return NULL;
    /* Step forward from the first byte that leaves room for the back
     * pointer to the next multiple of align (pointer arithmetic, no int to
     * pointer cast). */
    unsigned char *aligned = raw + sizeof(void *);
    aligned += (align - ((uintptr_t)aligned & (align - 1))) & (align - 1);
    memcpy(aligned - sizeof(void *), &raw, sizeof(raw));
#ifdef MADV_HUGEPAGE
    /* Large tables read at random (a keyed limiter's) miss the TLB on
     * almost every lookup with 4 KiB pages. Ask for transparent huge pages
     * before the memset faults the pages in; a kernel that says no changes
     * nothing. */
    if (align == FG_HUGE_PAGE)
        (void)madvise(aligned, size & ~(FG_HUGE_PAGE - 1), MADV_HUGEPAGE);
#endif
    memset(aligned, 0, size);
    return aligned;
}

void *fg__slab_calloc(size_t size) {
    return fg__aligned_calloc(size, size >= FG_HUGE_PAGE ? FG_HUGE_PAGE : 64);
}

void fg__aligned_free(void *ptr) {
    if (ptr == NULL)
        return;
    void *raw;
    memcpy(&raw, (unsigned char *)ptr - sizeof(void *), sizeof(raw));
    fg__free(raw);
}
