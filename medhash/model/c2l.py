"""C2L ("Comparing to Learn", Zhou et al., MICCAI 2020): self-supervised pretraining of a backbone.

A momentum-contrast model with image and feature mixup:

- query encoder = backbone -> global average pool -> projection head (128-d);
  key encoder = an exponential moving average of it (k = m k + (1 - m) q, m = 0.999)
  that receives no gradient;
- a FIFO queue of past keys supplies the negatives; logits are cosine similarities / T (T = 0.07);
- mixup: lambda ~ Beta(a, a), lambda = max(lambda, 1 - lambda), one permutation of the batch,
  applied alike to the query view and the key view;
- loss = mean of three InfoNCE terms: (query, key), (mixed query, key of the mixed key view),
  (mixed query, mixup of the two keys' features).

Where this deliberately differs from the official code (github.com/funnyzhou/C2L_MICCAI2020):

- The queue is read once per step, before it is updated, and only the plain keys are pushed
  (the official code enqueues after each of its three terms, so the second and third terms saw
  the current batch's own keys among their negatives).
- Every queue slot remembers which image it came from, and a query's logits against slots of
  its own image(s) are masked. On a few thousand radiographs the queue (capped at the data size)
  spans about one epoch, so without the mask each image's previous-epoch key would be a
  "negative" nearly identical to its positive.
- The queue can be pre-filled with real keys (`prefill_queue`) instead of random vectors, so the
  loss starts at log(K + 1) and its curve is readable from the first step.
- Shuffled BN on one device: see `SplitBatchNorm2d`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medhash.errors import InvalidParameterError
from medhash.model.backbone import Backbone
from medhash.model.config import ModelConfig


@dataclass(frozen=True)
class C2LConfig:
    dim: int = 128  # projection size
    head_hidden: int = 0  # 0: one linear layer, as the official C2L DenseNet; > 0: 2-layer MLP head (MoCo v2 style)
    queue_size: int = 16384  # negatives; capped by the number of images
    momentum: float = 0.999  # key encoder EMA
    temperature: float = 0.07
    mixup_alpha: float = 1.0  # lambda ~ Beta(alpha, alpha); 0 turns mixup (and the two mixup terms) off
    bn_splits: int = 4  # BN sub-batches (the single-device stand-in for ShuffleBN); 1 = plain BN
    # Input normalization of [0, 1] pixels: the same as the hashing model's, so the backbone
    # sees the same input distribution when it is fine-tuned.
    mean: float = ModelConfig.mean
    std: float = ModelConfig.std

    def __post_init__(self) -> None:
        if self.dim < 1 or self.queue_size < 1 or self.bn_splits < 1:
            raise InvalidParameterError("dim, queue_size and bn_splits must be >= 1")
        if not 0.0 <= self.momentum < 1.0:
            raise InvalidParameterError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.temperature <= 0:
            raise InvalidParameterError(f"temperature must be > 0, got {self.temperature}")
        if self.mixup_alpha < 0:
            raise InvalidParameterError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")


# -- shuffled-BN equivalent on one device -------------------------------------------------------

class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalizes each of `splits` interleaved sub-batches with its own statistics.

    Why: with BN over the whole batch, a query and its positive key are normalized with
    statistics of the same images, and the network can "cheat" the instance discrimination
    through that shared signal (MoCo, He et al. 2020). Multi-GPU MoCo avoids it with
    ShuffleBN: the key batch is shuffled across GPUs, so each key's BN group differs from its
    query's. On one device a shuffle alone changes nothing (statistics of a whole batch do not
    depend on its order), so the batch is split into sub-batches with separate statistics, as
    separate GPUs would: sample n belongs to group n % splits. The key batch is shuffled before
    the key encoder (`C2L.encode_keys`), so a key's group is a random set of images unrelated to
    its query's group. Parameters, buffers and state_dict keys are those of nn.BatchNorm2d, so the
    weights load into a plain backbone; in eval mode it is a plain BatchNorm2d.
    """

    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.splits
        if not self.training or g == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % g:
            raise InvalidParameterError(f"batch of {n} does not split into {g} BN sub-batches; use a batch size divisible by {g}")
        # [n, c, h, w] -> [n/g, g*c, h, w]: sample j*g + i lands in channel block i (group i = samples n % g == i).
        mean = self.running_mean.repeat(g) if self.track_running_stats else None
        var = self.running_var.repeat(g) if self.track_running_stats else None
        weight = self.weight.repeat(g) if self.affine else None
        bias = self.bias.repeat(g) if self.affine else None
        momentum = 0.0 if self.momentum is None else self.momentum
        out = F.batch_norm(x.reshape(n // g, g * c, h, w), mean, var, weight, bias, True, momentum, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(g, c).mean(0))
                self.running_var.copy_(var.view(g, c).mean(0))
                self.num_batches_tracked.add_(1)
        return out.reshape(n, c, h, w)


def split_batch_norm(module: nn.Module, splits: int) -> nn.Module:
    """Replace every BatchNorm2d under `module` (in place) with a SplitBatchNorm2d holding the same weights."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, splits, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batch_norm(child, splits)
    return module


# -- encoders, mixup, the model -------------------------------------------------------------------

class ProjectedEncoder(nn.Module):
    """[B, 1, S, S] pixels in [0, 1] -> [B, dim] projections (not normalized)."""

    def __init__(self, backbone: Backbone, config: C2LConfig):
        super().__init__()
        self.backbone = backbone
        width = backbone.out_channels
        if config.head_hidden > 0:
            self.head: nn.Module = nn.Sequential(nn.Linear(width, config.head_hidden), nn.ReLU(inplace=True),
                                                 nn.Linear(config.head_hidden, config.dim))
        else:
            self.head = nn.Linear(width, config.dim)
        self.mean, self.std = config.mean, config.std

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        feats = self.backbone((x01 - self.mean) / self.std)
        return self.head(feats.float().mean(dim=(2, 3)))


def mixup_lambda(rng: np.random.Generator, alpha: float) -> float:
    """lambda ~ Beta(alpha, alpha), folded to max(lambda, 1 - lambda) so the first image always dominates."""
    lam = float(rng.beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def mix(x: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    return lam * x + (1.0 - lam) * x[perm]


class C2L(nn.Module):
    """Query encoder, EMA key encoder and queue. Takes ownership of `backbone` (its BatchNorms become split)."""

    def __init__(self, backbone: Backbone, config: C2LConfig = C2LConfig(), queue_size: int | None = None):
        super().__init__()
        self.config = config
        self.arch = backbone.arch
        split_batch_norm(backbone, config.bn_splits)
        self.query_encoder = ProjectedEncoder(backbone, config)
        self.key_encoder = copy.deepcopy(self.query_encoder)
        self.key_encoder.requires_grad_(False)
        size = queue_size or config.queue_size
        self.register_buffer("queue", F.normalize(torch.randn(size, config.dim), dim=1))
        self.register_buffer("queue_ids", torch.full((size,), -1, dtype=torch.long))  # -1: no image (random init)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next slot to overwrite (the oldest)

    @property
    def backbone(self) -> Backbone:
        """The query encoder's backbone: the weights that pretraining produces."""
        return self.query_encoder.backbone

    def forward(self, x: torch.Tensor, x_mixed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Query projections of a view and of its mixup (one call, so DDP sees one forward per backward)."""
        q = self.query_encoder(x)
        return q, (self.query_encoder(x_mixed) if x_mixed is not None else None)

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Key projections in the batch's order; the batch is shuffled through the key encoder (see SplitBatchNorm2d)."""
        perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        shuffled = self.key_encoder(x[perm])
        keys = torch.empty_like(shuffled)
        keys[perm] = shuffled
        return keys

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key = m * key + (1 - m) * query, parameter by parameter."""
        m = self.config.momentum
        keys = list(self.key_encoder.parameters())
        queries = [p.detach() for p in self.query_encoder.parameters()]
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, queries, alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, ids: torch.Tensor) -> None:
        """Push keys (FIFO: the oldest slots are overwritten) with the dataset index of their image."""
        size = self.queue.shape[0]
        keys, ids = F.normalize(keys.float(), dim=1)[-size:], ids[-size:]
        slots = (self.queue_ptr + torch.arange(len(keys), device=self.queue.device)) % size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ids[slots] = ids.to(self.queue_ids.device)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

    def queue_in_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, ids) oldest first."""
        shift = -int(self.queue_ptr)
        return torch.roll(self.queue, shift, 0), torch.roll(self.queue_ids, shift, 0)

    def _logits(self, q: torch.Tensor, positive: torch.Tensor, own_ids: list[torch.Tensor]) -> torch.Tensor:
        """[B, 1 + K]: similarity to the positive, then to every queue slot; slots of the query's own images masked."""
        q = F.normalize(q.float(), dim=1)
        positive = F.normalize(positive.float(), dim=1)
        pos = (q * positive).sum(dim=1, keepdim=True)
        neg = q @ self.queue.t()  # the queue does not yet hold this step's keys (they are pushed after the step)
        own = torch.zeros_like(neg, dtype=torch.bool)
        for ids in own_ids:
            own |= ids[:, None] == self.queue_ids[None, :]
        neg = neg.masked_fill(own, float("-inf"))
        return torch.cat([pos, neg], dim=1) / self.config.temperature

    def loss(self, q: torch.Tensor, k: torch.Tensor, ids: torch.Tensor, q_mixed: torch.Tensor | None = None,
             k_mixed: torch.Tensor | None = None, lam: float = 1.0, perm: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean of the C2L terms (just the first when mixup is off); terms are detached, for logging."""
        def info_nce(logits: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

        logits = self._logits(q, k, [ids])
        terms = {"loss_qk": info_nce(logits)}
        if q_mixed is not None:
            both = [ids, ids[perm]]
            terms["loss_mix"] = info_nce(self._logits(q_mixed, k_mixed, both))
            # Mixup of the raw key features (then normalized), as in the official code.
            terms["loss_mixfeat"] = info_nce(self._logits(q_mixed, mix(k.float(), perm, lam), both))
        loss = torch.stack(list(terms.values())).mean()
        stats = {name: value.detach() for name, value in terms.items()}
        stats["top1"] = (logits.argmax(dim=1) == 0).float().mean().detach()
        return loss, stats
