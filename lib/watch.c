/*
 * lib/watch.c - watching a config file and reloading it when it changes
 * (fg_runtime_watch, floodgate/config.h, docs/config.md "Watching a file").
 *
 * The watcher's thread blocks in poll() on two descriptors: an inotify
 * instance watching the file's directory, and an eventfd that fg_watch_stop
 * writes to wake it. Watching the directory rather than the file is what
 * lets it follow the ways a file gets replaced: an editor that writes a
 * temporary file and renames it over (IN_MOVED_TO), a delete and a
 * recreate (IN_DELETE, IN_CREATE), as well as a write in place
 * (IN_CLOSE_WRITE). A watch on the file itself would follow the old inode
 * and go deaf after the first rename. Events are filtered by the file's
 * name; a queue overflow counts as a change, since one may have been lost.
 *
 * After a matching event the thread waits until no further one has come
 * for the debounce time (poll's timeout), then loads once. A load that
 * fails (an invalid config, or the file missing between a delete and its
 * recreation) changes nothing in the runtime; it is counted and reported
 * like a good one. Events that arrive during a load stay queued in the
 * inotify descriptor and lead to another load, so no change is missed.
 *
 * This file also holds what the file and etcd watchers (lib/etcd.c) share
 * through lib/watch_internal.h: counting and reporting attempts, starting
 * the thread, fg_watch_stats_get and fg_watch_stop.
 */
#define _XOPEN_SOURCE 700 /* realpath (XSI) */

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "floodgate/config.h"
#include "floodgate/error.h"

#include "alloc.h"
#include "watch_internal.h"

#define FG_WATCH_DEBOUNCE_NS 100000000ull /* the default: 100 ms */
#define FG_WATCH_NAME_MAX    255          /* NAME_MAX on Linux: the longest file name */
#define FG_WATCH_BUF         4096         /* one read of events; holds at least one */
#define FG_WATCH_MASK        (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM)

/* A file watcher: the common part (lib/watch_internal.h) first. */
struct fg_file_watch {
    struct fg_watch w;
    char *path;       /* absolute: the resolved directory, '/', the file name */
    const char *name; /* the file name, the tail of path */
    size_t name_len;
    uint64_t debounce_ns;
    int ifd; /* inotify instance, non-blocking */
    int efd; /* eventfd: fg_watch_stop writes to it */
};

static uint64_t fg_watch_now(void) {
    struct timespec ts;
    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Closes what is open and frees the watcher; keeps errno for the caller. */
static void fg_file_destroy(struct fg_watch *base) {
    struct fg_file_watch *w = (struct fg_file_watch *)base;
    int saved = errno;
    if (w->ifd >= 0)
        (void)close(w->ifd);
    if (w->efd >= 0)
        (void)close(w->efd);
    fg__free(w->path);
    fg__free(w);
    errno = saved;
}

/* An eventfd write of 1 fails only with EINTR here (the counter cannot
 * overflow), so this loop ends and the thread wakes. */
static void fg_file_wake(struct fg_watch *base) {
    struct fg_file_watch *w = (struct fg_file_watch *)base;
    uint64_t one = 1;
    while (write(w->efd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
}

static const struct fg__watch_ops fg_file_ops = {fg_file_wake, fg_file_destroy};

/*
 * The absolute path of the file: its directory through realpath (so a
 * later chdir changes nothing, and the directory watched is the one
 * loaded from), then its name. Returns 0, FG_EINVAL, FG_ETOOLONG, FG_ESYS,
 * FG_ENOMEM.
 */
static int fg_watch_resolve(struct fg_file_watch *w, const char *path) {
    size_t len = strlen(path);
    if (len == 0 || path[len - 1] == '/')
        return FG_EINVAL;
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    size_t name_len = strlen(name);
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return FG_EINVAL;
    if (name_len > FG_WATCH_NAME_MAX)
        return FG_ETOOLONG;
    char *dir = slash == NULL   ? fg__strndup(".", 1)
                : slash == path ? fg__strndup("/", 1)
                                : fg__strndup(path, (size_t)(slash - path));
    if (dir == NULL)
        return FG_ENOMEM;
    char *real = realpath(dir, NULL); /* malloc'd by libc, so free() below */
    fg__free(dir);
    if (real == NULL)
        return FG_ESYS;
    size_t dlen = strlen(real);
    int root = dlen == 1; /* "/": no second slash */
    w->path = fg__malloc(dlen + 1 + name_len + 1);
    if (w->path == NULL) {
        free(real);
        return FG_ENOMEM;
    }
    memcpy(w->path, real, dlen);
    free(real);
    if (!root)
        w->path[dlen++] = '/';
    memcpy(w->path + dlen, name, name_len + 1);
    w->name = w->path + dlen;
    w->name_len = name_len;
    return 0;
}

/* Watches the directory of w->path. Returns 0 or FG_ESYS. */
static int fg_watch_add(struct fg_file_watch *w) {
    w->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->ifd < 0)
        return FG_ESYS;
    char *sep = w->path + (w->name - w->path) - 1; /* the last '/' of path */
    int wd;
    if (sep == w->path) {
        wd = inotify_add_watch(w->ifd, "/", FG_WATCH_MASK | IN_ONLYDIR);
    } else {
        *sep = '\0';
        wd = inotify_add_watch(w->ifd, w->path, FG_WATCH_MASK | IN_ONLYDIR);
        *sep = '/';
    }
    return wd < 0 ? FG_ESYS : 0;
}

/* One load attempt of the file, counted and reported. */
static int fg_watch_attempt(struct fg_file_watch *w) {
    fg__watch_begin(&w->w);
    int rc = fg_runtime_load_file(w->w.rt, w->w.registry, w->path, &w->w.errors);
    (void)fg__watch_end(&w->w, rc);
    return rc;
}

/*
 * Reads one bufferful of events (the rest wait for the next poll).
 * Returns 1 when one of them concerns the file (or the queue overflowed,
 * so one may have been lost), else 0.
 */
static int fg_watch_read(struct fg_file_watch *w) {
    char buf[FG_WATCH_BUF];
    ssize_t n;
    do
        n = read(w->ifd, buf, sizeof(buf));
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return 0; /* EAGAIN: nothing after all */
    int hit = 0;
    size_t off = 0;
    while ((size_t)n - off >= sizeof(struct inotify_event)) {
        struct inotify_event ev; /* copied out: buf has no alignment for it */
        memcpy(&ev, buf + off, sizeof(ev));
        const char *name = buf + off + sizeof(ev);
        if (ev.len > (size_t)n - off - sizeof(ev))
            break; /* cannot happen: the kernel returns whole events */
        /* An overflow may have dropped one of ours: count it as a change. */
        if ((ev.mask & IN_Q_OVERFLOW) != 0 ||
            (ev.len > 0 && strnlen(name, ev.len) == w->name_len &&
             memcmp(name, w->name, w->name_len) == 0))
            hit = 1;
        off += sizeof(ev) + ev.len;
    }
    return hit;
}

/* poll's timeout for the ns left until due: rounded up, so that waking
 * means due has passed. */
static int fg_watch_timeout(uint64_t due) {
    uint64_t now = fg_watch_now();
    if (now >= due)
        return 0;
    uint64_t left = due - now;
    uint64_t ms = left / 1000000u + (left % 1000000u != 0);
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

static void *fg_watch_main(void *arg) {
    struct fg_file_watch *w = arg;
    int pending = 0; /* a change seen, not loaded yet */
    int nfds = 2;    /* 1 once the inotify descriptor reports an error */
    uint64_t due = 0;
    for (;;) {
        struct pollfd fds[2] = {{w->efd, POLLIN, 0}, {w->ifd, POLLIN, 0}};
        int n = poll(fds, (nfds_t)nfds, pending ? fg_watch_timeout(due) : -1);
        if (n < 0) {
            if (errno != EINTR) {
                /* ENOMEM: the kernel is short of memory; try again shortly
                 * rather than spin or give up watching. */
                struct timespec nap = {0, 10000000};
                (void)nanosleep(&nap, NULL);
            }
            continue;
        }
        if (fds[0].revents != 0)
            break; /* fg_watch_stop */
        if ((fds[1].revents & POLLIN) != 0) {
            if (fg_watch_read(w)) {
                uint64_t now = fg_watch_now();
                pending = 1;
                due = now > UINT64_MAX - w->debounce_ns ? UINT64_MAX : now + w->debounce_ns;
            }
        } else if ((fds[1].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
            nfds = 1; /* never expected; stop polling it rather than spin */
        }
        if (pending && fg_watch_now() >= due) {
            pending = 0;
            (void)fg_watch_attempt(w);
            if (w->w.stop_in_callback) {
                fg_file_destroy(&w->w); /* the thread is detached: nobody joins it */
                return NULL;
            }
        }
    }
    return NULL;
}

int fg_runtime_watch(fg_runtime *rt, const fg_registry *registry, const char *path,
                     const fg_watch_options *opts, fg_watch **out) {
    if (out != NULL)
        *out = NULL;
    if (rt == NULL || registry == NULL || path == NULL || out == NULL)
        return FG_EINVAL;
    struct fg_file_watch *w = fg__calloc(1, sizeof(*w));
    if (w == NULL)
        return FG_ENOMEM;
    fg__watch_init(&w->w, &fg_file_ops, rt, registry, opts);
    w->ifd = -1;
    w->efd = -1;
    w->debounce_ns = FG_WATCH_DEBOUNCE_NS;
    if (opts != NULL && opts->debounce_ns != 0)
        w->debounce_ns = opts->debounce_ns;
    int rc = fg_watch_resolve(w, path);
    /* Watch before the first load, so a change made while it runs is seen. */
    if (rc == 0)
        rc = fg_watch_add(w);
    if (rc == 0) {
        w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->efd < 0)
            rc = FG_ESYS;
    }
    if (rc == 0)
        rc = fg_watch_attempt(w);
    if (rc == 0)
        rc = fg__watch_start(&w->w, fg_watch_main);
    if (rc != 0) {
        fg_file_destroy(&w->w);
        return rc;
    }
    *out = &w->w;
    return 0;
}

/* ---- what both kinds share (lib/watch_internal.h) ------------------------------------ */

void fg__watch_init(struct fg_watch *w, const struct fg__watch_ops *ops, fg_runtime *rt,
                    const fg_registry *registry, const fg_watch_options *opts) {
    memset(w, 0, sizeof(*w));
    w->ops = ops;
    w->rt = rt;
    w->registry = registry;
    if (opts != NULL) {
        w->on_reload = opts->on_reload;
        w->arg = opts->arg;
    }
}

/*
 * attempts is counted before the load and loaded/failed after it with
 * release order; fg_watch_stats_get reads those two first with acquire
 * order, so a reader that sees an attempt finished also sees it begun:
 * loaded + failed <= attempts. The same release publishes revision, which
 * the etcd watcher stores before it ends a successful attempt.
 */
void fg__watch_begin(struct fg_watch *w) {
    __atomic_fetch_add(&w->attempts, 1, __ATOMIC_RELAXED);
}

int fg__watch_end(struct fg_watch *w, int rc) {
    __atomic_fetch_add(rc == 0 ? &w->loaded : &w->failed, 1, __ATOMIC_RELEASE);
    if (w->on_reload != NULL)
        w->on_reload(w->rt, rc, rc == 0 ? NULL : &w->errors, w->arg);
    return w->stop_in_callback;
}

void fg__watch_error(struct fg_watch *w, const char *path, const char *fmt, ...) {
    fg_config_errors *e = &w->errors;
    memset(e, 0, sizeof(*e));
    e->count = 1;
    (void)snprintf(e->items[0].path, sizeof(e->items[0].path), "%s", path);
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(e->items[0].message, sizeof(e->items[0].message), fmt, ap);
    va_end(ap);
}

int fg__watch_stopping(const struct fg_watch *w) {
    return __atomic_load_n(&w->stopping, __ATOMIC_ACQUIRE);
}

int fg__watch_start(struct fg_watch *w, void *(*fn)(void *)) {
    /* The thread takes no signals: a process-directed signal must reach
     * the program's own threads, never interrupt the watcher's loads. */
    sigset_t all, old;
    (void)sigfillset(&all);
    (void)pthread_sigmask(SIG_SETMASK, &all, &old);
    /* Set first: the thread may call on_reload, and fg_watch_stop in it,
     * at once; pthread_create orders this store before its start. */
    w->started = 1;
    int err = pthread_create(&w->thread, NULL, fn, w);
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        w->started = 0;
        errno = err;
        return FG_ESYS;
    }
    return 0;
}

int fg_watch_stats_get(const fg_watch *w, fg_watch_stats *stats) {
    if (w == NULL || stats == NULL)
        return FG_EINVAL;
    /* Acquire pairs with the release in fg__watch_end (see there). */
    stats->loaded = __atomic_load_n(&w->loaded, __ATOMIC_ACQUIRE);
    stats->failed = __atomic_load_n(&w->failed, __ATOMIC_ACQUIRE);
    stats->attempts = __atomic_load_n(&w->attempts, __ATOMIC_RELAXED);
    stats->revision = __atomic_load_n(&w->revision, __ATOMIC_RELAXED);
    stats->reconnects = __atomic_load_n(&w->reconnects, __ATOMIC_RELAXED);
    return 0;
}

void fg_watch_stop(fg_watch *w) {
    if (w == NULL)
        return;
    if (w->started && pthread_equal(pthread_self(), w->thread)) {
        /* Inside on_reload: joining would wait for ourselves. The thread
         * unwinds and frees w when the callback returns. */
        w->stop_in_callback = 1;
        (void)pthread_detach(w->thread);
        return;
    }
    if (w->started) {
        /* Release pairs with fg__watch_stopping's acquire; the wake makes
         * the thread look, wherever it blocks. */
        __atomic_store_n(&w->stopping, 1, __ATOMIC_RELEASE);
        w->ops->wake(w);
        (void)pthread_join(w->thread, NULL);
    }
    w->ops->destroy(w);
}
