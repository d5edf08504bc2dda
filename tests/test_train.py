"""Staged training on tiny phantoms: learns, resumes exactly, runs under torchrun (2 gloo processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medhash.data.phantoms import PhantomConfig, write_phantom_dataset
from medhash.model import ModelConfig, read_checkpoint
from medhash.train import TrainConfig, train
from medhash.train import stage_io

TINY = ModelConfig(backbone="tiny", bits=16, global_size=64, local_size=48, fusion_dim=32)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), 200, PhantomConfig(size=64, seed=3))


def small_config(phantoms: Path, out: Path, **kw) -> TrainConfig:
    base = TrainConfig(labels=str(phantoms / "labels.csv"), out=str(out), model=TINY, load_size=64,
                       epochs_global=1, epochs_local=1, epochs_hash=4, batch_size=16, hash_batch_size=32,
                       precision="fp32", device="cpu", progress=False, val_folds=(4,), checkpoint_every_s=0.0)
    return replace(base, **kw)


def test_training_writes_checkpoint_with_history(phantoms, tmp_path):
    result = train(small_config(phantoms, tmp_path / "m.pt"))
    payload = read_checkpoint(tmp_path / "m.pt")
    assert payload["model_id"] == result.model_id
    hist = payload["extra"]["history"]
    assert [len(hist[s]) for s in ("global", "local", "hash")] == [1, 1, 4]
    for term in ("classification", "quantization", "bit_balance"):
        assert term in hist["hash"][-1]  # each loss term is logged
    assert 0.0 <= result.val_map <= 1.0 and "val_auroc" in hist["global"][-1]
    assert payload["extra"]["train_config"]["model"]["bits"] == 16
    assert payload["extra"]["init"] == {"source": "random"}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_training_learns_beyond_random_codes(phantoms, tmp_path):
    from medhash.eval.metrics import evaluate_codes

    cfg = small_config(phantoms, tmp_path / "m.pt", epochs_global=8, epochs_local=3, epochs_hash=30, lr=1e-3)
    result = train(cfg)
    assert result.val_map is not None
    # floor: random codes for the same queries/database (the mAP of chance, label prior only)
    hist = result.history["hash"]
    rng = np.random.default_rng(0)
    from medhash.data.labels import read_label_table
    table = read_label_table(phantoms / "labels.csv")
    y = table.multi_hot()
    folds = np.array([r.fold for r in table.records])
    q, db = y[folds == 4], y[folds != 4]
    floor = np.mean([evaluate_codes(rng.integers(0, 256, (len(q), 2), dtype=np.uint8),
                                    rng.integers(0, 256, (len(db), 2), dtype=np.uint8), q, db).map_tie_aware
                     for _ in range(5)])
    assert hist[-1]["val_map"] > floor + 0.02, (hist[-1]["val_map"], floor)
    assert hist[-1]["classification"] < hist[0]["classification"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_interrupted_stage_resumes_to_the_same_model(phantoms, tmp_path, monkeypatch):
    reference = train(small_config(phantoms, tmp_path / "ref.pt"))
    calls = {"n": 0}
    real = stage_io.evaluate_codes

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill during the hash stage")
        return real(*args, **kwargs)

    cfg = small_config(phantoms, tmp_path / "run.pt")
    monkeypatch.setattr(stage_io, "evaluate_codes", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert not (tmp_path / "run.pt").exists()
    (hash_state,) = (tmp_path / "run.pt.stages").glob("hash-*.pt")
    state = torch.load(hash_state, weights_only=False)
    assert state["epoch"] == 2 and not state["done"]
    monkeypatch.setattr(stage_io, "evaluate_codes", real)
    resumed = train(cfg)
    assert resumed.model_id == reference.model_id
    assert len(resumed.history["hash"]) == 4
    again = train(cfg)  # everything done: stages are skipped, same model
    assert again.model_id == reference.model_id


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_stage_states_are_reused_only_where_the_config_allows(phantoms, tmp_path):
    work = tmp_path / "stages"
    first = train(small_config(phantoms, tmp_path / "a.pt", epochs_hash=1, work_dir=str(work)))
    # another hash length reuses the trained backbones and their cached features
    second = train(small_config(phantoms, tmp_path / "b.pt", epochs_hash=1, work_dir=str(work), model=replace(TINY, bits=24)))
    assert len(list(work.glob("global-*.pt"))) == 1 and len(list(work.glob("local-*.pt"))) == 1
    assert len(list(work.glob("hash-*.pt"))) == 2 and len(list(work.glob("features-*.pt"))) == 1
    assert second.history["global"] == first.history["global"]
    a, b = read_checkpoint(tmp_path / "a.pt")["state_dict"], read_checkpoint(tmp_path / "b.pt")["state_dict"]
    assert torch.equal(a["local_backbone.features.0.weight"], b["local_backbone.features.0.weight"])
    assert b["hash_layer.weight"].shape[0] == 24
    # an upstream change (learning rate) retrains from the first stage
    train(small_config(phantoms, tmp_path / "c.pt", epochs_hash=1, work_dir=str(work), lr=1e-2))
    assert len(list(work.glob("global-*.pt"))) == 2


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_torchrun_two_gloo_processes(phantoms, tmp_path):
    single = tmp_path / "single.pt"
    train(small_config(phantoms, single, epochs_hash=2))
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medhash", "train", "--labels", str(phantoms / "labels.csv"), "--out", str(out),
           "--backbone", "tiny", "--bits", "16", "--size", "64", "--local-size", "48", "--load-size", "64", "--fusion-dim", "32",
           "--epochs-global", "1", "--epochs-local", "1", "--epochs-hash", "2", "--batch-size", "8",
           "--precision", "fp32", "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, ref = read_checkpoint(out), read_checkpoint(single)
    assert ddp["extra"]["world_size"] == 2 and ref["extra"]["world_size"] == 1
    assert ddp["format"] == ref["format"] and ddp["format_version"] == ref["format_version"]
    assert set(ddp["state_dict"]) == set(ref["state_dict"])
    for k, v in ref["state_dict"].items():
        assert ddp["state_dict"][k].shape == v.shape, k
    assert ddp["model_config"]["bits"] == 16 and ddp["model_config"]["backbone"] == "tiny"
