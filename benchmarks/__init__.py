"""Measurement scripts of the project (not shipped): each measures one thing and writes benchmarks/results/<name>.json.

Run from the repository root as modules, e.g. `python -m benchmarks.search_latency --help`. They are
not the shipped `medhash bench` command (package medhash.bench), which benchmarks a user's own server
or index; these scripts produce the figures quoted in the README, on the machine they run on, and
reuse the library (medhash.bench.machine for the machine record, medhash.app.fixtures for a small
served archive) rather than copying its set-up code.
"""
