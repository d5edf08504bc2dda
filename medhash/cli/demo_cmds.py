"""`medhash demo`: run the whole chain on synthetic phantoms (what `make demo` calls)."""

from __future__ import annotations

import click

from medhash.cli.options import HashBits


@click.command("demo")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False), help="Folder for every artefact.")
@click.option("--n", "n_phantoms", default=600, show_default=True, type=click.IntRange(min=10), help="Number of phantom radiographs.")
@click.option("--size", "image_size", default=128, show_default=True, type=click.IntRange(min=32), help="Phantom side in pixels.")
@click.option("--bits", default=32, show_default=True, type=HashBits())
@click.option("--seed", default=0, show_default=True)
def demo_cmd(out, n_phantoms, image_size, bits, seed):
    """Generate phantoms, train a small model, evaluate it; prints mAP and the pointing game."""
    from medhash.app.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=out, n_phantoms=n_phantoms, image_size=image_size, bits=bits, seed=seed), echo=click.echo)


commands = [demo_cmd]
