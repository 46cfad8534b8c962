/*
 * tests/suites.h - every Check suite of the test runner.
 *
 * Each tests/check_<component>.c defines one fg_suite_<component>() and is
 * listed here and in FG_TEST_SUITES; tests/check_main.c runs them all.
 */
#ifndef FG_TESTS_SUITES_H
#define FG_TESTS_SUITES_H

#include <check.h>

Suite *fg_suite_error(void);
Suite *fg_suite_alloc(void);
Suite *fg_suite_clock(void);
Suite *fg_suite_ctx(void);
Suite *fg_suite_stage(void);
Suite *fg_suite_chain(void);
Suite *fg_suite_limiter(void);
Suite *fg_suite_keyed(void);
Suite *fg_suite_breaker(void);
Suite *fg_suite_trace(void);
Suite *fg_suite_tracestate(void);
Suite *fg_suite_baggage(void);
Suite *fg_suite_trace_stage(void);
Suite *fg_suite_errval(void);
Suite *fg_suite_expr(void);
Suite *fg_suite_router(void);
Suite *fg_suite_runtime(void);
Suite *fg_suite_config(void);
Suite *fg_suite_watch(void);
Suite *fg_suite_etcd(void);
Suite *fg_suite_histogram(void);
Suite *fg_suite_fault(void);
Suite *fg_suite_retry(void);
Suite *fg_suite_metrics(void);
Suite *fg_suite_bulkhead(void);
Suite *fg_suite_deadline(void);
Suite *fg_suite_adaptive(void);
Suite *fg_suite_cluster(void);

/* One suite per X. */
/* clang-format off */
#define FG_TEST_SUITES(X) \
    X(error) X(alloc) X(clock) X(ctx) X(stage) X(chain) X(limiter) X(keyed) \
    X(breaker) X(trace) X(tracestate) X(baggage) X(trace_stage) X(errval) \
    X(expr) X(router) X(runtime) X(config) X(watch) X(histogram) X(fault) X(retry) \
    X(metrics) X(bulkhead) X(deadline) \
    X(etcd) \
    X(adaptive) X(cluster)
/* clang-format on */

#endif
