"""`train(config)`: staged AG-CNN training of the hashing model, resumable per stage, DDP-ready.

The data flow of `Trainer.fit`:

1. decoded train/val images (cached in the work dir);
2. the global, then the local stage: each trains one backbone + classifier on augmented image
   batches and is validated by the macro AUROC of its classifier;
3. pooled features of both (now frozen) backbones, computed once and cached: the hash stage trains
   fusion + hash layer on batches of them and is validated by the retrieval mAP of validation
   codes against training codes;
4. an optional joint stage fine-tunes everything on image batches; its validation recomputes the
   features first, because the backbones move.

Each stage keeps `<work_dir>/<stage>-<digest>.pt` (model, optimizer, scheduler, epoch, history),
rewritten atomically; a rerun skips finished stages and resumes a partial one at its next epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from medhash.data.labels import LabelTable, read_label_table, report_label_problems
from medhash.data.splits import assign_folds
from medhash.errors import InvalidParameterError
from medhash.logs import format_record, progress_bars
from medhash.model.backbone_file import apply_backbone_init
from medhash.model.checkpoint import save_checkpoint
from medhash.model.hashnet import AGHashNet
from medhash.model.losses import pos_weight_from_labels
from medhash.model.runtime import autocast, resolve_precision
from medhash.train.config import TrainConfig
from medhash.train.data import ImageSet, load_image_set
from medhash.train.dist import barrier, init_process, rank_batches, save_on_main
from medhash.train.optim import build_optimizer, build_scheduler
from medhash.train.stage_io import (BatchSource, BranchAUROC, FeatureBatches, FreshRetrievalMAP, ImageBatches,
                                     RetrievalMAP, Validation, features_to, no_validation, pooled_features)
from medhash.train.stages import GlobalStage, HashStage, JointStage, LocalStage

__all__ = ["STAGE_FIELDS", "STAGE_ORDER", "TrainResult", "Trainer", "stage_digests", "train"]

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    checkpoint: Path
    model_id: str
    history: dict[str, list[dict[str, float]]]
    val_map: float | None
    seconds: dict[str, float] = field(default_factory=dict)
    skipped_images: list[tuple[str, str]] = field(default_factory=list)


# What each stage's result depends on, cumulatively: a stage's state file is named by the
# digest of these fields (and of every earlier stage's), so changing the hash length or the
# hash losses reuses the trained backbones, while changing anything upstream retrains.
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "global": ("model.backbone", "model.classes", "model.global_size", "model.mean", "model.std", "load_size",
               "epochs_global", "batch_size", "lr", "weight_decay", "optimizer", "schedule", "warmup_epochs",
               "class_weighting", "augment", "train_folds", "val_folds", "test_folds", "precision", "seed", "init"),
    "local": ("model.local_size", "model.tau", "model.cam_top_k", "model.min_box_frac", "model.margin_frac", "epochs_local"),
    "hash": ("model.bits", "model.fusion_dim", "model.fusion_inputs", "model.dropout", "losses", "epochs_hash",
             "hash_batch_size", "lr_hash"),
    "joint": ("epochs_joint", "lr_joint"),
}
STAGE_ORDER = tuple(STAGE_FIELDS)
# Modules whose weights a finished stage fixes (and a later config may reuse).
STAGE_MODULES = {"global": ("global_backbone.", "global_classifier."), "local": ("local_backbone.", "local_classifier.")}


def stage_digests(config: TrainConfig) -> dict[str, str]:
    flat = config.to_dict()
    flat.update({f"model.{k}": v for k, v in flat.pop("model").items()})
    digests, running = {}, hashlib.sha256()
    for stage in STAGE_ORDER:
        running.update(json.dumps({f: flat[f] for f in STAGE_FIELDS[stage]}, sort_keys=True, default=str).encode())
        digests[stage] = running.hexdigest()[:12]
    return digests


# -- the trainer ------------------------------------------------------------------------------------

class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.device, self.ctx = init_process(config.device)
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.work_dir = Path(config.work_dir or f"{config.out}.stages")
        self.digests = stage_digests(config)
        self.seconds: dict[str, float] = {}

    # data ------------------------------------------------------------------------------------------
    def load_data(self) -> tuple[ImageSet, ImageSet | None]:
        """Decoded train/val images, cached in the work dir (decoding thousands of PNGs per run
        dominated repeated runs that share backbones, e.g. one run per hash length)."""
        cfg = self.config
        stat = Path(cfg.labels).stat()
        key = json.dumps([str(Path(cfg.labels).resolve()), stat.st_size, stat.st_mtime_ns, cfg.image_root, cfg.load_size,
                          cfg.model.classes, cfg.train_folds, cfg.val_folds, cfg.test_folds, cfg.seed])
        path = self.work_dir / f"images-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
        # Read (and report on) the table even when the decoded images are cached: a resumed run says the same.
        table = read_label_table(cfg.labels, cfg.image_root, cfg.model.classes)
        report_label_problems(table, strict=cfg.strict_labels)
        cached = self._load_state(path)
        if cached is not None:
            return cached["train"], cached["val"]
        train_set, val_set = self._decode_data(table)
        save_on_main(path, {"train": train_set, "val": val_set}, self.ctx)
        return train_set, val_set

    def _decode_data(self, table: LabelTable) -> tuple[ImageSet, ImageSet | None]:
        cfg = self.config
        folds = assign_folds(table.records, seed=cfg.seed)
        held_out = set(cfg.val_folds) | set(cfg.test_folds)
        train_mask = np.isin(folds, cfg.train_folds) if cfg.train_folds is not None else ~np.isin(folds, list(held_out))
        val_mask = np.isin(folds, list(cfg.val_folds))
        train_records = [r for r, keep in zip(table.records, train_mask) if keep]
        val_records = [r for r, keep in zip(table.records, val_mask) if keep]
        if not train_records:
            raise InvalidParameterError(f"{cfg.labels}: no training images left after holding out folds {sorted(held_out)}")
        t0 = time.perf_counter()
        train_set = load_image_set(train_records, cfg.model.classes, cfg.load_size)
        val_set = load_image_set(val_records, cfg.model.classes, cfg.load_size) if val_records else None
        self.seconds["load_images"] = time.perf_counter() - t0
        return train_set, val_set

    def build_model(self) -> tuple[AGHashNet, dict[str, Any]]:
        """A fresh model (seeded by the caller), its backbones from `config.init` when given; and the init record."""
        model = AGHashNet(self.config.model).to(self.device)
        init_record = apply_backbone_init(model, self.config.init) if self.config.init else {"source": "random"}
        if self.amp_dtype is not None:
            model.use_channels_last(True)
        return model, init_record

    # stage state -----------------------------------------------------------------------------------
    def _stage_path(self, stage: str) -> Path:
        return self.work_dir / f"{stage}-{self.digests[stage]}.pt"

    @staticmethod
    def _load_state(path: Path) -> dict[str, Any] | None:
        return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None

    @staticmethod
    def _restore(model: AGHashNet, state_dict: dict[str, torch.Tensor], stage: str) -> None:
        """Load a stage's weights: a backbone stage only restores the modules it (and earlier stages) fixed."""
        prefixes = tuple(p for s in STAGE_ORDER[:STAGE_ORDER.index(stage) + 1] for p in STAGE_MODULES.get(s, ()))
        if stage in STAGE_MODULES:
            state_dict = {k: v for k, v in state_dict.items() if k.startswith(prefixes)}
            model.load_state_dict(state_dict, strict=False)
        else:
            model.load_state_dict(state_dict)

    # one stage -------------------------------------------------------------------------------------
    def run_stage(self, model: AGHashNet, step: nn.Module, epochs: int, lr: float, batch_size: int,
                  batches: BatchSource, validate: Validation) -> list[dict[str, float]]:
        """Train `step.trainable()` for `epochs` (resuming from the stage file); returns the per-epoch history."""
        cfg, name = self.config, step.name
        path = self._stage_path(name)
        state = self._load_state(path)
        if state is not None and state.get("done"):
            self._restore(model, state["model"], name)
            log.info("stage %s already done; skipped", name)
            return state["history"]
        for p in model.parameters():
            p.requires_grad_(False)
        params = [p for module in step.trainable() for p in module.parameters()]
        for p in params:
            p.requires_grad_(True)
        wrapped: nn.Module = DistributedDataParallel(step) if self.ctx.enabled else step
        optimizer = build_optimizer(cfg.optimizer, params, lr, cfg.weight_decay)
        steps_per_epoch = len(rank_batches(len(batches), batch_size, cfg.seed, 0, self.ctx))
        scheduler = build_scheduler(cfg.schedule, optimizer, epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        start, history = 0, []
        if state is not None:
            self._restore(model, state["model"], name)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start, history = state["epoch"], state["history"]
            log.info("stage %s resumed at epoch %d", name, start + 1)
        t_stage = last_save = time.perf_counter()
        for epoch in range(start, epochs):
            model.train()
            for module in step.frozen_eval():
                module.eval()
            record = {"epoch": epoch + 1}
            record.update(self._train_epoch(wrapped, name, epoch, epochs, batch_size, batches, optimizer, scheduler, scaler))
            model.eval()
            record.update(validate())
            history.append(record)
            if self.ctx.is_main:
                log.info("stage %s epoch %d/%d: %s", name, epoch + 1, epochs, format_record(record))
            # Writing both backbones every epoch dominated the cheap hash epochs: save on a clock.
            if epoch + 1 == epochs or time.perf_counter() - last_save >= cfg.checkpoint_every_s:
                save_on_main(path, {"stage": name, "epoch": epoch + 1, "done": epoch + 1 == epochs, "digest": self.digests[name],
                                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "history": history}, self.ctx)
                last_save = time.perf_counter()
        if epochs == 0:
            save_on_main(path, {"stage": name, "epoch": epochs, "done": True, "digest": self.digests[name],
                                "model": model.state_dict(), "history": history}, self.ctx)
        self.seconds[f"stage_{name}"] = time.perf_counter() - t_stage
        return history

    def _train_epoch(self, wrapped: nn.Module, name: str, epoch: int, epochs: int, batch_size: int, batches: BatchSource,
                     optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                     scaler: torch.amp.GradScaler) -> dict[str, float]:
        """One epoch of optimizer steps; returns the epoch's mean loss, mean loss terms and throughput."""
        cfg = self.config
        # Every random draw of an epoch (augmentation, dropout) is seeded by (seed, epoch, rank),
        # so a resumed stage continues exactly as an uninterrupted one would.
        epoch_seed = cfg.seed * 100003 + epoch * 101 + self.ctx.rank
        torch.manual_seed(epoch_seed)
        gen = torch.Generator().manual_seed(epoch_seed)
        bar = tqdm(rank_batches(len(batches), batch_size, cfg.seed, epoch, self.ctx), desc=f"{name} {epoch + 1}/{epochs}",
                   disable=not (progress_bars(cfg.progress) and self.ctx.is_main), leave=False)
        t0, seen, total, terms_sum = time.perf_counter(), 0, 0.0, {}
        for idx in bar:
            x, y = batches(idx, gen)
            with autocast(self.device, self.amp_dtype):
                loss, terms = wrapped(x, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(idx)
            total += float(loss.detach()) * len(idx)
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v * len(idx)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", img_s=f"{seen * self.ctx.world_size / (time.perf_counter() - t0):.1f}")
        elapsed = time.perf_counter() - t0
        record = {"loss": total / max(seen, 1), "images_per_s": seen * self.ctx.world_size / elapsed}
        record.update({k: v / max(seen, 1) for k, v in terms_sum.items()})
        return record

    # features for the hash stage -------------------------------------------------------------------
    def cached_features(self, model: AGHashNet, train_set: ImageSet, val_set: ImageSet | None) -> dict[str, Any]:
        """Pooled features of the frozen backbones, kept in the work dir: every hash variant
        (bit length, losses, fusion inputs) trained on the same backbones reuses them."""
        path = self.work_dir / f"features-{self.digests['local']}.pt"
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=True)
        feats = {"train": pooled_features(model, train_set, self.device, self.amp_dtype),
                 "val": pooled_features(model, val_set, self.device, self.amp_dtype) if val_set is not None else None}
        save_on_main(path, feats, self.ctx)
        return feats

    # whole run -------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, dev = self.config, self.device
        torch.manual_seed(cfg.seed)
        t_all = time.perf_counter()
        train_set, val_set = self.load_data()
        model, init_record = self.build_model()
        pos_weight = pos_weight_from_labels(train_set.targets).to(dev) if cfg.class_weighting else None
        images = ImageBatches(train_set, dev, cfg.augment)
        scored = val_set is not None and self.ctx.is_main  # validation: on rank 0, when there is a validation set
        history: dict[str, list[dict[str, float]]] = {}

        for stage, epochs in ((GlobalStage(model, pos_weight), cfg.epochs_global), (LocalStage(model, pos_weight), cfg.epochs_local)):
            auroc = BranchAUROC(model, val_set, stage.name, dev, self.amp_dtype) if scored else no_validation
            history[stage.name] = self.run_stage(model, stage, epochs, cfg.lr, cfg.batch_size, images, auroc)

        # Hash head on frozen features: computed once, then many cheap epochs.
        t0 = time.perf_counter()
        cached = self.cached_features(model, train_set, val_set)
        train_feats = features_to(cached["train"], dev)
        val_feats = features_to(cached["val"], dev) if cached["val"] is not None else None
        self.seconds["cache_features"] = time.perf_counter() - t0
        retrieval = (RetrievalMAP(model, train_feats, val_feats, train_set.targets.numpy(), val_set.targets.numpy())
                     if scored and val_feats is not None else no_validation)
        history["hash"] = self.run_stage(model, HashStage(model, pos_weight, cfg.losses), cfg.epochs_hash, cfg.lr_hash,
                                         cfg.hash_batch_size, FeatureBatches(train_feats, train_set.targets.to(dev)), retrieval)

        if cfg.epochs_joint > 0:
            retrieval = FreshRetrievalMAP(model, train_set, val_set, dev, self.amp_dtype) if scored else no_validation
            history["joint"] = self.run_stage(model, JointStage(model, pos_weight, cfg.losses), cfg.epochs_joint, cfg.lr_joint,
                                              cfg.batch_size, images, retrieval)
        self.seconds["total"] = time.perf_counter() - t_all
        return self._finish(model, history, init_record, train_set)

    def _finish(self, model: AGHashNet, history: dict[str, list[dict[str, float]]], init_record: dict[str, Any],
                train_set: ImageSet) -> TrainResult:
        """Write the checkpoint (rank 0) with the run's record; val_map: the last joint epoch's, else the last hash epoch's."""
        cfg = self.config
        last = [h for stage in ("joint", "hash") for h in history.get(stage, [])[-1:]]
        val_map = last[0].get("val_map") if last else None
        model_id = ""
        if self.ctx.is_main:
            model_id = save_checkpoint(cfg.out, model.use_channels_last(False).cpu(), extra={
                "train_config": cfg.to_dict(),
                "history": history,
                "val_map": val_map,
                "seconds": self.seconds,
                "world_size": self.ctx.world_size,
                "precision": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
                "init": init_record,
                "skipped_images": train_set.failures[:100],
            })
        barrier(self.ctx)
        return TrainResult(Path(cfg.out), model_id, history, val_map, self.seconds, train_set.failures)


def train(config: TrainConfig) -> TrainResult:
    return Trainer(config).fit()
