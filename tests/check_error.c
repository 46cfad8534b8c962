/*
 * tests/check_error.c - the version functions and the error-code table.
 *
 * fg_version()/fg_version_string() must report the version the header was
 * compiled with. Every code in FG_ERRNO_MAP must have a distinct pinned value
 * (values are ABI), its table message from fg_strerror, "FG_<name>" from
 * fg_err_name, and fg_err_is_outcome must be true exactly for the request
 * outcomes (-100 .. -199). Codes outside the table are "unknown".
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "suites.h"

/* The table as seen through the enum: enum value, table value, name, message. */
typedef struct code_row {
    int code;
    int value;
    const char *name;
    const char *msg;
} code_row;

static const code_row codes[] = {
#define ROW_(name, value, msg) {FG_##name, value, "FG_" #name, msg},
    FG_ERRNO_MAP(ROW_)
#undef ROW_
};

#define NCODES ((int)(sizeof(codes) / sizeof(codes[0])))

static int in_table(int code) {
    for (int i = 0; i < NCODES; i++) {
        if (codes[i].value == code) {
            return 1;
        }
    }
    return 0;
}

/* ---- version ----------------------------------------------------------- */

START_TEST(test_version_number) {
    ck_assert_uint_eq(fg_version(), FG_VERSION_NUMBER);
    ck_assert_uint_eq(fg_version(),
                      FG_VERSION_MAJOR * 10000u + FG_VERSION_MINOR * 100u + FG_VERSION_PATCH);
}
END_TEST

START_TEST(test_version_string) {
    char expect[64];

    snprintf(expect, sizeof(expect), "%d.%d.%d", FG_VERSION_MAJOR, FG_VERSION_MINOR,
             FG_VERSION_PATCH);
    ck_assert_ptr_nonnull(fg_version_string());
    ck_assert_str_eq(fg_version_string(), FG_VERSION_STRING);
    ck_assert_str_eq(fg_version_string(), expect);
}
END_TEST

/* ---- the table, one loop iteration per code ------------------------------ */

START_TEST(test_code_row) {
    const code_row *row = &codes[_i];

    ck_assert_int_eq(row->code, row->value);
    ck_assert_int_lt(row->value, 0);
    for (int j = 0; j < NCODES; j++) {
        if (j != _i) {
            ck_assert_msg(codes[j].value != row->value, "%s and %s share the value %d",
                          row->name, codes[j].name, row->value);
        }
    }
    ck_assert_ptr_nonnull(fg_strerror(row->value));
    ck_assert_uint_gt(strlen(fg_strerror(row->value)), 0);
    ck_assert_str_eq(fg_strerror(row->value), row->msg);
    ck_assert_str_eq(fg_err_name(row->value), row->name);
    ck_assert_int_eq(fg_err_is_outcome(row->value), row->value <= -100 && row->value >= -199);
}
END_TEST

/* The values are ABI: pin every one of them. */
START_TEST(test_pinned_values) {
    ck_assert_int_eq(FG_OK, 0);
    ck_assert_int_eq(FG_EINVAL, -1);
    ck_assert_int_eq(FG_ENOMEM, -2);
    ck_assert_int_eq(FG_ETOOLONG, -3);
    ck_assert_int_eq(FG_ETOOMANY, -4);
    ck_assert_int_eq(FG_ESTATE, -5);
    ck_assert_int_eq(FG_ENOTFOUND, -6);
    ck_assert_int_eq(FG_EEXIST, -7);
    ck_assert_int_eq(FG_ERANGE, -8);
    ck_assert_int_eq(FG_ECONFIG, -9);
    ck_assert_int_eq(FG_ESYS, -10);
    ck_assert_int_eq(FG_EPARSE, -11);
    ck_assert_int_eq(FG_ELIMITED, -100);
    ck_assert_int_eq(FG_EBREAKER, -101);
    ck_assert_int_eq(FG_ENOROUTE, -102);
    ck_assert_int_eq(FG_ETIMEDOUT, -103);
    ck_assert_int_eq(FG_EOVERLOADED, -104);
    ck_assert_int_eq(FG_EINJECTED, -105);
    ck_assert_int_eq(FG_EHANDLER, -106);
    ck_assert_int_eq(FG_ECANCELED, -107);
    ck_assert_int_eq(FG_EREJECTED, -108);
    /* Append-only: these 19 are the first codes, and none was dropped. */
    ck_assert_int_ge(NCODES, 19);
}
END_TEST

START_TEST(test_pinned_messages) {
    ck_assert_str_eq(fg_strerror(FG_EINVAL), "invalid argument");
    ck_assert_str_eq(fg_strerror(FG_ENOMEM), "out of memory");
    ck_assert_str_eq(fg_strerror(FG_ELIMITED), "rate limited");
    ck_assert_str_eq(fg_strerror(FG_EREJECTED), "rejected by a stage");
    ck_assert_str_eq(fg_err_name(FG_EINVAL), "FG_EINVAL");
    ck_assert_str_eq(fg_err_name(FG_ELIMITED), "FG_ELIMITED");
    ck_assert_str_eq(fg_err_name(FG_EREJECTED), "FG_EREJECTED");
}
END_TEST

START_TEST(test_success) {
    ck_assert_str_eq(fg_strerror(0), "success");
    ck_assert_str_eq(fg_err_name(0), "FG_OK");
    ck_assert_int_eq(fg_err_is_outcome(0), 0);
}
END_TEST

/* ---- codes outside the table --------------------------------------------- */

static const int unknown_codes[] = {
    -99999, 5, 1, 100, 106, -99, -100 - 100, -1000, -199, INT_MIN, INT_MAX, INT_MIN + 1,
};

#define NUNKNOWN ((int)(sizeof(unknown_codes) / sizeof(unknown_codes[0])))

static void assert_unknown(int code) {
    ck_assert_msg(!in_table(code), "test table error: %d is a known code", code);
    ck_assert_str_eq(fg_strerror(code), "unknown error");
    ck_assert_str_eq(fg_err_name(code), "FG_EUNKNOWN");
    ck_assert_int_eq(fg_err_is_outcome(code), 0);
}

START_TEST(test_unknown_code) { assert_unknown(unknown_codes[_i]); }
END_TEST

/* The first unused value of each range (just past the last API error and the
 * last outcome) is unknown too: the lookups must not read past the table. */
START_TEST(test_unknown_just_past_each_range) {
    int min_api = 0;
    int min_outcome = -99;

    for (int i = 0; i < NCODES; i++) {
        int v = codes[i].value;
        if (v > -100 && v < min_api) {
            min_api = v;
        }
        if (v <= -100 && v >= -199 && v < min_outcome) {
            min_outcome = v;
        }
    }
    ck_assert_int_le(min_api, FG_ESYS);
    ck_assert_int_le(min_outcome, FG_EREJECTED);
    assert_unknown(min_api - 1);
    assert_unknown(min_outcome - 1);
}
END_TEST

/* Outcome iff a known code between -100 and -199: the range alone is not enough. */
START_TEST(test_is_outcome_range) {
    int outcomes = 0;

    for (int v = -250; v <= 50; v++) {
        int expect = in_table(v) && v <= -100 && v >= -199;
        ck_assert_msg(fg_err_is_outcome(v) == expect, "fg_err_is_outcome(%d) != %d", v,
                      expect);
        outcomes += expect;
    }
    ck_assert_int_ge(outcomes, 9);
    ck_assert_int_eq(fg_err_is_outcome(FG_ELIMITED), 1);
    ck_assert_int_eq(fg_err_is_outcome(FG_EREJECTED), 1);
    ck_assert_int_eq(fg_err_is_outcome(FG_EHANDLER), 1);
    ck_assert_int_eq(fg_err_is_outcome(FG_EINVAL), 0);
    ck_assert_int_eq(fg_err_is_outcome(FG_ESYS), 0);
}
END_TEST

/* The strings are static: the same code gives the same pointer every time. */
START_TEST(test_strings_are_static) {
    ck_assert_ptr_eq(fg_strerror(FG_ETIMEDOUT), fg_strerror(FG_ETIMEDOUT));
    ck_assert_ptr_eq(fg_err_name(FG_ETIMEDOUT), fg_err_name(FG_ETIMEDOUT));
    ck_assert_ptr_eq(fg_version_string(), fg_version_string());
}
END_TEST

Suite *fg_suite_error(void) {
    Suite *s = suite_create("error");
    TCase *tc;

    tc = tcase_create("version");
    tcase_add_test(tc, test_version_number);
    tcase_add_test(tc, test_version_string);
    suite_add_tcase(s, tc);

    tc = tcase_create("table");
    tcase_add_loop_test(tc, test_code_row, 0, NCODES);
    tcase_add_test(tc, test_pinned_values);
    tcase_add_test(tc, test_pinned_messages);
    tcase_add_test(tc, test_success);
    tcase_add_test(tc, test_strings_are_static);
    suite_add_tcase(s, tc);

    tc = tcase_create("unknown");
    tcase_add_loop_test(tc, test_unknown_code, 0, NUNKNOWN);
    tcase_add_test(tc, test_unknown_just_past_each_range);
    tcase_add_test(tc, test_is_outcome_range);
    suite_add_tcase(s, tc);

    return s;
}
