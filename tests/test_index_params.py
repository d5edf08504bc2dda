"""Index parameters are validated at the edge (issue 14): unknown keys, typos, wrong kinds, bad types and bounds
are refused with one line before any FAISS call or allocation. The cases that once crashed or exhausted memory
run `medhash index build` in a subprocess under an address-space limit, so a regression cannot take the machine down."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from medhash.errors import InvalidParameterError
from medhash.index import BuildConfig, TuneConfig, build_index
from medhash.index.kinds import KINDS
from tests.test_index import write_codes

MEMORY_LIMIT = 3 << 30  # bytes of address space: faiss + pyarrow start in ~1 GB; M=-1 once grew to ~24 GB
N_CODES = 60


@pytest.fixture(scope="module")
def small_codes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("codes")
    write_codes(folder, np.random.default_rng(3).integers(0, 256, (N_CODES, 8), dtype=np.uint8))
    return folder


def build_cli_limited(codes: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`medhash index build` in a child whose address space is capped at MEMORY_LIMIT."""
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))
        from medhash.cli import main
        sys.argv = ["medhash"] + sys.argv[1:]
        main()
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", script, "index", "build", "--codes", str(codes), "--out", str(out),
                           *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("kind,params,expected", [
    ("hnsw", ["M=0"], "M=0 is out of range; M takes an integer in [2, 256]"),  # aborted inside FAISS
    ("hnsw", ["M=-1"], "M=-1 is out of range"),  # grew to ~24 GB
    ("ivf", ["nlist=0"], "nlist=0 is out of range"),
    ("ivf", ["nlist=abc"], "nlist='abc' is not an integer"),
    ("ivf", ["nlist=50000"], f"nlist=50000 is more than the {N_CODES} codes to cluster"),
    ("ivf", ["nlst=4"], "unknown parameter 'nlst' (did you mean nlist?); ivf takes"),
    ("ivf", ["bogus=3"], "unknown parameter 'bogus'; ivf takes: nlist, nprobe, train_per_list"),
    ("flat", ["nlist=5"], "unknown parameter 'nlist' (nlist is a parameter of ivf); flat takes: none"),
    ("multihash", ["nhash=0"], "nhash=0 is out of range"),  # built an index that could not be loaded
    ("multihash", ["nhash=8", "b=16"], "nhash * b = 8 * 16 = 128 is more than the 64 bits of a code"),
])
def test_bad_index_params_are_one_line_errors_under_a_memory_limit(small_codes, tmp_path, kind, params, expected):
    out = tmp_path / "index"
    result = build_cli_limited(small_codes, out, "--kind", kind, *[a for p in params for a in ("--param", p)])
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if " INFO " not in line]  # the job's first log line
    assert len(lines) == 1 and lines[0].startswith(f"Error: index kind {kind}: ") and expected in lines[0], lines
    leftovers = list(out.rglob("*")) if out.exists() else []
    assert not leftovers, leftovers  # refused before any file (or *.tmp) was written


def test_valid_overrides_build_and_derive_the_rest(small_codes, tmp_path):
    untuned = TuneConfig(target_recall=None)  # autotuning would replace the derived nprobe
    manifest = build_index(small_codes, tmp_path / "ivf", BuildConfig(kind="ivf", params={"nlist": 4}, tune=untuned))
    assert manifest.params["nlist"] == 4 and manifest.params["nprobe"] == 1  # derived from the given nlist
    manifest = build_index(small_codes, tmp_path / "mih", BuildConfig(kind="multihash", params={"b": 16}))
    assert manifest.params["b"] == 16 and manifest.params["nhash"] == 4


@pytest.mark.parametrize("value", [True, 2.5, float("nan"), "4", None, [4]])
def test_values_of_the_wrong_type_are_refused(value):
    with pytest.raises(InvalidParameterError, match="is not an integer"):
        KINDS["hnsw"].check_overrides({"M": value})


def test_float_parameters_take_numbers():
    assert KINDS["multihash"].check_overrides({"budget": 3}) == {"budget": 3.0}
    with pytest.raises(InvalidParameterError, match="budget=inf is out of range"):
        KINDS["multihash"].check_overrides({"budget": float("inf")})


def test_every_kind_declares_the_parameters_it_chooses():
    for kind in KINDS.values():
        declared = {spec.name for spec in kind.param_specs}
        for n in (1, 100, 10**6):
            chosen = kind.default_params(n, 64)
            assert set(chosen) <= declared, (kind.name, chosen)
            kind.check_overrides(chosen)  # the defaults pass their own bounds


def test_unknown_kind_is_one_line():
    from medhash.index import get_kind

    with pytest.raises(InvalidParameterError, match="unknown index kind 'ivfx'; known: flat, hnsw, ivf, multihash"):
        get_kind("ivfx")
