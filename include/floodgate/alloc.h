/*
 * floodgate/alloc.h - the allocator floodgate uses for everything it owns.
 *
 * floodgate allocates only when objects are built (chains, stages, clocks,
 * compiled configs); a steady-state request allocates nothing. A program may
 * route those allocations through its own allocator, and tests use the same
 * hook to fail the Nth allocation and walk every out-of-memory path.
 */
#ifndef FLOODGATE_ALLOC_H
#define FLOODGATE_ALLOC_H

#include <stddef.h>

#include "common.h"

FG_BEGIN_DECLS

/* malloc-compatible: returns suitably aligned memory or NULL. */
typedef void *(*fg_malloc_fn)(size_t size);
/* free-compatible: accepts NULL. */
typedef void (*fg_free_fn)(void *ptr);

/*
 * fg_set_alloc_funcs - replace the allocator. Pass both functions, or both
 * NULL to restore malloc/free.
 *
 * Returns: 0, or FG_EINVAL when exactly one of the two is NULL (nothing is
 * changed then).
 * Ownership: the functions must stay valid while any floodgate object exists.
 * Thread-safety: not thread-safe. Call it before creating any floodgate
 * object, and never while another thread uses floodgate: memory allocated by
 * one allocator must be freed by the same one.
 */
FG_API int fg_set_alloc_funcs(fg_malloc_fn malloc_fn, fg_free_fn free_fn);

/*
 * fg_get_alloc_funcs - store the allocator in force in *malloc_fn and
 * *free_fn. Pass NULL for either output you do not want.
 *
 * Thread-safety: MT-safe as long as nobody calls fg_set_alloc_funcs.
 */
FG_API void fg_get_alloc_funcs(fg_malloc_fn *malloc_fn, fg_free_fn *free_fn);

FG_END_DECLS

#endif /* FLOODGATE_ALLOC_H */
