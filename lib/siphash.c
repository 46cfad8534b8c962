/*
 * lib/siphash.c - SipHash-1-3 (one compression round per word, three
 * finalisation rounds), written from the algorithm's description, and the
 * OS random source used to key it.
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "siphash.h"

#define FG_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define FG_SIPROUND                                                                           \
    do {                                                                                      \
        v0 += v1;                                                                             \
        v1 = FG_ROTL(v1, 13);                                                                 \
        v1 ^= v0;                                                                             \
        v0 = FG_ROTL(v0, 32);                                                                 \
        v2 += v3;                                                                             \
        v3 = FG_ROTL(v3, 16);                                                                 \
        v3 ^= v2;                                                                             \
        v0 += v3;                                                                             \
        v3 = FG_ROTL(v3, 21);                                                                 \
        v3 ^= v0;                                                                             \
        v2 += v1;                                                                             \
        v1 = FG_ROTL(v1, 17);                                                                 \
        v1 ^= v2;                                                                             \
        v2 = FG_ROTL(v2, 32);                                                                 \
    } while (0)

/* Little-endian load of 8 bytes, whatever the host order. */
static uint64_t fg_load_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

uint64_t fg__siphash13(uint64_t k0, uint64_t k1, const void *data, size_t len) {
    const unsigned char *in = data;
    uint64_t v0 = k0 ^ UINT64_C(0x736f6d6570736575);
    uint64_t v1 = k1 ^ UINT64_C(0x646f72616e646f6d);
    uint64_t v2 = k0 ^ UINT64_C(0x6c7967656e657261);
    uint64_t v3 = k1 ^ UINT64_C(0x7465646279746573);
    size_t whole = len & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = fg_load_le64(in + i);
        v3 ^= m;
        FG_SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++)
        last |= (uint64_t)in[whole + i] << (8 * i);
    v3 ^= last;
    FG_SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    FG_SIPROUND;
    FG_SIPROUND;
    FG_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

int fg__os_random(void *buf, size_t len) {
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t got = getrandom(p, len, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += got;
        len -= (size_t)got;
    }
    return 0;
}
