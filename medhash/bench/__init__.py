"""`medhash bench`: retrieval quality and latency of a server, in process or over HTTP (see run.py)."""

from medhash.bench.run import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
