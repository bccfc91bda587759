"""Measure every sockecho model against reference servers, side by side, in one run.

``benchmarks/run`` calls this. It builds the C references with gcc, starts every
server (sockecho's concurrent models and the references: C epoll, socketserver's
ThreadingTCPServer, stock asyncio Protocol, uvloop Protocol when installed), and
for each scenario loads each server in turn with the C client
(benchmarks/reference/echo_client.c: closed loop, verified echoes, not the
bottleneck), interleaving servers within each repetition so a noisy neighbour
hurts them all alike. After an unmeasured warm-up run, the figure is the
**server's CPU time per round trip**: utime+stime of the server's process tree
(/proc/PID/stat and its descendants) over the measured run, divided by the
round trips the client verified. The best of the repetitions is kept.

It also measures idle memory per connection (RSS growth with 1000 idle
connections) and whether ``sockecho bench`` (each engine) keeps up with the C
client. Results: a markdown table, a JSON document and a chart in --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import connect_storm  # benchmarks/connect_storm.py: a script's own folder is on sys.path

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "reference"
BUILD = REFERENCE / "build"
#: Clock ticks per second of /proc/PID/stat's utime and stime.
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Seconds to wait for a server's ready line.
READY_TIMEOUT = 20.0
#: Connections held open for the idle-memory figure.
IDLE_CONNECTIONS = 1000
READY = re.compile(r"listening on tcp://127\.0\.0\.1:(\d+)")
#: The pure-Python floor (benchmarks/reference/bare_epoll.py): what every table compares with.
FLOOR = "bare epoll loop (floor)"
#: Issue 12's targets: the fastest pure-Python model within this factor of the floor's CPU per
#: round trip, in these scenarios; sockecho bench's CPU per round trip within GENERATOR_TARGET
#: of the C client's.
FLOOR_TARGET = 1.10
FLOOR_SCENARIOS = ("50x1KiB", "1x64B", "1000x1KiB")
GENERATOR_TARGET = 1.5
#: Issue 12's storm: this many clients at once, each with its first echo within this (seconds).
STORM_CLIENTS = 1000
STORM_FIRST_ECHO = 1.0
#: The generated part of docs/PERFORMANCE.md lies between these two lines.
DOCS = HERE.parent / "docs" / "PERFORMANCE.md"
DOCS_BEGIN = "<!-- benchmarks/run writes from here: do not edit by hand -->"
DOCS_END = "<!-- benchmarks/run writes up to here -->"


@dataclass(frozen=True)
class Scenario:
    name: str
    connections: int
    size: int


#: The load of the workers table: enough connections that the kernel's hash spreads them.
WORKERS_SCENARIO = Scenario("100x1KiB", 100, 1024)
SCENARIOS = [
    Scenario("50x1KiB", 50, 1024),
    Scenario("1x64B", 1, 64),
    Scenario("10x64KiB", 10, 64 * 1024),
    Scenario("1000x1KiB", 1000, 1024),
]


@dataclass
class ServerProcess:
    name: str
    argv: list[str]
    kind: str  # "sockecho" or "reference"
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    stderr_tail: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr_tail = [*self.stderr_tail[-20:], line.rstrip()]
                if (match := READY.search(line)) and not self.port:
                    self.port = int(match[1])
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(READY_TIMEOUT):
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {self.stderr_tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pids(self) -> list[int]:
        """The server process and its descendants."""
        assert self.proc is not None
        tree = [self.proc.pid]
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    ppid = int(stat_fields(int(entry.name))[1])
                    children.setdefault(ppid, []).append(int(entry.name))
        for pid in tree:
            tree.extend(children.get(pid, []))
        return tree

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = stat_fields(pid)
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLK_TCK

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may contain spaces): field 3 onwards."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def build_references() -> None:
    BUILD.mkdir(exist_ok=True)
    for name in ("echo_server", "echo_client"):
        source = REFERENCE / f"{name}.c"
        target = BUILD / name
        if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
            subprocess.run(
                ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(target), str(source)], check=True
            )


def servers(models: list[str]) -> list[ServerProcess]:
    python = sys.executable
    chosen = []
    for model in models:  # "asyncio+uvloop": the asyncio model with --loop uvloop
        name, _, loop = model.partition("+")
        argv = [python, "-m", "sockecho", "serve", "--model", name, "--port", "0", "-q"]
        if loop:
            argv += ["--loop", loop]
        chosen.append(ServerProcess(f"sockecho {model}", argv, "sockecho"))
    chosen.append(ServerProcess("C epoll", [str(BUILD / "echo_server"), "0"], "reference"))
    chosen.append(ServerProcess(FLOOR, [python, str(REFERENCE / "bare_epoll.py")], "reference"))
    refs = str(REFERENCE / "python_servers.py")
    chosen.append(ServerProcess("ThreadingTCPServer", [python, refs, "threading"], "reference"))
    chosen.append(ServerProcess("asyncio Protocol", [python, refs, "asyncio"], "reference"))
    chosen.append(ServerProcess("asyncio streams", [python, refs, "streams"], "reference"))
    try:
        import uvloop  # noqa: F401, PLC0415
    except ImportError:
        print("uvloop is not installed: no uvloop reference", file=sys.stderr)
    else:
        chosen.append(ServerProcess("uvloop Protocol", [python, refs, "uvloop"], "reference"))
    return chosen


def run_client(
    port: int, scenario: Scenario, duration: float, prefix: list[str] | None = None
) -> dict[str, Any]:
    """The C client against ``port``; ``prefix`` runs it under a command (taskset)."""
    argv = [*(prefix or []), str(BUILD / "echo_client"), str(port), str(scenario.connections)]
    argv += [str(scenario.size), f"{duration:g}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        return {"round_trips": 0, "errors": 1, "failure": done.stderr.strip()[-200:]}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(
    server: ServerProcess, scenario: Scenario, duration: float, warmup: float
) -> dict[str, Any]:
    run_client(server.port, scenario, warmup)  # warm caches, allocators, the JIT-less interpreter
    before = server.cpu_seconds()
    result = run_client(server.port, scenario, duration)
    cpu = server.cpu_seconds() - before
    rts = result["round_trips"]
    result["server_cpu_s"] = round(cpu, 3)
    result["cpu_us_per_rt"] = round(cpu / rts * 1e6, 3) if rts else None
    result["rate"] = round(rts / result["elapsed_s"], 1) if rts else 0.0
    return result


def idle_memory(server: ServerProcess) -> float:
    """KiB of RSS per idle connection, from the growth with IDLE_CONNECTIONS held open."""
    with socket.create_connection(("127.0.0.1", server.port)) as probe:
        probe.sendall(b"x")
        probe.recv(1)
    base = server.rss_kib()
    held = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            held.append(sock)
        for sock in held:  # one echo each, so every connection is really being served
            sock.sendall(b"x")
        for sock in held:
            sock.recv(1)
        grown = server.rss_kib()
    finally:
        for sock in held:
            sock.close()
    return round((grown - base) / IDLE_CONNECTIONS, 2)


#: The load generator check's variants of ``sockecho bench``: name -> (--loop, --engine).
GENERATOR_VARIANTS = {
    "epoll": ("asyncio", "epoll"),
    "asyncio": ("asyncio", "asyncio"),
    "uvloop": ("uvloop", "asyncio"),
}
#: The scenarios the load generator is checked in (bench runs min(2, connections) processes).
GENERATOR_SCENARIOS = ("50x1KiB", "1x64B")


def bench_run(
    port: int, scenario: Scenario, duration: float, loop: str, engine: str = "auto"
) -> dict[str, Any]:
    """``sockecho bench`` (2 processes, or 1 for one connection) against ``port``: its JSON
    document (stdout)."""
    argv = [sys.executable, "-m", "sockecho", "bench", "--port", str(port), "--loop", loop]
    argv += ["--engine", engine]
    argv += ["-c", str(scenario.connections), "-s", str(scenario.size), "-d", f"{duration:g}"]
    argv += ["--warmup", "0.5", "-p", str(min(2, scenario.connections)), "-q"]
    argv += ["--json", "/dev/stdout"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120, check=False)
    if done.returncode != 0 or "{" not in done.stdout:
        return {"round_trips_per_s": 0.0, "error_count": -1, "client": {}}
    document: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{") :])
    return document


def generator_check(c_server: ServerProcess, duration: float, repetitions: int) -> dict[str, Any]:
    """sockecho bench (each engine, and uvloop when installed) against the C server next to
    the C client, interleaved, best of the repetitions each (the machine is shared: noise only
    ever slows a run down): round trips/s, and each one's own CPU per round trip (the C
    client's getrusage, bench's own report), per scenario of GENERATOR_SCENARIOS."""
    variants = dict(GENERATOR_VARIANTS)
    try:
        import uvloop  # noqa: F401, PLC0415
    except ImportError:
        del variants["uvloop"]
    errors = saturated = 0
    scenarios: dict[str, Any] = {}
    for scenario in (s for s in SCENARIOS if s.name in GENERATOR_SCENARIOS):
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for _ in range(repetitions):
            c_client = run_client(c_server.port, scenario, duration)
            rts = c_client["round_trips"]
            best["c_client"] = max(best.get("c_client", 0.0), rts / c_client["elapsed_s"])
            if rts and "cpu_s" in c_client:
                cpu["c_client"] = min(cpu.get("c_client", 1e9), c_client["cpu_s"] / rts * 1e6)
            for name, (loop, engine) in variants.items():
                run = bench_run(c_server.port, scenario, duration, loop, engine)
                best[name] = max(best.get(name, 0.0), float(run["round_trips_per_s"]))
                errors += max(int(run["error_count"]), 0)
                if run["client"].get("cpu_us_per_rt"):
                    cpu[name] = min(cpu.get(name, 1e9), float(run["client"]["cpu_us_per_rt"]))
                saturated += int(run["client"].get("saturated", 0))
        c_rate, c_cpu = best["c_client"], cpu.get("c_client")
        scenarios[scenario.name] = {
            "processes": min(2, scenario.connections),
            "c_client_rate": round(c_rate, 1),
            "c_client_cpu_us_per_rt": round(c_cpu, 3) if c_cpu else None,
            "bench_rate": {name: round(best.get(name, 0.0), 1) for name in variants},
            "rate_ratio": {
                name: round(best.get(name, 0.0) / c_rate, 3) if c_rate else None
                for name in variants
            },
            "bench_cpu_us_per_rt": {name: round(cpu[name], 3) for name in variants if name in cpu},
            "bench_cpu_ratio": {
                name: round(cpu[name] / c_cpu, 3) for name in variants if name in cpu and c_cpu
            },
        }
    return {
        "scenarios": scenarios,
        "sockecho_bench_errors": errors,
        "saturated_processes": saturated,
    }


def variant_label(name: str) -> str:
    loop, engine = GENERATOR_VARIANTS[name]
    return f"--engine {engine}" + (f" --loop {loop}" if loop != "asyncio" else "")


def generator_markdown(gen: dict[str, Any]) -> list[str]:
    lines = []
    for scenario, row in gen.get("scenarios", {}).items():
        lines += [
            f"#### Load generator ({scenario} against the C server, "
            f"`sockecho bench -p {row['processes']}`)",
            "",
            "| client | round trips/s | vs C client | own CPU µs / round trip | vs C client |",
            "|---|---:|---:|---:|---:|",
            f"| C client | {row['c_client_rate']:,.0f} | 1.00x | "
            f"{row['c_client_cpu_us_per_rt']} | 1.00x |",
        ]
        for name, rate in row["bench_rate"].items():
            lines.append(
                f"| `sockecho bench {variant_label(name)}` | {rate:,.0f} | "
                f"{row['rate_ratio'].get(name)}x | {row['bench_cpu_us_per_rt'].get(name, '-')} | "
                f"{row['bench_cpu_ratio'].get(name, '-')}x |"
            )
        lines.append("")
    lines += [
        f"bench errors in these runs: {gen['sockecho_bench_errors']}; saturated bench "
        f"processes: {gen.get('saturated_processes', 0)}.",
        "",
    ]
    return lines


def pinning(workers: int) -> tuple[list[str], list[str], str]:
    """taskset prefixes (server, client) keeping them on separate CPUs when there are enough:
    the last ``workers`` CPUs for the server, the rest for the client; else none."""
    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or len(cpus) <= workers:
        return [], [], f"none ({len(cpus)} CPUs: server and client share them)"
    server, client = cpus[-workers:], cpus[:-workers]

    def listed(group: list[int]) -> str:
        return ",".join(str(cpu) for cpu in group)

    return (
        ["taskset", "-c", listed(server)],
        ["taskset", "-c", listed(client)],
        f"server on CPU {listed(server)}, client on CPU {listed(client)}",
    )


def workers_check(
    counts: list[int], model: str, duration: float, warmup: float, repetitions: int
) -> dict[str, Any]:
    """``sockecho serve --workers N`` for each N, loaded by the C client (WORKERS_SCENARIO),
    pinned apart where the CPUs allow; interleaved repetitions, the best rate of each."""
    scenario = WORKERS_SCENARIO
    python = sys.executable
    rows: dict[int, dict[str, Any]] = {}
    plans = {count: pinning(count) for count in counts}
    for _ in range(repetitions):
        for count in counts:
            server_prefix, client_prefix, plan = plans[count]
            argv = [*server_prefix, python, "-m", "sockecho", "serve", "--model", model]
            argv += ["--port", "0", "-q", "--workers", str(count)]
            server = ServerProcess(f"{model} --workers {count}", argv, "sockecho")
            with running([server]):
                run_client(server.port, scenario, warmup, client_prefix)
                before = server.cpu_seconds()
                result = run_client(server.port, scenario, duration, client_prefix)
                cpu = server.cpu_seconds() - before
            rts = result["round_trips"]
            rate = rts / result["elapsed_s"] if rts else 0.0
            print(
                f"workers {count}: {rate:,.0f}/s, errors {result['errors']} ({plan})",
                file=sys.stderr,
                flush=True,
            )
            if count not in rows or rate > rows[count]["rate"]:
                rows[count] = {
                    "workers": count,
                    "pinning": plan,
                    "rate": round(rate, 1),
                    "cpu_us_per_rt": round(cpu / rts * 1e6, 3) if rts else None,
                    "errors": result["errors"],
                }
    return {"model": model, "scenario": scenario.name, "rows": [rows[c] for c in counts]}


def workers_markdown(workers: dict[str, Any]) -> list[str]:
    rows = workers["rows"]
    base = rows[0]["rate"] if rows else 0.0
    lines = [
        f"#### Workers (`sockecho serve --model {workers['model']} --workers N`, "
        f"{workers['scenario']}, C client)",
        "",
        "| workers | pinning | round trips/s | vs 1 worker | server CPU µs / round trip | errors |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        scale = f"{row['rate'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {row['workers']} | {row['pinning']} | {row['rate']:,.0f} | {scale} | "
            f"{row['cpu_us_per_rt']} | {row['errors']} |"
        )
    lines.append("")
    return lines


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": round(os.getloadavg()[0], 2),
    }


def ratio(cost: float | None, reference: float | None) -> str:
    return f"{cost / reference:.2f}x" if cost and reference else "-"


def load_line(report: dict[str, Any]) -> str:
    """The machine's load around the run: figures from a loaded machine say so."""
    cpus = report["machine"]["nproc"] or 1
    before, after = report["machine"]["load_before"], report.get("load_after")
    loaded = max(before, after or 0.0) > cpus / 2
    return (
        f"Load average (1 min) {before} before and {after} after the CPU measurements on {cpus} "
        "CPUs (read before the storm, whose own threads load the machine)"
        + (
            ": **a loaded machine** (other jobs ran); absolute figures are inflated and noisy, "
            "compare within a table only."
            if loaded
            else "."
        )
    )


def fastest_model(rows: dict[str, Any]) -> tuple[str, float] | None:
    """The sockecho model with the lowest CPU per round trip, pure Python only (no uvloop)."""
    costs = [
        (name, row["cpu_us_per_rt"])
        for name, row in rows.items()
        if name.startswith("sockecho ") and "uvloop" not in name and row["cpu_us_per_rt"]
    ]
    return min(costs, key=lambda item: item[1]) if costs else None


#: Where docs/ explain, with a profile, why a target of each kind is missed.
EXPLAINED = {
    "floor": "[why](#the-floor-where-the-gap-is-and-what-each-change-bought)",
    "uvloop": "[why](#the-asyncio-model-on-uvloop-where-the-gap-is)",
    "storm": "[why](models.md#connection-storms)",
    "generator": "[why](#load-generator)",
}


def status(met: bool, kind: str) -> str:
    return "met" if met else f"**missed**: {EXPLAINED[kind]}"


def targets(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Issue 12's targets against this run: (target, measured, status)."""
    found = []
    for scenario in FLOOR_SCENARIOS:
        rows = report["scenarios"].get(scenario)
        if not rows or FLOOR not in rows:
            continue
        floor = rows[FLOOR]["cpu_us_per_rt"]
        best = fastest_model(rows)
        if best is None or not floor:
            continue
        name, cost = best
        found.append(
            (
                f"{scenario}: fastest model ≤ {FLOOR_TARGET:.2f}x the floor",
                f"{name[len('sockecho ') :]} {cost} µs vs {floor} µs = {cost / floor:.2f}x",
                status(cost / floor <= FLOOR_TARGET, "floor"),
            )
        )
        uv_model, uv_ref = rows.get("sockecho asyncio+uvloop"), rows.get("uvloop Protocol")
        if uv_model and uv_ref and uv_model["cpu_us_per_rt"] and uv_ref["cpu_us_per_rt"]:
            share = uv_model["cpu_us_per_rt"] / uv_ref["cpu_us_per_rt"]
            found.append(
                (
                    f"{scenario}: `--loop uvloop` ≤ the minimal uvloop server",
                    f"{uv_model['cpu_us_per_rt']} vs {uv_ref['cpu_us_per_rt']} µs = {share:.2f}x",
                    "at the line" if 1.0 < share <= 1.05 else status(share <= 1.0, "uvloop"),
                )
            )
    # The storm's targets hold for the 1000 clients only (a smoke run's 50 prove nothing).
    storm = report.get("storm") or {} if report.get("storm_clients") == STORM_CLIENTS else {}
    for name, row in storm.items():
        if name.startswith("sockecho "):
            slowest = row["first_echo_max_s"]
            within = slowest is not None and slowest <= STORM_FIRST_ECHO and not row["failed"]
            found.append(
                (
                    f"storm: every first echo within {STORM_FIRST_ECHO:g} s "
                    f"({name[len('sockecho ') :]})",
                    f"{slowest} s, {row['failed']} failed",
                    status(within, "storm"),
                )
            )
    ours, reference = storm.get("sockecho threading"), storm.get("ThreadingTCPServer")
    if ours and reference:
        faster = (ours["failed"], ours["all_echoed_s"]) <= (
            reference["failed"],
            reference["all_echoed_s"],
        )
        found.append(
            (
                "storm: `threading` accepts at least as fast as `ThreadingTCPServer`",
                f"all echoed after {ours['all_echoed_s']} s vs {reference['all_echoed_s']} s",
                status(faster, "storm"),
            )
        )
    gen = report.get("generator")
    for scenario, row in (gen or {}).get("scenarios", {}).items():
        for name, share in row["bench_cpu_ratio"].items():
            found.append(
                (
                    f"{scenario}: `sockecho bench {variant_label(name)}` CPU per round trip "
                    f"≤ {GENERATOR_TARGET}x the C client's",
                    f"{row['bench_cpu_us_per_rt'][name]} vs {row['c_client_cpu_us_per_rt']} µs "
                    f"= {share:.2f}x",
                    status(share <= GENERATOR_TARGET, "generator"),
                )
            )
    return found


def storm_markdown(storm: dict[str, Any], clients: int) -> list[str]:
    lines = [
        f"#### Connection storm ({clients} clients at once, "
        "`benchmarks/connect_storm.py`, best of the repetitions)",
        "",
        "| server | slowest first echo | median | all echoed after | failed | every run |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, row in storm.items():
        lines.append(
            f"| {name} | {row['first_echo_max_s']} s | {row['first_echo_median_s']} s | "
            f"{row['all_echoed_s']} s | {row['failed']} | {'; '.join(row['every_run'])} |"
        )
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured {report['machine']['date']} on {report['machine']['nproc']} CPUs "
        f"({report['machine']['cpu']}), Python {report['machine']['python']}, "
        f"kernel {report['machine']['kernel']}.",
        f"Command: `{report['command']}`; best of {report['repetitions']} interleaved "
        f"repetitions of {report['duration']:g} s after a {report['warmup']:g} s warm-up.",
        load_line(report),
        "",
    ]
    for scenario, rows in report["scenarios"].items():
        c_cost = rows.get("C epoll", {}).get("cpu_us_per_rt")
        ref = rows.get("asyncio Protocol", {}).get("cpu_us_per_rt")
        floor = rows.get(FLOOR, {}).get("cpu_us_per_rt")
        lines += [
            f"#### {scenario}",
            "",
            "| server | CPU µs / round trip | vs floor | vs C | vs stock asyncio "
            "| round trips/s | errors | max latency |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in sorted(rows.items(), key=lambda item: item[1]["cpu_us_per_rt"] or 1e9):
            cost = row["cpu_us_per_rt"]
            latency = row.get("max_latency_us")
            lines.append(
                f"| {name} | {cost if cost is not None else '-'} | {ratio(cost, floor)} | "
                f"{ratio(cost, c_cost)} | {ratio(cost, ref)} | "
                f"{row['rate']:,.0f} | {row['errors']} | "
                f"{f'{latency / 1000:.1f} ms' if latency is not None else '-'} |"
            )
        lines.append("")
    if report.get("idle_kib_per_connection"):
        lines += [
            f"#### Idle memory ({IDLE_CONNECTIONS} connections)",
            "",
            "| server | RSS KiB / idle connection |",
            "|---|---:|",
        ]
        for name, kib in report["idle_kib_per_connection"].items():
            lines.append(f"| {name} | {kib} |")
        lines.append("")
    if report.get("workers"):
        lines += workers_markdown(report["workers"])
    if report.get("storm"):
        lines += storm_markdown(report["storm"], report["storm_clients"])
    if report.get("generator"):
        lines += generator_markdown(report["generator"])
    found = targets(report)
    if found:
        lines += ["#### Targets (issue 12) in this run", "", "| target | measured | status |"]
        lines += ["|---|---|---|"]
        lines += [f"| {target} | {measured} | {status} |" for target, measured, status in found]
        lines.append("")
    return "\n".join(lines)


def write_docs(table: str) -> bool:
    """Put ``table`` between the markers of docs/PERFORMANCE.md; False if they are missing."""
    text = DOCS.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return False
    head, _, rest = text.partition(DOCS_BEGIN)
    _, _, tail = rest.partition(DOCS_END)
    DOCS.write_text(f"{head}{DOCS_BEGIN}\n{table}\n{DOCS_END}{tail}")
    return True


def chart(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib  # noqa: PLC0415 (optional)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        import matplotlib.ticker  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return
    scenarios = list(report["scenarios"])
    names = sorted({name for rows in report["scenarios"].values() for name in rows})
    figure, axes = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        values = []
        for scenario in scenarios:
            rows = report["scenarios"][scenario]
            cost = rows.get(name, {}).get("cpu_us_per_rt")
            c_cost = rows.get("C epoll", {}).get("cpu_us_per_rt")
            values.append(cost / c_cost if cost and c_cost else 0.0)
        axes.bar([i + k * width for i in range(len(scenarios))], values, width, label=name)
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(scenarios))])
    axes.set_xticklabels(scenarios)
    axes.axhline(1.0, color="black", linewidth=0.6)
    axes.set_yscale("log", base=2)  # a 20x outlier must not flatten the 1.1x-vs-1.3x story
    axes.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    axes.set_ylabel("server CPU per round trip (C epoll = 1, log scale)")
    axes.set_title("sockecho models vs reference servers (lower is better)")
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


@contextlib.contextmanager
def running(chosen: list[ServerProcess]) -> Iterator[list[ServerProcess]]:
    try:
        for server in chosen:
            server.start()
        yield chosen
    finally:
        for server in chosen:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repetition")
    parser.add_argument("--repetitions", type=int, help="interleaved repetitions (3)")
    parser.add_argument("--duration", type=float, help="seconds per measured run (2)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured warm-up per run (0.5)")
    parser.add_argument(
        "--models",
        default="threading,select,selectors,asyncio,asyncio+uvloop",
        help="comma-separated; MODEL+uvloop runs it with --loop uvloop",
    )
    parser.add_argument(
        "--scenarios", default=",".join(s.name for s in SCENARIOS), help="comma-separated"
    )
    parser.add_argument("--no-idle", action="store_true", help="skip the idle-memory figure")
    parser.add_argument("--no-generator", action="store_true", help="skip the bench check")
    parser.add_argument("--no-storm", action="store_true", help="skip the connection storm")
    parser.add_argument(
        "--storm-clients",
        type=int,
        help=f"clients in the storm ({STORM_CLIENTS}; --quick: 50, a smoke run of the code)",
    )
    parser.add_argument(
        "--no-docs",
        action="store_true",
        help="do not rewrite docs/PERFORMANCE.md (a full run does; --quick and runs limited by "
        "--models or --scenarios never do)",
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="comma-separated worker counts for the workers table ('' skips it; --quick "
        "skips it unless given)",
    )
    parser.add_argument("--workers-model", default="selectors", help="model of the workers table")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    worker_counts = [int(n) for n in args.workers.split(",") if n]
    if args.quick and not any(arg.startswith("--workers") for arg in given):
        worker_counts = []
    repetitions = args.repetitions or (1 if args.quick else 3)
    duration = args.duration or (0.3 if args.quick else 2.0)
    warmup = args.warmup if args.warmup is not None else (0.1 if args.quick else 0.5)
    if shutil.which("gcc") is None:
        print("benchmarks/run: gcc is needed for the C references", file=sys.stderr)
        return 1
    build_references()
    raise_fd_limit()
    scenarios = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    report: dict[str, Any] = {
        "schema": "sockecho-benchmarks/1",
        "command": "benchmarks/run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "repetitions": repetitions,
        "duration": duration,
        "warmup": warmup,
        "scenarios": {},
    }
    started = time.monotonic()
    with running(servers(args.models.split(","))) as chosen:
        for scenario in scenarios:
            best: dict[str, dict[str, Any]] = {}
            for rep in range(repetitions):
                order = chosen[rep % len(chosen) :] + chosen[: rep % len(chosen)]
                for server in order:
                    result = measure(server, scenario, duration, warmup)
                    cost = result["cpu_us_per_rt"]
                    previous = best.get(server.name)
                    if previous is None or (
                        cost is not None
                        and (previous["cpu_us_per_rt"] is None or cost < previous["cpu_us_per_rt"])
                    ):
                        best[server.name] = result
                    print(
                        f"{scenario.name:>10} rep {rep + 1} {server.name:>20}: "
                        f"{cost} µs/rt, {result['rate']:,.0f}/s, errors {result['errors']}",
                        file=sys.stderr,
                        flush=True,
                    )
            report["scenarios"][scenario.name] = best
        if not args.no_idle:
            # Fresh servers: one that served 1000 busy connections keeps that heap.
            report["idle_kib_per_connection"] = {}
            for server in chosen:
                fresh = ServerProcess(server.name, server.argv, server.kind)
                with running([fresh]):
                    report["idle_kib_per_connection"][server.name] = idle_memory(fresh)
        if not args.no_generator:
            c_server = next(server for server in chosen if server.name == "C epoll")
            report["generator"] = generator_check(c_server, duration, repetitions)
    if worker_counts:
        report["workers"] = workers_check(
            worker_counts, args.workers_model, duration, warmup, repetitions
        )
    # Before the storm: its own thousand threads (threading model) drive the load average up.
    report["load_after"] = round(os.getloadavg()[0], 2)
    if not args.no_storm:
        storm_models = [m for m in args.models.split(",") if "+" not in m]
        clients = args.storm_clients or (50 if args.quick else STORM_CLIENTS)
        connect_storm.raise_fd_limit(clients)
        report["storm"] = connect_storm.run(storm_models, clients, repetitions)
        report["storm_clients"] = clients
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "benchmarks.md").write_text(table + "\n")
    chart(report, args.out / "benchmarks.png")
    print(table)
    print(f"written: {args.out}/benchmarks.{{md,json,png}} in {report['elapsed_s']} s")
    full = argv_is_full_run(args, parser)
    if full and not args.no_docs:
        if write_docs(table):
            print(f"rewritten: {DOCS} (the recorded run)")
        else:
            print(f"{DOCS} lacks the markers; not rewritten", file=sys.stderr)
    elif not args.no_docs:
        print(f"{DOCS} not rewritten: --quick, or a run limited by --models/--scenarios/--no-*")
    return 0


def argv_is_full_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> bool:
    """Whether this run measured everything the recorded run in the docs shows."""
    return (
        not args.quick
        and args.models == parser.get_default("models")
        and args.scenarios == parser.get_default("scenarios")
        and not args.no_idle
        and not args.no_generator
        and not args.no_storm
        and args.storm_clients is None
        and args.workers == parser.get_default("workers")
    )


if __name__ == "__main__":
    sys.exit(main())
