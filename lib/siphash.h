/*
 * lib/siphash.h - SipHash-1-3, a keyed hash for tables whose keys come from
 * the network: with a secret random key per table, an attacker cannot craft
 * keys that all land in one bucket (hash flooding).
 */
#ifndef FG_LIB_SIPHASH_H
#define FG_LIB_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

uint64_t fg__siphash13(uint64_t k0, uint64_t k1, const void *data, size_t len);

/* Fill buf with len bytes from the OS's random source. Returns 0 or -1. */
int fg__os_random(void *buf, size_t len);

#endif /* FG_LIB_SIPHASH_H */
