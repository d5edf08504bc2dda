"""format_summary(report): the few lines `medhash bench` prints (quality, then a latency table)."""

from __future__ import annotations


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_summary(report: dict) -> str:
    q = report["quality"]
    lines = [f"target: {report['target']}  (model {report['server']['model_id']}, {report['server']['bits']} bits, "
             f"{report['server']['count']} indexed)",
             f"quality over {q.get('n_queries', 0)} queries, ranking {q['ranking']} (k={q['k_requested']}), "
             f"self {'excluded' if q['exclude_self'] else 'included'}, {q['failed']} failed"]
    if q.get("map_tie_aware") is not None:
        lines.append(f"  mAP (tie-aware) {_num(q['map_tie_aware'])}   stable {_num(q['map_stable'])}")
    for k in q.get("ks", []):
        key = str(k)
        lines.append(f"  mAP@{k} {_num(q['map_at_k'].get(key))}   P@{k} {_num(q['p_at_k'].get(key))}")
    if q.get("acg_at_k"):  # graded figures; nDCG and wmap are null for a truncated ranking
        lines.append(f"  weighted mAP {_num(q.get('wmap'))}   " + "   ".join(
            f"nDCG@{k} {_num((q.get('ndcg_at_k') or {}).get(str(k)))}  ACG@{k} {_num(q['acg_at_k'].get(str(k)), 3)}"
            for k in q.get("ks", [])))
    if q.get("note"):
        lines.append(f"  note: {q['note']}")
    lines.append(f"{'latency':<12} {'conc':>4} {'reqs':>6} {'failed':>6} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'req/s':>9}")
    for name, results in report["latency"].items():
        for r in results:
            lines.append(f"{name:<12} {r['concurrency']:>4} {r['requests']:>6} {r['failed']:>6} {_num(r['p50_ms'], 2):>9} "
                         f"{_num(r['p95_ms'], 2):>9} {_num(r['p99_ms'], 2):>9} {_num(r['throughput_rps'], 1):>9}")
            if r["errors"]:
                lines.append(f"  first error: {r['errors'][0]}")
    return "\n".join(lines)
