"""run_bench(BenchConfig): quality, end-to-end latency and search-only latency of a server, written to --out.

The target is either an index and model opened in this process (the server's SearchService,
without HTTP) or a running server (`url`, optional bearer token); both go through the same
SearchClient interface, so the figures differ only by what HTTP adds.

Order of work: the quality pass (every query uploaded once, whole rankings) also warms the encoder
and yields the queries' codes; then, per concurrency level, `requests` image uploads (query images
cycled, k hits each) and as many searches by code (no decode, no encode).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from medhash.bench.clients import HttpClient, InProcessClient, SearchClient
from medhash.bench.load import Call, LoadResult, run_load
from medhash.bench.queries import QuerySet, load_query_set
from medhash.bench.quality import measure_quality
from medhash.errors import InvalidParameterError, LabelTableError

BENCH_JSON = "bench.json"
LATENCY_PNG = "latency_histogram.png"
PR_PNG = "precision_recall.png"


@dataclass(frozen=True)
class BenchConfig:
    queries: str  # labeled query set: a label table (medhash dev/phantom or NIH format); its images are uploaded
    out: str  # folder for bench.json and the PNG plots
    index: str | None = None  # in process: index folder and model checkpoint ...
    model: str | None = None
    url: str | None = None  # ... or a running server
    token: str | None = None
    image_root: str | None = None  # where the table's relative paths resolve (default: its folder)
    concurrency: tuple[int, ...] = (1, 4, 16)
    requests: int = 200  # per concurrency level, for each of end-to-end and search-only
    k: int = 10  # hits per latency request
    ks: tuple[int, ...] = (10, 100)  # mAP@k and P@k
    exclude_self: bool = True  # drop the hit with the query's own image_id (query sets drawn from the archive)
    max_queries: int | None = None  # quality on the first N readable queries (None: all)
    quality_concurrency: int = 4
    search_only: bool = True
    plots: bool = True
    engine: str = "auto"  # in process only: encoder engine, device, torch threads, max_k
    device: str = "cpu"
    torch_threads: int | None = None
    max_k: int = 10_000
    time_limit_s: float | None = 600.0  # per pass: no request starts after it (the JSON says so)
    request_timeout_s: float = 120.0  # HTTP only
    rerank: int | None = None  # image searches re-rank the Hamming top N by the hash values (quality and end to end)
    filter: str | None = None  # latency requests carry this filter (medhash.index.filters); quality stays unfiltered

    def __post_init__(self):
        in_process = self.index is not None or self.model is not None
        if in_process == (self.url is not None):
            raise InvalidParameterError("bench needs either index and model (in process) or url (a running server), not both")
        if in_process and (self.index is None or self.model is None):
            raise InvalidParameterError("in-process bench needs both index and model")
        if not self.concurrency or min(self.concurrency) < 1:
            raise InvalidParameterError(f"concurrency levels must be >= 1, got {self.concurrency}")
        if self.requests < 0 or self.k < 1 or not self.ks or min(self.ks) < 1:
            raise InvalidParameterError(f"need requests >= 0, k >= 1 and ks >= 1, got {self.requests}, {self.k}, {self.ks}")

    @property
    def mode(self) -> str:
        return "http" if self.url is not None else "in_process"

    def to_dict(self) -> dict:
        out = {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}
        out["token"] = "***" if self.token else None  # never written out
        return out


def open_client(config: BenchConfig) -> SearchClient:
    if config.url is not None:
        return HttpClient(config.url, config.token, connections=max(max(config.concurrency), config.quality_concurrency),
                          timeout_s=config.request_timeout_s, rerank=config.rerank)
    return InProcessClient.open(config.index, config.model, engine=config.engine, device=config.device,
                                torch_threads=config.torch_threads, max_k=config.max_k, rerank=config.rerank)


def image_search(client: SearchClient, queries: QuerySet, k: int | None, filter: str | None = None,
                 seen: "FilterStats | None" = None) -> Call:
    """Request i uploads query image i mod len(queries)."""

    async def call(i: int) -> dict:
        j = i % len(queries)
        answer = await client.search_image(queries.images[j], queries.name(j), k, filter=filter)
        return seen.observe(answer) if seen is not None else answer

    return call


def code_search(client: SearchClient, codes_hex: list[str], k: int | None, filter: str | None = None,
                seen: "FilterStats | None" = None) -> Call:
    """Request i searches by code i mod len(codes): no decode, no encode."""

    async def call(i: int) -> dict:
        answer = await client.search_code(codes_hex[i % len(codes_hex)], k, filter=filter)
        return seen.observe(answer) if seen is not None else answer

    return call


class FilterStats:
    """What filtered answers said: the strategies used, the items selected, and how many answers were short of k."""

    def __init__(self, text: str):
        self.text, self.strategies, self.selected, self.short, self.filter = text, {}, None, 0, None

    def observe(self, answer: dict) -> dict:
        strategy = answer.get("strategy") or "none"
        self.strategies[strategy] = self.strategies.get(strategy, 0) + 1
        self.selected, self.filter = answer.get("selected"), answer.get("filter")
        self.short += len(answer.get("hits", [])) < answer.get("k", 0)
        return answer

    def report(self) -> dict:
        return {"text": self.text, "normalized": self.filter, "selected": self.selected,
                "strategies": self.strategies, "answers_short_of_k": self.short}


async def measure_levels(call: Call, levels: tuple[int, ...], n_requests: int,
                         time_limit_s: float | None = None) -> list[LoadResult]:
    return [await run_load(call, n_requests, c, time_limit_s=time_limit_s) for c in levels]


async def _bench(config: BenchConfig, queries: QuerySet) -> dict:
    client = open_client(config)
    try:
        info = await client.info()
        if config.rerank is not None and not info.get("hash_values"):
            raise InvalidParameterError(f"--rerank: the index of {client.target} stores no hash values; encode with "
                                        "--store-hash-values and build the index again")
        quality = await measure_quality(client, queries, info, ks=config.ks, exclude_self=config.exclude_self,
                                        concurrency=config.quality_concurrency, time_limit_s=config.time_limit_s)
        seen = FilterStats(config.filter) if config.filter else None
        end_to_end = await measure_levels(image_search(client, queries, config.k, config.filter, seen),
                                          config.concurrency, config.requests, config.time_limit_s)
        search_only = []
        if config.search_only and quality.codes_hex:
            search_only = await measure_levels(code_search(client, quality.codes_hex, config.k, config.filter, seen),
                                               config.concurrency, config.requests, config.time_limit_s)
    finally:
        await client.aclose()
    return {"target": client.target, "mode": config.mode, "server": info, "quality": quality.report,
            "precision_recall": quality.curve, "filter": seen.report() if seen else None,
            "_levels": {"end_to_end": end_to_end, "search_only": search_only}}


def run_bench(config: BenchConfig) -> dict:
    """Measure, write bench.json (and the plots) into config.out, and return the report."""
    from medhash.atomic import write_text_atomic
    from medhash.bench.machine import machine_info

    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    queries = load_query_set(config.queries, config.image_root, config.max_queries)
    if not len(queries):
        raise LabelTableError(f"{config.queries}: no readable query images ({len(queries.unreadable)} unreadable, "
                              f"first: {queries.unreadable[:3]})")
    report = asyncio.run(_bench(config, queries))
    levels = report.pop("_levels")
    report["latency"] = {name: [r.summary() for r in results] for name, results in levels.items()}
    report["queries"] = queries.as_dict()
    report["config"] = config.to_dict()
    report["plots"] = _plots(config, levels, report["precision_recall"]) if config.plots else {}
    report["machine"] = machine_info()
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    write_text_atomic(out / BENCH_JSON, json.dumps(report, indent=2) + "\n")
    return report


def _plots(config: BenchConfig, levels: dict[str, list[LoadResult]], curve: dict) -> dict:
    from medhash.bench.plots import latency_histogram, precision_recall_curve

    out = Path(config.out)
    titles = {"end_to_end": "End-to-end (image upload)", "search_only": "Search only (by code)"}
    panels = {titles[name]: {r.concurrency: r.latencies_s * 1000.0 for r in results}
              for name, results in levels.items() if results}
    latency_histogram(panels, out / LATENCY_PNG)
    precision_recall_curve(curve, out / PR_PNG)
    return {"latency_histogram": LATENCY_PNG, "precision_recall": PR_PNG}
