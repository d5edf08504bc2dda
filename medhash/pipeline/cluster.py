"""Where the shard tasks run: a LocalCluster of worker processes, or an existing Dask scheduler.

Clusters come from a registry keyed by device: "cpu" starts a LocalCluster of processes; "cuda"
starts one worker per GPU (dask-cuda's LocalCUDACluster when installed, which pins each worker to
its GPU; else a LocalCluster whose worker i uses cuda:i). `--scheduler tcp://HOST:PORT` connects
to a running cluster and starts nothing.

Torch threads: Dask's nanny starts every worker with OMP_NUM_THREADS=MKL_NUM_THREADS=1 (so that
many single-threaded tasks do not oversubscribe the cores), which leaves torch on one intra-op
thread. One shard task is a long, batched forward pass, so it should have the cores its task slot
owns: per host, torch threads = cores / (tasks that run at once on that host), at least 1. The
driver asks each worker for its host's core count and its Dask thread count, and every task sets
`torch.set_num_threads` to its host's figure (worker-process state, so it is set in the task).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import socket
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may use: CPU affinity and cgroup quotas (containers) counted."""
    from dask.system import cpu_count

    return cpu_count()


@dataclass(frozen=True)
class ClusterRequest:
    device: str = "cpu"
    workers: int | None = None  # None: the device's default
    threads_per_worker: int = 1  # Dask task slots per worker
    dashboard: bool = True


def default_workers(device: str) -> int:
    """cpu: one worker per 4 cores (each forward gets 4 torch threads; more processes cost memory, one
    model copy each), but at least 2 where there are 2 cores: measured on 2 cores, two 1-thread
    workers beat one 2-thread worker (and degrade far less when other processes share the cores).
    cuda: one worker per GPU."""
    if device.startswith("cuda"):
        import torch

        return max(1, torch.cuda.device_count())
    cores = available_cores()
    return min(cores, max(2, cores // 4))


def _dashboard_address(request: ClusterRequest) -> str | None:
    # The dashboard needs bokeh; without it, do not open a port that serves nothing useful.
    return ":0" if request.dashboard and importlib.util.find_spec("bokeh") else None


def _local_cpu_cluster(request: ClusterRequest, workers: int):
    from distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=request.threads_per_worker, processes=True,
                        dashboard_address=_dashboard_address(request), silence_logs=logging.ERROR)


def _local_cuda_cluster(request: ClusterRequest, workers: int):
    if importlib.util.find_spec("dask_cuda"):
        from dask_cuda import LocalCUDACluster

        return LocalCUDACluster(n_workers=workers, threads_per_worker=request.threads_per_worker,
                                dashboard_address=_dashboard_address(request), silence_logs=logging.ERROR)
    return _local_cpu_cluster(request, workers)  # worker i picks cuda:i (medhash.pipeline.shard)


CLUSTER_FACTORIES: dict[str, Callable[[ClusterRequest, int], object]] = {
    "cpu": _local_cpu_cluster,
    "cuda": _local_cuda_cluster,
}


@contextlib.contextmanager
def dask_client(request: ClusterRequest, scheduler: str | None = None) -> Iterator[object]:
    """A distributed Client: connected to `scheduler`, or to a LocalCluster started (and closed) here."""
    from distributed import Client

    if scheduler:
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    workers = request.workers or default_workers(request.device)
    factory = CLUSTER_FACTORIES[request.device.split(":")[0]]
    with _quiet_scheduler_logs(), factory(request, workers) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        yield client


@contextlib.contextmanager
def _quiet_scheduler_logs() -> Iterator[None]:
    """A LocalCluster's scheduler runs in this process and logs every start/stop at INFO (distributed sets
    its logger up on import, over medhash.logs); show that only when everything logs at DEBUG (-vv)."""
    logger = logging.getLogger("distributed")
    level = logger.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def dashboard_link(client) -> str | None:
    return client.dashboard_link if importlib.util.find_spec("bokeh") else None


def dashboard_note(request: ClusterRequest, scheduler: str | None, link: str | None) -> str:
    """One line on the Dask dashboard: its link, or why there is none."""
    if link:
        return f"Dask dashboard: {link}"
    if scheduler:
        return "Dask dashboard: see the scheduler's own (this job started no cluster)"
    if not request.dashboard:
        return "Dask dashboard: off"
    return "Dask dashboard: not started, bokeh is not installed (pip install 'medhash[dashboard]')"


def worker_host(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0]


def _host_report(dask_worker=None) -> tuple[str, int, int]:
    """Run on each worker by `client.run`, which passes the worker as `dask_worker`."""
    return worker_host(dask_worker.address), available_cores(), dask_worker.state.nthreads


def torch_threads_by_host(client) -> dict[str, int]:
    """host -> torch threads for each task: the host's cores over the Dask threads of all its workers."""
    reports = client.run(_host_report)
    slots: dict[str, int] = defaultdict(int)
    cores: dict[str, int] = {}
    for host, host_cores, nthreads in reports.values():
        slots[host] += nthreads
        cores[host] = host_cores
    plan = {host: max(1, cores[host] // slots[host]) for host in slots}
    log.info("torch threads per task: %s (on %s)", plan, socket.gethostname())
    return plan
