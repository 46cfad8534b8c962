/*
 * tests/fuzz/fuzz_route.c - libFuzzer target for route matching
 * (fg_router_match, fg_router_explain). The input is a request path (and,
 * after a NUL, a header value) matched against a fixed table of exact,
 * prefix, pattern and any-path routes with predicates and rules. The
 * indexed match must agree with explain's one-route-at-a-time walk, and
 * bound parameters must lie inside the path.
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

static int handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

static fg_router *table(void) {
    static fg_router *r;
    if (r != NULL)
        return r;
    static const struct {
        fg_path_kind kind;
        const char *path;
        const char *methods;
        const char *when;
    } routes[] = {
        {FG_PATH_EXACT, "/", NULL, NULL},
        {FG_PATH_PREFIX, "/api", "GET", "header[\"x-env\"] == \"gray\""},
        {FG_PATH_PATTERN, "/api/v1/:svc/items/:id", NULL, NULL},
        {FG_PATH_PATTERN, "/api/v1/:svc/*rest", "GET,POST", NULL},
        {FG_PATH_EXACT, "/api/v1/orders/items/7", NULL, NULL},
        {FG_PATH_PREFIX, "/static/", NULL, NULL},
        {FG_PATH_EXACT, "/a//b/", NULL, NULL},
        {FG_PATH_PATTERN, "/:a/:b/:c", NULL, "header[\"x-env\"].startsWith(\"g\")"},
        {FG_PATH_EXACT, "", NULL, NULL},
        {FG_PATH_PREFIX, "orders.", NULL, NULL},
        {FG_PATH_PATTERN, "orders/:id", NULL, NULL},
        {FG_PATH_ANY, NULL, NULL, "meta.uid > 100"},
        {FG_PATH_PREFIX, "/", "DELETE", NULL},
    };
    CHECK(fg_router_new(&r) == 0);
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        char name[16];
        snprintf(name, sizeof(name), "r%zu", i);
        fg_route_target t[2] = {{"a", 9, handler, NULL, NULL, 0},
                                {"b", 1, handler, NULL, NULL, 0}};
        fg_route_spec s = FG_ROUTE_SPEC_INIT;
        s.name = name;
        s.path_kind = routes[i].kind;
        s.path = routes[i].path;
        s.methods = routes[i].methods;
        s.when = routes[i].when;
        s.targets = t;
        s.ntargets = 2;
        s.split_key = "x-user";
        CHECK(fg_router_add(r, &s, NULL) == 0);
    }
    CHECK(fg_router_build(r) == 0);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fg_router *r = table();
    const uint8_t *nul = memchr(data, '\0', size);
    size_t path_len = nul ? (size_t)(nul - data) : size;
    if (path_len > FG_PATH_MAX)
        return 0;
    char *path = malloc(path_len ? path_len : 1);
    CHECK(path != NULL);
    if (path_len)
        memcpy(path, data, path_len);
    fg_ctx ctx;
    static const char *methods[] = {"GET", "POST", "DELETE", ""};
    CHECK(fg_ctx_init_n(&ctx, methods[size % 4], strlen(methods[size % 4]), path, path_len) ==
          0);
    if (nul != NULL) {
        const char *v = (const char *)nul + 1;
        size_t vlen = size - path_len - 1;
        if (vlen <= FG_HEADER_VALUE_MAX) {
            CHECK(fg_ctx_add_header_n(&ctx, "x-env", 5, v, vlen) == 0);
            CHECK(fg_ctx_add_header_n(&ctx, "x-user", 6, v, vlen) == 0);
            CHECK(fg_ctx_add_header_n(&ctx, "uid", 3, v, vlen) == 0);
        }
    }
    fg_route_match m;
    int rc = fg_router_match(r, &ctx, &m);
    CHECK(rc == 0 || rc == FG_ENOROUTE || rc == FG_ETOOMANY);
    if (rc == 0) {
        CHECK(m.route >= 0 && m.target >= 0 && m.target < 2);
        for (uint32_t i = 0; i < ctx.nparams; i++)
            CHECK(ctx.params[i].value.ptr >= path &&
                  ctx.params[i].value.ptr + ctx.params[i].value.len <= path + path_len);
    }
    char buf[8192];
    size_t len;
    CHECK(fg_router_explain(r, &ctx, buf, sizeof(buf), &len) == 0);
    CHECK(strlen(buf) == len && strstr(buf, "\nmatched by the list") == NULL);
    if (rc == FG_ENOROUTE)
        CHECK(strstr(buf, "no route matched") != NULL || strstr(buf, "...\n") != NULL);
    free(path);
    return 0;
}
