"""`train(config)`: staged AG-CNN training of the hashing model, resumable per stage, DDP-ready.

Each stage keeps `<work_dir>/<stage>.pt` (model, optimizer, scheduler, epoch,
history), rewritten atomically after every epoch; a rerun skips finished stages
and resumes a partial one at its next epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from medhash.atomic import atomic_path
from medhash.data.labels import LabelTable, read_label_table, report_label_problems
from medhash.data.splits import assign_folds
from medhash.errors import InvalidParameterError
from medhash.model.checkpoint import save_checkpoint
from medhash.model.encoder import cpu_supports_bf16
from medhash.model.hashnet import AGHashNet, pack_codes
from medhash.model.losses import pos_weight_from_labels
from medhash.train.augment import augment_batch
from medhash.train.config import TrainConfig
from medhash.train.data import ImageSet, load_image_set
from medhash.train.dist import DistContext, barrier, init_distributed, rank_shard
from medhash.train.optim import build_optimizer, build_scheduler
from medhash.train.stages import GlobalStage, HashStage, JointStage, LocalStage

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Path
    model_id: str
    history: dict[str, list[dict[str, float]]]
    val_map: float | None
    seconds: dict[str, float] = field(default_factory=dict)
    skipped_images: list[tuple[str, str]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a precision name; None means fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise InvalidParameterError(f"unknown precision {name!r}; use auto, fp32, bf16 or fp16")
    if table[name] is torch.float16 and device.type != "cuda":
        raise InvalidParameterError("fp16 autocast needs CUDA; use bf16 on the CPU")
    return table[name]


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


# -- validation -------------------------------------------------------------------------------------

def macro_auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over classes that have both positives and negatives (rank formula, ties averaged)."""
    from scipy.stats import rankdata

    aucs = []
    for c in range(targets.shape[1]):
        pos = targets[:, c] > 0.5
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos and n_neg:
            ranks = rankdata(scores[:, c])
            aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def retrieval_map(query_codes: np.ndarray, db_codes: np.ndarray, query_y: np.ndarray, db_y: np.ndarray) -> float:
    from medhash.eval.metrics import evaluate_codes

    return float(evaluate_codes(query_codes, db_codes, query_y > 0.5, db_y > 0.5, ks=(10,)).map_tie_aware)


# -- the trainer ------------------------------------------------------------------------------------

class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self.ctx: DistContext = init_distributed(self.device)
        if self.device.type == "cuda" and self.ctx.enabled:
            self.device = torch.device("cuda", self.ctx.local_rank)
            torch.cuda.set_device(self.device)
        self.amp_dtype = resolve_precision(config.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
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
        if path.exists():
            cached = torch.load(path, map_location="cpu", weights_only=False)
            return cached["train"], cached["val"]
        train_set, val_set = self._decode_data(table)
        self._save_state(path, {"train": train_set, "val": val_set})
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

    # helpers ---------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _rank_batches(self, n: int, batch_size: int, epoch: int) -> list[np.ndarray]:
        """This rank's full batches of one epoch (one short batch when the shard is smaller than a batch)."""
        mine = rank_shard(n, self.config.seed, epoch, self.ctx)
        n_batches = len(mine) // batch_size if len(mine) >= batch_size else min(1, len(mine))
        return [mine[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]

    def _save_state(self, path: Path, state: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
        barrier(self.ctx)

    def _stage_path(self, stage: str) -> Path:
        return self.work_dir / f"{stage}-{self.digests[stage]}.pt"

    def _load_state(self, path: Path) -> dict[str, Any] | None:
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

    def run_stage(
        self,
        model: AGHashNet,
        step: nn.Module,
        epochs: int,
        lr: float,
        batch_size: int,
        n_items: int,
        get_batch: Callable[[np.ndarray, torch.Generator], tuple[Any, torch.Tensor]],
        validate: Callable[[], dict[str, float]],
    ) -> list[dict[str, float]]:
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
        steps_per_epoch = len(self._rank_batches(n_items, batch_size, 0))
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
            # Every random draw of an epoch (augmentation, dropout) is seeded by (seed, epoch, rank),
            # so a resumed stage continues exactly as an uninterrupted one would.
            epoch_seed = cfg.seed * 100003 + epoch * 101 + self.ctx.rank
            torch.manual_seed(epoch_seed)
            gen = torch.Generator().manual_seed(epoch_seed)
            batches = self._rank_batches(n_items, batch_size, epoch)
            bar = tqdm(batches, desc=f"{name} {epoch + 1}/{epochs}", disable=not (cfg.progress and self.ctx.is_main), leave=False)
            t0, seen, total, terms_sum = time.perf_counter(), 0, 0.0, {}
            for idx in bar:
                x, y = get_batch(idx, gen)
                with self._autocast():
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
            record = {"epoch": epoch + 1, "loss": total / max(seen, 1), "images_per_s": seen * self.ctx.world_size / elapsed}
            record.update({k: v / max(seen, 1) for k, v in terms_sum.items()})
            model.eval()
            record.update(validate())
            history.append(record)
            if self.ctx.is_main:
                log.info("stage %s epoch %d: %s", name, epoch + 1, {k: round(v, 4) for k, v in record.items()})
            # Writing both backbones every epoch dominated the cheap hash epochs: save on a clock.
            if epoch + 1 == epochs or time.perf_counter() - last_save >= cfg.checkpoint_every_s:
                self._save_state(path, {"stage": name, "epoch": epoch + 1, "done": epoch + 1 == epochs, "digest": self.digests[name],
                                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "history": history})
                last_save = time.perf_counter()
        if epochs == 0:
            self._save_state(path, {"stage": name, "epoch": epochs, "done": True, "digest": self.digests[name],
                                    "model": model.state_dict(), "history": history})
        self.seconds[f"stage_{name}"] = time.perf_counter() - t_stage
        return history

    # features for the hash stage --------------------------------------------------------------------
    @torch.no_grad()
    def pooled_features(self, model: AGHashNet, data: ImageSet, batch_size: int = 64) -> dict[str, torch.Tensor]:
        model.eval()
        parts: dict[str, list[torch.Tensor]] = {"global": [], "local": []}
        for start in range(0, len(data), batch_size):
            x, _ = data.batch(np.arange(start, min(start + batch_size, len(data))))
            with self._autocast():
                feats = model.pooled_features(x.to(self.device))
            for k in parts:
                parts[k].append(feats[k].float().cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def cached_features(self, model: AGHashNet, train_set: ImageSet, val_set: ImageSet | None) -> dict[str, Any]:
        """Pooled features of the frozen backbones, kept in the work dir: every hash variant
        (bit length, losses, fusion inputs) trained on the same backbones reuses them."""
        path = self.work_dir / f"features-{self.digests['local']}.pt"
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=True)
        feats = {"train": self.pooled_features(model, train_set),
                 "val": self.pooled_features(model, val_set) if val_set is not None else None}
        self._save_state(path, feats)
        return feats

    # whole run -------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        t_all = time.perf_counter()
        train_set, val_set = self.load_data()
        model = AGHashNet(cfg.model).to(self.device)
        if cfg.init:
            from medhash.train.pretrain import apply_backbone_init  # lazy: pretrain imports this module

            init_record = apply_backbone_init(model, cfg.init)
        else:
            init_record = {"source": "random"}
        if self.amp_dtype is not None:
            model.use_channels_last(True)
        pos_weight = pos_weight_from_labels(train_set.targets).to(self.device) if cfg.class_weighting else None
        history: dict[str, list[dict[str, float]]] = {}
        dev = self.device

        def image_batch(data: ImageSet, augment: bool):
            def get(idx: np.ndarray, gen: torch.Generator):
                x, y = data.batch(idx)
                x = x.to(dev, non_blocking=True)  # augment where the model runs (GPU when there is one)
                if augment:
                    x = augment_batch(x, cfg.augment, gen)
                return x, y.to(dev)
            return get

        def branch_validation(branch: str) -> Callable[[], dict[str, float]]:
            def validate() -> dict[str, float]:
                if val_set is None or not self.ctx.is_main:
                    return {}
                feats = self.pooled_features(model, val_set)
                clf = model.global_classifier if branch == "global" else model.local_classifier
                with torch.no_grad():
                    scores = clf(feats[branch].to(dev)).float().cpu().numpy()
                return {"val_auroc": macro_auroc(scores, val_set.targets.numpy())}
            return validate

        for stage, epochs in ((GlobalStage(model, pos_weight), cfg.epochs_global), (LocalStage(model, pos_weight), cfg.epochs_local)):
            history[stage.name] = self.run_stage(model, stage, epochs, cfg.lr, cfg.batch_size, len(train_set),
                                                 image_batch(train_set, True), branch_validation(stage.name))

        # Hash head on frozen features: computed once, then many cheap epochs.
        t0 = time.perf_counter()
        cached = self.cached_features(model, train_set, val_set)
        train_feats = {k: v.to(dev) for k, v in cached["train"].items()}
        val_feats = {k: v.to(dev) for k, v in cached["val"].items()} if cached["val"] is not None else None
        self.seconds["cache_features"] = time.perf_counter() - t0
        train_y = train_set.targets.to(dev)

        def hash_validation() -> dict[str, float]:
            if val_feats is None or not self.ctx.is_main:
                return {}
            with torch.no_grad():
                db = pack_codes(model.hash_head(train_feats)[1])
                q = pack_codes(model.hash_head(val_feats)[1])
            return {"val_map": retrieval_map(q, db, val_set.targets.numpy(), train_set.targets.numpy())}

        def feature_batch(idx: np.ndarray, gen: torch.Generator):
            t = torch.as_tensor(idx, device=dev)
            return {k: v[t] for k, v in train_feats.items()}, train_y[t]

        history["hash"] = self.run_stage(model, HashStage(model, pos_weight, cfg.losses), cfg.epochs_hash, cfg.lr_hash,
                                         cfg.hash_batch_size, len(train_set), feature_batch, hash_validation)
        if cfg.epochs_joint > 0:
            def joint_validation() -> dict[str, float]:
                nonlocal train_feats, val_feats
                train_feats = {k: v.to(dev) for k, v in self.pooled_features(model, train_set).items()}
                val_feats = {k: v.to(dev) for k, v in self.pooled_features(model, val_set).items()} if val_set is not None else None
                return hash_validation()

            history["joint"] = self.run_stage(model, JointStage(model, pos_weight, cfg.losses), cfg.epochs_joint, cfg.lr_joint,
                                              cfg.batch_size, len(train_set), image_batch(train_set, True), joint_validation)
        self.seconds["total"] = time.perf_counter() - t_all
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
