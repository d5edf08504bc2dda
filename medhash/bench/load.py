"""run_load: N requests at a fixed concurrency, each timed from the client's side, bounded in count and time.

`concurrency` workers share one request counter, so exactly that many requests are in flight until
the last ones (a closed loop, like `concurrency` users clicking search again as soon as they see
results). A failure is any exception of the call (a non-200 answer raises in the clients); the first
few messages are kept. After `time_limit_s` no new request starts, and the result says so.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from medhash.errors import InvalidParameterError

Call = Callable[[int], Awaitable[dict]]


@dataclass
class LoadResult:
    concurrency: int
    requests: int  # started
    latencies_s: np.ndarray  # of the successful requests, in completion order
    failed: int
    elapsed_s: float
    errors: list[str] = field(default_factory=list)  # the first few failure messages
    stopped_by_time_limit: bool = False
    server_ms_sum: dict[str, float] = field(default_factory=dict)  # the responses' timings_ms, summed

    def summary(self) -> dict:
        """JSON-ready figures: latency percentiles in ms over successful requests, throughput over the wall time."""
        ms = self.latencies_s * 1000.0
        completed = int(ms.size)

        def pct(q: float) -> float | None:
            return round(float(np.percentile(ms, q)), 3) if completed else None

        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "completed": completed,
            "failed": self.failed,
            "p50_ms": pct(50),
            "p95_ms": pct(95),
            "p99_ms": pct(99),
            "mean_ms": round(float(ms.mean()), 3) if completed else None,
            "max_ms": round(float(ms.max()), 3) if completed else None,
            "throughput_rps": round(completed / self.elapsed_s, 3) if self.elapsed_s > 0 else None,
            "elapsed_s": round(self.elapsed_s, 3),
            "stopped_by_time_limit": self.stopped_by_time_limit,
            "server_ms_mean": {stage: round(total / completed, 3) for stage, total in self.server_ms_sum.items()}
            if completed else {},
            "errors": list(self.errors),
        }


async def run_load(call: Call, n_requests: int, concurrency: int, *, time_limit_s: float | None = None,
                   keep_errors: int = 5, on_response: Callable[[int, dict], None] | None = None) -> LoadResult:
    """Run call(0) .. call(n_requests - 1), `concurrency` at a time; on_response(i, body) sees each success."""
    if n_requests < 0 or concurrency < 1:
        raise InvalidParameterError(f"need n_requests >= 0 and concurrency >= 1, got {n_requests} and {concurrency}")
    latencies: list[float] = []
    errors: list[str] = []
    server_ms: dict[str, float] = {}
    state = {"next": 0, "failed": 0, "timed_out": False}
    start = time.perf_counter()
    deadline = start + time_limit_s if time_limit_s is not None else None

    async def worker() -> None:
        while state["next"] < n_requests:
            if deadline is not None and time.perf_counter() >= deadline:
                state["timed_out"] = True
                return
            i = state["next"]
            state["next"] += 1
            t0 = time.perf_counter()
            try:
                body = await call(i)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                state["failed"] += 1
                if len(errors) < keep_errors:
                    errors.append(f"request {i}: {type(exc).__name__}: {exc}"[:500])
                continue
            latencies.append(time.perf_counter() - t0)
            for stage, value in (body.get("timings_ms") or {}).items():
                server_ms[stage] = server_ms.get(stage, 0.0) + float(value)
            if on_response is not None:
                on_response(i, body)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(n_requests, 1)))))
    return LoadResult(concurrency=concurrency, requests=state["next"], latencies_s=np.asarray(latencies),
                      failed=state["failed"], elapsed_s=time.perf_counter() - start, errors=errors,
                      stopped_by_time_limit=state["timed_out"], server_ms_sum=server_ms)
