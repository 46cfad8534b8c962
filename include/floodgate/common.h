/*
 * floodgate/common.h - macros shared by every public floodgate header.
 *
 * FG_API marks a function as part of the exported ABI: the library is built
 * with -fvisibility=hidden, so anything without FG_API stays private to it.
 * FG_BEGIN_DECLS / FG_END_DECLS give C++ callers C linkage.
 */
#ifndef FLOODGATE_COMMON_H
#define FLOODGATE_COMMON_H

#if defined(_WIN32) && defined(FG_BUILDING_DLL)
#define FG_API __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#define FG_API __attribute__((visibility("default")))
#else
#define FG_API
#endif

#ifdef __cplusplus
#define FG_BEGIN_DECLS extern "C" {
#define FG_END_DECLS   }
#else
#define FG_BEGIN_DECLS
#define FG_END_DECLS
#endif

#endif /* FLOODGATE_COMMON_H */
