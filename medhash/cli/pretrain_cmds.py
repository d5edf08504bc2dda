"""`medhash pretrain`: C2L self-supervised pretraining of the backbone; parse options, call medhash.train.pretrain."""

from __future__ import annotations

import logging

import click

from medhash.cli.options import BACKBONE_NAMES, MedhashCommand, emit, json_option, progress_option

log = logging.getLogger("medhash.cli")


@click.command("pretrain", cls=MedhashCommand)
@click.option("--images", required=True, type=click.Path(exists=True),
              help="Folder of radiographs (every readable image under it) or a label table (labels are ignored).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Backbone file to write (backbone.pt).")
@click.option("--backbone", default="densenet121", show_default=True, type=click.Choice(BACKBONE_NAMES),
              help="Backbone to pretrain (tiny: for tests).")
@click.option("--size", default=224, show_default=True, help="View side in pixels.")
@click.option("--load-size", default=256, show_default=True, help="Images are held at this side; views are cropped from it.")
@click.option("--epochs", default=120, show_default=True, help="Epochs over the images.")
@click.option("--batch-size", default=128, show_default=True, help="Per process; a multiple of --bn-splits.")
@click.option("--queue-size", default=16384, show_default=True, help="Negative keys (capped by the number of images).")
@click.option("--lr", default=0.03, show_default=True, help="Learning rate.")
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adamw"]), help="Optimizer.")
@click.option("--momentum", "key_momentum", default=0.999, show_default=True, help="Key encoder EMA momentum.")
@click.option("--temperature", default=0.07, show_default=True, help="Contrastive softmax temperature.")
@click.option("--mixup-alpha", default=1.0, show_default=True, help="Beta(a, a) mixup; 0 turns mixup off (plain MoCo).")
@click.option("--bn-splits", default=4, show_default=True, help="BN sub-batches (single-device ShuffleBN); 1 = plain BN.")
@click.option("--hflip/--no-hflip", default=True, show_default=True, help="Random horizontal flips of the views.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="auto: bf16 where the CPU has bf16 units and on GPUs, else fp32.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, help="Seed of every random draw.")
@click.option("--state", default=None, type=click.Path(dir_okay=False), help="Resumable state file (default: OUT.state.pt).")
@progress_option()
@json_option()
def pretrain_cmd(images, out, backbone, size, load_size, epochs, batch_size, queue_size, lr, optimizer, key_momentum,
                 temperature, mixup_alpha, bn_splits, hflip, precision, device, seed, state, progress, as_json):
    """C2L self-supervised pretraining of the backbone on unlabeled radiographs; resumable; torchrun-ready."""
    log.info("pretrain: C2L %s backbone on %s for %d epochs -> %s", backbone, images, epochs, out)
    from medhash.model.c2l import C2LConfig
    from medhash.train.augment import PretrainAugment
    from medhash.train.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(images=images, out=out, backbone=backbone, size=size, load_size=load_size, epochs=epochs,
                            batch_size=batch_size, lr=lr, optimizer=optimizer,
                            c2l=C2LConfig(queue_size=queue_size, momentum=key_momentum, temperature=temperature,
                                          mixup_alpha=mixup_alpha, bn_splits=bn_splits),
                            augment=PretrainAugment(hflip=hflip), precision=precision, device=device, seed=seed,
                            state=state, progress=progress)
    result = pretrain(config)
    if result.backbone_id:
        loss = f"{result.history[-1]['loss']:.4f}" if result.history else "n/a"
        emit(as_json, {"backbone": str(result.backbone), "backbone_id": result.backbone_id, "arch": result.arch,
                       "n_images": result.n_images, "epochs": len(result.history),
                       "final_loss": result.history[-1]["loss"] if result.history else None,
                       "seconds": result.seconds, "skipped_images": len(result.skipped_images)},
             f"wrote {result.backbone} ({result.arch}, id {result.backbone_id}); {result.n_images} images, "
                   f"{len(result.history)} epochs, final loss {loss}; {result.seconds.get('total', 0):.0f} s; "
             f"{len(result.skipped_images)} unreadable images skipped")


commands = [pretrain_cmd]
