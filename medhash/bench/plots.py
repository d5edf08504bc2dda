"""PNG plots of a bench: latency histograms (one series per concurrency, p50/p95/p99 marked) and the
precision-recall curve with its chance level (the base rate of relevant items).

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


def _label_radii(axes, points: list[tuple[float, float, int]], most: int = 7, spacing: float = 0.08) -> None:
    """Name the radius at up to `most` points, each at least `spacing` (in axis fractions) from the last
    labelled one, so that labels never sit on each other; a white box keeps them readable over the line."""
    last = None
    labelled = 0
    for x, y, radius in points:
        if last is not None and np.hypot(x - last[0], y - last[1]) < spacing:
            continue
        if labelled == most:
            break
        axes.annotate(f"r={radius}", (x, y), textcoords="offset points", xytext=(6, -12 if labelled % 2 else 6),
                      fontsize=9, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        last, labelled = (x, y), labelled + 1


PERCENTILE_STYLES = {50: ":", 95: "--", 99: "-."}


def latency_histogram(panels: dict[str, dict[int, Sequence[float]]], path: str | Path) -> Path:
    """panels: title -> {concurrency: latencies in ms}; one subplot per panel, log-spaced bins shared by its
    series, and each series' p50 / p95 / p99 marked by vertical lines in its colour."""
    from matplotlib.lines import Line2D

    figure = _figure(7.0 * max(len(panels), 1), 4.8)
    for column, (title, series) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(1, max(len(panels), 1), column)
        values = [np.asarray(v, dtype=float) for v in series.values() if len(v)]
        if values:
            low = max(min(v.min() for v in values), 1e-3)
            high = max(max(v.max() for v in values), low * 1.01)
            bins = np.geomspace(low, high, 40)
            handles = []
            for concurrency, latencies in series.items():
                if not len(latencies):
                    continue
                _, _, patches = axes.hist(latencies, bins=bins, histtype="step", linewidth=1.5,
                                          label=f"concurrency {concurrency}")
                color = patches[0].get_edgecolor()
                handles.append(patches[0])
                for q, style in PERCENTILE_STYLES.items():
                    axes.axvline(float(np.percentile(latencies, q)), color=color, linestyle=style, linewidth=1.2)
            handles += [Line2D([], [], color="0.3", linestyle=style, label=f"p{q}") for q, style in PERCENTILE_STYLES.items()]
            axes.set_xscale("log")
            _plain_log_ticks(axes.xaxis)
            axes.legend(handles=handles, fontsize=9)
        axes.set_title(title, fontsize=12)
        axes.set_xlabel("latency (ms, log scale)", fontsize=11)
        axes.set_ylabel("requests", fontsize=11)
    return _save(figure, Path(path))


def precision_recall_curve(curve: dict, path: str | Path) -> Path:
    """Precision against recall, one point per Hamming radius (precision against radius when recall is
    unknown), with the chance level: the archive's base rate of relevant items, which any ranking's
    precision is to be compared with (on a label-rich archive it is high)."""
    figure = _figure(7.0, 5.2)
    axes = figure.add_subplot(1, 1, 1)
    points = [(r, p, None if curve.get("recall") is None else curve["recall"][r])
              for r, p in zip(curve["radius"], curve["precision"]) if p is not None]
    if curve.get("recall") is not None:
        points = [pt for pt in points if pt[2] is not None]
        axes.plot([pt[2] for pt in points], [pt[1] for pt in points], marker="o", markersize=4, label="medhash")
        _label_radii(axes, [(recall, precision, radius) for radius, precision, recall in points])
        axes.set_xlabel("recall", fontsize=11)
        axes.set_xlim(0, 1.02)
        axes.set_title("Precision-recall by Hamming radius r", fontsize=12)
    else:
        axes.plot([pt[0] for pt in points], [pt[1] for pt in points], marker="o", markersize=4, label="medhash")
        axes.set_xlabel("Hamming radius (truncated rankings: no recall)", fontsize=11)
        axes.set_title("Precision within Hamming radius", fontsize=12)
    base_rate = curve.get("base_rate")
    if base_rate is not None:
        axes.axhline(base_rate, color="0.45", linestyle="--", linewidth=1.2,
                     label=f"chance: base rate of relevant items ({base_rate:.2f})")
    axes.legend(loc="lower left", fontsize=9)
    axes.set_ylabel("precision", fontsize=11)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    return _save(figure, Path(path))
