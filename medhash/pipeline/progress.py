"""Progress of an encoding job over images and shards.

On a terminal: a tqdm bar over images (with images/s), shards in the postfix. Elsewhere (a log file,
a pipe, a service's journal): one log line per finished shard with the counts, images/s and ETA, so
that a log holds no carriage-return frames and can be read line by line (medhash.logs).
"""

from __future__ import annotations

import logging
import sys
import time

from medhash.logs import format_eta, progress_bars

log = logging.getLogger(__name__)


class JobProgress:
    def __init__(self, total_images: int, total_shards: int, done_shards: int, enabled: bool | None = True):
        from tqdm.auto import tqdm

        self.total_images = total_images  # images of the shards this run encodes
        self.total_shards = total_shards
        self.done_shards = done_shards
        self.images = 0
        self.failed_images = 0
        self.start = time.perf_counter()
        self.bar = tqdm(total=total_images, unit="img", desc="encode", disable=not progress_bars(enabled),
                        dynamic_ncols=True, file=sys.stderr)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"shards {self.done_shards}/{self.total_shards}")

    def note(self, text: str, level: int = logging.INFO) -> None:
        if self.bar.disable:
            log.log(level, "%s", text)
        else:
            self.bar.write(text, file=sys.stderr)

    def shard_done(self, name: str, images: int, failed: int = 0) -> None:
        self.done_shards += 1
        self.images += images
        self.failed_images += failed
        self.bar.update(images)
        self._postfix()
        if self.bar.disable:
            log.info("%s", self.line(name, images, failed))

    def line(self, name: str, images: int, failed: int) -> str:
        """shard part-00003 done (256 images, 1 failed): shards 4/12, images 1024/3072, 41.3 images/s, ETA 49 s"""
        elapsed = time.perf_counter() - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        eta = (self.total_images - self.images) / rate if rate > 0 else None
        return (f"shard {name} done ({images} images, {failed} failed): shards {self.done_shards}/{self.total_shards}, "
                f"images {self.images}/{self.total_images} ({self.failed_images} failed), {rate:.1f} images/s, "
                f"ETA {format_eta(eta)}")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "JobProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
