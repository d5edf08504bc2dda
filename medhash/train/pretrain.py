"""`pretrain(config)`: C2L self-supervised pretraining of a backbone on unlabeled radiographs.

Every readable image of a folder (or every image a label table lists; its labels are ignored) is
decoded once and held as uint8 at `load_size`; each step draws two augmented views per image on
the device. The run is resumable: `<out>.state.pt` (model, queue, optimizer, schedule, history)
is rewritten atomically after every epoch, and a rerun continues at the next epoch. The product is
a backbone file (`medhash.backbone`) that `medhash train --init` loads into both branches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from medhash.errors import InvalidParameterError
from medhash.logs import format_record, progress_bars
from medhash.model.backbone import build_backbone
from medhash.model.backbone_file import save_backbone
from medhash.model.c2l import C2L, C2LConfig, mix, mixup_lambda
from medhash.model.runtime import autocast, resolve_precision
from medhash.train.augment import PretrainAugment, c2l_views
from medhash.train.data import decode_images, list_images
from medhash.train.dist import all_gather_cat, barrier, init_process, rank_batches, save_on_main
from medhash.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    images: str  # a folder (every readable image under it) or a label table (labels ignored)
    out: str  # backbone file to write
    backbone: str = "densenet121"  # a name in medhash.model.backbone.BACKBONES
    size: int = 224  # view side in pixels
    load_size: int = 256  # images are decoded once and held at this side; views are cropped from it
    epochs: int = 120
    batch_size: int = 128  # per process; a multiple of c2l.bn_splits
    lr: float = 0.03
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # a name in medhash.train.optim.OPTIMIZERS
    schedule: str = "cosine"  # a name in medhash.train.optim.SCHEDULES
    warmup_epochs: int = 1
    c2l: C2LConfig = field(default_factory=C2LConfig)
    augment: PretrainAugment = field(default_factory=PretrainAugment)
    prefill_queue: bool = True  # start with real keys in the queue instead of random vectors
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (CUDA)
    device: str = "auto"
    seed: int = 0
    workers: int = 0  # decode threads; 0 = one per CPU core
    state: str | None = None  # resumable state file; default <out>.state.pt
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PretrainResult:
    backbone: Path
    backbone_id: str
    arch: str
    history: list[dict[str, float]]  # one record per epoch
    step_losses: list[float]  # the loss of every step (this process)
    n_images: int
    batch_size: int  # per process, as run
    queue_size: int  # as run (capped by the data size)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped_images: list[tuple[str, str]] = field(default_factory=list)


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def _digest(config: PretrainConfig, paths: list[Path]) -> str:
    """What saved state must agree with to be resumed: the recipe and the image list (not paths of outputs)."""
    d = config.to_dict()
    for key in ("out", "state", "progress", "workers", "device"):
        d.pop(key)
    d["images_list"] = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Pretrainer:
    def __init__(self, config: PretrainConfig):
        self.config = config
        self.device, self.ctx = init_process(config.device)
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.state_path = Path(config.state or f"{config.out}.state.pt")
        self.seconds: dict[str, float] = {}

    def _batch_size(self, n: int) -> int:
        cfg, splits = self.config, self.config.c2l.bn_splits
        per_rank = n // self.ctx.world_size
        batch = min(cfg.batch_size, per_rank) // splits * splits
        if batch < max(2, splits):
            raise InvalidParameterError(f"{cfg.images}: {n} readable images are too few for batches of >= {max(2, splits)} "
                             f"per process (bn_splits {splits}, {self.ctx.world_size} processes)")
        if batch != cfg.batch_size:
            log.warning("batch size %d -> %d (data size / BN sub-batches)", cfg.batch_size, batch)
        return batch

    def _views(self, pixels: torch.Tensor, idx: np.ndarray, gen: torch.Generator, n: int = 2) -> list[torch.Tensor]:
        """n independently augmented views of the images `idx`."""
        x = pixels[torch.as_tensor(idx, device=pixels.device)].float().div_(255.0)
        cfg = self.config
        return [c2l_views(x, cfg.augment, cfg.size, gen, cfg.c2l.mean) for _ in range(n)]

    @torch.no_grad()
    def _prefill(self, model: C2L, pixels: torch.Tensor, batch: int) -> None:
        """Fill the queue with keys of augmented views of the data (same on every rank)."""
        size = model.queue.shape[0]
        gen = _generator(self.config.seed, 1 << 20)
        order = np.random.default_rng([self.config.seed, 1 << 20]).permutation(len(pixels))
        order = np.resize(order, math.ceil(size / batch) * batch)  # repeats the permutation when needed
        model.train()
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            (view,) = self._views(pixels, idx, gen, n=1)
            with autocast(self.device, self.amp_dtype):
                keys = model.encode_keys(view, gen)
            model.enqueue(keys, torch.as_tensor(idx, device=self.device))

    def _save_state(self, state: dict[str, Any]) -> None:
        save_on_main(self.state_path, state, self.ctx)

    def _load_state(self, digest: str) -> dict[str, Any] | None:
        if not self.state_path.exists():
            return None
        state = torch.load(self.state_path, map_location="cpu", weights_only=False)
        if state.get("digest") != digest:
            raise InvalidParameterError(f"{self.state_path}: saved pretraining state was made with a different recipe or image "
                             f"list; delete it (or pass another --state) to start over")
        return state

    def fit(self) -> PretrainResult:
        cfg, ctx, dev = self.config, self.ctx, self.device
        t_all = time.perf_counter()
        paths = list_images(cfg.images)
        pixels, kept_idx, failures = decode_images(paths, cfg.load_size, cfg.workers)
        kept = [paths[i] for i in kept_idx]
        self.seconds["load_images"] = time.perf_counter() - t_all
        n = len(kept)
        batch = self._batch_size(n)
        queue_size = min(cfg.c2l.queue_size, n)
        pixels = pixels.to(dev)
        digest = _digest(cfg, kept)

        torch.manual_seed(cfg.seed)
        model = C2L(build_backbone(cfg.backbone), cfg.c2l, queue_size).to(dev)
        wrapped = DistributedDataParallel(model, broadcast_buffers=False) if ctx.enabled else model
        optimizer = build_optimizer(cfg.optimizer, model.query_encoder.parameters(), cfg.lr, cfg.weight_decay)
        steps_per_epoch = len(rank_batches(n, batch, cfg.seed, 0, ctx))
        scheduler = build_scheduler(cfg.schedule, optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype is torch.float16)
        mixup = cfg.c2l.mixup_alpha > 0

        start, history, step_losses = 0, [], []
        state = self._load_state(digest)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            start, history, step_losses = state["epoch"], state["history"], state["step_losses"]
            log.info("pretraining resumed at epoch %d of %d", start + 1, cfg.epochs)
        elif cfg.prefill_queue:
            self._prefill(model, pixels, batch)

        t_train = time.perf_counter()
        for epoch in range(start, cfg.epochs):
            model.train()
            gen = _generator(cfg.seed, epoch, ctx.rank)
            rng = np.random.default_rng([cfg.seed, epoch, ctx.rank])
            batches = rank_batches(n, batch, cfg.seed, epoch, ctx)
            bar = tqdm(batches, desc=f"c2l {epoch + 1}/{cfg.epochs}", disable=not (progress_bars(cfg.progress) and ctx.is_main), leave=False)
            t0, sums, losses = time.perf_counter(), {}, []
            for step, idx in enumerate(bar):
                ids = torch.as_tensor(idx, device=dev)
                x_q, x_k = self._views(pixels, idx, gen)
                lam, perm = 1.0, None
                if mixup:
                    lam = mixup_lambda(rng, cfg.c2l.mixup_alpha)
                    perm = torch.randperm(len(idx), generator=gen).to(dev)
                with autocast(self.device, self.amp_dtype):
                    q, q_mixed = wrapped(x_q, mix(x_q, perm, lam) if mixup else None)
                    k = model.encode_keys(x_k, gen)
                    k_mixed = model.encode_keys(mix(x_k, perm, lam), gen) if mixup else None
                loss, stats = model.loss(q, k, ids, q_mixed, k_mixed, lam, perm)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                model.momentum_update()
                model.enqueue(all_gather_cat(k.float().contiguous(), ctx), all_gather_cat(ids, ctx))
                losses.append(loss.detach())
                for name, value in stats.items():
                    sums[name] = sums.get(name, 0.0) + value
                if not bar.disable and step % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss):.3f}",
                                    img_s=f"{(step + 1) * len(idx) * ctx.world_size / (time.perf_counter() - t0):.0f}")
            epoch_losses = torch.stack(losses).float().tolist() if losses else []
            elapsed = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan")}
            record.update({name: float(value) / max(len(losses), 1) for name, value in sums.items()})
            record.update({"lr": optimizer.param_groups[0]["lr"], "seconds": elapsed,
                           "images_per_s": len(batches) * batch * ctx.world_size / elapsed})
            history.append(record)
            step_losses.extend(epoch_losses)
            if ctx.is_main:
                log.info("c2l epoch %d/%d: %s", epoch + 1, cfg.epochs, format_record(record))
            self._save_state({"epoch": epoch + 1, "done": epoch + 1 == cfg.epochs, "digest": digest,
                              "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                              "history": history, "step_losses": step_losses})
        self.seconds["train"] = time.perf_counter() - t_train
        self.seconds["total"] = time.perf_counter() - t_all

        backbone_id = ""
        if ctx.is_main:
            summary = {
                "method": "c2l", "config": {k: v for k, v in cfg.to_dict().items() if k != "progress"},
                "n_images": n, "skipped_images": len(failures), "batch_size": batch, "queue_size": queue_size,
                "world_size": ctx.world_size, "epochs": len(history),
                "precision": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
                "final_loss": history[-1]["loss"] if history else None, "history": history,
                "input_norm": {"mean": cfg.c2l.mean, "std": cfg.c2l.std}, "seconds": self.seconds,
            }
            backbone_id = save_backbone(cfg.out, model.arch, model.backbone.features.state_dict(), summary)
        barrier(ctx)
        return PretrainResult(Path(cfg.out), backbone_id, model.arch, history, step_losses, n, batch, queue_size,
                              self.seconds, failures)


def pretrain(config: PretrainConfig) -> PretrainResult:
    return Pretrainer(config).fit()
