"""`medhash encode`: parse options, call medhash.pipeline.run_encode.

Exit status: 0 when every planned input was encoded (files skipped by rule are not failures),
`EXIT_SOME_FAILED` (3) when the job finished but some inputs failed (listed in the codes folder's
`_errors/`), 1 for an error that stopped the job.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import click

from medhash.cli.options import SECRET_ENV, MedhashCommand, emit, engine_option, json_option, patient_secret, progress_option

log = logging.getLogger("medhash.cli")

EXIT_SOME_FAILED = 3
def _columns(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(c.strip() for c in text.split(",") if c.strip())


@click.command("encode", cls=MedhashCommand)
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False), help="Checkpoint from `medhash train`.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (part-NNNNN.parquet, _manifest.json).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="Label table whose labels are carried into the output.")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False), help="Where the label table's relative paths resolve.")
@click.option("--columns", help="Label-table columns to store, comma-separated, e.g. view,age,sex,patient_id "
              "[default: those of view,age,sex the table has]. patient_id needs --patient-key-secret-file and "
              "is stored only as patient_key, a keyed hash.")
@click.option("--no-dicom-meta", is_flag=True, help="Do not store the non-identifying DICOM attributes (modality, view, sex, age...).")
@click.option("--patient-key-secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=f"Site secret: store patient_key = HMAC-SHA256(patient id) [default: ${SECRET_ENV} if set]. Never stored.")
@click.option("--id-from", type=click.Choice(["path", "sop-uid"]), default="path", show_default=True,
              help="Image ids: path relative to the input root (or the label table's id), or the DICOM SOPInstanceUID.")
@click.option("--follow-symlinks", is_flag=True, help="Also take links to files and folders outside the input root.")
@click.option("--strict", is_flag=True, help="Refuse a label table with problems (default: warn).")
@click.option("--shard-size", default=256, show_default=True, type=click.IntRange(min=1), help="Images per shard (one Dask task, one Parquet file).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="LocalCluster worker processes [default: cores/4 but at least 2 (at most cores), or one per GPU]; ignored with --scheduler.")
@click.option("--threads-per-worker", default=1, show_default=True, type=click.IntRange(min=1), help="Dask task slots per worker.")
@click.option("--torch-threads", type=click.IntRange(min=1), default=None, help="Torch threads per task [default: host cores / task slots].")
@click.option("--scheduler", help="tcp://HOST:PORT of a running Dask scheduler (no LocalCluster is started).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where the model runs (cuda: one worker per GPU).")
@engine_option()
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--decode-threads", default=2, show_default=True, type=click.IntRange(min=1), help="Decoding threads per task.")
@click.option("--store-features", is_flag=True, help="Also store the fused float features (float16).")
@click.option("--store-hash-values", is_flag=True,
              help="Also store the hash layer's continuous values (float16), which `--rerank` needs.")
@click.option("--overwrite", is_flag=True, help="Delete this folder's earlier outputs and start afresh.")
@click.option("--bytes-column", help="Parquet inputs: the column with image bytes [default: detected].")
@click.option("--id-column", help="Parquet inputs: the column with image ids [default: image_id/id/key if present].")
@progress_option("bar")
@json_option()
def encode_cmd(inputs, model, out, labels, image_root, columns, no_dicom_meta, patient_key_secret_file, id_from,
               follow_symlinks, strict, shard_size, workers, threads_per_worker, torch_threads, scheduler, device, engine,
               batch_size, decode_threads, store_features, store_hash_values, overwrite, bytes_column, id_column, progress, as_json):
    """Encode INPUT... (folders, globs, path lists, .tar shards, .parquet tables) into sharded Parquet codes; resumable.

    Exits 3 when some inputs failed (the rest is encoded; see the folder's _errors/)."""
    log.info("encode: %d input(s) into %s with model %s (starting the Dask workers)", len(inputs), out, model)
    from medhash.pipeline import EncodeJobConfig, run_encode

    config = EncodeJobConfig(model=model, out=out, inputs=tuple(inputs), labels=labels, image_root=image_root,
                             shard_size=shard_size, workers=workers, threads_per_worker=threads_per_worker,
                             torch_threads=torch_threads, scheduler=scheduler, device=device, engine=engine,
                             batch_size=batch_size, decode_threads=decode_threads, store_features=store_features,
                             store_hash_values=store_hash_values, overwrite=overwrite, bytes_column=bytes_column, id_column=id_column, id_from=id_from,
                             follow_symlinks=follow_symlinks, columns=_columns(columns), dicom_meta=not no_dicom_meta,
                             patient_secret=patient_secret(patient_key_secret_file), strict_labels=strict,
                             progress=progress)
    summary = run_encode(config)
    failed = ", ".join(f"{k} {n}" for k, n in summary.failed_by_kind.items())
    skipped = ", ".join(f"{k} {n}" for k, n in summary.skipped_by_reason.items())
    speed = f"{summary.images_per_s:.1f} images/s" if summary.shards_run else "nothing left to encode"
    text = (f"{summary.found} files found: {summary.encoded} encoded, {summary.failed} failed{f' ({failed})' if failed else ''}, "
               f"{summary.skipped} skipped{f' ({skipped})' if skipped else ''}; "
               f"{summary.shards} shards ({summary.shards_skipped} already done, {summary.shards_run} run); "
               f"model {summary.model_id}, {summary.bits} bits, engine {summary.engine}; {speed}; {summary.seconds:.0f} s\n"
            f"wrote {summary.manifest}")
    emit(as_json, {**asdict(summary), "exit_status": EXIT_SOME_FAILED if summary.failed else 0}, text)
    if summary.failed:
        click.echo(f"{summary.failed} input(s) failed: see {Path(summary.out_dir) / '_errors'} "
                   f"(exit status {EXIT_SOME_FAILED})", err=True)
        raise SystemExit(EXIT_SOME_FAILED)


commands = [encode_cmd]
