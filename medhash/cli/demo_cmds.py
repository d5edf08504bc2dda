"""`medhash demo`: run the whole chain on synthetic phantoms (what `make demo` calls)."""

from __future__ import annotations

import logging

import click

from medhash.cli.options import HashBits, MedhashCommand

log = logging.getLogger("medhash.cli")


@click.command("demo", cls=MedhashCommand)
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False), help="Folder for every artefact.")
@click.option("--n", "n_phantoms", default=600, show_default=True, type=click.IntRange(min=10), help="Number of phantom radiographs.")
@click.option("--size", "image_size", default=128, show_default=True, type=click.IntRange(min=32), help="Phantom side in pixels.")
@click.option("--bits", default=32, show_default=True, type=HashBits(), help="Hash length of the demo model.")
@click.option("--seed", default=0, show_default=True, help="Seed of the phantoms and of training.")
@click.option("--epochs", "epoch_scale", default=1.0, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction of the demo's training epochs (global 10, local 6, hash 40) to run; 0 for a smoke run.")
@click.option("--requests", default=96, show_default=True, type=click.IntRange(min=1),
              help="Benchmark requests per concurrency level.")
def demo_cmd(out, n_phantoms, image_size, bits, seed, epoch_scale, requests):
    """The whole chain on synthetic phantoms, offline, in a few minutes on a laptop.

    \b
    1. generate N phantom radiographs with labels and lesion boxes (OUT/phantoms)
    2. train a small tiny-backbone model (global -> saliency crop -> local -> hash head)
    3. evaluate it: tie-aware mAP, P@10, pointing game on the phantom boxes
    4. encode every phantom with the Dask pipeline (OUT/codes)
    5. build a flat FAISS index (OUT/index)
    6. query it with three images, saliency overlays in OUT/overlays
    7. serve it on 127.0.0.1 for a moment and benchmark it over HTTP (OUT/bench)
    Writes OUT/report.html (opens offline) and OUT/summary.json; prints mAP and latency."""
    log.info("demo: %d phantoms of %d px, %d-bit model, everything in %s", n_phantoms, image_size, bits, out)
    from medhash.app.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=out, n_phantoms=n_phantoms, image_size=image_size, bits=bits, seed=seed,
                        epoch_scale=epoch_scale, bench_requests=requests), echo=click.echo)


commands = [demo_cmd]
