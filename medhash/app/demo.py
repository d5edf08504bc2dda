"""`medhash demo`: the whole chain on embedded synthetic phantoms, in a few minutes on 2 CPU cores.

phantoms -> read back -> train a small model -> evaluate (tie-aware mAP, pointing game)
-> encode every image with the Dask pipeline -> build a FAISS index -> query with overlays
-> serve the index over HTTP for a moment and benchmark it (quality and latency) -> report.html.
Each stage is a library call; this module only strings them together and prints.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medhash.app.demo_report import write_demo_report
from medhash.app.evaluate import EvaluateConfig, evaluate_model
from medhash.app.query import query_images
from medhash.atomic import write_text_atomic
from medhash.bench.run import BenchConfig, run_bench
from medhash.data import read_image, read_label_table
from medhash.data.phantoms import PhantomConfig, write_phantom_dataset
from medhash.index import BuildConfig, build_index
from medhash.model import ModelConfig
from medhash.pipeline import EncodeJobConfig, run_encode
from medhash.serve import SearchService, ServeConfig
from medhash.serve.background import serve_in_background
from medhash.train import TrainConfig, train

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    out: str = "demo-out"
    n_phantoms: int = 600
    image_size: int = 128
    bits: int = 32
    seed: int = 0
    epoch_scale: float = 1.0  # fraction of the training epochs below (tests run a shortened demo)
    bench_requests: int = 96  # benchmark requests per concurrency level

    def epochs(self, full: int) -> int:
        return max(1, round(full * self.epoch_scale)) if self.epoch_scale > 0 else 0


def run_demo(config: DemoConfig, echo: Callable[[str], None] = print) -> dict:
    out = Path(config.out).resolve()  # absolute: the index records these paths and the server resolves them
    summary: dict = {}
    t0 = time.perf_counter()

    echo(f"[1/7] generating {config.n_phantoms} phantom radiographs ({config.image_size} px) in {out / 'phantoms'}")
    data = write_phantom_dataset(out / "phantoms", config.n_phantoms, PhantomConfig(size=config.image_size, seed=config.seed))
    table = read_label_table(data / "labels.csv")
    pixels = np.stack([read_image(r.path) for r in table.records[:16]])
    summary["phantoms"] = {"images": len(table), "problems": len(table.problems),
                           "classes": {k: v for k, v in table.class_counts().items() if v}}
    echo(f"      read back {len(table)} images, {len(table.problems)} problems; pixel mean {pixels.mean():.3f}")
    classes = ", ".join(f"{name} {count}" for name, count in summary["phantoms"]["classes"].items())
    for line in textwrap.wrap(f"classes: {classes}", 110):
        echo(f"      {line}")

    echo(f"[2/7] training a small {config.bits}-bit model (global -> saliency crop -> local -> hash head)")
    model_path = out / "model.pt"
    model = ModelConfig(backbone="tiny", bits=config.bits, global_size=64, local_size=64, fusion_dim=128)
    result = train(TrainConfig(labels=str(data / "labels.csv"), out=str(model_path), model=model, load_size=config.image_size,
                               epochs_global=config.epochs(10), epochs_local=config.epochs(6),
                               epochs_hash=config.epochs(40), lr=1e-3, val_folds=(4,), seed=config.seed))
    summary["train"] = {"model_id": result.model_id, "val_map_tie_aware": result.val_map, "seconds": result.seconds.get("total")}
    val_map = f"{result.val_map:.4f}" if result.val_map is not None else "n/a"
    echo(f"      model {result.model_id}: validation tie-aware mAP {val_map} in {result.seconds.get('total', 0):.0f} s")

    echo("[3/7] evaluating: fold 4 queries against folds 0-3, Hamming ranking")
    report = evaluate_model(EvaluateConfig(model=str(model_path), labels=str(data / "labels.csv"), query_folds=(4,),
                                           boxes=(str(data / "boxes.csv"),)))
    r = report["retrieval"]
    loc = report["localization"]["boxes.csv"]
    summary["evaluate"] = {"map_tie_aware": r["map_tie_aware"], "map_stable": r["map_stable"], "p_at_10": r["p_at_k"]["10"],
                           "pointing_game": loc.get("pointing_game"), "boxed_images": loc["n_images"]}
    echo(f"      mAP (tie-aware) {r['map_tie_aware']:.4f}, stable order {r['map_stable']:.4f}, P@10 {r['p_at_k']['10']:.4f}; "
         f"pointing game {loc.get('pointing_game', float('nan')):.3f} on {loc['n_images']} boxed phantoms")

    echo("[4/7] encoding every phantom with the Dask pipeline into sharded Parquet")
    job = run_encode(EncodeJobConfig(model=str(model_path), out=str(out / "codes"), inputs=(str(data / "images"),),
                                     labels=str(data / "labels.csv"), shard_size=200, workers=1,
                                     dashboard=False, overwrite=True))
    summary["encode"] = {"encoded": job.encoded, "failed": job.failed, "shards": job.shards, "images_per_s": job.images_per_s}
    echo(f"      {job.encoded} encoded, {job.failed} failed, {job.shards} shards, {job.images_per_s:.0f} images/s")

    echo("[5/7] building a FAISS binary index (flat, exact)")
    manifest = build_index(out / "codes", out / "index", BuildConfig(kind="flat", overwrite=True))
    summary["index"] = {"kind": manifest.kind, "count": manifest.count}
    echo(f"      {manifest.count} codes in {out / 'index'}")

    echo("[6/7] querying with three fold-4 images (saliency overlays in overlays/)")
    queries = [r for r in table.records if r.fold == 4][:3]
    results = query_images(out / "index", model_path, [r.path for r in queries], k=5, overlay_dir=out / "overlays")
    precisions = []
    for rec, res in zip(queries, results):
        hits = [h for h in res.hits if h.image_id != rec.image_id][:5]
        shared = [bool(set(h.labels) & set(rec.labels)) for h in hits]
        precisions.append(float(np.mean(shared)) if shared else 0.0)
        echo(f"      {rec.image_id} [{'|'.join(rec.labels)}] box {res.box}")
        for h in hits:
            echo(f"        #{h.rank} {h.image_id} d={h.distance:>2} [{'|'.join(h.labels)}]")
    summary["query"] = {"precision_at_5": float(np.mean(precisions)), "overlays": len(list((out / "overlays").glob("*.png")))}

    echo("[7/7] serving the index on 127.0.0.1 for a moment and benchmarking it over HTTP (medhash bench --url)")
    bench = serve_and_bench(out, data / "labels.csv", model_path, config.bench_requests)
    summary["bench"] = bench_summary(bench)
    q, lat = summary["bench"], {r["concurrency"]: r for r in bench["latency"]["end_to_end"]}
    echo(f"      mAP over HTTP {q['map_tie_aware']:.4f} ({q['n_queries']} fold-4 queries, whole archive ranked); "
         "end-to-end latency (upload, decode, encode, search):")
    for c, row in lat.items():
        echo(f"        concurrency {c:>2}: p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, "
             f"{row['throughput_rps']:.0f} req/s, {row['failed']} failed")
    summary["bits"] = config.bits
    report = write_demo_report(out, summary, list(zip(queries, results)), bench)
    summary["seconds"] = time.perf_counter() - t0
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    e2e1 = lat[min(lat)]
    echo(f"done in {summary['seconds']:.0f} s: mAP {r['map_tie_aware']:.4f} (tie-aware), query P@5 "
         f"{summary['query']['precision_at_5']:.2f}, search latency p50 {e2e1['p50_ms']:.1f} ms end to end.\n"
         f"open {report} for the overlays, hits and plots\nsummary in {out / 'summary.json'}")
    return summary


def fold_table(labels_csv: Path, fold: int, out: Path) -> Path:
    """The rows of one fold of a phantom label table (the demo's labeled query set)."""
    with open(labels_csv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [row for row in reader if row.get("dev_fold") == str(fold)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(out, buffer.getvalue())
    return out


def serve_and_bench(out: Path, labels_csv: Path, model_path: Path, requests: int = 96) -> dict:
    """`medhash serve` in a background thread on a free loopback port, measured by `medhash bench --url`."""
    queries = fold_table(labels_csv, 4, out / "queries-fold4.csv")
    service = SearchService.open(ServeConfig(index=str(out / "index"), model=str(model_path), archive_root=str(out)))
    with serve_in_background(service) as url:
        return run_bench(BenchConfig(queries=str(queries), out=str(out / "bench"), url=url, image_root=str(labels_csv.parent),
                                     concurrency=(1, 4, 16), requests=requests, time_limit_s=120))


def bench_summary(bench: dict) -> dict:
    q = bench["quality"]
    return {"map_tie_aware": q.get("map_tie_aware"), "n_queries": q.get("n_queries"),
            "latency": {name: [{key: r[key] for key in ("concurrency", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "failed")}
                               for r in levels] for name, levels in bench["latency"].items()}}
