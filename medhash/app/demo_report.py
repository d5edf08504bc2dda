"""write_demo_report: one static HTML page of what `medhash demo` did, with its overlays and plots.

Plain HTML beside the PNGs it links (relative paths), no scripts and no external assets, so it
opens from the folder in any browser, offline.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from medhash.app.query import QueryResult
from medhash.atomic import write_text_atomic
from medhash.data.labels import LabelRecord

__all__ = ["write_demo_report"]

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1b2430;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde3ea;padding-bottom:.3rem}
table{border-collapse:collapse}td,th{padding:.25rem .7rem;border-bottom:1px solid #eef1f4;text-align:left}
.row{display:flex;gap:.8rem;flex-wrap:wrap;align-items:flex-start;margin:.6rem 0 1.4rem}
figure{margin:0;width:150px}figure img{width:150px;image-rendering:pixelated;border:1px solid #d5dbe2;border-radius:4px}
figcaption{font-size:12px;color:#4a5563}.query img{border:2px solid #1f5fbf}.plots img{display:block;width:100%;max-width:1000px;margin:0 0 1rem;border:0}
.chip{display:inline-block;background:#eef2f7;border-radius:9px;padding:0 6px;margin:1px;font-size:11px}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _chips(labels) -> str:
    return "".join(f'<span class="chip">{_e(label)}</span>' for label in labels) or '<span class="chip">-</span>'


def write_demo_report(out: Path, summary: dict, queries: list[tuple[LabelRecord, QueryResult]],
                      bench: dict | None) -> Path:
    """queries: (query record, its QueryResult) pairs whose `overlays` were written under `out`."""
    out = Path(out)
    rel = lambda p: _e(os.path.relpath(p, out))  # noqa: E731
    ev = summary.get("evaluate", {})
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>medhash demo</title>"
             f"<style>{STYLE}</style></head><body><h1>medhash demo: similar-case retrieval on synthetic phantoms</h1>",
             "<table>",
             f"<tr><th>model</th><td>{_e(summary['train']['model_id'])}, {_e(summary.get('bits', ''))} bits</td></tr>",
             f"<tr><th>tie-aware mAP (fold 4 vs folds 0-3)</th><td>{ev.get('map_tie_aware', float('nan')):.4f}</td></tr>",
             f"<tr><th>P@10</th><td>{ev.get('p_at_10', float('nan')):.4f}</td></tr>",
             f"<tr><th>pointing game</th><td>{ev.get('pointing_game') or float('nan'):.3f} on {ev.get('boxed_images', 0)} "
             "boxed phantoms</td></tr>",
             f"<tr><th>indexed</th><td>{summary['index']['count']} codes ({_e(summary['index']['kind'])})</td></tr></table>",
             "<h2>Queries and their most similar archived cases</h2>"
             "<p>Red: the saliency map; green: the crop box the local branch looked at. Hits show their stored box.</p>"]
    for record, result in queries:
        if not result.overlays:
            continue
        query_png, hit_pngs = result.overlays[0], result.overlays[1:]
        cells = [f"<figure class='query'><img src='{rel(query_png)}' alt='query {_e(record.image_id)}'>"
                 f"<figcaption><b>query</b> {_e(record.image_id)}<br>{_chips(record.labels)}</figcaption></figure>"]
        for hit, png in zip(result.hits, hit_pngs):
            cells.append(f"<figure><img src='{rel(png)}' alt='hit {hit.rank}: {_e(hit.image_id)}'>"
                         f"<figcaption>#{hit.rank} d={hit.distance} {_e(hit.image_id)}<br>{_chips(hit.labels)}"
                         "</figcaption></figure>")
        parts.append(f"<div class='row'>{''.join(cells)}</div>")
    if bench:
        q = bench["quality"]
        parts.append("<h2>Served over HTTP and benchmarked (medhash bench --url)</h2><table>")
        if q.get("map_tie_aware") is not None:
            parts.append(f"<tr><th>tie-aware mAP over HTTP</th><td>{q['map_tie_aware']:.4f} ({q.get('n_queries')} "
                         "queries, own image excluded, whole archive ranked)</td></tr>")
        parts.append("</table><table><tr><th>requests</th><th>concurrency</th><th>p50 ms</th><th>p95 ms</th>"
                     "<th>p99 ms</th><th>req/s</th><th>failed</th></tr>")
        for name, levels in bench["latency"].items():
            for r in levels:
                parts.append(f"<tr><td>{_e(name)}</td><td>{r['concurrency']}</td><td>{r['p50_ms']:.1f}</td>"
                             f"<td>{r['p95_ms']:.1f}</td><td>{r['p99_ms']:.1f}</td><td>{r['throughput_rps']:.0f}</td>"
                             f"<td>{r['failed']}</td></tr>")
        parts.append("</table><div class='row plots'>")
        for png in bench.get("plots", {}).values():
            parts.append(f"<img src='{rel(out / 'bench' / png)}' alt='{_e(png)}'>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    write_text_atomic(out / "report.html", "\n".join(parts))
    return out / "report.html"
