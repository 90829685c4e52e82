"""The in-sandbox test harness: a small, long-lived "zygote" that forks per submission/test.

It runs INSIDE the sandbox (bubblewrap or a container) under the system's ``python3 -I -S``,
so it uses the standard library only and lives in one file. The worker outside talks to it
over four pipes:

- fd 0 (control in): framed JSON requests, one per submission;
- fd 1 (control out): framed JSON replies: per-test outputs, compile errors, timing;
- the tests fd (``--tests-fd``, default 3): assertion-style test code, read ONLY by the
  checker process;
- the verdicts fd (``--verdicts-fd``, default 4): assertion-style verdicts, written ONLY by the
  checker process.

(With ``--fd-socket PATH`` all four arrive over a unix socket instead, for containers.)

Trust rules (what makes verdicts unforgeable):

- Expected outputs of stdin/stdout and call-based tests never enter the sandbox: the program's
  raw outputs go back and the worker compares them outside.
- For assertion-style tests the untrusted code ("the candidate", process A) and the test code
  ("the checker", process B) run in different processes. B gets the test code from fd 3 and
  calls A's functions through a pipe, receiving return values as plain data (no objects with
  a custom ``__eq__``); only B can write to fd 4. A closes fds 3 and 4 before running anything,
  was forked before the test code existed anywhere in the sandbox, and cannot reopen them or
  read B's memory: the zygote and B are not dumpable, so /proc/<pid>/fd, /proc/<pid>/mem and
  ptrace are closed to other processes of the same user.
- B tells the zygote that its verdict is written with one byte on a pipe made after A started,
  which only B holds; the zygote then replies. A forged or missing byte gains nothing: the
  worker only counts a verdict frame that B wrote on fd 4.
- After each submission's reply, and before the next request is read, every process the
  submission left behind is killed (``kill(-1)`` from the zygote: every process of the sandbox
  except bwrap's init and the zygote itself), and its working directory is deleted.
- What a submission can change in the zygote from outside (the same uid may lower its rlimits,
  nice value, scheduling policy and CPUs) would pass to every later fork: after the cleanup, and
  again before the next submission starts, the zygote compares that state with what it was at
  start, and exits on any change (the worker then starts a fresh sandbox).
"""

import _signal  # signal's C core: signal.signal's enum wrapping makes a forked child copy pages
import builtins
import contextlib
import ctypes
import gc
import json
import marshal
import math
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import time
import traceback

CONTROL_IN, CONTROL_OUT = 0, 1
TESTS_IN, VERDICTS_OUT = 3, 4  # overridden by --tests-fd / --verdicts-fd
HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
PR_SET_DUMPABLE = 4
STDERR_TAIL = 2000
MAX_DEPTH = 64
VERDICT_WRITTEN = b"v"  # what the checker sends the zygote once its verdict is on fd 4
_libc = ctypes.CDLL(None, use_errno=True)


# ----------------------------------------------------------------------------- framing


def read_exact(fd, size):
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def to_json(obj):
    return json.dumps(obj).encode()


# Frames are JSON, except where the writer is this harness's own code in this sandbox and the
# reader too (the zygote or a checker calling the candidate, the zygote telling a spare its
# role): there marshal, which is all C and so touches fewer of a forked process's shared pages.
# Never marshal what a process that ran untrusted code wrote: unmarshalling bad data is unsafe.
def read_frame(fd, loads=json.loads):
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame too large: {size} bytes")
    return loads(read_exact(fd, size))


def write_frame(fd, obj, dumps=to_json):
    data = dumps(obj)
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


# ----------------------------------------------------------------------------- plain data


class UnsupportedValueError(Exception):
    pass


def encode(value, depth=0):
    """Plain data as JSON-able tagged values; anything else (custom classes, functions,
    objects overriding __eq__) is refused, so that comparisons only ever see plain data."""
    if depth > MAX_DEPTH:
        raise UnsupportedValueError(f"nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if abs(value) < 2**53 else {"t": "int", "v": str(value)}
    if kind is float:
        if math.isfinite(value):
            return {"t": "float", "v": value} if value.is_integer() else value
        return {"t": "float", "v": repr(value)}
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind is tuple:
        return {"t": "tuple", "v": [encode(v, depth + 1) for v in value]}
    if kind is set or kind is frozenset:
        return {"t": kind.__name__, "v": [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {
            "t": "dict",
            "v": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()],
        }
    if kind is bytes:
        return {"t": "bytes", "v": value.hex()}
    if kind is complex:
        return {"t": "complex", "v": [value.real, value.imag]}
    raise UnsupportedValueError(
        f"values of type {kind.__name__} cannot leave the candidate process"
    )


def decode(value):
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag, payload = value["t"], value["v"]
    if tag == "int":
        return int(payload)
    if tag == "float":
        return float(payload)
    if tag == "tuple":
        return tuple(decode(v) for v in payload)
    if tag == "set":
        return {decode(v) for v in payload}
    if tag == "frozenset":
        return frozenset(decode(v) for v in payload)
    if tag == "dict":
        return {decode(k): decode(v) for k, v in payload}
    if tag == "bytes":
        return bytes.fromhex(payload)
    if tag == "complex":
        return complex(*payload)
    raise ValueError(f"unknown tag {tag!r}")


# ----------------------------------------------------------------------------- processes


def not_dumpable():
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def close_fds_except(keep):
    low = 0
    for fd in sorted(keep):
        if low < fd:  # CPython 3.11: closerange(0, 0) closes every fd
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def apply_limits(limits, cpu_seconds):
    def cap(which, value):
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_AS, limits["memory_mb"] * 1024 * 1024)
    cap(resource.RLIMIT_NPROC, limits["nproc"])
    cap(resource.RLIMIT_FSIZE, limits["fsize_mb"] * 1024 * 1024)
    cap(resource.RLIMIT_NOFILE, limits["nofile"])
    cap(resource.RLIMIT_CPU, max(1, math.ceil(cpu_seconds)))
    cap(resource.RLIMIT_CORE, 0)


# Signals the zygote ignores (a submission cannot stop it with them) and its children restore.
IGNORED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGPIPE,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


RLIMITS = sorted(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_"))


def inheritable_state():
    """What a process of the same uid may change in another one from outside (its rlimits with
    ``prlimit``, its nice value, its scheduling policy, the CPUs it may run on) and what every
    later fork inherits."""
    return {
        "rlimits": [resource.getrlimit(limit) for limit in RLIMITS],
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "policy": os.sched_getscheduler(0),
        "cpus": sorted(os.sched_getaffinity(0)),
    }


def tampering(pristine):
    """How the zygote's inheritable state differs from ``pristine`` ("" if it does not): a
    submission that lowered our limits or priority would handicap every submission after it,
    so the zygote then exits and the worker starts a fresh sandbox."""
    now = inheritable_state()
    if now == pristine:
        return ""
    return "; ".join(
        f"{key} {pristine[key]} -> {now[key]}" for key in now if now[key] != pristine[key]
    )


RESTORED_SIGNALS = [int(sig) for sig in (*IGNORED_SIGNALS, signal.SIGCHLD)]


def reset_signals():
    for sig in RESTORED_SIGNALS:
        _signal.signal(sig, _signal.SIG_DFL)


def current_cpu():
    try:
        return _libc.sched_getcpu()
    except AttributeError:
        return -1


def pin_to_cpu(cpu):
    """Keep this process on ``cpu`` (-1: leave it be). A submission's processes take turns
    (checker and candidate, or the zygote and a test), never run at once: on one CPU each
    hand-over is a context switch, across CPUs a wake-up of an idle one, which costs ten
    times more on a virtual machine (about 30 us against 3 us here)."""
    if cpu >= 0:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def kill_group(pid):
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def reap(pid):
    try:
        _, status = os.waitpid(pid, 0)
        return status
    except ChildProcessError:
        return 0


def describe_exit(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    return f"exit code {os.WEXITSTATUS(status)}"


def run_child(spawner, target, stdin_data, deadline, limits, output_bytes):
    """Start a child that runs ``target`` (see :func:`make_target`) with stdin/stdout/stderr
    on pipes; feed it ``stdin_data``, collect stdout (up to ``output_bytes``) and a stderr
    tail, kill it at ``deadline``. Returns a result dict for one test."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    started = time.monotonic()
    pid = spawner.spawn(
        "test", {"target": target, "limits": limits, "deadline": deadline}, [in_r, out_w, err_w]
    )
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    pending_in = memoryview(stdin_data)
    if not pending_in:
        os.close(in_w)
        in_w = -1
    else:
        os.set_blocking(in_w, False)
    out, err = bytearray(), bytearray()
    status = "ok"
    poller = select.poll()
    watched = {out_r: out, err_r: err}
    for fd in watched:
        poller.register(fd, select.POLLIN)
    if in_w >= 0:
        poller.register(in_w, select.POLLOUT)
    while watched:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status = "timeout"
            break
        for fd, _ in poller.poll(remaining * 1000):
            if fd == in_w:
                try:
                    pending_in = pending_in[os.write(in_w, pending_in[:65536]) :]
                except BlockingIOError:
                    continue
                except BrokenPipeError:  # the program stopped reading its input: its choice
                    pending_in = pending_in[:0]
                if not pending_in:
                    poller.unregister(in_w)
                    os.close(in_w)
                    in_w = -1
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                poller.unregister(fd)
                del watched[fd]
                continue
            buffer = watched[fd]
            buffer += chunk
            if fd == out_r and len(buffer) > output_bytes:
                status = "output_limit"
                watched.clear()
                break
            if fd == err_r:
                del buffer[:-STDERR_TAIL]
    # Closing stdout is not exiting: wait for the exit itself, still within the deadline.
    exit_status = wait_until(pid, deadline) if status == "ok" else None
    if status == "ok" and exit_status is None:
        status = "timeout"
    kill_group(pid)  # also whatever the test started in its process group
    if exit_status is None:
        exit_status = reap(pid)
    for fd in (out_r, err_r, in_w):
        if fd >= 0:
            os.close(fd)
    elapsed = time.monotonic() - started
    if status == "ok" and exit_status != 0:
        status = "runtime_error"
        if os.WIFSIGNALED(exit_status) and os.WTERMSIG(exit_status) == signal.SIGXCPU:
            status = "timeout"
    return {
        "status": status,
        "stdout": bytes(out[:output_bytes]).decode("utf-8", "replace"),
        "stderr": bytes(err).decode("utf-8", "replace"),
        "exit": describe_exit(exit_status),
        "time_s": round(elapsed, 6),
    }


# ----------------------------------------------------------------------------- test payloads


def run_python_main(code):
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(code, "solution.py", "exec"), namespace)
    except SystemExit as exc:
        sys.stdout.flush()
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        return 1
    sys.stdout.flush()
    return 0


def resolve_callable(namespace, fn_name):
    """``fn_name`` at module level, or as a method of ``Solution`` (LeetCode style)."""
    if fn_name in namespace and callable(namespace[fn_name]):
        return namespace[fn_name]
    solution = namespace.get("Solution")
    if isinstance(solution, type) and hasattr(solution, fn_name):
        return getattr(solution(), fn_name)
    raise NameError(f"the code defines no function or Solution method named {fn_name!r}")


def run_target(target):
    """Run a test target described as data: what a spare process is told to become."""
    kind = target["kind"]
    if kind == "python_main":
        return run_python_main(target["code"])
    os.execv(target["argv"][0], target["argv"])
    return 127


def become(role, params, fds):
    """Turn this freshly forked process (or spare) into ``role``; never returns."""
    code = 1
    try:
        os.chdir(params["cwd"])  # a spare was forked before the submission's directory existed
        if role == "test":
            pin_to_cpu(params["cpu"])
            in_r, out_w, err_w = fds
            os.setpgid(0, 0)
            reset_signals()
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            close_fds_except({0, 1, 2})
            apply_limits(params["limits"], params["deadline"] - time.monotonic() + 1)
            # sys.stdin/stdout/stderr stay the interpreter's own over fds 0-2, now the test's
            # pipes (the zygote never reads or writes through them): what `python3
            # solution.py` gets, with no newline translation of the input.
            code = run_target(params["target"])
        elif role == "candidate":
            candidate_process(
                params["code"], fds[0], fds[1], params["limits"], params["deadline"], params["cpu"]
            )
        elif role == "checker":
            resource.setrlimit(resource.RLIMIT_AS, (params["memory_mb"] << 20,) * 2)
            checker_process(
                params["id"], *fds, params["entry_point"], params["deadline"], params["cpu"]
            )
            code = 0
    except BaseException:
        code = 1
    os._exit(code if isinstance(code, int) else 1)


class Spawner:
    """Starts a submission's processes. Forking costs about a millisecond here, so while the
    zygote is idle it forks blank children ahead of time (as many as the last submission
    started, up to ``MAX_SPARES``); a spare is told what to become (role, parameters and the
    pipe fds, passed over a unix socket) when needed. Spares are forked between submissions,
    so they hold nothing of the next one."""

    MAX_SPARES = 2

    def __init__(self):
        self.spares = []  # (pid, socket)
        self.wanted = self.MAX_SPARES  # as many as the last submission started, at least 1
        self.started = 0
        self.cpu = -1  # the CPU the current submission's processes run on (-1: any)

    def refill(self):
        self.wanted = max(1, min(self.MAX_SPARES, self.started or self.wanted))
        self.started = 0
        while len(self.spares) < self.wanted:
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                # Our end stays open in the spare until its role closes every fd it does not
                # keep, before any untrusted code runs (each role does): a close here would
                # only cost page copies. Likewise the spare's own end below.
                self._wait_for_role(theirs)
            theirs.close()
            self.spares.append((pid, ours))

    @staticmethod
    def _wait_for_role(sock):
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 15, 8)
            while 0 < len(data) < HEADER.size:
                data += sock.recv(HEADER.size)
            if not data:
                os._exit(0)
            (size,) = HEADER.unpack(data[: HEADER.size])
            data = data[HEADER.size :]
            while len(data) < size:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    os._exit(0)
                data += chunk
            message = marshal.loads(data)
        except BaseException:
            os._exit(1)
        become(message["role"], message["params"], fds)

    def spawn(self, role, params, fds):
        """Start ``role`` with ``fds`` (which the caller then closes); returns its pid."""
        self.started += 1
        params = dict(params, cwd=os.getcwd(), cpu=self.cpu)
        while self.spares:
            pid, sock = self.spares.pop()
            data = marshal.dumps({"role": role, "params": params})
            frame = HEADER.pack(len(data)) + data
            try:
                socket.send_fds(sock, [frame[: 1 << 15]], fds)
            except OSError:  # the spare is gone: forget it and try the next
                kill_group(pid)
                reap(pid)
                sock.close()
                continue
            # From here the spare owns the role: never start a second process for it (the
            # spare may already have read its frame and closed the socket, so a failing
            # send of the rest means it dies, which the caller sees like any death).
            with contextlib.suppress(OSError):
                if len(frame) > 1 << 15:
                    sock.sendall(frame[1 << 15 :])
            sock.close()
            return pid
        pid = os.fork()
        if pid == 0:
            for _, sock in self.spares:
                sock.close()
            become(role, params, fds)
        return pid

    def forget(self):
        """Drop spares that the cleanup killed."""
        for _, sock in self.spares:
            sock.close()
        self.spares = []


# ----------------------------------------------------------------------------- assertion tests


def candidate_process(code, a_in, a_out, limits, deadline, cpu):
    """Process A: runs the untrusted code once, then serves calls from the checker (or the
    zygote) on ``cpu``."""
    os.setpgid(0, 0)
    reset_signals()
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    err_r = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(err_r, 2)
    close_fds_except({0, 1, 2, a_in, a_out})
    apply_limits(limits, deadline - time.monotonic() + 1)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    compiled, error = compile_solution(code)
    if error is not None:
        write_frame(a_out, {"error": "the solution does not compile", "compile_error": error})
        os._exit(1)
    try:
        exec(compiled, namespace)
    except BaseException:
        traceback.print_exc()
        write_frame(
            a_out,
            {
                "error": "the solution failed to load: "
                + traceback.format_exc(limit=3)[-STDERR_TAIL:]
            },
        )
        os._exit(1)
    names = sorted(
        n
        for n, v in namespace.items()
        if callable(v) and not n.startswith("__") and not isinstance(v, type(sys))
    )
    pin_to_cpu(cpu)  # where the checker will run too: calls hand over on one CPU
    write_frame(a_out, {"names": names})
    # Each request names a function and lists calls to make, in order, one reply each: the
    # checker sends one call at a time, the zygote all of a submission's calls at once.
    while True:
        try:
            request = read_frame(a_in, marshal.loads)
        except (EOFError, OSError):
            os._exit(0)
        for args, kwargs in request["calls"]:
            try:
                if request.get("resolve"):  # call-based tests: a function or a Solution method
                    function = resolve_callable(namespace, request["name"])
                else:
                    function = namespace[request["name"]]
                value = function(*decode(args), **decode(kwargs))
                reply = {"value": encode(value)}
            except SystemExit as exc:
                reply = {"exception": "SystemExit", "message": str(exc.code)}
            except BaseException as exc:  # the checker decides what an exception means
                reply = {"exception": type(exc).__name__, "message": str(exc)[:500]}
            try:
                write_frame(a_out, reply)
            except Exception:
                os._exit(1)


class CandidateError(Exception):
    pass


def checker_process(submission_id, a_in, a_out, done, entry_point, deadline, cpu):
    """Process B: gets the test code from fd 3, runs it against proxies of A's functions,
    and reports one verdict per test statement on fd 4, then writes one byte to ``done``
    (so that the zygote can answer without waiting for this process to exit)."""
    not_dumpable()
    os.setpgid(0, 0)
    reset_signals()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a dead candidate fails tests, not us
    close_fds_except({TESTS_IN, VERDICTS_OUT, a_in, a_out, done, 2})
    while True:
        frame = read_frame(TESTS_IN)
        if frame["id"] == submission_id:
            break  # older frames belong to submissions whose checker never ran
    test_code = frame["test_code"]
    import ast

    def report(tests, error=None):
        write_frame(VERDICTS_OUT, {"id": submission_id, "tests": tests, "error": error})
        os.write(done, VERDICT_WRITTEN)

    # Parsed and compiled while the candidate loads the solution (on another CPU).
    try:
        tree = ast.parse(test_code)
    except (SyntaxError, ValueError) as exc:
        report([], f"the test code does not parse: {type(exc).__name__}: {exc}")
        return
    check = next(
        (node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "check"),
        None,
    )
    setup = [node for node in tree.body if node is not check]
    statements = check.body if check is not None else []
    if check is None:  # MBPP style: top-level asserts
        statements, setup = setup, []
    compiled = [
        compile(ast.Module(body=[node], type_ignores=[]), "tests.py", "exec") for node in statements
    ]

    ready, _, _ = select.select([a_out], [], [], max(0.0, deadline - time.monotonic()))
    hello = read_frame(a_out) if ready else {"error": "the solution did not load in time"}
    if "error" in hello:
        report([], hello["error"])
        return
    pin_to_cpu(cpu)  # where the candidate now waits for calls

    def call(name):
        def proxy(*args, **kwargs):
            calls = [[encode(list(args)), encode(kwargs)]]
            write_frame(a_in, {"name": name, "calls": calls}, marshal.dumps)
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([a_out], [], [], max(0.0, remaining))
            if not ready:
                raise CandidateError("the solution did not answer before the deadline")
            reply = read_frame(a_out)
            if "exception" in reply:
                builtin = getattr(builtins, reply["exception"], None)
                if isinstance(builtin, type) and issubclass(builtin, Exception):
                    raise builtin(reply["message"])
                raise CandidateError("{}: {}".format(reply["exception"], reply["message"]))
            return decode(reply["value"])

        proxy.__name__ = name
        return proxy

    proxies = {name: call(name) for name in hello["names"]}
    namespace = {"__name__": "__checker__"}
    namespace.update(proxies)
    if entry_point:
        if entry_point not in proxies:
            report([], f"the solution defines no function named {entry_point!r}")
            return
        namespace["candidate"] = proxies[entry_point]
    submission_names = set(proxies) | {"candidate"}

    def is_test(node):
        has_assert = any(isinstance(n, ast.Assert) for n in ast.walk(node))
        uses_solution = any(
            isinstance(n, ast.Name) and n.id in submission_names for n in ast.walk(node)
        )
        return has_assert and uses_solution

    counted = [is_test(node) for node in statements]
    try:
        exec(compile(ast.Module(body=setup, type_ignores=[]), "tests.py", "exec"), namespace)
    except Exception as exc:
        report([], f"the test code failed to load: {type(exc).__name__}: {exc}")
        return
    tests = []
    for node, code, is_counted in zip(statements, compiled, counted, strict=True):
        if time.monotonic() >= deadline:
            if is_counted:
                tests.append({"passed": False, "error": "deadline reached before this test"})
            continue
        try:
            exec(code, namespace)
            if is_counted:
                tests.append({"passed": True})
        except Exception as exc:
            if is_counted:
                tests.append(
                    {
                        "passed": False,
                        "error": (f"{type(exc).__name__}: {exc}")[:500],
                        "line": node.lineno,
                    }
                )
    if check is not None and not any(counted):
        tests = [{"passed": True}]  # a check() without counted statements is one test
    report(tests)


def run_assert_tests(spawner, request, limits, deadline):
    a_in_r, a_in_w = os.pipe()  # checker -> candidate
    a_out_r, a_out_w = os.pipe()  # candidate -> checker
    candidate = spawner.spawn(
        "candidate",
        {"code": request["code"], "limits": limits, "deadline": deadline},
        [a_in_r, a_out_w],
    )
    # Made after the candidate exists, so that only the checker ever holds its write end.
    done_r, done_w = os.pipe()
    checker = spawner.spawn(
        "checker",
        {
            "id": request["id"],
            "entry_point": request.get("entry_point"),
            "deadline": deadline,
            "memory_mb": max(limits["memory_mb"], 1024),
        },
        [a_in_w, a_out_r, done_w],
    )
    for fd in (a_in_r, a_in_w, a_out_r, a_out_w, done_w):
        os.close(fd)
    checker_said = read_before(done_r, deadline)
    os.close(done_r)
    timed_out = checker_said is None
    # Killed, not waited for: the cleanup after the reply reaps them.
    kill_group(checker)
    kill_group(candidate)
    if checker_said == VERDICT_WRITTEN:
        checker_exit = "verdict written"
    elif timed_out:
        checker_exit = "killed at the deadline"
    else:  # the pipe closed without a verdict: it died; say how
        checker_exit = describe_exit(reap(checker))
    stderr = ""
    try:
        with open("stderr.txt", "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - STDERR_TAIL))
            stderr = handle.read().decode("utf-8", "replace")
    except OSError:
        pass
    return {"timed_out": timed_out, "stderr": stderr, "checker_exit": checker_exit}


def readable_before(fd, deadline):
    """Whether ``fd`` has something to read (data or end of file) before ``deadline``."""
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    return bool(ready)


def read_before(fd, deadline):
    """Up to one byte from ``fd``: b"" at end of file, None if nothing came by ``deadline``."""
    return os.read(fd, 1) if readable_before(fd, deadline) else None


def read_frame_before(fd, deadline):
    """A frame from ``fd``, or None if none starts arriving before ``deadline``."""
    return read_frame(fd) if readable_before(fd, deadline) else None


def run_call_tests(spawner, request, limits, deadline, per_test):
    """Call-based tests: the solution is loaded once in a candidate process (as APPS/PRIME
    harnesses do) and each test calls the function through the pipe; a test that hangs or
    kills the process gets a fresh candidate for the tests after it.

    With ``"calls": "check"`` (literal assertion checks run as calls) the tests behave as in
    the checker process instead: the arguments arrive as tagged plain data, only a top-level
    function of that name is called, and once the candidate is gone the tests after fail.

    The worker sends each test's call ready to pass on (``call_arguments``: tagged arguments
    and keyword arguments), so the zygote does no per-test decoding. Returns the reply's
    ``tests`` and ``timed_out`` (or its ``compile_error``: the candidate compiles the code
    before running it, so the zygote does not compile it too)."""
    as_check = request.get("calls") == "check"
    calls = request["call_arguments"]
    tests, timed_out = [], False
    candidate, gone = None, False
    while len(tests) < len(calls):
        started = time.monotonic()
        if started >= deadline:
            timed_out = True
            break
        test_deadline = deadline if per_test is None else min(deadline, started + per_test)
        if gone:
            tests.append(_call_result("runtime_error", started, "the solution process is gone"))
            continue
        if candidate is None:
            a_in_r, a_in_w = os.pipe()
            a_out_r, a_out_w = os.pipe()
            pid = spawner.spawn(
                "candidate",
                {"code": request["code"], "limits": limits, "deadline": deadline},
                [a_in_r, a_out_w],
            )
            os.close(a_in_r)
            os.close(a_out_w)
            candidate = (pid, a_in_w, a_out_r)
            try:
                hello = read_frame_before(a_out_r, test_deadline)
                if hello is not None and "error" not in hello:
                    # Every call still to make, in one frame: the candidate answers each in
                    # turn without waiting for us in between.
                    remaining = calls[len(tests) :]
                    write_frame(
                        a_in_w,
                        {"name": request["fn_name"], "resolve": not as_check, "calls": remaining},
                        marshal.dumps,
                    )
            except (EOFError, OSError, ValueError):
                hello = {"error": "the solution process died while loading"}
            if hello is not None and "compile_error" in hello:
                _stop(candidate)
                return {"tests": [], "timed_out": False, "compile_error": hello["compile_error"]}
            if hello is None or "error" in hello:
                error = "timeout" if hello is None else "runtime_error"
                message = "" if hello is None else hello["error"]
                tests.append(_call_result(error, started, message))
                candidate, gone = _stop(candidate), as_check
                continue
        try:
            reply = read_frame_before(candidate[2], test_deadline)
        except (EOFError, OSError, ValueError):
            tests.append(_call_result("runtime_error", started, "the solution process died"))
            candidate, gone = _stop(candidate), as_check
            continue
        if reply is None:
            tests.append(_call_result("timeout", started))
            candidate, gone = _stop(candidate), as_check
            timed_out = time.monotonic() >= deadline
        elif "exception" in reply:
            message = f"{reply['exception']}: {reply['message']}"
            tests.append(_call_result("runtime_error", started, message))
        else:
            tests.append(dict(_call_result("ok", started), result=reply["value"]))
    if candidate is not None:
        _stop(candidate)
    return {"tests": tests, "timed_out": timed_out}


def _call_result(status, started, message=""):
    return {
        "status": status,
        "stdout": "",
        "stderr": message[-STDERR_TAIL:],
        "exit": "",
        "time_s": round(time.monotonic() - started, 6),
    }


def _stop(candidate):
    pid, to_candidate, from_candidate = candidate
    kill_group(pid)  # reaped by the cleanup
    os.close(to_candidate)
    os.close(from_candidate)


def wait_until(pid, deadline):
    """Wait for ``pid`` to exit and return its wait status; None if the deadline came first
    (the process is then still running, and still ours to kill and reap)."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            poller.poll(remaining * 1000)
    finally:
        os.close(pidfd)


# ----------------------------------------------------------------------------- submissions


def compile_cpp(spawner, code, limits, compile_timeout_s):
    with open("solution.cpp", "w") as handle:
        handle.write(code)
    compiler_limits = dict(
        limits,
        memory_mb=max(limits["memory_mb"], 2048),
        nproc=max(limits["nproc"], 16),
        fsize_mb=max(limits["fsize_mb"], 64),
    )
    argv = ["/usr/bin/g++", "-std=c++17", "-O2", "-pipe", "-o", "solution", "solution.cpp"]
    result = run_child(
        spawner,
        {"kind": "exec", "argv": argv},
        b"",
        time.monotonic() + compile_timeout_s,
        compiler_limits,
        1 << 16,
    )
    if result["status"] == "ok":
        return None
    if result["status"] == "timeout":
        return f"compilation exceeded {compile_timeout_s:g} s"
    return (result["stderr"] or result["exit"])[-STDERR_TAIL:]


def compile_solution(code):
    """(code object, None) for Python ``code``, or (None, why it does not compile)."""
    try:
        return compile(code, "solution.py", "exec"), None
    except (SyntaxError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def run_submission(spawner, request):
    limits = request["limits"]
    started = time.monotonic()
    deadline = started + request["budget_s"]
    per_test = request.get("test_time_limit_s")
    output_bytes = limits["output_bytes"]
    reply = {"id": request["id"], "tests": [], "compile_error": None, "timed_out": False}
    language, mode = request["language"], request["mode"]
    if language == "cpp":
        error = compile_cpp(
            spawner, request["code"], limits, request.get("compile_timeout_s", 10.0)
        )
        if error is not None:
            reply["compile_error"] = error
            return reply
        deadline = time.monotonic() + request["budget_s"]  # compilation is not run time
    elif mode == "stdio":  # once here, not in every test's process (call mode: see there)
        _, reply["compile_error"] = compile_solution(request["code"])
        if reply["compile_error"] is not None:
            return reply
    if mode != "assert":
        pin_to_cpu(spawner.cpu)  # we hand the tests their input and read their output
    if mode == "assert":
        reply.update(run_assert_tests(spawner, request, limits, deadline))
    elif mode == "call":
        reply.update(run_call_tests(spawner, request, limits, deadline, per_test))
    else:
        for test_input in request["inputs"]:
            now = time.monotonic()
            if now >= deadline:
                reply["timed_out"] = True
                break
            test_deadline = deadline if per_test is None else min(deadline, now + per_test)
            if language == "cpp":
                target = {"kind": "exec", "argv": [os.path.abspath("solution")]}
            else:
                target = {"kind": "python_main", "code": request["code"]}
            data = test_input.encode() if mode == "stdio" else b""
            result = run_child(spawner, target, data, test_deadline, limits, output_bytes)
            if result["status"] == "timeout" and time.monotonic() >= deadline:
                reply["timed_out"] = True
            reply["tests"].append(result)
    reply["elapsed_s"] = round(time.monotonic() - started, 6)
    return reply


def cleanup(workdir, own_pid_namespace, spawner):
    """Kill everything the submission left (all processes but init and us) and delete every
    file it could write (the whole of /tmp and /dev/shm), so that nothing reaches the next.

    ``kill(-1)`` reaches every process we may signal, and /tmp is the host's own unless we are
    sandboxed: both are only done when this sandbox has a PID namespace (and so, with our
    backends, a mount namespace) of its own: we are its init, or init's child (the submission
    then ran in /tmp itself). Otherwise only the submission's working directory goes.
    """
    if own_pid_namespace:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        spawner.forget()  # the kill reached the unused spares too
    # Reap what has died; a process still tearing down its memory (about half a millisecond
    # after SIGKILL) runs no more code and is reaped after the next submission instead.
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                break
        except ChildProcessError:
            break
    os.chdir("/tmp")
    if not own_pid_namespace:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for scratch in ("/tmp", "/dev/shm"):
        try:
            entries = list(os.scandir(scratch))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


# Imported once here, so that every forked test finds them loaded: most solutions and test
# files import some of these, and an import in each fork would cost more than the test.
PRELOADED = (
    "ast",
    "bisect",
    "collections",
    "copy",
    "dataclasses",
    "decimal",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "math",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "typing",
)


def main():
    global TESTS_IN, VERDICTS_OUT
    args = sys.argv[1:]
    # --path DIR (repeatable): extra read-only library folders; --preload MODULE (repeatable):
    # modules that every fork should find imported (e.g. a scoring library).
    extra_modules = []
    for flag, index in [(a, i) for i, a in enumerate(args) if a in ("--path", "--preload")]:
        if flag == "--path":
            sys.path.append(args[index + 1])
        else:
            extra_modules.append(args[index + 1])
    for name in PRELOADED:
        with contextlib.suppress(ImportError):
            __import__(name)
    for name in extra_modules:
        __import__(name)
    # Keep the collector off everything loaded so far: a collection in a forked process would
    # otherwise write to (and so copy) every page of the zygote's objects.
    gc.freeze()
    if "--tests-fd" in args:
        TESTS_IN = int(args[args.index("--tests-fd") + 1])
    if "--verdicts-fd" in args:
        VERDICTS_OUT = int(args[args.index("--verdicts-fd") + 1])
    if "--fd-socket" in args:
        # Backends that cannot hand us pipes directly (a container) pass them over a unix
        # socket that only exists until we have connected, before any untrusted code runs.
        with socket.socket(socket.AF_UNIX) as channel:
            channel.connect(args[args.index("--fd-socket") + 1])
            _, fds, _, _ = socket.recv_fds(channel, 16, 4)
        control_in, control_out, TESTS_IN, VERDICTS_OUT = fds
        os.dup2(control_in, CONTROL_IN)
        os.dup2(control_out, CONTROL_OUT)
        os.close(control_in)
        os.close(control_out)
    own_pid_namespace = "--own-pid-namespace" in sys.argv and (
        os.getpid() == 1 or os.getppid() == 1
    )
    not_dumpable()
    for sig in IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    write_frame(
        CONTROL_OUT,
        {
            "ready": True,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "own_pid_namespace": own_pid_namespace,
        },
    )
    spawner = Spawner()
    cpus = os.sched_getaffinity(0)
    pristine = inheritable_state()
    while True:
        spawner.refill()  # while idle: the next submission starts without forking
        try:
            request = read_frame(CONTROL_IN)
        except EOFError:
            return
        # Checked again here: a change that landed while the last cleanup ran is seen before
        # anything of this submission starts.
        changed = tampering(pristine)
        if changed:
            error = f"the previous submission changed the harness ({changed}); restart it"
            write_frame(CONTROL_OUT, {"id": request["id"], "harness_error": error})
            return
        spawner.cpu = current_cpu()
        if own_pid_namespace:
            workdir = "/tmp"  # this sandbox's own, emptied after every submission
        else:  # the host's /tmp: a directory of our own in it
            workdir = f"/tmp/s{request['id']}"
            shutil.rmtree(workdir, ignore_errors=True)
            os.mkdir(workdir, mode=0o700)
        os.chdir(workdir)
        try:
            reply = run_submission(spawner, request)
        except Exception:
            reply = {"id": request["id"], "harness_error": traceback.format_exc()[-STDERR_TAIL:]}
        # Answer first: what is left to do (killing and reaping the submission's processes,
        # deleting its files) happens before the next request is read, not on this one's
        # clock.
        write_frame(CONTROL_OUT, reply)
        cleanup(workdir, own_pid_namespace, spawner)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)  # idle again: run wherever the kernel likes
        if tampering(pristine):
            return  # the sandbox ends with us; the worker starts a fresh one


if __name__ == "__main__":
    main()
