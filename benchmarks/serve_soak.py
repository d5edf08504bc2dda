"""Soak a real `medhash serve` with a hostile mix of uploads: no 5xx, and memory that does not grow.

    python -m benchmarks.serve_soak                              # DenseNet-121, 10 minutes, concurrency 16
    python -m benchmarks.serve_soak --model tiny --seconds 20    # a smoke run

The archive is medhash.app.fixtures.make_served_archive (phantoms, an untrained model: speed and memory do
not depend on the weights, and a flat index); `medhash serve` runs as a subprocess on 127.0.0.1 (every
core, engine fp32). Workers keep `--concurrency` requests in flight for `--seconds`, cycling through:
good uploads (the archived phantoms), code searches with ties, undecodable bytes, a truncated PNG, and a
decompression bomb (a ~50 KB PNG declaring 7000x7000 pixels, refused from its header with 413).
The server's resident memory is read from /proc after a warm-up (rss_start_mb) and at the end
(rss_end_mb); the acceptance is zero 5xx and rss_end within 10% of rss_start.
Output: benchmarks/results/serve_soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, write_result
from benchmarks.serve_load import start_server
from medhash.app.fixtures import TINY_MODEL, make_served_archive
from medhash.bench.machine import machine_info
from medhash.model import ModelConfig
from medhash.serve.background import free_port

WARMUP = 64
MODELS = {
    "tiny": (TINY_MODEL, 64),  # (model config, phantom side in pixels)
    "densenet121": (ModelConfig(backbone="densenet121"), 256),
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def request_mix(archive) -> list[tuple[str, dict]]:
    """(kind, httpx request arguments) in the order the workers cycle through them."""
    good = [("good", {"files": {"image": (p.name, p.read_bytes(), "image/png")}}) for p in archive.image_paths[:16]]
    truncated = archive.image_paths[0].read_bytes()[:200]
    bad = [
        ("bad_bytes", {"files": {"image": ("noise.png", np.random.default_rng(0).bytes(4096), "image/png")}}),
        ("truncated", {"files": {"image": ("cut.png", truncated, "image/png")}}),
        ("oversized", {"files": {"image": ("bomb.png", _png(Image.new("L", (7000, 7000))), "image/png")}}),
        ("code_ties", {"data": {"code": "00" * 4, "k": "5", "with_ties": "true"}}),
    ]
    # Two good uploads for each hostile one.
    return [item for pair in itertools.zip_longest(good, bad * 4) for item in pair if item]


async def soak(url: str, mix: list[tuple[str, dict]], seconds: float, concurrency: int, pid: int) -> dict:
    statuses: Counter = Counter()
    latencies: list[float] = []
    cycle = itertools.cycle(mix)

    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(deadline: float, record: bool) -> None:
            while time.monotonic() < deadline and (record or warm_left[0] > 0):
                warm_left[0] -= 1
                kind, kwargs = next(cycle)
                t0 = time.perf_counter()
                try:
                    response = await client.post("/v1/search", **kwargs)
                    status = response.status_code
                except httpx.TransportError as exc:
                    status = f"transport:{type(exc).__name__}"
                if record:
                    latencies.append(time.perf_counter() - t0)
                    statuses[(kind, status)] += 1

        warm_left = [WARMUP]  # requests before the memory baseline (not counted)
        await asyncio.gather(*(worker(time.monotonic() + 600, False) for _ in range(concurrency)))
        rss_start = rss_mb(pid)
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(worker(deadline, True) for _ in range(concurrency)))
    rss_end = rss_mb(pid)
    ms = np.array(latencies) * 1000
    failed_5xx = sum(n for (_, status), n in statuses.items() if isinstance(status, str) or status >= 500)
    return {
        "requests": len(latencies),
        "failed_5xx": failed_5xx,
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "statuses": {f"{kind} {status}": n for (kind, status), n in sorted(statuses.items(), key=str)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="densenet121")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_soak.json")
    args = parser.parse_args()

    model, side = MODELS[args.model]
    with tempfile.TemporaryDirectory(prefix="medhash-soak-") as tmp:
        archive = make_served_archive(Path(tmp), n=48, bits=32, model=model, image_size=side)
        port = free_port()
        server = start_server(archive, port, "fp32", Path(tmp) / "server.log")
        try:
            result = asyncio.run(soak(f"http://127.0.0.1:{port}", request_mix(archive), args.seconds,
                                      args.concurrency, server.pid))
        finally:
            server.terminate()
            server.wait(timeout=60)
    result = {**result, "model": args.model, "seconds": args.seconds, "concurrency": args.concurrency,
              "machine": machine_info()}
    write_result(args.out, result)
    print({key: result[key] for key in ("requests", "failed_5xx", "rss_start_mb", "rss_end_mb", "p50_ms", "p99_ms")})


if __name__ == "__main__":
    main()
