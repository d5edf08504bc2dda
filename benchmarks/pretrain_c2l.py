"""Does C2L pretraining help? Pretrain on all dev images (labels unused), then train twice at 64 bits.

    python -m benchmarks.pretrain_c2l --data-root ../shared/data --out benchmarks/results/pretrain_c2l.json
    python -m benchmarks.pretrain_c2l --mode cpu     # a CPU: 128 px, 8 pretraining epochs
    python -m benchmarks.pretrain_c2l --data-root ../shared/data --out /tmp/c2l.json --mode quick   # CPU smoke

1. C2L pretraining of the backbone on every image of nih-cxr14-dev (its labels are not read).
   Full mode (a GPU): DenseNet-121 at 224 px, batch 128; the epoch count (10 to 200) fills what the
   two trainings leave of --total-budget-s (default 300 s), from a 2-epoch calibration run's images/s.
2. The training of benchmarks.train_nih (its `base_config` and profile: gpu in full mode, 64 bits,
   folds 0-3) twice, with equal budgets: both branches initialized from the C2L backbone, and from
   random weights. The random-init arm runs first (before pretraining): its wall time tells how
   much of the budget is left for pretraining.
3. Tie-aware retrieval mAP of each with fold 4 as queries and folds 0-3 as the database
   (medhash.app.evaluate.evaluate_model).
Writes map_c2l_init, map_random_init, the pretraining loss curve, wall times, machine and versions.
Without CUDA it runs the cpu sizes: DenseNet-121 at 128 px, 8 pretraining epochs and train_nih's
cpu profile. --mode quick runs the quick sizes: a tiny backbone at 64 px, 1 pretraining
epoch and train_nih's quick profile, whose numbers say nothing about C2L (it checks that the
pipeline runs end to end).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from benchmarks.common import DEFAULT_DATA_ROOT, RESULTS, write_result
from benchmarks.train_nih import PROFILES, base_config
from medhash.bench.machine import machine_info


@dataclass(frozen=True)
class PretrainSizes:
    backbone: str
    size: int  # view side
    load_size: int
    batch_size: int
    epochs: int | None  # None: fill the time budget
    bn_splits: int


MODES = {  # mode -> (pretraining sizes, train_nih profile of the hashing-model training)
    "full": (PretrainSizes("densenet121", 224, 256, batch_size=128, epochs=None, bn_splits=4), "gpu"),
    # the 2-core CPU (bf16 on AMX, ~6 images/s per thread): train_nih's cpu profile and a fixed 8 epochs (~45 min)
    "cpu": (PretrainSizes("densenet121", 128, 160, batch_size=64, epochs=8, bn_splits=4), "cpu"),
    "quick": (PretrainSizes("tiny", 64, 64, batch_size=64, epochs=1, bn_splits=4), "quick"),
}
BITS = 64
QUERY_FOLDS = (4,)
EPOCH_LIMITS = (10, 200)


def say(text: str) -> None:
    print(f"[pretrain_c2l {time.strftime('%H:%M:%S')}] {text}", flush=True)


def pretrain_config(labels: Path, out: Path, sizes: PretrainSizes, epochs: int, device: str, progress: bool):
    from medhash.model.c2l import C2LConfig
    from medhash.train.pretrain import PretrainConfig

    return PretrainConfig(images=str(labels), out=str(out), backbone=sizes.backbone, size=sizes.size,
                          load_size=sizes.load_size, epochs=epochs, batch_size=sizes.batch_size,
                          c2l=C2LConfig(bn_splits=sizes.bn_splits), device=device, progress=progress)


def calibrated_epochs(labels: Path, work: Path, sizes: PretrainSizes, device: str,
                      budget_s: Callable[[], float]) -> tuple[int, dict]:
    """Epochs that fill the budget left after a 2-epoch calibration run (steady images/s from its second epoch)."""
    from medhash.train.pretrain import pretrain

    result = pretrain(pretrain_config(labels, work / "calibration.pt", sizes, 2, device, False))
    ips = result.history[-1]["images_per_s"]
    epoch_s = result.n_images / ips
    left = budget_s() - result.seconds.get("load_images", 0.0)  # the real run decodes the images again
    epochs = int(min(max(left / epoch_s, EPOCH_LIMITS[0]), EPOCH_LIMITS[1]))
    return epochs, {"images_per_s": ips, "epoch_s": epoch_s, "budget_s": left, "epochs": epochs,
                    "wall_s": result.seconds.get("total")}


def curve_note(losses: list[float], map_c2l: float, map_random: float, mode: str, n_images: int, queue: int) -> str:
    parts = []
    if mode == "quick":
        parts.append("Quick CPU smoke at toy sizes (tiny backbone, 64 px, 1 pretraining epoch): it checks the pipeline; "
                     "the mAPs say nothing about C2L.")
    delta = map_c2l - map_random
    parts.append(f"C2L init {'improved' if delta > 0 else 'did not improve'} tie-aware mAP "
                 f"({map_c2l:.4f} vs {map_random:.4f} from random init, delta {delta:+.4f}).")
    tail = max(1, len(losses) // 10)
    if len(losses) >= 2 * tail + 1:
        before, last = sum(losses[-2 * tail:-tail]) / tail, sum(losses[-tail:]) / tail
        trend = "falling" if last < before * 0.99 else "rising" if last > before * 1.01 else "flat"
        best = min(range(len(losses)), key=losses.__getitem__)
        parts.append(f"Pretraining loss {losses[0]:.3f} -> {losses[-1]:.3f} (log(K+1) = {math.log(queue + 1):.3f} is chance; "
                     f"lowest {losses[best]:.3f} at epoch {best + 1}); over the last {tail} epoch(s) it went "
                     f"{before:.3f} -> {last:.3f}: " + {
                         "falling": "still falling, so longer pretraining should help.",
                         "flat": "flat, so more epochs alone are unlikely to help.",
                         "rising": "rising. With the queue capped at the data size every other image is a negative "
                                   "and the momentum encoder's keys spread as it learns, so the loss is a poor progress "
                                   "measure here; the downstream mAP is the one to trust. More unlabeled images (a real "
                                   "16,384-key queue) and a larger batch are the levers."}[trend])
    if delta <= 0:
        parts.append(f"At this data size ({n_images} unlabeled images, queue capped at {queue} negatives vs 16384 in the "
                     "recipe) the levers are more unlabeled radiographs (e.g. all of NIH ChestX-ray14), longer "
                     "pretraining and a larger batch on the GPU.")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="Folder holding nih-cxr14-dev/labels.csv.")
    parser.add_argument("--out", type=Path, default=RESULTS / "pretrain_c2l.json")
    parser.add_argument("--mode", choices=("auto", *MODES), default="auto",
                        help="Sizes: full (a GPU), cpu (the 2-core CPU, ~2 h), quick (smoke). auto: full with CUDA, else cpu.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--total-budget-s", type=float, default=300.0,
                        help="Full mode: pretraining epochs fill what the two trainings leave of this wall time.")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="Fixed pretraining epochs (no calibration).")
    parser.add_argument("--train-profile", choices=sorted(PROFILES), default=None,
                        help="train_nih.py profile of the hashing-model training (default: gpu in full mode, quick in quick mode).")
    parser.add_argument("--work", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars (epoch lines are still logged).")
    args = parser.parse_args()

    import torch

    from medhash.app.evaluate import EvaluateConfig, evaluate_model
    from medhash.train import train
    from medhash.train.pretrain import pretrain

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("medhash").setLevel(logging.INFO)  # epoch lines of pretraining and training
    labels = args.data_root / "nih-cxr14-dev" / "labels.csv"
    if not labels.is_file():
        sys.exit(f"{labels} not found: pass --data-root, the folder that holds nih-cxr14-dev/")
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    mode = args.mode
    if mode == "auto":
        mode = "full" if cuda else "cpu"
    sizes, profile_name = MODES[mode]
    profile_name = args.train_profile or profile_name
    profile = PROFILES[profile_name]
    device = args.device if args.device != "auto" else ("cuda" if cuda else "cpu")
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # as pretraining sets it: the same for both arms
    work = args.work or Path(tempfile.mkdtemp(prefix="pretrain_c2l-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"mode {mode} on {device} (training profile {profile_name!r}); work folder {work}")
    wall: dict[str, float] = {}
    t_all = time.perf_counter()

    arms: dict[str, dict] = {}

    def run_arm(arm: str, init: Path | None) -> None:
        """Train (train_nih's recipe at 64 bits, identical for both arms but `init`) and evaluate one arm."""
        ckpt = work / f"hash-{arm}.pt"
        config = replace(base_config(profile, args.data_root, BITS, ckpt, work / f"stages-{arm}", device),
                         init=str(init) if init else None)
        t0 = time.perf_counter()
        result = train(config)
        wall[f"train_{arm}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = evaluate_model(EvaluateConfig(model=str(ckpt), labels=str(labels), query_folds=QUERY_FOLDS,
                                               device=device, batch_size=64))
        wall[f"evaluate_{arm}"] = time.perf_counter() - t0
        arms[arm] = {"model_id": result.model_id, "init": str(init) if init else "random", "retrieval": report["retrieval"],
                     "n_queries": report["n_queries"], "n_database": report["n_database"], "train_seconds": result.seconds}
        say(f"{arm} init: tie-aware mAP {report['retrieval']['map_tie_aware']:.4f} "
            f"(train {wall[f'train_{arm}']:.0f} s, evaluate {wall[f'evaluate_{arm}']:.0f} s)")

    # The random-init arm first: its wall time tells how much of the total budget pretraining may take
    # (the C2L arm trains the same recipe, so it will take about as long).
    run_arm("random", None)
    calibration = None
    epochs = args.pretrain_epochs or sizes.epochs
    if epochs is None:
        arm_s = wall["train_random"] + wall["evaluate_random"]
        t0 = time.perf_counter()
        epochs, calibration = calibrated_epochs(labels, work, sizes, device, lambda: args.total_budget_s - arm_s - (time.perf_counter() - t_all))
        wall["calibration"] = time.perf_counter() - t0
        say(f"calibration: {calibration['images_per_s']:.0f} images/s; {calibration['budget_s']:.0f} s of the budget left "
            f"-> {epochs} pretraining epochs")

    t0 = time.perf_counter()
    backbone = work / "backbone.pt"
    pre = pretrain(pretrain_config(labels, backbone, sizes, epochs, device, not args.no_progress))
    wall["pretrain"] = time.perf_counter() - t0
    losses = [h["loss"] for h in pre.history]
    say(f"pretrained {pre.arch} on {pre.n_images} images, {epochs} epochs: loss {losses[0]:.3f} -> {losses[-1]:.3f} "
        f"in {wall['pretrain']:.0f} s")
    run_arm("c2l", backbone)
    wall["total"] = time.perf_counter() - t_all

    map_c2l, map_random = arms["c2l"]["retrieval"]["map_tie_aware"], arms["random"]["retrieval"]["map_tie_aware"]
    every = max(1, len(pre.step_losses) // 200)
    step_curve = [sum(chunk) / len(chunk) for chunk in (pre.step_losses[i:i + every] for i in range(0, len(pre.step_losses), every))]
    write_result(args.out, {
        "benchmark": "pretrain_c2l",
        "mode": mode,
        "map_c2l_init": map_c2l,
        "map_random_init": map_random,
        "delta": map_c2l - map_random,
        "note": curve_note(losses, map_c2l, map_random, mode, pre.n_images, pre.queue_size),
        "pretrain": {
            "sizes": asdict(sizes), "backbone": pre.arch, "backbone_id": pre.backbone_id, "n_images": pre.n_images,
            "epochs": epochs, "batch_size": pre.batch_size, "queue_size": pre.queue_size,
            "loss_curve": losses, "step_loss_curve": {"steps_per_point": every, "mean_loss": step_curve},
            "history": pre.history, "calibration": calibration, "skipped_images": len(pre.skipped_images),
        },
        "train": {"profile": profile_name, "profile_settings": asdict(profile), "bits": BITS, "query_folds": QUERY_FOLDS,
                  "config": base_config(profile, args.data_root, BITS, Path("model.pt"), Path("stages"), device).to_dict()},
        "arms": arms,
        "wall_s": wall,
        "machine": machine_info(),
    })
    say(f"wrote {args.out}: map_c2l_init {map_c2l:.4f}, map_random_init {map_random:.4f}; total {wall['total']:.0f} s")


if __name__ == "__main__":
    main()
