"""`medhash query`: encode images with the model, search an index, print hits (table or JSON)."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from pathlib import Path

import click

from medhash.cli.options import MedhashCommand, emit, json_option, patient_secret

log = logging.getLogger("medhash.cli")

FILTER_HELP = ("Only hits this filter lets through, e.g. 'labels_any=Effusion,Mass;sex=F;age=60..;view=PA;"
               "not_patient=IMAGE_ID' or the same as JSON (README: Filtered search).")


def parse_filter_option(secret_file: Path | None, text: str | None):
    """The --filter text as a Filter; a bad one is a one-line usage error naming the bad part."""
    from medhash.index.filters import FilterError, parse_filter

    try:
        return parse_filter(text, patient_secret=patient_secret(secret_file))
    except FilterError as exc:
        raise click.BadParameter(str(exc), param_hint="--filter") from None


def _table(results) -> str:
    lines = []
    for result in results:
        lines.append(f"== {result.image}" + (f"  (box {result.box})" if result.box else ""))
        if result.error:
            lines.append(f"   error: {result.error}")
            continue
        if result.strategy:
            lines.append(f"   filter: {result.selected} item(s) pass, answered by {result.strategy}")
        scored = any(hit.score is not None for hit in result.hits)
        lines.append(f"   {'rank':>4}  {'distance':>8}  " + (f"{'cosine':>7}  " if scored else "") + f"{'image id':<28} labels")
        for hit in result.hits:
            cosine = (f"{hit.score:>7.4f}  " if hit.score is not None else f"{'-':>7}  ") if scored else ""
            lines.append(f"   {hit.rank:>4}  {hit.distance:>8}  {cosine}{hit.image_id:<28} {'|'.join(hit.labels) or '-'}")
        if result.overlays:
            lines.append(f"   overlays: {len(result.overlays)} PNG(s) in {Path(result.overlays[0]).parent}")
    return "\n".join(lines)


@click.command("query", cls=MedhashCommand)
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Index folder from `medhash index build`.")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checkpoint whose model_id matches the index.")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits per query image.")
@click.option("--with-ties", is_flag=True, help="Also return every item at the k-th distance.")
@json_option()
@click.option("--overlay", "overlay_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write PNGs of each query (saliency + box) and its hits (box).")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder that relative hit paths resolve against (for overlays).")
@click.option("--mmap", is_flag=True, help="Memory-map the index where its kind allows.")
@click.option("--device", default="cpu", show_default=True, help="Torch device of the model.")
@click.option("--nprobe", type=click.IntRange(1, 65_536), default=None, help="IVF lists to visit (default: the index's).")
@click.option("--ef-search", type=click.IntRange(1, 65_536), default=None, help="HNSW candidate list (default: the index's).")
@click.option("--rerank", type=click.IntRange(min=1), default=None, metavar="N",
              help="Re-rank the Hamming top N (ties included; the filtered top N under --filter) by cosine of the hash "
                   "values; needs an index of codes encoded with --store-hash-values.")
@click.option("--filter", "filter_text", default=None, help=FILTER_HELP)
@click.option("--patient-key-secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Site secret for not_patient_id (else MEDHASH_PATIENT_KEY_SECRET).")
def query_cmd(index_dir, model_path, images, k, with_ties, as_json, overlay_dir, image_root, mmap, device, nprobe,
              ef_search, rerank, filter_text, patient_key_secret_file) -> None:
    """Find the archived cases closest to each IMAGE (Hamming distance of hash codes)."""
    log.info("query: %d image(s) against %s, k %d", len(images), index_dir, k)
    from medhash.app.query import query_images

    flt = parse_filter_option(patient_key_secret_file, filter_text)
    results = query_images(index_dir, model_path, list(images), k, with_ties, overlay_dir, device=device, mmap=mmap,
                           nprobe=nprobe, ef_search=ef_search, image_root=image_root, filter=flt, rerank=rerank)
    emit(as_json, {"index": str(index_dir), "k": k, "with_ties": with_ties, "rerank": rerank,
                   "results": [asdict(r) for r in results]},
         _table(results))
    failed = [r for r in results if r.error]
    if failed:
        click.echo(f"{len(failed)} of {len(results)} image(s) could not be queried", err=True)
        sys.exit(1)


commands = [query_cmd]
