"""Progress of an encoding job: a bar over images (with images/s), shards in the postfix."""

from __future__ import annotations

import sys


class JobProgress:
    def __init__(self, total_images: int, total_shards: int, done_shards: int, enabled: bool = True):
        from tqdm.auto import tqdm

        self.total_shards = total_shards
        self.done_shards = done_shards
        self.bar = tqdm(total=total_images, unit="img", desc="encode", disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"shards {self.done_shards}/{self.total_shards}")

    def note(self, text: str) -> None:
        if not self.bar.disable:
            self.bar.write(text, file=sys.stderr)

    def shard_done(self, images: int) -> None:
        self.done_shards += 1
        self.bar.update(images)
        self._postfix()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "JobProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
