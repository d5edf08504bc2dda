"""`medhash bench`: parse options, call medhash.bench.run_bench, print a short summary."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from medhash.cli.options import MedhashCommand, cutoffs_option, emit, engine_option, int_list, json_option

log = logging.getLogger("medhash.cli")


def _positive_ints(ctx, param, value: str) -> tuple[int, ...]:
    numbers = int_list(value)
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"expected integers >= 1, got {value!r}")
    return numbers


@click.command("bench", cls=MedhashCommand,
               renamed={"--queries": "--labels", "--ks": "--cutoffs", "--threads": "--torch-threads"})
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="In process: the index folder (with --model).")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="In process: the checkpoint whose model_id matches the index.")
@click.option("--url", default=None, help="A running `medhash serve`, e.g. http://127.0.0.1:8000 (instead of --index/--model).")
@click.option("--token", envvar="MEDHASH_TOKEN", default=None, help="Bearer token of the server (or MEDHASH_TOKEN).")
@click.option("--labels", "queries_csv", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labeled query set: a label table (image_id,file,patient_id,labels[,dev_fold] or NIH format).")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Where the table's relative paths resolve (default: its folder).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for bench.json, latency_histogram.png and precision_recall.png.")
@click.option("--concurrency", default="1,4,16", show_default=True, callback=_positive_ints,
              help="Concurrency levels, comma-separated.")
@click.option("--requests", "n_requests", type=click.IntRange(min=0), default=200, show_default=True,
              help="Requests per concurrency level (image uploads, and as many searches by code).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits per latency request.")
@cutoffs_option()
@click.option("--include-self", is_flag=True,
              help="Keep each query's own image (same image_id) in its ranking; by default it is left out.")
@click.option("--max-queries", type=click.IntRange(min=1), default=None, help="Score only the first N queries.")
@click.option("--no-search-only", is_flag=True, help="Skip the search-by-code latency.")
@click.option("--no-plots", is_flag=True, help="Write no PNG plots.")
@engine_option()
@click.option("--device", default="cpu", show_default=True, help="In process: torch device.")
@click.option("--torch-threads", type=click.IntRange(min=1), default=None, help="In process: torch threads.")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds per pass after which no new request starts.")
@click.option("--rerank", type=click.IntRange(min=1), default=None, metavar="N",
              help="Image searches re-rank the Hamming top N by cosine of the hash values (quality and end to end; "
                   "search by code stays Hamming).")
@click.option("--filter", "filter_text", default=None,
              help="Latency requests carry this filter (README: Filtered search); bench.json reports the strategies "
                   "the server used. Filtered recall at archive scale: python -m benchmarks.filtered_search.")
@json_option()
def bench_cmd(index_dir, model_path, url, token, queries_csv, image_root, out_dir, concurrency, n_requests, k, cutoffs,
              include_self, max_queries, no_search_only, no_plots, engine, device, torch_threads, time_limit_s,
              rerank, filter_text, as_json) -> None:
    """Measure a server: mAP/mAP@k/P@k (tie-aware), latency p50/p95/p99 and throughput per concurrency.

    Against an index and model in this process (--index --model) or a running server (--url [--token]).
    Writes bench.json and PNG plots to --out and prints a summary."""
    log.info("bench: %s with the queries of %s, concurrency %s, %d requests per level -> %s",
             url or index_dir, queries_csv, ",".join(map(str, concurrency)), n_requests, out_dir)
    from medhash.bench import BenchConfig, run_bench
    from medhash.bench.summary import format_summary

    try:
        config = BenchConfig(queries=str(queries_csv), out=str(out_dir), index=str(index_dir) if index_dir else None,
                             model=str(model_path) if model_path else None, url=url, token=token,
                             image_root=str(image_root) if image_root else None, concurrency=concurrency,
                             requests=n_requests, k=k, ks=cutoffs, exclude_self=not include_self, max_queries=max_queries,
                             search_only=not no_search_only, plots=not no_plots, engine=engine, device=device,
                             torch_threads=torch_threads, time_limit_s=time_limit_s, rerank=rerank,
                             filter=filter_text)
        if filter_text:
            from medhash.index.filters import parse_filter

            parse_filter(filter_text)  # a bad filter stops here, not after the quality pass
    except ValueError as exc:  # FilterError is a ValueError: one line naming the bad clause
        raise click.UsageError(str(exc)) from None
    report = run_bench(config)  # unreachable server, 401, unreadable query set: MedhashGroup prints one line
    emit(as_json, report, f"{format_summary(report)}\nwrote {out_dir / 'bench.json'}")


commands = [bench_cmd]
