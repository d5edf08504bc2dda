"""The public Python API, for notebooks and scripts: `load_model`, `open_index`, and what they return.

    model = medhash.load_model("model.pt")
    codes = model.encode(["a.png", "b.dcm"])           # paths, numpy arrays, PIL images or tensors
    index = medhash.open_index("idx/", model=model)
    index.search("query.png", k=5).to_pandas()        # or .rows() without pandas

Design: thin wrappers over the library's own parts (HashEncoder.encode_images, HammingIndex.search,
read_image), adding only what interactive use needs: every image type accepted, one image or many,
results as rows with the archive's labels and paths, and reprs that say what an object is. The
package top (`medhash/__init__.py`) exports these names lazily, so `import medhash` loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medhash.app.query import check_model
from medhash.data import read_image
from medhash.encoding import EncodeResult
from medhash.errors import InvalidParameterError
from medhash.index import HammingIndex
from medhash.model.encoder import HashEncoder

__all__ = ["Encoder", "Index", "SearchResults", "load_model", "open_index", "to_gray"]

_SINGLE_TYPES = (str, Path)


def to_gray(image: Any) -> np.ndarray:
    """One image -> float32 [H, W] in [0, 1]: a path (PNG, JPEG, TIFF, DICOM), a numpy array ([H, W], or
    [H, W, 3|4] colour; integers are scaled by their type's range), a PIL image, or a tensor ([H, W] or [1, H, W])."""
    if isinstance(image, _SINGLE_TYPES):
        return read_image(image)
    if type(image).__module__.startswith("PIL."):
        image = np.asarray(image.convert("I;16") if image.mode in ("I", "I;16", "I;16B") else image.convert("L"))
    if type(image).__module__.startswith("torch"):
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].mean(axis=-1).astype(array.dtype) if array.dtype.kind == "u" else array[..., :3].mean(axis=-1)
    if array.ndim != 2:
        raise InvalidParameterError(f"an image of shape {array.shape}: expected [H, W], [1, H, W] or [H, W, 3]")
    if array.dtype.kind in "ui":
        return (array.astype(np.float32) / np.iinfo(array.dtype).max).clip(0, 1)
    return np.ascontiguousarray(array, dtype=np.float32)


def _images(images: Any) -> tuple[list[np.ndarray], bool]:
    """(images as [H, W] float32 arrays, whether one image was given rather than a sequence)."""
    if isinstance(images, _SINGLE_TYPES) or type(images).__module__.startswith("PIL."):
        return [to_gray(images)], True
    if hasattr(images, "ndim") and not isinstance(images, (list, tuple)):
        colour = images.ndim == 3 and images.shape[-1] in (3, 4) and images.shape[0] not in (1,)
        if images.ndim == 2 or colour or (images.ndim == 3 and images.shape[0] == 1):
            return [to_gray(images)], True
        if images.ndim == 4:
            images = images[:, 0]  # [B, 1, H, W]
        return [to_gray(image) for image in images], False
    return [to_gray(image) for image in images], False


class Encoder:
    """A trained model: `encode` images of any kind (one or many) into packed hash codes, crop boxes,
    saliency maps and findings' logits (an EncodeResult)."""

    def __init__(self, encoder: HashEncoder):
        self.encoder = encoder

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", engine: str = "auto", batch_size: int = 32) -> "Encoder":
        return cls(HashEncoder.from_checkpoint(path, device, engine, batch_size))

    model_id = property(lambda self: self.encoder.model_id)
    bits = property(lambda self: self.encoder.bits)
    classes = property(lambda self: self.encoder.classes)
    engine = property(lambda self: self.encoder.engine)
    device = property(lambda self: self.encoder.device)
    input_size = property(lambda self: self.encoder.input_size)

    def encode(self, images: Any, with_features: bool = False) -> EncodeResult:
        """Paths, numpy arrays, PIL images or tensors; one image or a sequence (or a [B, 1, H, W] batch).
        Always returns batched arrays: `.codes` is uint8 [B, bits/8] even for one image."""
        arrays, _ = _images(images)
        return self.encoder.encode_images(arrays, with_features)

    def encode_images(self, images: Sequence[np.ndarray], with_features: bool = False) -> EncodeResult:
        return self.encoder.encode_images(images, with_features)  # the ImageEncoder protocol

    def __repr__(self) -> str:
        return (f"Encoder(model_id={self.model_id!r}, bits={self.bits}, engine={self.engine!r}, "
                f"device={str(self.device)!r}, classes={len(self.classes)})")


ROW_FIELDS = ("query", "rank", "image_id", "distance", "labels", "path", "box")


@dataclass
class SearchResults:
    """Hits of one or more queries as rows: query (its number), rank, image_id, distance, labels, path, box,
    and score (the cosine of the hash values; None after the shortlist) when the search was re-ranked."""

    queries: list[str]  # what each query was (a path, or "image 0", "code 0"...)
    hits: list[list[dict]]  # per query, its rows nearest first

    def rows(self) -> list[dict]:
        return [row for per_query in self.hits for row in per_query]

    def to_pandas(self):
        """The rows as a pandas DataFrame (pandas is optional: `pip install pandas`)."""
        import pandas as pd

        rows = self.rows()
        scored = any("score" in row for row in rows)
        return pd.DataFrame(rows, columns=list(ROW_FIELDS) + (["score"] if scored else []))

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> list[dict]:
        return self.hits[i]

    def __repr__(self) -> str:
        lines = [f"SearchResults({len(self.queries)} quer{'y' if len(self.queries) == 1 else 'ies'}, "
                 f"{sum(map(len, self.hits))} hits)"]
        for q, (name, rows) in enumerate(zip(self.queries, self.hits)):
            lines.append(f"  query {q}: {name}")
            for row in rows[:5]:
                lines.append(f"    {row['rank']:>3}  d={row['distance']:<3} {row['image_id']:<24} {'|'.join(row['labels']) or '-'}")
            if len(rows) > 5:
                lines.append(f"    ... {len(rows) - 5} more")
        return "\n".join(lines)


class Index:
    """An index folder opened for searching, with the model that encodes query images (optional when
    searching by code only)."""

    def __init__(self, index: HammingIndex, model: Encoder | None = None):
        if model is not None:
            check_model(index, model)
        self.index = index
        self.model = model

    def __len__(self) -> int:
        return len(self.index)

    def search(self, images: Any, k: int = 10, *, with_ties: bool = False, rerank: int | None = None,
               **params) -> SearchResults:
        """Search by image: paths, arrays, PIL images or tensors, one or many (needs `model`).

        rerank=N re-orders each image's Hamming top N (the filtered top N with `filter=`) by the cosine
        of the hash values (an index built with --store-hash-values); rows then carry `score`."""
        if self.model is None:
            raise InvalidParameterError("searching by image needs the model: open_index(path, model=...)")
        arrays, single = _images(images)
        names = [str(images)] if single and isinstance(images, _SINGLE_TYPES) else (
            [str(i) if isinstance(i, _SINGLE_TYPES) else f"image {n}" for n, i in enumerate(images)]
            if not single else ["image 0"])
        encoded = self.model.encode_images(arrays)
        if rerank is not None:
            params = {**params, "rerank": rerank, "query_values": encoded.hash_values}
        return self._results(names, encoded.codes, k, with_ties, params)

    def search_codes(self, codes: Any, k: int = 10, *, with_ties: bool = False, **params) -> SearchResults:
        """Search by code: uint8 [bits/8] or [B, bits/8], bytes, or hex strings (one or a list)."""
        codes = _codes(codes)
        return self._results([f"code {bytes(c).hex()}" for c in codes], codes, k, with_ties, params)

    def _results(self, names: list[str], codes: np.ndarray, k: int, with_ties: bool, params: dict) -> SearchResults:
        found = self.index.search(codes, k, with_ties=with_ties, **params)
        hits = []
        for q, result in enumerate(found):
            records = self.index.records(result.rows)
            rows = [{"query": q, "rank": rank, "image_id": rec.image_id, "distance": int(d),
                     "labels": list(rec.labels), "path": rec.path, "box": rec.box}
                    for rank, (rec, d) in enumerate(zip(records, result.distances), start=1)]
            if result.scores is not None:
                for row, score in zip(rows, result.scores):
                    row["score"] = None if np.isnan(score) else float(score)
            hits.append(rows)
        return SearchResults(names, hits)

    def __repr__(self) -> str:
        return f"Index({self.index!r}, model={'none' if self.model is None else self.model.model_id})"


def _codes(codes: Any) -> np.ndarray:
    if isinstance(codes, (str, bytes)):
        codes = [codes]
    if isinstance(codes, Iterable) and not isinstance(codes, np.ndarray):
        codes = [np.frombuffer(bytes.fromhex(c) if isinstance(c, str) else bytes(c), np.uint8) for c in codes]
    array = np.asarray(codes, dtype=np.uint8)
    return array[None] if array.ndim == 1 else array


def load_model(path: str | Path, device: str = "cpu", engine: str = "auto", batch_size: int = 32) -> Encoder:
    """A checkpoint from `medhash train`, ready to encode."""
    return Encoder.from_checkpoint(path, device, engine, batch_size)


def open_index(path: str | Path, model: Encoder | str | Path | None = None, *, mmap: bool = False) -> Index:
    """An index folder from `medhash index build`; `model` (an Encoder or a checkpoint path) to search by image."""
    if isinstance(model, (str, Path)):
        model = load_model(model)
    return Index(HammingIndex(path, mmap=mmap), model)
