"""`medhash bench`: retrieval quality and latency of a server, in process or over HTTP (see run.py).

The shipped command a user runs against their own index or server. The measurement scripts of the
project itself (search latency at 10M codes, encode throughput, training runs) are another thing:
they live in benchmarks/ at the repository root, are not installed, and write benchmarks/results/.
"""

from medhash.bench.run import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
