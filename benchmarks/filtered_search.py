"""Filtered search at archive scale: latency and recall@100 of every kind at four selectivities.

    python -m benchmarks.filtered_search                  # 1M codes -> benchmarks/results/filtered_search.json
    python -m benchmarks.filtered_search --n 50000 --queries 30 --out /tmp/fs.json   # quick run

Codes and metadata are drawn together, so a label filter selects codes that cluster (metadata drawn
independently of the codes would make every filter a random subset, which is easier than real
data). The generator is swappable (`GENERATORS`, --generator); the one here, `label_projection`:
- a pool of real image records: the dev set's labels.csv (/work/shared/data/nih-cxr14-dev) and the
  NIH Data_Entry table (/work/shared/data/nih-meta), each row a joint draw of findings, view, sex,
  age and patient;
- each pool record gets a cluster centre: the sign of a fixed random projection of its feature
  vector (findings multi-hot, view, sex, age / 100) plus per-record Gaussian noise, so records with
  the same findings have nearby centres;
- each of the n indexed rows (and each query) picks a pool record at random and takes its
  metadata, with the record's centre flipped at 15% of the bits as its code.
A realistic code generator (codes of a real model) can replace it by registering another generator
with the same signature: generate(rng, n, pool) -> (codes uint8 [n, 8], pool row per code).

For each kind (flat, multihash, ivf, hnsw at their default parameters) and each filter, single
queries are timed with one search thread (the machine is shared), interleaved over kinds so a load
spike hits all alike; recall@100 is tie-aware against the brute-force filtered answer. The same run
times the unfiltered flat scan and raw faiss.IndexBinaryFlat (1 OpenMP thread). Filter evaluation
(reading the columns, cold) is timed once per filter; search timings use the cached selection.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import pandas as pd

from benchmarks.common import DEFAULT_DATA_ROOT, RESULTS, write_result
from medhash.bench.machine import machine_info
from medhash.codes_format import MetadataColumns, write_code_shard, write_codes_manifest
from medhash.data.keyed import keyed_hash
from medhash.data.labels import FINDINGS, NO_FINDING
from medhash.index import BuildConfig, HammingIndex, ThreadPolicy, build_index
from medhash.index._search import hamming_distances

BITS = 64
K = 100
FLIP = 0.15
SHARD_ROWS = 250_000
MODEL_ID = "benchmark-filtered"
TARGETS = (0.5, 0.05, 0.005, 0.0005)
KINDS = ("flat", "multihash", "ivf", "hnsw")
ONE_THREAD = ThreadPolicy(search_threads=1, fan_out="never")
# Filters tried; the ones nearest each target selectivity (in log space) are measured.
CANDIDATES = [
    "sex=M", "view=PA", "labels_none=Infiltration", "age=..50", "labels_any=Effusion,Atelectasis,Infiltration",
    "labels_any=Effusion", "labels_any=Effusion;sex=F", "labels_any=Atelectasis;view=AP",
    "labels_any=Mass;view=PA", "labels_any=Nodule;sex=F;age=50..", "labels_any=Mass;sex=F;age=60..",
    "labels_any=Pneumothorax;view=PA;age=..30", "labels_all=Effusion,Mass;sex=F", "labels_any=Hernia",
    "labels_any=Hernia;sex=F", "labels_all=Effusion,Mass;sex=F;age=60..", "labels_any=Fibrosis;view=AP;age=70..",
    "labels_any=Hernia;view=PA;age=..60", "labels_all=Pneumonia,Edema;sex=M",
]


# -- the pool of real image records --------------------------------------------------------------
def load_pool(data_root: Path) -> pd.DataFrame:
    """One row per real image: labels (list), view, sex, age (string), patient."""
    frames = []
    dev = data_root / "nih-cxr14-dev" / "labels.csv"
    if dev.exists():
        d = pd.read_csv(dev)
        frames.append(pd.DataFrame({"labels": d["labels"].fillna(NO_FINDING), "view": d["view"], "sex": d["sex"],
                                    "age": d["age"], "patient": "dev-" + d["patient_id"].astype(str)}))
    entry = data_root / "nih-meta" / "Data_Entry_2017_v2020.csv.gz"
    if entry.exists():
        with gzip.open(entry, "rt") as f:
            e = pd.read_csv(f)
        frames.append(pd.DataFrame({"labels": e["Finding Labels"], "view": e["View Position"],
                                    "sex": e["Patient Gender"], "age": e["Patient Age"],
                                    "patient": "nih-" + e["Patient ID"].astype(str)}))
    if not frames:
        raise SystemExit(f"no metadata under {data_root} (nih-cxr14-dev/labels.csv or nih-meta/Data_Entry)")
    pool = pd.concat(frames, ignore_index=True)
    pool["labels"] = pool["labels"].astype(str).str.split("|")
    pool["age"] = pool["age"].astype(str)
    return pool


def features(pool: pd.DataFrame) -> np.ndarray:
    multi_hot = np.array([[f in labels for f in FINDINGS] for labels in pool["labels"]], dtype=np.float32)
    view = np.stack([(pool["view"] == v).to_numpy() for v in ("PA", "AP")], axis=1).astype(np.float32)
    sex = (pool["sex"] == "F").to_numpy(np.float32)[:, None]
    age = pd.to_numeric(pool["age"], errors="coerce").fillna(50).to_numpy(np.float32)[:, None] / 100
    return np.concatenate([3 * multi_hot, view, sex, age], axis=1)


# -- code generators -----------------------------------------------------------------------------
def label_projection(rng, n: int, pool: pd.DataFrame, *, state: dict = {}) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [n, 8], pool row per code): pool records' projected centres with FLIP bit flips."""
    if "centres" not in state or len(state["centres"]) != len(pool):
        x = features(pool)
        w = np.random.default_rng(1234).standard_normal((x.shape[1], BITS)).astype(np.float32)
        noise = np.random.default_rng(99).standard_normal((len(pool), BITS)).astype(np.float32)
        state["centres"] = np.packbits((x @ w + 1.2 * noise) > 0, axis=1)
    rows = rng.integers(0, len(pool), n)
    flips = np.packbits(rng.random((n, BITS)) < FLIP, axis=1)
    return state["centres"][rows] ^ flips, rows


GENERATORS: dict[str, Callable] = {"label_projection": label_projection}


# -- data on disk --------------------------------------------------------------------------------
def write_codes(folder: Path, codes: np.ndarray, pool: pd.DataFrame, rows: np.ndarray) -> None:
    columns = MetadataColumns(table=("view", "age", "sex"), patient_key=True)
    secret = b"benchmark-secret"
    keys = {p: keyed_hash(p, secret) for p in pool["patient"].unique()}
    for shard, start in enumerate(range(0, len(codes), SHARD_ROWS)):
        part = rows[start:start + SHARD_ROWS]
        meta = pool.iloc[part]
        n = len(part)
        values = [{"view": v, "age": a, "sex": s, "patient_key": keys[p]}
                  for v, a, s, p in zip(meta["view"], meta["age"], meta["sex"], meta["patient"])]
        ids = [f"img{i:08d}" for i in range(start, start + n)]
        write_code_shard(folder / f"part-{shard:05d}.parquet", model_id=MODEL_ID, bits=BITS, image_ids=ids,
                         paths=[f"{i}.png" for i in ids], codes=codes[start:start + n],
                         boxes=np.zeros((n, 4), np.int32), labels=list(meta["labels"]), columns=columns, values=values)
    write_codes_manifest(folder, model_id=MODEL_ID, bits=BITS)


# -- measurement ---------------------------------------------------------------------------------
def pick_filters(index: HammingIndex) -> list[dict]:
    measured = []
    for text in CANDIDATES:
        t0 = time.perf_counter()
        selection = index.select(text)
        measured.append({"filter": text, "selectivity": selection.fraction,
                         "evaluate_ms": round((time.perf_counter() - t0) * 1000, 2)})
    chosen = []
    for target in TARGETS:
        usable = [m for m in measured if m["selectivity"] > 0 and m not in chosen]
        best = min(usable, key=lambda m: abs(np.log(m["selectivity"] / target)))
        chosen.append({**best, "target": target})
    return chosen


def tie_aware_recall(distances: np.ndarray, truth: np.ndarray) -> float:
    if not len(truth):
        return 1.0
    return float((distances[:len(truth)] <= truth[-1]).sum()) / len(truth)


def percentiles(ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p95_ms": round(float(np.percentile(ms, 95)), 4)}


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    pool = load_pool(Path(args.data_root))
    generate = GENERATORS[args.generator]
    codes, rows = generate(rng, args.n, pool)
    queries, _ = generate(rng, args.queries, pool)
    work = Path(tempfile.mkdtemp(prefix="filtered-search-", dir=args.work))
    result: dict = {"n": args.n, "k": K, "bits": BITS, "generator": args.generator, "flip": FLIP,
                    "pool_records": len(pool), "queries": args.queries, "threads": 1}
    try:
        t0 = time.perf_counter()
        write_codes(work / "codes", codes, pool, rows)
        result["write_codes_s"] = round(time.perf_counter() - t0, 1)
        indexes, build_s = {}, {}
        for kind in KINDS:
            t0 = time.perf_counter()
            build_index(work / "codes", work / kind, BuildConfig(kind=kind))
            build_s[kind] = round(time.perf_counter() - t0, 1)
            indexes[kind] = HammingIndex(work / kind, policy=ONE_THREAD)
            print(f"built {kind} in {build_s[kind]} s", flush=True)
        result["build_s"] = build_s
        filters = pick_filters(indexes["flat"])
        for kind in KINDS[1:]:
            for f in filters:
                indexes[kind].select(f["filter"])  # warm each index's selection cache like a server would
        result["filters"] = filters
        raw = faiss.IndexBinaryFlat(BITS)
        raw.add(codes)
        masks = [indexes["flat"].select(f["filter"]).mask for f in filters]

        # Brute-force filtered truth (distances of the top-100) per query and filter.
        truth = []
        for q in queries:
            d = hamming_distances(q, codes)
            truth.append([np.sort(d[m])[:K] for m in masks] + [np.sort(d)[:K]])

        cells = [("flat", None), ("faiss_flat_raw", None)] + [(kind, i) for kind in KINDS for i in range(len(filters))]
        times: dict = {c: [] for c in cells}
        recalls: dict = {c: [] for c in cells}
        strategies: dict = {c: {} for c in cells}
        faiss.omp_set_num_threads(1)
        for qi, q in enumerate(queries):
            order = rng.permutation(len(cells))
            for ci in order:
                kind, fi = cells[ci]
                t0 = time.perf_counter()
                if kind == "faiss_flat_raw":
                    D, _ = raw.search(q[None, :], K)
                    dist, strategy = D[0], "none"
                else:
                    found = indexes[kind].search(q, K, filter=None if fi is None else filters[fi]["filter"])
                    dist, strategy = found[0].distances, found.strategy or "none"
                times[cells[ci]].append((time.perf_counter() - t0) * 1000)
                recalls[cells[ci]].append(tie_aware_recall(dist, truth[qi][-1 if fi is None else fi]))
                strategies[cells[ci]][strategy] = strategies[cells[ci]].get(strategy, 0) + 1
        rows_out = []
        for kind, fi in cells:
            row = {"n": args.n, "kind": kind, "selectivity": 1.0 if fi is None else round(filters[fi]["selectivity"], 6),
                   **percentiles(times[(kind, fi)]), "recall_at_100": round(float(np.mean(recalls[(kind, fi)])), 4),
                   "strategy": max(strategies[(kind, fi)], key=strategies[(kind, fi)].get),
                   "strategies": strategies[(kind, fi)], "filter": None if fi is None else filters[fi]["filter"]}
            rows_out.append(row)
        result["rows"] = rows_out
        unfiltered = next(r for r in rows_out if r["kind"] == "flat" and r["filter"] is None)
        exact = [r for r in rows_out if r["kind"] in ("flat", "multihash") and r["filter"] is not None]  # exact kinds
        approx = [r for r in rows_out if r["kind"] in ("ivf", "hnsw") and r["filter"] is not None]
        result["targets"] = {
            "unfiltered_flat_p50_ms": unfiltered["p50_ms"],
            "exact_filtered_within_5pct_of_unfiltered": {
                f"{r['kind']}@{r['selectivity']}": round(r["p50_ms"] / unfiltered["p50_ms"], 3) for r in exact},
            "exact_filtered_ok": all(r["p50_ms"] <= 1.05 * unfiltered["p50_ms"] for r in exact),
            "exact_recall_is_1": all(r["recall_at_100"] == 1.0 for r in exact),
            "approx_recall_ok": all(r["recall_at_100"] >= 0.95 for r in approx),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--generator", choices=sorted(GENERATORS), default="label_projection")
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--work", default=None, help="Folder for the temporary codes and indexes.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "filtered_search.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    load_before = os.getloadavg()
    result = run(args)
    result["machine"] = machine_info()
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_result(args.out, result)
    for row in result["rows"]:
        print(f"{row['kind']:>15} sel {row['selectivity']:<9} p50 {row['p50_ms']:8.3f} ms  p95 {row['p95_ms']:8.3f} ms  "
              f"recall {row['recall_at_100']:.4f}  {row['strategy']}")
    print(result["targets"])


if __name__ == "__main__":
    main()
