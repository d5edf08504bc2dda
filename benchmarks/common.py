"""What every benchmark records beside its figures: the machine, the versions, the load."""

from __future__ import annotations

import json
from pathlib import Path

from medhash.bench.machine import cpu_model, machine_info  # noqa: F401 - re-exported for the scripts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"


def write_result(path: str | Path, payload: dict) -> None:
    from medhash.atomic import write_text_atomic

    write_text_atomic(Path(path), json.dumps(payload, indent=2, default=float) + "\n")
