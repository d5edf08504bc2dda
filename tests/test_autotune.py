"""Autotuning approximate indexes to a recall target (medhash.index.autotune) at build time."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medhash.index import BuildConfig, HammingIndex, TuneConfig, build_index, index_info
from medhash.index.autotune import ExactTruth, tie_aware_recall
from tests.test_index import BITS, clustered_codes, hamming, write_codes


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Realistically hard synthetic codes: many small clusters with 12% flips (neighbours 5-15 bits away)."""
    rng = np.random.default_rng(7)
    codes = clustered_codes(rng, 6000, centers=300, flip=0.12)
    folder = tmp_path_factory.mktemp("codes")
    write_codes(folder, codes, per_shard=2500)
    # Held-out queries: fresh draws from the same clusters (same centres: same seed for the centres).
    rng2 = np.random.default_rng(7)
    base = rng2.integers(0, 2, (300, BITS), dtype=np.uint8)
    q_rng = np.random.default_rng(99)
    noisy = base[q_rng.integers(0, 300, 300)] ^ (q_rng.random((300, BITS)) < 0.12)
    held_out = np.packbits(noisy.astype(np.uint8), axis=1)
    return folder, codes, held_out


def held_out_recall(index: HammingIndex, codes: np.ndarray, queries: np.ndarray, k: int, **kw) -> float:
    result = index.search(queries, k, **kw)
    recalls = []
    for hits, q in zip(result, queries):
        kth = np.sort(hamming(codes, q))[k - 1]
        recalls.append(float((hits.distances[:k] <= kth).sum()) / k)
    return float(np.mean(recalls))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_autotune_reaches_its_target_on_held_out_queries(archive, tmp_path, kind):
    folder, codes, held_out = archive
    params = {"nlist": 64} if kind == "ivf" else {"M": 8, "ef_construction": 16}
    manifest = build_index(folder, tmp_path / "idx", BuildConfig(kind=kind, params=params,
                                                                 tune=TuneConfig(target_recall=0.95, k=50, queries=300)))
    tuning = manifest.tuning
    knob = "nprobe" if kind == "ivf" else "ef_search"
    assert tuning["knob"] == knob and tuning["chosen_by"] == "autotune"
    assert tuning["recall"] >= 0.95 and tuning["k"] == 50 and tuning["queries"] == 300
    assert manifest.params[knob] == tuning["value"]
    values = [row[knob] for row in tuning["tried"]]
    chosen = values.index(tuning["value"])
    assert values == sorted(values) and tuning["tried"][chosen]["recall"] >= 0.95
    if chosen > 0:  # the value just below the chosen one fell short: the cheapest was picked
        assert tuning["tried"][chosen - 1]["recall"] < 0.95 and values[chosen - 1] == tuning["value"] - 1
    assert tuning["latency_ms_per_query"] > 0 and tuning["memory_bytes"]["index_file"] > 0
    index = HammingIndex(tmp_path / "idx")
    # The tuned value is the search default, and generalises to queries that are not in the archive.
    assert held_out_recall(index, codes, held_out, 50) >= 0.93
    if kind == "ivf":
        import faiss

        raw = faiss.read_index_binary(str(tmp_path / "idx" / "index.faiss"))
        assert raw.nprobe == tuning["value"], "plain FAISS reading the file gets the tuned nprobe too"


def test_manifest_records_recall_and_info_shows_it(archive, tmp_path):
    from click.testing import CliRunner

    from medhash.cli import main

    folder, _, _ = archive
    out = tmp_path / "idx"
    result = CliRunner().invoke(main, ["index", "build", "--codes", str(folder), "--out", str(out), "--kind", "ivf",
                                       "--param", "nlist=64", "--target-recall", "0.9", "--tune-queries", "200"])
    assert result.exit_code == 0, result.output
    info = index_info(out)
    assert info["tuning"]["target_recall"] == 0.9 and info["tuning"]["recall"] >= 0.9
    shown = CliRunner().invoke(main, ["index", "info", "--index", str(out)])
    assert "tuning: nprobe=" in shown.output and "recall@100" in shown.output
    untuned = CliRunner().invoke(main, ["index", "build", "--codes", str(folder), "--out", str(tmp_path / "u"),
                                        "--kind", "ivf", "--param", "nlist=64", "--target-recall", "0"])
    assert untuned.exit_code == 0 and index_info(tmp_path / "u")["tuning"] == {}


def test_exact_kinds_record_recall_one(archive, tmp_path):
    folder, _, _ = archive
    manifest = build_index(folder, tmp_path / "idx", BuildConfig(kind="flat", tune=TuneConfig(queries=50)))
    assert manifest.tuning["recall"] == 1.0 and manifest.tuning["chosen_by"] == "exact kind"


def test_explicit_low_nprobe_warns(archive, tmp_path, caplog):
    folder, _, held_out = archive
    with caplog.at_level(logging.WARNING, logger="medhash.index.autotune"):
        manifest = build_index(folder, tmp_path / "idx", BuildConfig(kind="ivf", params={"nlist": 64, "nprobe": 1},
                                                                     tune=TuneConfig(queries=200)))
    assert manifest.params["nprobe"] == 1 and manifest.tuning["chosen_by"] == "explicit setting"
    assert manifest.tuning["recall"] < 0.95
    assert any("nprobe=1 measures recall@100" in r.getMessage() for r in caplog.records)

    build_index(folder, tmp_path / "tuned", BuildConfig(kind="ivf", params={"nlist": 64}, tune=TuneConfig(queries=200)))
    index = HammingIndex(tmp_path / "tuned")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medhash.index.autotune"):
        index.search(held_out[:2], 10, nprobe=1)
    assert any("below the autotuned nprobe" in r.getMessage() for r in caplog.records)


def test_exact_truth_excludes_the_query_itself():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (500, 8), dtype=np.uint8)
    truth = ExactTruth(codes[:20], np.arange(20), k=10)
    for part in np.array_split(codes, 7):
        truth.update(part)
    for i in range(20):
        others = np.delete(hamming(codes, codes[i]), i)
        assert truth.kth()[i] == np.sort(others)[9]
    # A searcher that returns the query itself first scores only its other k items.
    found = []
    for i in range(20):
        d = hamming(codes, codes[i])
        order = np.lexsort((np.arange(500), d))[:11]
        found.append((d[order].astype(np.int32), order.astype(np.int64)))
    assert tie_aware_recall(found, np.arange(20), truth.kth(), 10) == 1.0
