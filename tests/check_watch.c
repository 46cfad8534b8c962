/*
 * tests/check_watch.c - watching a config file (fg_runtime_watch,
 * floodgate/config.h): the first load, a write in place, a temporary file
 * renamed over, delete and recreate, a broken write and its fix, other
 * files in the directory ignored, debouncing, fg_watch_stop (prompt,
 * joining, from inside the callback), argument and setup errors, and every
 * out-of-memory path.
 *
 * Real files in a fresh directory under /tmp. Waiting for the watcher is
 * I/O, not timing logic: each wait polls a condition for up to 5 s in small
 * sleeps. The debounce is 20 ms; where a test claims an exact count, the
 * events it causes are fixed by the kernel (one close-after-write, one
 * rename), and it waits a few debounce periods more to see nothing else
 * happen. Run under SANITIZE=1 and TSAN=1 (CK_FORK=no for leaks).
 */
#define _XOPEN_SOURCE 700 /* mkdtemp */

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

#define DEBOUNCE_NS 20000000u /* 20 ms */
#define QUIET_MS    150       /* "nothing else happens": several debounce periods */

static char dir[64];
static char file[128];
static char tmpfile_[128];
static char other[128];

static int served; /* calls of the "hello" handler */

static int hello(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    __atomic_fetch_add(&served, 1, __ATOMIC_RELAXED);
    return 0;
}

/* ---- what on_reload saw ---------------------------------------------------------- */

struct rec {
    int calls, ok, esys, econfig, other;
    int bad_errors;   /* errors NULL when rc != 0, or non-NULL when rc == 0 */
    int esys_counted; /* FG_ESYS with one error entry naming the file */
    int syntax_line;  /* line of the last FG_ECONFIG's first error */
    int after_stop;   /* calls after the test marked the watcher stopped */
    int stopped;
    int in_call, sleep_ms, finished;
    pthread_t first_thread;
};

static struct rec rec;

static void on_reload(fg_runtime *rt, int rc, const fg_config_errors *errors, void *arg) {
    struct rec *r = arg;
    (void)rt;
    if (__atomic_load_n(&r->stopped, __ATOMIC_ACQUIRE))
        __atomic_fetch_add(&r->after_stop, 1, __ATOMIC_RELAXED);
    if (__atomic_load_n(&r->calls, __ATOMIC_RELAXED) == 0)
        r->first_thread = pthread_self();
    __atomic_store_n(&r->in_call, 1, __ATOMIC_RELEASE);
    if ((rc == 0) != (errors == NULL))
        __atomic_fetch_add(&r->bad_errors, 1, __ATOMIC_RELAXED);
    if (rc == FG_ESYS && errors != NULL && errors->count == 1 &&
        strcmp(errors->items[0].path, file) == 0 &&
        strstr(errors->items[0].message, "cannot read") != NULL)
        __atomic_fetch_add(&r->esys_counted, 1, __ATOMIC_RELAXED);
    if (rc == FG_ECONFIG && errors != NULL && errors->count > 0)
        __atomic_store_n(&r->syntax_line, errors->items[0].line, __ATOMIC_RELAXED);
    int *which = rc == 0            ? &r->ok
                 : rc == FG_ESYS    ? &r->esys
                 : rc == FG_ECONFIG ? &r->econfig
                                    : &r->other;
    __atomic_fetch_add(which, 1, __ATOMIC_RELAXED);
    int ms = __atomic_load_n(&r->sleep_ms, __ATOMIC_RELAXED);
    if (ms > 0) {
        struct timespec ts = {0, (long)ms * 1000000L};
        nanosleep(&ts, NULL);
    }
    __atomic_store_n(&r->finished, 1, __ATOMIC_RELEASE);
    /* Last: the test reads the other fields once it sees the count. */
    __atomic_fetch_add(&r->calls, 1, __ATOMIC_RELEASE);
}

static int get(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

/* ---- files ------------------------------------------------------------------------ */

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

/* A config like examples/config/minimal.json with the given version. */
static void write_config(const char *path, const char *version) {
    char text[512];
    snprintf(text, sizeof(text),
             "{\n  \"version\": \"%s\",\n  \"limiters\": {\"api\": {\"rate\": \"1000/s\", "
             "\"burst\": 1000}},\n  \"chain\": [{\"limiter\": \"api\"}],\n"
             "  \"handler\": \"hello\"\n}\n",
             version);
    write_text(path, text);
}

static void setup(void) {
    memset(&rec, 0, sizeof(rec));
    served = 0;
    snprintf(dir, sizeof(dir), "/tmp/fg_watch_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(file, sizeof(file), "%s/minimal.json", dir);
    snprintf(tmpfile_, sizeof(tmpfile_), "%s/.minimal.json.tmp", dir);
    snprintf(other, sizeof(other), "%s/other.json", dir);
    write_config(file, "v1");
}

static void teardown(void) {
    (void)unlink(file);
    (void)unlink(tmpfile_);
    (void)unlink(other);
    (void)rmdir(dir);
}

/* ---- waiting ---------------------------------------------------------------------- */

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static fg_watch_stats stats_of(const fg_watch *w) {
    fg_watch_stats s;
    ck_assert_int_eq(fg_watch_stats_get(w, &s), 0);
    ck_assert_uint_le(s.loaded + s.failed, s.attempts);
    return s;
}

/* Waits up to 5 s until loaded and failed reach at least these, and the
 * callback has seen as many attempts. Returns whether they did. */
static int wait_stats(const fg_watch *w, uint64_t loaded, uint64_t failed) {
    for (int i = 0; i < 1000; i++) {
        fg_watch_stats s = stats_of(w);
        if (s.loaded >= loaded && s.failed >= failed &&
            (uint64_t)get(&rec.calls) >= s.loaded + s.failed)
            return 1;
        sleep_ms(5);
    }
    return 0;
}

static void assert_stats(const fg_watch *w, uint64_t attempts, uint64_t loaded,
                         uint64_t failed) {
    fg_watch_stats s = stats_of(w);
    ck_assert_uint_eq(s.attempts, attempts);
    ck_assert_uint_eq(s.loaded, loaded);
    ck_assert_uint_eq(s.failed, failed);
    ck_assert_int_eq(get(&rec.calls), (int)attempts);
}

static void assert_version(fg_runtime *rt, const char *want) {
    char v[64];
    ck_assert_int_eq(fg_runtime_version(rt, v, sizeof(v)), 0);
    ck_assert_str_eq(v, want);
}

static void assert_serves(fg_runtime *rt) {
    int before = __atomic_load_n(&served, __ATOMIC_RELAXED);
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/x"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &ctx, NULL, NULL), 0);
    ck_assert_int_eq(__atomic_load_n(&served, __ATOMIC_RELAXED), before + 1);
}

/* ---- a runtime and a watcher -------------------------------------------------------- */

struct env {
    fg_registry *reg;
    fg_runtime *rt;
    fg_watch *w;
};

static struct env start(uint64_t debounce_ns) {
    struct env e = {NULL, NULL, NULL};
    ck_assert_int_eq(fg_registry_new(&e.reg), 0);
    ck_assert_int_eq(fg_registry_add_handler(e.reg, "hello", hello, NULL), 0);
    ck_assert_int_eq(fg_runtime_new(&e.rt), 0);
    fg_watch_options o = FG_WATCH_OPTIONS_INIT;
    o.debounce_ns = debounce_ns;
    o.on_reload = on_reload;
    o.arg = &rec;
    ck_assert_int_eq(fg_runtime_watch(e.rt, e.reg, file, &o, &e.w), 0);
    ck_assert_ptr_nonnull(e.w);
    return e;
}

static void finish(struct env *e) {
    fg_watch_stop(e->w);
    __atomic_store_n(&rec.stopped, 1, __ATOMIC_RELEASE);
    fg_runtime_free(e->rt);
    fg_registry_free(e->reg);
    ck_assert_int_eq(get(&rec.after_stop), 0);
    ck_assert_int_eq(get(&rec.bad_errors), 0);
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(test_initial_load) {
    struct env e = start(DEBOUNCE_NS);
    /* Loaded before fg_runtime_watch returned, reported on the caller's thread. */
    assert_stats(e.w, 1, 1, 0);
    ck_assert_int_eq(get(&rec.ok), 1);
    ck_assert_int_ne(pthread_equal(rec.first_thread, pthread_self()), 0);
    assert_version(e.rt, "v1");
    assert_serves(e.rt);
    /* Other files in the directory are not the config. */
    write_config(other, "other");
    sleep_ms(QUIET_MS);
    assert_stats(e.w, 1, 1, 0);
    finish(&e);
}
END_TEST

START_TEST(test_write_in_place) {
    struct env e = start(DEBOUNCE_NS);
    write_config(file, "v2");
    ck_assert(wait_stats(e.w, 2, 0));
    assert_version(e.rt, "v2");
    ck_assert_int_ne(pthread_equal(rec.first_thread, pthread_self()), 0);
    sleep_ms(QUIET_MS);
    assert_stats(e.w, 2, 2, 0); /* one close after writing: one reload */
    write_config(file, "v3");
    ck_assert(wait_stats(e.w, 3, 0));
    assert_version(e.rt, "v3");
    assert_serves(e.rt);
    sleep_ms(QUIET_MS);
    assert_stats(e.w, 3, 3, 0);
    finish(&e);
}
END_TEST

START_TEST(test_rename_over) {
    struct env e = start(DEBOUNCE_NS);
    write_config(tmpfile_, "renamed");
    sleep_ms(QUIET_MS); /* the temporary file's own events change nothing */
    assert_stats(e.w, 1, 1, 0);
    ck_assert_int_eq(rename(tmpfile_, file), 0);
    ck_assert(wait_stats(e.w, 2, 0));
    assert_version(e.rt, "renamed");
    sleep_ms(QUIET_MS);
    assert_stats(e.w, 2, 2, 0);
    /* And again: the watch follows the name, not the first inode. */
    write_config(tmpfile_, "renamed-2");
    ck_assert_int_eq(rename(tmpfile_, file), 0);
    ck_assert(wait_stats(e.w, 3, 0));
    assert_version(e.rt, "renamed-2");
    assert_serves(e.rt);
    finish(&e);
}
END_TEST

START_TEST(test_delete_and_recreate) {
    struct env e = start(DEBOUNCE_NS);
    ck_assert_int_eq(unlink(file), 0);
    ck_assert(wait_stats(e.w, 1, 1));
    sleep_ms(QUIET_MS);
    assert_stats(e.w, 2, 1, 1);
    ck_assert_int_eq(get(&rec.esys), 1);
    ck_assert_int_eq(get(&rec.esys_counted), 1);
    assert_version(e.rt, "v1"); /* the old config keeps serving */
    assert_serves(e.rt);
    /* Recreated by a plain write: created, then closed after writing. A
     * reload between the two (a slow writer) would be one more failure,
     * so only the outcome is exact here. */
    write_config(file, "recreated");
    ck_assert(wait_stats(e.w, 2, 1));
    assert_version(e.rt, "recreated");
    sleep_ms(QUIET_MS);
    fg_watch_stats s = stats_of(e.w);
    ck_assert_uint_eq(s.loaded, 2);
    ck_assert_uint_eq(s.attempts, s.loaded + s.failed);
    ck_assert_int_eq(get(&rec.calls), (int)s.attempts);
    assert_serves(e.rt);
    finish(&e);
}
END_TEST

START_TEST(test_broken_then_fixed) {
    struct env e = start(DEBOUNCE_NS);
    write_text(file, "{\n  \"version\": \"broken\",\n  \"chain\": [\n");
    ck_assert(wait_stats(e.w, 1, 1));
    sleep_ms(QUIET_MS);
    assert_stats(e.w, 2, 1, 1);
    ck_assert_int_eq(get(&rec.econfig), 1);
    ck_assert_int_gt(get(&rec.syntax_line), 0);
    assert_version(e.rt, "v1");
    assert_serves(e.rt);
    write_config(file, "fixed");
    ck_assert(wait_stats(e.w, 2, 1));
    assert_version(e.rt, "fixed");
    sleep_ms(QUIET_MS);
    assert_stats(e.w, 3, 2, 1);
    assert_serves(e.rt);
    finish(&e);
}
END_TEST

START_TEST(test_debounce) {
    struct env e = start(300000000u); /* 300 ms */
    for (int i = 0; i < 5; i++) {
        char v[32];
        snprintf(v, sizeof(v), "burst-%d", i);
        write_config(file, v);
        sleep_ms(10);
    }
    ck_assert(wait_stats(e.w, 2, 0));
    sleep_ms(400);
    assert_stats(e.w, 2, 2, 0); /* five writes, one reload, of the last */
    assert_version(e.rt, "burst-4");
    finish(&e);
}
END_TEST

START_TEST(test_stop_prompt) {
    fg_registry *reg;
    fg_runtime *rt;
    fg_watch *w;
    ck_assert_int_eq(fg_registry_new(&reg), 0);
    ck_assert_int_eq(fg_registry_add_handler(reg, "hello", hello, NULL), 0);
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    /* NULL options: the defaults (100 ms, no callback). */
    ck_assert_int_eq(fg_runtime_watch(rt, reg, file, NULL, &w), 0);
    assert_version(rt, "v1");
    fg_watch_stats s = stats_of(w);
    ck_assert_uint_eq(s.attempts, 1);
    ck_assert_uint_eq(s.loaded, 1);
    uint64_t t0 = now_ns();
    fg_watch_stop(w); /* no event at all: the thread is blocked in poll */
    ck_assert_uint_lt(now_ns() - t0, 1000000000u);
    fg_watch_stop(NULL);
    fg_runtime_free(rt);
    fg_registry_free(reg);
}
END_TEST

START_TEST(test_stop_joins) {
    struct env e = start(DEBOUNCE_NS);
    __atomic_store_n(&rec.in_call, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&rec.finished, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&rec.sleep_ms, 200, __ATOMIC_RELAXED);
    write_config(file, "v2");
    for (int i = 0; i < 1000 && !get(&rec.in_call); i++)
        sleep_ms(5);
    ck_assert_int_eq(get(&rec.in_call), 1);
    /* Stop while the callback sleeps: it must wait for it to return. */
    fg_watch_stop(e.w);
    ck_assert_int_eq(get(&rec.finished), 1);
    __atomic_store_n(&rec.stopped, 1, __ATOMIC_RELEASE);
    write_config(file, "v3"); /* nobody watches any more */
    sleep_ms(QUIET_MS);
    ck_assert_int_eq(get(&rec.after_stop), 0);
    ck_assert_int_eq(get(&rec.calls), 2);
    assert_version(e.rt, "v2");
    fg_runtime_free(e.rt);
    fg_registry_free(e.reg);
}
END_TEST

static fg_watch *self_stop_w;
static int self_stop_done;

static void stop_in_callback(fg_runtime *rt, int rc, const fg_config_errors *errors,
                             void *arg) {
    (void)rt;
    (void)errors;
    (void)arg;
    int n = __atomic_add_fetch(&rec.calls, 1, __ATOMIC_ACQ_REL);
    if (n == 2) {
        ck_assert_int_eq(rc, 0);
        fg_watch_stop(__atomic_load_n(&self_stop_w, __ATOMIC_ACQUIRE));
        __atomic_store_n(&self_stop_done, 1, __ATOMIC_RELEASE);
    }
}

START_TEST(test_stop_in_callback) {
    fg_registry *reg;
    fg_runtime *rt;
    fg_watch *w;
    ck_assert_int_eq(fg_registry_new(&reg), 0);
    ck_assert_int_eq(fg_registry_add_handler(reg, "hello", hello, NULL), 0);
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_watch_options o = FG_WATCH_OPTIONS_INIT;
    o.debounce_ns = DEBOUNCE_NS;
    o.on_reload = stop_in_callback;
    ck_assert_int_eq(fg_runtime_watch(rt, reg, file, &o, &w), 0);
    __atomic_store_n(&self_stop_w, w, __ATOMIC_RELEASE);
    write_config(file, "v2");
    for (int i = 0; i < 1000 && !get(&self_stop_done); i++)
        sleep_ms(5);
    ck_assert_int_eq(get(&self_stop_done), 1);
    /* The watcher ends (and frees itself) when the callback returns. */
    sleep_ms(QUIET_MS);
    write_config(file, "v3");
    sleep_ms(QUIET_MS);
    ck_assert_int_eq(get(&rec.calls), 2);
    assert_version(rt, "v2");
    fg_runtime_free(rt);
    fg_registry_free(reg);
}
END_TEST

START_TEST(test_errors) {
    fg_registry *reg;
    fg_runtime *rt;
    fg_watch *w = (fg_watch *)&w; /* not NULL: failures must clear it */
    ck_assert_int_eq(fg_registry_new(&reg), 0);
    ck_assert_int_eq(fg_registry_add_handler(reg, "hello", hello, NULL), 0);
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_watch_options o = FG_WATCH_OPTIONS_INIT;
    o.on_reload = on_reload;
    o.arg = &rec;

    ck_assert_int_eq(fg_runtime_watch(NULL, reg, file, &o, &w), FG_EINVAL);
    ck_assert_ptr_null(w);
    ck_assert_int_eq(fg_runtime_watch(rt, NULL, file, &o, &w), FG_EINVAL);
    ck_assert_int_eq(fg_runtime_watch(rt, reg, NULL, &o, &w), FG_EINVAL);
    ck_assert_int_eq(fg_runtime_watch(rt, reg, file, &o, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_runtime_watch(rt, reg, "", &o, &w), FG_EINVAL);
    ck_assert_int_eq(fg_runtime_watch(rt, reg, "/tmp/", &o, &w), FG_EINVAL);
    ck_assert_int_eq(fg_runtime_watch(rt, reg, "/tmp/..", &o, &w), FG_EINVAL);
    char longname[400];
    memset(longname, 'n', sizeof(longname));
    memcpy(longname, "/tmp/", 5);
    longname[sizeof(longname) - 1] = '\0';
    ck_assert_int_eq(fg_runtime_watch(rt, reg, longname, &o, &w), FG_ETOOLONG);
    ck_assert_int_eq(fg_watch_stats_get(NULL, &(fg_watch_stats){0}), FG_EINVAL);
    ck_assert_int_eq(get(&rec.calls), 0); /* none of these was a load attempt */

    /* A directory that is not there, or not a directory. */
    char path[256];
    snprintf(path, sizeof(path), "%s/nodir/c.json", dir);
    errno = 0;
    ck_assert_int_eq(fg_runtime_watch(rt, reg, path, &o, &w), FG_ESYS);
    ck_assert_int_eq(errno, ENOENT);
    snprintf(path, sizeof(path), "%s/minimal.json/c.json", dir);
    errno = 0;
    ck_assert_int_eq(fg_runtime_watch(rt, reg, path, &o, &w), FG_ESYS);
    ck_assert_int_eq(errno, ENOTDIR);
    ck_assert_int_eq(get(&rec.calls), 0);

    /* A first load that fails: its code, reported, nothing left running. */
    ck_assert_int_eq(unlink(file), 0);
    ck_assert_int_eq(fg_runtime_watch(rt, reg, file, &o, &w), FG_ESYS);
    ck_assert_ptr_null(w);
    ck_assert_int_eq(get(&rec.calls), 1);
    ck_assert_int_eq(get(&rec.esys_counted), 1);
    write_text(file, "{\"version\": 1}");
    ck_assert_int_eq(fg_runtime_watch(rt, reg, file, &o, &w), FG_ECONFIG);
    ck_assert_ptr_null(w);
    ck_assert_int_eq(get(&rec.calls), 2);
    ck_assert_int_eq(get(&rec.econfig), 1);
    ck_assert_int_eq(fg_runtime_version(rt, path, sizeof(path)), FG_ESTATE);

    /* A relative path is resolved once: a later chdir changes nothing. */
    char cwd[512];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof(cwd)));
    ck_assert_int_eq(chdir(dir), 0);
    write_config(file, "relative");
    o.debounce_ns = DEBOUNCE_NS;
    ck_assert_int_eq(fg_runtime_watch(rt, reg, "minimal.json", &o, &w), 0);
    ck_assert_int_eq(chdir(cwd), 0);
    assert_version(rt, "relative");
    write_config(file, "relative-2");
    ck_assert(wait_stats(w, 2, 0));
    assert_version(rt, "relative-2");
    fg_watch_stop(w);
    ck_assert_int_eq(get(&rec.bad_errors), 0);
    fg_runtime_free(rt);
    fg_registry_free(reg);
}
END_TEST

/* ---- out of memory: fail the Nth allocation ------------------------------------------ */

static int oom_errors; /* errors->count of the last failed attempt */

static void oom_reload(fg_runtime *rt, int rc, const fg_config_errors *errors, void *arg) {
    (void)rt;
    (void)rc;
    (void)arg;
    __atomic_store_n(&oom_errors, errors ? (int)errors->count : -1, __ATOMIC_RELEASE);
}

START_TEST(test_oom) {
    fg_watch_options o = FG_WATCH_OPTIONS_INIT;
    o.on_reload = oom_reload;
    int done = 0;
    for (long n = 1; n < 100000 && !done; n++) {
        th_alloc_reset();
        th_alloc.fail_at = n;
        oom_errors = -1;
        ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
        fg_registry *reg = NULL;
        fg_runtime *rt = NULL;
        fg_watch *w = NULL;
        int rc = fg_registry_new(&reg);
        if (rc == 0)
            rc = fg_registry_add_handler(reg, "hello", hello, NULL);
        if (rc == 0)
            rc = fg_runtime_new(&rt);
        if (rc == 0)
            rc = fg_runtime_watch(rt, reg, file, &o, &w);
        if (rc == 0) {
            fg_watch_stats st = stats_of(w);
            ck_assert_uint_eq(st.loaded, 1);
            fg_watch_stop(w);
        } else {
            ck_assert_int_eq(rc, FG_ENOMEM);
            ck_assert_ptr_null(w);
        }
        fg_runtime_free(rt);
        fg_registry_free(reg);
        ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
        ck_assert_int_eq(th_alloc.allocs, th_alloc.frees);
        done = th_alloc.attempts < n; /* the failure was never reached: every path walked */
        if (done)
            ck_assert_int_eq(rc, 0);
    }
    ck_assert_int_eq(done, 1);
}
END_TEST

Suite *fg_suite_watch(void) {
    Suite *s = suite_create("watch");
    TCase *tc = tcase_create("reload");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_initial_load);
    tcase_add_test(tc, test_write_in_place);
    tcase_add_test(tc, test_rename_over);
    tcase_add_test(tc, test_delete_and_recreate);
    tcase_add_test(tc, test_broken_then_fixed);
    tcase_add_test(tc, test_debounce);
    suite_add_tcase(s, tc);

    tc = tcase_create("stop");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_stop_prompt);
    tcase_add_test(tc, test_stop_joins);
    suite_add_tcase(s, tc);

    tc = tcase_create("errors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_oom);
    suite_add_tcase(s, tc);

    /* Last: the watcher stopped from its own callback ends unobserved (as
     * documented), so with CK_FORK=no a later fg_set_alloc_funcs, as in
     * test_oom, would race with its final free. */
    tc = tcase_create("stop_in_callback");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_stop_in_callback);
    suite_add_tcase(s, tc);
    return s;
}
