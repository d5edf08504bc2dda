"""`run_encode(EncodeJobConfig) -> EncodeSummary`: the whole encoding job, resumable.

1. Read the checkpoint's model_id and bits (the driver never builds the model).
2. Plan: list and sort the inputs, cut them into shards, write `_plan.json` (or replay the stored
   plan of an earlier run into the same folder, refusing one made for another model or job).
3. Skip shards whose outputs are complete and valid; delete leftovers of the others.
4. One Dask task per remaining shard (`client.submit(..., retries=N)`); a task lost with its worker
   is rerun by the scheduler (up to `distributed.scheduler.allowed-failures` times).
5. `_manifest.json` once every shard is done: counts (inputs = encoded + failed), shard list, timing.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medhash.codes_format import MANIFEST_FILE, CodesManifest, shard_model_id, write_manifest
from medhash.errors import PipelineError
from medhash.pipeline.cluster import ClusterRequest, dashboard_link, dask_client, torch_threads_by_host
from medhash.pipeline.inputs import InputOptions, collect_items
from medhash.pipeline.output import ShardFiles, ShardStats, complete_shard_stats
from medhash.pipeline.plan import PLAN_FILE, JobPlan, OutputSpec, ShardPlan, check_same_job, cut_into_shards, read_plan, write_plan
from medhash.pipeline.progress import JobProgress
from medhash.pipeline.shard import EncoderSpec, ShardJob, run_shard_task

log = logging.getLogger(__name__)

# Files of ours in an output folder (what --overwrite removes), and temp files of interrupted writes.
OWN_FILE_PATTERNS = ("part-*.parquet", "part-*.stats.json", PLAN_FILE, MANIFEST_FILE)
STALE_TEMP_PATTERNS = (".part-*.tmp", f".{PLAN_FILE}.*.tmp", f".{MANIFEST_FILE}.*.tmp")
# Test hook: the driver SIGKILLs itself after this many shards finished (a job killed half-way).
FAULT_KILL_DRIVER_AFTER = "_MEDHASH_TEST_KILL_DRIVER_AFTER_SHARDS"


@dataclass(frozen=True)
class EncodeJobConfig:
    model: str | Path  # checkpoint
    out: str | Path  # output folder
    inputs: tuple[str, ...]  # folders, globs, path lists, .tar shards, .parquet tables
    labels: str | Path | None = None  # label table whose labels travel into the output
    image_root: str | Path | None = None  # where the table's relative paths resolve
    shard_size: int = 256
    workers: int | None = None  # LocalCluster worker processes (None: cluster.default_workers)
    threads_per_worker: int = 1  # Dask task slots per worker
    torch_threads: int | None = None  # per task (None: host cores / task slots on the host)
    scheduler: str | None = None  # tcp://HOST:PORT of a running cluster (None: start a LocalCluster)
    device: str = "cpu"  # cpu | cuda
    engine: str = "auto"  # a name in medhash.model.encoder.ENGINES, or auto
    batch_size: int = 32
    decode_threads: int = 2  # per task
    store_features: bool = False
    overwrite: bool = False
    bytes_column: str | None = None  # Parquet inputs: column with the image bytes
    id_column: str | None = None  # Parquet inputs: column with the image ids
    retries: int = 2  # reruns of a shard task that raised
    tune_malloc: bool = True  # workers reuse freed activation memory (medhash.pipeline.malloc)
    progress: bool = True
    dashboard: bool = True


@dataclass
class EncodeSummary:
    out_dir: Path
    manifest: Path
    model_id: str
    bits: int
    engine: str
    inputs: int
    encoded: int
    failed: int
    shards: int
    shards_skipped: int  # complete from an earlier run
    shards_run: int
    seconds: float  # wall time of this call
    images_per_s: float  # items handled by this run's tasks / time from submit to the last result
    dashboard: str | None = None
    failed_by_kind: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ setup


def _checkpoint_identity(path: str | Path) -> tuple[str, int]:
    from medhash.model.checkpoint import read_checkpoint

    payload = read_checkpoint(path)
    return payload["model_id"], int(payload["model_config"]["bits"])


def _resolve_engine(engine: str, device: str) -> str:
    import torch

    from medhash.model.encoder import ENGINES
    from medhash.model.runtime import default_precision

    if engine == "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            return "bf16"  # GPUs of a remote cluster, unseen from here: bf16 runs on every GPU since Ampere
        return default_precision(torch.device(device))
    if engine not in ENGINES:
        raise PipelineError(f"unknown engine {engine!r}; choose auto or one of {sorted(ENGINES)}")
    if engine == "fp16" and not device.startswith("cuda"):
        raise PipelineError("engine fp16 runs on CUDA only; use bf16 or fp32 on the CPU")
    return engine


def _check_device(config: EncodeJobConfig) -> None:
    if config.device.split(":")[0] not in ("cpu", "cuda"):
        raise PipelineError(f"device must be cpu or cuda, got {config.device!r}")
    if config.device.startswith("cuda") and config.scheduler is None:
        import torch

        if not torch.cuda.is_available():
            raise PipelineError("--device cuda: no CUDA device is visible on this machine")


def _request(config: EncodeJobConfig) -> dict[str, Any]:
    """The options that decide the item list and shards: a rerun must repeat them to resume."""
    absolute = lambda p: None if p is None else os.path.abspath(p)  # noqa: E731
    return {
        "inputs": [absolute(p) for p in config.inputs],
        "labels": absolute(config.labels),
        "image_root": absolute(config.image_root),
        "shard_size": config.shard_size,
        "bytes_column": config.bytes_column,
        "id_column": config.id_column,
    }


def _remove(out_dir: Path, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for path in out_dir.glob(pattern):
            path.unlink()


def _refuse_unplanned_outputs(out_dir: Path, model_id: str) -> None:
    parts = sorted(out_dir.glob("part-*.parquet"))
    if not parts:
        return
    foreign = sorted({mid for p in parts if (mid := shard_model_id(p)) and mid != model_id})
    if foreign:
        raise PipelineError(f"{out_dir} holds codes of model(s) {', '.join(foreign)}; this checkpoint is model {model_id}. "
                            "Use another --out, or --overwrite to replace them")
    raise PipelineError(f"{out_dir} holds part files but no {PLAN_FILE}, so they cannot be matched to shards; "
                        "use --overwrite or an empty folder")


def _plan_job(config: EncodeJobConfig, out_dir: Path, output: OutputSpec) -> JobPlan:
    request = _request(config)
    stored = read_plan(out_dir)
    if stored is not None:
        check_same_job(stored, output, request, out_dir)
        return stored
    _refuse_unplanned_outputs(out_dir, output.model_id)
    table = None
    if config.labels is not None:
        from medhash.data.labels import read_label_table

        table = read_label_table(config.labels, config.image_root, check_files=False)
    items = collect_items(config.inputs, table, InputOptions(config.bytes_column, config.id_column))
    if not items:
        raise PipelineError(f"no images found in {', '.join(map(str, config.inputs))}")
    plan = JobPlan(output, request, cut_into_shards(items, config.shard_size))
    write_plan(out_dir, plan)  # before any work: a rerun replays exactly these shards
    return plan


# ------------------------------------------------------------------------------------------ running


def _kill_driver_for_tests(finished: int) -> None:
    limit = os.environ.get(FAULT_KILL_DRIVER_AFTER)
    if limit and finished >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def _run_shards(config: EncodeJobConfig, out_dir: Path, output: OutputSpec, pending: list[ShardPlan],
                done_before: int, total_shards: int) -> tuple[dict[str, ShardStats], float, str | None]:
    """Run the pending shards on Dask; returns (stats by shard, seconds from submit to last result, dashboard)."""
    from distributed import as_completed

    request = ClusterRequest(config.device, config.workers, config.threads_per_worker, config.dashboard)
    results: dict[str, ShardStats] = {}
    failures: list[str] = []
    with dask_client(request, config.scheduler) as client:
        if config.scheduler:
            client.wait_for_workers(1, timeout=120)
        link = dashboard_link(client)
        encoder = EncoderSpec(os.path.abspath(config.model), output.engine, config.device, config.batch_size)
        job = ShardJob(encoder, output, str(out_dir.resolve()), config.decode_threads,
                       tuple(sorted(torch_threads_by_host(client).items())), config.torch_threads, config.tune_malloc)
        token = uuid.uuid4().hex[:8]  # keys unique per run: tasks of a killed earlier client never collide
        start = time.perf_counter()
        futures = {client.submit(run_shard_task, shard, job, key=f"medhash-encode-{shard.name}-{token}",
                                 retries=config.retries, pure=False): shard for shard in pending}
        total_images = sum(len(s) for s in pending)
        with JobProgress(total_images, total_shards, done_before, config.progress) as progress:
            if link:
                progress.note(f"Dask dashboard: {link}")
                log.info("Dask dashboard: %s", link)
            for future in as_completed(futures):
                shard = futures[future]
                try:
                    stats = ShardStats(**future.result())
                except Exception as exc:  # noqa: BLE001 - report every failed shard, keep the others
                    failures.append(f"{shard.name}: {type(exc).__name__}: {exc}")
                    progress.note(f"{shard.name} failed: {exc}")
                    continue
                results[shard.name] = stats
                progress.shard_done(stats.items)
                _kill_driver_for_tests(len(results))
        elapsed = time.perf_counter() - start
    if failures:
        raise PipelineError(f"{len(failures)} of {len(pending)} shard(s) failed (finished shards are kept; rerun the "
                            "same command to retry the rest): " + "; ".join(failures[:5]))
    return results, elapsed, link


# ------------------------------------------------------------------------------------------ manifest


def _summed(stats: list[ShardStats], attribute: str) -> dict[str, float]:
    total: Counter[str] = Counter()
    for s in stats:
        total.update(getattr(s, attribute))
    return {k: round(v, 3) for k, v in sorted(total.items())}


def _write_manifest(out_dir: Path, plan: JobPlan, stats: dict[str, ShardStats], timing: dict[str, Any]) -> dict[str, Any]:
    shards = [{"name": s.name, "file": ShardFiles.of(out_dir, s.name).codes.name,
               "errors_file": ShardFiles.of(out_dir, s.name).errors.name,
               "items": stats[s.name].items, "encoded": stats[s.name].encoded, "failed": stats[s.name].failed}
              for s in plan.shards]
    failed_by_kind: Counter[str] = Counter()
    for s in stats.values():
        failed_by_kind.update(s.failed_by_kind)
    ids = Counter(item.image_id for shard in plan.shards for item in shard.items)
    counts = {
        "inputs": sum(s["items"] for s in shards),
        "encoded": sum(s["encoded"] for s in shards),
        "failed": sum(s["failed"] for s in shards),
        "failed_by_kind": dict(sorted(failed_by_kind.items())),
        "shards": len(shards),
        "duplicate_image_ids": sum(n - 1 for n in ids.values() if n > 1),
    }
    if counts["duplicate_image_ids"]:
        log.warning("%d image ids occur more than once in %s (same file stem in several folders?)",
                    counts["duplicate_image_ids"], out_dir)
    output = plan.output
    return write_manifest(out_dir, CodesManifest(
        model_id=output.model_id, bits=output.bits, engine=output.engine, with_labels=output.with_labels,
        store_features=output.store_features, shards=shards, counts=counts, request=plan.request, timing=timing))


# ------------------------------------------------------------------------------------------ entry


def run_encode(config: EncodeJobConfig) -> EncodeSummary:
    """Encode every input into sharded Parquet under `config.out`; resumes an interrupted run."""
    start = time.perf_counter()
    _check_device(config)
    out_dir = Path(config.out)
    model_id, bits = _checkpoint_identity(config.model)
    engine = _resolve_engine(config.engine, config.device)
    output = OutputSpec(model_id, bits, engine, config.labels is not None, config.store_features)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.overwrite:
        _remove(out_dir, OWN_FILE_PATTERNS)
    _remove(out_dir, STALE_TEMP_PATTERNS)  # temp files of writes that a killed run left behind
    plan = _plan_job(config, out_dir, output)

    done = {s.name: stats for s in plan.shards if (stats := complete_shard_stats(out_dir, s, output)) is not None}
    pending = [s for s in plan.shards if s.name not in done]
    for shard in pending:  # a half-written shard (killed between its files) is redone from scratch
        for path in ShardFiles.of(out_dir, shard.name).existing():
            path.unlink()
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # the manifest describes a finished folder only

    fresh, run_seconds, link = ({}, 0.0, None)
    if pending:
        fresh, run_seconds, link = _run_shards(config, out_dir, output, pending, len(done), len(plan.shards))
    stats = {**done, **fresh}
    ran = sum(s.items for s in fresh.values())
    timing = {
        "seconds": round(time.perf_counter() - start, 3),
        "run_seconds": round(run_seconds, 3),
        "images_per_s": round(ran / run_seconds, 2) if run_seconds else None,
        "shards_run": len(fresh),
        "shards_skipped": len(done),
        "stage_seconds_of_run_shards": _summed(list(fresh.values()), "seconds"),
        "worker_cpu_of_run_shards": _summed(list(fresh.values()), "cpu"),
        "peak_rss_mb_max": max((s.peak_rss_mb for s in fresh.values()), default=None),
    }
    counts = _write_manifest(out_dir, plan, stats, timing)["counts"]
    return EncodeSummary(out_dir, out_dir / MANIFEST_FILE, model_id, bits, engine, counts["inputs"], counts["encoded"],
                         counts["failed"], len(plan.shards), len(done), len(fresh), timing["seconds"],
                         timing["images_per_s"] or 0.0, link, counts["failed_by_kind"])
