/*
 * tests/check_config.c - the config compiler (floodgate/config.h): the
 * registry, a full config round trip through a runtime, the corpus of
 * broken configs with their exact messages (tests/config/bad/), a failed
 * load leaving the runtime as it was, limiter state carried over by name,
 * removed components freed, and a reload stress against request threads
 * (run it under TSAN=1 and SANITIZE=1 with CK_FORK=no). Cluster limiters
 * (tests/config/cluster/) without a Redis server: their errors, a config
 * that loads with Redis down and decides by its fallback, carry-over by
 * name, and fg_config_check never connecting.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <check.h>
#include <floodgate.h>

#include "suites.h"

uint64_t fg__config_live_components(void); /* lib/config.c test hook */

static int h_count[3];

static int h_a(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    __atomic_fetch_add(&h_count[0], 1, __ATOMIC_RELAXED);
    return 0;
}
static int h_b(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    __atomic_fetch_add(&h_count[1], 1, __ATOMIC_RELAXED);
    return 0;
}
static int h_c(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    __atomic_fetch_add(&h_count[2], 1, __ATOMIC_RELAXED);
    return 0;
}

/* A custom stage factory: "tag" wants {"id": integer}. */
static int tag_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)state;
    (void)ctx;
    *slot = 0;
    return 0;
}
static int tag_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    (void)state;
    (void)ctx;
    (void)outcome;
    (void)slot;
    return 0;
}
static const fg_stage_ops tag_ops = {"tag", tag_enter, tag_exit, NULL};

static int tag_factory(const char *json, size_t len, void *arg, fg_stage **out, char *why,
                       size_t cap) {
    (void)arg;
    if (len < 4 || strstr(json, "\"id\"") == NULL) {
        snprintf(why, cap, "tag: \"id\" is required");
        return FG_EINVAL;
    }
    return fg_stage_new(&tag_ops, NULL, "tag", out);
}

static fg_registry *make_registry(void) {
    fg_registry *r = NULL;
    ck_assert_int_eq(fg_registry_new(&r), 0);
    ck_assert_int_eq(fg_registry_add_handler(r, "a", h_a, NULL), 0);
    ck_assert_int_eq(fg_registry_add_handler(r, "b", h_b, NULL), 0);
    ck_assert_int_eq(fg_registry_add_handler(r, "c", h_c, NULL), 0);
    ck_assert_int_eq(fg_registry_add_stage(r, "tag", tag_factory, NULL), 0);
    return r;
}

static int load(fg_runtime *rt, const fg_registry *r, const char *text,
                fg_config_errors *errs) {
    return fg_runtime_load_json(rt, r, text, strlen(text), errs);
}

static int call(fg_runtime *rt, const char *method, const char *path, const char *hname,
                const char *hvalue, const char **route, const char **target) {
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, method, path), 0);
    if (hname != NULL)
        ck_assert_int_eq(fg_ctx_add_header(&ctx, hname, hvalue), 0);
    int rc = fg_runtime_call(rt, &ctx, NULL, NULL);
    if (route)
        *route = ctx.route;
    if (target)
        *target = ctx.target;
    return rc;
}

static char *errs_text(const fg_config_errors *e) {
    static char buf[32768];
    fg_config_errors_format(e, buf, sizeof(buf));
    return buf;
}

/* ---- registry ---------------------------------------------------------------------- */

START_TEST(test_registry) {
    fg_registry *r = NULL;
    ck_assert_int_eq(fg_registry_new(NULL), FG_EINVAL);
    ck_assert_int_eq(fg_registry_new(&r), 0);
    ck_assert_int_eq(fg_registry_add_handler(r, "x", h_a, NULL), 0);
    ck_assert_int_eq(fg_registry_add_handler(r, "x", h_b, NULL), FG_EEXIST);
    ck_assert_int_eq(fg_registry_add_handler(r, NULL, h_b, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_registry_add_handler(r, "", h_b, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_registry_add_handler(r, "y", NULL, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_registry_add_handler(NULL, "y", h_a, NULL), FG_EINVAL);
    char longname[FG_CONFIG_NAME_MAX + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    ck_assert_int_eq(fg_registry_add_handler(r, longname, h_a, NULL), FG_ETOOLONG);
    longname[FG_CONFIG_NAME_MAX] = '\0';
    ck_assert_int_eq(fg_registry_add_handler(r, longname, h_a, NULL), 0);
    /* many, to grow the arrays */
    for (int i = 0; i < 40; i++) {
        char n[16];
        snprintf(n, sizeof(n), "h%d", i);
        ck_assert_int_eq(fg_registry_add_handler(r, n, h_a, NULL), 0);
        ck_assert_int_eq(fg_registry_add_stage(r, n, tag_factory, NULL), 0);
    }
    ck_assert_int_eq(fg_registry_add_stage(r, "h3", tag_factory, NULL), FG_EEXIST);
    ck_assert_int_eq(fg_registry_add_stage(r, "z", NULL, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_registry_add_stage(r, NULL, tag_factory, NULL), FG_EINVAL);
    /* a handler and a stage kind may share a name */
    ck_assert_int_eq(fg_registry_add_stage(r, "x", tag_factory, NULL), 0);
    fg_registry_free(r);
    fg_registry_free(NULL);
}
END_TEST

START_TEST(test_format) {
    fg_config_errors e;
    memset(&e, 0, sizeof(e));
    char buf[256];
    ck_assert_uint_eq(fg_config_errors_format(&e, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "");
    e.count = 2;
    strcpy(e.items[0].path, "");
    strcpy(e.items[0].message, "syntax");
    e.items[0].line = 3;
    e.items[0].column = 7;
    strcpy(e.items[1].path, "a.b");
    strcpy(e.items[1].message, "bad");
    e.omitted = 5;
    size_t n = fg_config_errors_format(&e, buf, sizeof(buf));
    ck_assert_str_eq(buf, "syntax (line 3, column 7)\na.b: bad\n... and 5 more\n");
    ck_assert_uint_eq(n, strlen(buf));
    ck_assert_uint_eq(fg_config_errors_format(&e, buf, 5), 4);
    ck_assert_str_eq(buf, "synt");
    ck_assert_uint_eq(fg_config_errors_format(&e, NULL, 5), 0);
    ck_assert_uint_eq(fg_config_errors_format(NULL, buf, 5), 0);
    ck_assert_str_eq(buf, "");
}
END_TEST

/* ---- the round trip ------------------------------------------------------------------ */

static const char *full_config =
    "{\n"
    "  \"version\": \"full-1\",\n"
    "  \"limiters\": {\n"
    "    \"api\": {\"rate\": \"1/h\", \"burst\": 3},\n"
    "    \"obj\": {\"rate\": {\"rate\": 1000, \"per\": \"1s\"}, \"burst\": 100,\n"
    "             \"max_wait\": \"0ms\", \"tokens\": 1, \"shadow\": false},\n"
    "    \"warm\": {\"rate\": \"50/100ms\", \"burst\": 10, \"warmup\": \"1.5s\", "
    "\"cold_factor\": 3},\n"
    "    \"per_user\": {\"rate\": \"1/h\", \"burst\": 1, \"key\": {\"header\": \"x-user\"},\n"
    "                 \"max_keys\": 100, \"key_max\": 32, \"when_full\": \"reject\",\n"
    "                 \"missing\": \"admit\"}\n"
    "  },\n"
    "  \"breakers\": {\n"
    "    \"db\": {\"failure_ratio\": 0.5, \"slow_ratio\": 0.9, \"slow_call\": \"2s\",\n"
    "           \"min_requests\": 10, \"consecutive_failures\": 5,\n"
    "           \"window\": {\"time\": \"10s\", \"buckets\": 10}, \"open_for\": \"5s\",\n"
    "           \"max_open\": \"1m\", \"open_backoff\": 2, \"half_open_probes\": 3,\n"
    "           \"half_open_timeout\": \"2s\"},\n"
    "    \"count\": {\"window\": {\"count\": 50}, \"min_requests\": 10}\n"
    "  },\n"
    "  \"trace\": {\"sampler\": {\"parent\": {\"ratio\": 0.5}}, \"span_name\": \"svc\"},\n"
    "  \"chain\": [\"trace\", {\"breaker\": \"db\"}, {\"custom\": \"tag\", \"options\": "
    "{\"id\": 1}}],\n"
    "  \"routes\": [\n"
    "    {\"name\": \"limited\", \"match\": {\"path\": {\"exact\": \"/limited\"}},\n"
    "     \"stages\": [{\"limiter\": \"api\"}], \"handler\": \"a\"},\n"
    "    {\"name\": \"users\", \"match\": {\"path\": {\"pattern\": \"/users/:id\"}, "
    "\"methods\": [\"GET\", \"POST\"]},\n"
    "     \"stages\": [{\"limiter\": \"per_user\"}, {\"limiter\": \"obj\"}], \"handler\": "
    "\"b\"},\n"
    "    {\"name\": \"gray\", \"match\": {\"path\": {\"prefix\": \"/api\"},\n"
    "       \"headers\": {\"x-env\": {\"exact\": \"gray\"}, \"x-age\": {\"ge\": 18}, "
    "\"x-bot\": {\"present\": false}},\n"
    "       \"when\": \"method == 'GET' || method == 'PUT'\"},\n"
    "     \"handler\": \"c\"},\n"
    "    {\"name\": \"split\", \"match\": {\"path\": {\"prefix\": \"/api\"}},\n"
    "     \"split\": {\"key\": {\"header\": \"x-user\"}, \"salt\": \"s1\", \"targets\": [\n"
    "        {\"name\": \"old\", \"weight\": 10000, \"handler\": \"a\", \"stages\": "
    "[{\"breaker\": \"count\"}]},\n"
    "        {\"name\": \"new\", \"weight\": 0, \"handler\": \"b\", \"stages\": "
    "[{\"limiter\": \"warm\"}]}]}}\n"
    "  ]\n"
    "}\n";

START_TEST(test_round_trip) {
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_config_errors errs;
    int rc = load(rt, r, full_config, &errs);
    ck_assert_msg(rc == 0, "%s", errs_text(&errs));
    ck_assert_uint_eq(errs.count, 0);
    ck_assert_int_eq(fg_config_check(r, full_config, strlen(full_config), &errs), 0);
    ck_assert_int_eq(fg_config_check(NULL, full_config, strlen(full_config), NULL), 0);
    char v[32];
    ck_assert_int_eq(fg_runtime_version(rt, v, sizeof(v)), 0);
    ck_assert_str_eq(v, "full-1");

    memset(h_count, 0, sizeof(h_count));
    const char *route, *target;
    /* the limiter: exactly burst (3) admitted, then limited */
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(call(rt, "GET", "/limited", NULL, NULL, &route, &target), 0);
        ck_assert_str_eq(route, "limited");
    }
    ck_assert_int_eq(call(rt, "GET", "/limited", NULL, NULL, NULL, NULL), FG_ELIMITED);
    ck_assert_int_eq(h_count[0], 3);
    /* a keyed limiter: one token per user */
    ck_assert_int_eq(call(rt, "GET", "/users/1", "x-user", "u1", &route, NULL), 0);
    ck_assert_str_eq(route, "users");
    ck_assert_int_eq(call(rt, "POST", "/users/1", "x-user", "u1", NULL, NULL), FG_ELIMITED);
    ck_assert_int_eq(call(rt, "GET", "/users/1", "x-user", "u2", NULL, NULL), 0);
    ck_assert_int_eq(call(rt, "GET", "/users/1", NULL, NULL, NULL, NULL), 0); /* missing */
    ck_assert_int_eq(call(rt, "DELETE", "/users/1", NULL, NULL, NULL, NULL), FG_ENOROUTE);
    ck_assert_int_eq(h_count[1], 3);
    /* predicates and the rule */
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/api/x"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-env", "gray"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-age", "20"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &ctx, NULL, NULL), 0);
    ck_assert_str_eq(ctx.route, "gray");
    ck_assert_int_eq(h_count[2], 1);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/api/x"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-env", "gray"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-age", "20"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-bot", "1"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &ctx, NULL, NULL), 0);
    ck_assert_str_eq(ctx.route, "split"); /* x-bot present: not gray */
    /* the split: all weight on "old" */
    for (int i = 0; i < 5; i++) {
        char u[16];
        snprintf(u, sizeof(u), "u%d", i);
        ck_assert_int_eq(call(rt, "PUT", "/api/y", "x-user", u, &route, &target), 0);
        ck_assert_str_eq(route, "split");
        ck_assert_str_eq(target, "old");
    }
    ck_assert_int_eq(call(rt, "GET", "/other", NULL, NULL, NULL, NULL), FG_ENOROUTE);
    fg_runtime_free(rt);
    fg_registry_free(r);
}
END_TEST

/* "handler" without routes: every request goes to it. */
START_TEST(test_handler_only) {
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_config_errors errs;
    const char *cfg = "{\"version\": \"h\", \"chain\": [], \"handler\": \"b\"}";
    ck_assert_int_eq(load(rt, r, cfg, &errs), 0);
    memset(h_count, 0, sizeof(h_count));
    ck_assert_int_eq(call(rt, NULL, "anything", NULL, NULL, NULL, NULL), 0);
    ck_assert_int_eq(call(rt, "GET", "/x/y", NULL, NULL, NULL, NULL), 0);
    ck_assert_int_eq(h_count[1], 2);
    ck_assert_int_eq(fg_runtime_load_json(NULL, r, cfg, strlen(cfg), &errs), FG_EINVAL);
    ck_assert_int_eq(fg_runtime_load_json(rt, NULL, cfg, strlen(cfg), &errs), FG_EINVAL);
    fg_runtime_free(rt);
    fg_registry_free(r);
}
END_TEST

/* ---- the corpus of broken configs ------------------------------------------------------ */

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = malloc(1 << 20);
    ck_assert_ptr_nonnull(buf);
    *len = fread(buf, 1, (1 << 20) - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every NAME.json of dir must give exactly NAME.expected's errors (at least
 * min files); checked without a registry unless the name says "reg". */
static void run_corpus(const char *dir, size_t min) {
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot open %s", dir);
    char *names[256];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 256) {
        size_t l = strlen(e->d_name);
        if (l > 5 && strcmp(e->d_name + l - 5, ".json") == 0)
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(names[0]), name_cmp);
    ck_assert_uint_ge(n, min);
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        char path[512], exp_path[512];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        snprintf(exp_path, sizeof(exp_path), "%s/%.*s.expected", dir,
                 (int)(strlen(names[i]) - 5), names[i]);
        size_t len = 0, elen = 0;
        char *text = read_all(path, &len);
        char *expected = read_all(exp_path, &elen);
        ck_assert_msg(text && expected, "missing %s or its .expected", path);
        fg_config_errors errs;
        /* checked without a registry unless the name says "reg" */
        int with_reg = strstr(names[i], "reg") != NULL;
        int rc = with_reg ? fg_runtime_load_json(rt, r, text, len, &errs)
                          : fg_config_check(NULL, text, len, &errs);
        const char *got = errs_text(&errs);
        if (rc != FG_ECONFIG || strcmp(got, expected) != 0) {
            fprintf(stderr, "%s: rc %d\n--- expected\n%s--- got\n%s", names[i], rc, expected,
                    got);
            failures++;
        }
        /* with the registry the same errors are found (plus any name errors) */
        ck_assert_int_eq(fg_config_check(r, text, len, NULL), FG_ECONFIG);
        free(text);
        free(expected);
        free(names[i]);
    }
    ck_assert_uint_eq(fg_runtime_generation(rt), 0);
    fg_runtime_free(rt);
    fg_registry_free(r);
    ck_assert_int_eq(failures, 0);
}

START_TEST(test_bad_corpus) {
    const char *dir = getenv("FG_CONFIG_CORPUS");
    run_corpus(dir != NULL ? dir : "tests/config/bad", 25);
}
END_TEST

START_TEST(test_limits_and_files) {
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_config_errors errs;
    ck_assert_int_eq(fg_config_check(NULL, "{}", (size_t)FG_CONFIG_MAX_BYTES + 1, &errs),
                     FG_ETOOLONG);
    ck_assert_int_eq(fg_config_check(NULL, NULL, 3, &errs), FG_EINVAL);
    ck_assert_int_eq(fg_runtime_load_file(rt, r, "/nonexistent/cfg.json", &errs), FG_ESYS);
    ck_assert_str_eq(errs_text(&errs),
                     "/nonexistent/cfg.json: cannot read: No such file or directory\n");
    char tmpl[] = "/tmp/fgcfgXXXXXX";
    int fd = mkstemp(tmpl);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"version\": \"file\", \"chain\": [], \"handler\": \"a\"}", f);
    fclose(f);
    ck_assert_int_eq(fg_runtime_load_file(rt, r, tmpl, &errs), 0);
    char v[16];
    ck_assert_int_eq(fg_runtime_version(rt, v, sizeof(v)), 0);
    ck_assert_str_eq(v, "file");
    remove(tmpl);
    fg_runtime_free(rt);
    fg_registry_free(r);
}
END_TEST

/* ---- failed loads and carried state ----------------------------------------------------- */

START_TEST(test_failed_load_keeps_old) {
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_config_errors errs;
    ck_assert_int_eq(
        load(rt, r, "{\"version\": \"good\", \"chain\": [], \"handler\": \"a\"}", &errs), 0);
    uint64_t gen = fg_runtime_generation(rt);
    ck_assert_int_eq(load(rt, r,
                          "{\"version\": \"bad\", \"chain\": [{\"limiter\": \"nope\"}], "
                          "\"handler\": \"zz\"}",
                          &errs),
                     FG_ECONFIG);
    ck_assert_str_eq(errs_text(&errs), "chain[0].limiter: unknown limiter \"nope\"\n"
                                       "handler: unknown handler \"zz\" (not registered)\n");
    ck_assert_uint_eq(fg_runtime_generation(rt), gen);
    char v[16];
    ck_assert_int_eq(fg_runtime_version(rt, v, sizeof(v)), 0);
    ck_assert_str_eq(v, "good");
    memset(h_count, 0, sizeof(h_count));
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), 0);
    ck_assert_int_eq(h_count[0], 1);
    fg_runtime_free(rt);
    fg_registry_free(r);
}
END_TEST

static int take(fg_runtime *rt, int n) {
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += call(rt, "GET", "/", NULL, NULL, NULL, NULL) == 0;
    return ok;
}

static const char *carry_fmt = "{\"version\": \"%s\", \"limiters\": {\"api\": {\"rate\": "
                               "\"%s\", \"burst\": %d%s}}, \"chain\": [{\"limiter\": "
                               "\"api\"}], \"handler\": \"a\"}";

static int load_carry(fg_runtime *rt, fg_registry *r, const char *rate, int burst,
                      const char *extra) {
    char buf[512];
    snprintf(buf, sizeof(buf), carry_fmt, rate, rate, burst, extra);
    fg_config_errors errs;
    int rc = load(rt, r, buf, &errs);
    ck_assert_msg(rc == 0, "%s", errs_text(&errs));
    return rc;
}

/* What is observable: a limiter keeps its tokens across a rate change and
 * across a burst change (cut to a smaller burst); a change of any other
 * setting gives a fresh, full bucket; a removed limiter is freed. */
START_TEST(test_carry_over) {
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    uint64_t live0 = fg__config_live_components();
    load_carry(rt, r, "1/h", 5, "");
    ck_assert_uint_eq(fg__config_live_components(), live0 + 1);
    ck_assert_int_eq(take(rt, 3), 3); /* 2 left */
    load_carry(rt, r, "2/h", 5, "");  /* rate changed: tokens kept */
    ck_assert_uint_eq(fg__config_live_components(), live0 + 1);
    ck_assert_int_eq(take(rt, 5), 2);
    load_carry(rt, r, "2/h", 8, ""); /* burst grown: still empty */
    ck_assert_int_eq(take(rt, 5), 0);
    load_carry(rt, r, "2/h", 8, ", \"max_wait\": \"1ms\""); /* another setting: fresh */
    ck_assert_int_eq(take(rt, 10), 8);
    load_carry(rt, r, "2/h", 8, ", \"max_wait\": \"1ms\", \"tokens\": 2"); /* stage only */
    ck_assert_int_eq(take(rt, 1), 0);
    load_carry(rt, r, "2/h", 4, ", \"max_wait\": \"1ms\", \"shadow\": true"); /* shadow */
    ck_assert_int_eq(take(rt, 3), 3);
    /* an identical reload keeps everything */
    load_carry(rt, r, "1/h", 5, "");
    ck_assert_int_eq(take(rt, 10), 5);
    load_carry(rt, r, "1/h", 5, "");
    ck_assert_int_eq(take(rt, 1), 0);
    /* removed: freed once the snapshot that used it is gone */
    fg_config_errors errs;
    ck_assert_int_eq(
        load(rt, r, "{\"version\": \"x\", \"chain\": [], \"handler\": \"a\"}", &errs), 0);
    ck_assert_int_eq(
        load(rt, r, "{\"version\": \"y\", \"chain\": [], \"handler\": \"a\"}", &errs), 0);
    ck_assert_int_eq(
        load(rt, r, "{\"version\": \"z\", \"chain\": [], \"handler\": \"a\"}", &errs), 0);
    ck_assert_uint_eq(fg__config_live_components(), live0);
    /* a keyed limiter carried with a new rate; a breaker with a new threshold */
    const char *k1 = "{\"version\": \"k\", \"limiters\": {\"u\": {\"rate\": \"1/h\", "
                     "\"burst\": 2, \"key\": \"path\", \"max_keys\": 10}}, \"breakers\": "
                     "{\"b\": {\"min_requests\": 5}}, \"chain\": [{\"limiter\": \"u\"}, "
                     "{\"breaker\": \"b\"}], \"handler\": \"a\"}";
    const char *k2 = "{\"version\": \"k\", \"limiters\": {\"u\": {\"rate\": \"2/h\", "
                     "\"burst\": 2, \"key\": \"path\", \"max_keys\": 10}}, \"breakers\": "
                     "{\"b\": {\"min_requests\": 6}}, \"chain\": [{\"limiter\": \"u\"}, "
                     "{\"breaker\": \"b\"}], \"handler\": \"a\"}";
    ck_assert_int_eq(load(rt, r, k1, &errs), 0);
    ck_assert_int_eq(take(rt, 3), 2);
    ck_assert_int_eq(load(rt, r, k2, &errs), 0);
    ck_assert_int_eq(take(rt, 1), 0);
    fg_runtime_free(rt);
    ck_assert_uint_eq(fg__config_live_components(), live0);
    fg_registry_free(r);
}
END_TEST

/* A failed load applies no pending change. */
START_TEST(test_failed_load_no_pending) {
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    load_carry(rt, r, "1/h", 2, "");
    ck_assert_int_eq(take(rt, 2), 2);
    char buf[512];
    snprintf(buf, sizeof(buf), carry_fmt, "v", "1/ms", 2, ", \"bogus\": 1");
    fg_config_errors errs;
    ck_assert_int_eq(load(rt, r, buf, &errs), FG_ECONFIG);
    ck_assert_int_eq(take(rt, 1), 0); /* still 1/h */
    fg_runtime_free(rt);
    fg_registry_free(r);
}
END_TEST

/* ---- the reload stress ---------------------------------------------------------------- */

struct stress {
    fg_runtime *rt;
    int stop; /* atomic */
    long calls, bad;
};

static void *requester(void *arg) {
    struct stress *s = arg;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", (s->calls & 1) ? "/one" : "/two");
        int rc = fg_runtime_call(s->rt, &ctx, NULL, NULL);
        if (rc != 0 && rc != FG_ELIMITED && rc != FG_ENOROUTE)
            s->bad++;
        s->calls++;
    }
    return NULL;
}

static const char *stress_a =
    "{\"version\": \"A\", \"limiters\": {\"l\": {\"rate\": \"1000/s\", \"burst\": 50}},"
    " \"breakers\": {\"b\": {\"min_requests\": 5}},"
    " \"chain\": [\"trace\", {\"limiter\": \"l\"}], \"routes\": ["
    " {\"name\": \"one\", \"match\": {\"path\": {\"exact\": \"/one\"}}, \"stages\": "
    "[{\"breaker\": \"b\"}], \"handler\": \"a\"},"
    " {\"name\": \"two\", \"split\": {\"targets\": [{\"name\": \"x\", \"weight\": 1, "
    "\"handler\": \"b\"}, {\"name\": \"y\", \"weight\": 1, \"handler\": \"c\"}]}}]}";
static const char *stress_b =
    "{\"version\": \"B\", \"limiters\": {\"l\": {\"rate\": \"2000/s\", \"burst\": 20},"
    " \"m\": {\"rate\": \"10/ms\", \"burst\": 5, \"max_wait\": \"1ms\"}},"
    " \"breakers\": {\"b\": {\"min_requests\": 7}},"
    " \"chain\": [{\"limiter\": \"l\"}], \"routes\": ["
    " {\"name\": \"one\", \"match\": {\"path\": {\"prefix\": \"/one\"}}, \"stages\": "
    "[{\"limiter\": \"m\"}, {\"breaker\": \"b\"}], \"handler\": \"b\"}]}";
static const char *stress_bad =
    "{\"version\": \"BAD\", \"limiters\": {\"l\": {\"rate\": \"fast\", \"burst\": 0}},"
    " \"chain\": [], \"handler\": \"a\"}";

START_TEST(test_reload_stress) {
    fg_registry *r = make_registry();
    struct stress s[2];
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_config_errors errs;
    ck_assert_int_eq(load(rt, r, stress_a, &errs), 0);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        s[i] = (struct stress){rt, 0, 0, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, requester, &s[i]), 0);
    }
    const char *last = "A";
    for (int i = 1; i <= 1000; i++) {
        char v[8];
        if (i % 10 == 0) {
            ck_assert_int_eq(load(rt, r, stress_bad, &errs), FG_ECONFIG);
            ck_assert_uint_eq(errs.count, 2);
        } else {
            int b = i % 2;
            ck_assert_int_eq(load(rt, r, b ? stress_b : stress_a, &errs), 0);
            last = b ? "B" : "A";
        }
        ck_assert_int_eq(fg_runtime_version(rt, v, sizeof(v)), 0);
        ck_assert_str_eq(v, last);
    }
    for (int i = 0; i < 2; i++)
        __atomic_store_n(&s[i].stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(s[i].bad, 0);
        ck_assert_int_gt(s[i].calls, 0);
    }
    fg_runtime_free(rt);
    fg_registry_free(r);
}
END_TEST

static int h_fail(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return FG_EHANDLER;
}

struct events {
    int opened, modes;
    char name[16];
};

static void on_breaker(const char *name, const fg_breaker_event *ev, void *arg) {
    struct events *e = arg;
    if (ev->to == FG_BREAKER_OPEN && ev->from != FG_BREAKER_OPEN)
        e->opened++;
    if (ev->reason == FG_BREAKER_REASON_MANUAL)
        e->modes++;
    snprintf(e->name, sizeof(e->name), "%s", name);
}

/* A breaker marked shadow runs its state machine and rejects nothing; the
 * same breaker without the mark opens on the same failures. Both report
 * their opening, by name, to the runtime's breaker listener. */
START_TEST(test_breaker_shadow) {
    static const char *fmt =
        "{\"version\": \"s\", \"breakers\": {\"b\": {\"min_requests\": 5, \"failure_ratio\": "
        "0.5, \"window\": {\"count\": 10}, \"open_for\": \"1h\", \"shadow\": %s}}, \"chain\": "
        "[{\"breaker\": \"b\"}], \"handler\": \"fail\"}";
    for (int shadow = 0; shadow < 2; shadow++) {
        fg_registry *r = NULL;
        ck_assert_int_eq(fg_registry_new(&r), 0);
        ck_assert_int_eq(fg_registry_add_handler(r, "fail", h_fail, NULL), 0);
        fg_runtime *rt = NULL;
        ck_assert_int_eq(fg_runtime_new(&rt), 0);
        struct events ev = {0, 0, ""};
        ck_assert_int_eq(fg_runtime_set_breaker_listener(rt, on_breaker, &ev), 0);
        char text[512];
        snprintf(text, sizeof(text), fmt, shadow ? "true" : "false");
        fg_config_errors errs;
        ck_assert_int_eq(load(rt, r, text, &errs), 0);
        int failed = 0, rejected = 0;
        for (int i = 0; i < 20; i++) {
            int rc = call(rt, "GET", "/", NULL, NULL, NULL, NULL);
            failed += rc == FG_EHANDLER;
            rejected += rc == FG_EBREAKER;
        }
        if (shadow) {
            ck_assert_int_eq(failed, 20);
            ck_assert_int_eq(rejected, 0);
        } else {
            ck_assert_int_eq(failed, 5); /* opens at 5 calls, all failed */
            ck_assert_int_eq(rejected, 15);
        }
        ck_assert_int_eq(ev.opened, 1);
        ck_assert_str_eq(ev.name, "b");
        ck_assert_int_eq(fg_runtime_set_breaker_listener(rt, NULL, NULL), FG_ESTATE);
        fg_runtime_free(rt);
        fg_registry_free(r);
    }
}
END_TEST

/*
 * A breaker keeps its state and window across a reload that changes its
 * thresholds, its window's shape or its shadow mark; the runtime's listener
 * hears of no change the reload did not make.
 */
START_TEST(test_breaker_carry) {
    static const char *fmt =
        "{\"version\": \"c\", \"breakers\": {\"b\": {\"min_requests\": %d, \"failure_ratio\": "
        "0.5, \"window\": {\"count\": %d}, \"open_for\": \"%s\", \"shadow\": %s}}, "
        "\"chain\": [{\"breaker\": \"b\"}], \"handler\": \"fail\"}";
    fg_fake_clock *fake = NULL;
    ck_assert_int_eq(fg_fake_clock_new(UINT64_C(1000000000), &fake), 0);
    fg_registry *r = NULL;
    ck_assert_int_eq(fg_registry_new(&r), 0);
    ck_assert_int_eq(fg_registry_add_handler(r, "fail", h_fail, NULL), 0);
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_set_clock(rt, fg_fake_clock_as_clock(fake)), 0);
    struct events ev = {0, 0, ""};
    ck_assert_int_eq(fg_runtime_set_breaker_listener(rt, on_breaker, &ev), 0);
    char text[512];
    fg_config_errors errs;
#define LOAD_B(min, count, open_for, shadow)                                                  \
    do {                                                                                      \
        snprintf(text, sizeof(text), fmt, (min), (count), (open_for), (shadow));              \
        ck_assert_int_eq(load(rt, r, text, &errs), 0);                                        \
    } while (0)
    LOAD_B(10, 10, "1h", "false");
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_EHANDLER);
    /* min_requests 10 -> 6: the 4 failures are still in the window, so the
     * breaker opens after 2 more calls, not after 6. */
    LOAD_B(6, 10, "1h", "false");
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_EHANDLER);
    ck_assert_int_eq(ev.opened, 0);
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_EHANDLER);
    ck_assert_int_eq(ev.opened, 1);
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_EBREAKER);
    /* Another window size and open time: still open, until the old end. */
    LOAD_B(6, 20, "1m", "false");
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_EBREAKER);
    /* Shadow: admitted (and failing), the state machine still open. */
    LOAD_B(6, 20, "1m", "true");
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_EHANDLER);
    /* Enforced again: rejected, since the hour is not over. */
    LOAD_B(6, 20, "1m", "false");
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_EBREAKER);
    fg_fake_clock_advance(fake, UINT64_C(3600) * FG_NS_PER_S);
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_EHANDLER); /* a probe */
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_EBREAKER);
    ck_assert_int_eq(ev.opened, 2); /* the failed probe reopened it */
    ck_assert_int_eq(ev.modes, 2);  /* shadow on, shadow off */
#undef LOAD_B
    fg_runtime_free(rt);
    fg_registry_free(r);
    fg_fake_clock_free(fake);
}
END_TEST

/* The handler's view of the clock, to see an injected delay. */
static uint64_t seen_ns;
static fg_fake_clock *seen_clock;
static int h_time(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    seen_ns = fg_fake_clock_now(seen_clock);
    return 0;
}

/*
 * Fault stages from a config: an abort aimed by header, with its code and
 * retry-after; a delay the sync chain sleeps on the runtime's clock; the
 * shadow mark; and a seed that makes a 50% choice reproducible.
 */
START_TEST(test_fault_config) {
    ck_assert_int_eq(fg_fake_clock_new(UINT64_C(1000000000), &seen_clock), 0);
    fg_registry *r = NULL;
    ck_assert_int_eq(fg_registry_new(&r), 0);
    ck_assert_int_eq(fg_registry_add_handler(r, "t", h_time, NULL), 0);
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_set_clock(rt, fg_fake_clock_as_clock(seen_clock)), 0);
    fg_config_errors errs;
    const char *cfg =
        "{\"version\": \"f\", \"faults\": {"
        " \"gray\": {\"abort\": {\"percent\": 100, \"code\": \"overloaded\", \"retry_after\": "
        "\"2s\"}, \"header\": {\"name\": \"x-env\", \"value\": \"gray\"}},"
        " \"slow\": {\"delay\": {\"percent\": 100, \"duration\": \"5ms\"}, \"when\": "
        "\"method == 'POST'\"}},"
        " \"chain\": [{\"fault\": \"gray\"}, {\"fault\": \"slow\"}], \"handler\": \"t\"}";
    ck_assert_msg(load(rt, r, cfg, &errs) == 0, "%s", errs_text(&errs));
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-env", "gray"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &ctx, NULL, NULL), FG_EOVERLOADED);
    ck_assert_uint_eq(ctx.retry_after_ns, 2 * FG_NS_PER_S);
    ck_assert_str_eq(fg_stage_name(ctx.rejected_by), "gray");
    ck_assert_int_eq(call(rt, "GET", "/", "x-env", "blue", NULL, NULL), 0);
    uint64_t t0 = fg_fake_clock_now(seen_clock);
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), 0);
    ck_assert_uint_eq(seen_ns, t0); /* GET: not delayed */
    ck_assert_int_eq(call(rt, "POST", "/", NULL, NULL, NULL, NULL), 0);
    ck_assert_uint_eq(seen_ns, t0 + 5 * FG_NS_PER_MS);
    /* The metrics saw it: one overloaded rejection by "gray", one delay. */
    fg_metrics *m = fg_runtime_metrics(rt);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "gray", FG_EOVERLOADED), 1);
    fg_route_stats rs;
    ck_assert_int_eq(fg_metrics_route(m, "main", "default", &rs), 0);
    ck_assert_uint_eq(rs.delayed, 1);
    ck_assert_uint_eq(rs.delay_ns, 5 * FG_NS_PER_MS);

    /* Shadow: nothing injected. */
    const char *shadow =
        "{\"version\": \"s\", \"faults\": {\"gray\": {\"abort\": {\"percent\": "
        "100}, \"shadow\": true}}, \"chain\": [{\"fault\": \"gray\"}], "
        "\"handler\": \"t\"}";
    ck_assert_msg(load(rt, r, shadow, &errs) == 0, "%s", errs_text(&errs));
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), 0);

    /* A seed: two runtimes make the same 50% choices, request by request. */
    const char *seeded =
        "{\"version\": \"d\", \"faults\": {\"half\": {\"abort\": {\"percent\": "
        "50}, \"seed\": 12345}}, \"chain\": [{\"fault\": \"half\"}], "
        "\"handler\": \"t\"}";
    fg_runtime *rt2 = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt2), 0);
    ck_assert_int_eq(load(rt, r, seeded, &errs), 0);
    ck_assert_int_eq(load(rt2, r, seeded, &errs), 0);
    int aborted = 0;
    for (int i = 0; i < 200; i++) {
        int a = call(rt, "GET", "/", NULL, NULL, NULL, NULL);
        int b = call(rt2, "GET", "/", NULL, NULL, NULL, NULL);
        ck_assert_int_eq(a, b);
        aborted += a == FG_EINJECTED;
    }
    ck_assert_int_gt(aborted, 60); /* 100 expected; 60 is 5.7 sigma below */
    ck_assert_int_lt(aborted, 140);
    fg_runtime_free(rt2);
    fg_runtime_free(rt);
    fg_registry_free(r);
    fg_fake_clock_free(seen_clock);
}
END_TEST

/* A timeout stage from a config: the deadline it gives, shortened by an
 * inbound grpc-timeout header, and the chain's FG_ETIMEDOUT once a wait
 * would start the handler after it. */
START_TEST(test_timeout_config) {
    ck_assert_int_eq(fg_fake_clock_new(UINT64_C(1000000000), &seen_clock), 0);
    fg_registry *r = NULL;
    ck_assert_int_eq(fg_registry_new(&r), 0);
    ck_assert_int_eq(fg_registry_add_handler(r, "t", h_time, NULL), 0);
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_set_clock(rt, fg_fake_clock_as_clock(seen_clock)), 0);
    fg_config_errors errs;
    const char *cfg =
        "{\"version\": \"t\", \"faults\": {\"slow\": {\"delay\": {\"percent\": 100, "
        "\"duration\": \"150ms\"}, \"header\": {\"name\": \"x-slow\"}}},"
        " \"chain\": [{\"timeout\": {\"after\": \"100ms\", \"header\": \"grpc-timeout\"}},"
        " {\"fault\": \"slow\"}], \"handler\": \"t\"}";
    ck_assert_msg(load(rt, r, cfg, &errs) == 0, "%s", errs_text(&errs));
    uint64_t t0 = fg_fake_clock_now(seen_clock);
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &ctx, NULL, NULL), 0);
    ck_assert_uint_eq(ctx.deadline_ns, t0 + 100 * FG_NS_PER_MS);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "grpc-timeout", "20m"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &ctx, NULL, NULL), 0);
    ck_assert_uint_eq(ctx.deadline_ns, t0 + 20 * FG_NS_PER_MS);
    /* 150 ms of injected wait against 100 ms: out of time before the handler. */
    ck_assert_int_eq(call(rt, "GET", "/", "x-slow", "1", NULL, NULL), FG_ETIMEDOUT);
    ck_assert_uint_eq(fg_fake_clock_now(seen_clock), t0); /* nobody slept */
    fg_route_stats rs;
    ck_assert_int_eq(fg_metrics_route(fg_runtime_metrics(rt), "main", "default", &rs), 0);
    ck_assert_uint_eq(rs.rejected_by_code[-FG_ETIMEDOUT - 100], 1);
    fg_runtime_free(rt);
    fg_registry_free(r);
    fg_fake_clock_free(seen_clock);
}
END_TEST

/* Fallbacks from a config: a route's own takes its handler's failures and
 * its stages' rejections; the top-level one takes the rest (a rejection
 * before any route was chosen, no route). */
static int fb_log[4], fb_codes[4];
static int fb_cached(fg_ctx *ctx, int code, void *arg) {
    (void)ctx;
    (void)arg;
    fb_codes[fb_log[0]++ % 4] = code;
    return 0; /* served from a cache */
}
static int fb_degraded(fg_ctx *ctx, int code, void *arg) {
    (void)ctx;
    (void)arg;
    fb_log[1]++;
    return code;
}

START_TEST(test_fallback_config) {
    fg_registry *r = make_registry();
    ck_assert_int_eq(fg_registry_add_handler(r, "fail", h_fail, NULL), 0);
    ck_assert_int_eq(fg_registry_add_fallback(r, "cached", fb_cached, NULL), 0);
    ck_assert_int_eq(fg_registry_add_fallback(r, "degraded", fb_degraded, NULL), 0);
    ck_assert_int_eq(fg_registry_add_fallback(r, "cached", fb_cached, NULL), FG_EEXIST);
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_config_errors errs;
    const char *cfg =
        "{\"version\": \"fb\", \"fallback\": \"degraded\", \"limiters\": {\"one\": {\"rate\": "
        "\"1/h\", \"burst\": 1}}, \"chain\": [], \"routes\": ["
        " {\"name\": \"f\", \"match\": {\"path\": {\"exact\": \"/f\"}}, \"handler\": "
        "\"fail\", "
        "\"fallback\": \"cached\"},"
        " {\"name\": \"l\", \"match\": {\"path\": {\"exact\": \"/l\"}}, \"stages\": "
        "[{\"limiter\": \"one\"}], \"handler\": \"a\", \"fallback\": \"cached\"},"
        " {\"name\": \"x\", \"match\": {\"path\": {\"exact\": \"/x\"}}, \"handler\": "
        "\"fail\"}]}";
    ck_assert_msg(load(rt, r, cfg, &errs) == 0, "%s", errs_text(&errs));
    memset(fb_log, 0, sizeof(fb_log));
    ck_assert_int_eq(call(rt, "GET", "/f", NULL, NULL, NULL, NULL), 0); /* cached */
    ck_assert_int_eq(fb_codes[0], FG_EHANDLER);
    ck_assert_int_eq(call(rt, "GET", "/l", NULL, NULL, NULL, NULL), 0); /* admitted */
    ck_assert_int_eq(call(rt, "GET", "/l", NULL, NULL, NULL, NULL), 0); /* limited: cached */
    ck_assert_int_eq(fb_codes[1], FG_ELIMITED);
    ck_assert_int_eq(fb_log[0], 2);
    ck_assert_int_eq(call(rt, "GET", "/x", NULL, NULL, NULL, NULL), FG_EHANDLER);
    ck_assert_int_eq(call(rt, "GET", "/nowhere", NULL, NULL, NULL, NULL), FG_ENOROUTE);
    ck_assert_int_eq(fb_log[1], 2); /* degraded saw both */
    /* An unknown fallback is an error with its path. */
    const char *bad = "{\"version\": \"b\", \"fallback\": \"nope\", \"chain\": [], "
                      "\"routes\": [{\"name\": \"r\", \"handler\": \"a\", \"fallback\": "
                      "\"gone\"}]}";
    ck_assert_int_eq(load(rt, r, bad, &errs), FG_ECONFIG);
    ck_assert_str_eq(errs_text(&errs), "fallback: unknown fallback \"nope\" (not registered)\n"
                                       "routes[0].fallback: unknown fallback \"gone\" (not "
                                       "registered)\n");
    fg_runtime_free(rt);
    fg_registry_free(r);
}
END_TEST

/* A bulkhead from a config, and across a reload that raises its limit:
 * the same bulkhead, so a request in flight keeps its slot. */
START_TEST(test_bulkhead_config) {
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_config_errors errs;
    static const char *fmt =
        "{\"version\": \"b\", \"bulkheads\": {\"db\": {\"max_concurrent\": "
        "%d}}, \"chain\": [{\"bulkhead\": \"db\"}], \"handler\": \"a\"}";
    char text[256];
    snprintf(text, sizeof(text), fmt, 1);
    ck_assert_msg(load(rt, r, text, &errs) == 0, "%s", errs_text(&errs));
    fg_ctx c1, c2, c3;
    ck_assert_int_eq(fg_ctx_init(&c1, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_init(&c2, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_init(&c3, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_enter(rt, &c1), 0);
    ck_assert_int_eq(fg_runtime_enter(rt, &c2), FG_EOVERLOADED);
    ck_assert_str_eq(fg_stage_name(c2.rejected_by), "db");
    snprintf(text, sizeof(text), fmt, 2);
    ck_assert_msg(load(rt, r, text, &errs) == 0, "%s", errs_text(&errs));
    ck_assert_int_eq(fg_ctx_init(&c2, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_enter(rt, &c2), 0); /* c1 still holds one of the 2 */
    ck_assert_int_eq(fg_runtime_enter(rt, &c3), FG_EOVERLOADED);
    ck_assert_int_eq(fg_route_dispatch(&c1), 0);
    ck_assert_int_eq(fg_runtime_exit(rt, &c1, 0), 0);
    ck_assert_int_eq(fg_runtime_exit(rt, &c2, 0), 0);
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), 0);
    /* Errors: a missing limit, an unknown key, an unknown reference. */
    const char *bad = "{\"version\": \"x\", \"bulkheads\": {\"p\": {\"max_wait\": \"1s\", "
                      "\"size\": 3}}, \"chain\": [{\"bulkhead\": \"q\"}], \"handler\": \"a\"}";
    ck_assert_int_eq(load(rt, r, bad, &errs), FG_ECONFIG);
    ck_assert_str_eq(
        errs_text(&errs),
        "bulkheads.p.size: unknown key (expected one of: max_concurrent, max_wait, "
        "shadow)\nbulkheads.p.max_concurrent: required\nchain[0].bulkhead: unknown "
        "bulkhead \"q\"\n");
    fg_runtime_free(rt);
    fg_registry_free(r);
}
END_TEST

/* A retry stage from a config: attempts at the backoff's exact times (no
 * jitter) on the runtime's fake clock, and a budget that refuses. */
static uint64_t attempt_at[8];
static int attempts, fail_first;
static int h_flaky(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    attempt_at[attempts % 8] = fg_fake_clock_now(seen_clock);
    return attempts++ < fail_first ? FG_EHANDLER : 0;
}

START_TEST(test_retry_config) {
    ck_assert_int_eq(fg_fake_clock_new(UINT64_C(1000000000), &seen_clock), 0);
    fg_registry *r = NULL;
    ck_assert_int_eq(fg_registry_new(&r), 0);
    ck_assert_int_eq(fg_registry_add_handler(r, "flaky", h_flaky, NULL), 0);
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_set_clock(rt, fg_fake_clock_as_clock(seen_clock)), 0);
    fg_config_errors errs;
    const char *cfg =
        "{\"version\": \"r\", \"retry_budgets\": {\"b\": {\"ratio\": 0, \"min_per_sec\": 1, "
        "\"ttl\": \"1s\"}}, \"chain\": [{\"retry\": {\"attempts\": 3, \"backoff\": \"10ms\", "
        "\"jitter\": \"none\", \"budget\": \"b\"}}], \"handler\": \"flaky\"}";
    ck_assert_msg(load(rt, r, cfg, &errs) == 0, "%s", errs_text(&errs));
    uint64_t t0 = fg_fake_clock_now(seen_clock);
    attempts = 0;
    fail_first = 1;
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), 0);
    ck_assert_int_eq(attempts, 2);
    ck_assert_uint_eq(attempt_at[0], t0);
    ck_assert_uint_eq(attempt_at[1], t0 + 10 * FG_NS_PER_MS); /* e(1) = 10 ms */
    /* The budget's floor (1 a second, nothing from deposits) is spent. */
    attempts = 0;
    fail_first = 5;
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_EHANDLER);
    ck_assert_int_eq(attempts, 1);
    fg_runtime_free(rt);
    fg_registry_free(r);
    fg_fake_clock_free(seen_clock);
}
END_TEST

/* An adaptive limit from a config: its initial limit holds until the first
 * update, and a reload with the same options keeps the same limit (and the
 * requests in flight through it). */
START_TEST(test_adaptive_config) {
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_config_errors errs;
    const char *cfg = "{\"version\": \"%s\", \"adaptive_limits\": {\"svc\": {\"algorithm\": "
                      "\"aimd\", \"initial\": 2, \"min\": 1, \"max\": 10}}, \"chain\": "
                      "[{\"adaptive\": \"svc\"}], \"handler\": \"a\"}";
    char text[512];
    snprintf(text, sizeof(text), cfg, "1");
    ck_assert_msg(load(rt, r, text, &errs) == 0, "%s", errs_text(&errs));
    fg_ctx c[3];
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(fg_ctx_init(&c[i], "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_enter(rt, &c[0]), 0);
    snprintf(text, sizeof(text), cfg, "2"); /* same options: the same limit */
    ck_assert_msg(load(rt, r, text, &errs) == 0, "%s", errs_text(&errs));
    ck_assert_int_eq(fg_runtime_enter(rt, &c[1]), 0);
    ck_assert_int_eq(fg_runtime_enter(rt, &c[2]), FG_EOVERLOADED);
    ck_assert_str_eq(fg_stage_name(c[2].rejected_by), "svc");
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(fg_route_dispatch(&c[i]), 0);
        ck_assert_int_eq(fg_runtime_exit(rt, &c[i], 0), 0);
    }
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), 0);
    fg_runtime_free(rt);
    fg_registry_free(r);
}
END_TEST

/* Configs compiled for a runtime read its clock: a fake one makes a
 * limiter's refill exact. The clock is fixed once anything is loaded. */
START_TEST(test_runtime_clock) {
    fg_fake_clock *fake = NULL;
    ck_assert_int_eq(fg_fake_clock_new(UINT64_C(1000000000), &fake), 0);
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_set_clock(rt, fg_fake_clock_as_clock(fake)), 0);
    fg_config_errors errs;
    ck_assert_int_eq(
        load(rt, r,
             "{\"version\": \"c\", \"limiters\": {\"l\": {\"rate\": \"1/s\", "
             "\"burst\": 1}}, \"chain\": [{\"limiter\": \"l\"}], \"handler\": \"a\"}",
             &errs),
        0);
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), 0);
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_ELIMITED);
    fg_fake_clock_advance(fake, UINT64_C(999999999));
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_ELIMITED);
    fg_fake_clock_advance(fake, 1);
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), 0);
    ck_assert_int_eq(fg_runtime_set_clock(rt, fg_clock_monotonic()), FG_ESTATE);
    fg_clock none = {NULL, NULL, NULL};
    ck_assert_int_eq(fg_runtime_set_clock(rt, none), FG_EINVAL);
    fg_runtime_free(rt);
    fg_registry_free(r);
    fg_fake_clock_free(fake);
}
END_TEST

/* ---- cluster limiters ------------------------------------------------------------ */

/* A loopback port of our own: bound, and listening (never accepting) only
 * when `listening`; bound and not listening, it refuses connections. */
typedef struct port_hold {
    int fd;
    char addr[64]; /* "127.0.0.1:PORT" */
} port_hold;

static void port_open(port_hold *p, int listening) {
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    p->fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(p->fd, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(p->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(getsockname(p->fd, (struct sockaddr *)&sa, &len), 0);
    if (listening)
        ck_assert_int_eq(listen(p->fd, 16), 0);
    snprintf(p->addr, sizeof(p->addr), "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
}

/* Whether a connection waits to be accepted on a listening port_hold. */
static int port_pending(const port_hold *p) {
    struct pollfd pf = {p->fd, POLLIN, 0};
    return poll(&pf, 1, 0) == 1;
}

static void *no_op_thread(void *arg) { return arg; }

/* The process's threads now. The first call starts and joins one thread:
 * a sanitizer runtime (TSan's) starts a thread of its own with the
 * process's first, which must not count as one of ours. */
static long threads_now(void) {
    static int warmed;
    if (!warmed) {
        pthread_t t;
        if (pthread_create(&t, NULL, no_op_thread, NULL) == 0)
            pthread_join(t, NULL);
        warmed = 1;
    }
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long n = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "Threads:", 8) == 0)
            n = strtol(line + 8, NULL, 10);
    if (f != NULL)
        fclose(f);
    return n;
}

static const char *cl_fmt = "{\"version\": \"%s\", \"limiters\": {\"shared\": {\"rate\": "
                            "\"%s\", \"burst\": 4, \"cluster\": {\"redis\": \"%s\", "
                            "\"instances\": 2%s}%s}}, \"chain\": [{\"limiter\": "
                            "\"shared\"}], \"handler\": \"a\"}";

static void load_cl(fg_runtime *rt, fg_registry *r, const char *addr, const char *rate,
                    const char *cluster_extra, const char *extra) {
    char buf[1024];
    snprintf(buf, sizeof(buf), cl_fmt, rate, rate, addr, cluster_extra, extra);
    fg_config_errors errs;
    int rc = load(rt, r, buf, &errs);
    ck_assert_msg(rc == 0, "%s: %s", fg_err_name(rc), errs_text(&errs));
}

/* The corpus of broken cluster configs; without hiredis, "cluster" itself
 * is the error. */
START_TEST(test_cluster_corpus) {
    if (fg_cluster_available()) {
        run_corpus("tests/config/cluster", 3);
        return;
    }
    const char *cfg = "{\"version\": \"1\", \"limiters\": {\"api\": {\"rate\": \"1/s\", "
                      "\"burst\": 1, \"cluster\": {}}}, \"chain\": [{\"limiter\": \"api\"}], "
                      "\"handler\": \"a\"}";
    fg_config_errors errs;
    ck_assert_int_eq(fg_config_check(NULL, cfg, strlen(cfg), &errs), FG_ECONFIG);
    ck_assert_str_eq(errs_text(&errs), "limiters.api.cluster: not available: this floodgate "
                                       "was built without hiredis (libhiredis-dev)\n");
}
END_TEST

/* Redis refuses connections: the config loads, the limiter decides by its
 * fallback (a local bucket of rate/instances and burst/instances: 2 of
 * burst 4 with 2 instances, on the runtime's fake clock, so exactly). An
 * identical reload keeps the limiter (its fallback bucket stays spent); any
 * changed option, rate included, makes a fresh one; stage options do not;
 * a removed one is freed. */
START_TEST(test_cluster_config) {
    if (!fg_cluster_available())
        return; /* test_cluster_corpus covers this build */
    port_hold down;
    port_open(&down, 0);
    fg_fake_clock *fake = NULL;
    ck_assert_int_eq(fg_fake_clock_new(UINT64_C(1000000000), &fake), 0);
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_set_clock(rt, fg_fake_clock_as_clock(fake)), 0);
    uint64_t live0 = fg__config_live_components();

    load_cl(rt, r, down.addr, "1/h", "", "");
    ck_assert_uint_eq(fg__config_live_components(), live0 + 1);
    ck_assert_int_eq(take(rt, 5), 2);
    load_cl(rt, r, down.addr, "1/h", "", ""); /* identical: the same limiter */
    ck_assert_uint_eq(fg__config_live_components(), live0 + 1);
    ck_assert_int_eq(take(rt, 1), 0);
    load_cl(rt, r, down.addr, "1/h", "", ", \"tokens\": 2"); /* stage only */
    ck_assert_int_eq(take(rt, 1), 0);
    load_cl(rt, r, down.addr, "1/h", "", ", \"shadow\": true");
    ck_assert_int_eq(take(rt, 3), 3);
    load_cl(rt, r, down.addr, "1/h", ", \"timeout\": \"50ms\"", ""); /* fresh */
    ck_assert_int_eq(take(rt, 5), 2);
    load_cl(rt, r, down.addr, "2/h", ", \"timeout\": \"50ms\"", ""); /* rate: fresh */
    ck_assert_int_eq(take(rt, 5), 2);
    load_cl(rt, r, down.addr, "2/h", ", \"timeout\": \"50ms\"", "");
    ck_assert_int_eq(take(rt, 5), 0);
    /* The fallback bucket refills at rate/instances, 1/h: half an hour
     * later still nothing, an hour later one token. */
    fg_fake_clock_advance(fake, UINT64_C(1800) * 1000000000);
    ck_assert_int_eq(take(rt, 5), 0);
    fg_fake_clock_advance(fake, UINT64_C(1800) * 1000000000);
    ck_assert_int_eq(take(rt, 5), 1);
    /* The old limiters go with the snapshots that used them. */
    load_cl(rt, r, down.addr, "2/h", ", \"timeout\": \"50ms\"", "");
    load_cl(rt, r, down.addr, "2/h", ", \"timeout\": \"50ms\"", "");
    ck_assert_uint_eq(fg__config_live_components(), live0 + 1);
    /* Fail closed: nothing passes while Redis is down. */
    load_cl(rt, r, down.addr, "2/h", ", \"fallback\": \"closed\"", "");
    ck_assert_int_eq(call(rt, "GET", "/", NULL, NULL, NULL, NULL), FG_ELIMITED);
    /* A local limiter of the same name is another component. */
    fg_config_errors errs;
    ck_assert_int_eq(
        load(rt, r,
             "{\"version\": \"l\", \"limiters\": {\"shared\": {\"rate\": \"1/h\", "
             "\"burst\": 3}}, \"chain\": [{\"limiter\": \"shared\"}], "
             "\"handler\": \"a\"}",
             &errs),
        0);
    ck_assert_int_eq(take(rt, 5), 3);
    /* A failed load with a new cluster limiter frees it and changes nothing. */
    char bad[1024];
    snprintf(bad, sizeof(bad),
             "{\"version\": \"bad\", \"limiters\": {\"c\": {\"rate\": \"1/s\", \"burst\": 1, "
             "\"cluster\": {\"redis\": \"%s\"}}}, \"chain\": [{\"limiter\": \"c\"}], "
             "\"handler\": \"nope\"}",
             down.addr);
    ck_assert_int_eq(load(rt, r, bad, &errs), FG_ECONFIG);
    ck_assert_str_eq(errs_text(&errs), "handler: unknown handler \"nope\" (not registered)\n");
    ck_assert_int_eq(take(rt, 1), 0);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(
            load(rt, r, "{\"version\": \"x\", \"chain\": [], \"handler\": \"a\"}", &errs), 0);
    ck_assert_uint_eq(fg__config_live_components(), live0);
    fg_runtime_free(rt);
    fg_registry_free(r);
    fg_fake_clock_free(fake);
    close(down.fd);
}
END_TEST

static int take_as(fg_runtime *rt, const char *user, int n) {
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += call(rt, "GET", "/", user ? "x-user" : NULL, user, NULL, NULL) == 0;
    return ok;
}

static const char *cl_key_fmt =
    "{\"version\": \"k\", \"limiters\": {\"tenant\": {\"rate\": \"1/h\", \"burst\": 2, "
    "\"key\": {\"%s\": \"x-user\"}, \"max_keys\": 10, \"missing\": \"reject\", "
    "\"cluster\": {\"redis\": \"%s\"}}}, \"chain\": [{\"limiter\": \"tenant\"}], "
    "\"handler\": \"a\"}";

/* Per key, Redis down: each key has its own fallback bucket (instances 1:
 * the key's whole rate and burst); the stage takes the key as a keyed
 * limiter's does. An identical reload keeps the limiter, another key
 * source makes a fresh one. */
START_TEST(test_cluster_per_key) {
    if (!fg_cluster_available())
        return;
    port_hold down;
    port_open(&down, 0);
    fg_fake_clock *fake = NULL;
    ck_assert_int_eq(fg_fake_clock_new(UINT64_C(1000000000), &fake), 0);
    fg_registry *r = make_registry();
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_set_clock(rt, fg_fake_clock_as_clock(fake)), 0);
    char cfg[1024];
    fg_config_errors errs;
    snprintf(cfg, sizeof(cfg), cl_key_fmt, "header", down.addr);
    ck_assert_msg(load(rt, r, cfg, &errs) == 0, "%s", errs_text(&errs));
    ck_assert_int_eq(take_as(rt, "ann", 3), 2);
    ck_assert_int_eq(take_as(rt, "bob", 3), 2);
    ck_assert_int_eq(take_as(rt, NULL, 1), 0); /* missing: reject */
    ck_assert_int_eq(load(rt, r, cfg, &errs), 0);
    ck_assert_int_eq(take_as(rt, "ann", 1), 0);
    snprintf(cfg, sizeof(cfg), cl_key_fmt, "baggage", down.addr);
    ck_assert_msg(load(rt, r, cfg, &errs) == 0, "%s", errs_text(&errs));
    ck_assert_int_eq(take_as(rt, NULL, 3), 0); /* no baggage: the key is missing */
    fg_runtime_free(rt);
    fg_registry_free(r);
    fg_fake_clock_free(fake);
    close(down.fd);
}
END_TEST

/* fg_config_check makes no cluster limiter: no connection, no thread (with
 * or without a registry), while a load connects. The "Redis" listens and
 * never answers, so the load's limiter waits its timeout and falls back. */
START_TEST(test_cluster_check_offline) {
    if (!fg_cluster_available())
        return;
    port_hold quiet;
    port_open(&quiet, 1);
    char cfg[1024];
    snprintf(cfg, sizeof(cfg),
             "{\"version\": \"q\", \"limiters\": {\"c\": {\"rate\": \"10/s\", \"burst\": 5, "
             "\"tokens\": 2, \"cluster\": {\"redis\": \"%s\", \"prefix\": \"t:\", \"lease\": "
             "3, \"lease_ttl\": \"2s\", \"timeout\": \"20ms\", \"fallback\": \"local\", "
             "\"instances\": 3, \"backoff_min\": \"10ms\", \"backoff_max\": \"1s\"}}}, "
             "\"chain\": [{\"limiter\": \"c\"}], \"handler\": \"a\"}",
             quiet.addr);
    fg_registry *r = make_registry();
    long threads = threads_now();
    uint64_t live0 = fg__config_live_components();
    fg_config_errors errs;
    ck_assert_int_eq(fg_config_check(NULL, cfg, strlen(cfg), &errs), 0);
    ck_assert_int_eq(fg_config_check(r, cfg, strlen(cfg), &errs), 0);
    ck_assert_uint_eq(fg__config_live_components(), live0);
    ck_assert_int_eq(threads_now(), threads);
    ck_assert(!port_pending(&quiet));
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(load(rt, r, cfg, &errs), 0);
    ck_assert(port_pending(&quiet));
    ck_assert_int_eq(threads_now(), threads + 1); /* the limiter's renewer */
    fg_runtime_free(rt);
    ck_assert_int_eq(threads_now(), threads);
    fg_registry_free(r);
    close(quiet.fd);
}
END_TEST

Suite *fg_suite_config(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("registry");
    tcase_add_test(tc, test_registry);
    tcase_add_test(tc, test_format);
    suite_add_tcase(s, tc);
    tc = tcase_create("load");
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_handler_only);
    tcase_add_test(tc, test_limits_and_files);
    tcase_add_test(tc, test_breaker_shadow);
    tcase_add_test(tc, test_breaker_carry);
    tcase_add_test(tc, test_fault_config);
    tcase_add_test(tc, test_timeout_config);
    tcase_add_test(tc, test_fallback_config);
    tcase_add_test(tc, test_bulkhead_config);
    tcase_add_test(tc, test_retry_config);
    tcase_add_test(tc, test_adaptive_config);
    tcase_add_test(tc, test_runtime_clock);
    suite_add_tcase(s, tc);
    tc = tcase_create("errors");
    tcase_add_test(tc, test_bad_corpus);
    tcase_add_test(tc, test_cluster_corpus);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    tc = tcase_create("reload");
    tcase_add_test(tc, test_failed_load_keeps_old);
    tcase_add_test(tc, test_carry_over);
    tcase_add_test(tc, test_failed_load_no_pending);
    suite_add_tcase(s, tc);
    tc = tcase_create("cluster");
    tcase_add_test(tc, test_cluster_config);
    tcase_add_test(tc, test_cluster_per_key);
    tcase_add_test(tc, test_cluster_check_offline);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
    tc = tcase_create("stress");
    tcase_add_test(tc, test_reload_stress);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
    return s;
}
