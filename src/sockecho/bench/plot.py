"""Latency distribution charts (matplotlib, the optional ``plot`` extra).

The chart is the HDR "percentile spectrum": latency against percentile on a
log scale of 1/(1-p), so the tail (99%, 99.9%, 99.99%) gets as much room as the
median. Several runs on one chart compare designs at every percentile at once.
"""

from __future__ import annotations

import math

from sockecho.bench.report import BenchResult
from sockecho.errors import SockechoError

#: Percentiles sampled for the curve (up to 99.999%: beyond it few runs have samples).
CURVE_POINTS = 200


def plot_results(results: list[tuple[str, BenchResult]], path: str) -> None:
    """Draw every result's latency by percentile into the PNG ``path``."""
    try:
        import matplotlib  # noqa: PLC0415 (optional extra)

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise SockechoError("--plot needs matplotlib", "pip install 'sockecho[plot]'") from None
    figure, axes = plt.subplots(figsize=(8, 4.5))
    try:
        for name, result in results:
            if not result.round_trips:
                continue
            xs, ys = [], []
            for k in range(CURVE_POINTS + 1):
                percentile = 100.0 * (1.0 - 10.0 ** (-5.0 * k / CURVE_POINTS))
                xs.append(1.0 / (1.0 - percentile / 100.0))
                ys.append(result.histogram.get_value_at_percentile(percentile) / 1000.0)
            axes.plot(xs, ys, label=f"{name}: {result.rate:,.0f}/s")
        axes.set_xscale("log")
        ticks = [1.0, 2.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0]
        axes.set_xticks(ticks)
        axes.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
        axes.set_xlim(1.0, 100_000.0)
        axes.set_xlabel("percentile")
        axes.set_ylabel("latency (ms)")
        axes.set_title("sockecho bench: latency by percentile")
        axes.grid(True, which="major", alpha=0.3)
        if any(math.isfinite(r.rate) for _, r in results):
            axes.legend(loc="upper left", fontsize="small")
        figure.tight_layout()
        try:
            figure.savefig(path, dpi=100)
        except OSError as exc:
            raise SockechoError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
