"""`medhash train` and `medhash evaluate`: parse options, call medhash.train / medhash.eval."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from medhash.cli.options import (BACKBONE_NAMES, HashBits, MedhashCommand, cutoffs_option, emit, engine_option, int_list,
                                 json_option, progress_option)

log = logging.getLogger("medhash.cli")


@click.command("train", cls=MedhashCommand)
@click.option("--labels", required=True, type=click.Path(exists=True, dir_okay=False), help="labels.csv (medhash/dev format) or NIH Data_Entry table.")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False), help="Folder that relative image paths resolve against (default: the table's folder).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write.")
@click.option("--bits", default=64, show_default=True, type=HashBits(), help="Hash length K (multiple of 8, 8-256).")
@click.option("--backbone", default="densenet121", show_default=True, type=click.Choice(BACKBONE_NAMES),
              help="Backbone of both branches (tiny: for tests and the demo).")
@click.option("--size", "global_size", default=224, show_default=True, type=click.IntRange(16, 4096),
              help="Global-branch input side in pixels.")
@click.option("--local-size", default=None, type=click.IntRange(16, 4096), help="Local-branch crop side (default: --size).")
@click.option("--load-size", default=256, show_default=True, type=click.IntRange(16, 4096),
              help="Images are held at this side; crops come from it.")
@click.option("--tau", default=0.7, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Saliency threshold for the attention crop.")
@click.option("--fusion-dim", default=512, show_default=True, type=click.IntRange(1, 65536),
              help="Width of the fused FC layer before the hash layer.")
@click.option("--fusion-inputs", default="global,local", show_default=True, help="Branches fused into the hash layer.")
@click.option("--epochs-global", default=8, show_default=True, type=click.IntRange(min=0), help="Global-branch epochs.")
@click.option("--epochs-local", default=8, show_default=True, type=click.IntRange(min=0), help="Local-branch epochs (on saliency crops).")
@click.option("--epochs-hash", default=60, show_default=True, type=click.IntRange(min=0), help="Hash-head epochs (on cached features).")
@click.option("--epochs-joint", default=0, show_default=True, type=click.IntRange(min=0),
              help="Optional end-to-end fine-tune epochs.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per step (per process).")
@click.option("--lr", default=3e-4, show_default=True, type=click.FloatRange(0, min_open=True), help="Learning rate.")
@click.option("--optimizer", default="adamw", show_default=True, type=click.Choice(["adamw", "sgd"]), help="Optimizer.")
@click.option("--quantization-weight", default=0.1, show_default=True, type=click.FloatRange(min=0),
              help="Weight of the quantization loss (|h| -> 1).")
@click.option("--bit-balance-weight", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Weight of the bit-balance loss (each bit's batch mean -> 0).")
@click.option("--val-folds", default="4", show_default=True, help="Comma-separated folds held out for validation.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="auto: bf16 where the CPU has bf16 units and on GPUs, else fp32.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, help="Seed of every random draw (splits, augmentation, init).")
@click.option("--work-dir", default=None, help="Per-stage resumable state (default: OUT.stages/).")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), help="Backbone file from `medhash pretrain` (C2L) for both branches.")
@progress_option()
@click.option("--strict", is_flag=True, help="Refuse a label table with problems (unknown labels, duplicate ids...).")
@json_option()
def train_cmd(labels, image_root, out, bits, backbone, global_size, local_size, load_size, tau, fusion_dim, fusion_inputs,
              epochs_global, epochs_local, epochs_hash, epochs_joint, batch_size, lr, optimizer,
              quantization_weight, bit_balance_weight, val_folds, precision, device, seed, work_dir, init, progress,
              strict, as_json):
    """Train the hashing model in AG-CNN stages (global, local, hash head, optional joint); resumable; torchrun-ready."""
    log.info("train: %d-bit %s model on %s -> %s (stages global %d, local %d, hash %d, joint %d epochs)", bits, backbone,
             labels, out, epochs_global, epochs_local, epochs_hash, epochs_joint)
    from medhash.model.config import ModelConfig
    from medhash.model.losses import LossWeights
    from medhash.train import TrainConfig, train

    model = ModelConfig(backbone=backbone, bits=bits, global_size=global_size, local_size=local_size or global_size,
                        tau=tau, fusion_dim=fusion_dim, fusion_inputs=tuple(s.strip() for s in fusion_inputs.split(",") if s.strip()))
    config = TrainConfig(labels=labels, out=out, model=model, image_root=image_root, load_size=load_size,
                         epochs_global=epochs_global, epochs_local=epochs_local, epochs_hash=epochs_hash,
                         epochs_joint=epochs_joint, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         losses=LossWeights(1.0, quantization_weight, bit_balance_weight), val_folds=int_list(val_folds),
                         precision=precision, device=device, seed=seed, work_dir=work_dir, init=init,
                         progress=progress, strict_labels=strict)
    result = train(config)
    if result.model_id:
        val = f"{result.val_map:.4f}" if result.val_map is not None else "n/a"
        emit(as_json, {"checkpoint": str(result.checkpoint), "model_id": result.model_id, "val_map": result.val_map,
                       "seconds": result.seconds, "skipped_images": len(result.skipped_images),
                       "epochs": {stage: len(records) for stage, records in result.history.items()},
                       "last_epoch": {stage: records[-1] for stage, records in result.history.items() if records}},
             f"wrote {result.checkpoint} (model_id {result.model_id}); validation tie-aware mAP {val}; "
             f"{result.seconds.get('total', 0):.0f} s; {len(result.skipped_images)} unreadable images skipped")


@click.command("evaluate", cls=MedhashCommand, renamed={"-k": "--cutoffs", "--json VALUE": "--json-out"})
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False), help="Checkpoint from `medhash train`.")
@click.option("--labels", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Label table of the images (queries and database, split by fold).")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False),
              help="Folder that relative image paths resolve against (default: the table's folder).")
@click.option("--query-folds", default="4", show_default=True, help="Folds used as queries; the rest is the database.")
@cutoffs_option()
@click.option("--boxes", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Reference box table(s) for the pointing game.")
@engine_option()
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@json_option()
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the report as JSON to this file.")
@click.option("--strict", is_flag=True, help="Refuse a label table with problems (unknown labels, duplicate ids...).")
def evaluate_cmd(model, labels, image_root, query_folds, cutoffs, boxes, engine, device, as_json, json_out, strict):
    """Retrieval mAP (tie-aware and stable order), mAP@k, P@k, R@k; pointing game on reference boxes."""
    log.info("evaluate: model %s on %s, query folds %s, cut-offs %s", model, labels, query_folds,
             ",".join(map(str, cutoffs)))
    from medhash.atomic import write_text_atomic
    from medhash.app.evaluate import EvaluateConfig, evaluate_model

    report = evaluate_model(EvaluateConfig(model=model, labels=labels, image_root=image_root, query_folds=int_list(query_folds),
                                           ks=cutoffs, boxes=tuple(boxes), device=device, engine=engine,
                                           strict_labels=strict))
    r, lines = report["retrieval"], []
    lines.append(f"model {report['model_id']} ({report['bits']} bits, engine {report['engine']}): "
               f"{report['n_queries']} queries x {report['n_database']} database images")
    lines.append(f"  mAP tie-aware {r['map_tie_aware']:.4f}   mAP stable order {r['map_stable']:.4f}")
    for k in cutoffs:
        key = str(k)  # the JSON report keys k as strings
        lines.append(f"  @{k}: mAP {r['map_at_k'][key]:.4f}  P {r['p_at_k'][key]:.4f}  R {r['r_at_k'][key]:.4f}  (tie-aware)")
    lines.append(f"  graded (tie-aware): weighted mAP {r['wmap']:.4f}  " + "  ".join(
        f"nDCG@{k} {r['ndcg_at_k'][str(k)]:.4f}  ACG@{k} {r['acg_at_k'][str(k)]:.3f}" for k in cutoffs))
    for name, loc in report.get("localization", {}).items():
        if loc["n_images"]:
            lines.append(f"  {name}: pointing game {loc['pointing_game']:.3f} on {loc['n_images']} images, crop IoU {loc['crop_box_best_iou']:.3f}")
    if report["failed_images"]:
        lines.append(f"  {len(report['failed_images'])} images could not be read (listed in the JSON report)")
    if json_out:
        write_text_atomic(Path(json_out), json.dumps(report, indent=2))
        lines.append(f"wrote {json_out}")
    emit(as_json, report, "\n".join(lines))


commands = [train_cmd, evaluate_cmd]
