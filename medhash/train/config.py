"""TrainConfig: the whole recipe of a `medhash train` run, recorded in the checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from medhash.model.config import ModelConfig
from medhash.model.losses import LossWeights


@dataclass(frozen=True)
class AugmentConfig:
    """Radiograph-safe augmentation: small affine, exposure jitter; never a vertical flip."""

    rotate_deg: float = 7.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift_frac: float = 0.05
    brightness: float = 0.1  # additive, in [0, 1] intensity units
    contrast: float = 0.15  # multiplicative around the image mean
    hflip: bool = False  # anatomy is lateralized (heart on the left), so off by default


@dataclass(frozen=True)
class TrainConfig:
    labels: str  # label table (medhash/dev labels.csv or NIH Data_Entry format)
    out: str  # checkpoint path
    model: ModelConfig = field(default_factory=ModelConfig)
    image_root: str | None = None
    load_size: int = 256  # images are decoded once and held at this size; crops come from it
    epochs_global: int = 8
    epochs_local: int = 8
    epochs_hash: int = 60
    epochs_joint: int = 0  # optional end-to-end fine-tune of everything
    batch_size: int = 32
    hash_batch_size: int = 128  # the hash head trains on cached features: bigger batches, steadier bit balance
    lr: float = 3e-4  # backbone stages
    lr_hash: float = 1e-3
    lr_joint: float = 3e-5
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # a name in medhash.train.optim.OPTIMIZERS
    schedule: str = "cosine"  # a name in medhash.train.optim.SCHEDULES
    warmup_epochs: int = 1
    losses: LossWeights = field(default_factory=LossWeights)
    class_weighting: bool = True  # BCE pos_weight = neg/pos per class
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train_folds: tuple[int, ...] | None = None  # None: every fold not used for val/test
    val_folds: tuple[int, ...] = (4,)
    test_folds: tuple[int, ...] = ()
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (CUDA)
    device: str = "auto"
    seed: int = 0
    init: str | None = None  # a C2L backbone file for both branches
    work_dir: str | None = None  # per-stage resumable state; default: <out>.stages/
    checkpoint_every_s: float = 60.0  # stage state is rewritten at most this often (and after the last epoch)
    progress: bool = True
    strict_labels: bool = False  # label-table problems (unknown label, duplicate id...) are fatal, not warnings

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        if not self.losses.similarity:
            # weight 0 is the recipe from before the term existed: left out, so that the stage digests
            # of earlier runs (which hash this dict) still match and their trained stages are reused
            del d["losses"]["similarity"]
        return d
