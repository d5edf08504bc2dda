"""`medhash encode`: parse options, call medhash.pipeline.run_encode."""

from __future__ import annotations

import click

from medhash.cli.options import engine_option


@click.command("encode")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False), help="Checkpoint from `medhash train`.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (part-NNNNN.parquet, _manifest.json).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="Label table whose labels are carried into the output.")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False), help="Where the label table's relative paths resolve.")
@click.option("--shard-size", default=256, show_default=True, help="Images per shard (one Dask task, one Parquet file).")
@click.option("--workers", type=int, default=None, help="LocalCluster worker processes [default: cores/4 but at least 2 (at most cores), or one per GPU]; ignored with --scheduler.")
@click.option("--threads-per-worker", default=1, show_default=True, help="Dask task slots per worker.")
@click.option("--torch-threads", type=int, default=None, help="Torch threads per task [default: host cores / task slots].")
@click.option("--scheduler", help="tcp://HOST:PORT of a running Dask scheduler (no LocalCluster is started).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@engine_option()
@click.option("--batch-size", default=32, show_default=True)
@click.option("--decode-threads", default=2, show_default=True, help="Decoding threads per task.")
@click.option("--store-features", is_flag=True, help="Also store the fused float features (float16).")
@click.option("--overwrite", is_flag=True, help="Delete this folder's earlier outputs and start afresh.")
@click.option("--bytes-column", help="Parquet inputs: the column with image bytes [default: detected].")
@click.option("--id-column", help="Parquet inputs: the column with image ids [default: image_id/id/key if present].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def encode_cmd(inputs, model, out, labels, image_root, shard_size, workers, threads_per_worker, torch_threads, scheduler,
               device, engine, batch_size, decode_threads, store_features, overwrite, bytes_column, id_column, no_progress):
    """Encode INPUT... (folders, globs, path lists, .tar shards, .parquet tables) into sharded Parquet codes; resumable."""
    from medhash.pipeline import EncodeJobConfig, run_encode

    config = EncodeJobConfig(model=model, out=out, inputs=tuple(inputs), labels=labels, image_root=image_root,
                             shard_size=shard_size, workers=workers, threads_per_worker=threads_per_worker,
                             torch_threads=torch_threads, scheduler=scheduler, device=device, engine=engine,
                             batch_size=batch_size, decode_threads=decode_threads, store_features=store_features,
                             overwrite=overwrite, bytes_column=bytes_column, id_column=id_column,
                             progress=not no_progress)
    summary = run_encode(config)
    kinds = ", ".join(f"{k} {n}" for k, n in summary.failed_by_kind.items())
    speed = f"{summary.images_per_s:.1f} images/s" if summary.shards_run else "nothing left to encode"
    click.echo(f"{summary.inputs} inputs: {summary.encoded} encoded, {summary.failed} failed{f' ({kinds})' if kinds else ''}; "
               f"{summary.shards} shards ({summary.shards_skipped} already done, {summary.shards_run} run); "
               f"model {summary.model_id}, {summary.bits} bits, engine {summary.engine}; {speed}; {summary.seconds:.0f} s")
    click.echo(f"wrote {summary.manifest}")


commands = [encode_cmd]
