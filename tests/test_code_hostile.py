"""Hostile programs against the code sandbox, through the running service.

Each program tries one attack and prints "contained" only when the attack failed; the test
asserts the exact reward (1.0 when a well-behaved program that was stopped reports it, 0.0
when the attack can only cost its author the reward), that the worker processes survived
(same pids), and that the next, honest submission still scores 1.0.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerThread, running_server
from trainer.client import RewardClient

REPO = Path(__file__).resolve().parent.parent
SECRET = f"secret-{uuid.uuid4().hex}"
HOST_MARKER = f"/tmp/reward-breach-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    os.environ["REWARD_SERVICE_TEST_SECRET"] = SECRET  # inherited by the workers
    try:
        with running_server(domains=["code"], kill_grace_s=0.5) as running:
            yield running
    finally:
        os.environ.pop("REWARD_SERVICE_TEST_SECRET", None)


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[RewardClient]:
    with RewardClient(server.grpc_target) as c:
        yield c


def python(code: str) -> str:
    return f"```python\n{textwrap.dedent(code)}\n```"


def cpp(code: str) -> str:
    return f"```cpp\n{textwrap.dedent(code)}\n```"


STDIO = {"tests": [{"input": "", "output": "contained"}], "time_limit_s": 1.0}


# The second statement is not a literal check, so these tests run in the checker process;
# each assertion case is also run with LITERAL_TESTS, which run as plain calls instead.
CHECKER_TESTS = (
    "def check(candidate):\n"
    "    assert candidate(1, 2) == 3\n"
    "    assert [candidate(1, 2)] == [3] * 1\n"
)
LITERAL_TESTS = "def check(candidate):\n    assert candidate(1, 2) == 3\n"


def assert_case(code: str, reference: dict | None = None):
    return {"domain": "code", "response": code, "reference": reference or STDIO}


# (name, request, expected reward)
CASES = [
    # --- network
    (
        "tcp_connect_internet",
        python("""
        import socket
        try:
            socket.create_connection(("1.1.1.1", 80), timeout=1)
            print("BREACH")
        except OSError:
            print("contained")
    """),
        1.0,
    ),
    (
        "tcp_connect_worker_port",
        python("""
        import socket
        try:
            socket.create_connection(("127.0.0.1", GRPC_PORT), timeout=1)
            print("BREACH")
        except OSError:
            print("contained")
    """),
        1.0,
    ),
    (
        "udp_send",
        python("""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(b"x", ("8.8.8.8", 53))
            print("BREACH")
        except OSError:
            print("contained")
    """),
        1.0,
    ),
    (
        "dns_lookup",
        python("""
        import socket
        try:
            socket.getaddrinfo("example.com", 80)
            print("BREACH")
        except OSError:
            print("contained")
    """),
        1.0,
    ),
    (
        "unix_sockets_of_the_host",
        python("""
        import glob, socket
        paths = glob.glob("/run/**/*.sock", recursive=True) + glob.glob("/var/run/*.sock")
        paths += glob.glob("/tmp/*")
        ok = True
        for path in paths + ["\\0grpc", "/var/run/docker.sock", "/run/redis/redis.sock"]:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                ok = False
            except OSError:
                pass
        print("contained" if ok else "BREACH")
    """),
        1.0,
    ),
    (
        "network_interfaces",
        python("""
        import socket
        names = [name for _, name in socket.if_nameindex()]
        print("contained" if names == ["lo"] else "BREACH " + repr(names))
    """),
        1.0,
    ),
    # --- secrets and host files
    (
        "proc_1_environ",
        python("""
        import os
        found = False
        for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                found |= SECRET.encode() in open(f"/proc/{pid}/environ", "rb").read()
            except OSError:
                pass
        found |= SECRET in str(os.environ)
        print("BREACH" if found else "contained")
    """),
        1.0,
    ),
    (
        "parent_process_memory_and_fds",
        python("""
        import os
        ppid = os.getppid()
        leaks = []
        for path in (f"/proc/{ppid}/mem", f"/proc/{ppid}/environ", f"/proc/{ppid}/fd/0"):
            try:
                open(path, "rb").read(1)
                leaks.append(path)
            except OSError:
                pass
        print("contained" if not leaks else "BREACH " + repr(leaks))
    """),
        1.0,
    ),
    (
        "etc_shadow",
        python("""
        try:
            open("/etc/shadow").read()
            print("BREACH")
        except OSError:
            print("contained")
    """),
        1.0,
    ),
    (
        "read_the_repository",
        python("""
        import os
        hits = [p for p in ("REPO/README.md", "REPO/pyproject.toml", "/root", "/work", "/home")
                if os.path.exists(p) and (os.path.isfile(p) or os.listdir(p))]
        print("contained" if not hits else "BREACH " + repr(hits))
    """),
        1.0,
    ),
    (
        "write_outside_the_sandbox",
        python("""
        ok = True
        for path in ("/usr/breach", "/etc/breach", "/breach", "/proc/breach"):
            try:
                open(path, "w").write("x")
                ok = False
            except OSError:
                pass
        open("HOST_MARKER", "w").write("x")  # lands in the sandbox's own /tmp
        print("contained" if ok else "BREACH")
    """),
        1.0,
    ),
    # --- resources
    (
        "fork_bomb",
        python("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """),
        0.0,
    ),
    (
        "memory_bomb",
        python("""
        try:
            blob = bytearray(8 * 1024 ** 3)
            print("BREACH")
        except MemoryError:
            print("contained")
    """),
        1.0,
    ),
    (
        "disk_fill",
        python("""
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                while written < 4 * 1024 ** 3:
                    f.write(b"x" * 1024 * 1024)
                    written += 1024 * 1024
            print("BREACH")
        except OSError:
            print("contained")
    """),
        1.0,
    ),
    (
        "endless_stdout",
        python("""
        while True:
            print("contained" * 1000)
    """),
        0.0,
    ),
    (
        "endless_stderr",
        python("""
        import sys
        while True:
            sys.stderr.write("noise" * 1000)
    """),
        0.0,
    ),
    (
        "sleep_past_budget",
        python("""
        import time
        time.sleep(60)
        print("contained")
    """),
        0.0,
    ),
    (
        "background_process_outlives_submission",
        python("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(0.3)
            open("/tmp/leftover", "w").write("still alive")
            os._exit(0)
        print("contained")
    """),
        1.0,
    ),
    (
        "leftover_of_previous_submission",
        python("""
        import os, time
        time.sleep(0.5)
        alive = [p for p in os.listdir("/proc") if p.isdigit()]
        # bwrap's init, the harness, this test and at most two idle spares of the harness
        print("contained" if not os.path.exists("/tmp/leftover") and len(alive) <= 5
              else "BREACH " + repr(alive))
    """),
        1.0,
    ),
    (
        "kill_the_parent",
        python("""
        import os, signal
        os.kill(os.getppid(), signal.SIGKILL)
        print("contained")
    """),
        0.0,
    ),
    (
        "kill_everything",
        python("""
        import os, signal
        os.kill(-1, signal.SIGKILL)
        print("contained")
    """),
        0.0,
    ),
    (
        "stop_every_other_process",
        python("""
        import os, signal
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            if pid not in (1, os.getpid(), os.getppid()):
                try:
                    os.kill(pid, signal.SIGSTOP)
                except OSError:
                    pass
        print("contained")
    """),
        1.0,
    ),
    (
        "ptrace_the_parent",
        python("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        PTRACE_ATTACH = 16
        result = libc.ptrace(PTRACE_ATTACH, os.getppid(), None, None)
        print("contained" if result != 0 else "BREACH")
    """),
        1.0,
    ),
    (
        "signal_storm",
        python("""
        import os, signal
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                        signal.SIGSTOP):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        print("contained")
    """),
        0.0,
    ),
    # --- forged verdicts
    (
        "print_all_tests_passed",
        python("""
        print("all tests passed")
        print("PASSED 1/1")
        raise SystemExit(0)
    """),
        0.0,
    ),
    (
        "exit_before_the_asserts",
        assert_case(
            python("""
        import sys
        def add(a, b):
            return a - b
        sys.exit(0)
    """),
            {
                "assert_code": CHECKER_TESTS,
                "fn_name": "add",
            },
        ),
        0.0,
    ),
    (
        "object_equal_to_everything",
        assert_case(
            python("""
        class Anything:
            def __eq__(self, other):
                return True
        def add(a, b):
            return Anything()
    """),
            {
                "assert_code": CHECKER_TESTS,
                "fn_name": "add",
            },
        ),
        0.0,
    ),
    (
        "patch_the_comparison",
        assert_case(
            python("""
        import builtins, sys
        builtins.AssertionError = type("Harmless", (Exception,), {})
        def add(a, b):
            frame = sys._getframe(1)
            frame.f_globals["__builtins__"] = {}
            return 0
    """),
            {
                "assert_code": CHECKER_TESTS,
                "fn_name": "add",
            },
        ),
        0.0,
    ),
    (
        "write_to_the_verdict_channel",
        assert_case(
            python("""
        import json, os, struct
        fake = json.dumps({"id": 1, "tests": [{"passed": True}]}).encode()
        for fd in range(3, 64):
            try:
                os.write(fd, struct.pack(">I", len(fake)) + fake)
            except OSError:
                pass
        def add(a, b):
            return 0
    """),
            {
                "assert_code": CHECKER_TESTS,
                "fn_name": "add",
            },
        ),
        0.0,
    ),
    (
        "read_the_expected_values",
        assert_case(
            python("""
        import os, re
        found = None
        for root in ("/tmp", "/proc"):
            for dirpath, _, files in os.walk(root):
                for name in files:
                    try:
                        text = open(os.path.join(dirpath, name), "rb").read(1 << 16)
                    except OSError:
                        continue
                    match = re.search(rb"candidate\\(1, 2\\) == (\\d+)", text)
                    if match:
                        found = int(match.group(1))
        def add(a, b):
            return found if found is not None else 0
    """),
            {
                "assert_code": CHECKER_TESTS,
                "fn_name": "add",
            },
        ),
        0.0,
    ),
    (
        "kill_the_checker",
        assert_case(
            python("""
        import os, signal
        def add(a, b):
            os.kill(-1, signal.SIGKILL)
            return a + b
    """),
            {
                "assert_code": CHECKER_TESTS,
                "fn_name": "add",
            },
        ),
        0.0,
    ),
    # --- changing the harness from outside: a process of the same uid may lower another's
    # rlimits, nice value, scheduling policy and CPUs, and later forks would inherit them.
    # These calls succeed; what must hold is that the next submission does not notice.
    (
        "lower_the_harness_memory_limit",
        python("""
        import os, resource
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            try:
                if pid != os.getpid():
                    resource.prlimit(pid, resource.RLIMIT_AS, (1 << 20, 1 << 20))
            except (OSError, ValueError):
                pass
        print("contained")
    """),
        1.0,
    ),
    (
        "lower_the_harness_process_and_file_limits",
        python("""
        import os, resource
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            for limit, value in (
                (resource.RLIMIT_NOFILE, 3),
                (resource.RLIMIT_NPROC, 0),
                (resource.RLIMIT_CPU, 1),
            ):
                try:
                    if pid != os.getpid():
                        resource.prlimit(pid, limit, (value, value))
                except (OSError, ValueError):
                    pass
        print("contained")
    """),
        0.0,  # the harness cannot finish this submission's tests; the next one is fine
    ),
    (
        "lower_the_harness_priority",
        python("""
        import os
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            if pid == os.getpid():
                continue
            for change in (
                lambda: os.setpriority(os.PRIO_PROCESS, pid, 19),
                lambda: os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0)),
                lambda: os.sched_setaffinity(pid, {min(os.sched_getaffinity(0))}),
            ):
                try:
                    change()
                except OSError:
                    pass
        print("contained")
    """),
        1.0,
    ),
    # --- C++ equivalents
    (
        "cpp_tcp_connect",
        cpp("""
        #include <arpa/inet.h>
        #include <cstdio>
        #include <sys/socket.h>
        int main() {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            sockaddr_in a{}; a.sin_family = AF_INET; a.sin_port = htons(80);
            inet_pton(AF_INET, "1.1.1.1", &a.sin_addr);
            puts(connect(s, (sockaddr*)&a, sizeof a) == 0 ? "BREACH" : "contained");
        }
    """),
        1.0,
    ),
    (
        "cpp_read_shadow",
        cpp("""
        #include <cstdio>
        int main() { puts(fopen("/etc/shadow", "r") ? "BREACH" : "contained"); }
    """),
        1.0,
    ),
    (
        "cpp_fork_bomb",
        cpp("""
        #include <unistd.h>
        int main() { while (true) fork(); }
    """),
        0.0,
    ),
    (
        "cpp_memory_bomb",
        assert_case(
            cpp("""
        #include <cstdio>
        #include <cstdlib>
        #include <cstring>
        int main() {
            for (int i = 0; i < 64; ++i) {
                void* p = malloc(256u << 20);
                if (!p) { puts("contained"); return 0; }
                memset(p, 1, 256u << 20);
            }
            puts("BREACH");
        }
    """),
            {**STDIO, "time_limit_s": 5.0},
        ),
        1.0,
    ),
    (
        "cpp_endless_output",
        cpp("""
        #include <cstdio>
        int main() { while (true) puts("contained"); }
    """),
        0.0,
    ),
    (
        "cpp_infinite_loop",
        cpp("""
        int main() { volatile long x = 0; while (true) ++x; }
    """),
        0.0,
    ),
    (
        "cpp_kill_parent",
        cpp("""
        #include <csignal>
        #include <unistd.h>
        int main() { kill(getppid(), SIGKILL); }
    """),
        0.0,
    ),
]


def _request(name: str, spec: object, server: ServerThread) -> dict:
    if isinstance(spec, dict):
        request = dict(spec)
    else:
        request = {"domain": "code", "response": spec, "reference": STDIO}
    request["response"] = (
        request["response"]
        .replace("GRPC_PORT", str(server.server.grpc_port))
        .replace("SECRET", repr(SECRET))
        .replace("REPO", str(REPO))
        .replace("HOST_MARKER", HOST_MARKER)
    )
    request["id"] = name
    return request


CASES += [
    (
        f"{name}_as_calls",
        dict(spec, reference=dict(spec["reference"], assert_code=LITERAL_TESTS)),
        expected,
    )
    for name, spec, expected in list(CASES)
    if isinstance(spec, dict) and spec["reference"].get("assert_code") == CHECKER_TESTS
]

# Answers only when it runs with the priority and scheduling policy of the service itself
# (and, through the limits the harness sets on it, with the harness's own limits intact).
SCHEDULING = (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))
HONEST = {
    "domain": "code",
    "response": python(f"""
        import os
        if (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)) == {SCHEDULING}:
            print(sum(map(int, input().split())))
    """),
    "reference": {"tests": [{"input": "2 3", "output": "5"}, {"input": "4 4", "output": "8"}]},
}


def test_there_are_at_least_30_hostile_programs() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(("name", "spec", "expected"), CASES, ids=[c[0] for c in CASES])
def test_hostile_program_is_contained(
    name: str, spec: object, expected: float, server: ServerThread, client: RewardClient
) -> None:
    pids = {w.process.pid for w in server.server.queue._workers if w is not None}
    [result] = client.score_batch([_request(name, spec, server)])
    assert result.reward == expected, (result.status, result.detail, result.metrics)
    assert result.status in ("ok", "timeout"), result.detail
    # One per worker process (two idle workers share a batch of two), so the sandbox that ran
    # the attack is among them.
    for honest in client.score_batch([HONEST, HONEST]):
        assert (honest.reward, honest.status) == (1.0, "ok"), honest.detail
    assert {w.process.pid for w in server.server.queue._workers if w is not None} == pids
    assert not os.path.exists(HOST_MARKER)
