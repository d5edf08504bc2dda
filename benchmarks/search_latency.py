"""Search latency, throughput and tie-aware recall of every index kind against raw faiss.IndexBinaryFlat.

    python -m benchmarks.search_latency                    # 1M and 10M codes
    python -m benchmarks.search_latency --sizes 100000     # quick run
    python -m benchmarks.search_latency --data realistic --search-threads 1 --merge \
        --kinds flat,ivf,ivf:nlist=16384,hnsw           # model-like codes, one thread for everyone

For each size n and data distribution (uniform random 64-bit codes; clustered codes = cluster
centres with independent bit flips, or real codes from --clustered-codes replicated with bit
noise; realistic codes = benchmarks.realistic_codes, a Bernoulli mixture fitted to the codes of a
model trained on the NIH dev set, whose check against the real codes is written to
data_note.realistic_check), the codes are written as Parquet shards in the pipeline layout and every kind is built
from them with `build_index`, then searched through `HammingIndex.search`, which returns rows and
distances (image ids are looked up on first access; that lookup is timed separately per cell as
`image_id_lookup_ms_p50`, 100 ids from ids.parquet's id column).
Single-query latencies are measured in interleaved blocks (every kind in turn), so a load spike
from other work on the machine hits all kinds alike. Recall counts ties: a returned item at the
exact k-th distance or closer is a hit. Approximate kinds are searched with the setting that
`build_index` autotuned (medhash.index.autotune: the cheapest nprobe / ef_search reaching recall@100
0.95 on archive codes); their rows carry that record and the recall measured here on fresh queries.
A kind may be given with parameters (`ivf:nlist=16384`), reported as `ivf[nlist=16384]`. The peak RSS of `index build` at the
largest size is measured in a fresh subprocess. Output: benchmarks/results/search_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import REPO, RESULTS, write_result
from benchmarks.realistic_codes import realistic_codes, validate
from medhash.bench.machine import machine_info
from medhash.codes_format import write_code_shard, write_codes_manifest
from medhash.index import BuildConfig, HammingIndex, ThreadPolicy, build_index

BITS = 64
K = 100
MODEL_ID = "benchmark-synthetic"
SHARD_ROWS = 1_000_000


# -- data --------------------------------------------------------------------------------------
def random_codes(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)


def clustered_codes(rng, n: int, centers: np.ndarray, flip: float) -> np.ndarray:
    out = np.empty((n, BITS // 8), dtype=np.uint8)
    for start in range(0, n, 1_000_000):  # bounded temporaries
        m = min(1_000_000, n - start)
        bits = np.unpackbits(centers[rng.integers(0, len(centers), m)], axis=1)
        bits ^= (rng.random((m, BITS)) < flip).astype(np.uint8)
        out[start:start + m] = np.packbits(bits, axis=1)
    return out


def load_centers(args, rng) -> tuple[np.ndarray, str]:
    if args.clustered_codes:
        from medhash.codes_format import iter_batches, open_shards

        parts = [batch.codes for shard in open_shards(args.clustered_codes)
                 for batch in iter_batches(shard, with_ids=False)]
        centers = np.unique(np.concatenate(parts), axis=0)
        return centers, f"{len(centers)} distinct model codes from {args.clustered_codes}, bit flips p={args.flip}"
    centers = random_codes(rng, args.centers)
    return centers, f"{args.centers} random centres, independent bit flips p={args.flip}"


def write_shards(folder: Path, codes: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, len(codes), SHARD_ROWS)):
        part = codes[start:start + SHARD_ROWS]
        rows = range(start, start + len(part))
        write_code_shard(folder / f"part-{shard:05d}.parquet", model_id=MODEL_ID, bits=BITS,
                         image_ids=[f"c{i:09d}" for i in rows], paths=[f"img/{i:09d}.png" for i in rows],
                         codes=part, boxes=np.zeros((len(part), 4), np.int32),
                         labels=[("No Finding",)] * len(part))
    write_codes_manifest(folder, model_id=MODEL_ID, bits=BITS)


# -- measurement -------------------------------------------------------------------------------
def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p95_ms": round(float(np.percentile(a, 95)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4)}


def tie_aware_recall(distances: list[np.ndarray], exact_kth: np.ndarray, k: int) -> float:
    hits = [float((d[:k] <= kth).sum()) / k for d, kth in zip(distances, exact_kth)]
    return round(float(np.mean(hits)), 4)


class Raw:
    """faiss.IndexBinaryFlat as anyone would use it: search(q, k), FAISS's default OpenMP threads."""

    def __init__(self, codes: np.ndarray, omp: int | None):
        self.index = faiss.IndexBinaryFlat(BITS)
        self.index.add(codes)
        self.omp = omp or faiss.omp_get_max_threads()

    def search(self, q, k, **_) -> list[np.ndarray]:
        faiss.omp_set_num_threads(self.omp)
        D, _ = self.index.search(q.reshape(-1, BITS // 8), k)
        return list(D)


class Ours:
    def __init__(self, index: HammingIndex, params: dict):
        self.index, self.params = index, params

    def search(self, q, k, **_) -> list[np.ndarray]:
        faiss.omp_set_num_threads(1)
        return self.index.search(q, k, **self.params).distances


def measure(searchers: dict, queries: np.ndarray, rounds: int, block: int) -> dict[str, list[float]]:
    """Single-query latencies, interleaved: each round runs a block of queries on every searcher."""
    times = {name: [] for name in searchers}
    for r in range(rounds):
        for name, s in searchers.items():
            for j in range(block):
                q = queries[(r * block + j) % len(queries)]
                t = time.perf_counter()
                s.search(q, K)
                times[name].append((time.perf_counter() - t) * 1e3)
    return times


def batch_qps(searcher, queries: np.ndarray) -> float:
    searcher.search(queries[:8], K)
    t = time.perf_counter()
    searcher.search(queries, K)
    return round(len(queries) / (time.perf_counter() - t), 1)


# -- OpenMP study and build memory -------------------------------------------------------------
def busy_core(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import time\nend=time.time()+{seconds}\nwhile time.time()<end: pass"])


def omp_study(n: int, rng, queries: int = 100) -> dict:
    """Single-query latency of raw IndexBinaryFlat and of our flat with OpenMP 1 vs 2, idle vs one core busy."""
    codes = random_codes(rng, n)
    qs = random_codes(rng, queries)
    from medhash.index._search import ExactScan

    flat = faiss.IndexBinaryFlat(BITS)
    flat.add(codes)
    scans = {"1thread": ExactScan(flat, ThreadPolicy(search_threads=1)),
             "2threads_always": ExactScan(flat, ThreadPolicy(search_threads=2, fan_out="always",
                                                              min_rows_per_thread=n // 2)),
             "default_policy": ExactScan(flat, ThreadPolicy())}

    def timed(fn) -> dict:
        ms = []
        for q in qs:
            t = time.perf_counter()
            fn(q)
            ms.append((time.perf_counter() - t) * 1e3)
        return percentiles(ms)

    out = {}
    for state in ("as_is", "plus_spinner"):
        spinner = busy_core(120) if state == "plus_spinner" else None
        time.sleep(0.3)
        out[f"load_avg_before_{state}"] = os.getloadavg()
        try:
            for omp in (1, 2):
                faiss.omp_set_num_threads(omp)
                out[f"raw_flat_omp{omp}_{state}"] = timed(lambda q: flat.search(q[None], K))
            faiss.omp_set_num_threads(1)
            for name, scan in scans.items():
                out[f"medhash_flat_{name}_{state}"] = timed(lambda q: scan.search(q[None], K))
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    faiss.omp_set_num_threads(1)
    out["load_avg_at_end"] = os.getloadavg()
    out["note"] = ("single query, k=100; as_is = the machine as it was (other work may run: see load averages), "
                   "plus_spinner = one extra process spinning on a core during the measurement; "
                   "raw = faiss.IndexBinaryFlat.search, medhash = ExactScan (range scan + per-thread shards)")
    return out


BUILD_PROBE = r"""
import json, sys, time
import faiss, pyarrow, numpy
from medhash.index import BuildConfig, build_index

def status(key):  # VmHWM, not ru_maxrss: an exec'd child's ru_maxrss includes the parent's RSS at fork
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

base = status("VmRSS")
t = time.perf_counter()
m = build_index(sys.argv[1], sys.argv[2], BuildConfig(kind="flat"))
print(json.dumps({"seconds": time.perf_counter() - t, "baseline_rss_bytes": base,
                  "peak_rss_bytes": status("VmHWM"), "count": m.count}))
"""


def build_memory(codes_dir: Path, work: Path) -> dict:
    out = work / "mem-idx"
    # The probe imports medhash from this checkout, installed or not (PYTHONPATH, as `python -m` does for us).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", BUILD_PROBE, str(codes_dir), str(out)],
                          capture_output=True, text=True, check=True, env=env)
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    index_bytes = (out / "index.faiss").stat().st_size
    ids_bytes = (out / "ids.parquet").stat().st_size
    shutil.rmtree(out)
    probe["index_bytes"] = index_bytes
    probe["peak_over_baseline_bytes"] = probe["peak_rss_bytes"] - probe["baseline_rss_bytes"]
    probe["peak_over_baseline_vs_index"] = round(probe["peak_over_baseline_bytes"] / index_bytes, 3)
    probe["ids_parquet_bytes"] = ids_bytes
    probe["note"] = ("peak RSS (VmHWM) of a fresh `build_index(kind=flat)` process; baseline = RSS after importing "
                     "faiss, pyarrow, numpy and medhash.index; the build's own growth is peak - baseline")
    return probe


def parse_kind(spec: str) -> tuple[str, dict]:
    """"ivf:nlist=16384,nprobe=8" -> ("ivf", {"nlist": 16384, "nprobe": 8})."""
    kind, _, rest = spec.partition(":")
    return kind, {k: int(v) for k, v in (item.split("=") for item in rest.split("+") if item)}


def make_data(data: str, rng, n: int, centers: np.ndarray, args) -> np.ndarray:
    if data == "random":
        return random_codes(rng, n)
    if data == "realistic":
        return realistic_codes(n, seed=int(rng.integers(2**31)))[0]
    return clustered_codes(rng, n, centers, args.flip)


# -- one (n, data) cell ------------------------------------------------------------------------
def run_cell(n: int, data: str, codes: np.ndarray, queries: np.ndarray, args, work: Path) -> tuple[list, dict]:
    codes_dir = work / f"codes-{data}-{n}"
    t = time.perf_counter()
    write_shards(codes_dir, codes)
    notes = {"parquet_write_s": round(time.perf_counter() - t, 2)}

    truth = faiss.IndexBinaryFlat(BITS)
    truth.add(codes)
    faiss.omp_set_num_threads(2)
    exact_d, _ = truth.search(queries, K)
    del truth
    exact10, exact100 = exact_d[:, 9], exact_d[:, K - 1]

    if args.search_threads:  # everyone on the same number of threads
        searchers = {f"faiss_flat_raw_omp{args.search_threads}": Raw(codes, args.search_threads)}
        policy = ThreadPolicy(search_threads=args.search_threads)
    else:
        searchers, policy = {"faiss_flat_raw": Raw(codes, None), "faiss_flat_raw_omp1": Raw(codes, 1)}, ThreadPolicy()
    meta = {}
    kinds = [k for k in args.kinds if not (k.startswith("hnsw") and n > args.hnsw_max_n)]
    if len(kinds) < len(args.kinds):
        notes["skipped"] = f"hnsw above {args.hnsw_max_n} codes: single-threaded graph build takes too long here"
    for spec in kinds:
        kind, params = parse_kind(spec)
        name = kind if not params else f"{kind}[{','.join(f'{k}={v}' for k, v in params.items())}]"
        idx_dir = work / f"idx-{name}-{data}-{n}"
        t = time.perf_counter()
        build_index(codes_dir, idx_dir, BuildConfig(kind=kind, params=params, overwrite=True))
        build_s = time.perf_counter() - t
        index = HammingIndex(idx_dir, verify=False, policy=policy)
        searchers[name] = Ours(index, {})
        meta[name] = {"params": index.manifest.params, "build_s": round(build_s, 2),
                      "index_bytes": (idx_dir / "index.faiss").stat().st_size, "tuning": index.manifest.tuning,
                      "exact": kind in ("flat", "multihash")}
    shutil.rmtree(codes_dir)

    if "flat" in searchers:  # what reading the hits' image ids adds (the server reads whole records instead)
        lookups = []
        for q in queries[:200]:
            hits = searchers["flat"].index.search(q, K)[0]
            t = time.perf_counter()
            hits.image_ids
            lookups.append((time.perf_counter() - t) * 1000)
        notes["image_id_lookup_ms_p50"] = round(float(np.percentile(lookups, 50)), 4)

    notes["load_avg_before_timing"] = [round(x, 2) for x in os.getloadavg()]
    rounds = max(1, args.single_queries // args.block)
    times = measure(searchers, queries, rounds, args.block)
    rows = []
    for name, s in searchers.items():
        res100 = [s.search(q, K)[0] for q in queries[:args.recall_queries]]
        res10 = [s.search(q, 10)[0] for q in queries[:args.recall_queries]]
        row = {"n": n, "data": data, "kind": name, **percentiles(times[name]),
               "batch_qps": batch_qps(s, queries[:args.batch_queries]),
               "recall_at_10": tie_aware_recall(res10, exact10, 10),
               "recall_at_100": tie_aware_recall(res100, exact100, K)}
        row["batch_recall_at_100"] = tie_aware_recall(s.search(queries[:args.batch_queries], K),
                                                      exact_d[:args.batch_queries, K - 1], K)
        if name in meta:
            row.update(meta[name])
            if name == "multihash":
                row["flat_fallbacks"] = s.index._searcher.fallbacks
        row["threads"] = {"omp": s.omp} if isinstance(s, Raw) else {
            "omp": 1, "search_threads": s.index.policy.search_threads}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "tuning"}), flush=True)
    for name in meta:
        shutil.rmtree(work / f"idx-{name}-{data}-{n}", ignore_errors=True)
    notes["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return rows, notes


def machine() -> dict:
    import pyarrow

    return {**machine_info(), "pyarrow": pyarrow.__version__,
            "faiss_simd": faiss.SIMDConfig.get_level_name() if hasattr(faiss, "SIMDConfig") else None}


RUN_NOTES = ("started", "machine", "thread_policy", "seconds", "load_note", "merge_note", "merged_from")


def merge_previous(result: dict, previous: dict) -> None:
    """Carry over the previous file's cells that this run did not measure (and its build memory, OpenMP study)."""
    measured = {(r["n"], r["data"]) for r in result["rows"]}
    result["rows"] = [r for r in previous.get("rows", []) if (r["n"], r["data"]) not in measured] + result["rows"]
    result["rows"].sort(key=lambda r: (r["n"], r["data"] != "random"))
    for key, notes in previous.get("cells", {}).items():
        if key not in result["cells"]:
            result["cells"][key] = {**notes, "measured": notes.get("measured", previous.get("started"))}
    for key in ("build_memory", "build_memory_history", "omp_study"):
        if key not in result and key in previous:
            result[key] = previous[key]
    # The carried rows were measured under the earlier runs' machine state and load: keep those notes.
    earlier = {key: previous[key] for key in RUN_NOTES if key in previous}
    result["previous_runs"] = previous.get("previous_runs", []) + [earlier]
    for key, note in previous.get("data_note", {}).items():
        result.setdefault("data_note", {}).setdefault(key, note)
    result["merged_from"] = previous.get("started")


def update_build_memory(out: Path, n: int, rng, work: Path) -> None:
    result = json.loads(out.read_text())
    write_shards(work / "mem-codes", random_codes(rng, n))
    try:
        entry = {"n": n, **build_memory(work / "mem-codes", work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    entry["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry["medhash_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True).stdout.strip()
    result.setdefault("build_memory_history", []).append(result.get("build_memory"))
    result["build_memory"] = entry
    write_result(out, result)
    print(json.dumps({"build_memory": entry}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000",
                    help="comma-separated code counts ('' runs only the OpenMP study)")
    ap.add_argument("--data", default="random,clustered")
    ap.add_argument("--kinds", default="flat,multihash,ivf,hnsw",
                    help="comma-separated; a kind may carry build parameters: ivf:nlist=16384+train_per_list=16")
    ap.add_argument("--search-threads", type=int, default=0,
                    help="threads for every searcher, medhash and raw FAISS alike (0: medhash's default policy, "
                         "raw FAISS with its default OpenMP threads and with 1)")
    ap.add_argument("--single-queries", type=int, default=200)
    ap.add_argument("--block", type=int, default=25, help="queries per kind per interleaved round")
    ap.add_argument("--batch-queries", type=int, default=500)
    ap.add_argument("--recall-queries", type=int, default=100)
    ap.add_argument("--hnsw-max-n", type=int, default=1_000_000)
    ap.add_argument("--centers", type=int, default=4096)
    ap.add_argument("--flip", type=float, default=0.06, help="bit-flip probability around each centre")
    ap.add_argument("--clustered-codes", help="codes folder whose codes become the cluster centres")
    ap.add_argument("--memory-n", type=int, default=None, help="build-memory size (default: the largest size; 0 skips)")
    ap.add_argument("--merge", action="store_true",
                    help="keep --out's rows of the (n, data) cells not measured in this run (each cell records its run)")
    ap.add_argument("--update-build-memory", action="store_true",
                    help="only re-measure build memory at --memory-n and replace that entry of --out (rows kept)")
    ap.add_argument("--omp-study-n", type=int, default=1_000_000)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--out", default=str(RESULTS / "search_latency.json"))
    args = ap.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rng = np.random.default_rng(0)
    work = Path(args.work or tempfile.mkdtemp(prefix="medhash-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started, load_start = time.time(), os.getloadavg()

    result = {"machine": machine(), "k": K, "bits": BITS, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "thread_policy": ThreadPolicy().__dict__, "rows": [], "cells": {}}
    if args.update_build_memory:  # memory does not depend on the machine's load; latency rows do
        update_build_memory(Path(args.out), args.memory_n or max(sizes, default=10_000_000), rng, work)
        return
    centers, clustered_note = load_centers(args, rng)
    result["data_note"] = {"random": "uniform random 64-bit codes", "clustered": clustered_note,
                           "realistic": "benchmarks.realistic_codes: Bernoulli mixture fitted to NIH dev-set model codes",
                           "queries": "fresh draws from the same distribution (not indexed codes)"}
    if "realistic" in args.data:
        result["data_note"]["realistic_check"] = validate()
        print(json.dumps({"realistic_check": result["data_note"]["realistic_check"]}), flush=True)
    if args.omp_study_n:
        result["omp_study"] = omp_study(args.omp_study_n, rng)
        print(json.dumps({"omp_study": result["omp_study"]}), flush=True)
    memory_n = max(sizes, default=0) if args.memory_n is None else args.memory_n
    try:
        for n in sizes:
            for data in [d for d in args.data.split(",") if d]:
                codes = make_data(data, rng, n, centers, args)
                queries = make_data(data, rng, 1000, centers, args)
                if data == "random" and n == memory_n:
                    write_shards(work / "mem-codes", codes)
                    result["build_memory"] = {"n": n, **build_memory(work / "mem-codes", work)}
                    shutil.rmtree(work / "mem-codes")
                    print(json.dumps({"build_memory": result["build_memory"]}), flush=True)
                rows, notes = run_cell(n, data, codes, queries, args, work)
                result["rows"].extend(rows)
                result["cells"][f"{data}-{n}"] = notes
                del codes
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.time() - started, 1)
    result["load_note"] = (
        f"2-core machine shared with other work: 1/5/15-min load averages {tuple(round(x, 2) for x in load_start)} "
        f"at start and {tuple(round(x, 2) for x in os.getloadavg())} at the end. Single-query latencies are measured "
        "in interleaved blocks so that load hits every kind alike; absolute numbers vary with that load.")
    for notes in result["cells"].values():
        notes["measured"] = result["started"]
    if args.merge and Path(args.out).exists():
        merge_previous(result, json.loads(Path(args.out).read_text()))
    write_result(args.out, result)
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
