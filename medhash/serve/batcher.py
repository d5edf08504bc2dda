"""EncodeBatcher: one encoder thread that encodes concurrent requests together.

Requests arriving while a forward pass runs wait in a queue; the next pass takes all of them
(up to max_batch) at once. A lone request is encoded immediately (no waiting window), so the
batching costs nothing at low load and amortizes the forward pass under load. The encoder runs
off the event loop, in this one thread: torch already uses every core for one pass, and two
passes at once would only fight over them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from medhash.encoding import EncodeResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedImage:
    code: np.ndarray  # uint8 [bits/8]
    box: tuple[int, int, int, int]
    saliency: np.ndarray  # float32 [S, S]
    logits: np.ndarray  # float32 [C]
    batch_size: int  # how many requests shared this forward pass
    hash_values: np.ndarray | None = None  # float32 [bits], what a re-ranked search compares


class EncodeBatcher:
    def __init__(self, encode_images: Callable[[Sequence[np.ndarray]], EncodeResult], max_batch: int = 16,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._encode_images = encode_images
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def pending(self) -> int:
        return self._queue.qsize()

    async def encode(self, image: np.ndarray) -> EncodedImage:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._ensure_thread()
        self._queue.put((image, future, loop))
        return await future

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the encoder is shut down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="medhash-encoder", daemon=True)
                self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._queue.put(None)
        if thread is not None:
            thread.join(timeout=30)

    def _take_batch(self) -> list | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: finish this batch, then stop
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        import time

        while (batch := self._take_batch()) is not None:
            live = [(img, fut, loop) for img, fut, loop in batch if not fut.cancelled()]
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                result = self._encode_images([img for img, _, _ in live])
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting request
                log.exception("encoding a batch of %d failed", len(live))
                for _, fut, loop in live:
                    loop.call_soon_threadsafe(_settle, fut, None, exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(live), time.perf_counter() - t0)
            for i, (_, fut, loop) in enumerate(live):
                one = EncodedImage(result.codes[i], tuple(int(v) for v in result.boxes[i]), result.saliency[i],
                                   result.logits[i], len(live),
                                   None if result.hash_values is None else result.hash_values[i])
                loop.call_soon_threadsafe(_settle, fut, one, None)


def _settle(future: asyncio.Future, value, error: BaseException | None) -> None:
    if future.cancelled():  # the client went away while its image was being encoded
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
