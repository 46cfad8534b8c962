/*
 * tests/check_ctx.c - the per-request context: init, bounds and headers.
 *
 * fg_ctx_init must set the method and path (borrowed, not copied), reset
 * every decision field, accept only HTTP-token methods and enforce
 * FG_METHOD_MAX / FG_PATH_MAX. Headers are borrowed, bounded in count and
 * length, looked up ASCII case-insensitively (first match wins), and a
 * failed call leaves the ctx unchanged. A ctx whose init failed is unusable.
 * The token rules are walked as tables over every byte value.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

/* RFC 9110 tchar: the bytes an HTTP token (method, header name) is made of. */
static int is_tchar(int c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A ctx full of garbage, so that "reset" is visible. */
static void dirty(fg_ctx *ctx) { memset(ctx, 0xA5, sizeof(*ctx)); }

static void assert_reset(const fg_ctx *ctx) {
    fg_trace_fields zero;

    memset(&zero, 0, sizeof(zero));
    ck_assert_uint_eq(ctx->now_ns, 0);
    ck_assert_uint_eq(ctx->deadline_ns, 0);
    ck_assert_uint_eq(ctx->retry_count, 0);
    ck_assert_uint_eq(ctx->nheaders, 0);
    ck_assert_ptr_null(ctx->user);
    ck_assert_mem_eq(&ctx->trace, &zero, sizeof(zero));
    ck_assert_int_eq(ctx->status, 0);
    ck_assert_ptr_null(ctx->rejected_by);
    ck_assert_uint_eq(ctx->retry_after_ns, 0);
    ck_assert_uint_eq(ctx->delay_ns, 0);
}

/* An empty chain, to see whether a ctx is usable. */
static fg_chain *empty_chain(void) {
    fg_chain *chain = NULL;

    ck_assert_int_eq(fg_chain_new(NULL, &chain), 0);
    ck_assert_ptr_nonnull(chain);
    return chain;
}

/* ---- fg_ctx_init / fg_ctx_init_n ---------------------------------------------- */

START_TEST(test_init_sets_and_resets) {
    static const char method[] = "GET";
    static const char path[] = "/orders/42";
    fg_ctx ctx;

    dirty(&ctx);
    ck_assert_int_eq(fg_ctx_init(&ctx, method, path), 0);
    ck_assert_ptr_eq(ctx.method.ptr, method);
    ck_assert_uint_eq(ctx.method.len, 3);
    ck_assert_ptr_eq(ctx.path.ptr, path);
    ck_assert_uint_eq(ctx.path.len, strlen(path));
    assert_reset(&ctx);
}
END_TEST

START_TEST(test_init_again_resets) {
    fg_ctx ctx;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "POST", "/a"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-a", "1"), 0);
    ctx.user = &ctx;
    ctx.deadline_ns = 99;
    ctx.retry_count = 3;
    ctx.status = FG_ELIMITED;
    ctx.retry_after_ns = 1000;
    ctx.delay_ns = 5;
    ctx.trace.valid = 1;
    ctx.trace.trace_id[3] = 7;
    ck_assert_int_eq(fg_ctx_init(&ctx, "PUT", "/b"), 0);
    assert_reset(&ctx);
    ck_assert_uint_eq(ctx.method.len, 3);
    ck_assert_mem_eq(ctx.method.ptr, "PUT", 3);
    ck_assert_uint_eq(ctx.path.len, 2);
    ck_assert_mem_eq(ctx.path.ptr, "/b", 2);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-a", &v), FG_ENOTFOUND);
}
END_TEST

START_TEST(test_init_null_method) {
    fg_ctx ctx;

    dirty(&ctx);
    ck_assert_int_eq(fg_ctx_init(&ctx, NULL, "topic/orders"), 0);
    ck_assert_uint_eq(ctx.method.len, 0);
    ck_assert_uint_eq(ctx.path.len, 12);
    assert_reset(&ctx);

    dirty(&ctx);
    ck_assert_int_eq(fg_ctx_init_n(&ctx, NULL, 0, "topic", 5), 0);
    ck_assert_uint_eq(ctx.method.len, 0);
    ck_assert_uint_eq(ctx.path.len, 5);
    assert_reset(&ctx);
}
END_TEST

START_TEST(test_init_empty_method) {
    fg_ctx ctx;

    dirty(&ctx);
    ck_assert_int_eq(fg_ctx_init(&ctx, "", "/"), 0);
    ck_assert_uint_eq(ctx.method.len, 0);
    ck_assert_uint_eq(ctx.path.len, 1);
    assert_reset(&ctx);

    dirty(&ctx);
    ck_assert_int_eq(fg_ctx_init_n(&ctx, "GET", 0, "/", 1), 0);
    ck_assert_uint_eq(ctx.method.len, 0);
    assert_reset(&ctx);
}
END_TEST

START_TEST(test_ctx_size) { ck_assert_uint_eq(fg_ctx_size(), sizeof(fg_ctx)); }
END_TEST

START_TEST(test_init_n_not_terminated) {
    /* "POST/a/b" then "!!": no NUL anywhere the ctx may look. */
    const char buf[10] = {'P', 'O', 'S', 'T', '/', 'a', '/', 'b', '!', '!'};
    fg_ctx ctx;

    dirty(&ctx);
    ck_assert_int_eq(fg_ctx_init_n(&ctx, buf, 4, buf + 4, 4), 0);
    ck_assert_ptr_eq(ctx.method.ptr, buf);
    ck_assert_uint_eq(ctx.method.len, 4);
    ck_assert_ptr_eq(ctx.path.ptr, buf + 4);
    ck_assert_uint_eq(ctx.path.len, 4);
    assert_reset(&ctx);

    /* The method length decides, even when a non-token byte follows it. */
    ck_assert_int_eq(fg_ctx_init_n(&ctx, "GET /x", 3, "/x", 2), 0);
    ck_assert_uint_eq(ctx.method.len, 3);
}
END_TEST

START_TEST(test_init_null_args) {
    fg_ctx ctx;

    ck_assert_int_eq(fg_ctx_init(NULL, "GET", "/"), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", NULL), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_init_n(NULL, "GET", 3, "/", 1), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_init_n(&ctx, "GET", 3, NULL, 1), FG_EINVAL);
    /* A NULL method is allowed only with length 0. */
    ck_assert_int_eq(fg_ctx_init_n(&ctx, NULL, 3, "/", 1), FG_EINVAL);
}
END_TEST

/* Every byte value as a one-byte method: accepted exactly when it is a tchar.
 * Iteration _i covers the 16 bytes _i * 16 .. _i * 16 + 15. */
START_TEST(test_method_bytes) {
    for (int b = _i * 16; b < _i * 16 + 16; b++) {
        char m = (char)b;
        fg_ctx ctx;
        int rc = fg_ctx_init_n(&ctx, &m, 1, "/", 1);

        if (is_tchar(b)) {
            ck_assert_msg(rc == 0, "method byte 0x%02x rejected: %d", b, rc);
            ck_assert_ptr_eq(ctx.method.ptr, &m);
            ck_assert_uint_eq(ctx.method.len, 1);
        } else {
            ck_assert_msg(rc == FG_EINVAL, "method byte 0x%02x gave %d, not FG_EINVAL", b, rc);
        }
    }
}
END_TEST

static const char *const good_methods[] = {
    "GET",      "POST",   "PUT", "DELETE",     "PATCH", "OPTIONS",
    "M-SEARCH", "X_CUST", "get", "PROPFIND42", "a",     "!#$%&'*+-.^_`|~",
};

START_TEST(test_good_method) {
    const char *m = good_methods[_i];
    fg_ctx ctx;

    ck_assert_int_eq(fg_ctx_init(&ctx, m, "/"), 0);
    ck_assert_ptr_eq(ctx.method.ptr, m);
    ck_assert_uint_eq(ctx.method.len, strlen(m));
}
END_TEST

static const char *const bad_methods[] = {
    "GE T", " GET", "GET ",   "GET\t",  "G(T",     "G)T",      "G:T",    "G\"T", "GET/",
    "G,T",  "G;T",  "G<T",    "G>T",    "G=T",     "G@T",      "G?T",    "G[T",  "G]T",
    "G{T}", "G\\T", "G\x01T", "G\x7fT", "GET\r\n", "\xc3\xa9", "G\x80T",
};

START_TEST(test_bad_method) {
    const char *m = bad_methods[_i];
    fg_ctx ctx;

    ck_assert_msg(fg_ctx_init(&ctx, m, "/") == FG_EINVAL, "method #%d accepted", _i);
    ck_assert_msg(fg_ctx_init_n(&ctx, m, strlen(m), "/", 1) == FG_EINVAL,
                  "method #%d accepted by init_n", _i);
}
END_TEST

START_TEST(test_method_length_bound) {
    char m[FG_METHOD_MAX + 2];
    fg_ctx ctx;

    memset(m, 'A', sizeof(m));
    m[FG_METHOD_MAX] = '\0';
    ck_assert_int_eq(fg_ctx_init(&ctx, m, "/"), 0);
    ck_assert_uint_eq(ctx.method.len, FG_METHOD_MAX);
    ck_assert_int_eq(fg_ctx_init_n(&ctx, m, FG_METHOD_MAX, "/", 1), 0);

    m[FG_METHOD_MAX] = 'A';
    m[FG_METHOD_MAX + 1] = '\0';
    ck_assert_int_eq(fg_ctx_init(&ctx, m, "/"), FG_ETOOLONG);
    ck_assert_int_eq(fg_ctx_init_n(&ctx, m, FG_METHOD_MAX + 1, "/", 1), FG_ETOOLONG);
}
END_TEST

START_TEST(test_path_length_bound) {
    char *p = malloc(FG_PATH_MAX + 2);
    fg_ctx ctx;

    ck_assert_ptr_nonnull(p);
    memset(p, 'p', FG_PATH_MAX + 2);
    p[0] = '/';
    p[FG_PATH_MAX] = '\0';
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", p), 0);
    ck_assert_ptr_eq(ctx.path.ptr, p);
    ck_assert_uint_eq(ctx.path.len, FG_PATH_MAX);
    ck_assert_int_eq(fg_ctx_init_n(&ctx, "GET", 3, p, FG_PATH_MAX), 0);
    ck_assert_uint_eq(ctx.path.len, FG_PATH_MAX);

    p[FG_PATH_MAX] = 'p';
    p[FG_PATH_MAX + 1] = '\0';
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", p), FG_ETOOLONG);
    ck_assert_int_eq(fg_ctx_init_n(&ctx, "GET", 3, p, FG_PATH_MAX + 1), FG_ETOOLONG);
    free(p);
}
END_TEST

/* A ctx whose init failed is refused, even if it was fine before. */
START_TEST(test_failed_init_is_unusable) {
    fg_chain *chain = empty_chain();
    fg_ctx ctx;
    int calls = 0;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_init(&ctx, "G T", "/"), FG_EINVAL);
    ck_assert_int_eq(fg_chain_enter(chain, &ctx), FG_ESTATE);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, th_count_handler, &calls), FG_ESTATE);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-a", "1"), FG_ESTATE);
    ck_assert_int_eq(calls, 0);

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", NULL), FG_EINVAL);
    ck_assert_int_eq(fg_chain_enter(chain, &ctx), FG_ESTATE);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-a", "1"), FG_ESTATE);

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_init_n(&ctx, "GET", 3, "/", FG_PATH_MAX + 1), FG_ETOOLONG);
    ck_assert_int_eq(fg_chain_enter(chain, &ctx), FG_ESTATE);
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, "x-a", 3, "1", 1), FG_ESTATE);

    /* A successful init makes it usable again. */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, th_count_handler, &calls), 0);
    ck_assert_int_eq(calls, 1);
    fg_chain_free(chain);
}
END_TEST

/* Spotting a ctx that was never initialised is best effort (magic values in the
 * private state), but an all-zero one, the commonest case, must be refused. */
START_TEST(test_zeroed_ctx_is_unusable) {
    fg_chain *chain = empty_chain();
    fg_ctx ctx;
    int calls = 0;

    memset(&ctx, 0, sizeof(ctx));
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-a", "1"), FG_ESTATE);
    ck_assert_uint_eq(ctx.nheaders, 0);
    ck_assert_int_eq(fg_chain_enter(chain, &ctx), FG_ESTATE);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, th_count_handler, &calls), FG_ESTATE);
    ck_assert_int_eq(calls, 0);
    fg_chain_free(chain);
}
END_TEST

/* ---- headers ---------------------------------------------------------------------- */

START_TEST(test_header_add_lookup_case_insensitive) {
    static const char name[] = "Content-Type";
    static const char value[] = "application/json";
    fg_ctx ctx;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, name, value), 0);
    ck_assert_uint_eq(ctx.nheaders, 1);
    ck_assert_ptr_eq(ctx.headers[0].name.ptr, name);
    ck_assert_uint_eq(ctx.headers[0].name.len, strlen(name));
    ck_assert_ptr_eq(ctx.headers[0].value.ptr, value);
    ck_assert_uint_eq(ctx.headers[0].value.len, strlen(value));

    static const char *const spellings[] = {"Content-Type", "content-type", "CONTENT-TYPE",
                                            "cOnTeNt-TyPe"};
    for (size_t i = 0; i < sizeof(spellings) / sizeof(spellings[0]); i++) {
        v.ptr = NULL;
        v.len = 0;
        ck_assert_int_eq(fg_ctx_header(&ctx, spellings[i], &v), 0);
        ck_assert_ptr_eq(v.ptr, value);
        ck_assert_uint_eq(v.len, strlen(value));
    }
}
END_TEST

START_TEST(test_header_lookup_exact_length) {
    fg_ctx ctx;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-ab", "1"), 0);
    /* Prefixes and extensions of a name are other names. */
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-a", &v), FG_ENOTFOUND);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-abc", &v), FG_ENOTFOUND);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x_ab", &v), FG_ENOTFOUND);
    /* Case folding is ASCII letters only: '-' (0x2d) is not '\r' (0x0d). */
    ck_assert_int_eq(fg_ctx_header_n(&ctx, "x\rab", 4, &v), FG_ENOTFOUND);
    ck_assert_int_eq(fg_ctx_header_n(&ctx, "X-AB-and-more", 4, &v), 0);
    ck_assert_uint_eq(v.len, 1);
    ck_assert_mem_eq(v.ptr, "1", 1);
}
END_TEST

START_TEST(test_header_duplicates_first_wins) {
    static const char v1[] = "first";
    static const char v2[] = "second";
    fg_ctx ctx;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-other", "0"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "X-Dup", v1), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-dup", v2), 0);
    ck_assert_uint_eq(ctx.nheaders, 3);
    ck_assert_ptr_eq(ctx.headers[1].value.ptr, v1);
    ck_assert_ptr_eq(ctx.headers[2].value.ptr, v2);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-dup", &v), 0);
    ck_assert_ptr_eq(v.ptr, v1);
    ck_assert_uint_eq(v.len, 5);
}
END_TEST

START_TEST(test_header_missing) {
    fg_ctx ctx;
    fg_str v = {"garbage", 7};

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-none", &v), FG_ENOTFOUND);
    ck_assert_ptr_null(v.ptr);
    ck_assert_uint_eq(v.len, 0);

    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-some", "1"), 0);
    v.ptr = "garbage";
    v.len = 7;
    ck_assert_int_eq(fg_ctx_header_n(&ctx, "x-nonexistent", 6, &v), FG_ENOTFOUND);
    ck_assert_ptr_null(v.ptr);
    ck_assert_uint_eq(v.len, 0);
}
END_TEST

START_TEST(test_header_borrowed) {
    char name[] = "x-token";
    char value[] = "abc";
    fg_ctx ctx;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, name, value), 0);
    /* The ctx points into the caller's buffers: a change shows through. */
    value[0] = 'X';
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-token", &v), 0);
    ck_assert_ptr_eq(v.ptr, value);
    ck_assert_mem_eq(v.ptr, "Xbc", 3);
    ck_assert_ptr_eq(ctx.headers[0].name.ptr, name);
}
END_TEST

START_TEST(test_header_n_not_terminated) {
    const char buf[12] = {'x', '-', 'k', 'e', 'y', 'v', 'a', 'l', 'u', 'e', '#', '#'};
    fg_ctx ctx;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, buf, 5, buf + 5, 5), 0);
    ck_assert_int_eq(fg_ctx_header(&ctx, "X-Key", &v), 0);
    ck_assert_ptr_eq(v.ptr, buf + 5);
    ck_assert_uint_eq(v.len, 5);
    ck_assert_int_eq(fg_ctx_header_n(&ctx, buf, 5, &v), 0);
    ck_assert_ptr_eq(v.ptr, buf + 5);
}
END_TEST

START_TEST(test_header_null_value) {
    fg_ctx ctx;
    fg_str v = {"garbage", 7};

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, "x-empty", 7, NULL, 0), 0);
    ck_assert_uint_eq(ctx.nheaders, 1);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-empty", &v), 0);
    ck_assert_uint_eq(v.len, 0);
    /* An empty value is a value too. */
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-blank", ""), 0);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-blank", &v), 0);
    ck_assert_uint_eq(v.len, 0);
    ck_assert_uint_eq(ctx.nheaders, 2);
    /* A NULL value is allowed only with length 0. */
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, "x-bad", 5, NULL, 3), FG_EINVAL);
    ck_assert_uint_eq(ctx.nheaders, 2);
}
END_TEST

START_TEST(test_header_null_args) {
    fg_ctx ctx;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(NULL, "x-a", "1"), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, NULL, "1"), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-a", NULL), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_add_header_n(NULL, "x-a", 3, "1", 1), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, NULL, 3, "1", 1), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, NULL, 0, "1", 1), FG_EINVAL);
    ck_assert_uint_eq(ctx.nheaders, 0);

    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-a", "1"), 0);
    ck_assert_int_eq(fg_ctx_header(NULL, "x-a", &v), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_header(&ctx, NULL, &v), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-a", NULL), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_header_n(NULL, "x-a", 3, &v), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_header_n(&ctx, NULL, 3, &v), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_header_n(&ctx, "x-a", 3, NULL), FG_EINVAL);
}
END_TEST

START_TEST(test_header_count_bound) {
    char names[FG_CTX_MAX_HEADERS + 1][16];
    fg_ctx ctx;
    fg_header last;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    for (int i = 0; i <= FG_CTX_MAX_HEADERS; i++) {
        snprintf(names[i], sizeof(names[i]), "x-h%d", i);
    }
    for (int i = 0; i < FG_CTX_MAX_HEADERS; i++) {
        ck_assert_int_eq(fg_ctx_add_header(&ctx, names[i], names[i]), 0);
        ck_assert_uint_eq(ctx.nheaders, (unsigned)i + 1);
    }
    last = ctx.headers[FG_CTX_MAX_HEADERS - 1];
    ck_assert_int_eq(fg_ctx_add_header(&ctx, names[FG_CTX_MAX_HEADERS], "v"), FG_ETOOMANY);
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, "x-more", 6, "v", 1), FG_ETOOMANY);
    ck_assert_uint_eq(ctx.nheaders, FG_CTX_MAX_HEADERS);
    ck_assert_mem_eq(&ctx.headers[FG_CTX_MAX_HEADERS - 1], &last, sizeof(last));
    ck_assert_int_eq(fg_ctx_header(&ctx, names[FG_CTX_MAX_HEADERS], &v), FG_ENOTFOUND);
    /* Every one that fit is still there. */
    for (int i = 0; i < FG_CTX_MAX_HEADERS; i++) {
        ck_assert_int_eq(fg_ctx_header(&ctx, names[i], &v), 0);
        ck_assert_ptr_eq(v.ptr, names[i]);
    }
}
END_TEST

START_TEST(test_header_name_length_bound) {
    char name[FG_HEADER_NAME_MAX + 2];
    fg_ctx ctx;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    memset(name, 'n', sizeof(name));
    name[FG_HEADER_NAME_MAX] = '\0';
    ck_assert_int_eq(fg_ctx_add_header(&ctx, name, "v"), 0);
    ck_assert_uint_eq(ctx.nheaders, 1);
    ck_assert_uint_eq(ctx.headers[0].name.len, FG_HEADER_NAME_MAX);
    ck_assert_int_eq(fg_ctx_header(&ctx, name, &v), 0);

    name[FG_HEADER_NAME_MAX] = 'n';
    name[FG_HEADER_NAME_MAX + 1] = '\0';
    ck_assert_int_eq(fg_ctx_add_header(&ctx, name, "v"), FG_ETOOLONG);
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, name, FG_HEADER_NAME_MAX + 1, "v", 1),
                     FG_ETOOLONG);
    ck_assert_uint_eq(ctx.nheaders, 1);
}
END_TEST

START_TEST(test_header_value_length_bound) {
    char *value = malloc(FG_HEADER_VALUE_MAX + 2);
    fg_ctx ctx;
    fg_str v;

    ck_assert_ptr_nonnull(value);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    memset(value, 'v', FG_HEADER_VALUE_MAX + 2);
    value[FG_HEADER_VALUE_MAX] = '\0';
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-big", value), 0);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-big", &v), 0);
    ck_assert_ptr_eq(v.ptr, value);
    ck_assert_uint_eq(v.len, FG_HEADER_VALUE_MAX);

    value[FG_HEADER_VALUE_MAX] = 'v';
    value[FG_HEADER_VALUE_MAX + 1] = '\0';
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-bigger", value), FG_ETOOLONG);
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, "x-bigger", 8, value, FG_HEADER_VALUE_MAX + 1),
                     FG_ETOOLONG);
    ck_assert_uint_eq(ctx.nheaders, 1);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-bigger", &v), FG_ENOTFOUND);
    free(value);
}
END_TEST

/* Every byte value as a one-byte header name: accepted exactly when a tchar.
 * Iteration _i covers the 16 bytes _i * 16 .. _i * 16 + 15. */
START_TEST(test_header_name_bytes) {
    for (int b = _i * 16; b < _i * 16 + 16; b++) {
        char n = (char)b;
        fg_ctx ctx;
        int rc;

        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
        rc = fg_ctx_add_header_n(&ctx, &n, 1, "v", 1);
        if (is_tchar(b)) {
            ck_assert_msg(rc == 0, "header name byte 0x%02x rejected: %d", b, rc);
            ck_assert_uint_eq(ctx.nheaders, 1);
        } else {
            ck_assert_msg(rc == FG_EINVAL, "header name byte 0x%02x gave %d, not FG_EINVAL", b,
                          rc);
            ck_assert_uint_eq(ctx.nheaders, 0);
        }
    }
}
END_TEST

static const char *const bad_names[] = {
    "",       ":path", "x:y",  "x y",  " x",  "x ",   "x\ty",     "x\r\ny",
    "\x01",   "x\x7f", "x(y)", "x/y",  "x@y", "x=y",  "x,y",      "x;y",
    "x\"y\"", "x[y]",  "x{y}", "x<y>", "x?y", "x\\y", "\xc3\xa9", "x\x80",
};

START_TEST(test_bad_header_name) {
    const char *n = bad_names[_i];
    fg_ctx ctx;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-ok", "1"), 0);
    ck_assert_msg(fg_ctx_add_header(&ctx, n, "v") == FG_EINVAL, "bad name #%d accepted", _i);
    ck_assert_msg(fg_ctx_add_header_n(&ctx, n, strlen(n), "v", 1) == FG_EINVAL,
                  "bad name #%d accepted by _n", _i);
    ck_assert_uint_eq(ctx.nheaders, 1);
}
END_TEST

static int add_header_handler(fg_ctx *ctx, void *arg) {
    (void)arg;
    return fg_ctx_add_header(ctx, "x-late", "1") == FG_ESTATE ? 0 : -4242;
}

/* Headers describe the request as it arrives: none may be added once it entered. */
START_TEST(test_header_after_enter) {
    fg_chain *chain = empty_chain();
    fg_ctx ctx;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-early", "1"), 0);
    ck_assert_int_eq(fg_chain_enter(chain, &ctx), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-late", "1"), FG_ESTATE);
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, "x-late", 6, "1", 1), FG_ESTATE);
    ck_assert_uint_eq(ctx.nheaders, 1);
    /* Reading them is fine. */
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-early", &v), 0);
    ck_assert_int_eq(fg_chain_exit(chain, &ctx, 0), 0);

    /* Inside fg_chain_call too, as the handler sees it. */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, add_header_handler, NULL), 0);
    ck_assert_uint_eq(ctx.nheaders, 0);
    fg_chain_free(chain);
}
END_TEST

/* Values are not tokens: anything but the length bound is the caller's business. */
START_TEST(test_header_value_any_bytes) {
    static const char value[] = "a b:c,d;\"e\"\t/\\";
    fg_ctx ctx;
    fg_str v;

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-v", value), 0);
    ck_assert_int_eq(fg_ctx_header(&ctx, "x-v", &v), 0);
    ck_assert_ptr_eq(v.ptr, value);
    ck_assert_uint_eq(v.len, strlen(value));
}
END_TEST

static int ffi_ok_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

/* The accessors bindings use read the same decision the struct holds. */
START_TEST(test_ffi_accessors) {
    static const char cfg[] =
        "{\"version\":\"ffi\",\"limiters\":{\"one\":{\"rate\":\"1/s\",\"burst\":1}},"
        "\"chain\":[\"trace\",{\"limiter\":\"one\"}],"
        "\"routes\":[{\"name\":\"r\",\"match\":{\"path\":{\"prefix\":\"/\"}},"
        "\"split\":{\"key\":{\"header\":\"u\"},\"targets\":[{\"name\":\"t\",\"weight\":1,"
        "\"handler\":\"ok\"}]}}]}";
    fg_registry *reg;
    fg_runtime *rt;
    fg_ctx *ctx = NULL;
    char id[33];
    fg_ctx stack_ctx;

    ck_assert_int_eq(fg_ctx_new(NULL), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_new(&ctx), 0);
    ck_assert_ptr_nonnull(ctx);
    ck_assert_int_eq(fg_ctx_status(ctx), 0);
    ck_assert_ptr_null(fg_ctx_route(ctx));
    ck_assert_int_eq(fg_ctx_trace_id(ctx, id, sizeof(id)), FG_ENOTFOUND);
    ck_assert_str_eq(id, "");

    ck_assert_int_eq(fg_registry_new(&reg), 0);
    ck_assert_int_eq(fg_registry_add_handler(reg, "ok", ffi_ok_handler, NULL), 0);
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_load_json(rt, reg, cfg, strlen(cfg), NULL), 0);

    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/a"), 0);
    ck_assert_int_eq(fg_ctx_add_header(ctx, "u", "alice"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, ctx, NULL, NULL), 0);
    ck_assert_int_eq(fg_ctx_status(ctx), 0);
    ck_assert_str_eq(fg_ctx_route(ctx), "r");
    ck_assert_str_eq(fg_ctx_target(ctx), "t");
    ck_assert_ptr_null(fg_ctx_rejected_by(ctx));
    ck_assert_int_eq(fg_ctx_trace_id(ctx, id, sizeof(id)), 0);
    ck_assert_uint_eq(strlen(id), 32);
    ck_assert_int_eq(fg_ctx_trace_id(ctx, id, 32), FG_ETOOLONG);
    {
        char want[33];
        th_tohex(ctx->trace.trace_id, 16, want);
        ck_assert_int_eq(fg_ctx_trace_id(ctx, id, sizeof(id)), 0);
        ck_assert_str_eq(id, want);
    }

    /* The bucket held one token: the next request is rejected by the limiter. */
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/a"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, ctx, NULL, NULL), FG_ELIMITED);
    ck_assert_int_eq(fg_ctx_status(ctx), FG_ELIMITED);
    ck_assert_str_eq(fg_ctx_rejected_by(ctx), "one");
    ck_assert_uint_gt(fg_ctx_retry_after(ctx), 0);
    ck_assert_uint_eq(fg_ctx_retry_after(ctx), ctx->retry_after_ns);
    ck_assert_uint_eq(fg_ctx_delay(ctx), 0);

    /* A stack ctx reads the same way; NULL is answered, not crashed on. */
    ck_assert_int_eq(fg_ctx_init(&stack_ctx, "GET", "/"), 0);
    ck_assert_uint_eq(fg_ctx_delay(&stack_ctx), 0);
    ck_assert_int_eq(fg_ctx_status(NULL), FG_EINVAL);
    ck_assert_ptr_null(fg_ctx_route(NULL));
    ck_assert_ptr_null(fg_ctx_target(NULL));
    ck_assert_ptr_null(fg_ctx_rejected_by(NULL));
    ck_assert_uint_eq(fg_ctx_retry_after(NULL), 0);
    ck_assert_uint_eq(fg_ctx_delay(NULL), 0);
    ck_assert_int_eq(fg_ctx_trace_id(NULL, id, sizeof(id)), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_trace_id(ctx, NULL, 33), FG_EINVAL);

    fg_runtime_free(rt);
    fg_registry_free(reg);
    fg_ctx_free(ctx);
    fg_ctx_free(NULL);
}
END_TEST

struct ffi_reload {
    fg_runtime *rt;
    fg_registry *reg;
};

static const char ffi_cfg_a[] =
    "{\"version\":\"a\",\"limiters\":{\"one\":{\"rate\":\"1/h\",\"burst\":1}},"
    "\"chain\":[{\"limiter\":\"one\"}],"
    "\"routes\":[{\"name\":\"route-a\",\"handler\":\"reload\"}]}";
static const char ffi_cfg_b[] =
    "{\"version\":\"b\",\"limiters\":{\"one\":{\"rate\":\"1/h\",\"burst\":1}},"
    "\"chain\":[{\"limiter\":\"one\"}],"
    "\"routes\":[{\"name\":\"route-b\",\"handler\":\"reload\"}]}";

static const char ffi_cfg_c[] = "{\"version\":\"c\",\"chain\":[],\"routes\":[{\"name\":"
                                "\"route-c\",\"handler\":\"reload\"}]}";

/* Reload twice from inside the handler: the first swap retires the chain the
 * request runs on, the second one's poll may free it once the call is over. */
static int ffi_reload_handler(fg_ctx *ctx, void *arg) {
    struct ffi_reload *r = arg;
    (void)ctx;
    if (fg_runtime_load_json(r->rt, r->reg, ffi_cfg_b, strlen(ffi_cfg_b), NULL) != 0)
        return -4242;
    return fg_runtime_load_json(r->rt, r->reg, ffi_cfg_a, strlen(ffi_cfg_a), NULL) == 0
               ? 0
               : -4243;
}

static void ffi_reload_twice(struct ffi_reload *r) {
    ck_assert_int_eq(fg_runtime_load_json(r->rt, r->reg, ffi_cfg_b, strlen(ffi_cfg_b), NULL),
                     0);
    ck_assert_int_eq(fg_runtime_load_json(r->rt, r->reg, ffi_cfg_a, strlen(ffi_cfg_a), NULL),
                     0);
    ck_assert_int_eq(fg_runtime_load_json(r->rt, r->reg, ffi_cfg_b, strlen(ffi_cfg_b), NULL),
                     0);
}

/* Names read after a request finished stay valid across the reloads that
 * free its chain (an AddressSanitizer build sees any read of freed memory). */
START_TEST(test_names_outlive_reload) {
    struct ffi_reload r;
    fg_ctx *ctx;
    char before[64];

    ck_assert_int_eq(fg_ctx_new(&ctx), 0);
    ck_assert_int_eq(fg_registry_new(&r.reg), 0);
    ck_assert_int_eq(fg_registry_add_handler(r.reg, "reload", ffi_reload_handler, &r), 0);
    ck_assert_int_eq(fg_runtime_new(&r.rt), 0);
    ck_assert_int_eq(fg_runtime_load_json(r.rt, r.reg, ffi_cfg_a, strlen(ffi_cfg_a), NULL), 0);

    /* Split API: admitted, reloads while in flight, exit frees the old chain. */
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_set_deadline(ctx, fg_clock_monotonic_now(NULL) + 60 * FG_NS_PER_S),
                     1);
    ck_assert_int_eq(fg_runtime_enter(r.rt, ctx), 0);
    ck_assert_str_eq(fg_ctx_route(ctx), "route-a");
    ffi_reload_twice(&r);
    ck_assert_int_eq(fg_runtime_exit(r.rt, ctx, 0), 0);
    ffi_reload_twice(&r);
    ck_assert_str_eq(fg_ctx_route(ctx), "route-a");
    ck_assert_str_eq(fg_ctx_target(ctx), "route-a");
    /* The time left no longer asks the (freed) chain's clock. */
    ck_assert_uint_gt(fg_ctx_time_left(ctx), 0);
    ck_assert_uint_le(fg_ctx_time_left(ctx), 60 * FG_NS_PER_S);

    /* Split API, rejected: the limiter (carried by name) has no token left. */
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_enter(r.rt, ctx), FG_ELIMITED);
    snprintf(before, sizeof(before), "%s", fg_ctx_rejected_by(ctx));
    ffi_reload_twice(&r);
    ck_assert_str_eq(fg_ctx_rejected_by(ctx), before);
    ck_assert_str_eq(fg_ctx_rejected_by(ctx), "one");

    /* Sync call, reloaded during the call: names kept before the chain goes. */
    ck_assert_int_eq(fg_runtime_load_json(r.rt, r.reg, ffi_cfg_c, strlen(ffi_cfg_c), NULL), 0);
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_call(r.rt, ctx, NULL, NULL), 0);
    ffi_reload_twice(&r);
    ck_assert_str_eq(fg_ctx_route(ctx), "route-c");
    ck_assert_ptr_eq(fg_ctx_route(ctx), ctx->route);

    /* fg_ctx_init forgets them. */
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/"), 0);
    ck_assert_ptr_null(fg_ctx_route(ctx));
    ck_assert_ptr_null(fg_ctx_rejected_by(ctx));

    fg_runtime_free(r.rt);
    fg_registry_free(r.reg);
    fg_ctx_free(ctx);
}
END_TEST

Suite *fg_suite_ctx(void) {
    Suite *s = suite_create("ctx");
    TCase *tc;

    tc = tcase_create("init");
    tcase_add_test(tc, test_init_sets_and_resets);
    tcase_add_test(tc, test_init_again_resets);
    tcase_add_test(tc, test_init_null_method);
    tcase_add_test(tc, test_init_empty_method);
    tcase_add_test(tc, test_ctx_size);
    tcase_add_test(tc, test_init_n_not_terminated);
    tcase_add_test(tc, test_init_null_args);
    tcase_add_test(tc, test_method_length_bound);
    tcase_add_test(tc, test_path_length_bound);
    tcase_add_test(tc, test_failed_init_is_unusable);
    tcase_add_test(tc, test_zeroed_ctx_is_unusable);
    suite_add_tcase(s, tc);

    tc = tcase_create("method_token");
    tcase_add_loop_test(tc, test_method_bytes, 0, 16);
    tcase_add_loop_test(tc, test_good_method, 0,
                        (int)(sizeof(good_methods) / sizeof(good_methods[0])));
    tcase_add_loop_test(tc, test_bad_method, 0,
                        (int)(sizeof(bad_methods) / sizeof(bad_methods[0])));
    suite_add_tcase(s, tc);

    tc = tcase_create("headers");
    tcase_add_test(tc, test_header_add_lookup_case_insensitive);
    tcase_add_test(tc, test_header_lookup_exact_length);
    tcase_add_test(tc, test_header_duplicates_first_wins);
    tcase_add_test(tc, test_header_missing);
    tcase_add_test(tc, test_header_borrowed);
    tcase_add_test(tc, test_header_n_not_terminated);
    tcase_add_test(tc, test_header_null_value);
    tcase_add_test(tc, test_header_null_args);
    tcase_add_test(tc, test_header_count_bound);
    tcase_add_test(tc, test_header_name_length_bound);
    tcase_add_test(tc, test_header_value_length_bound);
    tcase_add_test(tc, test_header_value_any_bytes);
    tcase_add_test(tc, test_header_after_enter);
    suite_add_tcase(s, tc);

    tc = tcase_create("bindings");
    tcase_add_test(tc, test_ffi_accessors);
    tcase_add_test(tc, test_names_outlive_reload);
    suite_add_tcase(s, tc);

    tc = tcase_create("header_name_token");
    tcase_add_loop_test(tc, test_header_name_bytes, 0, 16);
    tcase_add_loop_test(tc, test_bad_header_name, 0,
                        (int)(sizeof(bad_names) / sizeof(bad_names[0])));
    suite_add_tcase(s, tc);

    return s;
}
