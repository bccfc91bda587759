"""Every case against every correct model: the checker must find nothing wrong with them.

Each model is checked once per module (the whole TCP list, --strict included, then the
UDP list); the tests below read that one report."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import sockecho
from sockecho import Server, ServerConfig
from sockecho.check import CASES, CheckReport, Level, Verdict
from tests.conftest import ALL_MODELS

#: What a correct model may get: nothing FAILED, and a missing SHOULD is NON-STRICT only
#: for the design that serves one client at a time.
CONCURRENCY_CASES = {"tcp.concurrency.second-client", "tcp.concurrency.stalled-reader"}

pytestmark = pytest.mark.timeout(120)


#: Models checked at the same time: most of a run is waiting (quiet periods, the idle
#: case), so two at once halve the module's time; more would crowd a 2-core CI machine.
PARALLEL_RUNS = 2


def check_model(model: str) -> tuple[CheckReport, CheckReport]:
    config = ServerConfig(model=model, port=0, drain_timeout=1.0, udp=True)
    with Server(config) as server:
        host, port = server.address
        return sockecho.check(host, port, strict=True), sockecho.check(host, port, udp=True)


@pytest.fixture(scope="module")
def all_reports() -> dict[str, tuple[CheckReport, CheckReport]]:
    with ThreadPoolExecutor(PARALLEL_RUNS, thread_name_prefix="check-model") as pool:
        return dict(zip(ALL_MODELS, pool.map(check_model, ALL_MODELS), strict=True))


@pytest.fixture(params=ALL_MODELS)
def reports(
    request: pytest.FixtureRequest, all_reports: dict[str, tuple[CheckReport, CheckReport]]
) -> tuple[str, CheckReport, CheckReport]:
    model = str(request.param)
    return (model, *all_reports[model])


def describe(report: CheckReport) -> list[str]:
    return [f"{r.id}: {r.verdict.value}: {r.expected} / {r.actual}" for r in report.results]


def test_a_correct_model_fails_no_case(reports: tuple[str, CheckReport, CheckReport]) -> None:
    _model, tcp, udp = reports
    assert not tcp.failed, describe(tcp)
    assert not udp.failed, describe(udp)


def test_a_correct_model_runs_every_tcp_and_udp_case(
    reports: tuple[str, CheckReport, CheckReport],
) -> None:
    _model, tcp, udp = reports
    ran = [r.id for r in (*tcp.results, *udp.results)]
    assert sorted(ran) == sorted(case for case in CASES if not case.startswith("tls."))


def test_only_the_iterative_model_is_non_strict_and_only_on_concurrency(
    reports: tuple[str, CheckReport, CheckReport],
) -> None:
    model, tcp, udp = reports
    non_strict = {r.id for r in (*tcp.results, *udp.results) if r.verdict is Verdict.NON_STRICT}
    assert non_strict == (CONCURRENCY_CASES if model == "iterative" else set()), describe(tcp)


def test_a_correct_model_passes_every_must(
    reports: tuple[str, CheckReport, CheckReport],
) -> None:
    _model, tcp, udp = reports
    for result in (*tcp.results, *udp.results):
        # 8 MiB may all fit in the kernel's buffers on a roomy machine: "unbounded" then.
        if result.level is Level.MUST and result.id != "tcp.flow.back-pressure":
            assert result.verdict is Verdict.PASSED, describe(tcp) + describe(udp)
