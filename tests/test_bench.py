"""sockecho bench: verified echoes against every model, errors by kind, open vs closed loop."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from rich.console import Console

from sockecho import Server
from sockecho.bench import BenchSpec, run_bench
from sockecho.bench.load import ERROR_KINDS, LoadSpec, Tally, new_histogram, run_load
from sockecho.bench.report import SCHEMA, BenchResult, ProcessLoad, print_result
from sockecho.bench.runner import engine_for
from sockecho.cli import main
from sockecho.errors import ConnectError
from tests.conftest import REPO, WAIT, require_tool
from tests.faulty_peers import (
    TcpPeer,
    UdpPeer,
    closing_handler,
    corrupting_handler,
    echo_handler,
    resetting_handler,
    stalling_handler,
    swallowing_handler,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def short_run(port: int, **settings: object) -> BenchSpec:
    defaults: dict[str, object] = {
        "port": port,
        "connections": 4,
        "size": 1000,
        "duration": 0.4,
        "warmup": 0.1,
    }
    defaults.update(settings)
    return BenchSpec(**defaults)  # type: ignore[arg-type]


def assert_consistent(result: BenchResult, size: int) -> None:
    assert result.histogram.get_total_count() == result.round_trips
    assert result.bytes_echoed == result.round_trips * size
    latency = result.latency()
    assert 0 < latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]


@pytest.fixture(params=["asyncio", "epoll"])
def engine(request: pytest.FixtureRequest) -> str:
    """Each load engine: the closed-loop tests hold for both."""
    return str(request.param)


def test_closed_loop_verifies_every_echo_from_every_model(
    server: Server, model: str, engine: str
) -> None:
    connections = 1 if model == "iterative" else 4  # iterative serves one client at a time
    result = run_bench(short_run(server.address[1], connections=connections, engine=engine))
    assert result.environment["engine"] == engine
    assert result.errors == {}
    assert result.round_trips > 50
    assert_consistent(result, 1000)
    # The server echoed at least what the client verified (it also served the warm-up).
    assert server.snapshot().bytes_echoed >= result.bytes_echoed


def test_requests_bounds_the_measured_round_trips_exactly(
    asyncio_server: Server, engine: str
) -> None:
    result = run_bench(
        short_run(
            asyncio_server.address[1], requests=301, duration=None, connections=3, engine=engine
        )
    )
    assert result.round_trips == 301
    assert result.errors == {}


def test_processes_merge_histograms_exactly(asyncio_server: Server, engine: str) -> None:
    spec = short_run(asyncio_server.address[1], processes=2, requests=400, duration=None)
    result = run_bench(replace(spec, warmup=0.0, engine=engine))
    assert result.environment["engine"] == engine
    assert result.round_trips == 400
    assert result.histogram.get_total_count() == 400
    assert result.errors == {}


def test_uvloop_load_generator_verifies_echoes_too(asyncio_server: Server) -> None:
    result = run_bench(
        short_run(asyncio_server.address[1], loop="uvloop", requests=200, duration=None)
    )
    assert result.round_trips == 200
    assert result.errors == {}
    assert result.environment["loop"] == "uvloop"


def test_udp_bench_against_the_sockecho_udp_echo(model: str) -> None:
    with Server(model=model, port=0, udp=True, udp_rate=0) as srv:  # no reflection limit
        spec = short_run(srv.address[1], udp=True, size=512, requests=300, duration=None)
        result = run_bench(spec)
    assert (result.round_trips, result.lost, result.errors) == (300, 0, {})


def test_udp_bench_shows_the_servers_reflection_limit_as_loss() -> None:
    # A timeout long enough that every reply the server sends is counted, however late a
    # busy machine makes it: then the client's count is the server's.
    with Server(model="asyncio", port=0, udp=True, udp_rate=100, udp_burst=10) as srv:
        spec = short_run(
            srv.address[1], udp=True, size=64, rate=1000, duration=0.5, warmup=0, timeout=2.0
        )
        result = run_bench(spec)
    assert result.errors == {}
    assert result.round_trips + result.lost == pytest.approx(500, abs=5)
    assert result.round_trips == srv.snapshot().datagrams_echoed
    # 100 replies/s after a burst of 10: about 60 of 500 come back, the rest are lost. The
    # burst always does; a server the machine held up replies less (its bucket holds 10).
    assert 10 <= result.round_trips <= 120
    assert result.loss > 0.7


def test_corrupted_echo_is_counted_as_mismatch_never_accepted(engine: str) -> None:
    with TcpPeer(corrupting_handler(every=10)) as peer:
        result = run_bench(short_run(peer.address[1], connections=2, engine=engine))
    assert result.errors.get("mismatch", 0) > 0
    # A corrupted round trip is never a success: at most 9 of every 10 reads were intact.
    assert result.round_trips <= peer.recv_calls * 9 // 10 + 2
    assert not result.ok


def test_reset_connections_are_counted_and_reopened(engine: str) -> None:
    with TcpPeer(resetting_handler(after=20)) as peer:
        result = run_bench(short_run(peer.address[1], connections=2, engine=engine))
    assert result.errors.get("reset", 0) >= 2
    assert result.round_trips >= 40  # reconnected after each reset and went on
    assert set(result.errors) <= set(ERROR_KINDS)


def test_refused_fails_at_once_with_one_line(
    engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with TcpPeer(echo_handler) as peer:
        port = peer.address[1]
    with pytest.raises(ConnectError, match="refused"):
        run_bench(short_run(port, engine=engine))
    assert main(["bench", "--port", str(port), "-d", "0.2", "-q", "--engine", engine]) == 1
    assert capsys.readouterr().err.startswith("sockecho: error: connection refused by 127.0.0.1")


def test_open_loop_shows_a_stall_that_closed_loop_hides() -> None:
    stall = 0.2
    with TcpPeer(stalling_handler(at_recv=300, stall=stall)) as peer:
        closed = run_bench(short_run(peer.address[1], connections=1, duration=1.5, warmup=0.0))
    with TcpPeer(stalling_handler(at_recv=300, stall=stall)) as peer:
        opened = run_bench(
            short_run(peer.address[1], connections=1, duration=1.5, warmup=0.0, rate=1000)
        )
    for result in (closed, opened):
        assert result.errors == {}
        assert result.latency()["max"] >= stall * 0.9e6  # both saw the stalled request
    # Closed loop: one slow request among thousands; the stall vanishes below p99.
    assert closed.latency()["p99"] < 100_000
    # Open loop: every request scheduled during the stall waited, up to 200 ms: ~200 of 1500
    # were late, so the 15th latest (p99) waited about 185 ms.
    assert opened.latency()["p99"] >= 150_000
    assert 1400 <= opened.round_trips <= 1510


def test_open_loop_counts_a_stall_of_the_load_generator_itself() -> None:
    """Coordinated omission proper: while the generator's loop is blocked (a GC pause, a
    starved CPU) nothing is sent; the requests due meanwhile go out late, and their latency
    must count from when they were due, not from when they finally left."""
    stall = 0.2

    async def load(port: int) -> Tally:
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, time.sleep, stall)  # blocks the whole load loop once
        spec = LoadSpec("127.0.0.1", port, 1, 64, 1.5, None, 0.0, 1000.0, 5.0)
        return await run_load(spec)

    with TcpPeer(echo_handler) as peer:
        tally = asyncio.run(load(peer.address[1]))
    assert not tally.errors
    assert tally.histogram.get_value_at_percentile(99) >= 150_000
    assert tally.histogram.get_max_value() >= stall * 0.9e6


def test_udp_measures_loss_without_counting_it_as_errors() -> None:
    def every_fifth(payload: bytes) -> bool:
        return struct.unpack_from("!QQ", payload)[1] % 5 == 0

    with UdpPeer(drop=every_fifth) as peer:
        result = run_bench(
            short_run(peer.address[1], udp=True, size=64, requests=200, duration=None, timeout=0.1)
        )
    assert result.errors == {}
    assert result.round_trips + result.lost == 200
    assert 0.15 <= result.loss <= 0.25
    assert_consistent(result, 64)


def test_tls_bench_verifies_the_server_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    with TcpPeer(echo_handler, tls=server_context) as peer:
        trusted = run_bench(short_run(peer.address[1], tls=True, cafile=str(cafile)))
        untrusted = run_bench(short_run(peer.address[1], tls=True, duration=0.2))
    assert trusted.errors == {}
    assert trusted.round_trips > 20
    assert untrusted.round_trips == 0
    assert untrusted.errors.get("tls", 0) > 0


@pytest.fixture
def asyncio_server() -> Iterator[Server]:
    with Server(model="asyncio", port=0) as srv:
        yield srv


def test_tls_bench_against_every_sockecho_tls_model(model: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    connections = 1 if model == "iterative" else 3
    tls = {"tls_cert": str(cert_file), "tls_key": str(key_file)}
    with Server(model=model, port=0, **tls) as srv:
        spec = short_run(srv.address[1], tls=True, cafile=str(ca_file), requests=150, duration=None)
        result = run_bench(replace(spec, connections=connections))
    assert (result.round_trips, result.errors) == (150, {})


def test_json_report_follows_the_documented_schema(
    asyncio_server: Server, engine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.json"
    port = str(asyncio_server.address[1])
    argv = ["bench", "--port", port, "-c", "2", "-s", "512", "-n", "100", "--warmup", "0"]
    argv += ["--engine", engine]
    assert main([*argv, "--json", str(path), "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # --quiet (and no terminal): no progress at all
    assert "round trips" in out
    assert "latency p999" in out
    document = json.loads(path.read_text())
    assert document["schema"] == SCHEMA
    assert document["mode"] == "closed"
    assert document["round_trips"] == 100
    assert document["bytes_echoed"] == 100 * 512
    assert document["spec"]["connections"] == 2
    assert document["spec"]["size"] == 512
    assert set(document["errors"]) == set(ERROR_KINDS)
    assert document["error_count"] == 0
    latency = document["latency_us"]
    assert set(latency) == {"p50", "p90", "p99", "p999", "max", "min", "mean", "stdev"}
    assert latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p999"] <= latency["max"]
    assert document["round_trips_per_s"] == pytest.approx(100 / document["elapsed_s"], rel=1e-3)
    assert document["mb_per_s"] == pytest.approx(51_200 / document["elapsed_s"] / 1e6, rel=1e-3)
    assert {"python", "cpus", "sockecho", "loop"} <= set(document["environment"])
    assert document["environment"]["engine"] == engine
    assert document["spec"]["engine"] == engine
    # The histogram round-trips: a reloaded result gives the same percentiles.
    assert BenchResult.from_json(document).latency() == latency
    client = document["client"]
    assert client["cpu_s"] > 0
    assert client["cpu_us_per_rt"] == pytest.approx(client["cpu_s"] / 100 * 1e6, rel=1e-2)
    assert [set(p) for p in client["processes"]] == [{"cpu_s", "wall_s", "busy"}]
    assert 0 < client["processes"][0]["busy"] <= 1.05  # one thread: at most its wall time
    assert "client CPU" in out


def test_bench_reports_its_own_cpu_per_round_trip_for_each_process(
    asyncio_server: Server, engine: str
) -> None:
    result = run_bench(
        short_run(asyncio_server.address[1], processes=2, duration=0.5, engine=engine)
    )
    assert len(result.client_cpu) == 2
    assert all(load.cpu_seconds > 0 for load in result.client_cpu)
    assert all(load.wall_seconds >= 0.5 for load in result.client_cpu)
    cpu = sum(load.cpu_seconds for load in result.client_cpu)
    assert result.client_cpu_us_per_round_trip == pytest.approx(cpu / result.round_trips * 1e6)


def test_a_saturated_load_process_is_reported_with_a_warning() -> None:
    result = run_bench_result_stub()
    result.client_cpu = [ProcessLoad(0.4, 1.0), ProcessLoad(0.97, 1.0)]
    console = Console(record=True, width=200)
    print_result(result, console)
    text = console.export_text()
    assert "busy: 40%, 97%" in text
    assert "warning: load process 2 of 2 was busy 90% of the time or more" in text
    result.client_cpu = [ProcessLoad(0.4, 1.0)]
    console = Console(record=True, width=200)
    print_result(result, console)
    assert "warning" not in console.export_text()


def run_bench_result_stub() -> BenchResult:
    histogram = new_histogram()
    histogram.record_value(100, 10)
    return BenchResult(
        spec=BenchSpec(),
        elapsed=1.0,
        round_trips=10,
        bytes_echoed=10_240,
        lost=0,
        errors={},
        histogram=histogram,
    )


def test_processes_auto_is_one_per_usable_cpu_at_most_one_per_connection(
    asyncio_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    port = str(asyncio_server.address[1])
    argv = ["bench", "--port", port, "-n", "40", "--warmup", "0", "-p", "auto", "-q"]
    assert main([*argv, "-c", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(", 1 process")
    cpus = len(os.sched_getaffinity(0))
    assert main([*argv, "-c", "64"]) == 0
    expected = f", {cpus} processes" if cpus > 1 else ", 1 process"
    assert capsys.readouterr().out.splitlines()[0].endswith(expected)


def test_compare_puts_runs_side_by_side_and_plots(
    asyncio_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = str(asyncio_server.address[1])
    runs = []
    for connections in ("1", "3"):
        path = tmp_path / f"c{connections}.json"
        argv = ["bench", "--port", port, "-c", connections, "-n", "60", "--warmup", "0", "-q"]
        assert main([*argv, "--json", str(path), "--plot", str(tmp_path / "one.png")]) == 0
        runs.append(str(path))
    capsys.readouterr()
    chart = tmp_path / "compare.png"
    assert main(["bench", "compare", *runs, "--plot", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "c1" in out
    assert "c3" in out
    assert "round trips/s" in out
    assert chart.read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "one.png").read_bytes().startswith(PNG_MAGIC)


def test_compare_rejects_a_file_that_is_not_a_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"schema": "something-else"}')
    assert main(["bench", "compare", str(bogus)]) == 1
    assert "is not a sockecho bench result" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--udp", "--tls"], "do not go together"),
        (["--udp", "-s", "8"], "--size must be 16"),
        (["-c", "1", "-p", "2"], "cannot exceed --connections"),
        (["-d", "1", "-n", "5"], "not allowed with argument"),
        (["--rate", "0"], "must be more than 0"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def run_benchmarks(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """benchmarks/run with this interpreter; it must succeed."""
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr
    return done


def test_benchmarks_run_quick_smoke(tmp_path: Path) -> None:
    require_tool("gcc")
    out = tmp_path / "results"
    argv = [str(REPO / "benchmarks" / "run"), "--quick", "--duration", "0.1", "--warmup", "0.05"]
    argv += ["--models", "asyncio", "--scenarios", "1x64B", "--no-idle", "--no-generator"]
    done = run_benchmarks([*argv, "--out", str(out)], timeout=WAIT * 2)
    report = json.loads((out / "benchmarks.json").read_text())
    rows = report["scenarios"]["1x64B"]
    assert {"sockecho asyncio", "C epoll", "asyncio Protocol", "ThreadingTCPServer"} <= set(rows)
    assert "bare epoll loop (floor)" in rows
    for row in rows.values():
        assert row["errors"] == 0
        assert row["round_trips"] > 0
        # /proc counts CPU time in clock ticks (10 ms): in a 0.1 s run on a loaded machine a
        # fast server (the C one) may be charged none at all, so 0 is a correct measurement.
        assert row["server_cpu_s"] >= 0
        cost = row["server_cpu_s"] / row["round_trips"] * 1e6
        assert row["cpu_us_per_rt"] == pytest.approx(cost, abs=1e-3)
    table = (out / "benchmarks.md").read_text()
    assert "| sockecho asyncio |" in table
    assert "vs floor" in table
    # The storm, small in a smoke run: every client served, ThreadingTCPServer beside the model.
    assert report["storm_clients"] == 50
    assert set(report["storm"]) == {"sockecho asyncio", "ThreadingTCPServer"}
    assert all(row["failed"] == 0 for row in report["storm"].values()), report["storm"]
    assert "#### Connection storm (50 clients at once" in table
    assert "not rewritten" in done.stdout  # a smoke run never overwrites the recorded run
    assert (out / "benchmarks.png").read_bytes().startswith(PNG_MAGIC)


def test_live_progress_only_on_a_terminal(asyncio_server: Server) -> None:
    port = str(asyncio_server.address[1])
    argv = [sys.executable, "-m", "sockecho", "bench", "--port", port, "-d", "1", "--warmup", "0"]
    controller, terminal = pty.openpty()
    try:
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=terminal, env={**os.environ, "COLUMNS": "100"}
        ) as proc:
            os.close(terminal)
            shown = bytearray()
            while True:  # read until the child closes its end of the terminal
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            out, _ = proc.communicate(timeout=WAIT)
    finally:
        os.close(controller)
    assert proc.returncode == 0
    assert b"round trips" in shown  # the live line, on the terminal (stderr)
    assert b"errors" in shown
    assert b"latency p99" in out  # the table, on stdout
    piped = subprocess.run(argv, capture_output=True, timeout=WAIT, check=False)
    assert piped.returncode == 0
    assert piped.stderr == b""  # no terminal: no progress at all


def test_open_loop_at_a_rate_it_cannot_reach_still_ends_on_time(server: Server) -> None:
    # 10 million requests/s is far beyond one process: the generator falls behind, keeps
    # measuring from the intended times, and stops when the run's time is over.
    started = time.monotonic()
    result = run_bench(short_run(server.address[1], rate=1e7, duration=0.3, warmup=0.0))
    assert time.monotonic() - started < 10  # it used to send the whole backlog first
    assert result.round_trips > 0
    assert_consistent(result, 1000)


def test_bench_uses_the_first_address_a_server_answers_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A name giving ::1 first (nothing listens there) and then 127.0.0.1 (the server).
    with Server(model="selectors", port=0) as srv:
        port = srv.address[1]
        real = socket.getaddrinfo

        def two_addresses(host: object, *args: Any, **kwargs: Any) -> Any:
            if host == "two.test":
                return real("::1", *args, **kwargs) + real("127.0.0.1", *args, **kwargs)
            return real(host, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
        result = run_bench(short_run(port, host="two.test", connections=1, duration=0.2))
    assert result.round_trips > 0


def test_closed_connections_are_counted_and_reopened(engine: str) -> None:
    with TcpPeer(closing_handler(after=20)) as peer:
        result = run_bench(short_run(peer.address[1], connections=2, engine=engine))
    assert result.errors.get("closed", 0) >= 2
    assert result.round_trips >= 40  # reconnected after each close and went on
    assert set(result.errors) <= {"closed"}


def test_a_round_trip_slower_than_the_timeout_fails_as_timeout(engine: str) -> None:
    with TcpPeer(swallowing_handler) as peer:
        spec = short_run(peer.address[1], connections=2, duration=0.6, warmup=0.0, timeout=0.2)
        result = run_bench(replace(spec, engine=engine))
    assert result.round_trips == 0
    assert set(result.errors) == {"timeout"}
    assert result.errors["timeout"] >= 2  # each connection's first request, at least
    assert not result.ok


def test_the_warm_up_is_sent_but_never_measured(asyncio_server: Server, engine: str) -> None:
    spec = short_run(asyncio_server.address[1], connections=2, requests=100, duration=None)
    result = run_bench(replace(spec, warmup=0.3, engine=engine))
    assert result.round_trips == 100
    assert result.histogram.get_total_count() == 100
    # The server echoed the warm-up's requests too: more than the 100 measured ones.
    assert asyncio_server.stats.wait_for(lambda s: s.bytes_echoed > 100 * 1000, WAIT)


def test_duration_bounds_the_measured_window(asyncio_server: Server, engine: str) -> None:
    started = time.monotonic()
    result = run_bench(
        short_run(asyncio_server.address[1], duration=0.5, warmup=0.2, engine=engine)
    )
    took = time.monotonic() - started
    assert 0.7 <= took < 0.7 + WAIT  # the warm-up, then the window; then it stops
    # The window is the duration, the warm-up left out: it ends with the last echo, which a
    # busy machine may bring in late, but within the run, and starts 0.2 s after the run did.
    assert 0.5 * 0.999 <= result.elapsed <= took - 0.2
    assert [load.wall_seconds >= 0.5 for load in result.client_cpu] == [True]
    assert result.round_trips > 0
    assert result.errors == {}


def test_the_epoll_engine_sends_requests_larger_than_the_socket_buffers(
    asyncio_server: Server,
) -> None:
    size = 4_000_000  # send() takes part of it; the rest waits for EPOLLOUT
    spec = short_run(asyncio_server.address[1], connections=1, size=size, requests=4)
    result = run_bench(replace(spec, duration=None, warmup=0.0, engine="epoll"))
    assert (result.round_trips, result.errors) == (4, {})
    assert result.bytes_echoed == 4 * size


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_epoll_engine_sends_the_proxy_header_first(version: str) -> None:
    # The server requires the header: a connection without it is closed, an error here.
    with Server(model="selectors", port=0, proxy_protocol=version) as srv:
        spec = short_run(srv.address[1], connections=3, requests=90, duration=None, proxy=version)
        result = run_bench(replace(spec, engine="epoll"))
    assert result.environment["engine"] == "epoll"
    assert (result.round_trips, result.errors) == (90, {})


def test_auto_runs_plain_tcp_closed_loops_on_epoll_and_the_rest_on_asyncio() -> None:
    assert engine_for(BenchSpec()) == "epoll"
    assert engine_for(BenchSpec(proxy="v2", processes=2)) == "epoll"
    for settings in (
        {"tls": True},
        {"udp": True},
        {"rate": 100.0},
        {"identify": True},
        {"loop": "uvloop"},
    ):
        assert engine_for(BenchSpec(**settings)) == "asyncio"  # type: ignore[arg-type]
        assert engine_for(BenchSpec(engine="asyncio")) == "asyncio"
        with pytest.raises(ValueError, match="the epoll engine does not run --"):
            engine_for(BenchSpec(engine="epoll", **settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("option", [["--tls"], ["--udp"], ["--rate", "10"], ["--identify"]])
def test_engine_epoll_with_what_only_asyncio_runs_is_a_usage_error(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--engine", "epoll", *option]) == 2
    assert "--engine epoll runs plain TCP closed loops: not --" in capsys.readouterr().err


def test_benchmarks_run_checks_each_bench_engine_against_the_c_client(tmp_path: Path) -> None:
    require_tool("gcc")
    out = tmp_path / "results"
    argv = [str(REPO / "benchmarks" / "run"), "--quick", "--duration", "0.2", "--warmup", "0.05"]
    argv += ["--models", "asyncio", "--scenarios", "1x64B", "--no-idle", "--out", str(out)]
    run_benchmarks(argv, timeout=WAIT * 6)
    generator = json.loads((out / "benchmarks.json").read_text())["generator"]
    assert set(generator["scenarios"]) == {"50x1KiB", "1x64B"}
    assert generator["sockecho_bench_errors"] == 0
    for row in generator["scenarios"].values():
        assert row["c_client_cpu_us_per_rt"] > 0
        assert {"epoll", "asyncio"} <= set(row["bench_cpu_us_per_rt"])
        assert all(rate > 0 for rate in row["bench_rate"].values())
    table = (out / "benchmarks.md").read_text()
    assert "| `sockecho bench --engine epoll` |" in table
    assert "1x64B: `sockecho bench --engine epoll` CPU per round trip ≤ 1.5x" in table
