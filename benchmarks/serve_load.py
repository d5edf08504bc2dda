"""Load on a real `medhash serve`: 2,000 image searches at concurrency 16 over HTTP, against the same in process.

    python -m benchmarks.serve_load
    python -m benchmarks.serve_load --requests 200

The archive is the test suite's (medhash.app.fixtures.make_served_archive: 48 phantoms of 64x64, a
tiny untrained model, a flat index of 32-bit codes), built in a temp folder. `medhash serve` runs as
a subprocess on 127.0.0.1 (a free port; engine fp32; every core); the load comes from this process
through the bench library's HttpClient (httpx, keep-alive, 16 connections): image uploads cycling
through the 48 phantoms, k = 10. The baseline sends the same requests to a SearchService opened in
this process (InProcessClient, same engine and threads): what the server costs without HTTP. Each
run is preceded by 64 warm-up requests that are not counted.
Output: benchmarks/results/serve_load.json (the HTTP figures at the top level).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import RESULTS, write_result
from medhash.app.fixtures import make_served_archive
from medhash.bench.clients import HttpClient, InProcessClient
from medhash.bench.load import run_load
from medhash.bench.machine import machine_info
from medhash.bench.queries import load_query_set
from medhash.bench.run import image_search
from medhash.model import ModelConfig
from medhash.serve.background import free_port

WARMUP = 64
KEYS = ("requests", "failed", "concurrency", "p50_ms", "p95_ms", "p99_ms", "throughput_rps")


def start_server(archive, port: int, engine: str, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "medhash", "serve", "--index", str(archive.index_dir), "--model",
               str(archive.model_path), "--archive-root", str(archive.root), "--host", "127.0.0.1", "--port", str(port),
               "--engine", engine]
    with open(log_path, "wb") as log:  # a file, not a pipe: nobody reads a pipe during the load, and a full one blocks
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"medhash serve exited with {server.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError("medhash serve did not answer /healthz within 120 s")


async def measure(client, queries, requests: int, concurrency: int) -> dict:
    call = image_search(client, queries, 10)
    await run_load(call, WARMUP, concurrency)
    try:
        return (await run_load(call, requests, concurrency, time_limit_s=600)).summary()
    finally:
        await client.aclose()


def batching_study(requests: int, concurrency: int) -> dict:
    """Does batching concurrent uploads lower latency under load? In process, a DenseNet-121 model at 128 px
    (untrained: speed does not depend on the weights), the fastest engine, max_batch 1 vs 16."""
    model = ModelConfig(backbone="densenet121", global_size=128, local_size=128)
    out = {"model": "densenet121 global/local 128 px, engine auto", "requests": requests, "concurrency": concurrency}
    with tempfile.TemporaryDirectory(prefix="medhash-batching-") as tmp:
        archive = make_served_archive(Path(tmp), n=32, bits=64, model=model, image_size=256)
        queries = load_query_set(archive.labels_csv)
        for max_batch in (1, 16):
            client = InProcessClient.open(str(archive.index_dir), str(archive.model_path), max_batch=max_batch)
            out[f"max_batch_{max_batch}"] = asyncio.run(measure(client, queries, requests, concurrency))
    one, many = out["max_batch_1"], out["max_batch_16"]
    out["p50_ratio_unbatched_over_batched"] = round(one["p50_ms"] / many["p50_ms"], 3)
    out["throughput_ratio_batched_over_unbatched"] = round(many["throughput_rps"] / one["throughput_rps"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engine", default="fp32")
    parser.add_argument("--batching-requests", type=int, default=320,
                        help="requests per arm of the batching study (0 skips it)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="medhash-serve-load-") as tmp:
        archive = make_served_archive(Path(tmp))
        queries = load_query_set(archive.labels_csv)
        port = free_port()
        server = start_server(archive, port, args.engine, Path(tmp) / "serve.log")
        try:
            http = asyncio.run(measure(HttpClient(f"http://127.0.0.1:{port}", connections=args.concurrency), queries,
                                       args.requests, args.concurrency))
        finally:
            server.terminate()
            server.wait(timeout=30)
        in_process = InProcessClient.open(str(archive.index_dir), str(archive.model_path), engine=args.engine)
        baseline = asyncio.run(measure(in_process, queries, args.requests, args.concurrency))

    result = {key: http[key] for key in KEYS}
    result["http"] = http
    result["baseline_in_process"] = baseline
    result["http_overhead_ratio"] = round(http["p50_ms"] / baseline["p50_ms"], 3) if baseline["p50_ms"] else None
    if args.batching_requests:
        result["batching"] = batching_study(args.batching_requests, args.concurrency)
    result["machine"] = machine_info()
    result["note"] = (
        f"{args.requests} POST /v1/search image uploads (48 phantoms of 64x64 cycled, k=10) at concurrency "
        f"{args.concurrency} against `medhash serve` (subprocess, 127.0.0.1, engine {args.engine}, all "
        f"{os.cpu_count()} cores, tiny untrained model, flat index of 48 32-bit codes), client in a separate process "
        "(httpx); baseline_in_process: the same requests to SearchService in the client's process (no HTTP). "
        f"{WARMUP} warm-up requests before each, not counted. Latency is per request from the client's side; "
        "throughput = completed / wall time. The client and the server share the machine's cores."
    )
    write_result(args.out, result)
    print({key: result[key] for key in KEYS}, "baseline p50", baseline["p50_ms"], "ratio", result["http_overhead_ratio"])


if __name__ == "__main__":
    main()
