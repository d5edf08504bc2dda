"""Data commands: `medhash phantoms` writes a synthetic chest-radiograph dataset."""

from __future__ import annotations

from pathlib import Path

import click

from medhash.cli.options import MedhashCommand


def _parse_probs(values: tuple[str, ...]) -> dict[str, float]:
    probs = {}
    for item in values:
        name, sep, value = item.partition("=")
        try:
            probs[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"expected NAME=PROBABILITY, got {item!r}", param_hint="--prob")
    return probs


@click.command("phantoms", cls=MedhashCommand)
@click.option("--n", "n", type=click.IntRange(min=0), default=500, show_default=True, help="Number of images.")
@click.option("--size", type=click.IntRange(min=32), default=256, show_default=True, help="Image side in pixels.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write: images/, labels.csv, boxes.csv.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generator (same seed, same images).")
@click.option("--folds", type=click.IntRange(min=1), default=5, show_default=True, help="dev_fold count (by patient).")
@click.option("--max-findings", type=click.IntRange(min=0), default=3, show_default=True,
              help="Most findings one phantom carries.")
@click.option("--noise", type=click.FloatRange(min=0), default=0.02, show_default=True, help="Pixel noise std.")
@click.option(
    "--prob",
    "probs",
    multiple=True,
    metavar="NAME=P",
    help="Override one finding's probability, e.g. --prob Nodule=0.3 (repeatable).",
)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Processes.")
def phantoms_cmd(n, size, out_dir, seed, folds, max_findings, noise, probs, workers) -> None:
    """Write N synthetic chest radiographs with finding labels and boxes to OUT."""
    from medhash.data.phantoms import DEFAULT_FINDING_PROBS, PhantomConfig, phantom_label_counts, write_phantom_dataset

    finding_probs = {**DEFAULT_FINDING_PROBS, **_parse_probs(probs)}
    try:
        config = PhantomConfig(
            size=size, seed=seed, finding_probs=finding_probs, max_findings=max_findings, noise=noise
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    out = write_phantom_dataset(out_dir, n, config, folds=folds, workers=workers)
    counts = phantom_label_counts(out)
    summary = ", ".join(f"{name}={count}" for name, count in counts.items())
    click.echo(f"wrote {n} phantoms ({size} px, seed {seed}) to {out}: {summary}")


commands = [phantoms_cmd]
