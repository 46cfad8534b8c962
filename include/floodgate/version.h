/*
 * floodgate/version.h - the library version, at compile time and at run time.
 *
 * The Makefile reads these three macros to name the shared library
 * (libfloodgate.so.MAJOR.MINOR.PATCH, soname libfloodgate.so.MAJOR) and to
 * fill in the pkg-config file, so this header is the one place to bump.
 */
#ifndef FLOODGATE_VERSION_H
#define FLOODGATE_VERSION_H

#include "common.h"

/* The version of these headers, MAJOR.MINOR.PATCH (the soname carries MAJOR). */
#define FG_VERSION_MAJOR 0
#define FG_VERSION_MINOR 1
#define FG_VERSION_PATCH 0

#define FG_VERSION_STRINGIFY_(x) #x
/* FG_VERSION_STRINGIFY(x) - x, after macro expansion, as a string literal. */
#define FG_VERSION_STRINGIFY(x)  FG_VERSION_STRINGIFY_(x)
/* "0.1.0": the compile-time version as a string literal. */
#define FG_VERSION_STRING                                                                     \
    FG_VERSION_STRINGIFY(FG_VERSION_MAJOR)                                                    \
    "." FG_VERSION_STRINGIFY(FG_VERSION_MINOR) "." FG_VERSION_STRINGIFY(FG_VERSION_PATCH)

/* MAJOR*10000 + MINOR*100 + PATCH, comparable with fg_version(). */
#define FG_VERSION_NUMBER                                                                     \
    ((FG_VERSION_MAJOR * 10000) + (FG_VERSION_MINOR * 100) + FG_VERSION_PATCH)

FG_BEGIN_DECLS

/*
 * fg_version - the version of the library actually linked, as
 * FG_VERSION_NUMBER computes it, so a program can compare the header it was
 * built with against the library it runs with.
 *
 * Returns: MAJOR*10000 + MINOR*100 + PATCH.
 * Thread-safety: MT-safe.
 */
FG_API unsigned fg_version(void);

/*
 * fg_version_string - the linked library's version as "MAJOR.MINOR.PATCH".
 *
 * Returns: a static string; never NULL. Ownership: the library's; do not free.
 * Thread-safety: MT-safe.
 */
FG_API const char *fg_version_string(void);

FG_END_DECLS

#endif /* FLOODGATE_VERSION_H */
