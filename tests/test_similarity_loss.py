"""The pairwise multi-label similarity loss: Jaccard targets, gradient direction, weight 0 = the
paper's three-term loss exactly, and its place in the hash and joint stages."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from medhash.data.phantoms import PhantomConfig, write_phantom_dataset
from medhash.model import AGHashNet, ModelConfig
from medhash.model.losses import (
    LossWeights,
    bit_balance_loss,
    classification_loss,
    hashing_loss,
    jaccard_similarity,
    quantization_loss,
    similarity_loss,
)
from medhash.train import TrainConfig, train
from medhash.train.stages import HashStage, JointStage

TINY = ModelConfig(backbone="tiny", bits=16, global_size=64, local_size=48, fusion_dim=32)


def inner(h: torch.Tensor, i: int, j: int) -> float:
    return float(h[i] @ h[j]) / h.shape[1]


def test_jaccard_similarity_of_label_sets():
    y = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.float32)
    j = jaccard_similarity(y)
    assert j[0, 1] == pytest.approx(0.5) and j[0, 2] == 0 and j[0, 0] == 1
    assert j[3, 3] == 0  # two empty label sets share nothing


def test_gradient_pulls_same_labels_together_and_pushes_disjoint_apart():
    torch.manual_seed(0)
    # 0 and 1: identical labels (J = 1), far apart; 2 and 3: disjoint labels (J = 0), close together
    base = torch.randn(4, 32).tanh()
    base[1] = -base[0] * 0.5
    base[3] = base[2] * 0.9
    targets = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    h = base.clone().requires_grad_(True)
    similarity_loss(h, targets).backward()
    stepped = (h - 0.5 * h.grad).detach()
    assert inner(stepped, 0, 1) > inner(base, 0, 1)  # pulled together
    assert inner(stepped, 2, 3) < inner(base, 2, 3)  # pushed apart
    # a disjoint pair already beyond orthogonal is left alone (the hinge)
    apart = torch.stack([base[2], -base[2]]).requires_grad_(True)
    loss = similarity_loss(apart, targets[2:])
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(apart.grad) == 0
    # the value is the mean over ordered pairs i != j of the squared errors against the targets
    j = jaccard_similarity(targets)
    s = base @ base.T / base.shape[1]
    manual = [((s[a, b] - j[a, b]) if j[a, b] > 0 else s[a, b].clamp_min(0)) ** 2 for a in range(4) for b in range(4) if a != b]
    assert float(similarity_loss(base, targets)) == pytest.approx(float(sum(manual) / 12), rel=1e-6)


def test_identical_labels_and_codes_cost_nothing():
    h = torch.ones(3, 8)
    targets = torch.tensor([[1, 0], [1, 0], [1, 0]], dtype=torch.float32)
    assert float(similarity_loss(h, targets)) == 0.0
    assert float(similarity_loss(h[:1], targets[:1])) == 0.0  # a batch of one has no pair


def test_zero_weight_is_the_three_term_loss_exactly():
    torch.manual_seed(1)
    logits, h = torch.randn(16, 5), torch.randn(16, 24).tanh()
    targets = (torch.rand(16, 5) < 0.3).float()
    weights = LossWeights()
    assert weights.similarity == 0.0
    total, terms = hashing_loss(logits, h, targets, weights)
    previous = (weights.classification * classification_loss(logits, targets) + weights.quantization * quantization_loss(h)
                + weights.bit_balance * bit_balance_loss(h))
    assert torch.equal(total, previous) and set(terms) == {"classification", "quantization", "bit_balance"}
    weighted, weighted_terms = hashing_loss(logits, h, targets, replace(weights, similarity=0.5))
    assert weighted_terms["similarity"] == pytest.approx(float(similarity_loss(h, targets)))
    assert float(weighted) == pytest.approx(float(previous + 0.5 * similarity_loss(h, targets)), rel=1e-6)


def test_hash_and_joint_stages_include_the_term():
    torch.manual_seed(2)
    model = AGHashNet(TINY).eval()
    x = torch.rand(4, 1, 64, 64)
    y = torch.tensor([[1, 0] + [0] * 13, [1, 0] + [0] * 13, [0, 1] + [0] * 13, [0, 1] + [0] * 13], dtype=torch.float32)
    feats = model.pooled_features(x)
    for stage, inputs in ((HashStage, feats), (JointStage, x)):
        plain, plain_terms = stage(model, None, LossWeights())(inputs, y)
        with_term, terms = stage(model, None, LossWeights(similarity=2.0))(inputs, y)
        assert "similarity" in terms and "similarity" not in plain_terms
        assert float(with_term.detach()) == pytest.approx(float(plain.detach()) + 2.0 * terms["similarity"], rel=1e-5)


def test_config_records_the_weight_only_when_set():
    """Weight 0 leaves TrainConfig.to_dict (which the stage digests hash) as it was before the term existed."""
    config = TrainConfig(labels="l.csv", out="m.pt")
    assert "similarity" not in config.to_dict()["losses"]
    weighted = replace(config, losses=LossWeights(similarity=0.3))
    assert weighted.to_dict()["losses"]["similarity"] == 0.3
    assert weighted.to_dict()["model"] == config.to_dict()["model"]


def test_training_with_the_term_logs_it(tmp_path):
    phantoms = write_phantom_dataset(tmp_path / "phantoms", 60, PhantomConfig(size=64, seed=3))
    config = TrainConfig(labels=str(phantoms / "labels.csv"), out=str(tmp_path / "m.pt"), model=TINY, load_size=64,
                         epochs_global=1, epochs_local=1, epochs_hash=2, batch_size=16, hash_batch_size=32,
                         precision="fp32", device="cpu", progress=False, val_folds=(4,),
                         losses=LossWeights(similarity=1.0))
    result = train(config)
    assert all("similarity" in record for record in result.history["hash"])
