"""What the measurement scripts share: where results and the shared data live, and how a result is written."""

from __future__ import annotations

import json
from pathlib import Path

from medhash.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"


def write_result(path: str | Path, payload: dict) -> None:
    """The result JSON, written atomically (a run cut short never leaves half a file)."""
    write_text_atomic(Path(path), json.dumps(payload, indent=2, default=float) + "\n")
