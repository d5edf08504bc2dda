"""SearchService: what the server does, without HTTP (the app and in-process `medhash bench` call it).

Decoding and searching run in worker threads, encoding in the EncodeBatcher's thread, so the event
loop only moves bytes. Every image the server reads comes through ArchiveFiles.

Every answer is bounded: at most max_k hits (ties included: a with_ties search is cut at max_k and says
`truncated`), and a decode is admitted only when the size its header declares fits the per-request
limit and the DecodeBudget shared by all requests.

The index is the
IndexReloader's current version (medhash.serve.reload): each request reads it once and keeps it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
import torch

from medhash import __version__
from medhash.app.query import check_model
from medhash.data.decode import DEFAULT_MAX_PIXELS, read_image, read_image_header
from medhash.data.keyed import read_secret_file
from medhash.data.overlay import render_overlay
from medhash.encoding import ImageEncoder
from medhash.errors import ArchiveAccessError, ImageDecodeError, InvalidParameterError, shorten
from medhash.index import Filter, FilterError, HammingIndex, IdRecord, SearchParams, parse_filter
from medhash.index.filters import FIELD_COLUMNS
from medhash.model import load_encoder
from medhash.serve.archive import ArchiveFiles
from medhash.serve.batcher import EncodeBatcher, EncodedImage
from medhash.serve.budget import DecodeBudget
from medhash.serve.config import ServeConfig
from medhash.serve.metrics import ServeMetrics
from medhash.serve.reload import IndexReloader
from medhash.serve.schemas import Hit, Info, Prediction, Query, ReloadResult, SearchResponse

log = logging.getLogger(__name__)

QUERY_OVERLAY_SIDE = 512


class BadQueryError(ValueError):
    """The request's query (code or parameters) is malformed: HTTP 422."""


def parse_code(text: str, bits: int) -> np.ndarray:
    """A code given as hex (bits/4 characters) or base64 -> uint8 [bits/8]."""
    text = text.strip()
    nbytes = bits // 8
    raw: bytes | None = None
    if len(text) == 2 * nbytes:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadQueryError(f"code is neither {2 * nbytes} hex digits nor base64 of {nbytes} bytes") from None
    if len(raw) != nbytes:
        raise BadQueryError(f"code has {len(raw)} bytes; this index holds {bits}-bit codes ({nbytes} bytes)")
    return np.frombuffer(raw, dtype=np.uint8)


class LruCache:
    """A bounded map, least recently used out first. Locked: the search threads and the event loop share it."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class SearchService:
    def __init__(self, index: HammingIndex, encoder: ImageEncoder, config: ServeConfig):
        check_model(index, encoder)
        self.encoder, self.config = encoder, config
        secret_file = config.patient_key_secret_file
        self.patient_secret = read_secret_file(secret_file) if secret_file else None
        self._reloader = IndexReloader(index, lambda: HammingIndex(index.index_dir, mmap=config.mmap),
                                       config.reload_poll_ms, self._swapped)
        self.archive = ArchiveFiles(config.archive_root)
        self.metrics = ServeMetrics()
        self.batcher = EncodeBatcher(encoder.encode_images, config.max_batch, self.metrics.observe_batch)
        # Read when /metrics is scraped, so they are never stale and cost nothing per request.
        self.metrics.index_size.set_function(lambda: len(self.index))
        self.metrics.encoder_queue.set_function(self.batcher.pending)
        # FAISS releases the GIL; two threads let a long scan not block short ones (its own OpenMP is 1 thread).
        self._search_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="medhash-search")
        self._io_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="medhash-io")
        self._thumbnails = LruCache(config.cache_items)
        self.decode_budget = DecodeBudget(config.decode_budget_bytes, config.decode_wait_s)

    @property
    def index(self) -> HammingIndex:
        """The index version being served (read it once per request)."""
        return self._reloader.index

    def _swapped(self, index: HammingIndex) -> None:
        check_model(index, self.encoder)  # a rebuild with another model is refused loudly in the log
        self._thumbnails.clear()

    def reload(self) -> ReloadResult:
        """Swap in the index folder's current version now, if it changed (POST /v1/reload)."""
        reloaded = self._reloader.reload()
        index = self.index
        return ReloadResult(reloaded=reloaded, generation=index.generation, count=len(index))

    @classmethod
    def open(cls, config: ServeConfig) -> "SearchService":
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        index = HammingIndex(config.index, mmap=config.mmap)
        encoder = load_encoder(config.model, device=config.device, engine=config.engine, batch_size=config.max_batch)
        return cls(index, encoder, config)

    def close(self) -> None:
        self._reloader.close()
        self.batcher.close()
        self._search_pool.shutdown(wait=False)
        self._io_pool.shutdown(wait=False)

    # -- facts ------------------------------------------------------------------------------------
    def info(self) -> Info:
        import faiss

        m = self.index.manifest
        return Info(model_id=m.model_id, bits=m.bits, kind=m.kind, count=len(self.index), index_created=m.created_at or None,
                    engine=self.encoder.engine, device=str(self.encoder.device), max_k=self.config.max_k,
                    max_upload_bytes=self.config.max_upload_bytes, thumbnails=self.archive.enabled,
                    medhash_version=__version__, faiss_version=getattr(faiss, "__version__", None),
                    hash_values=self.index.has_hash_values, generation=self.index.generation,
                    columns=self.index.columns())

    # -- search -----------------------------------------------------------------------------------
    def check_k(self, k: int | None) -> int:
        k = min(self.config.default_k, self.config.max_k) if k is None else k
        if not 1 <= k <= self.config.max_k:
            raise BadQueryError(f"k must be between 1 and {self.config.max_k}, got {k}")
        return k

    @contextlib.asynccontextmanager
    async def decoding(self, data: bytes, name: str) -> AsyncIterator[Callable[[], Awaitable[np.ndarray]]]:
        """Admit one decode of `data`: its header's size against the per-request limit (ImageDecodeError
        too_large), then its bytes from the shared budget (ServerBusyError when full too long), held for the
        block, which calls the yielded function to decode."""
        loop = asyncio.get_running_loop()
        name = shorten(name)  # the name is the client's; errors quote it
        try:
            header = await loop.run_in_executor(self._io_pool, lambda: read_image_header(data, name=name))
            if header.decode_bytes > self.config.max_decode_bytes:
                raise ImageDecodeError(name, "too_large", f"the header declares {header.width}x{header.height} pixels "
                                       f"x {header.frames} frame(s), about {header.decode_bytes >> 20} MB to decode; "
                                       f"this server decodes at most {self.config.max_decode_bytes >> 20} MB per image")
        except ImageDecodeError as exc:
            self.metrics.bad_images.labels(exc.kind).inc()
            raise
        async with self.decode_budget.reserve(header.decode_bytes):
            yield lambda: self._decode(data, name)

    async def _decode(self, data: bytes, name: str) -> np.ndarray:
        limit = self.config.max_pixels or DEFAULT_MAX_PIXELS
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._io_pool, lambda: read_image(data, name=name, max_pixels=limit))
        except ImageDecodeError as exc:
            self.metrics.bad_images.labels(exc.kind).inc()
            raise

    def check_rerank(self, rerank: int | None) -> None:
        """A 422 before any decoding when the served index cannot re-rank (or N is bad)."""
        if rerank is None:
            return
        try:
            self.index.check_rerank(rerank)
        except InvalidParameterError as exc:
            raise BadQueryError(str(exc)) from None

    def parse_filter(self, text: str | None) -> Filter:
        """The request's filter (compact or JSON text); a bad one is a 422 naming the bad part."""
        try:
            return parse_filter(text, patient_secret=self.patient_secret)
        except FilterError as exc:
            raise BadQueryError(str(exc)) from None

    def archived_id(self, name: str | None, query_image_id: str | None) -> str | None:
        """The query's own archived image id: the one named, else the upload's file name (or its stem) if indexed."""
        index = self.index
        if query_image_id:
            if index.row_of(query_image_id) is None:
                raise BadQueryError(f"query_image_id {query_image_id[:64]!r} is not in the index")
            return query_image_id
        for candidate in filter(None, (name, name.rsplit(".", 1)[0] if name and "." in name else None)):
            if index.row_of(candidate) is not None:
                return candidate
        return None

    def _patient_filter(self, flt: Filter, archived: str | None, exclude_query_patient: bool) -> Filter:
        """The filter plus not_patient=<the query's archived image> when asked to leave out the query's patient."""
        if not exclude_query_patient:
            return flt
        if archived is None:
            raise BadQueryError("exclude_query_patient: the query is not an archived image (name it with "
                                "query_image_id, or filter with not_patient_id)")
        return self.parse_filter_dict({**flt.to_json(), "not_patient": archived})

    def parse_filter_dict(self, spec: dict) -> Filter:
        try:
            return parse_filter(spec, patient_secret=self.patient_secret)
        except FilterError as exc:
            raise BadQueryError(str(exc)) from None

    async def search_image(self, data: bytes, name: str, k: int | None = None, with_ties: bool = False,
                           overlay: bool = False, params: SearchParams = SearchParams(),
                           filter: str | Filter | None = None, query_image_id: str | None = None,
                           exclude_query_patient: bool = False, rerank: int | None = None) -> SearchResponse:
        """Decode an uploaded image, encode it (batched with concurrent requests) and search; `rerank`
        re-ranks the (filtered) Hamming top-N by the hash values (HammingIndex.search)."""
        k = self.check_k(k)
        self.check_rerank(rerank)
        flt = filter if isinstance(filter, Filter) else self.parse_filter(filter)
        archived = self.archived_id(name, query_image_id)
        flt = self._patient_filter(flt, archived, exclude_query_patient)
        t0 = time.perf_counter()
        async with self.decoding(data, name) as decode:
            image = await decode()
            t1 = time.perf_counter()
            encoded = await self.batcher.encode(image)
            t2 = time.perf_counter()
            found, search_s = await self._search(encoded.code, k, with_ties, params, flt, archived,
                                                 (rerank, encoded.hash_values) if rerank is not None else None)
            query = Query(kind="image", code_hex=encoded.code.tobytes().hex(), box=encoded.box, width=int(image.shape[1]),
                          height=int(image.shape[0]), predicted=self._predictions(encoded), archived_image_id=archived)
            if overlay:
                query.overlay_png = await asyncio.get_running_loop().run_in_executor(
                    self._io_pool, self._query_overlay, image, encoded)
                query.image_png = await asyncio.get_running_loop().run_in_executor(
                    self._io_pool, self._query_overlay, image, None)
            del image
        timings = {"decode": t1 - t0, "encode": t2 - t1, "search": search_s, "total": time.perf_counter() - t0}
        self._observe("image", timings)
        return self._response(query, found, k, with_ties, timings, flt, rerank)

    async def search_code(self, code: str | np.ndarray, k: int | None = None, with_ties: bool = False,
                          params: SearchParams = SearchParams(), filter: str | Filter | None = None,
                          query_image_id: str | None = None, exclude_query_patient: bool = False,
                          rerank: int | None = None) -> SearchResponse:
        """Search with a code the client already has (hex or base64 text, or uint8 [bits/8])."""
        k = self.check_k(k)
        if rerank is not None:
            raise BadQueryError("rerank needs an image: a code carries no hash values to compare")
        flt = filter if isinstance(filter, Filter) else self.parse_filter(filter)
        archived = self.archived_id(None, query_image_id)
        flt = self._patient_filter(flt, archived, exclude_query_patient)
        t0 = time.perf_counter()
        code = parse_code(code, self.index.bits) if isinstance(code, str) else np.asarray(code, np.uint8)
        found, search_s = await self._search(code, k, with_ties, params, flt, archived)
        timings = {"search": search_s, "total": time.perf_counter() - t0}
        self._observe("code", timings)
        query = Query(kind="code", code_hex=code.tobytes().hex(), archived_image_id=archived)
        return self._response(query, found, k, with_ties, timings, flt)

    async def _search(self, code: np.ndarray, k: int, with_ties: bool, params: SearchParams, flt: Filter,
                      archived: str | None, rerank: tuple[int, np.ndarray] | None = None) -> tuple["_Found", float]:
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._search_pool, self._search_sync, code, k, with_ties, params, flt,
                                           archived, rerank)
        return found, time.perf_counter() - t0

    def _search_sync(self, code: np.ndarray, k: int, with_ties: bool, params: SearchParams, flt: Filter,
                     archived: str | None, rerank: tuple[int, np.ndarray] | None = None) -> "_Found":
        """rerank: (N, the query's hash values) to re-rank the (filtered) Hamming top-N."""
        n, values = rerank if rerank is not None else (None, None)
        while True:
            index = self.index
            try:
                result = index.search(code[None, :], k, with_ties=with_ties, nprobe=params.nprobe,
                                      ef_search=params.ef_search, filter=flt, rerank=n,
                                      query_values=None if values is None else values[None, :])
            except FilterError as exc:
                raise BadQueryError(str(exc)) from None
            except InvalidParameterError as exc:  # rerank on a version swapped in without hash values
                raise BadQueryError(str(exc)) from None
            # Ties can be many (every code at the k-th distance): the response holds max_k hits at most.
            records = index.records(result[0].rows[:self.config.max_k])
            if self.index is index:
                break
            # The index was swapped during the search: answer from the new version, so no removed id is returned.
        scores = result[0].scores if result[0].scores is not None else np.full(len(records), np.nan)
        hits = [self._hit(rank, rec, int(dist), archived, score)
                for rank, (rec, dist, score) in enumerate(zip(records, result[0].distances, scores), start=1)]
        return _Found(hits, result.strategy, result.selected, index.generation, truncated=len(result[0].rows) > len(hits))

    def _hit(self, rank: int, rec: IdRecord, distance: int, archived: str | None, score: float = np.nan) -> Hit:
        url = f"/v1/images/{quote(rec.image_id, safe='')}" if self.archive.enabled else None
        facts = {name: next((rec.metadata[c] for c in columns if rec.metadata.get(c) is not None), None)
                 for name, columns in FIELD_COLUMNS.items()}
        return Hit(rank=rank, image_id=rec.image_id, distance=distance, labels=list(rec.labels), box=rec.box,
                   thumbnail_url=url, overlay_url=f"{url}?overlay=true" if url else None,
                   age=_number_or_none(facts["age"]), sex=facts["sex"], view=facts["view"],
                   is_query=rec.image_id == archived, score=None if np.isnan(score) else float(score))

    def _predictions(self, encoded: EncodedImage) -> list[Prediction]:
        probs = 1.0 / (1.0 + np.exp(-encoded.logits.astype(np.float64)))
        order = np.argsort(-probs)
        return [Prediction(label=self.encoder.classes[i], probability=round(float(probs[i]), 4))
                for i in order if probs[i] >= 0.5]

    def _query_overlay(self, image: np.ndarray, encoded: EncodedImage | None) -> str:
        png = _render_thumbnail(image, encoded, QUERY_OVERLAY_SIDE)
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

    def _response(self, query: Query, found: "_Found", k: int, with_ties: bool, timings: dict,
                  flt: Filter, rerank: int | None = None) -> SearchResponse:
        return SearchResponse(model_id=self.index.model_id, bits=self.index.bits, k=k, with_ties=with_ties, query=query,
                              hits=found.hits, truncated=found.truncated, timings_ms={name: round(s * 1000, 3) for name, s in timings.items()},
                              rerank=rerank, filter=None if flt.empty() else flt.to_json(), strategy=found.strategy,
                              selected=found.selected, generation=found.generation)

    def _observe(self, kind: str, timings: dict) -> None:
        self.metrics.searches.labels(kind).inc()
        for stage, seconds in timings.items():
            self.metrics.stage.labels(stage).observe(seconds)

    # -- archived images --------------------------------------------------------------------------
    async def thumbnail(self, image_id: str, overlay: bool = False, size: int | None = None) -> bytes:
        """PNG of an archived image (longest side `size`), optionally with its saliency map and box.

        Raises KeyError for an id the index does not hold, ArchiveAccessError when the file may not be read.
        """
        size = size or self.config.thumbnail_size
        key = (image_id, bool(overlay), size)
        cached = self._thumbnails.get(key)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        index = self.index  # an id the served version no longer holds is never served
        row = index.row_of(image_id)
        if row is None:
            raise KeyError(image_id)
        record = index.records(np.array([row]))[0]
        path = self.archive.resolve(record.path)
        try:
            async with self.decoding(path.read_bytes(), path.name) as decode:
                image = await decode()
                encoded = await self.batcher.encode(image) if overlay else None
                png = await loop.run_in_executor(self._io_pool, _render_thumbnail, image, encoded, size)
        except ImageDecodeError as exc:
            raise ArchiveAccessError(f"archived image {shorten(image_id)} cannot be decoded: {exc.kind}") from None
        self._thumbnails.put(key, png)
        return png


class _Found:
    __slots__ = ("hits", "strategy", "selected", "generation", "truncated")

    def __init__(self, hits: list[Hit], strategy: str | None, selected: int | None, generation: int,
                 truncated: bool = False):
        self.hits, self.strategy, self.selected, self.generation = hits, strategy, selected, generation
        self.truncated = truncated  # more items tied at the k-th distance than max_k allows in one response


def _number_or_none(value) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _render_thumbnail(image: np.ndarray, encoded: EncodedImage | None, size: int) -> bytes:
    """PNG, longest side `size`; with `encoded`, its saliency map and crop box drawn (archived hits store only
    their box, so their overlays come from re-encoding the image)."""
    if encoded is None:
        picture = render_overlay(image)
    else:
        picture = render_overlay(image, encoded.box, encoded.saliency)
    picture.thumbnail((size, size))
    return _png_bytes(picture)


def _png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
