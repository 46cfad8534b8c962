"""Tests of the floodgate Python binding (examples/python/floodgate.py).

Run with FLOODGATE_LIB pointing at libfloodgate.so:

    cd examples/python
    FLOODGATE_LIB=../../build/release/libfloodgate.so python3 -m unittest -v test_floodgate

or through tests/test_python.sh, which `make check` runs. Time-dependent
tests run on a fake clock, so every count below is exact and the suite
takes no real time except where threads or the file watcher are involved.
"""

import gc
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest
import warnings
import weakref
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import floodgate as fg  # noqa: E402

S = 1_000_000_000  # ns per second
H = 3600 * S

W3C_EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def limited_config(version="v1", rate="1/h", burst=5, **extra):
    """One limiter in the chain and one handler for every request."""
    api = {"rate": rate, "burst": burst}
    api.update(extra)
    return {
        "version": version,
        "limiters": {"api": api},
        "chain": [{"limiter": "api"}],
        "handler": "hello",
    }


ROUTED = {
    "version": "r1",
    "limiters": {"api": {"rate": "1/h", "burst": 100}},
    "breakers": {"db": {"consecutive_failures": 3, "open_for": "5s", "half_open_probes": 1}},
    "faults": {"slow": {"delay": {"percent": 100, "duration": "2s"}}},
    "chain": ["trace", {"limiter": "api"}],
    "routes": [
        {
            "name": "orders",
            "match": {"path": {"pattern": "/orders/:id"}, "methods": ["GET", "POST"]},
            "stages": [{"breaker": "db"}],
            "handler": "orders",
        },
        {"name": "slow", "match": {"path": {"prefix": "/slow"}}, "stages": [{"fault": "slow"}],
         "handler": "echo"},
        {"name": "echo", "match": {"path": {"prefix": "/echo"}}, "handler": "echo"},
    ],
}


class Fixture(unittest.TestCase):
    """A runtime on a fake clock with handlers "hello", "echo" and "orders"
    (which fails while self.failures > 0); breaker events go to self.events."""

    def setUp(self):
        self.clock = fg.FakeClock(S)
        self.events = []
        self.rt = fg.Runtime(clock=self.clock, on_breaker=self.events.append)
        self.calls = 0
        self.failures = 0
        self.rt.add_handler("hello", self._hello)
        self.rt.add_handler("echo", lambda req: (req.method, req.path, req.route))
        self.rt.add_handler("orders", self._orders)

    def tearDown(self):
        if not self.rt.closed:
            self.rt.close()

    def _hello(self, req):
        self.calls += 1
        return f"hello {req.path}"

    def _orders(self, req):
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ValueError(f"order {req.param('id')} failed")
        if req.param("nope", "-") != "-":
            raise AssertionError("a parameter the pattern does not have")
        return {"id": req.param("id"), "route": req.route}

    def run_n(self, n, path="/x"):
        """Call n times; returns (admitted, rate limited)."""
        ok = limited = 0
        for _ in range(n):
            try:
                self.rt.call("GET", path)
                ok += 1
            except fg.RateLimited:
                limited += 1
        return ok, limited


# ---- the library, its structures and its error table -----------------------------------------


def _compile_layout_probe(tmp):
    """Compile a C program printing sizeof/offsetof of every mirrored
    structure and the error codes, against the repository's headers.
    Returns its output as {name: int}, or None when it cannot be built."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    include = Path(os.environ.get("FLOODGATE_INCLUDE", HERE.parents[1] / "include"))
    if cc is None or not (include / "floodgate.h").exists():
        return None
    lines = [
        "#include <floodgate.h>",
        "#include <stddef.h>",
        "#include <stdio.h>",
        "int main(void) {",
        '    printf("fg_ctx %zu\\n", sizeof(fg_ctx));',
        '    printf("FG_CONFIG_MAX_ERRORS %d\\n", (int)FG_CONFIG_MAX_ERRORS);',
        '    printf("FG_TRACEPARENT_LEN %d\\n", (int)FG_TRACEPARENT_LEN);',
        '    printf("FG_VERSION_NUMBER %d\\n", (int)FG_VERSION_NUMBER);',
    ]
    for code in fg.Code:
        if code:
            lines.append(f'    printf("FG_{code.name} %d\\n", (int)FG_{code.name});')
    for st in fg._MIRRORED:
        c = st._c_name_
        lines.append(f'    printf("{c} %zu\\n", sizeof({c}));')
        for field, _ in st._fields_:
            cfield = "from" if field == "from_" else field
            lines.append(f'    printf("{c}.{field} %zu\\n", offsetof({c}, {cfield}));')
    lines += ["    return 0;", "}"]
    src = Path(tmp) / "layout.c"
    exe = Path(tmp) / "layout"
    src.write_text("\n".join(lines) + "\n")
    r = subprocess.run([cc, "-std=c11", "-I", str(include), str(src), "-o", str(exe)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("layout probe did not compile:\n" + r.stderr)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30, check=True)
    return {k: int(v) for k, v in (ln.split() for ln in out.stdout.splitlines())}


class LibraryTest(unittest.TestCase):
    def test_version_and_path(self):
        self.assertRegex(fg.library_version(), r"^\d+\.\d+\.\d+$")
        self.assertTrue(fg.library_version().startswith(f"{fg.ABI_MAJOR}."))
        self.assertTrue(os.path.exists(fg.library_path()))

    def test_mirrored_structures_match_the_headers(self):
        with tempfile.TemporaryDirectory() as tmp:
            c = _compile_layout_probe(tmp)
        if c is None:
            self.skipTest("no C compiler or no include/floodgate.h to check against")
        for st in fg._MIRRORED:
            name = st._c_name_
            self.assertEqual(fg.ctypes.sizeof(st), c[name], f"sizeof({name})")
            for field, _ in st._fields_:
                self.assertEqual(getattr(st, field).offset, c[f"{name}.{field}"],
                                 f"offsetof({name}, {field})")
        # The library these tests load was built from the same headers.
        self.assertEqual(fg.ctx_size(), c["fg_ctx"])
        self.assertEqual(fg.CONFIG_MAX_ERRORS, c["FG_CONFIG_MAX_ERRORS"])
        self.assertEqual(c["FG_TRACEPARENT_LEN"], 55)
        for code in fg.Code:
            if code:
                self.assertEqual(int(code), c[f"FG_{code.name}"], code.name)

    def test_structure_sizes_by_what_the_library_writes(self):
        # Without a compiler: fg_traceparent_parse zeroes exactly its struct
        # on error, fg_limiter_get writes exactly its struct.
        size = fg.ctypes.sizeof(fg._TraceParentC)
        buf = (fg.ctypes.c_uint8 * (size + 16))(*([0xAA] * (size + 16)))
        tp = fg.ctypes.cast(buf, fg.ctypes.POINTER(fg._TraceParentC))
        self.assertEqual(fg._traceparent_parse(b"garbage", 7, tp), fg.Code.EPARSE)
        self.assertEqual(bytes(buf[:size]), bytes(size))
        self.assertEqual(bytes(buf[size:]), b"\xaa" * 16)
        self.assertEqual(size, 26)

        size = fg.ctypes.sizeof(fg._LimiterOptionsC)
        with fg.Limiter(rate=7, burst=9, period=2, max_wait=0.5, clock=fg.FakeClock()) as lim:
            buf = (fg.ctypes.c_uint8 * (size + 16))(*([0xAA] * (size + 16)))
            o = fg.ctypes.cast(buf, fg.ctypes.POINTER(fg._LimiterOptionsC))
            self.assertEqual(fg._limiter_get(lim._h, o), 0)
            self.assertEqual(bytes(buf[size:]), b"\xaa" * 16)
            self.assertEqual((o.contents.rate, o.contents.burst), (7, 9))
            self.assertEqual(o.contents.period_ns, 2 * S)
            self.assertEqual(o.contents.max_wait_ns, S // 2)
            self.assertEqual(o.contents.clock.now, lim.clock._c.now)

    def test_error_table(self):
        for code in fg.Code:
            self.assertEqual(fg.err_name(code), f"FG_{code.name}")
            self.assertNotEqual(fg.strerror(code), "unknown error")
            self.assertEqual(fg.is_outcome(code), code <= -100)
        self.assertEqual(fg.err_name(-12345), "FG_EUNKNOWN")
        self.assertEqual(fg.strerror(0), "success")
        self.assertEqual(fg.outcome_name(fg.Code.ELIMITED), "rate_limited")
        self.assertEqual(fg.outcome_name(0), "ok")
        self.assertIsNone(fg.outcome_name(fg.Code.EINVAL))

    def _import_in_subprocess(self, env_lib, prelude=""):
        env = dict(os.environ)
        env.pop("FLOODGATE_LIB", None)
        if env_lib is not None:
            env["FLOODGATE_LIB"] = env_lib
        code = f"import sys; sys.path.insert(0, {str(HERE)!r})\n{prelude}\nimport floodgate"
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60)

    def test_missing_library_is_a_clear_import_error(self):
        r = self._import_in_subprocess("/nonexistent/libfloodgate.so")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ImportError: floodgate: cannot load '/nonexistent/libfloodgate.so' "
                      "(from FLOODGATE_LIB)", r.stderr)
        r = self._import_in_subprocess(
            None, "import ctypes.util; ctypes.util.find_library = lambda name: None")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ImportError: floodgate: libfloodgate not found: set FLOODGATE_LIB",
                      r.stderr)

    def test_ctx_size_is_the_librarys(self):
        self.assertGreater(fg.ctx_size(), 2000)


class ErrorTest(unittest.TestCase):
    def test_every_code_has_its_class(self):
        for code in fg.Code:
            if code == 0:
                continue
            e = fg._error(code)
            self.assertIsInstance(e, fg.FloodgateError)
            self.assertEqual(e.code, code)
            self.assertIs(type(e).default_code, code)
            self.assertEqual(e.name, f"FG_{code.name}")
            self.assertEqual(e.message, fg.strerror(code))
            self.assertEqual(isinstance(e, fg.RequestError), code <= -100)

    def test_attributes_and_text(self):
        e = fg.RateLimited(stage="api", route="orders", retry_after_ns=1500 * 10**6)
        self.assertEqual(e.code, fg.Code.ELIMITED)
        self.assertEqual(e.outcome, "rate_limited")
        self.assertEqual(e.retry_after, 1.5)
        self.assertEqual(str(e), "FG_ELIMITED: rate limited "
                                 "(stage 'api', route 'orders', retry after 1.5s)")
        self.assertEqual(str(fg.InvalidArgument(detail="rate must be >= 1")),
                         "FG_EINVAL: invalid argument: rate must be >= 1")
        self.assertIsInstance(fg.InvalidArgument(), ValueError)
        self.assertIsInstance(fg.ParseError(), ValueError)
        self.assertIsInstance(fg.NotFound(), LookupError)
        unknown = fg.FloodgateError(-12345)
        self.assertEqual((unknown.code, unknown.name), (-12345, "FG_EUNKNOWN"))
        self.assertIs(type(fg._error(-150)), fg.RequestError)  # an outcome code not yet known

    def test_pickle(self):
        for e in (fg.BreakerOpen(retry_after_ns=5), fg.ConfigError(detail="x"),
                  fg.TooLong(detail="name")):
            e2 = pickle.loads(pickle.dumps(e))
            self.assertIs(type(e2), type(e))
            self.assertEqual((e2.code, e2.detail), (e.code, e.detail))


# ---- traceparent -----------------------------------------------------------------------------


class TraceParentTest(unittest.TestCase):
    def test_round_trip(self):
        tp = fg.TraceParent.parse(W3C_EXAMPLE)
        self.assertEqual(tp.version, 0)
        self.assertEqual(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertEqual(tp.parent_id, "00f067aa0ba902b7")
        self.assertEqual(tp.flags, 1)
        self.assertTrue(tp.sampled)
        self.assertFalse(tp.random)
        self.assertEqual(str(tp), W3C_EXAMPLE)
        self.assertEqual(fg.TraceParent.parse(f" \t{W3C_EXAMPLE}\t "), tp)
        self.assertEqual(fg.TraceParent.parse(W3C_EXAMPLE.encode()), tp)
        self.assertEqual(hash(fg.TraceParent.parse(W3C_EXAMPLE)), hash(tp))

    def test_future_version_is_read_as_00_and_written_as_00(self):
        tp = fg.TraceParent.parse(W3C_EXAMPLE.replace("00-", "01-", 1) + "-what-comes-next")
        self.assertEqual(tp.version, 1)
        self.assertEqual(tp.format(), W3C_EXAMPLE)

    def test_malformed_input_is_a_parse_error(self):
        bad = [
            "",
            "00",
            W3C_EXAMPLE[:-1],
            W3C_EXAMPLE + "0",  # version 00 is exactly 55 characters
            W3C_EXAMPLE.upper(),  # lowercase hex only
            "ff" + W3C_EXAMPLE[2:],  # version ff is invalid
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace-id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent-id
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ]
        for value in bad:
            with self.subTest(value=value):
                with self.assertRaises(fg.ParseError) as cm:
                    fg.TraceParent.parse(value)
                self.assertEqual(cm.exception.code, fg.Code.EPARSE)

    def test_new_and_child(self):
        a, b = fg.TraceParent.new(), fg.TraceParent.new(sampled=False)
        self.assertNotEqual(a.trace_id, b.trace_id)
        self.assertEqual((a.flags, b.flags), (3, 2))
        self.assertEqual(fg.TraceParent.parse(str(a)), a)
        c = a.child()
        self.assertEqual((c.trace_id, c.flags), (a.trace_id, a.flags))
        self.assertNotEqual(c.parent_id, a.parent_id)
        self.assertEqual(len(fg.new_trace_id()), 32)
        self.assertEqual(len(fg.new_span_id()), 16)

    def test_constructor_validates(self):
        tp = fg.TraceParent("4BF92F3577B34DA6A3CE929D0E0E4736", bytes(range(1, 9)), flags=0)
        self.assertEqual(str(tp), "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-00")
        for args in (("0" * 32, "00f067aa0ba902b7"), ("4bf9", "00f067aa0ba902b7"),
                     ("4bf92f3577b34da6a3ce929d0e0e4736", "0" * 16),
                     ("x" * 32, "00f067aa0ba902b7")):
            with self.assertRaises(fg.InvalidArgument):
                fg.TraceParent(*args)


# ---- the limiter -----------------------------------------------------------------------------


class LimiterTest(unittest.TestCase):
    def setUp(self):
        self.clock = fg.FakeClock(S)

    def test_burst_then_exact_refill(self):
        lim = fg.Limiter(rate=10, burst=3, clock=self.clock)
        self.assertEqual([lim.try_acquire() for _ in range(4)], [True, True, True, False])
        with self.assertRaises(fg.RateLimited) as cm:
            lim.acquire()
        self.assertEqual(cm.exception.retry_after_ns, S // 10)  # one token per 100 ms
        self.clock.advance_ns(S // 10 - 1)
        self.assertFalse(lim.try_acquire())
        self.clock.advance_ns(1)
        self.assertEqual([lim.try_acquire() for _ in range(2)], [True, False])
        self.clock.advance(10)
        self.assertEqual(lim.tokens(), 3)
        self.assertTrue(lim.try_acquire(3))
        with self.assertRaises(fg.OutOfRange):
            lim.try_acquire(4)  # more than the burst: never possible, a caller bug
        self.assertTrue(lim.try_acquire(1, now_ns=self.clock.now_ns() + S))

    def test_rate_and_burst_changes_keep_tokens(self):
        lim = fg.Limiter(rate=1, period=3600, burst=5, clock=self.clock)
        self.assertTrue(lim.try_acquire(3))
        lim.set_rate(2, period=3600)
        self.assertEqual(lim.tokens(), 2)
        lim.set_burst(1)
        self.assertEqual(lim.tokens(), 1)
        self.assertEqual(lim.options, fg.LimiterOptions(2, 3600 * S, 1, 0, 0, 0))

    def test_smoothing_returns_the_wait(self):
        lim = fg.Limiter(rate=10, burst=1, max_wait=1, clock=self.clock)
        self.assertEqual([lim.acquire() for _ in range(3)], [0.0, 0.1, 0.2])
        with self.assertRaises(fg.RateLimited):
            lim.acquire(max_wait=0.25)  # its slot would be 0.3 s away
        self.assertEqual(lim.acquire(max_wait=0.3), 0.3)

    def test_invalid_options(self):
        with self.assertRaises(fg.InvalidArgument) as cm:
            fg.Limiter(rate=0, burst=1)
        self.assertEqual(cm.exception.detail, "limiter options")
        with self.assertRaises(fg.OutOfRange):
            fg.Limiter(rate=1, burst=1 << 41)
        with self.assertRaises(fg.InvalidArgument):
            fg.Limiter(rate=1, burst=1, period=-1)

    def test_closed(self):
        lim = fg.Limiter(rate=1, burst=1)
        lim.close()
        lim.close()
        with self.assertRaises(fg.StateError):
            lim.try_acquire()

    def test_threads_share_one_bucket_exactly(self):
        lim = fg.Limiter(rate=1, period=3600, burst=1000, clock=self.clock)
        admitted = []
        start = threading.Barrier(8)

        def worker():
            start.wait()
            admitted.append(sum(lim.try_acquire() for _ in range(250)))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(len(admitted), 8)
        self.assertEqual(sum(admitted), 1000)  # 2000 tries, burst 1000, no refill

    def test_callback_clock(self):
        now = [5 * S]
        clock = fg.CallbackClock(lambda: now[0])
        lim = fg.Limiter(rate=2, burst=1, clock=clock)
        self.assertEqual(clock.now_ns(), 5 * S)
        self.assertTrue(lim.try_acquire())
        self.assertFalse(lim.try_acquire())
        now[0] += S // 2
        self.assertTrue(lim.try_acquire())

    def test_callback_clock_exception_is_reported_not_raised(self):
        seen = []
        old, sys.unraisablehook = sys.unraisablehook, seen.append
        try:
            clock = fg.CallbackClock(lambda: 1 / 0)
            self.assertEqual(clock.now_ns(), 0)
        finally:
            sys.unraisablehook = old
        self.assertEqual(len(seen), 1)
        self.assertIs(seen[0].exc_type, ZeroDivisionError)


# ---- the breaker -----------------------------------------------------------------------------


class BreakerTest(unittest.TestCase):
    def setUp(self):
        self.clock = fg.FakeClock(S)
        self.events = []
        self.b = fg.Breaker(consecutive_failures=3, open_for=5, half_open_probes=1,
                            clock=self.clock, on_change=self.events.append)

    def fail(self):
        with self.assertRaises(KeyError):
            with self.b.guard():
                raise KeyError("down")

    def test_opens_after_failures_and_recovers(self):
        for _ in range(3):
            self.assertEqual(self.b.state, "closed")
            self.fail()
        self.assertEqual(self.b.state, "open")
        with self.assertRaises(fg.BreakerOpen) as cm:
            self.b.enter()
        self.assertEqual(cm.exception.retry_after_ns, 5 * S)
        self.clock.advance(2)
        with self.assertRaises(fg.BreakerOpen) as cm:
            self.b.enter()
        self.assertEqual(cm.exception.retry_after_ns, 3 * S)
        self.clock.advance(3)
        probe = self.b.enter()
        self.assertEqual(self.b.state, "half_open")
        with self.assertRaises(fg.BreakerOpen):  # one probe only
            self.b.enter()
        self.assertTrue(probe.success())
        self.assertEqual(self.b.state, "closed")
        self.assertEqual(
            [(e.from_state, e.to_state, e.reason, e.at_ns) for e in self.events],
            [("closed", "open", "consecutive_failures", S),
             ("open", "half_open", "open_elapsed", 6 * S),
             ("half_open", "closed", "probes_ok", 6 * S)],
        )
        self.assertEqual(self.events[0].open_for_ns, 5 * S)
        st = self.b.stats()
        self.assertEqual((st.state, st.mode, st.opened, st.half_opened, st.closed, st.rejected),
                         ("closed", "auto", 1, 1, 1, 3))

    def test_ignored_exceptions_and_success_break_the_run(self):
        with self.assertRaises(LookupError):
            with self.b.guard(ignore=(LookupError,)):
                raise KeyError("not the dependency's fault")
        self.fail()
        self.fail()
        with self.b.guard():
            pass
        self.fail()
        self.fail()
        self.assertEqual(self.b.state, "closed")
        self.assertEqual(self.b.stats().consecutive_failures, 2)

    def test_decorator_and_permits(self):
        @self.b
        def dependency(x):
            if x < 0:
                raise ValueError(x)
            return x * 2

        self.assertEqual(dependency(21), 42)
        for _ in range(3):
            with self.assertRaises(ValueError):
                dependency(-1)
        with self.assertRaises(fg.BreakerOpen):
            dependency(1)
        self.b.reset()
        p = self.b.enter()
        self.assertTrue(p.failure())
        with self.assertRaises(fg.StateError):
            p.success()

    def test_modes(self):
        self.b.set_mode("forced_open")
        with self.assertRaises(fg.BreakerOpen) as cm:
            self.b.enter()
        self.assertEqual(cm.exception.retry_after_ns, 0)  # unknown while forced
        self.assertEqual(self.b.stats().mode, "forced_open")
        self.b.set_mode("auto")
        self.b.enter().success()
        with self.assertRaises(fg.InvalidArgument):
            self.b.set_mode("sideways")

    def test_invalid_options(self):
        with self.assertRaises(fg.OutOfRange):
            fg.Breaker(half_open_probes=10001)
        with self.assertRaises(fg.InvalidArgument):
            fg.Breaker(failure_ratio=-1)

    def test_listener_exception_is_reported_not_raised(self):
        seen = []

        def listener(event):
            raise RuntimeError("listener bug")

        b = fg.Breaker(consecutive_failures=1, clock=self.clock, on_change=listener)
        old, sys.unraisablehook = sys.unraisablehook, seen.append
        try:
            b.enter().failure()  # opens: the listener raises inside C's call
        finally:
            sys.unraisablehook = old
        self.assertEqual(b.state, "open")
        self.assertEqual([type(s.exc_value) for s in seen], [RuntimeError])

    def test_close_inside_the_listener_is_refused(self):
        errors = []

        def listener(event):
            try:
                b.close()
            except fg.StateError as e:
                errors.append(e)

        b = fg.Breaker(consecutive_failures=1, clock=self.clock, on_change=listener)
        b.enter().failure()
        self.assertEqual(len(errors), 1)
        b.close()


# ---- the runtime -----------------------------------------------------------------------------


class RuntimeTest(Fixture):
    def test_call_returns_the_handlers_result(self):
        self.rt.load_json(ROUTED)
        req = fg.Request("GET", "/orders/42", {"X-User": "7"})
        self.assertEqual(self.rt.call(req), {"id": "42", "route": "orders"})
        self.assertEqual((req.status, req.route, req.stage), (0, "orders", None))
        self.assertEqual(req.header("x-user"), "7")
        with self.assertRaises(fg.StateError):
            req.param("id")  # only in flight: the names are the router's
        self.assertEqual(self.rt.call("POST", "/echo/a?b=c"), ("POST", "/echo/a?b=c", "echo"))
        self.assertEqual((self.rt.version, self.rt.generation), ("r1", 1))

    def test_before_any_config(self):
        self.assertIsNone(self.rt.version)
        with self.assertRaises(fg.StateError):
            self.rt.call("GET", "/")

    def test_no_route(self):
        self.rt.load_json(ROUTED)
        with self.assertRaises(fg.NoRoute) as cm:
            self.rt.call("GET", "/nowhere")
        e = cm.exception
        self.assertEqual((e.code, e.route, e.stage), (fg.Code.ENOROUTE, None, "router"))
        self.assertEqual(e.request.status, fg.Code.ENOROUTE)
        with self.assertRaises(fg.NoRoute):
            self.rt.call("DELETE", "/orders/1")  # the route takes GET and POST

    def test_handler_exception_is_raised_to_the_caller(self):
        self.rt.load_json(ROUTED)
        self.failures = 1
        req = fg.Request("GET", "/orders/9")
        with self.assertRaises(ValueError) as cm:
            self.rt.call(req)
        self.assertEqual(str(cm.exception), "order 9 failed")
        self.assertEqual(req.status, fg.Code.EHANDLER)  # what C was told
        self.assertEqual(self.rt.metrics.route("orders").failed, 1)
        self.assertEqual(self.rt.call(req)["id"], "9")  # and the request can run again

    def test_base_exceptions_do_not_cross_into_c_either(self):
        @self.rt.handler("exit")
        def exit_handler(req):
            raise SystemExit(3)

        self.rt.load_json({"version": "e", "chain": [], "handler": "exit"})
        with self.assertRaises(SystemExit) as cm:
            self.rt.call("GET", "/")
        self.assertEqual(cm.exception.code, 3)
        self.assertEqual(self.rt.metrics.route("default").failed, 1)

    def test_handler_raising_a_floodgate_error_reports_its_code(self):
        @self.rt.handler("busy")
        def busy(req):
            raise fg.Overloaded(detail="queue full")

        self.rt.load_json({"version": "b", "chain": [], "handler": "busy"})
        req = fg.Request("GET", "/")
        with self.assertRaises(fg.Overloaded) as cm:
            self.rt.call(req)
        self.assertEqual((cm.exception.detail, cm.exception.route), ("queue full", "default"))
        self.assertEqual(req.status, fg.Code.EOVERLOADED)

    def test_breaker_opens_after_failures(self):
        self.rt.load_json(ROUTED)
        self.failures = 3
        for _ in range(3):
            with self.assertRaises(ValueError):
                self.rt.call("GET", "/orders/1")
        calls = self.calls
        with self.assertRaises(fg.BreakerOpen) as cm:
            self.rt.call("GET", "/orders/1")
        e = cm.exception
        self.assertEqual((e.stage, e.route, e.retry_after_ns), ("db", "orders", 5 * S))
        self.assertEqual(self.calls, calls)  # the handler was not called
        self.clock.advance(5)
        self.assertEqual(self.rt.call("GET", "/orders/2")["id"], "2")  # the probe closes it
        self.assertEqual([(e.breaker, e.from_state, e.to_state) for e in self.events],
                         [("db", "closed", "open"), ("db", "open", "half_open"),
                          ("db", "half_open", "closed")])

    def test_rate_limit_is_exact(self):
        self.rt.load_json(limited_config(burst=5))
        self.assertEqual(self.run_n(8), (5, 3))
        with self.assertRaises(fg.RateLimited) as cm:
            self.rt.call("GET", "/x")
        self.assertEqual((cm.exception.stage, cm.exception.retry_after_ns), ("api", H))
        self.clock.advance(3600)
        self.assertEqual(self.run_n(2), (1, 1))

    def test_reload_keeps_limiter_tokens(self):
        # docs/config.md: rate "1/h", burst 5, take 3, reload with "2/h" ->
        # 2 admitted; reload with another max_wait -> a fresh bucket, 5.
        self.rt.load_json(limited_config("v1", rate="1/h", burst=5))
        self.assertEqual(self.run_n(3), (3, 0))
        self.rt.load_json(limited_config("v2", rate="2/h", burst=5))
        self.assertEqual((self.rt.version, self.rt.generation), ("v2", 2))
        self.assertEqual(self.run_n(5), (2, 3))
        self.rt.load_json(limited_config("v3", rate="2/h", burst=5, max_wait="1ms"))
        self.assertEqual(self.run_n(7), (5, 2))

    def test_broken_config_raises_and_the_old_one_keeps_serving(self):
        self.rt.load_json(limited_config("good", burst=2))
        self.assertEqual(self.run_n(1), (1, 0))
        bad = limited_config("bad", burst=0)
        bad["chain"] = [{"limiter": "apj"}]
        with self.assertRaises(fg.ConfigError) as cm:
            self.rt.load_json(bad)
        e = cm.exception
        self.assertEqual(e.code, fg.Code.ECONFIG)
        self.assertEqual(e.issues, [
            fg.ConfigIssue("limiters.api.burst", 0, 0, "must be >= 1"),
            fg.ConfigIssue("chain[0].limiter", 0, 0, 'unknown limiter "apj"'),
        ])
        self.assertEqual(e.text, 'limiters.api.burst: must be >= 1\n'
                                 'chain[0].limiter: unknown limiter "apj"\n')
        self.assertIn("limiters.api.burst: must be >= 1", str(e))
        with self.assertRaises(fg.ConfigError) as cm:
            self.rt.load_json('{"version": "x",')
        (issue,) = cm.exception.issues
        self.assertEqual((issue.path, issue.line, issue.column), ("", 1, 16))
        with self.assertRaises(fg.ConfigError) as cm:
            self.rt.load_json(limited_config("h") | {"handler": "nope"})
        self.assertIn('handler: unknown handler "nope"', cm.exception.text)
        # Nothing changed: same version, and the limiter still holds 1 token.
        self.assertEqual((self.rt.version, self.rt.generation), ("good", 1))
        self.assertEqual(self.run_n(2), (1, 1))
        prom = self.rt.metrics.prometheus()
        self.assertIn('floodgate_config_reloads_total{result="ok"} 1\n', prom)
        self.assertIn('floodgate_config_reloads_total{result="error"} 3\n', prom)
        self.assertIn('floodgate_config_info{version="good"} 1\n', prom)

    def test_check_config(self):
        cfg = limited_config() | {"handler": "unregistered"}
        fg.check_config(cfg)  # without a registry, handler names are not checked
        with self.assertRaises(fg.ConfigError):
            self.rt.check(cfg)
        with self.assertRaises(fg.ConfigError) as cm:
            fg.check_config({"version": "x", "chain": [], "handler": "h", "extra": 1})
        self.assertEqual(cm.exception.issues[0].path, "extra")

    def test_load_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "floodgate.json"
            path.write_text(fg.json.dumps(limited_config("from-file")))
            self.rt.load_file(path)
            self.assertEqual(self.rt.version, "from-file")
            with self.assertRaises(fg.SystemCallError) as cm:
                self.rt.load_file(Path(tmp) / "missing.json")
            self.assertIn("missing.json", str(cm.exception))

    def test_fallback_answers_rejections_and_failures(self):
        seen = []

        @self.rt.fallback("cached")
        def cached(req, err):
            seen.append((type(err), err.stage, type(err.__cause__)))
            if req.path == "/raise":
                raise LookupError("no cache for " + req.path)
            return "from cache"

        self.rt.load_json(limited_config(burst=1) | {"fallback": "cached"})
        self.assertEqual(self.rt.call("GET", "/a"), "hello /a")
        self.assertEqual(self.rt.call("GET", "/b"), "from cache")
        with self.assertRaises(LookupError):
            self.rt.call("GET", "/raise")
        self.assertEqual(seen, [(fg.RateLimited, "api", type(None))] * 2)

        self.failures = 1
        self.rt.load_json(ROUTED | {"fallback": "cached"})
        self.clock.advance(3600)  # "api" kept its empty bucket across the reload
        self.assertEqual(self.rt.call("GET", "/orders/1"), "from cache")
        self.assertEqual(seen[-1], (fg.HandlerFailed, None, ValueError))

    def test_request_validation(self):
        with self.assertRaises(fg.InvalidArgument):
            fg.Request("GE T", "/")
        with self.assertRaises(fg.TooMany):
            fg.Request("GET", "/", [(f"h{i}", "v") for i in range(33)])
        with self.assertRaises(fg.TooLong):
            fg.Request("GET", "/", {"x" * 257: "v"})
        with self.assertRaises(fg.TooLong):
            fg.Request("GET", "/" * 8193)
        fg.Request(None, "/message")  # no method: a message, not an HTTP request

    def test_request_runs_one_at_a_time(self):
        self.rt.load_json(ROUTED)
        req = fg.Request("GET", "/echo")

        @self.rt.handler("nested")
        def nested(inner):
            return self.rt.call(req)

        rt2 = fg.Runtime(self.rt.registry)
        rt2.load_json({"version": "n", "chain": [], "handler": "nested"})
        with self.assertRaises(fg.StateError):
            rt2.call(req)  # the handler tries to run req while it is in flight
        rt2.close()
        self.assertEqual(self.rt.call(req), ("GET", "/echo", "echo"))

    def test_cancel_and_deadline(self):
        self.rt.load_json(ROUTED)
        req = fg.Request("GET", "/echo")
        req.cancel()
        with self.assertRaises(fg.Canceled):
            self.rt.call(req)
        with self.assertRaises(fg.TimedOut) as cm:
            self.rt.call(fg.Request("GET", "/slow", timeout=1))  # a 2 s injected delay
        self.assertEqual(cm.exception.route, "slow")
        self.assertEqual(self.clock.now_ns(), S)  # rejected before sleeping

        left = []

        @self.rt.handler("timed")
        def timed(req):
            self.clock.advance(0.25)
            left.append(req.time_left)
            return "ok"

        self.rt.load_json({"version": "t", "chain": [{"timeout": "1s"}], "handler": "timed"})
        self.assertEqual(self.rt.call("GET", "/"), "ok")
        self.assertEqual(self.rt.call(fg.Request("GET", "/", timeout=0.5)), "ok")
        self.assertEqual(left, [0.75, 0.25])
        with self.assertRaises(fg.StateError):
            fg.Request("GET", "/").time_left  # only in flight

    def test_smoothing_sleeps_on_the_runtime_clock(self):
        self.rt.load_json(limited_config(rate="10/s", burst=1, max_wait="1s"))
        self.rt.call("GET", "/a")
        req = fg.Request("GET", "/b")
        self.rt.call(req)
        self.assertEqual((req.delay_ns, self.clock.now_ns()), (S // 10, S + S // 10))

    def test_trace_context(self):
        self.rt.load_json(ROUTED)
        seen = {}

        @self.rt.handler("traced")
        def traced(req):
            seen["trace_id"] = req.trace_id
            seen["out"] = req.outgoing_headers("fg")
            seen["tenant"] = req.baggage("tenant")
            return "ok"

        self.rt.load_json({"version": "t", "chain": ["trace"], "handler": "traced"})
        req = fg.Request("GET", "/", {"traceparent": W3C_EXAMPLE, "tracestate": "congo=t61",
                                      "baggage": "tenant=acme%20corp,env=gray"})
        self.rt.call(req)
        self.assertEqual(seen["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertEqual(req.trace_id, seen["trace_id"])
        self.assertEqual(seen["tenant"], "acme corp")
        out = seen["out"]
        down = fg.TraceParent.parse(out["traceparent"])
        self.assertEqual(down.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertNotEqual(down.parent_id, "00f067aa0ba902b7")  # this hop's span
        self.assertEqual(out["tracestate"], f"fg={down.parent_id},congo=t61")
        self.assertEqual(out["baggage"], "tenant=acme%20corp,env=gray")
        with self.assertRaises(fg.StateError):
            fg.Request("GET", "/").outgoing_headers()  # no trace stage ran
        self.assertIsNone(fg.Request("GET", "/").trace_id)


class SplitApiTest(Fixture):
    def setUp(self):
        super().setUp()
        self.rt.load_json(ROUTED)

    def test_enter_dispatch_exit(self):
        req = fg.Request("GET", "/orders/5")
        adm = self.rt.enter(req)
        self.assertEqual((adm.route, adm.delay, req.in_flight), ("orders", 0.0, True))
        self.assertEqual(adm.dispatch(), {"id": "5", "route": "orders"})
        adm.exit()
        self.assertFalse(req.in_flight)
        with self.assertRaises(fg.StateError):
            adm.exit()
        self.assertEqual(self.rt.metrics.route("orders").ok, 1)

    def test_context_manager_exits_with_the_failure(self):
        self.failures = 1
        with self.assertRaises(ValueError):
            with self.rt.enter(fg.Request("GET", "/orders/6")) as adm:
                adm.dispatch()
        self.assertTrue(adm.exited)
        with self.rt.enter(fg.Request("GET", "/echo")) as adm:
            pass  # our own work, no handler: exit(0)
        with self.assertRaises(KeyError):
            with self.rt.enter(fg.Request("GET", "/echo")):
                raise KeyError("our own work failed")
        with self.assertRaises(fg.Overloaded):
            with self.rt.enter(fg.Request("GET", "/echo")):
                raise fg.Overloaded()
        echo = self.rt.metrics.route("echo")
        self.assertEqual((echo.ok, echo.failed), (1, 2))
        self.assertEqual(self.rt.metrics.route("orders").failed, 1)

    def test_exit_on_another_thread(self):
        adm = self.rt.enter(fg.Request("GET", "/echo"))
        t = threading.Thread(target=adm.exit, args=(fg.Code.ETIMEDOUT,))
        t.start()
        t.join(10)
        self.assertTrue(adm.exited)
        self.assertEqual(adm.request.status, fg.Code.ETIMEDOUT)

    def test_rejected_enter_needs_no_exit(self):
        self.rt.load_json(limited_config(burst=1))
        req = fg.Request("GET", "/x")
        self.rt.enter(req).exit()
        with self.assertRaises(fg.RateLimited) as cm:
            self.rt.enter(req)
        self.assertEqual(cm.exception.stage, "api")
        self.assertFalse(req.in_flight)
        self.rt.close()  # nothing in flight

    def test_close_refuses_while_admitted_and_abandoned_admissions_exit(self):
        adm = self.rt.enter(fg.Request("GET", "/echo"))
        with self.assertRaises(fg.StateError):
            self.rt.close()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            del adm
            gc.collect()
        self.assertEqual([x.category for x in w], [ResourceWarning])
        self.rt.close()  # the abandoned request was exited


# ---- callbacks' lifetime ---------------------------------------------------------------------


class LifetimeTest(unittest.TestCase):
    def test_forgotten_callables_stay_alive_while_the_runtime_may_call_them(self):
        def make_runtime():
            reg = fg.Registry()
            reg.add_handler("h", lambda req: "lambda " + req.path)
            reg.add_fallback("f", lambda req, err: "fallback " + err.outcome)
            rt = fg.Runtime(reg, clock=fg.FakeClock())
            rt.load_json(limited_config(burst=1) | {"handler": "h", "fallback": "f"})
            return rt  # nothing else references the registry, lambdas or clock

        rt = make_runtime()
        gc.collect()
        self.assertEqual(rt.call("GET", "/a"), "lambda /a")
        self.assertEqual(rt.call("GET", "/b"), "fallback rate_limited")
        rt.close()

    def test_callables_are_released_after_close(self):
        def handler(req):
            return "ok"

        ref = weakref.ref(handler)
        rt = fg.Runtime()
        rt.add_handler("h", handler)
        rt.load_json({"version": "1", "chain": [], "handler": "h"})
        del handler
        gc.collect()
        self.assertIsNotNone(ref())  # kept by the runtime's registry
        self.assertEqual(rt.call("GET", "/"), "ok")
        rt.close()
        del rt
        gc.collect()
        self.assertIsNone(ref())

    def test_use_after_close(self):
        rt = fg.Runtime()
        rt.close()
        rt.close()
        self.assertTrue(rt.closed)
        for op in (lambda: rt.call("GET", "/"), lambda: rt.version, lambda: rt.metrics.json(),
                   lambda: rt.load_json(limited_config())):
            with self.assertRaises(fg.StateError):
                op()

    def test_duplicate_names(self):
        reg = fg.Registry()
        reg.add_handler("h", print)
        with self.assertRaises(fg.AlreadyExists):
            reg.add_handler("h", print)
        with self.assertRaises(fg.InvalidArgument):
            reg.add_handler("x", "not callable")
        self.assertEqual(reg.handlers, ["h"])


# ---- threads ---------------------------------------------------------------------------------


class ThreadTest(Fixture):
    def test_concurrent_calls_admit_exactly_the_burst(self):
        self.rt.load_json(limited_config(burst=100))
        lock = threading.Lock()
        counts = {"ok": 0, "limited": 0, "handled": 0}
        start = threading.Barrier(8)

        @self.rt.handler("counted")
        def counted(req):
            with lock:
                counts["handled"] += 1
            return req.path

        self.rt.load_json(limited_config("c", burst=100) | {"handler": "counted"})

        def worker(i):
            start.wait()
            for j in range(40):
                try:
                    path = f"/t{i}/{j}"
                    if self.rt.call("GET", path) != path:
                        raise AssertionError("wrong result")
                    outcome = "ok"
                except fg.RateLimited:
                    outcome = "limited"
                with lock:
                    counts[outcome] += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(counts, {"ok": 100, "limited": 220, "handled": 100})
        m = self.rt.metrics
        self.assertEqual(m.route("default").ok, 100)
        self.assertEqual(m.route("").rejected_by["rate_limited"], 220)  # before routing
        self.assertEqual(m.stage_rejections("api", fg.Code.ELIMITED), 220)

    def test_handlers_run_in_parallel_threads(self):
        # Four requests meet inside their handlers at once: the GIL is free
        # while a thread is in C, and each callback takes it back.
        meet = threading.Barrier(4, timeout=10)
        self.rt.add_handler("meet", lambda req: meet.wait())
        self.rt.load_json({"version": "m", "chain": [], "handler": "meet"})
        results = []
        threads = [threading.Thread(target=lambda: results.append(self.rt.call("GET", "/")))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(sorted(results), [0, 1, 2, 3])

    def test_reloads_while_requests_flow(self):
        self.rt.load_json(limited_config("v0", burst=10**6))
        stop = threading.Event()
        done = []
        errors = []

        def worker():
            n = 0
            try:
                while not stop.is_set() or n < 50:
                    req = fg.Request("GET", "/r")
                    self.rt.call(req)
                    if req.route != "default":
                        raise AssertionError(req.route)
                    n += 1
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            done.append(n)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for i in range(1, 41):
            self.rt.load_json(limited_config(f"v{i}", burst=10**6 + i % 2))
        stop.set()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual((self.rt.version, self.rt.generation), ("v40", 41))
        self.assertEqual(self.calls, sum(done))
        self.assertEqual(self.rt.metrics.route("default").ok, sum(done))


# ---- metrics ---------------------------------------------------------------------------------


class MetricsTest(Fixture):
    def test_prometheus_and_json(self):
        self.rt.load_json(ROUTED | {"version": "m1"})
        self.rt.call("GET", "/orders/1")
        self.rt.call("GET", "/orders/2")
        self.failures = 3
        for _ in range(3):
            with self.assertRaises(ValueError):
                self.rt.call("GET", "/orders/3")
        with self.assertRaises(fg.BreakerOpen):
            self.rt.call("GET", "/orders/4")
        with self.assertRaises(fg.NoRoute):
            self.rt.call("GET", "/none")
        prom = self.rt.metrics.prometheus()
        for line in (
            '# TYPE floodgate_requests_total counter',
            'floodgate_requests_total{chain="main",route="orders",decision="admitted",code="ok"} 2',
            'floodgate_requests_total{chain="main",route="orders",decision="admitted",'
            'code="handler_failed"} 3',
            'floodgate_requests_total{chain="main",route="orders",decision="rejected",'
            'code="breaker_open"} 1',
            'floodgate_requests_total{chain="main",route="",decision="rejected",'
            'code="no_route"} 1',
            'floodgate_request_duration_seconds_count{chain="main",route="orders"} 5',
            'floodgate_stage_rejections_total{stage="db",code="breaker_open"} 1',
            'floodgate_breaker_state{breaker="db"} 1',
            'floodgate_breaker_transitions_total{breaker="db",from="closed",to="open"} 1',
            'floodgate_config_reloads_total{result="ok"} 1',
            'floodgate_config_info{version="m1"} 1',
        ):
            self.assertIn(line + "\n", prom)
        snap = self.rt.metrics.json()
        self.assertEqual(snap["version"], "m1")
        self.assertEqual(snap["reloads"], {"ok": 1, "error": 0})
        orders = next(s for s in snap["series"] if s["route"] == "orders")
        self.assertEqual(orders["admitted"], {"ok": 2, "handler_failed": 3})
        self.assertEqual(orders["rejected"], {"breaker_open": 1})
        st = self.rt.metrics.route("orders")
        self.assertEqual((st.ok, st.failed, st.rejected, st.latency_count), (2, 3, 1, 5))
        self.assertEqual(st.rejected_by["breaker_open"], 1)
        with self.assertRaises(fg.NotFound):
            self.rt.metrics.route("no-such-route")


# ---- watching a file -------------------------------------------------------------------------


class WatchTest(Fixture):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "floodgate.json"
        self.events = queue.Queue()

    def tearDown(self):
        super().tearDown()
        self.tmp.cleanup()

    def write(self, cfg):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(cfg if isinstance(cfg, str) else fg.json.dumps(cfg))
        os.replace(tmp, self.path)  # as editors and deploy tools do

    def on_reload(self, rt, err):
        self.events.put((threading.get_ident(), err, rt.version))

    def test_reloads_on_change_from_the_watchers_thread(self):
        self.write(limited_config("w1"))
        main = threading.get_ident()
        with self.rt.watch(self.path, self.on_reload, debounce=0.02) as w:
            self.assertEqual(self.events.get(timeout=5), (main, None, "w1"))
            with self.assertRaises(fg.StateError):
                self.rt.add_handler("late", print)  # the watcher reads the registry
            self.write(limited_config("w2"))
            ident, err, version = self.events.get(timeout=10)
            self.assertNotEqual(ident, main)  # a C thread called into Python
            self.assertEqual((err, version), (None, "w2"))
            self.write('{"version": "w3", "chain": [], "handler": "missing"}')
            ident, err, version = self.events.get(timeout=10)
            self.assertIsInstance(err, fg.ConfigError)
            self.assertIn('unknown handler "missing"', err.text)
            self.assertEqual(version, "w2")  # the old config keeps serving
            self.assertEqual(w.stats, fg.WatchStats(3, 2, 1))
        self.assertTrue(w.stopped)
        w.stop()
        self.rt.add_handler("late", print)
        self.assertEqual(self.rt.call("GET", "/"), "hello /")

    def test_a_failed_first_load_raises_and_nothing_runs(self):
        self.write({"version": "bad", "chain": []})
        with self.assertRaises(fg.ConfigError) as cm:
            self.rt.watch(self.path, self.on_reload)
        self.assertIn("handler", cm.exception.text)
        self.assertEqual(self.events.qsize(), 1)
        self.rt.add_handler("late", print)  # no watcher holds the registry

    def test_stop_inside_on_reload_is_refused(self):
        self.write(limited_config("w1"))
        holder = {}

        def on_reload(rt, err):
            if "w" in holder:
                try:
                    holder["w"].stop()
                except fg.StateError as e:
                    self.events.put(e)

        holder["w"] = w = self.rt.watch(self.path, on_reload, debounce=0.02)
        self.write(limited_config("w2"))
        self.assertIsInstance(self.events.get(timeout=10), fg.StateError)
        w.stop()

    def test_close_stops_the_watcher(self):
        self.write(limited_config("w1"))
        w = self.rt.watch(self.path, self.on_reload, debounce=0.02)
        self.rt.close()
        self.assertTrue(w.stopped)


if __name__ == "__main__":
    unittest.main()
