/*
 * tools/floodgate.c - the `floodgate` command line.
 *
 *   floodgate check CONFIG...   validate configs; print every error as
 *                               "CONFIG: path: message"; exit 1 on any
 *   floodgate version           print the library version
 *
 * Exit status: 0 all valid, 1 some config invalid, 2 a usage error or a
 * file that cannot be read. docs/cli.md is the manual.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <floodgate.h>

static void usage(FILE *out) {
    (void)fputs("usage: floodgate check CONFIG...\n"
                "       floodgate version\n"
                "\n"
                "  check    validate each JSON config: syntax (with line and column), every\n"
                "           key, type, value, rule and route; prints each error as\n"
                "           CONFIG: path: message and exits 1 if any config is invalid.\n"
                "           Handler and custom stage names are not checked: they belong\n"
                "           to the program that loads the config.\n"
                "  version  print the floodgate library version\n",
                out);
}

/* Read a whole file (bounded); NULL with errno on failure. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
        if (n == cap) {
            if (cap > FG_CONFIG_MAX_BYTES) {
                errno = EFBIG;
                free(buf);
                buf = NULL;
                break;
            }
            char *bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    int failed = buf != NULL && ferror(f);
    int saved = errno;
    (void)fclose(f);
    if (failed) {
        free(buf);
        errno = saved ? saved : EIO;
        return NULL;
    }
    *len = n;
    return buf;
}

static int check_one(const char *path) {
    size_t len = 0;
    char *text = read_file(path, &len);
    if (text == NULL) {
        /* One thread: strerror is fine here. */
        (void)fprintf(stderr, "%s: cannot read: %s\n", path,
                      strerror(errno)); // NOLINT(concurrency-mt-unsafe)
        return 2;
    }
    fg_config_errors errors;
    int rc = fg_config_check(NULL, text, len, &errors);
    free(text);
    if (rc == 0) {
        printf("%s: ok\n", path);
        return 0;
    }
    if (rc != FG_ECONFIG) {
        (void)fprintf(stderr, "%s: %s\n", path, fg_strerror(rc));
        return rc == FG_ETOOLONG ? 1 : 2;
    }
    for (size_t i = 0; i < errors.count; i++) {
        const fg_config_error *e = &errors.items[i];
        printf("%s: %s%s%s", path, e->path, e->path[0] ? ": " : "", e->message);
        if (e->line > 0)
            printf(" (line %d, column %d)", e->line, e->column);
        putchar('\n');
    }
    if (errors.omitted > 0)
        printf("%s: ... and %zu more\n", path, errors.omitted);
    return 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "version") == 0 && argc == 2) {
        printf("floodgate %s\n", fg_version_string());
        return 0;
    }
    if (argc >= 2 && (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
                      strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc < 3 || strcmp(argv[1], "check") != 0) {
        usage(stderr);
        return 2;
    }
    int worst = 0;
    for (int i = 2; i < argc; i++) {
        int rc = check_one(argv[i]);
        if (rc > worst)
            worst = rc;
    }
    return worst;
}
