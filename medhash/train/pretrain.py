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
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from medhash import __version__
from medhash.atomic import atomic_path
from medhash.data.decode import read_image
from medhash.data.labels import read_label_table
from medhash.errors import CheckpointError, ImageDecodeError, InvalidParameterError
from medhash.model.backbone import build_backbone
from medhash.model.c2l import C2L, C2LConfig, mix, mixup_lambda
from medhash.model.checkpoint import read_payload, weights_id
from medhash.model.hashnet import AGHashNet
from medhash.train.data import to_square_uint8
from medhash.train.dist import DistContext, all_gather_cat, barrier, init_distributed, rank_shard
from medhash.train.optim import build_optimizer, build_scheduler
from medhash.train.trainer import resolve_device, resolve_precision

log = logging.getLogger(__name__)

BACKBONE_FORMAT = "medhash.backbone"
BACKBONE_FORMAT_VERSION = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""}  # "": DICOM files often have no suffix
TABLE_SUFFIXES = (".csv", ".csv.gz")


@dataclass(frozen=True)
class PretrainAugment:
    """The C2L view augmentation, drawn per image on batched tensors."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # random resized crop: area fraction of the image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # and aspect ratio
    rotate_deg: float = 10.0
    hflip: bool = True  # C2L flips; the hashing model's supervised training does not
    brightness: float = 0.4  # intensity factor in [1 - b, 1 + b] (torchvision ColorJitter semantics)
    contrast: float = 0.4  # contrast factor around the image mean in [1 - c, 1 + c]
    cutout_holes: int = 3
    cutout_frac: float = 32 / 224  # side of each square hole as a fraction of the view (official: 32 px at 224)


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


# -- data -----------------------------------------------------------------------------------------

def list_images(source: str | Path) -> list[Path]:
    """Every candidate image file of a folder (recursive, sorted), or every path of a label table."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")
                      and p.suffix.lower() in IMAGE_SUFFIXES)
    if source.is_file() and source.name.lower().endswith(TABLE_SUFFIXES):
        table = read_label_table(source, check_files=False)
        return [r.path for r in table.records if r.path is not None]
    raise InvalidParameterError(f"{source}: expected a folder of images or a label table (.csv)")


def load_pixels(paths: list[Path], size: int, workers: int = 0) -> tuple[torch.Tensor, list[Path], list[tuple[str, str]]]:
    """Decode images in threads -> (uint8 [N, 1, size, size], kept paths, [(path, reason)] of the unreadable)."""
    def decode(path: Path) -> torch.Tensor | str:
        try:
            return to_square_uint8(read_image(path), size)
        except ImageDecodeError as exc:
            return str(exc)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the threads already share the cores; nested torch threads would oversubscribe them
    try:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            decoded = list(pool.map(decode, paths))
    finally:
        torch.set_num_threads(threads)
    kept = [(p, d) for p, d in zip(paths, decoded) if isinstance(d, torch.Tensor)]
    failures = [(str(p), d) for p, d in zip(paths, decoded) if isinstance(d, str)]
    for _, reason in failures[:20]:
        log.warning("skipping %s", reason)
    pixels = torch.stack([d for _, d in kept]) if kept else torch.zeros((0, 1, size, size), dtype=torch.uint8)
    return pixels, [p for p, _ in kept], failures


def c2l_views(x: torch.Tensor, cfg: PretrainAugment, size: int, generator: torch.Generator, fill: float) -> torch.Tensor:
    """[B, 1, H, W] in [0, 1] -> one augmented view per image, [B, 1, size, size].

    Crop, rotation and flip are one affine warp per image (one grid_sample for the batch):
    a view pixel (u, v) in [-1, 1]^2 samples the source at c + diag(w, h) R(angle) (f u, v),
    i.e. the crop (centre c, half-sides w, h) is resized, then rotated, then mirrored, in the
    torchvision order. Then brightness/contrast jitter, then cutout holes filled with `fill`
    (the normalization mean: zero after normalization, as in the official code).
    """
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    area = uniform(*cfg.crop_scale)
    ratio = torch.exp(uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])))
    w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    cx, cy = uniform(-1, 1) * (1 - w), uniform(-1, 1) * (1 - h)  # the crop stays inside the image
    angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180.0
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([w * cos * flip, -w * sin, cx], 1),
                         torch.stack([h * sin * flip, h * cos, cy], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = uniform(1 - cfg.brightness, 1 + cfg.brightness).view(b, 1, 1, 1).to(x.device)
    contrast = uniform(1 - cfg.contrast, 1 + cfg.contrast).view(b, 1, 1, 1).to(x.device)
    out = out * brightness
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean).clamp(0.0, 1.0)
    side = round(cfg.cutout_frac * size)
    if cfg.cutout_holes > 0 and side > 0:
        centres = (torch.rand(b, cfg.cutout_holes, 2, generator=generator) * size).floor().to(x.device)
        pos = torch.arange(size, device=x.device, dtype=centres.dtype)
        # Official Cutout: rows [y - side//2, y + side//2) clipped to the image, likewise columns.
        rows = (pos >= centres[..., 0:1] - side // 2) & (pos < centres[..., 0:1] + side // 2)  # [B, holes, size]
        cols = (pos >= centres[..., 1:2] - side // 2) & (pos < centres[..., 1:2] + side // 2)
        holes = (rows[..., :, None] & cols[..., None, :]).any(dim=1, keepdim=True)  # [B, 1, size, size]
        out = out.masked_fill(holes, fill)
    return out


# -- the backbone file ------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON-shaped copy (lists, dicts, numbers, strings) that torch.load(weights_only=True) accepts."""
    return json.loads(json.dumps(value, default=str))


def save_backbone(path: str | Path, arch: str, state_dict: dict[str, torch.Tensor], summary: dict[str, Any]) -> str:
    """Write a backbone file atomically; returns its id (hash of the weights)."""
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    backbone_id = weights_id(state)
    payload = {"format": BACKBONE_FORMAT, "format_version": BACKBONE_FORMAT_VERSION, "medhash_version": __version__,
               "arch": arch, "state_dict": state, "pretrain": _plain(summary), "id": backbone_id}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return backbone_id


def read_backbone(path: str | Path) -> dict[str, Any]:
    """Load and validate a backbone file; every failure is a CheckpointError naming the file."""
    return read_payload(path, BACKBONE_FORMAT, BACKBONE_FORMAT_VERSION, "id", "backbone file",
                        hint="; `medhash pretrain` writes them")


def load_backbone_init(path: str | Path, arch: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(features weights, file metadata without the weights) of a backbone file made for `arch`."""
    payload = read_backbone(path)
    if payload["arch"] != arch:
        raise CheckpointError(f"{path}: backbone was pretrained for architecture {payload['arch']!r}, "
                              f"but the model being trained uses {arch!r}; pretrain with --backbone {arch}")
    return payload["state_dict"], {k: v for k, v in payload.items() if k != "state_dict"}


def apply_backbone_init(model: AGHashNet, path: str | Path) -> dict[str, Any]:
    """Load a backbone file into both branches of an AGHashNet; returns the checkpoint's `init` record."""
    weights, info = load_backbone_init(path, model.config.backbone)
    for branch in (model.global_backbone, model.local_backbone):
        try:
            branch.features.load_state_dict(weights)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit a {info['arch']} backbone: {exc}") from exc
    norm = info.get("pretrain", {}).get("input_norm")
    if norm and (norm["mean"], norm["std"]) != (model.config.mean, model.config.std):
        log.warning("%s: pretrained with input mean/std %s/%s, model normalizes with %s/%s",
                    path, norm["mean"], norm["std"], model.config.mean, model.config.std)
    return {"source": "c2l", "path": str(path), "backbone_id": info["id"]}


# -- the run ----------------------------------------------------------------------------------------

def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def _digest(config: PretrainConfig, paths: list[Path]) -> str:
    """What saved state must agree with to be resumed: the recipe and the image list (not paths of outputs)."""
    d = config.to_dict()
    for key in ("out", "state", "progress", "workers", "device"):
        d.pop(key)
    d["images_list"] = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rank_batches(n: int, batch_size: int, seed: int, epoch: int, ctx: DistContext) -> list[np.ndarray]:
    """This process's full batches of one epoch: one seeded permutation for every rank, sharded by rank."""
    mine = rank_shard(n, seed, epoch, ctx)
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(len(mine) // batch_size)]


class Pretrainer:
    def __init__(self, config: PretrainConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self.ctx = init_distributed(self.device)
        if self.device.type == "cuda":
            if self.ctx.enabled:
                self.device = torch.device("cuda", self.ctx.local_rank)
                torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.state_path = Path(config.state or f"{config.out}.state.pt")
        self.seconds: dict[str, float] = {}

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

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
            with self._autocast():
                keys = model.encode_keys(view, gen)
            model.enqueue(keys, torch.as_tensor(idx, device=self.device))

    def _save_state(self, state: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with atomic_path(self.state_path) as tmp:
                torch.save(state, tmp)
        barrier(self.ctx)

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
        pixels, kept, failures = load_pixels(paths, cfg.load_size, cfg.workers)
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
            bar = tqdm(batches, desc=f"c2l {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and ctx.is_main), leave=False)
            t0, sums, losses = time.perf_counter(), {}, []
            for step, idx in enumerate(bar):
                ids = torch.as_tensor(idx, device=dev)
                x_q, x_k = self._views(pixels, idx, gen)
                lam, perm = 1.0, None
                if mixup:
                    lam = mixup_lambda(rng, cfg.c2l.mixup_alpha)
                    perm = torch.randperm(len(idx), generator=gen).to(dev)
                with self._autocast():
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
                if cfg.progress and ctx.is_main and step % 10 == 0:
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
                log.info("c2l epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in record.items()})
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
