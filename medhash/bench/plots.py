"""PNG plots of a bench: latency histograms (one series per concurrency) and the precision-recall curve.

matplotlib's object API on the Agg canvas (no pyplot: no global figure state, no display needed);
each PNG is rendered to a temp file beside its target and renamed (medhash.atomic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medhash.atomic import atomic_path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def _plain_log_ticks(axis) -> None:
    """Log axis ticks as plain numbers (3, 10, 30), no 3x10^0 labels crowding each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _label_radii(axes, points: list[tuple[float, float, int]], most: int = 8) -> None:
    """Name the radius at up to `most` distinct points (radii that add nothing share a point: label it once)."""
    distinct, seen = [], set()
    for x, y, radius in points:
        key = (round(x, 3), round(y, 3))
        if key not in seen:
            seen.add(key)
            distinct.append((x, y, radius))
    for x, y, radius in distinct[:: max(1, -(-len(distinct) // most))]:
        axes.annotate(f"r={radius}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)


def latency_histogram(panels: dict[str, dict[int, Sequence[float]]], path: str | Path) -> Path:
    """panels: title -> {concurrency: latencies in ms}; one subplot per panel, log-spaced bins shared by its series."""
    figure = _figure(6.0 * max(len(panels), 1), 4.0)
    for column, (title, series) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(1, max(len(panels), 1), column)
        values = [np.asarray(v, dtype=float) for v in series.values() if len(v)]
        if values:
            low = max(min(v.min() for v in values), 1e-3)
            high = max(max(v.max() for v in values), low * 1.01)
            bins = np.geomspace(low, high, 40)
            for concurrency, latencies in series.items():
                if len(latencies):
                    axes.hist(latencies, bins=bins, histtype="step", linewidth=1.5, label=f"concurrency {concurrency}")
            axes.set_xscale("log")
            _plain_log_ticks(axes.xaxis)
            axes.legend()
        axes.set_title(title)
        axes.set_xlabel("latency (ms, log scale)")
        axes.set_ylabel("requests")
    return _save(figure, Path(path))


def precision_recall_curve(curve: dict, path: str | Path) -> Path:
    """Precision against recall, one point per Hamming radius; precision against radius when recall is unknown."""
    figure = _figure(5.5, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    points = [(r, p, None if curve.get("recall") is None else curve["recall"][r])
              for r, p in zip(curve["radius"], curve["precision"]) if p is not None]
    if curve.get("recall") is not None:
        points = [pt for pt in points if pt[2] is not None]
        axes.plot([pt[2] for pt in points], [pt[1] for pt in points], marker="o", markersize=3)
        _label_radii(axes, [(recall, precision, radius) for radius, precision, recall in points])
        axes.set_xlabel("recall")
        axes.set_xlim(0, 1.02)
        axes.set_title("Precision-recall by Hamming radius")
    else:
        axes.plot([pt[0] for pt in points], [pt[1] for pt in points], marker="o", markersize=3)
        axes.set_xlabel("Hamming radius (truncated rankings: no recall)")
        axes.set_title("Precision within Hamming radius")
    axes.set_ylabel("precision")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    return _save(figure, Path(path))
