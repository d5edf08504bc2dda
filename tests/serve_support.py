"""Test support for the server: a real uvicorn server on 127.0.0.1 over a served archive, and its codes.

The archive itself is built by medhash.app.fixtures.make_served_archive (shared with benchmarks/).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Iterator

import numpy as np

from medhash.app.fixtures import ServedArchive
from medhash.data import read_image
from medhash.model import load_encoder
from medhash.serve import SearchService, ServeConfig
from medhash.serve.background import serve_in_background


def serve_config(archive: ServedArchive, **changes) -> ServeConfig:
    """The archive's ServeConfig for tests (engine fp32, one torch thread), with `changes` applied."""
    base = ServeConfig(index=str(archive.index_dir), model=str(archive.model_path), archive_root=str(archive.root),
                       engine="fp32", torch_threads=1)
    return replace(base, **changes)


@contextlib.contextmanager
def live_server(archive: ServedArchive, **changes) -> Iterator[str]:
    """Serve `archive` (its serve_config with `changes`) under uvicorn in a thread on 127.0.0.1; yields its base URL;
    stops it on exit."""
    with serve_in_background(SearchService.open(serve_config(archive, **changes))) as url:
        yield url


def archived_codes(archive: ServedArchive) -> np.ndarray:
    encoder = load_encoder(archive.model_path, engine="fp32")
    return encoder.encode_images([read_image(p) for p in archive.image_paths]).codes
