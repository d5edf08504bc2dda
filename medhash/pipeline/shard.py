"""Encode one shard: decode in threads while the model works, write the shard's files atomically.

`encode_shard(shard, builder, out_dir, spec)` is plain Python (tests and the benchmark call it
directly); `run_shard_task` is the Dask task around it. The model is never part of the task
graph: the task carries an `EncoderSpec` (checkpoint path + engine + device), and
`EncoderSpec.__call__` builds the encoder once per worker process and caches it.

Overlap: decoding (PNG inflate, JPEG, DICOM; these release the GIL) runs in a thread pool that
stays `batch_size + 2 * decode_threads` items ahead of the model, in plan order, so output order
and batch composition, and therefore the Parquet bytes, are the same on every run.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from medhash.data.decode import read_image
from medhash.errors import ImageDecodeError, PipelineError
from medhash.pipeline.cluster import worker_host
from medhash.pipeline.inputs import InputItem
from medhash.pipeline.malloc import tune_malloc_for_inference
from medhash.codes_format import ShardPaths
from medhash.pipeline.metadata import RowValues
from medhash.pipeline.output import ShardRows, ShardStats, write_shard
from medhash.pipeline.plan import OutputSpec, ShardPlan
from medhash.pipeline.readers import ShardReader
from medhash.timing import Timings

log = logging.getLogger(__name__)

# Test hook: a path; the first task that finds it absent creates it and SIGKILLs its own worker
# process (simulates losing a worker mid-task; the scheduler must rerun the shard elsewhere).
FAULT_KILL_WORKER_ONCE = "_MEDHASH_TEST_KILL_WORKER_ONCE"

_ENCODER_CACHE: dict[tuple, object] = {}  # per process: EncoderSpec key -> HashEncoder
_ENCODER_CACHE_SIZE = 2


@dataclass(frozen=True)
class EncoderSpec:
    """A picklable builder of the encoder: what travels in the task graph instead of the model."""

    checkpoint: str
    engine: str
    device: str = "cpu"
    batch_size: int = 32

    def __call__(self):
        from medhash.model.encoder import load_encoder

        stat = os.stat(self.checkpoint)  # a replaced checkpoint file is a new cache entry
        key = (self.checkpoint, stat.st_mtime_ns, stat.st_size, self.engine, self.device, self.batch_size)
        encoder = _ENCODER_CACHE.get(key)
        if encoder is None:
            while len(_ENCODER_CACHE) >= _ENCODER_CACHE_SIZE:
                _ENCODER_CACHE.pop(next(iter(_ENCODER_CACHE)))
            encoder = _ENCODER_CACHE[key] = load_encoder(self.checkpoint, self.device, self.engine, self.batch_size)
            log.info("built encoder %s (%s, %s) in pid %d", encoder.model_id, self.engine, self.device, os.getpid())
        return encoder


@dataclass(frozen=True)
class ShardJob:
    """Everything a shard task needs besides its items (small, picklable)."""

    encoder: EncoderSpec
    output: OutputSpec
    out_dir: str
    decode_threads: int = 2
    torch_threads_by_host: tuple[tuple[str, int], ...] = ()  # host -> torch threads per task
    torch_threads: int | None = None  # overrides the per-host figure
    tune_malloc: bool = True  # medhash.pipeline.malloc: reuse freed activation memory
    patient_secret: bytes | None = None  # keys patient_key (in memory only: never written anywhere)


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB. From /proc's VmHWM rather than getrusage: ru_maxrss
    survives exec, so a spawned worker would report its parent's peak instead of its own."""
    peak = _proc_status_mb("VmHWM:")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: KiB, but bytes on macOS
    return peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


# ------------------------------------------------------------------------------------------ decoding


Decoded = tuple[np.ndarray, dict]  # the image and its metadata column values


def _decode(item: InputItem, source: Path | bytes, row_values: RowValues) -> Decoded:
    return read_image(source, name=item.path), row_values(item, source)


def _failure(item: InputItem, exc: BaseException) -> tuple[str, str, str, str, str]:
    if isinstance(exc, ImageDecodeError):
        return (item.path, item.image_id, "failed", exc.kind, exc.reason)
    return (item.path, item.image_id, "failed", "internal", f"{type(exc).__name__}: {exc}")


def _decoded_in_order(items: tuple[InputItem, ...], pool: ThreadPoolExecutor, window: int, timings: Timings,
                      row_values: RowValues) -> Iterator[tuple[InputItem, Decoded | None, BaseException | None]]:
    """(item, decoded, None) or (item, None, error) in plan order, decoding up to `window` items ahead."""
    pending: deque[tuple[InputItem, Future | BaseException]] = deque()
    upcoming = iter(items)
    with ShardReader() as reader:

        def submit_next() -> None:
            item = next(upcoming, None)
            if item is None:
                return
            try:
                with timings("read"):
                    source = reader.load(item)
                pending.append((item, pool.submit(_decode, item, source, row_values)))
            except Exception as exc:  # noqa: BLE001 - one unreadable item never fails the shard
                pending.append((item, exc))

        for _ in range(window):
            submit_next()
        while pending:
            item, job = pending.popleft()
            submit_next()
            if isinstance(job, BaseException):
                yield item, None, job
                continue
            try:
                with timings("decode_wait"):  # decode time the model work did not hide
                    image = job.result()
                yield item, image, None
            except Exception as exc:  # noqa: BLE001
                yield item, None, exc


# ------------------------------------------------------------------------------------------ encoding


def _encode_batch(encoder, batch: list[tuple[InputItem, Decoded]], rows: ShardRows, with_features: bool) -> None:
    """Encode a batch; if the batch fails, encode its items one by one so one bad image fails alone."""
    try:
        result = encoder.encode_images([image for _, (image, _) in batch], with_features=with_features)
    except Exception as exc:  # noqa: BLE001
        if len(batch) > 1:
            for one in batch:
                _encode_batch(encoder, [one], rows, with_features)
            return
        item = batch[0][0]
        rows.errors.append((item.path, item.image_id, "failed", "encode_failed", f"{type(exc).__name__}: {exc}"))
        return
    rows.image_ids.extend(item.image_id for item, _ in batch)
    rows.paths.extend(item.path for item, _ in batch)
    rows.labels.extend(item.labels for item, _ in batch)
    rows.values.extend(values for _, (_, values) in batch)
    rows.codes.append(result.codes)
    rows.boxes.append(result.boxes)
    if with_features:
        rows.features.append(result.features)
    if result.hash_values is not None:
        rows.hash_values.append(result.hash_values)  # written only when the job stores them


def _encode_in_batches(encoder, decoded, rows: ShardRows, with_features: bool, timings: Timings) -> None:
    batch: list[tuple[InputItem, Decoded]] = []
    for item, image, error in decoded:
        if error is not None:
            rows.errors.append(_failure(item, error))
            continue
        batch.append((item, image))
        if len(batch) == encoder.batch_size:
            with timings("encode"):
                _encode_batch(encoder, batch, rows, with_features)
            batch = []
    if batch:
        with timings("encode"):
            _encode_batch(encoder, batch, rows, with_features)


def _ordered(rows: ShardRows, shard: ShardPlan) -> ShardRows:
    """Errors in plan order (a batch that fell back to one-by-one appends them late)."""
    position = {item.path: i for i, item in enumerate(shard.items)}
    rows.errors.sort(key=lambda e: position.get(e[0], len(position)))
    return rows


def encode_shard(shard: ShardPlan, builder: Callable[[], object], out_dir: str | Path, output: OutputSpec,
                 decode_threads: int = 2, patient_secret: bytes | None = None) -> ShardStats:
    """Decode, encode and write one shard; returns its stats (also written as _stats/part-NNNNN.json)."""
    timings = Timings()
    start = time.perf_counter()
    usage_start = resource.getrusage(resource.RUSAGE_SELF)
    with timings("model_ready"):
        encoder = builder()
    if encoder.model_id != output.model_id:
        raise PipelineError(f"{shard.name}: the worker's checkpoint is model {encoder.model_id}, the job is for "
                            f"{output.model_id} (was the checkpoint file replaced during the job?)")
    rows = ShardRows()
    window = encoder.batch_size + 2 * max(1, decode_threads)
    with ThreadPoolExecutor(max_workers=max(1, decode_threads), thread_name_prefix="medhash-decode") as pool:
        decoded = _decoded_in_order(shard.items, pool, window, timings, RowValues(output, patient_secret))
        _encode_in_batches(encoder, decoded, rows, output.store_features, timings)
    _ordered(rows, shard)
    import torch

    stats = ShardStats(
        shard=shard.name, model_id=output.model_id, items=len(shard), encoded=len(rows.image_ids),
        failed=len(rows.errors), failed_by_kind=dict(sorted(Counter(e[3] for e in rows.errors).items())),
        worker=socket.gethostname(), pid=os.getpid(), torch_threads=torch.get_num_threads(),
    )
    with timings("write"):
        usage = resource.getrusage(resource.RUSAGE_SELF)  # the whole worker process: torch threads included
        stats.cpu = {"user_s": round(usage.ru_utime - usage_start.ru_utime, 3),
                     "system_s": round(usage.ru_stime - usage_start.ru_stime, 3),
                     "minor_page_faults": usage.ru_minflt - usage_start.ru_minflt}
        stats.seconds = {**timings.as_dict(), "total": round(time.perf_counter() - start, 4)}
        stats.peak_rss_mb = round(peak_rss_mb(), 1)
        stats.rss_mb = round(_proc_status_mb("VmRSS:") or 0.0, 1)
        write_shard(ShardPaths.of(out_dir, shard.name), rows, output, stats)
    return stats


# ------------------------------------------------------------------------------------------ Dask task


def _kill_worker_once_for_tests() -> None:
    marker = os.environ.get(FAULT_KILL_WORKER_ONCE)
    if marker:
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def _worker_host_and_index() -> tuple[str, int]:
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return "", 0
    return worker_host(worker.address), worker.name if isinstance(worker.name, int) else 0


def _torch_threads(job: ShardJob, host: str) -> int:
    """Dask's nanny starts workers with OMP_NUM_THREADS=1, which leaves torch on 1 thread; the driver
    decided how many cores each task of this host may use (cores / tasks running at once)."""
    if job.torch_threads:
        return job.torch_threads
    return dict(job.torch_threads_by_host).get(host, 1)


def run_shard_task(shard: ShardPlan, job: ShardJob) -> dict:
    """The Dask task: set torch threads, get the cached encoder, encode one shard; returns its stats."""
    import torch

    _kill_worker_once_for_tests()
    if job.tune_malloc:
        tune_malloc_for_inference()
    host, index = _worker_host_and_index()
    torch.set_num_threads(_torch_threads(job, host))
    spec = job.encoder
    if spec.device.startswith("cuda") and ":" not in spec.device:
        # One worker per GPU: LocalCluster names workers 0..n-1 (dask-cuda already narrows each to one device).
        spec = EncoderSpec(spec.checkpoint, spec.engine, f"cuda:{index % max(1, torch.cuda.device_count())}", spec.batch_size)
    stats = encode_shard(shard, spec, job.out_dir, job.output, job.decode_threads, job.patient_secret)
    return stats.to_json()
