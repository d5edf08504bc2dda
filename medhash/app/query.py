"""query_images: decode images, encode them with the model, search the index, optionally draw overlays.

A workflow above the index: it combines decoding (data), the encoder (model) and the index, which
know nothing of each other. It uses only the ImageEncoder contract (model_id, bits, encode_images ->
codes, boxes, saliency) and refuses a model whose model_id differs from the index's (check_model,
which the server calls too): codes of another model live in another Hamming space, and their
distances would be meaningless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from medhash.data.decode import read_image
from medhash.data.overlay import render_overlay, safe_name, save_png
from medhash.encoding import ImageEncoder
from medhash.errors import ImageDecodeError, IndexManifestError
from medhash.index import Filter, HammingIndex, IdRecord
from medhash.model import load_encoder

__all__ = ["QueryHit", "QueryResult", "check_model", "query_images"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryHit:
    rank: int  # 1-based
    image_id: str
    distance: int
    labels: tuple[str, ...]
    path: str
    box: tuple[int, int, int, int] | None
    row: int
    score: float | None = None  # re-ranked searches: cosine of the hash values (None after the shortlist)


@dataclass
class QueryResult:
    image: str  # the query image as given
    box: tuple[int, int, int, int] | None = None  # the encoder's crop box, in the query's pixels
    code_hex: str | None = None
    hits: list[QueryHit] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)  # written PNG paths
    error: str | None = None  # set when this image could not be decoded; the others still run
    strategy: str | None = None  # how a filtered search was answered (None: unfiltered)
    selected: int | None = None  # items the filter let through


def check_model(index: HammingIndex, encoder: ImageEncoder) -> None:
    """Raise IndexManifestError unless the encoder is the model the index was built with."""
    if encoder.model_id != index.model_id or encoder.bits != index.bits:
        raise IndexManifestError(index.index_dir, f"model {encoder.model_id!r} ({encoder.bits} bits) is not the model "
                                 f"this index was built with: {index.model_id!r} ({index.bits} bits)")


def query_images(index_dir: str | Path, model_path: str | Path | None, image_paths: Sequence[str | Path],
                 k: int = 10, with_ties: bool = False, overlay_dir: str | Path | None = None, *,
                 device: str = "cpu", mmap: bool = False, nprobe: int | None = None, ef_search: int | None = None,
                 image_root: str | Path | None = None, index: HammingIndex | None = None,
                 encoder: ImageEncoder | None = None, filter: str | dict | Filter | None = None,
                 rerank: int | None = None) -> list[QueryResult]:
    """One QueryResult per image, in order. An open `index` / loaded `encoder` may be passed to reuse them;
    `image_root` resolves relative hit paths of ids.parquet for overlays; `filter` restricts the hits
    (medhash.index.filters); `rerank` re-ranks each image's Hamming top-N (among the filtered items
    under a filter) by its hash values (HammingIndex.search)."""
    index = index or HammingIndex(index_dir, mmap=mmap)
    if encoder is None:
        encoder = load_encoder(model_path, device=device)
    check_model(index, encoder)
    if rerank is not None:
        index.check_rerank(rerank)  # before decoding and encoding anything

    results = [QueryResult(image=str(p)) for p in image_paths]
    decoded: list[tuple[int, np.ndarray]] = []
    for i, path in enumerate(image_paths):
        try:
            decoded.append((i, read_image(path)))
        except (ImageDecodeError, OSError) as exc:
            results[i].error = str(exc)
            log.warning("query image skipped: %s", exc)
    if not decoded:
        return results
    encoded = encoder.encode_images([img for _, img in decoded])
    found = index.search(encoded.codes, k, with_ties=with_ties, nprobe=nprobe, ef_search=ef_search, filter=filter,
                         rerank=rerank, query_values=encoded.hash_values if rerank is not None else None)
    for j, (i, image) in enumerate(decoded):
        result = results[i]
        result.strategy, result.selected = found.strategy, found.selected
        result.box = tuple(int(v) for v in encoded.boxes[j])
        result.code_hex = encoded.codes[j].tobytes().hex()
        records = index.records(found[j].rows)
        scores = found[j].scores if found[j].scores is not None else np.full(len(records), np.nan)
        result.hits = [QueryHit(rank, rec.image_id, int(dist), rec.labels, rec.path, rec.box, rec.row,
                                None if np.isnan(score) else round(float(score), 6))
                       for rank, (rec, dist, score) in enumerate(zip(records, found[j].distances, scores), start=1)]
        if overlay_dir is not None:
            result.overlays = _write_overlays(Path(overlay_dir), j, result, image, encoded.saliency[j], records,
                                              image_root)
    return results


def _write_overlays(out: Path, number: int, result: QueryResult, image: np.ndarray, saliency: np.ndarray,
                    records: list[IdRecord], image_root: str | Path | None) -> list[str]:
    stem = f"q{number:02d}-{safe_name(Path(result.image).stem)}"
    written = [str(save_png(render_overlay(image, result.box, saliency), out / f"{stem}-query.png"))]
    for hit, rec in zip(result.hits, records):
        path = Path(rec.path)
        if not path.is_absolute() and image_root is not None:
            path = Path(image_root) / path
        if not path.exists():
            log.info("overlay of hit %s skipped: image %s not found", rec.image_id, path)
            continue
        try:
            hit_image = read_image(path)
        except ImageDecodeError as exc:
            log.warning("overlay of hit %s skipped: %s", rec.image_id, exc)
            continue
        # Hits store no saliency (only their box), so only the box is drawn on them.
        name = out / f"{stem}-hit{hit.rank:03d}-{safe_name(rec.image_id)}.png"
        written.append(str(save_png(render_overlay(hit_image, rec.box), name)))
    return written
