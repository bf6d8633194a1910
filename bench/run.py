#!/usr/bin/env python3
"""Benchmark this checkout's jetforce against Jetforce 1.0.0 from PyPI.

Each server runs alone on CPU 0 (taskset) and bench/loadgen.c, pinned to CPU 1, sends
Gemini requests over a fresh TLS 1.3 connection each. The servers take turns (A B A B)
for --rounds rounds, and the table shows the median of the rounds.
The primary figure is the server's CPU time per request at a fixed offered rate, from
/proc/PID/stat. Others are requests/s and latency at concurrency 32, MB/s for a 100 MiB
file, and CGI cost. Memory figures are RSS per idle TLS connection and peak RSS growth
under slow readers of a 200 MiB file. The last is connections lost in a connect burst.
Setup is automatic: virtualenvs, the load generator, certificates and content go under
bench/.work/. All traffic goes to 127.0.0.1, and every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import json
import os
import selectors
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
LOADGEN_SOURCE = BENCH_DIR / "loadgen.c"
LOADGEN_BINARY = WORK_DIR / "loadgen"
CERT_DIR = WORK_DIR / "certs"
CONTENT_DIR = WORK_DIR / "content"

REFERENCE_VERSION = "1.0.0"
LISTEN_HOST = "127.0.0.1"
SERVER_CPU = 0
CLIENT_CPU = 1
MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

SMALL_PATH = "/index.gmi"
SMALL_BODY = "# Benchmark capsule\n\nA small text/gemini page that the benchmark requests many times.\n"
CGI_PATH = "/cgi-bin/hello"
CGI_BODY = "hello from CGI\n"
FILE_100_PATH = "/100mib.bin"
FILE_200_PATH = "/200mib.bin"

# Shares of one CPU, in percent. A load generator above CLIENT_BOUND_PERCENT may limit
# its figure. A server above NEAR_CAPACITY_PERCENT during a fixed-rate test is near its
# capacity. Other programs above OTHER_LOAD_PERCENT on a benchmark CPU disturb the figures.
CLIENT_BOUND_PERCENT = 90.0
NEAR_CAPACITY_PERCENT = 70.0
OTHER_LOAD_PERCENT = 15.0

SERVER_START_TIMEOUT = 20.0
SERVER_STOP_TIMEOUT = 5.0
SETTLE_SECONDS = 0.3

_started_processes: list[subprocess.Popen] = []


class BenchmarkError(Exception):
    """Failure of a setup step or a measurement. The message names the step and the next action."""


# ---------------------------------------------------------------------------
# Settings and command line


@dataclass
class Settings:
    rounds: int
    duration: float
    rate: float
    cgi_rate: float
    transfer_requests: int
    slow_seconds: float
    cert_kinds: list[str]
    workers: int | None
    only: str | None
    ours_cmd: list[str] | None
    concurrency: int = 32
    idle_connections: int = 500
    slow_clients: int = 8
    slow_read_rate: int = 64 * 1024
    slow_receive_buffer: int = 4096
    burst: int = 256


def parse_arguments(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(
        description="Benchmark this checkout's jetforce against Jetforce 1.0.0 from PyPI "
        "on 127.0.0.1. Setup files go under bench/.work/.",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds per server, alternating (default 2)")
    parser.add_argument("--quick", action="store_true", help="short durations, for a smoke run")
    parser.add_argument(
        "--cert",
        choices=["ecdsa", "rsa", "both"],
        default="both",
        help="server certificate key type: ECDSA P-256, RSA-2048 or both (default both)",
    )
    parser.add_argument("--workers", type=int, help="pass --workers N to our server (default: not passed)")
    parser.add_argument("--only", choices=["ours", "reference"], help="benchmark one server only")
    parser.add_argument(
        "--duration", type=float, help="seconds per rate and concurrency test (default 10, or 2 with --quick)"
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="offered rate in requests/s for the small-file CPU test (default 200)"
    )
    parser.add_argument(
        "--cgi-rate", type=float, default=50.0, help="offered rate in requests/s for the CGI CPU test (default 50)"
    )
    # Development aid: run another command as "ours", for example Jetforce 1.0.0 itself.
    parser.add_argument("--ours-cmd", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.duration is not None and args.duration <= 0:
        parser.error(f"--duration must be positive, got {args.duration}")
    if args.rate <= 0 or args.cgi_rate <= 0:
        parser.error("--rate and --cgi-rate must be positive")

    if args.duration is not None:
        duration = args.duration
    elif args.quick:
        duration = 2.0
    else:
        duration = 10.0
    ours_cmd = shlex.split(args.ours_cmd) if args.ours_cmd else None
    if ours_cmd and "/" in ours_cmd[0]:
        # Servers run with bench/.work as the working directory.
        ours_cmd[0] = str(Path(ours_cmd[0]).resolve())
    return Settings(
        rounds=args.rounds,
        duration=duration,
        rate=args.rate,
        cgi_rate=args.cgi_rate,
        transfer_requests=1 if args.quick else 3,
        slow_seconds=3.0 if args.quick else 10.0,
        cert_kinds=["ecdsa", "rsa"] if args.cert == "both" else [args.cert],
        workers=args.workers,
        only=args.only,
        ours_cmd=ours_cmd,
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Setup: load generator, certificates, content, server installs


def run_checked(command: list[str], what: str, log_path: Path | None = None, timeout: float = 900) -> None:
    """Run a setup command and raise BenchmarkError with the end of its output if it fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{what} timed out after {timeout:.0f} s: {shlex.join(command)}") from None
    output = result.stdout + result.stderr
    if log_path is not None:
        log_path.write_text(output)
    if result.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        where = f" (full output in {log_path})" if log_path else ""
        raise BenchmarkError(f"{what} failed with exit code {result.returncode}{where}:\n{tail}")


def build_loadgen() -> None:
    if LOADGEN_BINARY.exists() and LOADGEN_BINARY.stat().st_mtime >= LOADGEN_SOURCE.stat().st_mtime:
        return
    if shutil.which("gcc") is None:
        raise BenchmarkError("gcc not found; install it (Debian package gcc) and rerun")
    if not Path("/usr/include/openssl/ssl.h").exists():
        log("OpenSSL headers are missing; installing libssl-dev with apt-get")
        if os.geteuid() != 0:
            raise BenchmarkError("libssl-dev is missing and installing it needs root: run apt-get install libssl-dev")
        run_checked(["apt-get", "update"], "apt-get update")
        run_checked(["apt-get", "install", "-y", "libssl-dev"], "apt-get install libssl-dev")
    log("building the load generator")
    run_checked(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN_BINARY), str(LOADGEN_SOURCE), "-lssl", "-lcrypto", "-lm"],
        "compiling bench/loadgen.c",
    )


def make_certificates() -> None:
    CERT_DIR.mkdir(parents=True, exist_ok=True)
    key_options = {
        "ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "rsa": ["-newkey", "rsa:2048"],
    }
    for kind, options in key_options.items():
        certificate = CERT_DIR / f"server-{kind}.crt"
        if certificate.exists():
            continue
        run_checked(
            ["openssl", "req", "-x509", *options, "-nodes", "-days", "3650", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(CERT_DIR / f"server-{kind}.key"), "-out", str(certificate)],
            f"making the {kind} server certificate",
        )
    if not (CERT_DIR / "client.crt").exists():
        run_checked(
            ["openssl", "req", "-x509", *key_options["ecdsa"], "-nodes", "-days", "3650", "-subj", "/CN=bench-client",
             "-keyout", str(CERT_DIR / "client.key"), "-out", str(CERT_DIR / "client.crt")],
            "making the client certificate",
        )


def write_file_of_size(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    # Incompressible bytes, so no layer can shortcut the transfer.
    block = os.urandom(MIB)
    with open(path, "wb") as output:
        for _ in range(size // MIB):
            output.write(block)


def make_content() -> None:
    (CONTENT_DIR / "cgi-bin").mkdir(parents=True, exist_ok=True)
    (CONTENT_DIR / "index.gmi").write_text(SMALL_BODY)
    write_file_of_size(CONTENT_DIR / "100mib.bin", 100 * MIB)
    write_file_of_size(CONTENT_DIR / "200mib.bin", 200 * MIB)
    script = CONTENT_DIR / "cgi-bin" / "hello"
    script.write_text(f"#!/bin/sh\nprintf '20 text/plain\\r\\n'\nprintf '{CGI_BODY.strip()}\\n'\n")
    script.chmod(0o755)


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def install_venv(venv: Path, requirement: list[str], stamp_text: str, label: str) -> Path:
    """Create the virtualenv and pip install the requirement unless the stamp file matches.

    Returns the path of the virtualenv's jetforce script.
    """
    stamp = venv / ".bench-installed"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return venv / "bin" / "jetforce"
    log(f"installing {label} into {venv.relative_to(REPO_DIR)}")
    run_checked([sys.executable, "-m", "venv", "--clear", str(venv)], f"creating the virtualenv for {label}")
    run_checked(
        [str(venv / "bin" / "pip"), "install", *requirement],
        f"pip install of {label}",
        log_path=WORK_DIR / f"pip-{venv.name}.log",
    )
    stamp.write_text(stamp_text)
    return venv / "bin" / "jetforce"


def read_help(command: list[str], label: str) -> str:
    try:
        result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BenchmarkError(f"{label} is not runnable: {shlex.join(command)} --help failed: {error}") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-10:])
        raise BenchmarkError(
            f"{label} is not runnable: {shlex.join(command)} --help exited with {result.returncode}:\n{tail}\n"
            "Run with --only reference to benchmark Jetforce 1.0.0 alone."
        )
    return result.stdout


# ---------------------------------------------------------------------------
# Servers


@dataclass
class ServerSpec:
    name: str  # "ours" or "reference"
    label: str
    command: list[str]
    extra_args: list[str] = field(default_factory=list)


def prepare_servers(settings: Settings) -> list[ServerSpec]:
    specs = []
    if settings.only != "reference":
        if settings.ours_cmd:
            command = settings.ours_cmd
            label = f"ours ({shlex.join(command)})"
        else:
            version = (REPO_DIR / "jetforce" / "__version__.py").read_text().split("=")[-1].strip().strip("\"'")
            script = install_venv(
                WORK_DIR / "venv-ours",
                ["-e", str(REPO_DIR)],
                file_digest(REPO_DIR / "setup.py", REPO_DIR / "pyproject.toml", REPO_DIR / "setup.cfg"),
                "jetforce from this checkout",
            )
            command = [str(script)]
            label = f"ours (jetforce {version}, this checkout)"
        help_text = read_help(command, "our server")
        extra_args = []
        # Our server accepts self-signed client certificates only with this flag. Jetforce 1.0.0 lacks it.
        if "--allow-transient-certs" in help_text:
            extra_args.append("--allow-transient-certs")
        if settings.workers is not None:
            if "--workers" not in help_text:
                raise BenchmarkError(f"--workers was given but {shlex.join(command)} --help lists no --workers option")
            extra_args += ["--workers", str(settings.workers)]
        specs.append(ServerSpec("ours", label, command, extra_args))
    if settings.only != "ours":
        script = install_venv(
            WORK_DIR / "venv-reference",
            [f"jetforce=={REFERENCE_VERSION}"],
            REFERENCE_VERSION,
            f"Jetforce {REFERENCE_VERSION} from PyPI",
        )
        read_help([str(script)], f"Jetforce {REFERENCE_VERSION}")
        specs.append(ServerSpec("reference", f"reference (Jetforce {REFERENCE_VERSION}, PyPI)", [str(script)]))
    return specs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LISTEN_HOST, 0))
        return probe.getsockname()[1]


def read_proc_stat(pid: int) -> list[str] | None:
    """Return the fields of /proc/PID/stat after the command name, or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """Return root and all its live descendants, found by parent PID in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = read_proc_stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree = [root]
    index = 0
    while index < len(tree):
        tree.extend(children.get(tree[index], []))
        index += 1
    return tree


@dataclass
class CpuSample:
    """CPU time in clock ticks of a process tree: its live processes, and the reaped children."""

    own_ticks: int
    children_ticks: int


class RunningServer:
    """One server process started by this script, pinned to SERVER_CPU."""

    def __init__(self, spec: ServerSpec, cert_kind: str, log_path: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.log_path = log_path
        command = [
            "taskset", "-c", str(SERVER_CPU), *spec.command,
            "--host", LISTEN_HOST, "--port", str(self.port), "--hostname", "localhost",
            "--tls-certfile", str(CERT_DIR / f"server-{cert_kind}.crt"),
            "--tls-keyfile", str(CERT_DIR / f"server-{cert_kind}.key"),
            "--dir", str(CONTENT_DIR), "--cgi-dir", "cgi-bin",
            *spec.extra_args,
        ]
        with open(log_path, "w") as log_file:
            log_file.write(f"$ {shlex.join(command)}\n")
            log_file.flush()
            # taskset execs the server, so the Popen PID is the server's PID.
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=WORK_DIR
            )
        _started_processes.append(self.process)
        self.pid = self.process.pid
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchmarkError(
                    f"{self.spec.name} server exited with code {self.process.returncode} during startup:\n"
                    f"{self.log_tail()}"
                )
            try:
                with socket.create_connection((LISTEN_HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise BenchmarkError(
            f"{self.spec.name} server did not listen on {LISTEN_HOST}:{self.port} within "
            f"{SERVER_START_TIMEOUT:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu_sample(self) -> CpuSample:
        own = children = 0
        for pid in process_tree(self.pid):
            fields = read_proc_stat(pid)
            if fields is None:
                continue
            # Fields 14 to 17 in proc(5) are utime, stime, cutime and cstime. This list starts at field 3.
            own += int(fields[11]) + int(fields[12])
            children += int(fields[13]) + int(fields[14])
        return CpuSample(own, children)

    def rss_kib(self) -> int:
        """Return VmRSS summed over the process tree, in KiB. Shared pages count once per process."""
        total = 0
        for pid in process_tree(self.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchmarkError(
                f"{self.spec.name} server exited with code {self.process.returncode}:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen) -> None:
    """Terminate one process that this script started, then kill it if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(SERVER_STOP_TIMEOUT)
    if process in _started_processes:
        _started_processes.remove(process)


def stop_all_started() -> None:
    for process in list(_started_processes):
        try:
            stop_process(process)
        except subprocess.TimeoutExpired:
            log(f"process {process.pid} did not exit after SIGKILL")


# ---------------------------------------------------------------------------
# Load generator


class LoadGenerator:
    def __init__(self) -> None:
        self.cert_args = ["--cert", str(CERT_DIR / "client.crt"), "--key", str(CERT_DIR / "client.key")]

    def command(self, port: int, args: list[str], client_cert: bool = False) -> list[str]:
        command = ["taskset", "-c", str(CLIENT_CPU), str(LOADGEN_BINARY), "--host", LISTEN_HOST, "--port", str(port)]
        if client_cert:
            command += self.cert_args
        return command + args

    def run(self, port: int, args: list[str], timeout: float, client_cert: bool = False) -> dict:
        command = self.command(port, args, client_cert)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"load generator timed out after {timeout:.0f} s: {shlex.join(command)}") from None
        if result.returncode != 0:
            raise BenchmarkError(
                f"load generator exited with {result.returncode}: {shlex.join(command)}\n{result.stderr.strip()}"
            )
        return parse_report(result.stdout, command)

    def start(self, port: int, args: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(
            self.command(port, args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _started_processes.append(process)
        return process


def parse_report(stdout: str, command: list[str]) -> dict:
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchmarkError(f"load generator printed no JSON report: {shlex.join(command)}\n{stdout}") from None


def finish_loadgen(process: subprocess.Popen, timeout: float) -> dict:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process)
        raise BenchmarkError(f"load generator did not finish within {timeout:.0f} s") from None
    _started_processes.remove(process)
    if process.returncode != 0:
        raise BenchmarkError(f"load generator exited with {process.returncode}: {stderr.strip()}")
    return parse_report(stdout, process.args)


# ---------------------------------------------------------------------------
# Measurements


@dataclass
class Figure:
    value: float | None
    client_bound: bool = False


@dataclass
class SuiteContext:
    settings: Settings
    loadgen: LoadGenerator
    warnings: list[str]
    raw: dict  # loadgen reports and samples for the results file
    tag: str  # e.g. "round 1, ours, ecdsa"
    # CPU number -> highest share of it that other programs used during a timed test, and that test
    other_load: dict[str, tuple[float, str]] = field(default_factory=dict)


def note_problems(context: SuiteContext, test: str, report: dict) -> None:
    """Record warnings for failed and skipped requests."""
    if report["failed"] > 0:
        failures = ", ".join(f"{name} {count}" for name, count in report["failures"].items() if count)
        context.warnings.append(f"{context.tag}, {test}: {report['failed']} requests failed ({failures})")
    if report.get("skipped"):
        context.warnings.append(
            f"{context.tag}, {test}: {report['skipped']} scheduled requests were skipped "
            "because the load generator reached its limit of open requests"
        )


def is_client_bound(report: dict) -> bool:
    return (report.get("cpu_percent") or 0) >= CLIENT_BOUND_PERCENT


def run_with_server_cpu(
    context: SuiteContext, server: RunningServer, test: str, args: list[str], client_cert: bool = False
) -> dict:
    """Run the load generator and add the server's CPU time, total and per completed request, to its report."""
    before = server.cpu_sample()
    cpus_before = read_cpu_busy_ticks()
    started = time.monotonic()
    report = context.loadgen.run(
        server.port, args, timeout=context.settings.duration + 60, client_cert=client_cert
    )
    time.sleep(SETTLE_SECONDS)  # lets the server finish logging and reap CGI children
    after = server.cpu_sample()
    cpus_after = read_cpu_busy_ticks()
    wall = time.monotonic() - started
    server.check_alive()

    own_seconds = (after.own_ticks - before.own_ticks) / CLOCK_TICKS
    children_seconds = (after.children_ticks - before.children_ticks) / CLOCK_TICKS
    completed = report["completed"]
    report["server_cpu_s"] = own_seconds
    report["server_children_cpu_s"] = children_seconds
    # Measured over the load generator's run plus SETTLE_SECONDS, so slightly below the true share.
    report["server_cpu_percent"] = own_seconds / wall * 100
    report["server_cpu_us_per_request"] = own_seconds * 1e6 / completed if completed else None
    report["server_children_cpu_us_per_request"] = children_seconds * 1e6 / completed if completed else None
    context.raw[test] = report
    note_problems(context, test, report)

    # Busy time on each CPU that neither the server nor the load generator accounts for. This
    # script and kernel work done outside process context also count, so a few percent is normal.
    server_busy = (cpus_after[SERVER_CPU] - cpus_before[SERVER_CPU]) / CLOCK_TICKS
    client_busy = (cpus_after[CLIENT_CPU] - cpus_before[CLIENT_CPU]) / CLOCK_TICKS
    report["other_cpu_percent"] = {
        str(SERVER_CPU): max(0.0, server_busy - own_seconds - children_seconds) / wall * 100,
        str(CLIENT_CPU): max(0.0, client_busy - report["cpu_user_s"] - report["cpu_sys_s"]) / wall * 100,
    }
    for cpu, percent in report["other_cpu_percent"].items():
        context.other_load[cpu] = max(context.other_load.get(cpu, (0.0, "")), (percent, test))
    return report


def read_cpu_busy_ticks() -> dict[int, int]:
    """Return the non-idle time of each CPU from /proc/stat, in clock ticks."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            # user nice system idle iowait irq softirq steal; idle and iowait are not busy.
            ticks = [int(value) for value in values[:8]]
            busy[int(name[3:])] = sum(ticks) - ticks[3] - ticks[4]
    return busy


def measure_rate(
    context: SuiteContext, server: RunningServer, test: str, path: str, rate: float, client_cert: bool
) -> dict:
    """Offer `rate` requests/s (open loop) and return the report with the server's CPU time."""
    args = ["--rate", f"{rate:g}", "--duration", f"{context.settings.duration:g}", *path_args(path)]
    report = run_with_server_cpu(context, server, test, args, client_cert)
    if report["server_cpu_percent"] > NEAR_CAPACITY_PERCENT:
        context.warnings.append(
            f"{context.tag}, {test}: the server used {report['server_cpu_percent']:.0f}% of its CPU, "
            f"so {rate:g} requests/s is close to its capacity; lower the rate with --rate or --cgi-rate"
        )
    return report


def measure_concurrency(context: SuiteContext, server: RunningServer, test: str, path: str) -> dict:
    """Keep --concurrency requests open (closed loop) and return the report with the server's CPU time."""
    settings = context.settings
    args = ["--concurrency", str(settings.concurrency), "--duration", f"{settings.duration:g}", *path_args(path)]
    return run_with_server_cpu(context, server, test, args)


def path_args(path: str) -> list[str]:
    """Return the load generator options that request `path` and check the length of its body."""
    sizes = {
        SMALL_PATH: len(SMALL_BODY.encode()),
        CGI_PATH: len(CGI_BODY.encode()),
        FILE_100_PATH: 100 * MIB,
        FILE_200_PATH: 200 * MIB,
    }
    return ["--path", path, "--expect-body", str(sizes[path])]


def warm_up(context: SuiteContext, server: RunningServer) -> None:
    """Send a few requests of each kind so that lazy imports and caches are in place before measuring."""
    for path, client_cert, count in ((SMALL_PATH, False, 50), (SMALL_PATH, True, 10), (CGI_PATH, False, 10)):
        report = context.loadgen.run(
            server.port,
            ["--concurrency", "2", "--requests", str(count), "--duration", "30", *path_args(path)],
            timeout=60,
            client_cert=client_cert,
        )
        if report["completed"] != count:
            cert_text = " with a client certificate" if client_cert else ""
            failures = ", ".join(f"{name} {n}" for name, n in report["failures"].items() if n)
            raise BenchmarkError(
                f"{context.tag}: warm-up requests for {path}{cert_text} failed ({failures}); "
                f"server log {server.log_path}:\n{server.log_tail()}"
            )


def run_throughput_phase(context: SuiteContext, server: RunningServer) -> dict[str, Figure]:
    settings = context.settings
    figures: dict[str, Figure] = {}
    warm_up(context, server)

    log(f"  {context.tag}: CPU per request at {settings.rate:g} requests/s")
    report = measure_rate(context, server, "rate_small", SMALL_PATH, settings.rate, client_cert=False)
    figures["cpu_small"] = Figure(report["server_cpu_us_per_request"])
    figures["rate_p50"] = Figure(report["latency_p50_ms"])
    figures["rate_p99"] = Figure(report["latency_p99_ms"])

    report = measure_rate(context, server, "rate_small_cert", SMALL_PATH, settings.rate, client_cert=True)
    figures["cpu_small_cert"] = Figure(report["server_cpu_us_per_request"])

    log(f"  {context.tag}: CGI CPU per request at {settings.cgi_rate:g} requests/s")
    report = measure_rate(context, server, "rate_cgi", CGI_PATH, settings.cgi_rate, client_cert=False)
    figures["cgi_cpu"] = Figure(report["server_cpu_us_per_request"])
    figures["cgi_children_cpu"] = Figure(report["server_children_cpu_us_per_request"])

    log(f"  {context.tag}: requests/s at concurrency {settings.concurrency}")
    report = measure_concurrency(context, server, "concurrency_small", SMALL_PATH)
    bound = is_client_bound(report)
    figures["rps_small"] = Figure(report["requests_per_s"], bound)
    figures["c32_p50"] = Figure(report["latency_p50_ms"], bound)
    figures["c32_p99"] = Figure(report["latency_p99_ms"], bound)
    figures["c32_server_cpu"] = Figure(report["server_cpu_percent"])
    figures["c32_loadgen_cpu"] = Figure(report["cpu_percent"])

    report = measure_concurrency(context, server, "concurrency_cgi", CGI_PATH)
    figures["rps_cgi"] = Figure(report["requests_per_s"], is_client_bound(report))

    log(f"  {context.tag}: transfer of a 100 MiB file")
    report = context.loadgen.run(
        server.port,
        ["--concurrency", "1", "--requests", str(settings.transfer_requests), "--duration", "600",
         "--timeout", "120", *path_args(FILE_100_PATH)],
        timeout=settings.transfer_requests * 120 + 60,
    )
    context.raw["transfer"] = report
    note_problems(context, "transfer", report)
    megabytes_per_s = report["bytes_received"] / 1e6 / report["elapsed_s"] if report["completed"] else None
    figures["transfer"] = Figure(megabytes_per_s, is_client_bound(report))

    log(f"  {context.tag}: burst of {settings.burst} connects")
    time.sleep(1.0)  # lets earlier connections leave the accept queue
    report = context.loadgen.run(server.port, ["--burst", str(settings.burst), *path_args(SMALL_PATH)], timeout=90)
    server.check_alive()
    context.raw["burst"] = report
    figures["burst_lost"] = Figure(report["lost"])
    return figures


def run_idle_phase(context: SuiteContext, server: RunningServer) -> dict[str, Figure]:
    settings = context.settings
    warm_up(context, server)
    time.sleep(0.5)
    baseline = server.rss_kib()
    log(f"  {context.tag}: RSS with {settings.idle_connections} idle TLS connections")
    process = context.loadgen.start(
        server.port, ["--idle", str(settings.idle_connections), "--concurrency", "32", "--hold", "60"]
    )
    ready_line = read_line(process, timeout=60)
    if not ready_line.startswith("ready "):
        stop_process(process)
        raise BenchmarkError(f"{context.tag}: load generator did not report ready idle connections: {ready_line!r}")
    ready = int(ready_line.split()[1])
    time.sleep(1.0)  # the server finishes its side of the last handshakes
    loaded = server.rss_kib()
    # Any input ends the hold. communicate() in finish_loadgen then closes stdin.
    process.stdin.write("\n")
    process.stdin.flush()
    report = finish_loadgen(process, timeout=90)
    server.check_alive()
    report.update(rss_before_kib=baseline, rss_with_idle_kib=loaded)
    context.raw["idle"] = report

    if ready < settings.idle_connections:
        context.warnings.append(
            f"{context.tag}, idle connections: only {ready} of {settings.idle_connections} finished the handshake"
        )
    if report["idle_closed_by_server"]:
        context.warnings.append(
            f"{context.tag}, idle connections: the server closed {report['idle_closed_by_server']} "
            "of them while they were held"
        )
    per_connection = (loaded - baseline) / ready if ready else None
    return {"baseline_rss": Figure(baseline / 1024), "idle_kib": Figure(per_connection)}


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """Read one line of the process's stdout, waiting at most `timeout` seconds."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            return ""
        return process.stdout.readline().strip()
    finally:
        selector.close()


def run_slow_reader_phase(context: SuiteContext, server: RunningServer) -> dict[str, Figure]:
    settings = context.settings
    warm_up(context, server)
    time.sleep(0.5)
    baseline = server.rss_kib()
    log(
        f"  {context.tag}: peak RSS with {settings.slow_clients} clients reading a 200 MiB file "
        f"at {settings.slow_read_rate // 1024} KiB/s for {settings.slow_seconds:g} s"
    )
    process = context.loadgen.start(
        server.port,
        ["--concurrency", str(settings.slow_clients), "--requests", str(settings.slow_clients),
         "--duration", f"{settings.slow_seconds:g}", *path_args(FILE_200_PATH),
         "--read-rate", str(settings.slow_read_rate), "--rcvbuf", str(settings.slow_receive_buffer),
         "--abort-at-end", "--timeout", f"{settings.slow_seconds + 30:g}"],
    )
    peak = baseline
    deadline = time.monotonic() + settings.slow_seconds + 30
    while process.poll() is None and time.monotonic() < deadline:
        peak = max(peak, server.rss_kib())
        time.sleep(0.025)
    peak = max(peak, server.rss_kib())
    report = finish_loadgen(process, timeout=30)
    server.check_alive()
    report.update(rss_before_kib=baseline, rss_peak_kib=peak)
    context.raw["slow_readers"] = report
    note_problems(context, "slow readers", report)
    return {"slow_peak_growth": Figure((peak - baseline) / 1024)}


def run_suite(
    spec: ServerSpec, cert_kind: str, round_number: int, settings: Settings, loadgen: LoadGenerator,
    log_dir: Path, warnings: list[str],
) -> tuple[dict[str, Figure], dict]:
    """Run every measurement for one server and certificate. Each phase gets a fresh server process."""
    tag = f"round {round_number}, {spec.name}, {cert_kind}"
    raw: dict = {}
    context = SuiteContext(settings, loadgen, warnings, raw, tag)
    figures: dict[str, Figure] = {}
    phases = (
        ("throughput", run_throughput_phase),
        ("idle", run_idle_phase),
        ("slow", run_slow_reader_phase),
    )
    for phase_name, phase in phases:
        log_path = log_dir / f"round{round_number}-{spec.name}-{cert_kind}-{phase_name}.log"
        server = RunningServer(spec, cert_kind, log_path)
        try:
            affinity = Path(f"/proc/{server.pid}/status").read_text()
            if f"Cpus_allowed_list:\t{SERVER_CPU}\n" not in affinity:
                warnings.append(f"{tag}: the server is not pinned to CPU {SERVER_CPU} alone")
            figures.update(phase(context, server))
        finally:
            server.stop()
    for cpu, (percent, test) in sorted(context.other_load.items()):
        if percent > OTHER_LOAD_PERCENT:
            warnings.append(
                f"{tag}: other programs kept CPU {cpu} up to {percent:.0f}% busy (in {test}), "
                "so this suite's figures may be disturbed; check top for other programs"
            )
    return figures, raw


# ---------------------------------------------------------------------------
# Report


@dataclass
class Row:
    key: str
    label: str
    unit: str
    better: str  # "lower", "higher", or "-" where neither is better
    digits: int


def table_rows(settings: Settings) -> list[Row]:
    rate = f"{settings.rate:g}/s"
    cgi_rate = f"{settings.cgi_rate:g}/s"
    c = settings.concurrency
    return [
        Row("cpu_small", f"server CPU per request, small file @ {rate}", "µs", "lower", 0),
        Row("cpu_small_cert", f"  same, with client certificate @ {rate}", "µs", "lower", 0),
        Row("rate_p50", f"latency p50 @ {rate}", "ms", "lower", 2),
        Row("rate_p99", f"latency p99 @ {rate}", "ms", "lower", 2),
        Row("rps_small", f"requests/s, small file, concurrency {c}", "req/s", "higher", 0),
        Row("c32_p50", f"latency p50, concurrency {c}", "ms", "lower", 1),
        Row("c32_p99", f"latency p99, concurrency {c}", "ms", "lower", 1),
        Row("c32_server_cpu", f"  server CPU busy, concurrency {c}", "%", "-", 0),
        Row("c32_loadgen_cpu", f"  load generator CPU busy, concurrency {c}", "%", "-", 0),
        Row("cgi_cpu", f"CGI: server CPU per request @ {cgi_rate}", "µs", "lower", 0),
        Row("cgi_children_cpu", "CGI: child process CPU per request", "µs", "lower", 0),
        Row("rps_cgi", f"CGI: requests/s, concurrency {c}", "req/s", "higher", 0),
        Row("transfer", "100 MiB file, one client", "MB/s", "higher", 1),
        Row("baseline_rss", "baseline RSS after warm-up", "MiB", "lower", 1),
        Row("idle_kib", f"RSS per idle TLS connection ({settings.idle_connections})", "KiB", "lower", 1),
        Row(
            "slow_peak_growth",
            f"peak RSS growth, {settings.slow_clients} slow readers of 200 MiB",
            "MiB",
            "lower",
            1,
        ),
        Row("burst_lost", f"connections lost in a burst of {settings.burst}", "count", "lower", 0),
    ]


def median_figure(samples: list[Figure]) -> tuple[float | None, bool, float | None]:
    """Return the median, whether any round was client-bound, and the spread (max-min)/median."""
    values = [sample.value for sample in samples if sample.value is not None]
    if not values:
        return None, False, None
    middle = statistics.median(values)
    spread = (max(values) - min(values)) / middle if middle else None
    return middle, any(sample.client_bound for sample in samples), spread


def format_value(value: float | None, digits: int, client_bound: bool) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}" + ("*" if client_bound else "")


def format_ratio(ours: float | None, reference: float | None) -> str:
    if ours is None or reference is None:
        return "n/a"
    if reference == 0:
        return "=" if ours == 0 else "inf"
    return f"{ours / reference:.2f}"


def format_spread(spread: float | None) -> str:
    return "-" if spread is None else f"{spread * 100:.0f}%"


def busiest_loadgen_run(raw: dict, tag: str) -> tuple[float, str]:
    """Return the load generator's highest CPU share among the timed tests of a suite, and where."""
    busiest = (0.0, "")
    for test, report in raw.items():
        # The idle test mostly waits for this script, and the burst test does all its work in a
        # fraction of a second by design, so their shares do not show a bottleneck.
        if test not in ("idle", "burst") and report.get("cpu_percent") is not None:
            busiest = max(busiest, (report["cpu_percent"], f"{tag}, {test}"))
    return busiest


def print_report(
    settings: Settings, specs: list[ServerSpec], results: dict, loadgen_peak: tuple[float, str]
) -> None:
    names = [spec.name for spec in specs]
    print()
    for spec in specs:
        print(f"{spec.name}: {spec.label}" + (f" {shlex.join(spec.extra_args)}" if spec.extra_args else ""))
    print(
        f"Median of {settings.rounds} round(s), servers alternating; server on CPU {SERVER_CPU}, "
        f"load generator on CPU {CLIENT_CPU}; ratio = ours / reference."
    )
    spread_header = "spread " + "/".join(names)
    header = f"{'figure':<52} {'unit':>5} " + " ".join(f"{name:>11}" for name in names)
    if len(names) == 2:
        header += f" {'ratio':>6}  {'better':<6}"
    header += f"  {spread_header}"

    for cert_kind in settings.cert_kinds:
        title = {"ecdsa": "ECDSA P-256", "rsa": "RSA-2048"}[cert_kind]
        print(f"\n{title} server certificate")
        print(header)
        print("-" * len(header))
        for row in table_rows(settings):
            medians = {}
            line = f"{row.label:<52} {row.unit:>5} "
            spreads = []
            cells = []
            for name in names:
                samples = [round_figures[row.key] for round_figures in results[name][cert_kind]]
                value, bound, spread = median_figure(samples)
                medians[name] = value
                cells.append(f"{format_value(value, row.digits, bound):>11}")
                spreads.append(format_spread(spread))
            line += " ".join(cells)
            if len(names) == 2:
                line += f" {format_ratio(medians['ours'], medians['reference']):>6}  {row.better:<6}"
            line += "  " + "/".join(spreads)
            print(line)

    print(
        f"\n* the load generator used at least {CLIENT_BOUND_PERCENT:.0f}% of CPU {CLIENT_CPU} in a round, "
        "so this figure may be limited by the client."
    )
    print(f"Load generator CPU: at most {loadgen_peak[0]:.0f}% of CPU {CLIENT_CPU} in any test ({loadgen_peak[1]}).")
    print(summary_line(settings, names, results))


def summary_line(settings: Settings, names: list[str], results: dict) -> str:
    cert_kind = settings.cert_kinds[0]
    medians = {}
    for name in names:
        medians[name] = {
            key: median_figure([figures[key] for figures in results[name][cert_kind]])[0]
            for key in ("cpu_small", "rps_small")
        }
    title = {"ecdsa": "ECDSA", "rsa": "RSA"}[cert_kind]
    if len(names) == 1:
        figures = medians[names[0]]
        return (
            f"Summary ({title}): {names[0]} used {format_value(figures['cpu_small'], 0, False)} µs of server CPU "
            f"per small-file request at {settings.rate:g} requests/s and served "
            f"{format_value(figures['rps_small'], 0, False)} requests/s at concurrency {settings.concurrency}."
        )
    ours, reference = medians["ours"], medians["reference"]
    return (
        f"Summary ({title}): ours used {format_ratio(ours['cpu_small'], reference['cpu_small'])}x the server CPU "
        f"per small-file request of Jetforce {REFERENCE_VERSION} "
        f"({format_value(ours['cpu_small'], 0, False)} vs {format_value(reference['cpu_small'], 0, False)} µs "
        f"at {settings.rate:g} requests/s) and served {format_ratio(ours['rps_small'], reference['rps_small'])}x "
        f"its requests/s at concurrency {settings.concurrency}."
    )


# ---------------------------------------------------------------------------
# Main


def check_cpus() -> None:
    allowed = os.sched_getaffinity(0)
    if SERVER_CPU not in allowed or CLIENT_CPU not in allowed:
        raise BenchmarkError(
            f"the benchmark needs CPUs {SERVER_CPU} and {CLIENT_CPU}, but this process may run only on "
            f"{sorted(allowed)}"
        )
    # Keep this script off the server's CPU. It mostly sleeps while the load generator runs.
    os.sched_setaffinity(0, {CLIENT_CPU})


def warn_if_cpus_busy() -> None:
    """Warn when other programs keep the benchmark's CPUs busy before it starts."""
    before = read_cpu_busy_ticks()
    time.sleep(1.0)
    after = read_cpu_busy_ticks()
    for cpu in (SERVER_CPU, CLIENT_CPU):
        percent = (after[cpu] - before[cpu]) / CLOCK_TICKS * 100
        if percent > OTHER_LOAD_PERCENT:
            log(
                f"warning: CPU {cpu} was {percent:.0f}% busy before the benchmark started; "
                "other programs will disturb the figures, so stop them or wait for them to finish"
            )


def main(argv: list[str]) -> int:
    settings = parse_arguments(argv)
    atexit.register(stop_all_started)
    started = time.monotonic()
    try:
        check_cpus()
        WORK_DIR.mkdir(exist_ok=True)
        build_loadgen()
        make_certificates()
        make_content()
        specs = prepare_servers(settings)
        warn_if_cpus_busy()

        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        log_dir = WORK_DIR / "logs" / stamp
        log_dir.mkdir(parents=True)
        loadgen = LoadGenerator()
        warnings: list[str] = []
        results = {spec.name: {kind: [] for kind in settings.cert_kinds} for spec in specs}
        raw_results = {spec.name: {kind: [] for kind in settings.cert_kinds} for spec in specs}
        loadgen_peak = (0.0, "")

        for round_number in range(1, settings.rounds + 1):
            for cert_kind in settings.cert_kinds:
                for spec in specs:
                    log(f"round {round_number}/{settings.rounds}: {spec.name}, {cert_kind} certificate")
                    figures, raw = run_suite(spec, cert_kind, round_number, settings, loadgen, log_dir, warnings)
                    results[spec.name][cert_kind].append(figures)
                    raw_results[spec.name][cert_kind].append(raw)
                    loadgen_peak = max(loadgen_peak, busiest_loadgen_run(raw, f"round {round_number}, {spec.name}, {cert_kind}"))
    except BenchmarkError as error:
        log(f"error: {error}")
        return 1
    finally:
        stop_all_started()

    print_report(settings, specs, results, loadgen_peak)
    for warning in warnings:
        print(f"warning: {warning}")

    results_path = WORK_DIR / "results" / f"{stamp}.json"
    results_path.parent.mkdir(exist_ok=True)
    results_path.write_text(
        json.dumps(
            {
                "settings": {key: value for key, value in vars(settings).items()},
                "servers": {spec.name: {"label": spec.label, "extra_args": spec.extra_args} for spec in specs},
                "loadgen_reports": raw_results,
            },
            indent=1,
        )
    )
    elapsed = time.monotonic() - started
    print(f"Raw results: {results_path.relative_to(REPO_DIR)}; server logs: {log_dir.relative_to(REPO_DIR)}/")
    print(f"Run time: {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
