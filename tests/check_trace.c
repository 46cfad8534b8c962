/*
 * tests/check_trace.c - W3C Trace Context: traceparent parsing and
 * formatting, trace and span ids, and sampling decisions (floodgate/trace.h).
 *
 * The parser is driven by a table of {input, length, expected code, expected
 * fields} covering every rule of the W3C Trace Context recommendation (Level
 * 1, plus Level 2's random flag) that trace.h adopts: lowercase hex only,
 * exact separators, version ff invalid, version 00 exactly 55 characters, a
 * higher version at least 55 characters and continuing with '-', all-zero ids
 * invalid, HTTP optional whitespace (spaces and tabs) skipped. Every input is
 * copied into a heap buffer of exactly its length, so AddressSanitizer
 * (make check SANITIZE=1) catches a parser that reads past `len`. After
 * FG_EPARSE the output must be all zero.
 *
 * Then: lengths up to FG_TRACEPARENT_MAX and beyond (and a 10,000-byte
 * buffer), parse/format round trips and format's bounds; ids that are never
 * zero, distinct, uniform in every byte and bit, also from two threads at
 * once; and the sampler: ALWAYS_ON/OFF, RATIO's exact threshold on the
 * trace-id's rightmost 7 bytes, its share, consistency and monotonicity over
 * a million ids, PARENT_BASED, and argument checks.
 *
 * Tests marked "LIB DISAGREES" say what the header promises and what a
 * version of lib/trace.c did instead.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <math.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

/* ---- helpers ------------------------------------------------------------------------- */

#define TID  "4bf92f3577b34da6a3ce929d0e0e4736"
#define PID  "00f067aa0ba902b7"
#define IDS  TID "-" PID
#define ZTID "00000000000000000000000000000000"
#define ZPID "0000000000000000"

/* Parse s[0 .. len) from an exact heap buffer; on FG_EPARSE *out must be all zero. */
static int parse_exact(const char *s, size_t len, fg_traceparent *out) {
    char *buf = th_exact_copy(s, len);
    memset(out, 0xA5, sizeof(*out));
    int rc = fg_traceparent_parse(buf, len, out);
    free(buf);
    if (rc == FG_EPARSE) {
        ck_assert_msg(th_is_zero(out, sizeof(*out)), "*out not zeroed after FG_EPARSE");
    }
    return rc;
}

/* ---- the error code ------------------------------------------------------------------ */

START_TEST(test_eparse_code) {
    ck_assert_int_eq(FG_EPARSE, -11);
    ck_assert_str_eq(fg_strerror(FG_EPARSE), "malformed input");
    ck_assert_str_eq(fg_err_name(FG_EPARSE), "FG_EPARSE");
    ck_assert_int_eq(fg_err_is_outcome(FG_EPARSE), 0);
    ck_assert_int_eq(FG_TRACEPARENT_LEN, 55);
    ck_assert_int_eq(FG_TRACE_FLAG_SAMPLED, 0x01);
    ck_assert_int_eq(FG_TRACE_FLAG_RANDOM, 0x02);
    ck_assert_uint_eq(sizeof(fg_traceparent), 26);
}
END_TEST

/* ---- the parse table ----------------------------------------------------------------- */

typedef struct tp_case {
    const char *in;
    size_t len; /* 0: strlen(in) */
    int rc;
    uint8_t version;
    const char *trace; /* expected ids, lowercase hex (valid cases only) */
    const char *parent;
    uint8_t flags;
} tp_case;

#define OK(in, v, fl)                                                                         \
    { in, 0, 0, v, TID, PID, fl }
#define OKN(in, n, v, fl)                                                                     \
    { in, n, 0, v, TID, PID, fl }
#define OKID(in, v, t, p, fl)                                                                 \
    { in, 0, 0, v, t, p, fl }
#define BAD(in)                                                                               \
    { in, 0, FG_EPARSE, 0, NULL, NULL, 0 }
#define BADN(in, n)                                                                           \
    { in, n, FG_EPARSE, 0, NULL, NULL, 0 }

static const tp_case parse_cases[] = {
    /* valid version 00: every flag byte is kept as given */
    OK("00-" IDS "-01", 0x00, 0x01),
    OK("00-" IDS "-00", 0x00, 0x00),
    OK("00-" IDS "-02", 0x00, 0x02),
    OK("00-" IDS "-03", 0x00, 0x03),
    OK("00-" IDS "-09", 0x00, 0x09),
    OK("00-" IDS "-80", 0x00, 0x80),
    OK("00-" IDS "-ff", 0x00, 0xff),
    OK("00-" IDS "-a5", 0x00, 0xa5),
    OKID("00-0123456789abcdef0123456789abcdef-fedcba9876543210-01", 0x00,
         "0123456789abcdef0123456789abcdef", "fedcba9876543210", 0x01),
    OKID("00-00000000000000000000000000000001-0000000000000001-00", 0x00,
         "00000000000000000000000000000001", "0000000000000001", 0x00),
    OKID("00-80000000000000000000000000000000-8000000000000000-01", 0x00,
         "80000000000000000000000000000000", "8000000000000000", 0x01),
    OKID("00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-ff", 0x00,
         "ffffffffffffffffffffffffffffffff", "ffffffffffffffff", 0xff),
    /* optional whitespace: spaces and tabs, either side */
    OK(" 00-" IDS "-01", 0x00, 0x01),
    OK("00-" IDS "-01 ", 0x00, 0x01),
    OK("\t00-" IDS "-01", 0x00, 0x01),
    OK("00-" IDS "-01\t", 0x00, 0x01),
    OK(" \t \t00-" IDS "-01\t \t ", 0x00, 0x01),
    OK("   cc-" IDS "-01-extra\t\t", 0xcc, 0x01),
    /* the length is the caller's: nothing past it counts */
    OKN("00-" IDS "-01-extra", 55, 0x00, 0x01),
    OKN("00-" IDS "-01garbage", 55, 0x00, 0x01),
    OKN("00-" IDS "-01 ", 55, 0x00, 0x01),
    /* higher versions: parsed as 00, may be longer, continue with '-' */
    OK("01-" IDS "-01", 0x01, 0x01),
    OK("02-" IDS "-00", 0x02, 0x00),
    OK("cc-" IDS "-01", 0xcc, 0x01),
    OK("fe-" IDS "-03", 0xfe, 0x03),
    OK("cc-" IDS "-01-extra", 0xcc, 0x01),
    OK("cc-" IDS "-01-", 0xcc, 0x01),
    OK("cc-" IDS "-09-what-the-future-will-be-like", 0xcc, 0x09),
    OK("01-" IDS "-ff-XYZ not hex, not checked", 0x01, 0xff),
    OK("cc-" IDS "-01-" IDS, 0xcc, 0x01),

    /* empty, whitespace only, too short */
    BAD(""),
    BAD(" "),
    BAD("\t \t"),
    BAD("00"),
    BAD("00-"),
    BAD("00-" TID),
    BAD("00-" IDS),
    BAD("00-" IDS "-"),
    /* version 00 is exactly 55 characters */
    BAD("00-" IDS "-0"),
    BAD("00-" IDS "-01-"),
    BAD("00-" IDS "-010"),
    BAD("00-" IDS "-01x"),
    BAD("00-" IDS "-01-extra"),
    BAD("00-" IDS "-01 x"),
    BAD("00-" IDS "-01" IDS),
    BADN("00-" IDS "-01", 54),
    BAD("00-" TID "0-" PID "-01"),
    BAD("00-" TID "-" PID "0-01"),
    BAD("000-" IDS "-01"),
    BAD("0-" IDS "-01"),
    /* uppercase hex anywhere */
    BAD("00-4BF92F3577B34DA6A3CE929D0E0E4736-" PID "-01"),
    BAD("00-4bf92f3577b34da6a3ce929d0e0e473A-" PID "-01"),
    BAD("00-" TID "-00F067AA0BA902B7-01"),
    BAD("00-" TID "-00f067aa0ba902bF-01"),
    BAD("00-" IDS "-0A"),
    BAD("00-" IDS "-F1"),
    BAD("0A-" IDS "-01"),
    BAD("CC-" IDS "-01"),
    BAD("FF-" IDS "-01"),
    BAD("cc-4BF92F3577B34DA6A3CE929D0E0E4736-" PID "-01-extra"),
    /* characters that are not hex */
    BAD("00-4bf92f3577b34da6a3ce929d0e0e473g-" PID "-01"),
    BAD("00-4bf92f35 7b34da6a3ce929d0e0e4736-" PID "-01"),
    BAD("00-4bf92f35+7b34da6a3ce929d0e0e4736-" PID "-01"),
    BAD("00-4bf92f35x7b34da6a3ce929d0e0e4736-" PID "-01"),
    BAD("00-4bf92f35:7b34da6a3ce929d0e0e4736-" PID "-01"),
    BAD("00-4bf92f35"
        "\xc4"
        "7b34da6a3ce929d0e0e4736-" PID "-01"),
    BAD("00-4bf92f35"
        "\xff"
        "7b34da6a3ce929d0e0e4736-" PID "-01"),
    BAD("00-" TID "-00f067aa0ba902bz-01"),
    BAD("00-" TID "-00f067aa-ba902b7-01"),
    BAD("00-" IDS "-0g"),
    BAD("00-" IDS "-g0"),
    BAD("00-" IDS "- 1"),
    BAD("00-" IDS "-1 "),
    BAD("0g-" IDS "-01"),
    BAD("x0-" IDS "-01"),
    BAD("-0-" IDS "-01"),
    BAD(" 0-" IDS "-01"),
    /* wrong separators */
    BAD("00_" IDS "-01"),
    BAD("00-" TID "_" PID "-01"),
    BAD("00-" IDS "_01"),
    BAD("00 " IDS "-01"),
    BAD("00-" TID " " PID "-01"),
    BAD("00-" IDS " 01"),
    BAD("00:" TID ":" PID ":01"),
    BAD("004"
        "bf92f3577b34da6a3ce929d0e0e4736-" PID "-01"),
    BAD("00-4bf92f3577b34da6a3ce929d0e0e473-6" PID "-01"),
    BAD("00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01"),
    BAD("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-701"),
    BAD("00--" TID "-" PID "-1"),
    /* version ff is invalid, however long */
    BAD("ff-" IDS "-01"),
    BAD("ff-" IDS "-00"),
    BAD("ff-" IDS "-01-extra"),
    BAD("ff-" IDS "-01-"),
    /* higher versions: at least 55 characters, then '-' */
    BAD("cc-" IDS "-0"),
    BAD("cc-" IDS "-"),
    BAD("cc-" IDS),
    BAD("cc"),
    BAD("cc-" IDS "-01extra"),
    BAD("cc-" IDS "-011"),
    BAD("cc-" IDS "-01 extra"),
    BAD("cc-" IDS "-01_extra"),
    BAD("01-" IDS "-01x"),
    BAD("cc-" IDS "-0g-extra"),
    BAD("cc-" TID "-" PID "0-01"),
    /* all-zero ids */
    BAD("00-" ZTID "-" PID "-01"),
    BAD("00-" TID "-" ZPID "-01"),
    BAD("00-" ZTID "-" ZPID "-00"),
    BAD("cc-" ZTID "-" PID "-01-extra"),
    BAD("cc-" TID "-" ZPID "-01"),
    BAD(" 00-" ZTID "-" PID "-01 "),
    /* whitespace other than spaces and tabs, and whitespace inside */
    BAD("\n00-" IDS "-01"),
    BAD("00-" IDS "-01\n"),
    BAD("00-" IDS "-01\r\n"),
    BAD("\r00-" IDS "-01"),
    BAD("\v00-" IDS "-01"),
    BAD("\f00-" IDS "-01"),
    BAD("00-" IDS "-01 \t x"),
    BAD("0 0-" IDS "-01"),
    /* embedded NUL bytes */
    BADN("00-4bf92f35\0"
         "7b34da6a3ce929d0e0e4736-" PID "-01",
         55),
    BADN("\0"
         "0-" IDS "-01",
         55),
    BADN("00-" IDS "-0\0", 55),
    BADN("00-" IDS "-01\0", 56),
    BADN("\0"
         "00-" IDS "-01",
         56),
    BADN("cc-" IDS "-01\0", 56),
    BADN("cc-" IDS "-01\0-extra", 62),
    BADN("00-" IDS "-01 \0", 57),
};

#define NPARSE TH_NELEM(parse_cases)

START_TEST(test_parse_table) {
    const tp_case *c = &parse_cases[_i];
    size_t len = c->len != 0 ? c->len : strlen(c->in);
    fg_traceparent tp;
    int rc = parse_exact(c->in, len, &tp);

    ck_assert_msg(rc == c->rc, "case %d \"%.*s\" (len %zu): %s, want %s", _i, (int)len, c->in,
                  len, fg_err_name(rc), fg_err_name(c->rc));
    if (c->rc == 0) {
        uint8_t tid[16], pid[8];
        th_unhex(c->trace, tid, sizeof(tid));
        th_unhex(c->parent, pid, sizeof(pid));
        ck_assert_msg(tp.version == c->version, "case %d: version 0x%02x, want 0x%02x", _i,
                      (unsigned)tp.version, (unsigned)c->version);
        ck_assert_msg(memcmp(tp.trace_id, tid, 16) == 0, "case %d: trace_id differs", _i);
        ck_assert_msg(memcmp(tp.parent_id, pid, 8) == 0, "case %d: parent_id differs", _i);
        ck_assert_msg(tp.flags == c->flags, "case %d: flags 0x%02x, want 0x%02x", _i,
                      (unsigned)tp.flags, (unsigned)c->flags);
    }
}
END_TEST

/* Every one-character substitution in a valid value: only lowercase hex in a hex
 * position (keeping ids nonzero, version not ff) stays valid. */
START_TEST(test_parse_every_substitution) {
    static const char base[] = "00-" IDS "-01";
    char s[sizeof(base)];

    for (size_t pos = 0; pos < FG_TRACEPARENT_LEN; pos++) {
        for (int ch = 0; ch < 256; ch++) {
            fg_traceparent tp;
            int dash = pos == 2 || pos == 35 || pos == 52;
            int hex = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f');
            int want_ok;

            memcpy(s, base, sizeof(base));
            s[pos] = (char)ch;
            if (dash) {
                want_ok = ch == '-';
            } else if (pos < 2) {
                /* the version: any lowercase hex but ff; a non-00 version of exactly 55
                 * characters is valid too */
                want_ok = hex && !(s[0] == 'f' && s[1] == 'f');
            } else {
                want_ok = hex; /* ids stay nonzero: TID and PID have other nonzero digits */
            }
            int rc = parse_exact(s, FG_TRACEPARENT_LEN, &tp);
            TH_FAST_ASSERT(rc == (want_ok ? 0 : FG_EPARSE), "byte 0x%02x at %zu: %s, want %s",
                           (unsigned)ch, pos, fg_err_name(rc),
                           fg_err_name(want_ok ? 0 : FG_EPARSE));
            if (want_ok) {
                uint8_t want_tid[16], want_pid[8];
                unsigned want_version = (unsigned)(th_hexval(s[0]) << 4 | th_hexval(s[1]));
                for (int i = 0; i < 16; i++) {
                    want_tid[i] =
                        (uint8_t)(th_hexval(s[3 + 2 * i]) << 4 | th_hexval(s[4 + 2 * i]));
                }
                for (int i = 0; i < 8; i++) {
                    want_pid[i] =
                        (uint8_t)(th_hexval(s[36 + 2 * i]) << 4 | th_hexval(s[37 + 2 * i]));
                }
                TH_FAST_ASSERT(tp.version == want_version, "version");
                TH_FAST_ASSERT(memcmp(tp.trace_id, want_tid, 16) == 0, "trace_id");
                TH_FAST_ASSERT(memcmp(tp.parent_id, want_pid, 8) == 0, "parent_id");
                TH_FAST_ASSERT(
                    tp.flags == (unsigned)(th_hexval(s[53]) << 4 | th_hexval(s[54])), "flags");
            }
        }
    }
}
END_TEST

/* ---- arguments, lengths, long buffers -------------------------------------------------- */

START_TEST(test_parse_args) {
    static const char valid[] = "00-" IDS "-01";
    fg_traceparent tp;

    /* NULL with length 0 is the empty value: malformed, *out zeroed */
    memset(&tp, 0xA5, sizeof(tp));
    ck_assert_int_eq(fg_traceparent_parse(NULL, 0, &tp), FG_EPARSE);
    ck_assert(th_is_zero(&tp, sizeof(tp)));

    /* NULL with a length is a caller error */
    ck_assert_int_eq(fg_traceparent_parse(NULL, 1, &tp), FG_EINVAL);
    ck_assert_int_eq(fg_traceparent_parse(NULL, FG_TRACEPARENT_LEN, &tp), FG_EINVAL);
    ck_assert_int_eq(fg_traceparent_parse(NULL, SIZE_MAX, &tp), FG_EINVAL);

    /* NULL out */
    ck_assert_int_eq(fg_traceparent_parse(valid, FG_TRACEPARENT_LEN, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_traceparent_parse("x", 1, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_traceparent_parse(NULL, 0, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_traceparent_parse(NULL, 5, NULL), FG_EINVAL);

    /* the same buffer parses the same way twice (no hidden state) */
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(parse_exact(valid, FG_TRACEPARENT_LEN, &tp), 0);
        ck_assert_uint_eq(tp.flags, 1);
    }
}
END_TEST

/* Version 00 followed by n more bytes of anything is never valid. */
START_TEST(test_parse_v00_longer) {
    static const char prefix[] = "00-" IDS "-01";
    static const char fill[] = "-a0 \t-";
    size_t max = FG_TRACEPARENT_MAX + 16;
    char *s = malloc(max);

    ck_assert_ptr_nonnull(s);
    for (size_t len = FG_TRACEPARENT_LEN + 1; len <= max; len++) {
        fg_traceparent tp;
        memcpy(s, prefix, FG_TRACEPARENT_LEN);
        for (size_t i = FG_TRACEPARENT_LEN; i < len; i++) {
            s[i] = fill[i % (sizeof(fill) - 1)];
        }
        s[FG_TRACEPARENT_LEN] = '-';
        int rc = parse_exact(s, len, &tp);
        ck_assert_msg(rc == FG_EPARSE, "version 00 of length %zu: %s", len, fg_err_name(rc));
    }
    free(s);
}
END_TEST

/* A higher version: every length 55 .. FG_TRACEPARENT_MAX is valid, longer is not. */
START_TEST(test_parse_future_lengths) {
    static const char prefix[] = "cc-" IDS "-01-";
    size_t max = FG_TRACEPARENT_MAX + 64;
    char *s = malloc(max);

    ck_assert_ptr_nonnull(s);
    memcpy(s, prefix, sizeof(prefix) - 1);
    for (size_t i = sizeof(prefix) - 1; i < max; i++) {
        s[i] = "abc-=;,x"[i % 8];
    }
    for (size_t len = FG_TRACEPARENT_LEN; len <= max; len++) {
        fg_traceparent tp;
        int want = len <= FG_TRACEPARENT_MAX ? 0 : FG_EPARSE;
        int rc = parse_exact(s, len, &tp);
        ck_assert_msg(rc == want, "version cc of length %zu: %s, want %s", len,
                      fg_err_name(rc), fg_err_name(want));
        if (rc == 0) {
            ck_assert_uint_eq(tp.version, 0xcc);
            ck_assert_uint_eq(tp.flags, 0x01);
        }
    }
    free(s);
}
END_TEST

/*
 * 10,000-byte buffers (exactly that long, so ASan catches an overrun): a
 * valid prefix then garbage. Version 00 breaks the length rule, a higher
 * version breaks FG_TRACEPARENT_MAX; both must come back FG_EPARSE.
 */
START_TEST(test_parse_huge_buffer) {
    static const char *const prefixes[] = {"00-" IDS "-01", "00-" IDS "-01-", "cc-" IDS "-01-",
                                           "01-" IDS "-01-", " cc-" IDS "-01-"};
    const size_t len = 10000;
    uint64_t seed = UINT64_C(0x243F6A8885A308D3);

    for (int p = 0; p < TH_NELEM(prefixes); p++) {
        for (int garbage = 0; garbage < 3; garbage++) {
            char *s = malloc(len);
            fg_traceparent tp;
            size_t pl = strlen(prefixes[p]);

            ck_assert_ptr_nonnull(s);
            memcpy(s, prefixes[p], pl);
            for (size_t i = pl; i < len; i++) {
                switch (garbage) {
                case 0:
                    s[i] = 'a';
                    break;
                case 1:
                    s[i] = (char)(th_rng_next(&seed) >> 56);
                    break;
                default:
                    s[i] = (char)0xff;
                    break;
                }
            }
            memset(&tp, 0xA5, sizeof(tp));
            int rc = fg_traceparent_parse(s, len, &tp);
            ck_assert_msg(rc == FG_EPARSE, "prefix %d garbage %d: %s", p, garbage,
                          fg_err_name(rc));
            ck_assert(th_is_zero(&tp, sizeof(tp)));
            free(s);
        }
    }
}
END_TEST

/* ---- format and round trips ---------------------------------------------------------- */

static fg_traceparent tp_of(const char *tid, const char *pid, uint8_t version, uint8_t flags) {
    fg_traceparent tp;
    memset(&tp, 0, sizeof(tp));
    tp.version = version;
    th_unhex(tid, tp.trace_id, 16);
    th_unhex(pid, tp.parent_id, 8);
    tp.flags = flags;
    return tp;
}

START_TEST(test_format_basic) {
    fg_traceparent tp = tp_of(TID, PID, 0, 0x01);
    char buf[FG_TRACEPARENT_LEN + 1];

    memset(buf, 'Z', sizeof(buf));
    ck_assert_int_eq(fg_traceparent_format(&tp, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "00-" IDS "-01");
    ck_assert_uint_eq(strlen(buf), FG_TRACEPARENT_LEN);

    /* a larger buffer: the same 55 characters and a NUL */
    char big[128];
    memset(big, 'Z', sizeof(big));
    ck_assert_int_eq(fg_traceparent_format(&tp, big, sizeof(big)), 0);
    ck_assert_str_eq(big, "00-" IDS "-01");

    /* whatever the version says, 00 is written; the flags as given */
    tp.version = 0xcc;
    tp.flags = 0xff;
    ck_assert_int_eq(fg_traceparent_format(&tp, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "00-" IDS "-ff");
    tp.version = 0xff;
    tp.flags = 0x00;
    ck_assert_int_eq(fg_traceparent_format(&tp, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "00-" IDS "-00");

    /* lowercase hex, every nibble */
    fg_traceparent all =
        tp_of("0123456789abcdef0123456789abcdef", "fedcba9876543210", 0, 0xab);
    ck_assert_int_eq(fg_traceparent_format(&all, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "00-0123456789abcdef0123456789abcdef-fedcba9876543210-ab");

    /* the smallest nonzero ids */
    fg_traceparent one = tp_of("00000000000000000000000000000001", "0000000000000001", 0, 0);
    ck_assert_int_eq(fg_traceparent_format(&one, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "00-00000000000000000000000000000001-0000000000000001-00");
}
END_TEST

START_TEST(test_format_every_flag) {
    fg_traceparent tp = tp_of(TID, PID, 0, 0);
    char buf[FG_TRACEPARENT_LEN + 1], want[FG_TRACEPARENT_LEN + 1];

    for (int f = 0; f < 256; f++) {
        fg_traceparent back;
        tp.flags = (uint8_t)f;
        snprintf(want, sizeof(want), "00-%s-%s-%02x", TID, PID, (unsigned)f);
        ck_assert_int_eq(fg_traceparent_format(&tp, buf, sizeof(buf)), 0);
        ck_assert_str_eq(buf, want);
        ck_assert_int_eq(parse_exact(buf, strlen(buf), &back), 0);
        ck_assert_uint_eq(back.flags, (unsigned)f);
        ck_assert_uint_eq(back.version, 0);
    }
}
END_TEST

START_TEST(test_format_bounds) {
    fg_traceparent tp = tp_of(TID, PID, 0, 0x01);
    char buf[FG_TRACEPARENT_LEN + 8];

    /* exactly 56 bytes is enough, in a heap buffer of that size */
    char *exact = malloc(FG_TRACEPARENT_LEN + 1);
    ck_assert_ptr_nonnull(exact);
    ck_assert_int_eq(fg_traceparent_format(&tp, exact, FG_TRACEPARENT_LEN + 1), 0);
    ck_assert_str_eq(exact, "00-" IDS "-01");
    free(exact);

    /* any less: FG_ETOOLONG and not a byte written */
    static const size_t caps[] = {FG_TRACEPARENT_LEN, FG_TRACEPARENT_LEN - 1, 54, 32, 1, 0};
    for (int i = 0; i < TH_NELEM(caps); i++) {
        memset(buf, 'Z', sizeof(buf));
        ck_assert_int_eq(fg_traceparent_format(&tp, buf, caps[i]), FG_ETOOLONG);
        for (size_t j = 0; j < sizeof(buf); j++) {
            ck_assert_msg(buf[j] == 'Z', "cap %zu: byte %zu written", caps[i], j);
        }
    }
}
END_TEST

START_TEST(test_format_invalid) {
    fg_traceparent tp = tp_of(TID, PID, 0, 0x01);
    char buf[64];

    ck_assert_int_eq(fg_traceparent_format(NULL, buf, sizeof(buf)), FG_EINVAL);
    ck_assert_int_eq(fg_traceparent_format(&tp, NULL, sizeof(buf)), FG_EINVAL);
    ck_assert_int_eq(fg_traceparent_format(NULL, NULL, sizeof(buf)), FG_EINVAL);

    fg_traceparent zt = tp_of(ZTID, PID, 0, 0x01);
    ck_assert_int_eq(fg_traceparent_format(&zt, buf, sizeof(buf)), FG_EINVAL);
    fg_traceparent zp = tp_of(TID, ZPID, 0, 0x01);
    ck_assert_int_eq(fg_traceparent_format(&zp, buf, sizeof(buf)), FG_EINVAL);
    fg_traceparent zz = tp_of(ZTID, ZPID, 0, 0x00);
    ck_assert_int_eq(fg_traceparent_format(&zz, buf, sizeof(buf)), FG_EINVAL);
}
END_TEST

/* parse(format(x)) == x and format(parse(s)) == s for every valid version-00 row. */
START_TEST(test_round_trip_table) {
    char buf[FG_TRACEPARENT_LEN + 1];
    int n = 0;

    for (int i = 0; i < NPARSE; i++) {
        const tp_case *c = &parse_cases[i];
        size_t len = c->len != 0 ? c->len : strlen(c->in);
        fg_traceparent tp, back;

        if (c->rc != 0) {
            continue;
        }
        ck_assert_int_eq(parse_exact(c->in, len, &tp), 0);
        ck_assert_int_eq(fg_traceparent_format(&tp, buf, sizeof(buf)), 0);
        /* the canonical form: the first 55 non-blank characters, version 00 */
        const char *start = c->in;
        while (*start == ' ' || *start == '\t') {
            start++;
        }
        ck_assert_msg(memcmp(buf, "00", 2) == 0 && memcmp(buf + 2, start + 2, 53) == 0,
                      "case %d: formatted \"%s\"", i, buf);
        ck_assert_uint_eq(strlen(buf), FG_TRACEPARENT_LEN);
        ck_assert_int_eq(parse_exact(buf, strlen(buf), &back), 0);
        ck_assert_uint_eq(back.version, 0);
        ck_assert(memcmp(back.trace_id, tp.trace_id, 16) == 0);
        ck_assert(memcmp(back.parent_id, tp.parent_id, 8) == 0);
        ck_assert_uint_eq(back.flags, tp.flags);
        n++;
    }
    ck_assert_int_ge(n, 20);
}
END_TEST

START_TEST(test_round_trip_random) {
    char buf[FG_TRACEPARENT_LEN + 1];

    for (int i = 0; i < 10000; i++) {
        fg_traceparent tp, back;
        memset(&tp, 0, sizeof(tp));
        fg_trace_id_new(tp.trace_id);
        fg_span_id_new(tp.parent_id);
        tp.flags = (uint8_t)i;
        TH_FAST_ASSERT(fg_traceparent_format(&tp, buf, sizeof(buf)) == 0, "format");
        for (int j = 0; j < FG_TRACEPARENT_LEN; j++) {
            char ch = buf[j];
            int ok = (j == 2 || j == 35 || j == 52)
                         ? ch == '-'
                         : ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'));
            TH_FAST_ASSERT(ok, "\"%s\": byte %d", buf, j);
        }
        TH_FAST_ASSERT(parse_exact(buf, FG_TRACEPARENT_LEN, &back) == 0, "parse \"%s\"", buf);
        TH_FAST_ASSERT(memcmp(&back, &tp, sizeof(tp)) == 0, "round trip of \"%s\"", buf);
    }
}
END_TEST

/* ---- ids ----------------------------------------------------------------------------- */

#define NIDS 100000

static int cmp16(const void *a, const void *b) { return memcmp(a, b, 16); }
static int cmp8(const void *a, const void *b) { return memcmp(a, b, 8); }

START_TEST(test_trace_ids_distinct) {
    uint8_t(*ids)[16] = malloc(sizeof(*ids) * NIDS);

    ck_assert_ptr_nonnull(ids);
    for (int i = 0; i < NIDS; i++) {
        fg_trace_id_new(ids[i]);
        TH_FAST_ASSERT(!th_is_zero(ids[i], 16), "trace id %d is all zero", i);
    }
    qsort(ids, NIDS, sizeof(*ids), cmp16);
    for (int i = 1; i < NIDS; i++) {
        TH_FAST_ASSERT(memcmp(ids[i - 1], ids[i], 16) != 0, "duplicate trace id");
    }
    free(ids);
}
END_TEST

START_TEST(test_span_ids_distinct) {
    uint8_t(*ids)[8] = malloc(sizeof(*ids) * NIDS);

    ck_assert_ptr_nonnull(ids);
    for (int i = 0; i < NIDS; i++) {
        fg_span_id_new(ids[i]);
        TH_FAST_ASSERT(!th_is_zero(ids[i], 8), "span id %d is all zero", i);
    }
    qsort(ids, NIDS, sizeof(*ids), cmp8);
    for (int i = 1; i < NIDS; i++) {
        TH_FAST_ASSERT(memcmp(ids[i - 1], ids[i], 8) != 0, "duplicate span id");
    }
    free(ids);
}
END_TEST

/*
 * 1,000,000 bytes from each generator: every byte value within 20% of its
 * expected count (3906.25; the standard deviation is about 62), and every bit
 * of every id position set in 50% +- 2% of ids (that is about ten standard
 * deviations; a constant or counter-like byte fails it).
 */
static void check_uniform(int trace, int idlen) {
    const int nids = 1000000 / idlen;
    static unsigned long counts[256];
    static unsigned long ones[16][8];
    uint8_t id[16];

    memset(counts, 0, sizeof(counts));
    memset(ones, 0, sizeof(ones));
    for (int i = 0; i < nids; i++) {
        if (trace) {
            fg_trace_id_new(id);
        } else {
            fg_span_id_new(id);
        }
        for (int b = 0; b < idlen; b++) {
            counts[id[b]]++;
            for (int bit = 0; bit < 8; bit++) {
                ones[b][bit] += (id[b] >> bit) & 1u;
            }
        }
    }
    const double expect = (double)nids * idlen / 256.0;
    for (int v = 0; v < 256; v++) {
        ck_assert_msg(fabs((double)counts[v] - expect) <= 0.2 * expect,
                      "%s ids: byte 0x%02x seen %lu times, expected %.0f +- 20%%",
                      trace ? "trace" : "span", (unsigned)v, counts[v], expect);
    }
    for (int b = 0; b < idlen; b++) {
        for (int bit = 0; bit < 8; bit++) {
            double share = (double)ones[b][bit] / nids;
            ck_assert_msg(fabs(share - 0.5) <= 0.02, "%s ids: byte %d bit %d set in %.4f",
                          trace ? "trace" : "span", b, bit, share);
        }
    }
}

START_TEST(test_trace_ids_uniform) { check_uniform(1, 16); }
END_TEST

START_TEST(test_span_ids_uniform) { check_uniform(0, 8); }
END_TEST

#define NTHREAD_IDS 50000

typedef struct id_worker {
    pthread_barrier_t *start;
    uint8_t (*trace)[16];
    uint8_t (*span)[8];
} id_worker;

static void *id_worker_run(void *arg) {
    id_worker *w = arg;
    pthread_barrier_wait(w->start);
    for (int i = 0; i < NTHREAD_IDS; i++) {
        fg_trace_id_new(w->trace[i]);
        fg_span_id_new(w->span[i]);
    }
    return NULL;
}

/* Two threads at once: no id is zero and none repeats, within or across them. */
START_TEST(test_ids_two_threads) {
    uint8_t(*trace)[16] = malloc(sizeof(*trace) * 2 * NTHREAD_IDS);
    uint8_t(*span)[8] = malloc(sizeof(*span) * 2 * NTHREAD_IDS);
    pthread_barrier_t start;
    pthread_t th[2];
    id_worker w[2];

    ck_assert_ptr_nonnull(trace);
    ck_assert_ptr_nonnull(span);
    ck_assert_int_eq(pthread_barrier_init(&start, NULL, 2), 0);
    for (int t = 0; t < 2; t++) {
        w[t].start = &start;
        w[t].trace = trace + t * NTHREAD_IDS;
        w[t].span = span + t * NTHREAD_IDS;
        ck_assert_int_eq(pthread_create(&th[t], NULL, id_worker_run, &w[t]), 0);
    }
    for (int t = 0; t < 2; t++) {
        ck_assert_int_eq(pthread_join(th[t], NULL), 0);
    }
    pthread_barrier_destroy(&start);

    /* the first ids of the two threads differ (separately seeded generators) */
    ck_assert(memcmp(trace[0], trace[NTHREAD_IDS], 16) != 0);
    ck_assert(memcmp(span[0], span[NTHREAD_IDS], 8) != 0);

    for (int i = 0; i < 2 * NTHREAD_IDS; i++) {
        TH_FAST_ASSERT(!th_is_zero(trace[i], 16), "zero trace id");
        TH_FAST_ASSERT(!th_is_zero(span[i], 8), "zero span id");
    }
    qsort(trace, 2 * NTHREAD_IDS, sizeof(*trace), cmp16);
    qsort(span, 2 * NTHREAD_IDS, sizeof(*span), cmp8);
    for (int i = 1; i < 2 * NTHREAD_IDS; i++) {
        TH_FAST_ASSERT(memcmp(trace[i - 1], trace[i], 16) != 0, "duplicate trace id");
        TH_FAST_ASSERT(memcmp(span[i - 1], span[i], 8) != 0, "duplicate span id");
    }
    free(trace);
    free(span);
}
END_TEST

/* ---- the sampler --------------------------------------------------------------------- */

static int decide(fg_sampler_kind kind, double ratio, const uint8_t id[16]) {
    fg_sampler s;
    memset(&s, 0, sizeof(s));
    s.kind = kind;
    s.ratio = ratio;
    s.root = FG_SAMPLER_ALWAYS_OFF;
    return fg_sampler_decide(&s, id, 0, 0);
}

/* A trace-id whose leftmost 9 bytes are `hi` (repeated) and rightmost 7 are `lo`. */
static void id_of(uint8_t id[16], uint8_t hi, uint64_t lo) {
    memset(id, hi, 9);
    for (int i = 0; i < 7; i++) {
        id[15 - i] = (uint8_t)(lo >> (8 * i));
    }
}

/* The exact rule: v < ratio * 2^56, in integers: v < ceil(ratio * 2^56), capped at 2^56. */
static uint64_t ceil_threshold(double ratio) {
    double b = ratio * 0x1p56; /* exact: scaling by a power of two */
    if (b >= 0x1p56) {
        return UINT64_C(1) << 56;
    }
    uint64_t t = (uint64_t)b; /* exact: a truncated double fits in its 53 bits */
    if ((double)t < b) {
        t++;
    }
    return t;
}

static uint64_t low56(const uint8_t id[16]) {
    uint64_t v = 0;
    for (int i = 9; i < 16; i++) {
        v = v << 8 | id[i];
    }
    return v;
}

START_TEST(test_sampler_always) {
    uint8_t id[16];
    uint64_t seed = 7;

    for (int i = 0; i < 1000; i++) {
        uint64_t a = th_rng_next(&seed), b = th_rng_next(&seed);
        memcpy(id, &a, 8);
        memcpy(id + 8, &b, 8);
        if (i == 0) {
            memset(id, 0, 16); /* even an all-zero id: the sampler does not judge ids */
        }
        TH_FAST_ASSERT(decide(FG_SAMPLER_ALWAYS_ON, 0.0, id) == 1, "ALWAYS_ON");
        TH_FAST_ASSERT(decide(FG_SAMPLER_ALWAYS_OFF, 1.0, id) == 0, "ALWAYS_OFF");
        TH_FAST_ASSERT(decide(FG_SAMPLER_RATIO, 0.0, id) == 0, "ratio 0");
        TH_FAST_ASSERT(decide(FG_SAMPLER_RATIO, -0.0, id) == 0, "ratio -0");
        TH_FAST_ASSERT(decide(FG_SAMPLER_RATIO, 1.0, id) == 1, "ratio 1");
    }
    /* the smallest rightmost 7 bytes */
    id_of(id, 0xff, 0);
    ck_assert_int_eq(decide(FG_SAMPLER_RATIO, 0.0, id), 0);
    ck_assert_int_eq(decide(FG_SAMPLER_RATIO, 1.0, id), 1);
}
END_TEST

/*
 * Ratio 1 samples every trace, including the one whose rightmost 7 bytes
 * are all ff (2^56 - 1 < 1 * 2^56). (Found as LIB DISAGREES in a first
 * lib/trace.c that compared (double)v, rounding 2^56 - 1 up to 2^56; fixed
 * by comparing in integers, v < ceil(ratio * 2^56).)
 */
START_TEST(test_sampler_ratio_one_all_ones) {
    uint8_t id[16];

    id_of(id, 0x00, (UINT64_C(1) << 56) - 1);
    ck_assert_int_eq(decide(FG_SAMPLER_RATIO, 0.0, id), 0);
    ck_assert_int_eq(decide(FG_SAMPLER_RATIO, 1.0, id), 1);
    memset(id, 0xff, 16);
    ck_assert_int_eq(decide(FG_SAMPLER_RATIO, 1.0, id), 1);
}
END_TEST

/*
 * RATIO samples exactly when the rightmost 7 bytes, big-endian, are below
 * ratio * 2^56. The rows marked (*) sit just below the threshold, where a
 * 56-bit v converted to double (53 bits) rounds up to it: a first
 * lib/trace.c failed them (LIB DISAGREES, since fixed).
 */
typedef struct ratio_case {
    double ratio;
    uint8_t hi; /* the leftmost 9 bytes */
    uint64_t lo;
    int want;
} ratio_case;

#define P56 (UINT64_C(1) << 56)

static const ratio_case ratio_cases[] = {
    {0.5, 0x00, (P56 >> 1) - 1, 1}, /* (*) */
    {0.5, 0x00, P56 >> 1, 0},
    {0.5, 0xff, (P56 >> 1) - 1, 1}, /* (*) */
    {0.5, 0xff, P56 >> 1, 0},
    {0.5, 0xff, 0, 1},
    {0.5, 0x01, P56 - 1, 0},
    {0.25, 0x5a, (P56 >> 2) - 1, 1}, /* (*) */
    {0.25, 0x5a, P56 >> 2, 0},
    {0.75, 0x11, (P56 >> 1) + (P56 >> 2) - 1, 1}, /* (*) */
    {0.75, 0x11, (P56 >> 1) + (P56 >> 2), 0},
    {0x1p-56, 0xee, 0, 1}, /* threshold 1: only 0 is below it */
    {0x1p-56, 0xee, 1, 0},
    {0x1p-8, 0x00, (P56 >> 8) - 1, 1},
    {0x1p-8, 0x00, P56 >> 8, 0},
    {1.0 - 0x1p-53, 0x00, P56 - 9, 1}, /* threshold 2^56 - 8 (*) */
    {1.0 - 0x1p-53, 0x00, P56 - 8, 0},
    {1.0 - 0x1p-53, 0x00, P56 - 1, 0},
    {1.0, 0x00, P56 - 1, 1}, /* (*) */
    {0.5, 0x33, (P56 >> 1) - 1024, 1},
    {0.25, 0x33, (P56 >> 2) - 1024, 1},
    {1.0, 0x33, P56 - 1024, 1},
    {0.1, 0x00, 0, 1},
    {0.0, 0xff, 0, 0},
};

START_TEST(test_sampler_ratio_threshold) {
    const ratio_case *c = &ratio_cases[_i];
    uint8_t id[16];

    id_of(id, c->hi, c->lo);
    ck_assert_uint_eq(low56(id), c->lo);
    int rc = decide(FG_SAMPLER_RATIO, c->ratio, id);
    ck_assert_msg(rc == c->want, "ratio %a, low 7 bytes 0x%014llx: %d, want %d", c->ratio,
                  (unsigned long long)c->lo, rc, c->want);
}
END_TEST

#define NSAMPLE 1000000

static const double share_ratios[] = {0.01, 0.1, 0.25, 0.5, 0.9};

/*
 * Over a million fresh trace ids: each ratio samples its share (within 0.01),
 * the same id always gets the same decision, a higher ratio samples a
 * superset, the decision matches the 7-byte threshold rule, and it ignores
 * the leftmost 9 bytes.
 */
START_TEST(test_sampler_ratio_share) {
    uint8_t(*ids)[16] = malloc(sizeof(*ids) * NSAMPLE);
    long sampled[TH_NELEM(share_ratios)] = {0};
    uint64_t seed = UINT64_C(0x9E3779B97F4A7C15);

    ck_assert_ptr_nonnull(ids);
    for (int i = 0; i < NSAMPLE; i++) {
        fg_trace_id_new(ids[i]);
    }
    for (int i = 0; i < NSAMPLE; i++) {
        int prev = 0;
        for (int r = 0; r < TH_NELEM(share_ratios); r++) {
            int d = decide(FG_SAMPLER_RATIO, share_ratios[r], ids[i]);
            TH_FAST_ASSERT(d == 0 || d == 1, "decide: %d", d);
            TH_FAST_ASSERT(d >= prev, "sampled at a lower ratio but not at %g",
                           share_ratios[r]);
            prev = d;
            sampled[r] += d;
            if ((i & 63) == 0) {
                /* the exact rule, consistency, and the leftmost 9 bytes */
                uint8_t other[16];
                int want = low56(ids[i]) < ceil_threshold(share_ratios[r]);
                TH_FAST_ASSERT(d == want, "id %d ratio %g: %d, want %d", i, share_ratios[r], d,
                               want);
                TH_FAST_ASSERT(decide(FG_SAMPLER_RATIO, share_ratios[r], ids[i]) == d,
                               "inconsistent");
                memcpy(other, ids[i], 16);
                uint64_t x = th_rng_next(&seed);
                memcpy(other, &x, 8);
                other[8] = (uint8_t)th_rng_next(&seed);
                TH_FAST_ASSERT(decide(FG_SAMPLER_RATIO, share_ratios[r], other) == d,
                               "left bytes changed the decision");
            }
        }
    }
    for (int r = 0; r < TH_NELEM(share_ratios); r++) {
        double share = (double)sampled[r] / NSAMPLE;
        ck_assert_msg(fabs(share - share_ratios[r]) <= 0.01, "ratio %g sampled %.4f",
                      share_ratios[r], share);
    }
    free(ids);
}
END_TEST

/* Monotone over a fine grid of ratios, on fixed-seed ids. */
START_TEST(test_sampler_monotone) {
    uint64_t seed = 12345;
    uint8_t id[16];

    for (int i = 0; i < 20000; i++) {
        uint64_t a = th_rng_next(&seed), b = th_rng_next(&seed);
        memcpy(id, &a, 8);
        memcpy(id + 8, &b, 8);
        int d01 = decide(FG_SAMPLER_RATIO, 0.1, id);
        int d05 = decide(FG_SAMPLER_RATIO, 0.5, id);
        TH_FAST_ASSERT(!d01 || d05, "sampled at 0.1, not at 0.5");
        int prev = 0;
        for (int k = 0; k <= 100; k++) {
            int d = decide(FG_SAMPLER_RATIO, k / 100.0, id);
            TH_FAST_ASSERT(d >= prev, "not monotone at ratio %g", k / 100.0);
            prev = d;
        }
        TH_FAST_ASSERT(prev == 1, "ratio 1 did not sample");
    }
}
END_TEST

/* The leftmost 9 bytes never matter: every value of each of them, one at a time. */
START_TEST(test_sampler_left_bytes_ignored) {
    uint8_t id[16], other[16];
    static const double ratios[] = {0.01, 0.1, 0.25, 0.5, 0.9, 0.999};

    for (int k = 0; k < TH_NELEM(ratios); k++) {
        /* near the threshold, either side (the exact boundary is the table's) */
        uint64_t t = ceil_threshold(ratios[k]);
        for (int side = 0; side < 2; side++) {
            id_of(id, 0x00, side == 0 ? t - 4096 : t);
            int d = decide(FG_SAMPLER_RATIO, ratios[k], id);
            ck_assert_int_eq(d, side == 0);
            for (int pos = 0; pos < 9; pos++) {
                for (int v = 0; v < 256; v++) {
                    memcpy(other, id, 16);
                    other[pos] = (uint8_t)v;
                    TH_FAST_ASSERT(decide(FG_SAMPLER_RATIO, ratios[k], other) == d,
                                   "byte %d = %d changed it", pos, v);
                }
            }
            memcpy(other, id, 16);
            memset(other, 0xff, 9);
            ck_assert_int_eq(decide(FG_SAMPLER_RATIO, ratios[k], other), d);
        }
    }
}
END_TEST

START_TEST(test_sampler_parent_based) {
    static const fg_sampler_kind roots[] = {FG_SAMPLER_ALWAYS_OFF, FG_SAMPLER_ALWAYS_ON,
                                            FG_SAMPLER_RATIO};
    static const double ratios[] = {0.0, 0.3, 1.0};
    uint64_t seed = 99;
    uint8_t id[16];

    for (int i = 0; i < 2000; i++) {
        uint64_t a = th_rng_next(&seed), b = th_rng_next(&seed);
        memcpy(id, &a, 8);
        memcpy(id + 8, &b, 8);
        for (int r = 0; r < TH_NELEM(roots); r++) {
            for (int q = 0; q < TH_NELEM(ratios); q++) {
                fg_sampler s;
                memset(&s, 0, sizeof(s));
                s.kind = FG_SAMPLER_PARENT_BASED;
                s.root = roots[r];
                s.ratio = ratios[q];

                /* with a parent: its flag, whatever the root says */
                TH_FAST_ASSERT(fg_sampler_decide(&s, id, 1, 1) == 1, "parent sampled, root %d",
                               r);
                TH_FAST_ASSERT(fg_sampler_decide(&s, id, 1, 0) == 0,
                               "parent not sampled, root %d", r);

                /* without one: the root rule, and parent_sampled is ignored */
                int want = decide(roots[r], ratios[q], id);
                TH_FAST_ASSERT(want >= 0, "root %d: %d", r, want);
                if (roots[r] == FG_SAMPLER_ALWAYS_ON) {
                    TH_FAST_ASSERT(want == 1, "ALWAYS_ON");
                } else if (roots[r] == FG_SAMPLER_ALWAYS_OFF) {
                    TH_FAST_ASSERT(want == 0, "ALWAYS_OFF");
                }
                TH_FAST_ASSERT(fg_sampler_decide(&s, id, 0, 0) == want, "no parent, root %d",
                               r);
                TH_FAST_ASSERT(fg_sampler_decide(&s, id, 0, 1) == want,
                               "no parent (flag 1), root %d", r);
            }
        }
    }

    /* a ratio root at 0.5 on ids either side of the threshold */
    fg_sampler s;
    memset(&s, 0, sizeof(s));
    s.kind = FG_SAMPLER_PARENT_BASED;
    s.root = FG_SAMPLER_RATIO;
    s.ratio = 0.5;
    id_of(id, 0xff, (P56 >> 1) - 1024);
    ck_assert_int_eq(fg_sampler_decide(&s, id, 0, 0), 1);
    ck_assert_int_eq(fg_sampler_decide(&s, id, 1, 0), 0);
    id_of(id, 0x00, P56 >> 1);
    ck_assert_int_eq(fg_sampler_decide(&s, id, 0, 1), 0);
    ck_assert_int_eq(fg_sampler_decide(&s, id, 1, 1), 1);

    /* the other kinds ignore the parent */
    fg_sampler on = {
        .kind = FG_SAMPLER_ALWAYS_ON, .ratio = 0.0, .root = FG_SAMPLER_ALWAYS_OFF};
    fg_sampler off = {
        .kind = FG_SAMPLER_ALWAYS_OFF, .ratio = 1.0, .root = FG_SAMPLER_ALWAYS_ON};
    ck_assert_int_eq(fg_sampler_decide(&on, id, 1, 0), 1);
    ck_assert_int_eq(fg_sampler_decide(&off, id, 1, 1), 0);
}
END_TEST

/* Invalid samplers: {kind, ratio, root}, each with and without a parent. */
typedef struct bad_sampler {
    int kind;
    double ratio;
    int root;
} bad_sampler;

static const bad_sampler bad_samplers[] = {
    {4, 0.5, FG_SAMPLER_ALWAYS_ON},
    {99, 0.5, FG_SAMPLER_ALWAYS_ON},
    {-1, 0.5, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, -0.1, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, -0x1p-1000, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, 1.0000001, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, 2.0, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, HUGE_VAL, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, -HUGE_VAL, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_RATIO, NAN, FG_SAMPLER_ALWAYS_ON},
    {FG_SAMPLER_PARENT_BASED, 0.5, FG_SAMPLER_PARENT_BASED},
    {FG_SAMPLER_PARENT_BASED, 0.5, 4},
    {FG_SAMPLER_PARENT_BASED, 0.5, -1},
    {FG_SAMPLER_PARENT_BASED, -0.5, FG_SAMPLER_RATIO},
    {FG_SAMPLER_PARENT_BASED, 1.5, FG_SAMPLER_RATIO},
    {FG_SAMPLER_PARENT_BASED, NAN, FG_SAMPLER_RATIO},
};

START_TEST(test_sampler_invalid_table) {
    const bad_sampler *c = &bad_samplers[_i];
    uint8_t id[16];
    fg_sampler s;

    id_of(id, 0x12, 0);
    memset(&s, 0, sizeof(s));
    s.kind = (fg_sampler_kind)c->kind;
    s.ratio = c->ratio;
    s.root = (fg_sampler_kind)c->root;
    for (int hp = 0; hp < 2; hp++) {
        for (int ps = 0; ps < 2; ps++) {
            int rc = fg_sampler_decide(&s, id, hp, ps);
            ck_assert_msg(rc == FG_EINVAL,
                          "case %d {kind %d, ratio %g, root %d} parent %d/%d: %d, want %s", _i,
                          c->kind, c->ratio, c->root, hp, ps, rc, fg_err_name(FG_EINVAL));
        }
    }
}
END_TEST

START_TEST(test_sampler_null_args) {
    uint8_t id[16];
    fg_sampler s = {.kind = FG_SAMPLER_ALWAYS_ON, .ratio = 0.0, .root = FG_SAMPLER_ALWAYS_OFF};

    id_of(id, 0x12, 0);
    ck_assert_int_eq(fg_sampler_decide(NULL, id, 0, 0), FG_EINVAL);
    ck_assert_int_eq(fg_sampler_decide(NULL, id, 1, 1), FG_EINVAL);
    ck_assert_int_eq(fg_sampler_decide(&s, NULL, 0, 0), FG_EINVAL);
    ck_assert_int_eq(fg_sampler_decide(NULL, NULL, 0, 0), FG_EINVAL);
    s.kind = FG_SAMPLER_RATIO;
    s.ratio = 0.5;
    ck_assert_int_eq(fg_sampler_decide(&s, NULL, 0, 0), FG_EINVAL);
    s.kind = FG_SAMPLER_PARENT_BASED;
    s.root = FG_SAMPLER_ALWAYS_ON;
    ck_assert_int_eq(fg_sampler_decide(&s, NULL, 1, 1), FG_EINVAL);
    ck_assert_int_eq(fg_sampler_decide(&s, NULL, 0, 0), FG_EINVAL);
}
END_TEST

/* ---- the suite ----------------------------------------------------------------------- */

/* A forked child does not repeat its parent's ids: it seeds afresh. The
 * child sends its next span id through a pipe; the parent's next differs. */
START_TEST(test_ids_after_fork) {
    uint8_t before[8], mine[8], childs[8];
    fg_span_id_new(before); /* the parent's generator is seeded */
    int fd[2];
    ck_assert_int_eq(pipe(fd), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        uint8_t id[8];
        fg_span_id_new(id);
        _exit(write(fd[1], id, sizeof(id)) == (ssize_t)sizeof(id) ? 0 : 1);
    }
    fg_span_id_new(mine);
    ck_assert_int_eq(read(fd[0], childs, sizeof(childs)), (int)sizeof(childs));
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(fd[0]);
    close(fd[1]);
    ck_assert_msg(memcmp(mine, childs, sizeof(mine)) != 0,
                  "the forked child repeated the parent's next span id");
}
END_TEST

Suite *fg_suite_trace(void) {
    Suite *s = suite_create("trace");
    TCase *tc;

    tc = tcase_create("parse");
    tcase_add_test(tc, test_eparse_code);
    tcase_add_loop_test(tc, test_parse_table, 0, NPARSE);
    tcase_add_test(tc, test_parse_every_substitution);
    tcase_add_test(tc, test_parse_args);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("lengths");
    tcase_add_test(tc, test_parse_v00_longer);
    tcase_add_test(tc, test_parse_future_lengths);
    tcase_add_test(tc, test_parse_huge_buffer);
    suite_add_tcase(s, tc);

    tc = tcase_create("format");
    tcase_add_test(tc, test_format_basic);
    tcase_add_test(tc, test_format_every_flag);
    tcase_add_test(tc, test_format_bounds);
    tcase_add_test(tc, test_format_invalid);
    tcase_add_test(tc, test_round_trip_table);
    tcase_add_test(tc, test_round_trip_random);
    suite_add_tcase(s, tc);

    tc = tcase_create("ids");
    tcase_add_test(tc, test_trace_ids_distinct);
    tcase_add_test(tc, test_span_ids_distinct);
    tcase_add_test(tc, test_trace_ids_uniform);
    tcase_add_test(tc, test_span_ids_uniform);
    tcase_add_test(tc, test_ids_two_threads);
    tcase_add_test(tc, test_ids_after_fork);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("sampler");
    tcase_add_test(tc, test_sampler_always);
    tcase_add_test(tc, test_sampler_ratio_one_all_ones);
    tcase_add_loop_test(tc, test_sampler_ratio_threshold, 0, TH_NELEM(ratio_cases));
    tcase_add_test(tc, test_sampler_ratio_share);
    tcase_add_test(tc, test_sampler_monotone);
    tcase_add_test(tc, test_sampler_left_bytes_ignored);
    tcase_add_test(tc, test_sampler_parent_based);
    tcase_add_loop_test(tc, test_sampler_invalid_table, 0, TH_NELEM(bad_samplers));
    tcase_add_test(tc, test_sampler_null_args);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    return s;
}
