"""`medhash bench`: its quality figures equal evaluate_codes on the same codes; HTTP and in-process agree; load is bounded."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from serve_support import archived_codes, live_server

from medhash.bench import BenchConfig, run_bench
from medhash.bench.clients import HttpClient, SearchRequestError
from medhash.bench.load import run_load
from medhash.bench.queries import load_query_set
from medhash.bench.quality import Ranking, precision_recall_by_radius
from medhash.bench.run import image_search
from medhash.cli import main
from medhash.codes_format import write_code_shard, write_codes_manifest
from medhash.data import read_label_table
from medhash.eval.metrics import evaluate_codes
from medhash.index import BuildConfig, build_index
from medhash.model import load_encoder

# Load against live servers: a hang (a stuck socket, a lost request) should fail fast.
pytestmark = [pytest.mark.timeout(120)]

KS = (5, 10)


@pytest.fixture(scope="module")
def spread(served_archive, tmp_path_factory):
    """The served archive's images under an index of label-correlated random codes.

    The tiny untrained model gives every phantom one code, so its own index ranks by ties alone;
    these codes spread over many distances (and still tie), so ranking and tie handling both count.
    Queries are still encoded by the model: the query codes are archived_codes(served_archive)."""
    root = tmp_path_factory.mktemp("spread")
    records = read_label_table(served_archive.labels_csv).records
    labels = read_label_table(served_archive.labels_csv).multi_hot()
    rng = np.random.default_rng(3)
    prototypes = rng.integers(0, 2, size=(labels.shape[1], 32), dtype=np.uint8)
    bits = prototypes[labels.argmax(axis=1)] ^ (rng.random((len(records), 32)) < 0.25).astype(np.uint8)
    db_codes = np.packbits(bits, axis=1)
    encoder = load_encoder(served_archive.model_path, engine="fp32")
    write_code_shard(root / "codes" / "part-00000.parquet", model_id=encoder.model_id, bits=32,
                     image_ids=[r.image_id for r in records],
                     paths=[str(Path(r.path).relative_to(served_archive.root)) for r in records], codes=db_codes,
                     boxes=np.zeros((len(records), 4), np.int32), labels=[r.labels for r in records])
    write_codes_manifest(root / "codes", model_id=encoder.model_id, bits=32)
    build_index(root / "codes", root / "index", BuildConfig(kind="flat"))
    return {"archive": served_archive, "index": root / "index", "db_codes": db_codes, "labels": labels,
            "query_codes": archived_codes(served_archive)}


def in_process(spread, out: Path, **changes) -> BenchConfig:
    base = BenchConfig(queries=str(spread["archive"].labels_csv), out=str(out), index=str(spread["index"]),
                       model=str(spread["archive"].model_path), engine="fp32", torch_threads=1, concurrency=(1, 4),
                       requests=12, ks=KS)
    return replace(base, **changes)


def reference(spread, ks=KS):
    n = len(spread["db_codes"])  # query i is database item i: left out of its own ranking, as the bench does
    return evaluate_codes(spread["query_codes"], spread["db_codes"], spread["labels"], spread["labels"], ks,
                          query_db_index=np.arange(n))


@pytest.fixture(scope="module")
def in_process_report(spread, tmp_path_factory):
    return run_bench(in_process(spread, tmp_path_factory.mktemp("bench-in-process")))


def test_in_process_quality_equals_evaluate_codes(in_process_report, spread):
    quality, expected = in_process_report["quality"], reference(spread)
    assert quality["ranking"] == "complete" and quality["failed"] == 0
    assert quality["self_excluded"] == quality["n_queries"] == len(spread["db_codes"])
    assert 0.0 <= quality["map_tie_aware"] <= 1.0
    assert quality["map_tie_aware"] == pytest.approx(expected.map_tie_aware, abs=1e-9)
    assert quality["map_stable"] == pytest.approx(expected.map_stable, abs=1e-9)
    for k in KS:
        assert quality["map_at_k"][str(k)] == pytest.approx(expected.map_at_k[k], abs=1e-9)
        assert quality["p_at_k"][str(k)] == pytest.approx(expected.p_at_k[k], abs=1e-9)
        assert quality["r_at_k"][str(k)] == pytest.approx(expected.r_at_k[k], abs=1e-9)


def test_bench_writes_json_plots_and_latency_levels(in_process_report, tmp_path_factory):
    out = Path(in_process_report["config"]["out"])
    assert json.loads((out / "bench.json").read_text()) == in_process_report
    for name in in_process_report["plots"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for kind in ("end_to_end", "search_only"):
        levels = in_process_report["latency"][kind]
        assert [level["concurrency"] for level in levels] == [1, 4]
        for level in levels:
            assert level["failed"] == 0 and level["completed"] == level["requests"] == 12
            assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"] <= level["max_ms"]
            assert level["throughput_rps"] > 0
    assert "encode" in in_process_report["latency"]["end_to_end"][0]["server_ms_mean"]
    assert "encode" not in in_process_report["latency"]["search_only"][0]["server_ms_mean"]
    assert in_process_report["machine"]["cores"] >= 1


def test_truncated_ranking_reports_map_at_k(spread, tmp_path):
    """count > max_k: whole-ranking mAP is null and mAP@k_eval is exact (ties included in the prefix: half of max_k
    is asked, the other half holds the ties)."""
    report = run_bench(in_process(spread, tmp_path, max_k=42, requests=0, plots=False))
    quality = report["quality"]
    assert quality["ranking"] == "truncated" and quality["k_eval"] == 20 and "note" in quality
    assert quality["ties_cut"] == 0
    assert quality["map_tie_aware"] is None and quality["r_at_k"] is None
    expected = reference(spread, ks=(5, 20))
    assert quality["map_at_k"]["20"] == pytest.approx(expected.map_at_k[20], abs=1e-9)
    assert quality["p_at_k"]["5"] == pytest.approx(expected.p_at_k[5], abs=1e-9)
    assert max(report["precision_recall"]["radius"]) < 32 and report["precision_recall"]["recall"] is None


def test_http_bench_matches_in_process(spread, in_process_report, tmp_path):
    with live_server(spread["archive"], index=str(spread["index"]), token="s3cret-0123456789abcdef") as url:
        report = run_bench(BenchConfig(queries=str(spread["archive"].labels_csv), out=str(tmp_path), url=url,
                                       token="s3cret-0123456789abcdef", concurrency=(2,), requests=10, ks=KS))
        with pytest.raises(SearchRequestError, match="401"):
            run_bench(BenchConfig(queries=str(spread["archive"].labels_csv), out=str(tmp_path / "x"), url=url,
                                  token="wrong", requests=1))
    assert report["mode"] == "http" and report["config"]["token"] == "***"
    assert "s3cret-0123456789abcdef" not in (tmp_path / "bench.json").read_text()
    for key in ("map_tie_aware", "map_at_k", "p_at_k", "n_queries"):
        assert report["quality"][key] == in_process_report["quality"][key]
    assert [level["failed"] for kind in report["latency"].values() for level in kind] == [0, 0]


def test_cli_bench_prints_summary(spread, tmp_path):
    archive = spread["archive"]
    args = ["bench", "--index", str(spread["index"]), "--model", str(archive.model_path), "--labels",
            str(archive.labels_csv), "--out", str(tmp_path), "--requests", "4", "--concurrency", "1,2", "--cutoffs", "5",
            "--engine", "fp32", "--torch-threads", "1", "--no-plots"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "mAP (tie-aware)" in result.output and "P@5" in result.output and "end_to_end" in result.output
    assert json.loads((tmp_path / "bench.json").read_text())["latency"]["end_to_end"][1]["concurrency"] == 2
    both = CliRunner().invoke(main, args + ["--url", "http://127.0.0.1:9"])
    assert both.exit_code == 2 and "not both" in both.output


def test_precision_recall_by_radius_counts_whole_tie_groups():
    ranking = Ranking(np.array([0, 1, 1, 3]), np.array([True, False, True, False]), labeled=True, self_excluded=False)
    curve = precision_recall_by_radius([ranking], bits=4, complete=True)
    assert curve["precision"] == pytest.approx([1.0, 2 / 3, 2 / 3, 0.5, 0.5])
    assert curve["recall"] == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])
    truncated = precision_recall_by_radius([ranking], bits=4, complete=False)
    assert truncated["radius"] == [0, 1, 2, 3] and truncated["recall"] is None


def test_run_load_counts_failures_and_stops_at_its_time_limit():
    async def flaky(i: int) -> dict:
        await asyncio.sleep(0.001)
        if i % 3 == 0:
            raise RuntimeError(f"boom {i}")
        return {"timings_ms": {"total": 1.0}}

    result = asyncio.run(run_load(flaky, 30, 4, keep_errors=2))
    assert (result.requests, result.failed, result.latencies_s.size) == (30, 10, 20)
    assert len(result.errors) == 2 and "RuntimeError: boom" in result.errors[0]
    assert result.summary()["server_ms_mean"] == {"total": 1.0}

    async def slow(i: int) -> dict:
        await asyncio.sleep(0.05)
        return {}

    bounded = asyncio.run(run_load(slow, 10_000, 2, time_limit_s=0.2))
    assert bounded.stopped_by_time_limit and bounded.requests < 40 and bounded.failed == 0


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_two_thousand_uploads_at_concurrency_16_all_succeed(served_archive):
    """The issue's bounded load test: 2,000 image searches, 16 at a time, over HTTP on 127.0.0.1."""
    queries = load_query_set(served_archive.labels_csv)

    async def load(url: str):
        client = HttpClient(url, connections=16)
        try:
            return await run_load(image_search(client, queries, 10), 2000, 16, time_limit_s=300)
        finally:
            await client.aclose()

    with live_server(served_archive) as url:
        result = asyncio.run(load(url))
    assert result.errors == [] and result.failed == 0
    assert result.requests == result.latencies_s.size == 2000


def test_cli_bench_with_a_filter_reports_its_strategies(spread, tmp_path):
    archive = spread["archive"]
    args = ["bench", "--index", str(spread["index"]), "--model", str(archive.model_path), "--queries",
            str(archive.labels_csv), "--out", str(tmp_path), "--requests", "4", "--concurrency", "1", "--ks", "5",
            "--engine", "fp32", "--threads", "1", "--no-plots"]
    result = CliRunner().invoke(main, args + ["--filter", "labels_none=Mass"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["filter"]["normalized"] == {"labels_none": ["Mass"]}
    assert sum(report["filter"]["strategies"].values()) == 8 and "none" not in report["filter"]["strategies"]
    assert all(level["failed"] == 0 for kind in report["latency"].values() for level in kind)
    bad = CliRunner().invoke(main, args + ["--filter", "age=..x"])
    assert bad.exit_code == 2 and "'age=..x'" in bad.output
