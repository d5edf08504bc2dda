"""benchmarks/quality_cv.py end to end on phantoms (--smoke): every variant on two folds, cell files,
the summary JSON, and a rerun (as a script) that skips every finished cell. Under 60 s on 2 cores."""

from __future__ import annotations

import json
import logging
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_smoke_run_writes_cells_and_summary_and_resumes(tmp_path, monkeypatch, caplog):
    from benchmarks import quality_cv

    work, results = tmp_path / "work", tmp_path / "results"
    args = ["--smoke", "--work", str(work), "--results", str(results)]
    quality_cv.main(args)
    report = json.loads((results / "quality_cv.json").read_text())
    cells = sorted(p.name for p in (results / "quality_cv" / "cells").glob("*.json"))
    expected = quality_cv.plan_cells(list(quality_cv.VARIANTS), [0, 1], None)
    assert cells == sorted(f"{cell.name}.json" for cell in expected)
    assert len(report["rows"]) == len(expected) and report["stale_cells"] == []
    for row in report["rows"]:
        for metric in ("map_tie_aware", "ndcg_at_100", "acg_at_100", "wmap", "p_at_10"):
            assert 0.0 <= row[metric] <= (15.0 if metric == "acg_at_100" else 1.0), (row, metric)
        assert row["train_s"] >= 0 and row["n_queries"] > 0 and row["n_database"] > 0
    by_cell = {(e["variant"], e["bits"]): e for e in report["summary"]}
    assert set(by_cell) == {(v, b) for v in quality_cv.VARIANTS for b in quality_cv.VARIANT_BITS.get(v, (64,))}
    assert by_cell[("previous_default", 16)]["n_folds"] == 2 and by_cell[("c2l_init", 64)]["map_tie_aware"]["sd"] is not None
    assert report["machine"]["cores"] >= 1 and report["not_available"] == {}
    # C2L pretraining saw the training folds only
    for fold in (0, 1):
        table = (work / f"fold{fold}" / "c2l-images.csv").read_text().splitlines()[1:]
        assert table and all(not line.endswith(f",{fold}") for line in table)

    # a rerun as `python -m benchmarks.quality_cv` (run_module: its own imports, no second interpreter)
    # skips every cell (same recipes) and keeps the rows
    before = {p.name: p.stat().st_mtime_ns for p in (results / "quality_cv" / "cells").glob("*.json")}
    monkeypatch.setattr(sys, "argv", ["quality_cv", *args])
    with caplog.at_level(logging.INFO, logger="quality_cv"):
        runpy.run_module("benchmarks.quality_cv", run_name="__main__")
    assert sum("done before, skipped" in r.getMessage() for r in caplog.records) == len(expected)
    assert {p.name: p.stat().st_mtime_ns for p in (results / "quality_cv" / "cells").glob("*.json")} == before
    assert json.loads((results / "quality_cv.json").read_text())["rows"] == report["rows"]
