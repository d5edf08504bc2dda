"""The CLI as the tools around it use it: readable piped logs, --json everywhere, options from the
environment, deprecated spellings, the README's command reference and Python API example (issue 15)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from medhash.cli import main

REPO = Path(__file__).resolve().parents[1]
GLOBAL_OPTIONS = {"-v", "--verbose", "--log-level", "--log-format", "-h", "--help"}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def run(args, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)
    return result


def medhash_piped(args, tmp_path, env_extra=None):
    """`python -m medhash ARGS 2>&1 | cat`: stderr and stdout a pipe, as in a log file."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "medhash", *map(str, args)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    return proc.returncode, proc.stdout.decode()


def assert_readable(log: str) -> None:
    assert "\r" not in log
    bad = [line for line in log.splitlines() if CONTROL.search(line) or len(line) > 200]
    assert not bad, bad[:3]


# ---------------------------------------------------------------------------------------------- logs


@pytest.mark.slow
@pytest.mark.distributed
def test_piped_encode_logs_one_line_per_shard_and_json_summary(served_archive, tmp_path):
    rel = lambda path: os.path.relpath(path, tmp_path)  # noqa: E731 - short paths, as a user's would be
    code, log = medhash_piped(["encode", "--model", rel(served_archive.model_path), "--out", "codes",
                               "--workers", "1", "--shard-size", "16", "--engine", "fp32", "--json", "-v",
                               rel(served_archive.root / "phantoms" / "images")], tmp_path)
    assert code == 0, log
    assert_readable(log)
    shard_lines = [line for line in log.splitlines() if re.search(r"shard part-\d+ done", line)]
    assert len(shard_lines) == 3, log  # 48 images / 16
    assert all("images/s" in line and "ETA" in line for line in shard_lines)
    assert "Dask dashboard" in log
    assert log.splitlines()[0].endswith("(starting the Dask workers)") or "encode:" in log.splitlines()[0]
    payload = json.loads(log[log.index("\n{") + 1:])  # --json: the object is the last thing printed
    assert {"encoded", "failed", "skipped", "shards", "model_id", "manifest", "exit_status"} <= set(payload)
    assert payload["encoded"] == 48


@pytest.mark.slow
def test_demo_log_is_readable_line_by_line(tmp_path):
    """A shortened `medhash demo > demo.log 2>&1`: one line per epoch and per shard, nothing unreadable."""
    code, log = medhash_piped(["demo", "--out", "demo", "--n", "40", "--size", "64",
                               "--epochs", "0.05", "--requests", "4"], tmp_path)
    assert code == 0, log[-3000:]
    assert_readable(log)
    epochs = [line for line in log.splitlines() if re.search(r"stage \w+ epoch \d+/\d+:", line)]
    assert len(epochs) == 1 + 1 + 2, epochs  # global, local, hash: max(1, round(n * 0.05)) each
    assert len([line for line in log.splitlines() if "shard part-" in line and " done " in line]) == 1
    assert "report.html" in log


def test_json_log_format_and_log_level_after_the_command(served_archive):
    result = run(["index", "info", "--index", served_archive.index_dir, "--log-format", "json", "--log-level", "debug",
                  "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 48
    assert run(["index", "info", "-v", "--index", served_archive.index_dir]).exit_code == 0


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from medhash.logs import progress_bars

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress_bars(True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress_bars(True) and progress_bars(None) and not progress_bars(False)


# ---------------------------------------------------------------------------------------------- --json


@pytest.fixture(scope="module")
def json_results(served_archive, tmp_path_factory):
    """`--json` output of the index, query and evaluate commands over the served archive."""
    a, tmp = served_archive, tmp_path_factory.mktemp("json")
    ids = tmp / "ids.txt"
    ids.write_text("ph11_000000_000\n")
    out = {}

    def parsed(name, args):
        result = run(args + ["--json"])
        assert result.exit_code == 0, result.output
        out[name] = json.loads(result.stdout)

    parsed("index build", ["index", "build", "--codes", a.root / "codes", "--out", tmp / "idx"])
    parsed("index remove", ["index", "remove", "--index", tmp / "idx", "--ids", ids])
    parsed("index add", ["index", "add", "--index", tmp / "idx", "--codes", a.root / "codes", "--replace"])
    parsed("index info", ["index", "info", "--index", tmp / "idx"])
    parsed("query", ["query", "--index", a.index_dir, "--model", a.model_path, "-k", "3", a.image_paths[0]])
    parsed("evaluate", ["evaluate", "--model", a.model_path, "--labels", a.labels_csv, "--cutoffs", "5",
                        "--engine", "fp32"])
    return out


DOCUMENTED_KEYS = {
    "index build": {"kind", "count", "bits", "model_id", "params"},
    "index remove": {"removed", "missing", "count"},
    "index add": {"added", "replaced", "count"},
    "index info": {"kind", "count", "bits", "model_id", "checksums_verified"},
    "query": {"index", "k", "results"},
    "evaluate": {"model_id", "bits", "n_queries", "n_database", "retrieval"},
}


@pytest.mark.parametrize("command", sorted(DOCUMENTED_KEYS))
def test_json_output_parses_with_documented_keys(json_results, command):
    assert DOCUMENTED_KEYS[command] <= set(json_results[command])


def test_query_json_holds_hits(json_results):
    hits = json_results["query"]["results"][0]["hits"]
    assert len(hits) == 3 and {"rank", "distance", "image_id", "labels"} <= set(hits[0])


@pytest.mark.slow
def test_train_pretrain_bench_json(served_archive, tmp_path):
    a = served_archive
    train = run(["train", "--labels", a.labels_csv, "--out", tmp_path / "m.pt", "--backbone", "tiny", "--bits", "16",
                 "--size", "32", "--load-size", "64", "--fusion-dim", "16", "--epochs-global", "1", "--epochs-local", "1",
                 "--epochs-hash", "1", "--batch-size", "16", "--json"])
    assert train.exit_code == 0, train.output
    assert {"checkpoint", "model_id", "val_map", "epochs", "seconds"} <= set(json.loads(train.stdout))
    pretrain = run(["pretrain", "--images", a.root / "phantoms" / "images", "--out", tmp_path / "b.pt", "--backbone",
                    "tiny", "--size", "32", "--load-size", "48", "--epochs", "1", "--batch-size", "8",
                    "--queue-size", "16", "--bn-splits", "1", "--json"])
    assert pretrain.exit_code == 0, pretrain.output
    assert {"backbone", "backbone_id", "epochs", "final_loss"} <= set(json.loads(pretrain.stdout))
    bench = run(["bench", "--index", a.index_dir, "--model", a.model_path, "--labels", a.labels_csv, "--out",
                 tmp_path / "bench", "--concurrency", "1", "--requests", "4", "--engine", "fp32", "--no-plots", "--json"])
    assert bench.exit_code == 0, bench.output
    assert {"quality", "latency", "machine"} <= set(json.loads(bench.stdout))


# ---------------------------------------------------------------------------------------------- names


def test_option_from_environment_takes_effect(served_archive, tmp_path):
    result = run(["index", "build", "--codes", served_archive.root / "codes", "--out", tmp_path / "idx", "--json"],
                 env={"MEDHASH_INDEX_BUILD_KIND": "multihash"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kind"] == "multihash"
    # a named flag (the dest differs from the flag: --index -> index_dir) and MEDHASH_TOKEN still work
    info = run(["index", "info", "--json"], env={"MEDHASH_INDEX_INFO_INDEX": str(tmp_path / "idx")})
    assert info.exit_code == 0 and json.loads(info.stdout)["kind"] == "multihash"
    token = main.commands["serve"].params[[p.name for p in main.commands["serve"].params].index("token")]
    assert token.envvar == "MEDHASH_TOKEN"


@pytest.mark.parametrize("command, old, new", [
    ("evaluate", ["-k", "5"], "--cutoffs"),
    ("evaluate", ["--json", "report.json"], "--json-out"),
    ("bench", ["--ks", "5"], "--cutoffs"),
    ("bench", ["--threads", "1"], "--torch-threads"),
    ("serve", ["--threads", "1"], "--torch-threads"),
    ("index build", ["--threads", "1"], "--faiss-threads"),
])
def test_renamed_options_work_through_their_old_names(command, old, new):
    from medhash.cli.options import rename_deprecated

    cmd = main
    for part in command.split():
        cmd = cmd.commands[part]
    renamed = rename_deprecated(list(old), cmd.renamed)
    assert renamed[0] == new and renamed[1:] == old[1:]
    assert new in {o for p in cmd.params for o in p.opts}


def test_renamed_option_end_to_end_prints_a_deprecation_line(served_archive, tmp_path):
    result = run(["bench", "--index", served_archive.index_dir, "--model", served_archive.model_path,
                  "--queries", served_archive.labels_csv, "--out", tmp_path / "bench", "--concurrency", "1",
                  "--requests", "1", "--max-queries", "2", "--no-plots", "--no-search-only", "--engine", "fp32",
                  "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert "--queries is deprecated" in result.stderr and "use --labels" in result.stderr
    assert "--threads is deprecated" in result.stderr
    report = json.loads(result.stdout)
    assert report["quality"]["n_queries"] == 2


def test_evaluate_old_json_file_still_writes_the_report(served_archive, tmp_path):
    result = run(["evaluate", "--model", served_archive.model_path, "--labels", served_archive.labels_csv,
                  "-k", "5", "--engine", "fp32", "--json", tmp_path / "report.json"])
    assert result.exit_code == 0, result.output
    assert "deprecated" in result.stderr
    assert "5" in json.loads((tmp_path / "report.json").read_text())["retrieval"]["map_at_k"]


def _commands(group: click.Group, path=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path + (name,))
        else:
            yield " ".join(path + (name,)), cmd


def _help_options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params if isinstance(p, click.Option) and not p.hidden
            for o in p.opts + p.secondary_opts} - GLOBAL_OPTIONS


def test_readme_command_reference_matches_help():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Command reference"):text.index("## Python API")]
    documented = {}
    for line in section.splitlines():
        match = re.match(r"\| `medhash ([a-z ]+?)(?: [A-Z.]+)?` \| (.*) \|$", line)
        if match:
            documented[match.group(1)] = set(re.findall(r"`([^`]+)`", match.group(2)))
    commands = dict(_commands(main))
    assert set(documented) == set(commands)
    for name, cmd in commands.items():
        assert documented[name] == _help_options(cmd), name
        help_text = CliRunner().invoke(main, [*name.split(), "--help"]).output
        assert all(option in help_text for option in documented[name] | {"--log-level", "--log-format", "-v"}), name
        assert "MEDHASH_<COMMAND>_<OPTION>" in help_text.replace("\n", " ").replace("  ", " ")


def test_every_option_has_help():
    missing = [f"{name} {p.opts[0]}" for name, cmd in _commands(main) for p in cmd.params
               if isinstance(p, click.Option) and not p.help]
    assert not missing, missing


# ---------------------------------------------------------------------------------------------- Python API


def test_import_medhash_is_light():
    code = "import sys, medhash; assert 'torch' not in sys.modules and 'faiss' not in sys.modules; print(medhash.__all__)"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert (REPO / "medhash" / "py.typed").exists()


def test_readme_python_api_example_runs(served_archive):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {"archive": served_archive}
    exec(compile(block, "README.md#python-api", "exec"), namespace)
    assert len(namespace["results"]) == 2 and len(namespace["table"]) == 10
    assert namespace["rows"][0]["rank"] == 1 and len(namespace["by_code"][0]) == 5


def test_hash_encoder_takes_arrays_and_2d_tensors(served_archive):
    import numpy as np
    import torch

    from medhash.data import read_image
    from medhash.model.encoder import HashEncoder

    encoder = HashEncoder.from_checkpoint(served_archive.model_path, engine="fp32")
    pixels = read_image(served_archive.image_paths[0])
    expected = encoder.encode(torch.from_numpy(pixels)[None, None]).codes
    for given in (pixels, torch.from_numpy(pixels), [pixels], np.stack([pixels])):
        assert np.array_equal(encoder.encode(given).codes, expected)


def test_reprs_say_what_things_are(served_archive):
    import numpy as np

    from medhash.index import HammingIndex

    index = HammingIndex(served_archive.index_dir)
    assert "kind='flat'" in repr(index) and "count=48" in repr(index)
    result = index.search(np.zeros((2, 4), np.uint8), 3)
    assert repr(result).startswith("SearchResult(2 queries") and repr(result[0]).startswith("Hits(3 hits")


# ---------------------------------------------------------------------------------------------- server


def test_metrics_have_process_collectors_and_access_log_logs_requests(served_archive, caplog):
    import logging

    from fastapi.testclient import TestClient

    from medhash.serve import SearchService, ServeConfig, create_app, startup_line

    service = SearchService.open(ServeConfig(index=str(served_archive.index_dir), model=str(served_archive.model_path),
                                             engine="fp32", access_log=True))
    line = startup_line(service)
    assert all(word in line for word in ("flat", "48 codes", service.encoder.model_id, "32 bits", "auth off",
                                         "archive root", "127.0.0.1:8000"))
    with caplog.at_level(logging.INFO, logger="medhash.serve.access"), TestClient(create_app(service)) as client:
        body = client.get("/metrics").text
        client.get("/v1/images/nope")
    assert "process_resident_memory_bytes" in body and "python_info" in body
    lines = [r.getMessage() for r in caplog.records if r.name == "medhash.serve.access"]
    assert any("GET /metrics 200" in m and m.endswith("ms") for m in lines)
    assert any("/v1/images/nope 40" in m for m in lines)


def test_plots_mark_chance_and_percentiles(tmp_path):
    from medhash.bench.plots import latency_histogram, precision_recall_curve

    curve = {"radius": [0, 1, 2], "precision": [0.9, 0.8, 0.5], "recall": [0.1, 0.5, 1.0], "base_rate": 0.5}
    assert precision_recall_curve(curve, tmp_path / "pr.png").stat().st_size > 0
    assert latency_histogram({"end to end": {1: [1.0, 2.0, 3.0, 10.0]}}, tmp_path / "lat.png").stat().st_size > 0
