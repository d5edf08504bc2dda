"""`run_encode(EncodeJobConfig) -> EncodeSummary`: the whole encoding job, resumable.

1. Read the checkpoint's model_id and bits (the driver never builds the model).
2. Plan: list and sort the inputs, cut them into shards, write `_plan.json` (or replay the stored
   plan of an earlier run into the same folder, refusing one made for another model or job).
3. Skip shards whose outputs are complete and valid; delete leftovers of the others.
4. One Dask task per remaining shard (`client.submit(..., retries=N)`); a task lost with its worker
   is rerun by the scheduler (up to `distributed.scheduler.allowed-failures` times).
5. `_manifest.json` once every shard is done: counts (found = encoded + failed + skipped), the shard
   list with each shard's sha256 and rows, timing; and `_errors/inputs.parquet`, the files found but
   not planned.

Metadata columns: label-table columns named by `columns` (default: those of view, age, sex the table
has), the DICOM attributes (`dicom_meta`), and with a `patient_secret` a keyed `patient_key`.
`patient_id` is an identifier: it is accepted in `columns` only with a secret, and then stored only
as patient_key. The secret never reaches a file: the plan records a keyed check value of it, so a
rerun with another secret is refused instead of mixing two key spaces in one folder.
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

from medhash.codes_format import (CODE_COLUMNS, DICOM_COLUMNS, ERRORS_DIR, HASH_VALUES_COLUMN, INPUTS_ERRORS_FILE,
                                  MANIFEST_FILE, PATIENT_KEY_COLUMN, PLAN_FILE, STATS_DIR, CodesManifest, ShardPaths,
                                  shard_model_id, write_errors_shard, write_manifest)
from medhash.data.keyed import keyed_hash
from medhash.data.labels import read_label_table, report_label_problems
from medhash.errors import PipelineError, one_line
from medhash.pipeline.cluster import ClusterRequest, dashboard_link, dashboard_note, dask_client, torch_threads_by_host
from medhash.pipeline.inputs import InputOptions, TableColumns, collect_items
from medhash.pipeline.output import ShardStats, complete_shard_stats
from medhash.pipeline.plan import JobPlan, OutputSpec, ShardPlan, check_same_job, cut_into_shards, read_plan, write_plan
from medhash.pipeline.progress import JobProgress
from medhash.pipeline.shard import EncoderSpec, ShardJob, run_shard_task

log = logging.getLogger(__name__)

# Files of ours in an output folder (what --overwrite removes), and temp files of interrupted writes.
OWN_FILE_PATTERNS = ("part-*.parquet", f"{ERRORS_DIR}/*.parquet", f"{STATS_DIR}/part-*.json", PLAN_FILE, MANIFEST_FILE)
STALE_TEMP_PATTERNS = (".part-*.tmp", f"{ERRORS_DIR}/.*.tmp", f"{STATS_DIR}/.*.tmp", f".{PLAN_FILE}.*.tmp",
                       f".{MANIFEST_FILE}.*.tmp")
DEFAULT_TABLE_COLUMNS = ("view", "age", "sex")  # taken when the table has them and `columns` is not given
# What a rerun must repeat to use the same patient_key space (HMAC of this text under the secret).
_SECRET_CHECK_TEXT = "medhash.patient-key-check"
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
    store_hash_values: bool = False  # the hash layer's tanh outputs, for re-ranking (codes_format.HASH_VALUES_COLUMN)
    overwrite: bool = False
    bytes_column: str | None = None  # Parquet inputs: column with the image bytes
    id_column: str | None = None  # Parquet inputs: column with the image ids
    id_from: str = "path"  # "path" (relative path, or the table's id) | "sop-uid" (DICOM SOPInstanceUID)
    follow_symlinks: bool = False  # take links that leave an input root
    columns: tuple[str, ...] | None = None  # label-table columns to carry (None: DEFAULT_TABLE_COLUMNS present)
    dicom_meta: bool = True  # store the non-identifying DICOM attributes
    patient_secret: bytes | None = field(default=None, repr=False)  # site secret: store a keyed patient_key
    strict_labels: bool = False  # label-table problems refuse the job instead of warnings
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
    found: int  # = encoded + failed + skipped
    encoded: int
    failed: int
    skipped: int
    shards: int
    shards_skipped: int  # complete from an earlier run
    shards_run: int
    seconds: float  # wall time of this call
    images_per_s: float  # items handled by this run's tasks / time from submit to the last result
    dashboard: str | None = None
    failed_by_kind: dict[str, int] = field(default_factory=dict)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)


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
        "id_from": config.id_from,
        "follow_symlinks": config.follow_symlinks,
        "columns": None if config.columns is None else list(config.columns),
        "patient_key_check": keyed_hash(_SECRET_CHECK_TEXT, config.patient_secret)[:16] if config.patient_secret else None,
    }


def _table_columns(config: EncodeJobConfig, table) -> TableColumns:
    """The label-table columns to carry, checked against the table and the codes format's own columns."""
    asked = config.columns
    if table is None:
        if asked:
            raise PipelineError(f"--columns {','.join(asked)} needs a label table (--labels)")
        return TableColumns()
    available = table.columns()
    if asked is None:
        asked = tuple(c for c in DEFAULT_TABLE_COLUMNS if c in available)
    unknown = [c for c in asked if c not in available]
    if unknown:
        raise PipelineError(f"{table.source}: no column(s) {unknown}; the table has {available}")
    if "patient_id" in asked and config.patient_secret is None:
        raise PipelineError("patient_id is an identifier: it is stored only as patient_key, a keyed hash; "
                            "give --patient-key-secret-file (or MEDHASH_PATIENT_KEY_SECRET)")
    names = tuple(c for c in asked if c != "patient_id")
    reserved = set(CODE_COLUMNS) | set(DICOM_COLUMNS) | {PATIENT_KEY_COLUMN, "labels", "features", HASH_VALUES_COLUMN}
    clashing = [c for c in names if c in reserved]
    if clashing:
        raise PipelineError(f"table column(s) {clashing} would clash with the codes columns of the same name")
    return TableColumns(names, config.patient_secret if "patient_id" in asked else None)


def _output_spec(config: EncodeJobConfig, model_id: str, bits: int, engine: str, columns: TableColumns) -> OutputSpec:
    return OutputSpec(model_id, bits, engine, config.labels is not None, config.store_features, columns.names,
                      config.dicom_meta, config.patient_secret is not None, config.store_hash_values)


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


def _plan_job(config: EncodeJobConfig, out_dir: Path, output: OutputSpec, table, columns: TableColumns) -> JobPlan:
    request = _request(config)
    stored = read_plan(out_dir)
    if stored is not None:
        check_same_job(stored, output, request, out_dir)
        return stored
    _refuse_unplanned_outputs(out_dir, output.model_id)
    options = InputOptions(config.bytes_column, config.id_column, config.id_from, config.follow_symlinks)
    found = collect_items(config.inputs, table, options, columns)
    if not found.items:
        raise PipelineError(f"no images found in {', '.join(map(str, config.inputs))} "
                            f"({len(found.not_encoded)} file(s) skipped or unreadable)")
    plan = JobPlan(output, request, cut_into_shards(found.items, config.shard_size), found.not_encoded)
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
                       tuple(sorted(torch_threads_by_host(client).items())), config.torch_threads, config.tune_malloc,
                       config.patient_secret)
        token = uuid.uuid4().hex[:8]  # keys unique per run: tasks of a killed earlier client never collide
        start = time.perf_counter()
        futures = {client.submit(run_shard_task, shard, job, key=f"medhash-encode-{shard.name}-{token}",
                                 retries=config.retries, pure=False): shard for shard in pending}
        total_images = sum(len(s) for s in pending)
        with JobProgress(total_images, total_shards, done_before, config.progress) as progress:
            progress.note(dashboard_note(request, config.scheduler, link))
            for future in as_completed(futures):
                shard = futures[future]
                try:
                    stats = ShardStats(**future.result())
                except Exception as exc:  # noqa: BLE001 - report every failed shard, keep the others
                    failures.append(f"{shard.name}: {type(exc).__name__}: {exc}")
                    progress.note(f"shard {shard.name} failed: {one_line(exc)}", logging.ERROR)
                    continue
                results[shard.name] = stats
                progress.shard_done(shard.name, stats.items, stats.failed)
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
    output = plan.output
    write_errors_shard(out_dir / INPUTS_ERRORS_FILE, [n.row() for n in plan.not_encoded], model_id=output.model_id,
                       bits=output.bits, engine=output.engine)
    shards = []
    for shard in plan.shards:
        paths, done = ShardPaths.of(out_dir, shard.name), stats[shard.name]
        shards.append({"name": shard.name, "file": paths.codes.name, "rows": done.encoded, "sha256": done.sha256,
                       "errors_file": paths.errors.relative_to(out_dir).as_posix(), "items": done.items,
                       "encoded": done.encoded, "failed": done.failed})
    failed_by_kind: Counter[str] = Counter()
    for s in stats.values():
        failed_by_kind.update(s.failed_by_kind)
    failed_by_kind.update(n.kind for n in plan.not_encoded if n.status == "failed")
    skipped_by_reason = Counter(n.kind for n in plan.not_encoded if n.status == "skipped")
    encoded = sum(s["encoded"] for s in shards)
    failed = sum(failed_by_kind.values())
    skipped = sum(skipped_by_reason.values())
    counts = {
        "found": encoded + failed + skipped,
        "encoded": encoded,
        "failed": failed,
        "skipped": skipped,
        "failed_by_kind": dict(sorted(failed_by_kind.items())),
        "skipped_by_reason": dict(sorted(skipped_by_reason.items())),
        "planned": sum(s["items"] for s in shards),
        "shards": len(shards),
    }
    return write_manifest(out_dir, CodesManifest(
        model_id=output.model_id, bits=output.bits, engine=output.engine, with_labels=output.with_labels,
        store_features=output.store_features, shards=shards, counts=counts, request=plan.request, timing=timing,
        metadata_columns=output.metadata_columns, store_hash_values=output.store_hash_values))


# ------------------------------------------------------------------------------------------ entry


def run_encode(config: EncodeJobConfig) -> EncodeSummary:
    """Encode every input into sharded Parquet under `config.out`; resumes an interrupted run."""
    start = time.perf_counter()
    _check_device(config)
    out_dir = Path(config.out)
    model_id, bits = _checkpoint_identity(config.model)
    engine = _resolve_engine(config.engine, config.device)
    table = None
    if config.labels is not None:
        table = read_label_table(config.labels, config.image_root, check_files=False)
        report_label_problems(table, strict=config.strict_labels)
    columns = _table_columns(config, table)
    output = _output_spec(config, model_id, bits, engine, columns)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.overwrite:
        _remove(out_dir, OWN_FILE_PATTERNS)
    _remove(out_dir, STALE_TEMP_PATTERNS)  # temp files of writes that a killed run left behind
    plan = _plan_job(config, out_dir, output, table, columns)

    done = {s.name: stats for s in plan.shards if (stats := complete_shard_stats(out_dir, s, output)) is not None}
    pending = [s for s in plan.shards if s.name not in done]
    for shard in pending:  # a half-written shard (killed between its files) is redone from scratch
        for path in ShardPaths.of(out_dir, shard.name).existing():
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
    return EncodeSummary(out_dir, out_dir / MANIFEST_FILE, model_id, bits, engine, counts["found"], counts["encoded"],
                         counts["failed"], counts["skipped"], len(plan.shards), len(done), len(fresh), timing["seconds"],
                         timing["images_per_s"] or 0.0, link, counts["failed_by_kind"], counts["skipped_by_reason"])
