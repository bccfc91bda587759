"""A benchmark's result: figures derived from the merged histogram, the table, the JSON.

The JSON document (schema ``sockecho-bench/1``, described in docs/measuring.md)
keeps the whole HDR histogram, encoded in the standard compressed HDR format,
so ``sockecho bench compare`` and ``--plot`` can redraw any percentile later.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table

from sockecho.bench.load import ERROR_KINDS
from sockecho.errors import SockechoError

if TYPE_CHECKING:
    from sockecho.bench.runner import BenchSpec

SCHEMA = "sockecho-bench/1"
#: Share of its wall time a load process may spend on the CPU before it counts as saturated:
#: above it the process, not the server, sets the pace (wrk's warning, and the C client's
#: check in benchmarks/). An event loop that is never idle sits at 0.95-1.0.
SATURATED = 0.9
#: The percentiles every report shows (100 is the maximum).
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 100.0)


def percentile_key(p: float) -> str:
    return "max" if p == 100.0 else "p" + f"{p:g}".replace(".", "")


@dataclass(frozen=True, slots=True)
class ProcessLoad:
    """What one load process cost: CPU seconds (user + system) over its measured window."""

    cpu_seconds: float
    wall_seconds: float

    @property
    def busy(self) -> float:
        """The share of the window it spent on the CPU (1.0: never idle)."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def saturated(self) -> bool:
        return self.busy >= SATURATED


@dataclass(slots=True)
class BenchResult:
    """What a run measured. Latencies are in microseconds."""

    spec: BenchSpec
    elapsed: float  # seconds of the measured window
    round_trips: int
    bytes_echoed: int  # payload bytes that came back verified (one direction)
    lost: int
    errors: dict[str, int]
    histogram: HdrHistogram
    environment: dict[str, Any] = field(default_factory=dict)
    client_cpu: list[ProcessLoad] = field(default_factory=list)  # one per load process

    @property
    def client_cpu_us_per_round_trip(self) -> float:
        """The load generator's own CPU per verified round trip (µs), all processes."""
        cpu = sum(load.cpu_seconds for load in self.client_cpu)
        return cpu / self.round_trips * 1e6 if self.round_trips else 0.0

    @property
    def saturated_processes(self) -> list[int]:
        """Numbers of the load processes that were busy SATURATED of the time or more."""
        return [k for k, load in enumerate(self.client_cpu) if load.saturated]

    #: ``--identify``: per instance name, its connections and measured round trips
    instances: dict[str, dict[str, int]] = field(default_factory=dict)

    def spread(self) -> dict[str, Any]:
        """How the load balancer spread the run: per instance its counts and shares, and the
        max/min ratio of round trips (1.0: perfectly even; inf: an instance got none)."""
        total_connections = sum(i["connections"] for i in self.instances.values())
        total_round_trips = sum(i["round_trips"] for i in self.instances.values())
        rows = {
            name: {
                **counts,
                "connection_share": counts["connections"] / total_connections
                if total_connections
                else 0.0,
                "round_trip_share": counts["round_trips"] / total_round_trips
                if total_round_trips
                else 0.0,
            }
            for name, counts in self.instances.items()
        }
        trips = [i["round_trips"] for i in self.instances.values()]
        ratio = (max(trips) / min(trips) if min(trips) else float("inf")) if trips else 0.0
        return {"instances": rows, "max_min_ratio": ratio}

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.round_trips / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_echoed / self.elapsed / 1e6 if self.elapsed > 0 else 0.0

    @property
    def loss(self) -> float:
        sent = self.round_trips + self.lost
        return self.lost / sent if sent else 0.0

    def latency(self) -> dict[str, float]:
        histogram = self.histogram
        figures: dict[str, float] = {
            percentile_key(p): float(histogram.get_value_at_percentile(p)) for p in PERCENTILES
        }
        figures["max"] = float(histogram.get_max_value())
        figures["min"] = float(histogram.get_min_value())
        figures["mean"] = round(histogram.get_mean_value(), 1)
        figures["stdev"] = round(histogram.get_stddev(), 1)
        if not self.round_trips:
            figures = dict.fromkeys(figures, 0.0)
        return figures

    @property
    def ok(self) -> bool:
        return self.round_trips > 0 and not self.error_count

    def to_json(self) -> dict[str, Any]:
        spec = asdict(self.spec)
        spec["timeout"] = self.spec.effective_timeout
        encoded = self.histogram.encode()
        return {
            "schema": SCHEMA,
            "spec": spec,
            "mode": "open" if self.spec.rate else "closed",
            "elapsed_s": round(self.elapsed, 6),
            "round_trips": self.round_trips,
            "round_trips_per_s": round(self.rate, 3),
            "bytes_echoed": self.bytes_echoed,
            "mb_per_s": round(self.megabytes_per_second, 6),
            "latency_us": self.latency(),
            "instances": self.instances,
            "errors": {kind: self.errors.get(kind, 0) for kind in ERROR_KINDS},
            "error_count": self.error_count,
            "lost": self.lost,
            "loss": round(self.loss, 6),
            "histogram": encoded.decode("ascii") if isinstance(encoded, bytes) else encoded,
            "environment": self.environment,
            "client": {
                "cpu_s": round(sum(load.cpu_seconds for load in self.client_cpu), 6),
                "cpu_us_per_rt": round(self.client_cpu_us_per_round_trip, 3),
                "processes": [
                    {
                        "cpu_s": round(load.cpu_seconds, 6),
                        "wall_s": round(load.wall_seconds, 6),
                        "busy": round(load.busy, 3),
                    }
                    for load in self.client_cpu
                ],
                "saturated": len(self.saturated_processes),
            },
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> BenchResult:
        from sockecho.bench.runner import BenchSpec  # noqa: PLC0415 (runner imports us)

        if document.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} document (schema: {document.get('schema')!r})")
        known = {f.name for f in fields(BenchSpec)}
        spec = BenchSpec(**{k: v for k, v in document["spec"].items() if k in known})
        return cls(
            spec=spec,
            elapsed=float(document["elapsed_s"]),
            round_trips=int(document["round_trips"]),
            bytes_echoed=int(document["bytes_echoed"]),
            lost=int(document.get("lost", 0)),
            errors={k: int(v) for k, v in document["errors"].items() if v},
            histogram=HdrHistogram.decode(document["histogram"]),
            environment=dict(document.get("environment", {})),
            client_cpu=[
                ProcessLoad(float(p["cpu_s"]), float(p["wall_s"]))
                for p in document.get("client", {}).get("processes", [])
            ],
            instances={
                str(name): {k: int(v) for k, v in counts.items()}
                for name, counts in document.get("instances", {}).items()
            },
        )


def load_result(path: str) -> BenchResult:
    try:
        document = json.loads(Path(path).read_text())
        return BenchResult.from_json(document)
    except OSError as exc:
        raise SockechoError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SockechoError(
            f"{path} is not a sockecho bench result: {exc}", "write one with --json FILE"
        ) from None


def save_result(result: BenchResult, path: str) -> None:
    text = json.dumps(result.to_json(), indent=2) + "\n"
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise SockechoError(f"cannot write {path}: {exc.strerror or exc}") from None


def format_us(value: float) -> str:
    """A latency for people: 87 µs, 1.23 ms, 2.5 s."""
    if value < 1000:
        return f"{value:.0f} µs"
    if value < 1_000_000:
        return f"{value / 1000:.3g} ms" if value < 100_000 else f"{value / 1000:.0f} ms"
    return f"{value / 1e6:.3g} s"


def print_result(result: BenchResult, console: Console) -> None:
    """The final table: throughput, latency percentiles, errors by kind."""
    console.print(f"sockecho bench {result.spec.describe()}", highlight=False)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    table.add_row(
        "round trips", f"{result.round_trips:,}", f"{result.rate:,.1f}/s in {result.elapsed:.2f} s"
    )
    table.add_row("throughput", f"{result.megabytes_per_second:,.2f}", "MB/s echoed (verified)")
    latency = result.latency()
    for p in PERCENTILES:
        key = percentile_key(p)
        table.add_row(f"latency {key}", format_us(latency[key]), "")
    table.add_row("latency mean", format_us(latency["mean"]), f"± {format_us(latency['stdev'])}")
    if result.spec.udp:
        table.add_row("lost", f"{result.lost:,}", f"{result.loss:.2%} of datagrams")
    errors = ", ".join(f"{kind} {count:,}" for kind, count in sorted(result.errors.items()))
    table.add_row("errors", f"{result.error_count:,}", errors)
    if result.client_cpu:
        busy = ", ".join(f"{load.busy:.0%}" for load in result.client_cpu)
        table.add_row(
            "client CPU",
            f"{result.client_cpu_us_per_round_trip:.2f}",
            f"µs per round trip (busy: {busy})",
        )
    console.print(table)
    if saturated := result.saturated_processes:
        which = ", ".join(str(k + 1) for k in saturated)
        console.print(
            f"warning: load process {which} of {len(result.client_cpu)} was busy "
            f"{SATURATED:.0%} of the time or more: these figures may measure the client, not "
            "the server (add --processes, or check against benchmarks/reference/echo_client.c)",
            highlight=False,
        )
    if result.instances:
        print_spread(result, console)


def print_spread(result: BenchResult, console: Console) -> None:
    """``--identify``: connections and round trips per instance, and how even they are."""
    spread = result.spread()
    table = Table(box=None, pad_edge=False)
    for heading in ("instance", "connections", "share", "round trips", "share"):
        table.add_column(heading, justify="left" if heading == "instance" else "right")
    for name, row in spread["instances"].items():
        table.add_row(
            name,
            f"{row['connections']:,}",
            f"{row['connection_share']:.1%}",
            f"{row['round_trips']:,}",
            f"{row['round_trip_share']:.1%}",
        )
    console.print(table)
    console.print(f"spread: max/min round trips {spread['max_min_ratio']:.2f}", highlight=False)


def print_comparison(results: list[tuple[str, BenchResult]], console: Console) -> None:
    """Runs side by side, one column each; ratios to the first run."""
    table = Table(title="sockecho bench compare")
    table.add_column("")
    for name, _ in results:
        table.add_column(name, justify="right")
    base = results[0][1]

    def ratio(value: float, reference: float) -> str:
        return f" ({value / reference:.2f}x)" if reference else ""

    table.add_row(
        "round trips/s",
        *(f"{r.rate:,.0f}" + ("" if r is base else ratio(r.rate, base.rate)) for _, r in results),
    )
    table.add_row("MB/s", *(f"{r.megabytes_per_second:,.2f}" for _, r in results))
    # Once per run: latency() walks the whole histogram in Python (its mean and stdev), about
    # 0.2 s of CPU for a run with a 250 ms outlier. Once per cell (16 times for two runs), a
    # compare in the tests ran past pytest's 60 s timeout on a busy machine.
    latencies = [r.latency() for _, r in results]
    for p in PERCENTILES:
        key = percentile_key(p)
        reference = latencies[0][key]
        table.add_row(
            f"latency {key}",
            *(
                format_us(figures[key]) + ("" if index == 0 else ratio(figures[key], reference))
                for index, figures in enumerate(latencies)
            ),
        )
    table.add_row("errors", *(f"{r.error_count:,}" for _, r in results))
    table.add_row("setup", *(r.spec.describe() for _, r in results))
    console.print(table)
