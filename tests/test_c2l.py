"""C2L pretraining: EMA key encoder, FIFO queue, mixup, split BN, views, loss on phantoms, resume, train --init."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medhash.data.phantoms import PhantomConfig, write_phantom_dataset
from medhash.errors import CheckpointError
from medhash.model import ModelConfig, read_checkpoint
from medhash.model.backbone import build_backbone
from medhash.model.c2l import C2L, C2LConfig, SplitBatchNorm2d, mix, mixup_lambda, split_batch_norm
from medhash.train import TrainConfig, train
from medhash.train import pretrain as pretrain_module
from medhash.model.backbone_file import load_backbone_init, read_backbone
from medhash.train.augment import PretrainAugment, c2l_views
from medhash.train.data import list_images
from medhash.train.pretrain import PretrainConfig, pretrain

MILD = PretrainAugment(crop_scale=(0.7, 1.0), rotate_deg=5, cutout_holes=1, brightness=0.1, contrast=0.1)
TINY_MODEL = ModelConfig(backbone="tiny", bits=16, global_size=32, local_size=32, fusion_dim=16)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: intra-op threads only add synchronization (and crawl on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), 32, PhantomConfig(size=48, seed=5))


def small_pretrain(phantoms: Path, out: Path, **kw) -> PretrainConfig:
    base = PretrainConfig(images=str(phantoms / "images"), out=str(out), backbone="tiny", size=32, load_size=48,
                          epochs=2, batch_size=8, optimizer="adamw", lr=2e-3, warmup_epochs=0,
                          c2l=C2LConfig(bn_splits=2, momentum=0.99), precision="fp32", device="cpu", progress=False)
    return replace(base, **kw)


def tiny_c2l(queue_size: int = 16, **kw) -> C2L:
    torch.manual_seed(0)
    return C2L(build_backbone("tiny"), C2LConfig(bn_splits=2, **kw), queue_size)


# -- the model ---------------------------------------------------------------------------------------

def test_key_encoder_is_the_ema_of_the_query_encoder():
    model = tiny_c2l(momentum=0.9)
    q_params, k_params = list(model.query_encoder.parameters()), list(model.key_encoder.parameters())
    assert all(torch.equal(q, k) for q, k in zip(q_params, k_params))  # starts as a copy
    assert not any(k.requires_grad for k in k_params)  # and gets no gradient
    opt = torch.optim.SGD(model.query_encoder.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 32, 32, generator=gen)
    q, _ = model(x)
    loss, _ = model.loss(q, model.encode_keys(x, gen), torch.arange(8))
    loss.backward()
    opt.step()
    k_old = [k.detach().clone() for k in k_params]
    assert any(not torch.equal(q, k) for q, k in zip(q_params, k_old))  # the step moved the query encoder
    model.momentum_update()
    for q, k, before in zip(q_params, k_params, k_old):
        torch.testing.assert_close(k, 0.9 * before + 0.1 * q.detach(), rtol=1e-6, atol=1e-7)


def test_queue_is_fifo_and_remembers_image_ids():
    model = tiny_c2l(queue_size=5, dim=4)
    pushed_keys, pushed_ids = [], []
    for step in range(4):  # 4 x 3 keys through a queue of 5: wraps around twice
        keys, ids = torch.randn(3, 4), torch.arange(3) + 10 * step
        model.enqueue(keys, ids)
        pushed_keys.append(torch.nn.functional.normalize(keys, dim=1))
        pushed_ids.append(ids)
        queue, queue_ids = model.queue_in_order()
        all_ids = torch.cat(pushed_ids)
        if len(all_ids) >= 5:  # the 5 newest, oldest first
            assert torch.equal(queue_ids, all_ids[-5:])
            torch.testing.assert_close(queue, torch.cat(pushed_keys)[-5:])
    # more keys than slots at once: only the newest stay
    model.enqueue(torch.randn(7, 4), torch.arange(100, 107))
    assert model.queue_in_order()[1].tolist() == [102, 103, 104, 105, 106]


def test_negatives_from_the_querys_own_image_are_masked():
    model = tiny_c2l(queue_size=4, dim=3)
    model.enqueue(torch.eye(3)[[0, 1, 2, 0]], torch.tensor([7, 8, 9, 7]))
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits = model._logits(q, q, [torch.tensor([7, 5])])
    queue_ids = model.queue_ids
    assert torch.isinf(logits[0, 1:][queue_ids == 7]).all() and torch.isfinite(logits[0, 1:][queue_ids != 7]).all()
    assert torch.isfinite(logits[1]).all()  # image 5 has no slot
    assert logits[0, 0] == pytest.approx(1 / model.config.temperature)


def test_mixup_lambda_is_at_least_half():
    rng = np.random.default_rng(0)
    for alpha in (0.2, 1.0, 5.0):
        lams = np.array([mixup_lambda(rng, alpha) for _ in range(4000)])
        assert lams.min() >= 0.5 and lams.max() <= 1.0
    lams = np.array([mixup_lambda(rng, 1.0) for _ in range(20000)])
    assert abs(lams.mean() - 0.75) < 0.01  # max(U, 1 - U) for U ~ Beta(1, 1) = U(0, 1) has mean 3/4
    x = torch.rand(4, 1, 8, 8)
    perm = torch.tensor([1, 0, 3, 2])
    torch.testing.assert_close(mix(x, perm, 0.7)[0], 0.7 * x[0] + 0.3 * x[1])


def test_split_batch_norm_normalizes_each_sub_batch_on_its_own():
    bn = torch.nn.BatchNorm2d(3)
    bn.weight.data.uniform_(0.5, 2)
    holder = torch.nn.Sequential(bn)
    split_batch_norm(holder, 2)
    split = holder[0]
    assert isinstance(split, SplitBatchNorm2d) and set(split.state_dict()) == set(bn.state_dict())
    torch.testing.assert_close(split.weight, bn.weight)
    x = torch.randn(8, 3, 4, 4)
    x[0::2] += 10.0  # group 0 (even samples) is shifted: plain BN would leave both groups off-centre
    split.train()
    out = split(x)
    for group in (out[0::2], out[1::2]):
        assert group.mean(dim=(0, 2, 3)).abs().max() < 1e-4 + split.bias.abs().max()
        torch.testing.assert_close(group.mean(dim=(0, 2, 3)), split.bias.detach(), atol=1e-4, rtol=0)
    split.eval()  # inference: running statistics, like a plain BatchNorm2d
    plain = torch.nn.BatchNorm2d(3).eval()
    plain.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x), plain(x))
    with pytest.raises(ValueError, match="divisible"):
        split.train()(torch.randn(5, 3, 4, 4))


def test_views_are_seeded_sized_and_in_range():
    x = torch.rand(6, 1, 48, 48)
    cfg = PretrainAugment()
    a = c2l_views(x, cfg, 32, torch.Generator().manual_seed(1), 0.5)
    b = c2l_views(x, cfg, 32, torch.Generator().manual_seed(1), 0.5)
    c = c2l_views(x, cfg, 32, torch.Generator().manual_seed(2), 0.5)
    assert a.shape == (6, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0
    # Identity settings reproduce the (resized) image; cutout alone paints square holes of `fill`.
    none = PretrainAugment(crop_scale=(1, 1), crop_ratio=(1, 1), rotate_deg=0, hflip=False, brightness=0, contrast=0,
                           cutout_holes=0)
    same = c2l_views(x, none, 48, torch.Generator().manual_seed(0), 0.5)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    holes = c2l_views(torch.zeros(4, 1, 48, 48), replace(none, cutout_holes=1, cutout_frac=0.25), 48,
                      torch.Generator().manual_seed(0), 0.5)
    painted = (holes == 0.5).sum(dim=(1, 2, 3))
    assert (painted > 0).all() and (painted <= 12 * 12).all()


# -- the run -----------------------------------------------------------------------------------------

def test_loss_falls_on_phantoms(phantoms, tmp_path):
    result = pretrain(small_pretrain(phantoms, tmp_path / "b.pt", epochs=8, augment=MILD))
    steps = np.array(result.step_losses)
    assert len(steps) == 8 * 4 and np.isfinite(steps).all()
    # pre-filled queue: the first steps sit near log(K + 1), the chance level of telling the positive apart
    assert abs(steps[:4].mean() - np.log(result.queue_size + 1)) < 0.5
    assert steps[-8:].mean() < steps[:8].mean() - 0.1
    for term in ("loss_qk", "loss_mix", "loss_mixfeat", "top1"):
        assert term in result.history[-1]


def test_queue_never_holds_the_current_keys_when_the_loss_is_computed(phantoms, tmp_path, monkeypatch):
    seen = []
    original = C2L.loss

    def spy(self, q, k, ids, *args, **kwargs):
        keys = torch.nn.functional.normalize(k.float(), dim=1)
        nearest = (keys @ self.queue.t()).max(dim=1).values  # cosine 1 = this very key is in the queue
        seen.append((float(nearest.max()), self.queue_ids.clone(), ids.clone()))
        return original(self, q, k, ids, *args, **kwargs)

    monkeypatch.setattr(C2L, "loss", spy)
    pretrain(small_pretrain(phantoms, tmp_path / "b.pt", epochs=2))
    assert len(seen) == 2 * 4
    assert max(s[0] for s in seen) < 1 - 1e-4
    # ...and the keys do get pushed after the step: each step's ids are in the queue by the next step
    for (_, _, ids), (_, queue_ids_next, _) in zip(seen, seen[1:]):
        assert set(ids.tolist()) <= set(queue_ids_next.tolist())


def test_pretraining_resumes_where_it_stopped(phantoms, tmp_path, monkeypatch):
    whole = pretrain(small_pretrain(phantoms, tmp_path / "whole.pt", epochs=3))
    original = pretrain_module.Pretrainer._save_state
    calls = []

    def save_then_crash(self, state):
        original(self, state)
        calls.append(state["epoch"])
        if len(calls) == 1:
            raise KeyboardInterrupt

    cfg = small_pretrain(phantoms, tmp_path / "resumed.pt", epochs=3)
    monkeypatch.setattr(pretrain_module.Pretrainer, "_save_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg)
    assert not (tmp_path / "resumed.pt").exists() and (tmp_path / "resumed.pt.state.pt").exists()
    resumed = pretrain(cfg)
    assert calls == [1, 2, 3]  # the rerun trained epochs 2 and 3 only
    assert resumed.backbone_id == whole.backbone_id
    assert resumed.step_losses == pytest.approx(whole.step_losses)
    with pytest.raises(ValueError, match="different recipe"):
        pretrain(replace(cfg, lr=1e-4))


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_torchrun_two_gloo_processes_share_one_queue(phantoms, tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medhash", "pretrain", "--images", str(phantoms / "images"), "--out", str(out), "--backbone", "tiny",
           "--size", "32", "--load-size", "48", "--epochs", "1", "--batch-size", "8", "--bn-splits", "2",
           "--precision", "fp32", "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = read_backbone(out)
    assert payload["pretrain"]["world_size"] == 2 and payload["pretrain"]["batch_size"] == 8
    state = torch.load(f"{out}.state.pt", weights_only=False)
    # 32 images, 2 ranks x 2 steps x 8: the gathered keys of one epoch fill the queue with every image once
    assert sorted(state["model"]["queue_ids"].tolist()) == list(range(32))


def test_folder_input_skips_unreadable_files(phantoms, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for src in sorted((phantoms / "images").iterdir())[:16]:
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")  # not an image suffix: never listed
    assert len(list_images(folder)) == 17
    result = pretrain(small_pretrain(phantoms, tmp_path / "b.pt", images=str(folder), epochs=1))
    assert result.n_images == 16 and [Path(p).name for p, _ in result.skipped_images] == ["broken.png"]
    assert result.queue_size == 16  # capped by the data size


# -- pretrain -> train --init ----------------------------------------------------------------------------

def test_pretrain_then_train_init_round_trip(phantoms, tmp_path):
    from medhash.cli.model_cmds import train_cmd
    from medhash.cli.pretrain_cmds import pretrain_cmd

    backbone = tmp_path / "backbone.pt"
    runner = CliRunner()
    res = runner.invoke(pretrain_cmd, ["--images", str(phantoms / "labels.csv"), "--out", str(backbone), "--backbone", "tiny",
                                       "--size", "32", "--load-size", "48", "--epochs", "1", "--batch-size", "8",
                                       "--bn-splits", "2", "--precision", "fp32", "--device", "cpu", "--no-progress"],
                        catch_exceptions=False)
    assert res.exit_code == 0 and "wrote" in res.output
    payload = read_backbone(backbone)
    assert payload["format"] == "medhash.backbone" and payload["arch"] == "tiny"
    assert payload["pretrain"]["n_images"] == 32 and len(payload["pretrain"]["history"]) == 1

    # Backbone stages off: both branches must hold exactly the pretrained weights.
    cfg = TrainConfig(labels=str(phantoms / "labels.csv"), out=str(tmp_path / "m.pt"), model=TINY_MODEL, load_size=48,
                      epochs_global=0, epochs_local=0, epochs_hash=1, batch_size=8, precision="fp32", device="cpu",
                      progress=False, init=str(backbone))
    train(cfg)
    ckpt = read_checkpoint(tmp_path / "m.pt")
    assert ckpt["extra"]["init"] == {"source": "c2l", "path": str(backbone), "backbone_id": payload["id"]}
    for branch in ("global_backbone", "local_backbone"):
        for name, weight in payload["state_dict"].items():
            assert torch.equal(ckpt["state_dict"][f"{branch}.features.{name}"], weight), (branch, name)

    res = runner.invoke(train_cmd, ["--labels", str(phantoms / "labels.csv"), "--out", str(tmp_path / "cli.pt"),
                                    "--bits", "16", "--backbone", "tiny", "--size", "32", "--load-size", "48",
                                    "--epochs-global", "1", "--epochs-local", "1", "--epochs-hash", "1",
                                    "--batch-size", "8", "--precision", "fp32", "--device", "cpu", "--no-progress",
                                    "--init", str(backbone)], catch_exceptions=False)
    assert res.exit_code == 0
    assert read_checkpoint(tmp_path / "cli.pt")["extra"]["init"]["backbone_id"] == payload["id"]


def test_train_init_refuses_a_backbone_of_another_architecture(phantoms, tmp_path):
    backbone = tmp_path / "tiny.pt"
    pretrain(small_pretrain(phantoms, backbone, epochs=1))
    with pytest.raises(CheckpointError) as err:
        load_backbone_init(backbone, "densenet121")
    message = str(err.value)
    assert str(backbone) in message and "'tiny'" in message and "'densenet121'" in message
    cfg = TrainConfig(labels=str(phantoms / "labels.csv"), out=str(tmp_path / "m.pt"),
                      model=replace(TINY_MODEL, backbone="densenet121"), load_size=48, epochs_global=1,
                      precision="fp32", device="cpu", progress=False, init=str(backbone))
    with pytest.raises(CheckpointError, match="densenet121"):
        train(cfg)
    assert not (tmp_path / "m.pt").exists()
    # Not a backbone file at all / altered weights: refused with the file named.
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_backbone_init(tmp_path / "junk.pt", "tiny")
    payload = torch.load(backbone, weights_only=True)
    next(iter(payload["state_dict"].values())).add_(1.0)
    torch.save(payload, tmp_path / "altered.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_backbone_init(tmp_path / "altered.pt", "tiny")
