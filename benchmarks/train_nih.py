"""Train on the shared NIH dev set and measure retrieval: full model, ablations and two floors.

Folds 0-3 train the model and form the retrieval database; fold 4 holds the queries
(patient-disjoint). For each bit length: the full model, global branch only, local
branch only, without the quantization loss, without the bit-balance loss, and two
floors (random codes; sign of random projections of 32x32 thumbnails). All variants
share the backbone stages (trained once; see medhash.train.trainer.STAGE_FIELDS) and
differ in the hash stage. Also the pointing game on the images with reference boxes.

    python -m benchmarks.train_nih --profile auto --out benchmarks/results/train_nih.json
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import DEFAULT_DATA_ROOT, RESULTS, write_result
from medhash.app.evaluate import encode_records, localization_report
from medhash.bench.machine import machine_info
from medhash.data.boxes import read_reference_boxes
from medhash.data.labels import read_label_table
from medhash.eval.metrics import evaluate_codes
from medhash.model import ModelConfig, load_encoder, load_model, pack_codes
from medhash.train import TrainConfig, train
from medhash.train.data import load_image_set
from medhash.train.stage_io import pooled_features
from medhash.train.trainer import Trainer

log = logging.getLogger("train_nih")


@dataclass(frozen=True)
class Profile:
    backbone: str
    size: int
    epochs_global: int
    epochs_local: int
    epochs_hash: int
    batch_size: int
    lr: float
    note: str


PROFILES = {
    # fits about an hour on the 2-core CPU machine (bf16 + channels_last on AMX)
    "cpu": Profile("densenet121", 128, 8, 6, 80, 32, 3e-4, "2-core CPU budget (~15 min on an idle machine)"),
    # a GPU affords a longer schedule at the same input size
    "gpu": Profile("densenet121", 224, 12, 10, 60, 64, 3e-4, "single-GPU budget (~3 min on an H100)"),
    # smoke test of the script itself
    "quick": Profile("tiny", 64, 1, 1, 5, 32, 1e-3, "smoke test only; figures meaningless"),
}
VARIANTS = ("full", "global_only", "local_only", "no_quantization", "no_bit_balance")


def base_config(profile: Profile, data_root: Path, bits: int, out: Path, work_dir: Path, device: str = "auto") -> TrainConfig:
    """The training run of this benchmark at one bit length (also used by benchmarks.pretrain_c2l)."""
    model = ModelConfig(backbone=profile.backbone, bits=bits, global_size=profile.size, local_size=profile.size)
    return TrainConfig(labels=str(data_root / "nih-cxr14-dev" / "labels.csv"), out=str(out), model=model, load_size=256,
                       epochs_global=profile.epochs_global, epochs_local=profile.epochs_local, epochs_hash=profile.epochs_hash,
                       batch_size=profile.batch_size, lr=profile.lr, train_folds=(0, 1, 2, 3), val_folds=(), test_folds=(4,),
                       device=device, work_dir=str(work_dir), progress=False)


def variant_config(config: TrainConfig, variant: str) -> TrainConfig:
    m, losses = config.model, config.losses
    changes = {
        "full": {},
        "global_only": {"model": replace(m, fusion_inputs=("global",))},
        "local_only": {"model": replace(m, fusion_inputs=("local",))},
        "no_quantization": {"losses": replace(losses, quantization=0.0)},
        "no_bit_balance": {"losses": replace(losses, bit_balance=0.0)},
    }[variant]
    return replace(config, **changes)


def pixel_lsh_codes(images: torch.Tensor, db_rows: np.ndarray, bits: int, seed: int) -> np.ndarray:
    """Floor: sign of random Gaussian projections of mean-centred 32x32 thumbnails."""
    thumbs = torch.nn.functional.interpolate(images.float() / 255.0, size=(32, 32), mode="area").flatten(1).numpy()
    thumbs = thumbs - thumbs[db_rows].mean(axis=0)
    proj = np.random.default_rng(seed).standard_normal((thumbs.shape[1], bits))
    return np.packbits(thumbs @ proj > 0, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    ap.add_argument("--out", type=Path, default=RESULTS / "train_nih.json")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/medhash-train-nih"))
    ap.add_argument("--profile", choices=["auto", *PROFILES], default="auto")
    ap.add_argument("--bits", default="16,32,48,64")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    name = args.profile if args.profile != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    profile = PROFILES[name]
    bits_list = [int(b) for b in args.bits.split(",")]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    info = machine_info()

    # 1. train every (bits, variant); backbones are trained by the first run and reused
    checkpoints, train_seconds = {}, {}
    for bits in bits_list:
        for variant in VARIANTS:
            cfg = variant_config(base_config(profile, args.data_root, bits, args.work_dir / f"{variant}-{bits}.pt",
                                             args.work_dir / "stages", args.device), variant)
            t0 = time.perf_counter()
            result = train(cfg)
            train_seconds[f"{variant}-{bits}"] = time.perf_counter() - t0
            checkpoints[(bits, variant)] = Path(cfg.out)
            log.info("trained %s/%d bits in %.0f s", variant, bits, train_seconds[f"{variant}-{bits}"])

    # 2. features of every dev image through the frozen backbones (shared by all variants)
    first_cfg = base_config(profile, args.data_root, bits_list[0], Path("unused"), args.work_dir / "stages", args.device)
    trainer = Trainer(first_cfg)
    table = read_label_table(first_cfg.labels)
    folds = np.array([r.fold for r in table.records])
    images = load_image_set(table.records, first_cfg.model.classes, first_cfg.load_size)
    labels = images.targets.numpy() > 0.5
    kept_folds = np.array([r.fold for r in images.records])
    q_rows, db_rows = np.flatnonzero(kept_folds == 4), np.flatnonzero(kept_folds != 4)
    model0, _ = load_model(checkpoints[(bits_list[0], "full")])
    model0.to(trainer.device)
    t0 = time.perf_counter()
    feats = pooled_features(model0, images, trainer.device, trainer.amp_dtype)
    feature_seconds = time.perf_counter() - t0

    def evaluate(codes: np.ndarray) -> dict:
        rep = evaluate_codes(codes[q_rows], codes[db_rows], labels[q_rows], labels[db_rows], ks=(10, 100))
        return {"map_tie_aware": rep.map_tie_aware, "map_stable": rep.map_stable, "p_at_10": rep.p_at_k[10],
                "map_at_100": rep.map_at_k[100]}

    rows = []
    for bits in bits_list:
        for variant in VARIANTS:
            model, payload = load_model(checkpoints[(bits, variant)])
            model.to(trainer.device).eval()
            with torch.no_grad():
                h = model.hash_head({k: v.to(trainer.device) for k, v in feats.items()})[1]
            codes = pack_codes(h)
            bit_means = np.unpackbits(codes[db_rows], axis=1).mean(axis=0)
            rows.append({"bits": bits, "variant": variant, **evaluate(codes), "model_id": payload["model_id"],
                         "bit_mean_min": float(bit_means.min()), "bit_mean_max": float(bit_means.max())})
            log.info("%s", rows[-1])
        rng = np.random.default_rng(bits)
        rows.append({"bits": bits, "variant": "random_codes",
                     **evaluate(rng.integers(0, 256, (len(labels), bits // 8), dtype=np.uint8))})
        rows.append({"bits": bits, "variant": "pixel_lsh", **evaluate(pixel_lsh_codes(images.images, db_rows, bits, seed=bits))})
        log.info("%s", rows[-2:])

    # 3. the real encode() path for the 64-bit (or largest) full model: codes agree with the feature path?
    check_bits = 64 if 64 in bits_list else bits_list[-1]
    encoder = load_encoder(checkpoints[(check_bits, "full")], device=str(trainer.device), batch_size=64)
    query_records = [images.records[i] for i in q_rows]
    t0 = time.perf_counter()
    encoded = encode_records(encoder, query_records, batch_size=64)
    encode_seconds = time.perf_counter() - t0
    row_full = next(r for r in rows if r["bits"] == check_bits and r["variant"] == "full")
    model, _ = load_model(checkpoints[(check_bits, "full")])
    model.to(trainer.device).eval()
    with torch.no_grad():
        feature_codes = pack_codes(model.hash_head({k: v[q_rows].to(trainer.device) for k, v in feats.items()})[1])
    equal_bits = float((np.unpackbits(feature_codes) == np.unpackbits(encoded.result.codes)).mean())

    # 4. localization: pointing game / crop IoU on reference boxes (all dev images that have one)
    box_tables = [args.data_root / "nih-meta" / "BBox_List_2017.csv.gz", args.data_root / "nih-cxr14-dev" / "rsna_link.csv"]
    boxed_ids = set()
    for t in box_tables:
        boxed_ids |= set(read_reference_boxes(t))
    boxed = [r for r in table.records if r.image_id in boxed_ids]
    boxed_set = encode_records(encoder, boxed, batch_size=64)
    loc = localization_report(boxed_set, [str(t) for t in box_tables])
    loc_fold4 = localization_report(boxed_set.subset([i for i, r in enumerate(boxed_set.records) if r.fold == 4]),
                                    [str(t) for t in box_tables])

    total = sum(v["n_images"] for v in loc.values())
    hits = sum(v.get("pointing_hits", 0) for v in loc.values())
    result = {
        "benchmark": "train_nih",
        "machine": info,
        "profile": name,
        "profile_settings": vars(profile),
        "config": base_config(profile, args.data_root, 64, Path("model.pt"), Path("stages"), args.device).to_dict(),
        "split": {"database_folds": [0, 1, 2, 3], "query_fold": 4, "n_database": int(len(db_rows)), "n_queries": int(len(q_rows)),
                  "unreadable_images": images.failures},
        "relevance": "shares at least one of the 15 labels; mAP over the whole ranked database",
        "rows": rows,
        "pointing_game": {"fraction": hits / total if total else None, "hits": hits, "n_boxed_images": total,
                          "by_table": loc, "query_fold_only": loc_fold4,
                          "model": f"full, {check_bits} bits", "note": "boxed images from every fold (folds 0-3 were seen in training, without boxes)"},
        "encode_path_check": {"bits": check_bits, "equal_bit_fraction_vs_feature_path": equal_bits,
                              "map_tie_aware_feature_path": row_full["map_tie_aware"], "engine": encoder.engine,
                              "query_images_per_s": len(query_records) / encode_seconds},
        "seconds": {"total": time.perf_counter() - t_start, "features_all_images": feature_seconds, "train": train_seconds},
    }
    write_result(args.out, result)
    print(f"wrote {args.out}")
    for r in rows:
        print(f"{r['bits']:>3} {r['variant']:<16} mAP {r['map_tie_aware']:.4f} (stable {r['map_stable']:.4f})  P@10 {r['p_at_10']:.4f}")
    print(f"pointing game {hits}/{total}; encode-path bit agreement {equal_bits:.4f}")


if __name__ == "__main__":
    main()
