"""Thread policy for searches: FAISS's OpenMP for single queries is OFF (1 thread); our own threads split the work.

Why (measured on the 2-core dev machine, 1M random 64-bit codes, k=100, IndexBinaryFlat):
- FAISS parallelises a flat binary search over *queries*, opening one OpenMP parallel region per
  65,536-code block. A single query therefore gains nothing from a 2nd OpenMP thread (0.72 ms with
  1 or 2 threads when the machine is idle), but every region ends in a barrier that waits for the
  2nd thread: when the other core is busy that thread is descheduled and libgomp's spin-wait turns
  each barrier into a scheduler time slice. Measured with one core busy: 2 OpenMP threads gave
  p50 0.80 / p95 23.6 / p99 98 ms, 1 thread p50 0.72 / p95 0.81 / p99 0.85 ms. With the machine
  shared by other jobs (load average 4-8), three runs of benchmarks/search_latency.py measured
  p50 13-256 ms with 2 threads against 0.76-1.5 ms with 1 (omp_study and the faiss_flat_raw rows
  of benchmarks/results/search_latency.json).
- So every search runs with omp_set_num_threads(1) in the calling thread (the setting is per
  thread in OpenMP: a worker thread must set it itself, a new thread inherits the default), and
  the parallelism we want comes from `ScanPool`: persistent Python worker threads that run FAISS
  calls on disjoint shards or query slices (FAISS releases the GIL inside Index methods). The
  caller takes part in the work and steals any task a worker has not started, so a worker stuck
  behind a busy core delays a query by at most one task instead of a whole scan.
- Handing a query to a 2nd thread costs ~30-100 us and only pays when that thread gets a core at
  once. `fan_out="auto"` therefore splits a single query only while the 1-minute load average
  leaves a core free (read from /proc/loadavg at most once a second); on a loaded machine the
  query runs on the calling thread alone.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

__all__ = ["DEFAULT_POLICY", "ScanPool", "ThreadPolicy", "omp_threads", "shared_pool"]

T = TypeVar("T")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPolicy:
    # OpenMP threads FAISS may use inside one call; 1 for the reasons in the module docstring.
    omp_threads: int = 1
    # Threads (caller included) that share one search: shards of a flat scan, or query slices.
    search_threads: int = min(2, available_cores())
    # A flat index is split into per-thread shards only when each gets this many codes. Measured
    # (single query, k=100): at 1M codes splitting gained nothing (0.79 ms split vs 0.71 ms one
    # thread; the hand-off and merge cost what half a 0.5 ms scan saves), at 10M it gave 5.7 ms
    # against 17 ms for raw FAISS.
    min_rows_per_thread: int = 1_000_000
    # Split one query over threads: "always", "never", or "auto" (only while a core looks free).
    fan_out: str = "auto"

    def __post_init__(self):
        if self.fan_out not in ("auto", "always", "never"):
            raise ValueError(f"fan_out must be auto, always or never, not {self.fan_out!r}")

    def split_single_query(self) -> bool:
        if self.search_threads < 2 or self.fan_out == "never":
            return False
        return self.fan_out == "always" or _spare_core(self.search_threads)


_load_cache = [0.0, 0.0]  # (time read, 1-minute load average)


def _spare_core(threads: int) -> bool:
    now = time.monotonic()
    if now - _load_cache[0] > 1.0:
        try:
            _load_cache[1] = os.getloadavg()[0]
        except OSError:  # no load average on this platform: assume a spare core
            _load_cache[1] = 0.0
        _load_cache[0] = now
    # Our own searching thread counts ~1 in the load; another core is free below cores - 0.5.
    return _load_cache[1] <= available_cores() - 0.5


DEFAULT_POLICY = ThreadPolicy()


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Set FAISS's OpenMP thread count for the calling thread, restoring it afterwards."""
    import faiss

    before = faiss.omp_get_max_threads()
    if before == n:  # the common case on the query path: nothing to set or restore
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class _Job:
    """A list of tasks claimed one at a time by whoever is free (caller or worker)."""

    __slots__ = ("tasks", "results", "errors", "_next", "_left", "_lock", "done")

    def __init__(self, tasks: Sequence[Callable[[], T]]):
        self.tasks = tasks
        self.results: list = [None] * len(tasks)
        self.errors: list[BaseException] = []
        self._next = itertools.count()  # next() on a count is atomic under the GIL
        self._left = len(tasks)
        self._lock = threading.Lock()
        self.done = threading.Event()

    def work(self) -> None:
        while (i := next(self._next)) < len(self.tasks):
            try:
                self.results[i] = self.tasks[i]()
            except BaseException as exc:  # re-raised in the caller
                self.errors.append(exc)
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self.done.set()


class ScanPool:
    """Persistent daemon workers (OpenMP pinned to 1 thread each) that help run a list of tasks."""

    def __init__(self, workers: int, omp: int = 1):
        self.workers = workers
        self._inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        for n in range(workers):
            threading.Thread(target=self._loop, args=(omp,), name=f"medhash-scan-{n}", daemon=True).start()

    def _loop(self, omp: int) -> None:
        import faiss

        faiss.omp_set_num_threads(omp)
        while True:
            self._inbox.get().work()

    def run(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Run every task (caller included) and return their results in order; re-raise the first error."""
        if len(tasks) <= 1 or self.workers == 0:
            return [task() for task in tasks]
        job = _Job(tasks)
        for _ in range(min(self.workers, len(tasks) - 1)):
            self._inbox.put(job)
        job.work()
        job.done.wait()
        if job.errors:
            raise job.errors[0]
        return job.results


_pools: dict[int, ScanPool] = {}
_pools_lock = threading.Lock()


def shared_pool(threads: int) -> ScanPool:
    """The process-wide pool for `threads` participants (threads - 1 workers besides the caller)."""
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ScanPool(max(0, threads - 1))
        return _pools[threads]
