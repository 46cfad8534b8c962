# floodgate - the one Makefile.
#
#   make                 static and shared library in build/release/
#   make check           install missing deps, build, run every test
#   make check SANITIZE=1  the same under AddressSanitizer + UBSan (build/asan/)
#   make check TSAN=1    the same under ThreadSanitizer (build/tsan/)
#   make bench           optimised benchmarks, one line per figure
#   make demo            the HTTP gateway example under load, with a report (KEEP=1 keeps it up)
#   make loadtest        wrk against the gateway: bare, with floodgate, behind nginx
#   make docs            the API reference (Doxygen) in build/docs/, warning-free
#   make lint            format check, clang-tidy, cppcheck: zero findings
#   make install PREFIX=/usr/local [DESTDIR=...]   and   make uninstall
#
# The version comes from include/floodgate/version.h; the soname from its
# major number. Everything built goes under build/.

.DEFAULT_GOAL := all
.DELETE_ON_ERROR:
SHELL := /bin/sh

version_part = $(shell sed -n 's/^\#define FG_VERSION_$(1) \([0-9][0-9]*\).*/\1/p' include/floodgate/version.h)
MAJOR := $(call version_part,MAJOR)
MINOR := $(call version_part,MINOR)
PATCH := $(call version_part,PATCH)
VERSION := $(MAJOR).$(MINOR).$(PATCH)

PREFIX ?= /usr/local
EXEC_PREFIX ?= $(PREFIX)
LIBDIR ?= $(EXEC_PREFIX)/lib
BINDIR ?= $(EXEC_PREFIX)/bin
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR ?=

PKG_CONFIG ?= pkg-config
CLANG_TIDY ?= clang-tidy
CPPCHECK ?= cppcheck
CLANG_FORMAT ?= clang-format

# Variants: each has its own build directory so they never mix objects.
ifeq ($(SANITIZE),1)
VARIANT := asan
OPT := -O1 -g -fno-omit-frame-pointer
SAN := -fsanitize=address,undefined -fno-sanitize-recover=all
else ifeq ($(TSAN),1)
VARIANT := tsan
OPT := -O1 -g
SAN := -fsanitize=thread
# ck_pr's x86_64 inline assembly is invisible to ThreadSanitizer; see lib/atomic.h.
SANDEFS := -DFG_TSAN -DCK_USE_CC_BUILTINS=1
else
VARIANT := release
OPT := -O2 -g
SAN :=
NOUNDEF := -Wl,--no-undefined
endif
B := build/$(VARIANT)

# Recursive (=) so pkg-config is asked after `deps` has run.
DEP_CFLAGS = $(shell $(PKG_CONFIG) --cflags ck jansson)
DEP_LIBS = $(shell $(PKG_CONFIG) --libs ck jansson) $(OPT_LIBS) -lpthread

# Optional parts: the cluster limiter (hiredis) and the etcd config source
# (libcurl). Built when pkg-config finds them (`make deps` installs both);
# FG_NO_REDIS=1 / FG_NO_ETCD=1 build the core without them.
ifneq ($(FG_NO_REDIS),1)
HAVE_HIREDIS = $(shell $(PKG_CONFIG) --exists hiredis && echo 1)
endif
ifneq ($(FG_NO_ETCD),1)
HAVE_CURL = $(shell $(PKG_CONFIG) --exists libcurl && echo 1)
endif
OPT_CFLAGS = $(if $(HAVE_HIREDIS),-DFG_HAVE_HIREDIS=1 $(shell $(PKG_CONFIG) --cflags hiredis)) \
             $(if $(HAVE_CURL),-DFG_HAVE_CURL=1 $(shell $(PKG_CONFIG) --cflags libcurl))
OPT_LIBS = $(if $(HAVE_HIREDIS),$(shell $(PKG_CONFIG) --libs hiredis)) \
           $(if $(HAVE_CURL),$(shell $(PKG_CONFIG) --libs libcurl))
CHECK_CFLAGS = $(shell $(PKG_CONFIG) --cflags check)
CHECK_LIBS = $(shell $(PKG_CONFIG) --libs check)

WARN := -Wall -Wextra -Wpedantic -Werror
STD := -std=c11 -D_POSIX_C_SOURCE=200809L
CFLAGS ?=
LDFLAGS ?=
LIB_CFLAGS = $(STD) $(WARN) $(OPT) $(SAN) $(SANDEFS) -fPIC -fvisibility=hidden \
             -Iinclude $(DEP_CFLAGS) $(OPT_CFLAGS) $(CFLAGS)
APP_CFLAGS = $(STD) $(WARN) $(OPT) $(SAN) $(SANDEFS) -Iinclude $(DEP_CFLAGS) $(CFLAGS)

LIB_SRCS := $(wildcard lib/*.c)
LIB_OBJS := $(LIB_SRCS:%.c=$(B)/%.o)
TEST_SRCS := $(wildcard tests/check_*.c)
TEST_OBJS := $(TEST_SRCS:%.c=$(B)/%.o)
BENCH_SRCS := $(wildcard bench/*.c)
EXAMPLES := hello tracing
HEADERS := include/floodgate.h $(wildcard include/floodgate/*.h)

STATIC := $(B)/libfloodgate.a
SONAME := libfloodgate.so.$(MAJOR)
SHARED := $(B)/libfloodgate.so.$(VERSION)

# `make deps` runs before any build that needs the packages; FG_NO_DEPS=1
# skips it (packagers, offline builds).
ifeq ($(FG_NO_DEPS),1)
DEPS_STEP :=
SERVERS_STEP :=
PROMTOOL_STEP :=
LANG_STEP :=
else
DEPS_STEP := deps
SERVERS_STEP := deps-servers
PROMTOOL_STEP := deps-promtool
LANG_STEP := deps-lang
endif

.PHONY: fuzz fuzz-build loadtest docs
TOOL := $(B)/tools/floodgate
GATEWAY := $(B)/examples/gateway
LOADGEN := $(B)/examples/loadgen

.PHONY: all lib tools deps deps-servers deps-lint deps-promtool deps-lang check test-unit test-shell bench bench-run \
        examples demo install uninstall lint format format-check tidy cppcheck clean

all: lib tools

lib: $(STATIC) $(SHARED) $(B)/libfloodgate.so

deps:
	@scripts/deps.sh build

deps-servers:
	@scripts/deps.sh servers

deps-lint:
	@scripts/deps.sh lint

deps-promtool:
	@scripts/deps.sh promtool

deps-lang:
	@scripts/deps.sh lang

$(B)/lib/%.o: lib/%.c $(HEADERS) $(wildcard lib/*.h) | $(DEPS_STEP)
	@mkdir -p $(dir $@)
	$(CC) $(LIB_CFLAGS) -c $< -o $@

$(STATIC): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

# Only fg_ symbols leave the shared library: -fvisibility=hidden plus the
# export macro, and the version script as a second fence.
$(SHARED): $(LIB_OBJS) lib/floodgate.map
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=lib/floodgate.map $(NOUNDEF) \
	    $(SAN) $(LDFLAGS) -o $@ $(LIB_OBJS) $(DEP_LIBS)

$(B)/libfloodgate.so: $(SHARED)
	ln -sf libfloodgate.so.$(VERSION) $(B)/$(SONAME)
	ln -sf $(SONAME) $@

# ---- the command line -----------------------------------------------------------

tools: $(TOOL)

$(TOOL): tools/floodgate.c $(STATIC) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(APP_CFLAGS) $(LDFLAGS) -o $@ $< $(STATIC) $(DEP_LIBS)

# ---- tests -------------------------------------------------------------------

$(B)/tests/%.o: tests/%.c $(HEADERS) tests/suites.h tests/helpers.h | $(DEPS_STEP)
	@mkdir -p $(dir $@)
	$(CC) $(APP_CFLAGS) $(CHECK_CFLAGS) -c $< -o $@

$(B)/tests/check_floodgate: $(TEST_OBJS) $(STATIC)
	$(CC) $(SAN) $(LDFLAGS) -o $@ $(TEST_OBJS) $(STATIC) $(CHECK_LIBS) $(DEP_LIBS)

# A program that writes a Prometheus exposition of every metric family, for
# tests/test_promtool.sh; linked as the examples are.
$(B)/tests/prom_sample: tests/prom_sample.c $(STATIC) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(APP_CFLAGS) $(LDFLAGS) -o $@ $< $(STATIC) $(DEP_LIBS)

# Drivers of the scale-out tests (tests/test_cluster.sh, tests/test_etcd.sh):
# programs that use the library against the real servers those tests start.
$(B)/tests/%_driver: tests/%_driver.c $(STATIC) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(APP_CFLAGS) $(LDFLAGS) -o $@ $< $(STATIC) $(DEP_LIBS)

check: test-unit test-shell

test-unit: $(B)/tests/check_floodgate
	$(B)/tests/check_floodgate

# Shell tests: the exported-symbol list, C++ and standalone header builds,
# and (release only: sanitizer builds cannot be linked by a plain cc) the
# install + out-of-tree build of examples/hello, `promtool check metrics` on
# the Prometheus exposition (tests/prom_sample and `floodgate replay
# --metrics`; promtool from scripts/deps.sh promtool) and a quick benchmark
# run that checks every figure is printed in the stable format
# (replay_throughput too, from bench/replay.sh on a small trace through $(TOOL)).
#
# The gateway example runs in every variant (its bad-input test under ASan
# and its worker pool under TSan too); the Python and Go bindings' tests in
# release only (they load or link the plain library).
ifeq ($(VARIANT),release)
test-shell: $(B)/tests/prom_sample | $(PROMTOOL_STEP) $(LANG_STEP)
endif
test-shell: lib $(TOOL) $(GATEWAY) $(LOADGEN) $(B)/tests/cluster_driver $(B)/tests/etcd_driver \
            | $(SERVERS_STEP)
	sh tests/test_exports.sh $(B)/libfloodgate.so $(VARIANT)
	sh tests/test_cli.sh $(TOOL)
	sh tests/test_headers.sh
	sh tests/test_gateway.sh $(GATEWAY) $(LOADGEN) $(VARIANT)
	sh tests/test_cluster.sh $(B)/tests/cluster_driver $(VARIANT)
	sh tests/test_etcd.sh $(B)/tests/etcd_driver $(VARIANT) $(GATEWAY)
ifeq ($(VARIANT),release)
	sh tests/test_python.sh $(B)
	sh tests/test_go.sh $(B)
	sh tests/test_install.sh
	FG_NO_DEPS=$(FG_NO_DEPS) sh tests/test_promtool.sh $(B)/tests/prom_sample $(TOOL)
	$(MAKE) --no-print-directory $(B)/bench/bench
	sh tests/test_bench.sh $(B)/bench/bench $(TOOL)
endif

# ---- examples, demo ----------------------------------------------------------

$(B)/examples/%: examples/%.c $(STATIC) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(APP_CFLAGS) $(LDFLAGS) -o $@ $< $(STATIC) $(DEP_LIBS)

examples: $(EXAMPLES:%=$(B)/examples/%) $(GATEWAY) $(LOADGEN)

# ---- the HTTP gateway (examples/gateway/): demo, load test ------------------------
#
# The gateway embeds examples/gateway/floodgate.json as its default config
# (scripts/embed.sh turns it into a C string at build time).
GW_CFLAGS = $(shell $(PKG_CONFIG) --cflags libevent libevent_pthreads)
GW_LIBS = $(shell $(PKG_CONFIG) --libs libevent libevent_pthreads)
GATEWAY_SRCS := examples/gateway/gateway.c examples/gateway/backends.c
GATEWAY_HDRS := $(wildcard examples/gateway/*.h)

$(B)/examples/gateway_config.h: examples/gateway/floodgate.json scripts/embed.sh
	@mkdir -p $(dir $@)
	sh scripts/embed.sh fg_gateway_default_config $< > $@

$(GATEWAY): $(GATEWAY_SRCS) $(GATEWAY_HDRS) $(B)/examples/gateway_config.h $(STATIC) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(APP_CFLAGS) $(GW_CFLAGS) -I$(B)/examples $(LDFLAGS) -o $@ $(GATEWAY_SRCS) \
	    $(STATIC) $(GW_LIBS) $(DEP_LIBS)

$(LOADGEN): examples/gateway/loadgen.c
	@mkdir -p $(dir $@)
	$(CC) $(APP_CFLAGS) $(LDFLAGS) -o $@ $< -lpthread -lm

# KEEP=1 leaves the gateway running after the report (stop it with Ctrl-C).
demo: $(GATEWAY) $(LOADGEN)
	@KEEP=$(KEEP) sh examples/gateway/demo.sh $(GATEWAY) $(LOADGEN)

# Always the optimised build; wrk and nginx from scripts/deps.sh loadtest.
loadtest:
	@scripts/deps.sh loadtest
	@$(MAKE) --no-print-directory SANITIZE= TSAN= build/release/examples/gateway
	sh examples/gateway/loadtest.sh build/release/examples/gateway

# ---- the API reference ----------------------------------------------------------

docs:
	@scripts/deps.sh docs
	sh scripts/docs.sh

# ---- benchmarks: always the optimised build, never sanitizers -----------------

bench:
	@$(MAKE) --no-print-directory SANITIZE= TSAN= bench-run

$(B)/bench/bench: $(BENCH_SRCS) $(wildcard bench/*.h) $(STATIC) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(APP_CFLAGS) -Ilib $(LDFLAGS) -o $@ $(BENCH_SRCS) $(STATIC) $(DEP_LIBS)

# replay_throughput comes from bench/replay.sh (a trace through the tool),
# after the bench binary, reading the same BENCH_ARGS: --quick replays
# 100,000 lines instead of 1,000,000, and --filter X runs it only when X is a
# substring of "replay_throughput", as the binary matches its figures.
# The scale-out figures need redis-server and etcd: bench/servers.sh starts
# them on free ports when they are installed (scripts/deps.sh servers) and
# passes their addresses in FG_BENCH_REDIS / FG_BENCH_ETCD; without them
# those figures say they were skipped.
bench-run: $(B)/bench/bench $(TOOL)
	sh bench/servers.sh $(B)/bench/bench $(BENCH_ARGS)
	@set -- $(BENCH_ARGS); lines=1000000; filter=; \
	while [ $$# -gt 0 ]; do \
	    case $$1 in --quick) lines=100000 ;; --filter) filter=$${2-}; [ $$# -gt 1 ] && shift ;; esac; \
	    shift; \
	done; \
	case replay_throughput in *"$$filter"*) sh bench/replay.sh $(TOOL) $$lines ;; esac

# Peers: the same operations in other libraries, side by side with ours
# (bench/peers/). Needs Go and golang.org/x/time from Debian, which
# scripts/deps.sh peers installs when missing; built offline in GOPATH mode,
# everything it writes under build/. `make check` never depends on it.
.PHONY: bench-peers
PEER_GO_ENV = GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS= GOENV=off \
              GOCACHE=$(CURDIR)/build/go-cache GOTMPDIR=$(CURDIR)/build/go-tmp

bench-peers:
	@scripts/deps.sh peers
	@$(MAKE) --no-print-directory SANITIZE= TSAN= build/release/bench/bench
	@mkdir -p build/go-cache build/go-tmp build/peers
	$(PEER_GO_ENV) go build -o build/peers/xtime ./bench/peers/xtime
	@sh bench/peers/compare.sh build/peers/xtime build/release/bench/bench

# The Go binding (examples/go) beside golang.org/x/time/rate in one run:
# limiter decisions and an http.Handler middleware, medians side by side.
# GO_BENCH_TIME (500ms) and GO_BENCH_COUNT (3) pass through to the script.
.PHONY: bench-go
bench-go:
	@scripts/deps.sh lang
	@$(MAKE) --no-print-directory SANITIZE= TSAN= build/release/libfloodgate.a
	sh tests/test_go.sh build/release bench

# ---- fuzzing: libFuzzer targets under tests/fuzz/, built with clang ----------
#
#   make fuzz                      build every target and run each FUZZ_SECONDS
#   make fuzz FUZZ_SECONDS=600     (ASan + UBSan; a crash fails the run)
# Each run starts from tests/fuzz/corpus/<name>/ and keeps new inputs in
# build/fuzz/corpus/<name>/.

FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_FLAGS = -std=c11 $(WARN) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
             -D_POSIX_C_SOURCE=200809L -Iinclude $(DEP_CFLAGS)

build/fuzz/%: tests/fuzz/fuzz_%.c $(LIB_SRCS) $(HEADERS) $(wildcard lib/*.h) | $(DEPS_STEP)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(LIB_SRCS) $(DEP_LIBS)

fuzz-build: $(FUZZ_TARGETS:%=build/fuzz/%)

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	    mkdir -p build/fuzz/corpus/$$t; \
	    echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	    build/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        build/fuzz/corpus/$$t tests/fuzz/corpus/$$t 2>build/fuzz/$$t.log || \
	        { tail -40 build/fuzz/$$t.log; exit 1; }; \
	    grep -E '^stat::number_of_executed_units|^Done' build/fuzz/$$t.log; \
	done

# ---- install -----------------------------------------------------------------

install: lib $(TOOL)
	install -d $(DESTDIR)$(INCLUDEDIR)/floodgate $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR) \
	    $(DESTDIR)$(BINDIR)
	install -m 755 $(TOOL) $(DESTDIR)$(BINDIR)/floodgate
	install -m 644 include/floodgate.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 644 $(wildcard include/floodgate/*.h) $(DESTDIR)$(INCLUDEDIR)/floodgate/
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf libfloodgate.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libfloodgate.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    -e 's|@OPT_LIBS@|$(strip $(OPT_LIBS))|' \
	    pkg-config/floodgate.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/floodgate.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/floodgate.pc

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/floodgate
	rm -f $(DESTDIR)$(INCLUDEDIR)/floodgate.h
	rm -f $(addprefix $(DESTDIR)$(INCLUDEDIR)/floodgate/,$(notdir $(wildcard include/floodgate/*.h)))
	-rmdir $(DESTDIR)$(INCLUDEDIR)/floodgate 2>/dev/null
	rm -f $(DESTDIR)$(LIBDIR)/libfloodgate.a $(DESTDIR)$(LIBDIR)/libfloodgate.so \
	      $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libfloodgate.so.$(VERSION) \
	      $(DESTDIR)$(PKGCONFIGDIR)/floodgate.pc

# ---- lint --------------------------------------------------------------------

FORMAT_FILES = $(wildcard include/*.h include/floodgate/*.h lib/*.c lib/*.h tests/*.c \
                 tests/*.h tests/*.cpp tests/fuzz/*.c bench/*.c bench/*.h examples/*.c \
                 examples/gateway/*.c examples/gateway/*.h tools/*.c)
TIDY_FILES = $(wildcard lib/*.c bench/*.c examples/*.c examples/gateway/*.c tools/*.c)

lint: format-check tidy cppcheck

format:
	$(CLANG_FORMAT) -i $(FORMAT_FILES)

format-check: | deps-lint
	$(CLANG_FORMAT) --dry-run --Werror $(FORMAT_FILES)

tidy: $(B)/examples/gateway_config.h | deps-lint deps
	$(CLANG_TIDY) --quiet $(TIDY_FILES) -- $(STD) -Iinclude -Ilib -I$(B)/examples $(DEP_CFLAGS) $(OPT_CFLAGS)

cppcheck: | deps-lint
	$(CPPCHECK) --quiet --error-exitcode=1 --std=c11 --inline-suppr \
	    --enable=warning,performance,portability --suppress=missingIncludeSystem \
	    -D__GNUC__ -D__x86_64__ -DFG_HAVE_HIREDIS=1 -DFG_HAVE_CURL=1 -Iinclude -Ilib \
	    $(wildcard lib examples bench tools)

clean:
	rm -rf build
