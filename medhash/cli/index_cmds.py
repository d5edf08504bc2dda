"""`medhash index build|add|remove|info`: parse options, call medhash.index."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from medhash.cli.options import MedhashCommand, emit, json_option
from medhash.errors import shorten

log = logging.getLogger("medhash.cli")

# The names of medhash.index.kinds.KINDS, listed here so `--help` does not import pyarrow/faiss
# (tests/test_index.py checks that the two lists agree).
KIND_NAMES = ("flat", "multihash", "ivf", "hnsw")


def _parse_params(items: tuple[str, ...]) -> dict:
    """("nlist=64", "budget=0.5") -> {"nlist": 64, "budget": 0.5}; values that are not numbers stay text, for
    the index kind to refuse by name (medhash.index.params)."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {shorten(item)!r}", param_hint="--param")
        params[key.strip()] = _number(value.strip())
    return params


def _number(text: str) -> int | float | str:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:  # also int() of more than 4300 digits
            pass
    return text


def _read_id_file(path: Path) -> list[str]:
    data = path.read_bytes()
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{path} is not a text file of image ids (UTF-8, one per line): "
                                 f"{exc.reason} at byte {exc.start}", param_hint="--ids") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@click.group("index")
def index_group() -> None:
    """Build and maintain FAISS binary indexes of hash codes (a folder: index.faiss, ids.parquet, manifest.json)."""


@index_group.command("build", cls=MedhashCommand, renamed={"--threads": "--faiss-threads"})
@click.option("--codes", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of part-NNNNN.parquet code shards.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Index folder to write.")
@click.option("--kind", type=click.Choice(KIND_NAMES), default="flat", show_default=True,
              help="flat/multihash: exact; ivf/hnsw: approximate.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Override a parameter chosen from the size, e.g. --param nlist=4096 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace an existing index in OUT.")
@click.option("--gpu", is_flag=True, help="Train the IVF quantizer on the GPU (needs faiss-gpu and a GPU).")
@click.option("--faiss-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="FAISS OpenMP threads while building (more only helps on an otherwise idle machine).")
@click.option("--target-recall", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="ivf/hnsw: pick the cheapest nprobe / ef_search whose recall@k, measured on a sample of the "
                   "archive's own codes, reaches this (0: keep the size-derived defaults, measure nothing).")
@click.option("--recall-k", type=click.IntRange(min=1), default=100, show_default=True,
              help="The k of the recall target.")
@click.option("--tune-queries", type=click.IntRange(min=1), default=500, show_default=True,
              help="Archive codes drawn as autotuning queries.")
@json_option()
def build_cmd(codes, out, kind, params, overwrite, gpu, faiss_threads, target_recall, recall_k, tune_queries,
              as_json) -> None:
    """Build an index from Parquet code shards (streamed batch by batch)."""
    log.info("index build: %s index of the codes in %s -> %s", kind, codes, out)
    from dataclasses import asdict

    from medhash.index import BuildConfig, TuneConfig, build_index

    tune = TuneConfig(target_recall=target_recall or None, k=recall_k, queries=tune_queries)
    manifest = build_index(codes, out, BuildConfig(kind=kind, params=_parse_params(params), overwrite=overwrite,
                                                   gpu=gpu, threads=faiss_threads, tune=tune))
    emit(as_json, asdict(manifest),
          f"built {manifest.kind} index of {manifest.count} codes ({manifest.bits} bits, model {manifest.model_id}) "
          f"in {out}; params {manifest.params}; skipped rows {manifest.skipped_rows}"
          + (f"\n{_tuning_line(manifest.tuning)}" if manifest.tuning else ""))


def _tuning_line(tuning: dict) -> str:
    if not tuning:
        return "not tuned"
    setting = f"{tuning['knob']}={tuning['value']} ({tuning['chosen_by']})" if tuning.get("knob") else tuning["chosen_by"]
    return (f"{setting}: recall@{tuning['k']} {tuning['recall']} on {tuning['queries']} archive queries "
            f"(target {tuning['target_recall']}), ~{tuning['latency_ms_per_query']} ms/query in a 1-thread batch, "
            f"index file {tuning.get('memory_bytes', {}).get('index_file', '?')} bytes")


@index_group.command("add", cls=MedhashCommand)
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Index folder to update.")
@click.option("--codes", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of part-NNNNN.parquet code shards of the same model.")
@click.option("--replace", is_flag=True, help="Image ids already indexed get their rows replaced (else: refused).")
@json_option()
def add_cmd(index_dir, codes, replace, as_json) -> None:
    """Add new code shards to an index (same model_id and bit length only)."""
    from dataclasses import asdict

    from medhash.index import add_codes

    report = add_codes(index_dir, codes, replace=replace)
    emit(as_json, asdict(report), f"added {report.added} (replaced {len(report.replaced)}, skipped rows "
          f"{report.skipped_rows}); index now holds {report.count}")


@index_group.command("remove", cls=MedhashCommand)
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Index folder to update.")
@click.option("--ids", "ids_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file, one image id per line ('#' comments and blank lines ignored).")
@json_option()
def remove_cmd(index_dir, ids_file, as_json) -> None:
    """Remove image ids from an index."""
    from dataclasses import asdict

    from medhash.index import remove_images

    report = remove_images(index_dir, _read_id_file(ids_file))
    emit(as_json, asdict(report), f"removed {report.removed}; {len(report.missing)} id(s) were not indexed; "
          f"index now holds {report.count}")


@index_group.command("info", cls=MedhashCommand)
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Index folder.")
@click.option("--no-verify", is_flag=True, help="Skip recomputing the sha256 checksums.")
@json_option()
def info_cmd(index_dir, no_verify, as_json) -> None:
    """Show an index's manifest (model, bits, kind, parameters, count, files) after checking its checksums."""
    from medhash.index import index_info

    info = index_info(index_dir, verify=not no_verify)
    lines = [f"{key}: {info[key]}" for key in ("kind", "model_id", "bits", "count", "params", "file_bytes",
                                                "created_at", "updated_at", "faiss_version", "medhash_version",
                                                "checksums_verified")]
    lines.append(f"tuning: {_tuning_line(info.get('tuning') or {})}")
    emit(as_json, info, "\n".join(lines))


commands = [index_group]
