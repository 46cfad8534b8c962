/*
 * tests/fuzz/fuzz_expr.c - libFuzzer target for rule expressions
 * (fg_expr_compile, fg_expr_eval). Every input is compiled or refused with a
 * code and a column inside it (or just past its end), without reading past
 * its length; a compiled rule evaluates to 0 or 1 against requests with and
 * without the values rules usually read.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <floodgate.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);                        \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *src = malloc(size ? size : 1);
    CHECK(src != NULL);
    if (size)
        memcpy(src, data, size);
    fg_expr *e = NULL;
    fg_parse_error err;
    int rc = fg_expr_compile(src, size, &e, &err);
    if (rc != 0) {
        CHECK(rc < 0 && e == NULL && err.code == rc);
        CHECK(rc == FG_EPARSE || rc == FG_ETOOLONG || rc == FG_ETOOMANY || rc == FG_ERANGE);
        CHECK(err.column >= 1 && err.column <= size + 1);
        CHECK(memchr(err.message, '\0', sizeof(err.message)) != NULL &&
              err.message[0] != '\0');
    } else {
        CHECK(e != NULL);
        fg_ctx bare, full;
        CHECK(fg_ctx_init(&bare, "GET", "/") == 0);
        CHECK(fg_ctx_init(&full, "POST", "/api/v1/orders?x=1&env=gray&k") == 0);
        CHECK(fg_ctx_add_header(&full, "x-env", "gray") == 0);
        CHECK(fg_ctx_add_header(&full, "uid", "1000001") == 0);
        CHECK(fg_ctx_add_header(&full, "geo", "beijing") == 0);
        CHECK(fg_ctx_add_header(&full, "age", "26.5") == 0);
        CHECK(fg_ctx_add_header(&full, "baggage", "env=gray,tenant=a%20b") == 0);
        int a = fg_expr_eval(e, &bare), b = fg_expr_eval(e, &full);
        CHECK((a == 0 || a == 1) && (b == 0 || b == 1));
        fg_expr_free(e);
    }
    free(src);
    return 0;
}
