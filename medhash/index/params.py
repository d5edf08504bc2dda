"""Declared index parameters: each kind lists its parameters with bounds, and every value is checked here.

Validation happens at the edge, before any FAISS call or allocation: FAISS answers bad values with a
C++ assertion (an abort, `M=0`), an unbounded allocation (`M=-1` grew to ~24 GB) or an index that
cannot be loaded again (`nhash=0`). So unknown keys are refused (with the nearest known name, a typo
is the usual cause), every value must be an integer within its declared bounds, and the bounds that
depend on the data (IVF cannot have more lists than codes to cluster) are checked by the kind once
the size of the input is known. Every error is one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Mapping

from medhash.errors import InvalidParameterError, shorten

__all__ = ["MAX_EF", "ParamSpec", "check_declared", "describe_params", "refuse"]

MAX_EF = 65_536  # HNSW candidate lists: FAISS allocates a heap of this many entries per query


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an index kind: an integer (or, with type float, a number) in [low, high], inclusive."""

    name: str
    low: int | float
    high: int | float
    help: str
    type: type = int

    def check(self, kind: str, value: object) -> int | float:
        what = "an integer" if self.type is int else "a number"
        allowed = f"{self.name} takes {what} in [{self.low}, {self.high}] ({self.help})"
        # bool is an int in Python; `nlist=true` is a mistake, not 1.
        numeric = (int,) if self.type is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or value != value:  # NaN != NaN
            refuse(kind, f"{self.name}={_show(value)} is not {what}; {allowed}")
        if not self.low <= value <= self.high:
            refuse(kind, f"{self.name}={value} is out of range; {allowed}")
        return self.type(value)


def refuse(kind: str, reason: str) -> None:
    raise InvalidParameterError(f"index kind {kind}: {reason}")


def describe_params(specs: Iterable[ParamSpec]) -> str:
    names = [s.name for s in specs]
    return ", ".join(names) if names else "none"


def check_declared(kind: str, specs: tuple[ParamSpec, ...], params: Mapping[str, object],
                   other_kinds: Mapping[str, tuple[ParamSpec, ...]] = {}) -> dict[str, int]:
    """Refuse unknown keys (naming the nearest known one, or the kind that takes it) and values outside
    the declared types and bounds; returns the checked parameters."""
    by_name = {s.name: s for s in specs}
    for key in params:
        if key not in by_name:
            refuse(kind, _unknown_key(kind, key, by_name, other_kinds))
    return {key: by_name[key].check(kind, value) for key, value in params.items()}


def _unknown_key(kind: str, key: str, by_name: Mapping[str, ParamSpec],
                 other_kinds: Mapping[str, tuple[ParamSpec, ...]]) -> str:
    text = f"unknown parameter {_show(key)}"
    close = difflib.get_close_matches(key, list(by_name), n=1, cutoff=0.6)
    if close:
        text += f" (did you mean {close[0]}?)"
    else:
        owners = [name for name, specs in other_kinds.items() if any(s.name == key for s in specs)]
        if owners:
            text += f" ({key} is a parameter of {', '.join(owners)})"
    return f"{text}; {kind} takes: {describe_params(by_name.values())}"


def _show(value: object) -> str:
    return shorten(repr(value), 40)
