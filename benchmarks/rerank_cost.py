"""What re-ranking the Hamming shortlist costs a single query: `rerank=N` (N = 100, 1000) against plain
Hamming top-k on the same flat index, one thread.

    python -m benchmarks.rerank_cost                 # 1M codes, 64 bits -> benchmarks/results/rerank_cost.json
    python -m benchmarks.rerank_cost --n 100000 --out /tmp/rerank_cost.json

Data: clustered 64-bit codes (random centres with bit flips, as benchmarks/search_latency.py) whose
hash values are tanh-like magnitudes carrying each code's signs, so the codes are the signs of the
values, as the encoder's are; queries are drawn the same way. The index is built by `build_index`
from a codes folder with a hash_values column, so the values file is the one `medhash index build`
writes (float16, memory-mapped by HammingIndex). Latencies are per single query through
`HammingIndex.search`, the variants interleaved in blocks so that load from other work hits them
alike, after a warm-up pass that brings hash_values.npy into the page cache (a cold cache adds
one random read per shortlisted row). FAISS and the scan use one thread.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, write_result
from medhash.bench.machine import machine_info
from medhash.codes_format import write_code_shard, write_codes_manifest
from medhash.index import BuildConfig, HammingIndex, ThreadPolicy, build_index

BITS = 64
K = 10
RERANKS = (100, 1000)
MODEL_ID = "benchmark-synthetic"
SHARD_ROWS = 250_000


def synthetic(rng, n: int, centers: np.ndarray, flip: float) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [n, 8], values float16 [n, 64]): values' signs are the codes' bits."""
    signs = np.unpackbits(centers[rng.integers(0, len(centers), n)], axis=1).astype(bool)
    signs ^= rng.random((n, BITS)) < flip
    magnitude = np.tanh(rng.gamma(2.0, 0.8, (n, BITS))).astype(np.float16)
    values = np.where(signs, magnitude, -magnitude).astype(np.float16)
    return np.packbits(signs, axis=1), values


def write_codes(folder: Path, rng, n: int, centers: np.ndarray, flip: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, n, SHARD_ROWS)):
        m = min(SHARD_ROWS, n - start)
        codes, values = synthetic(rng, m, centers, flip)
        ids = [f"c{i:09d}" for i in range(start, start + m)]
        write_code_shard(folder / f"part-{shard:05d}.parquet", model_id=MODEL_ID, bits=BITS, image_ids=ids,
                         paths=ids, codes=codes, boxes=np.zeros((m, 4), np.int32), hash_values=values)
    write_codes_manifest(folder, model_id=MODEL_ID, bits=BITS)


def measure(index: HammingIndex, codes: np.ndarray, values: np.ndarray, rounds: int, block: int) -> dict[str, list]:
    variants = {"hamming": None, **{f"rerank_{n}": n for n in RERANKS}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, n in variants.items():
            for j in range(block):
                q = (r * block + j) % len(codes)
                t = time.perf_counter()
                index.search(codes[q], K, rerank=n, query_values=values[q] if n else None)
                times[name].append((time.perf_counter() - t) * 1e3)
    return times


def summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {name: round(float(np.percentile(a, p)), 4) for name, p in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="Codes in the index.")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20, help="Interleaved rounds (each: a block per variant).")
    parser.add_argument("--centers", type=int, default=1000)
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=RESULTS / "rerank_cost.json")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temp folder, removed).")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    centers = rng.integers(0, 256, (args.centers, BITS // 8), dtype=np.uint8)
    work = Path(args.work or tempfile.mkdtemp(prefix="rerank-cost-"))
    try:
        t0 = time.perf_counter()
        write_codes(work / "codes", rng, args.n, centers, args.flip)
        build_index(work / "codes", work / "idx", BuildConfig(kind="flat", overwrite=True))
        setup_s = time.perf_counter() - t0
        policy = ThreadPolicy(omp_threads=1, search_threads=1, fan_out="never")
        index = HammingIndex(work / "idx", verify=False, policy=policy)
        codes, values = synthetic(rng, args.queries, centers, args.flip)
        values = values.astype(np.float32)
        shortlists = [len(index.search(codes[q], n, with_ties=True)[0]) for q in range(len(codes)) for n in RERANKS]
        measure(index, codes, values, 1, len(codes))  # warm-up: code and value pages in the cache
        block = max(1, len(codes) // args.rounds)
        times = measure(index, codes, values, args.rounds, block)
        latency = {name: summary(ms) for name, ms in times.items()}
        base = latency["hamming"]["p50_ms"]
        result = {
            "benchmark": "rerank_cost",
            "machine": machine_info(),
            "setup": {"n": args.n, "bits": BITS, "k": K, "queries": args.queries, "rounds": args.rounds,
                      "data": f"{args.centers} random centres, bit flips p={args.flip}; values carry the codes' signs",
                      "threads": "1 (FAISS OpenMP 1, no fan-out)", "index": "flat", "values_cache": "warm",
                      "setup_s": round(setup_s, 1)},
            "shortlist_size_mean": {f"rerank_{n}": round(float(np.mean(shortlists[i::len(RERANKS)])), 1)
                                    for i, n in enumerate(RERANKS)},
            "latency": latency,
            "p50_over_hamming": {name: round(v["p50_ms"] / base, 2) for name, v in latency.items()},
            "p50_added_ms": {name: round(v["p50_ms"] - base, 4) for name, v in latency.items()},
        }
        write_result(args.out, result)
        print(f"wrote {args.out}")
        for name, v in latency.items():
            print(f"{name:<12} p50 {v['p50_ms']:.3f} ms  p95 {v['p95_ms']:.3f} ms  p99 {v['p99_ms']:.3f} ms")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
