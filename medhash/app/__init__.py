"""Workflows above the layers: query an index with images, evaluate a model, run the demo.

Each combines decoding (data), the encoder (model) and the index or the metrics (index, eval),
which never import one another upward. The encoder is typed as medhash.encoding.ImageEncoder.

    from medhash.app import query_images, evaluate_model, EvaluateConfig

The names are resolved on first use (module __getattr__), so `import medhash.app` loads neither
torch nor the index; the demo (medhash.app.demo) is not re-exported: it imports the server, which
imports medhash.app.query.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "QueryHit": "medhash.app.query",
    "QueryResult": "medhash.app.query",
    "check_model": "medhash.app.query",
    "query_images": "medhash.app.query",
    "EncodedSet": "medhash.app.evaluate",
    "EvaluateConfig": "medhash.app.evaluate",
    "encode_records": "medhash.app.evaluate",
    "evaluate_model": "medhash.app.evaluate",
    "localization_report": "medhash.app.evaluate",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from medhash.app.evaluate import EncodedSet, EvaluateConfig, encode_records, evaluate_model, localization_report
    from medhash.app.query import QueryHit, QueryResult, check_model, query_images


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
