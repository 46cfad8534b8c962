/*
 * tests/check_main.c - the single Check runner for every floodgate suite.
 *
 * Usage: check_floodgate [SUITE]
 * Runs every suite listed in FG_TEST_SUITES (tests/suites.h), or only the one
 * named SUITE. srunner_run_all(CK_ENV) honours CK_FORK, CK_VERBOSITY and the
 * other Check environment variables (CK_FORK=no for valgrind or gdb). Exits
 * with EXIT_FAILURE when any test failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "suites.h"

typedef struct suite_entry {
    const char *name;
    Suite *(*make)(void);
} suite_entry;

static const suite_entry all_suites[] = {
#define SUITE_ENTRY_(name) {#name, fg_suite_##name},
    FG_TEST_SUITES(SUITE_ENTRY_)
#undef SUITE_ENTRY_
};

int main(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : NULL;
    SRunner *sr = NULL;
    int failed;

    for (size_t i = 0; i < sizeof(all_suites) / sizeof(all_suites[0]); i++) {
        Suite *s;

        if (only != NULL && strcmp(only, all_suites[i].name) != 0) {
            continue;
        }
        s = all_suites[i].make();
        if (sr == NULL) {
            sr = srunner_create(s);
        } else {
            srunner_add_suite(sr, s);
        }
    }
    if (sr == NULL) {
        fprintf(stderr, "%s: no suite named \"%s\"; suites:", argv[0], only);
        for (size_t i = 0; i < sizeof(all_suites) / sizeof(all_suites[0]); i++) {
            fprintf(stderr, " %s", all_suites[i].name);
        }
        fprintf(stderr, "\n");
        return EXIT_FAILURE;
    }

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
