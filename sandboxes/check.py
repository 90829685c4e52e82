"""``reward-service sandbox-check``: which backends work on this host, and what isolation each
one actually achieves, found by trying (not by reading configuration)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
from dataclasses import dataclass, field

from sandboxes.base import Sandbox, SandboxUnavailableError, Submission, backends

# Each probe prints "blocked" when the sandbox stopped it; anything else is what got through.
PROBE = r"""
import json, os, socket
results = {}
def probe(name, attempt):
    try:
        results[name] = attempt() or "blocked"
    except Exception as exc:
        results[name] = "blocked"
def tcp():
    socket.create_connection(("1.1.1.1", 80), timeout=1)
    return "OPEN: connected to 1.1.1.1:80"
def dns():
    return "OPEN: resolved " + socket.getaddrinfo("localhost.localdomain", 80)[0][4][0]
def loopback_service():
    socket.create_connection(("127.0.0.1", HOST_PORT), timeout=1)
    return "OPEN: reached a host port on 127.0.0.1"
def host_file():
    return "OPEN: read " + open(HOST_FILE).read()
def host_env():
    found = [p for p in os.listdir("/proc") if p.isdigit()
             and HOST_SECRET.encode() in open(f"/proc/{p}/environ", "rb").read()]
    return ("OPEN: host environment visible" if found or HOST_SECRET in str(os.environ)
            else None)
def write_root():
    open("/usr/probe", "w").write("x")
    return "OPEN: wrote /usr/probe"
def host_processes():
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    return f"OPEN: sees {len(pids)} processes" if len(pids) > 10 else None
def process_limit():
    children = []
    for _ in range(400):
        pid = os.fork()
        if pid == 0:
            import time; time.sleep(2); os._exit(0)
        children.append(pid)
    return f"OPEN: forked {len(children)} processes"
def memory_limit():
    blob = bytearray(6 * 1024 ** 3)
    return "OPEN: allocated 6 GiB"
for name, attempt in [("network: TCP to the internet", tcp), ("network: DNS", dns),
                      ("network: host loopback port", loopback_service),
                      ("files: read a host file", host_file),
                      ("files: write the system", write_root),
                      ("secrets: host environment", host_env),
                      ("processes: see host processes", host_processes),
                      ("limits: 400 processes", process_limit),
                      ("limits: 6 GiB of memory", memory_limit)]:
    probe(name, attempt)
print(json.dumps(results))
"""


@dataclass
class BackendReport:
    name: str
    available: bool
    reason: str = ""
    probes: dict[str, str] = field(default_factory=dict)

    @property
    def isolated(self) -> bool:
        return (
            self.available
            and bool(self.probes)
            and all(v == "blocked" for v in self.probes.values())
        )


def _probe(sandbox: Sandbox) -> dict[str, str]:
    secret = secrets.token_hex(16)
    with tempfile.NamedTemporaryFile("w", suffix=".secret", delete=False) as handle:
        handle.write(secret)
    os.environ["REWARD_SERVICE_PROBE_SECRET"] = secret
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        code = (
            PROBE.replace("HOST_FILE", repr(handle.name))
            .replace("HOST_SECRET", repr(secret))
            .replace("HOST_PORT", str(listener.getsockname()[1]))
        )
        result = sandbox.run(Submission(code=code, inputs=[""], budget_s=20))
        if not result.tests or result.tests[0].status != "ok":
            detail = result.lost or (result.tests[0].stderr if result.tests else "no output")
            return {"probe program": f"did not complete: {detail}"}
        probes: dict[str, str] = json.loads(result.tests[0].stdout)
        return probes
    finally:
        listener.close()
        os.environ.pop("REWARD_SERVICE_PROBE_SECRET", None)
        os.unlink(handle.name)


def check_backends(names: list[str] | None = None) -> list[BackendReport]:
    """Start each backend (all, or ``names``) and run the probe program in it."""
    reports = []
    for name, backend in sorted(backends().items()):
        if names and name not in names:
            continue
        try:
            sandbox = backend()
            sandbox.start()
        except SandboxUnavailableError as exc:
            reports.append(BackendReport(name, False, str(exc)))
            continue
        try:
            reports.append(BackendReport(name, True, probes=_probe(sandbox)))
        finally:
            sandbox.close()
    return reports


def render(reports: list[BackendReport]) -> str:
    lines = []
    for report in reports:
        if not report.available:
            lines.append(f"{report.name}: unavailable: {report.reason}")
            continue
        verdict = "isolated" if report.isolated else "NOT ISOLATED"
        lines.append(f"{report.name}: available, {verdict}")
        for probe, outcome in report.probes.items():
            lines.append(f"  {probe:<34} {outcome}")
    return "\n".join(lines)
