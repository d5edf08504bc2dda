"""medhash: precision chest X-ray retrieval by interpretable deep hashing.

The public Python API (see the README's "Python API"): `load_model`, `open_index`, `Encoder`, `Index`,
`SearchResults` (medhash.app.api) and `read_image` (medhash.data). They are imported on first use
(PEP 562 module `__getattr__`), so `import medhash` loads neither torch nor FAISS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load_model": "medhash.app.api",
    "open_index": "medhash.app.api",
    "Encoder": "medhash.app.api",
    "Index": "medhash.app.api",
    "SearchResults": "medhash.app.api",
    "read_image": "medhash.data",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from medhash.app.api import Encoder, Index, SearchResults, load_model, open_index
    from medhash.data import read_image


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medhash' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
