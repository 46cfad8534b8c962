/*
 * lib/alloc.h - internal allocation helpers. Every allocation floodgate makes
 * goes through fg__malloc / fg__free so fg_set_alloc_funcs sees all of them.
 */
#ifndef FG_LIB_ALLOC_H
#define FG_LIB_ALLOC_H

#include <stddef.h>

void *fg__malloc(size_t size);
void *fg__calloc(size_t n, size_t size);
void fg__free(void *ptr);
/* Memory aligned to `align` (a power of two, at most 2 MiB) through the
 * hook, for structures laid out on cache lines; free with fg__aligned_free. */
void *fg__aligned_calloc(size_t size, size_t align);
void fg__aligned_free(void *ptr);
/* A large zeroed table: cache-line aligned, and for 2 MiB or more aligned to
 * 2 MiB and backed by transparent huge pages where the kernel allows.
 * Free with fg__aligned_free. */
void *fg__slab_calloc(size_t size);
/* A NUL-terminated copy of the first len bytes of s, or NULL. */
char *fg__strndup(const char *s, size_t len);

#endif /* FG_LIB_ALLOC_H */
