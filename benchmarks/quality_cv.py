"""Cross-validated retrieval quality on the NIH dev set: the previous default recipe, its ablations,
the similarity loss, C2L initialization and the configurable `default` recipe, over 5 folds.

    python -m benchmarks.quality_cv --work /var/tmp/medhash-quality-cv           # every cell
    python benchmarks/quality_cv.py --work /var/tmp/medhash-quality-cv --variants previous_default,similarity --folds 0,1
    python -m benchmarks.quality_cv --smoke --work /tmp/qcv --results /tmp/qcv-results   # phantoms, tiny, 2 folds
    python -m benchmarks.quality_cv --work /var/tmp/medhash-quality-cv --variants rerank_100,rerank_1000

Protocol. The dev table's `dev_fold` column splits it into 5 patient-grouped folds. A cell is
(variant, bits, fold): train on the other four folds, encode every image, and rank those four folds
(the database) for each image of the fold (the queries) by Hamming distance. Figures: tie-aware mAP,
nDCG@100 (Jaccard gain), ACG@100, weighted mAP, P@10 (medhash.eval.metrics); relevance = sharing a label.

Recipes. `previous_default` is benchmarks/train_nih.py's training at its `cpu` profile (128 px,
epochs 8/6/80, random init, the paper's three losses, bit balance 1.0). The other variants change it
as VARIANTS says; `c2l_init` first pretrains a backbone with C2L on the four training folds only
(never the query fold) and initializes both branches from it. `default` is DEFAULT_RECIPE, the
candidate for the new default. `rerank_100` and `rerank_1000` train nothing of their own: they take
previous_default's model of the fold (the same stages and checkpoint, so they run in seconds once it
exists) and re-rank each query's Hamming top-N (ties at the N-th distance included) by the cosine of
the continuous hash values, the database's stored as float16 as `medhash encode --store-hash-values`
stores them (what `HammingIndex.search(rerank=N)` does). The figures are those of the whole re-ranked
list: the shortlist in cosine order, then the rest of the database in Hamming order, scored by
evaluate_scores on medhash.eval.reranked_distances (ties only where cosine and distance, or the
distance after the shortlist, tie); each row also holds the fold's Hamming mAP for a paired delta.

Resumable and cheap where it can be. Each cell writes its JSON atomically into
<results>/quality_cv/cells/ with a digest of its recipe, and a rerun skips the cells whose digest
still matches. Every cell of a fold trains in one stage folder under --work, where the trainer keys
stages by settings digests: variants that differ only in the hash head (bits, losses, fusion inputs)
reuse the fold's trained backbones and train only the head. Cells run in that order: per fold the
random-init variants (the first one trains the backbones, the others take seconds), then the C2L
cells. After each cell <results>/quality_cv.json is rewritten atomically with every current cell's
row and the mean and sd over folds per (variant, bits).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import DEFAULT_DATA_ROOT, REPO, write_result
from benchmarks.pretrain_c2l import MODES, PretrainSizes, pretrain_config
from benchmarks.train_nih import PROFILES, Profile, base_config
from medhash.atomic import atomic_path
from medhash.bench.machine import machine_info
from medhash.data.labels import read_label_table
from medhash.data.phantoms import PhantomConfig, write_phantom_dataset
from medhash.eval import evaluate_codes, evaluate_scores, hamming_distances, reranked_distances, shortlist_mask
from medhash.index import cosine_similarity
from medhash.model import load_model, pack_codes, weights_id
from medhash.train import TrainConfig, train
from medhash.train.data import ImageSet, load_image_set
from medhash.train.pretrain import pretrain
from medhash.train.stage_io import pooled_features
from medhash.train.trainer import Trainer

log = logging.getLogger("quality_cv")

# Weight of the multi-label similarity loss (medhash.model.losses.similarity_loss) in the
# `similarity` variant; not tuned yet.
SIMILARITY_WEIGHT = 1.0
# The candidate default recipe, as changes to previous_default (same keys as VARIANTS); the lead sets it.
DEFAULT_RECIPE: dict = {"losses": {"similarity": SIMILARITY_WEIGHT}}

# variant -> changes to previous_default: "model" / "losses" / "train" fields of ModelConfig /
# LossWeights / TrainConfig, and "c2l_init": True for a C2L backbone pretrained on the training folds.
VARIANTS: dict[str, dict] = {
    "previous_default": {},
    "global_only": {"model": {"fusion_inputs": ("global",)}},
    "local_only": {"model": {"fusion_inputs": ("local",)}},
    "no_quantization": {"losses": {"quantization": 0.0}},
    "no_bit_balance": {"losses": {"bit_balance": 0.0}},
    # the hash head with no label signal: balanced, quantized projections of the supervised features
    "no_classification": {"losses": {"classification": 0.0}},
    "similarity": {"losses": {"similarity": SIMILARITY_WEIGHT}},
    "c2l_init": {"c2l_init": True},
    "default": DEFAULT_RECIPE,
    # previous_default's model; the Hamming top-N re-ranked by cosine of the hash values (see the docstring)
    "rerank_100": {"rerank": 100},
    "rerank_1000": {"rerank": 1000},
}
VARIANT_BITS = {"previous_default": (16, 32, 64)}  # every other variant: 64 bits
DEFAULT_BITS = (64,)
NOT_AVAILABLE: dict[str, str] = {}  # variant -> why it cannot be measured yet
FOLDS = (0, 1, 2, 3, 4)
KS = (10, 100)
C2L_SIZES = {"cpu": MODES["cpu"][0], "gpu": MODES["full"][0]}  # pretrain_c2l.py's sizes per training profile
METRICS = ("map_tie_aware", "ndcg_at_100", "acg_at_100", "wmap", "p_at_10", "train_s")

# --smoke: phantoms, a tiny backbone, one epoch per backbone stage, two folds
SMOKE_PROFILE = Profile("tiny", 64, 1, 1, 2, 16, 1e-3, "smoke test of the script; figures meaningless")
SMOKE_C2L = replace(MODES["quick"][0], batch_size=16)
SMOKE_PHANTOMS = 40
SMOKE_FOLDS = (0, 1)


@dataclass(frozen=True)
class Cell:
    variant: str
    bits: int
    fold: int

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.bits}-fold{self.fold}"

    @property
    def c2l(self) -> bool:
        return bool(VARIANTS[self.variant].get("c2l_init"))


@dataclass(frozen=True)
class Setup:
    """What every cell shares: the data, the recipe sizes, where things go."""

    labels: Path
    data_name: str
    profile_name: str
    profile: Profile
    c2l_sizes: PretrainSizes
    work: Path
    cells_dir: Path
    summary_path: Path
    device: str
    train_changes: dict  # TrainConfig fields set for every cell (the smoke run's fp32)

    def fold_dir(self, fold: int) -> Path:
        return self.work / f"fold{fold}"

    def c2l_backbone(self, fold: int) -> Path:
        return self.fold_dir(fold) / "c2l-backbone.pt"

    def config(self, cell: Cell) -> TrainConfig:
        """previous_default for this fold, with the variant's changes."""
        recipe = VARIANTS[cell.variant]
        unknown = set(recipe) - {"model", "losses", "train", "c2l_init", "rerank"}
        if unknown:
            raise ValueError(f"variant {cell.variant}: unknown recipe keys {sorted(unknown)}")
        if "rerank" in recipe:  # previous_default's model itself: same stages, same checkpoint
            return self.config(Cell("previous_default", cell.bits, cell.fold))
        folder = self.fold_dir(cell.fold)
        base = base_config(self.profile, DEFAULT_DATA_ROOT, cell.bits, folder / f"{cell.name}.pt", folder / "stages", self.device)
        others = tuple(f for f in FOLDS if f != cell.fold)
        config = replace(base, labels=str(self.labels), train_folds=others, val_folds=(), test_folds=(cell.fold,),
                         **self.train_changes)
        config = replace(config, model=replace(config.model, **recipe.get("model", {})),
                         losses=replace(config.losses, **recipe.get("losses", {})), **recipe.get("train", {}))
        return replace(config, init=str(self.c2l_backbone(cell.fold))) if cell.c2l else config

    def digest(self, cell: Cell) -> str:
        """The recipe of a cell, independent of where files go: a cell file made with another is stale."""
        recipe = self.config(cell).to_dict()
        # Where files go and run-time policies (strict_labels: fatal or warned label problems) are not the recipe.
        for key in ("labels", "out", "work_dir", "device", "progress", "image_root", "init", "strict_labels"):
            recipe.pop(key, None)
        recipe["data"] = self.data_name
        recipe["init"] = {"c2l": asdict(self.c2l_sizes)} if cell.c2l else "random"
        if "rerank" in VARIANTS[cell.variant]:
            recipe["rerank"] = {"n": VARIANTS[cell.variant]["rerank"], "values": "float16 database, cosine"}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def cell_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.name}.json"


def plan_cells(variants: list[str], folds: list[int], bits: list[int] | None) -> list[Cell]:
    """Every (variant, bits, fold), cheap first: per fold the variants on random-init backbones (the
    first trains them, the rest reuse them), then the C2L cells, which pretrain and train new backbones."""
    cells = [Cell(v, b, f) for f in folds for v in variants for b in (bits or VARIANT_BITS.get(v, DEFAULT_BITS))]
    order = {v: i for i, v in enumerate(variants)}
    return sorted(cells, key=lambda c: (c.c2l, c.fold, order[c.variant], c.bits))


class DevImages:
    """Every readable image of the table at the training load size, decoded once per process."""

    def __init__(self, setup: Setup, load_size: int):
        table = read_label_table(setup.labels)
        self.set: ImageSet = load_image_set(table.records, table.classes, load_size)
        self.folds = np.array([r.fold for r in self.set.records])
        self.labels = self.set.targets.numpy() > 0.5


def write_c2l_table(setup: Setup, fold: int) -> Path:
    """The training folds' images as a label table (absolute paths) for pretraining: never the query fold."""
    path = setup.fold_dir(fold) / "c2l-images.csv"
    records = [r for r in read_label_table(setup.labels).records if r.fold != fold and r.path is not None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("image_id", "file", "patient_id", "labels", "dev_fold"))
        writer.writerows((r.image_id, str(Path(r.path).resolve()), r.patient_id, "|".join(r.labels), r.fold) for r in records)
    return path


def ensure_c2l_backbone(setup: Setup, fold: int) -> float:
    """Pretrain the fold's C2L backbone unless it exists (pretraining resumes by itself); seconds spent."""
    backbone = setup.c2l_backbone(fold)
    if backbone.exists():
        return 0.0
    t0 = time.perf_counter()
    sizes = setup.c2l_sizes
    pretrain(pretrain_config(write_c2l_table(setup, fold), backbone, sizes, sizes.epochs, setup.device, False))
    return time.perf_counter() - t0


def fold_hash_values(setup: Setup, images: DevImages, config: TrainConfig) -> np.ndarray:
    """The hash layer's values (float32 [n, bits], tanh) of every dev image under a trained checkpoint; their
    signs are the codes. The pooled backbone features are kept per fold and backbone weights: every
    hash-head variant of a fold encodes from them."""
    model, _ = load_model(config.out)
    trainer = Trainer(config)
    backbone = {k: v for k, v in model.state_dict().items()
                if k.startswith(("global_backbone.", "global_classifier.", "local_backbone."))}
    path = Path(config.work_dir) / f"dev-features-{weights_id(backbone)}.pt"
    model.to(trainer.device).eval()
    if path.exists():
        feats = torch.load(path, map_location="cpu", weights_only=True)
    else:
        feats = pooled_features(model, images.set, trainer.device, trainer.amp_dtype)
        with atomic_path(path) as tmp:
            torch.save(feats, tmp)
    with torch.no_grad():
        return model.hash_head({k: v.to(trainer.device) for k, v in feats.items()})[1].float().cpu().numpy()


def reranked_report(codes: np.ndarray, values: np.ndarray, queries: np.ndarray, database: np.ndarray,
                    labels: np.ndarray, n: int):
    """Figures of the whole re-ranked ranking: each query's Hamming top-n (with ties) by cosine of the
    hash values (the database's as float16, as an index stores them), then the rest by distance."""
    distances = hamming_distances(codes[queries], codes[database])
    cosine = cosine_similarity(values[database].astype(np.float16), values[queries])
    ranking = reranked_distances(distances, cosine, shortlist_mask(distances, n))
    return evaluate_scores(ranking, labels[queries], labels[database], ks=KS)


def run_cell(setup: Setup, images: DevImages, cell: Cell) -> dict:
    pretrain_s = ensure_c2l_backbone(setup, cell.fold) if cell.c2l else 0.0
    config = setup.config(cell)
    t0 = time.perf_counter()
    result = train(config)
    train_s = time.perf_counter() - t0
    values = fold_hash_values(setup, images, config)
    codes = pack_codes(torch.from_numpy(values))
    queries, database = images.folds == cell.fold, images.folds != cell.fold
    report = evaluate_codes(codes[queries], codes[database], images.labels[queries], images.labels[database], ks=KS)
    extra = {}
    rerank = VARIANTS[cell.variant].get("rerank")
    if rerank is not None:
        extra = {"rerank": rerank, "hamming_map_tie_aware": report.map_tie_aware,
                 "hamming_ndcg_at_100": report.ndcg_at_k[100]}
        report = reranked_report(codes, values, queries, database, images.labels, rerank)
    return {"variant": cell.variant, "bits": cell.bits, "fold": cell.fold, "map_tie_aware": report.map_tie_aware,
            "ndcg_at_100": report.ndcg_at_k[100], "acg_at_100": report.acg_at_k[100], "wmap": report.wmap,
            "p_at_10": report.p_at_k[10], "train_s": train_s, "pretrain_s": pretrain_s,
            "map_at_100": report.map_at_k[100], "n_queries": int(queries.sum()), "n_database": int(database.sum()),
            "model_id": result.model_id, "recipe_digest": setup.digest(cell), **extra}


def current_rows(setup: Setup) -> tuple[list[dict], list[str]]:
    """Rows of the cell files whose recipe still matches (any variant, bits, fold), and the stale files."""
    rows, stale = [], []
    for path in sorted(setup.cells_dir.glob("*.json")):
        row = json.loads(path.read_text())
        known = row.get("variant") in VARIANTS
        if known and row.get("recipe_digest") == setup.digest(Cell(row["variant"], row["bits"], row["fold"])):
            rows.append(row)
        else:
            stale.append(path.name)
    order = list(VARIANTS)
    return sorted(rows, key=lambda r: (order.index(r["variant"]), r["bits"], r["fold"])), stale


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sd (n - 1; null for one fold) over folds of every metric, per (variant, bits)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["bits"]), []).append(row)
    order = list(VARIANTS)
    summary = []
    for (variant, bits), members in sorted(groups.items(), key=lambda item: (order.index(item[0][0]), item[0][1])):
        entry = {"variant": variant, "bits": bits, "folds": sorted(r["fold"] for r in members), "n_folds": len(members)}
        for metric in METRICS:
            values = np.array([np.nan if r[metric] is None else r[metric] for r in members], dtype=np.float64)
            entry[metric] = {"mean": float(np.nanmean(values)) if np.isfinite(values).any() else None,
                             "sd": float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else None}
        summary.append(entry)
    return summary


def write_summary(setup: Setup, seconds: float) -> list[dict]:
    rows, stale = current_rows(setup)
    summary = summarize(rows)
    write_result(setup.summary_path, {
        "benchmark": "quality_cv",
        "machine": machine_info(),
        "data": setup.data_name,
        "protocol": "5 patient-grouped dev folds; per fold: train on the other four, which form the database; "
                    "the fold's images are the queries; Hamming ranking, tie-aware figures",
        "relevance": "shares at least one of the 15 labels; nDCG gain = Jaccard similarity of the label sets; "
                     "ACG and weighted mAP count the shared labels (Zhao et al. 2015)",
        "profile": setup.profile_name,
        "profile_settings": vars(setup.profile),
        "c2l_pretraining": asdict(setup.c2l_sizes),
        "variants": VARIANTS,
        "default_recipe": DEFAULT_RECIPE,
        "not_available": NOT_AVAILABLE,
        "note": "train_s is the wall time of train(): the first cell of a fold (and of its C2L init) trains the "
                "backbones, later cells of the fold reuse them and train only the hash head; pretrain_s is C2L pretraining",
        "rows": rows,
        "summary": summary,
        "stale_cells": stale,
        "seconds_this_run": seconds,
    })
    return summary


def build_setup(args: argparse.Namespace) -> Setup:
    results = args.results
    common = {"work": args.work, "cells_dir": results / "quality_cv" / "cells", "summary_path": results / "quality_cv.json",
              "device": args.device}
    if args.smoke:
        phantoms = args.work / "phantoms"
        if not (phantoms / "labels.csv").exists():
            write_phantom_dataset(phantoms, SMOKE_PHANTOMS, PhantomConfig(size=64, seed=3))
        return Setup(labels=phantoms / "labels.csv", data_name=f"phantoms-{SMOKE_PHANTOMS}", profile_name="smoke",
                     profile=SMOKE_PROFILE, c2l_sizes=SMOKE_C2L,
                     train_changes={"precision": "fp32", "load_size": 64, "hash_batch_size": 32}, **common)
    labels = args.data_root / "nih-cxr14-dev" / "labels.csv"
    if not labels.is_file():
        sys.exit(f"{labels} not found: pass --data-root, the folder that holds nih-cxr14-dev/")
    sizes = C2L_SIZES[args.profile]
    return Setup(labels=labels, data_name="nih-cxr14-dev", profile_name=args.profile, profile=PROFILES[args.profile],
                 c2l_sizes=replace(sizes, epochs=args.c2l_epochs or sizes.epochs or 50), train_changes={}, **common)


def names(text: str | None, known, what: str) -> list:
    if text is None:
        return list(known)
    picked = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [p for p in picked if p not in {str(k) for k in known}]
    if unknown:
        sys.exit(f"unknown {what}: {unknown}; known: {list(known)}")
    return picked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medhash-quality-cv",
                        help="Cache folder outside the repository: stage states, C2L backbones, features, checkpoints.")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results",
                        help="Where quality_cv.json and quality_cv/cells/ go.")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="Folder holding nih-cxr14-dev/labels.csv.")
    parser.add_argument("--variants", help=f"Comma-separated subset of {','.join(VARIANTS)} (default: all).")
    parser.add_argument("--folds", help="Comma-separated query folds (default: 0-4; --smoke: 0,1).")
    parser.add_argument("--bits", help="Comma-separated code lengths for every chosen variant "
                                       "(default: previous_default 16,32,64, the others 64).")
    parser.add_argument("--profile", choices=("cpu", "gpu"), default="cpu",
                        help="train_nih.py profile of previous_default (cpu: 128 px, epochs 8/6/80) and the "
                             "matching C2L sizes of pretrain_c2l.py.")
    parser.add_argument("--c2l-epochs", type=int, default=None, help="C2L pretraining epochs (default: the sizes' own; 50 for gpu).")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="Phantoms, a tiny backbone, one epoch, folds 0 and 1.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)

    setup = build_setup(args)
    variants = names(args.variants, VARIANTS, "variants")
    folds = [int(f) for f in names(args.folds, SMOKE_FOLDS if args.smoke and args.folds is None else FOLDS, "folds")]
    bits = [int(b) for b in args.bits.split(",")] if args.bits else None
    cells = plan_cells(variants, folds, bits)
    setup.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    images = None
    for i, cell in enumerate(cells, 1):
        path = setup.cell_path(cell)
        if path.exists() and json.loads(path.read_text()).get("recipe_digest") == setup.digest(cell):
            log.info("[%d/%d] %s: done before, skipped", i, len(cells), cell.name)
            continue
        if images is None:
            images = DevImages(setup, setup.config(cell).load_size)
        row = run_cell(setup, images, cell)
        write_result(path, row)
        write_summary(setup, time.perf_counter() - t_start)
        log.info("[%d/%d] %s: mAP %.4f  nDCG@100 %.4f  wmAP %.4f  (train %.0f s)", i, len(cells), cell.name,
                 row["map_tie_aware"], row["ndcg_at_100"], row["wmap"], row["train_s"])
    summary = write_summary(setup, time.perf_counter() - t_start)
    print(f"wrote {setup.summary_path}")
    for entry in summary:
        print(f"{entry['variant']:<18} {entry['bits']:>3} bits  {entry['n_folds']} folds  "
              + "  ".join(f"{m} {entry[m]['mean']:.4f}" + (f"±{entry[m]['sd']:.4f}" if entry[m]["sd"] is not None else "")
                          for m in METRICS[:5] if entry[m]["mean"] is not None))


if __name__ == "__main__":
    main()
