"""Search filters over the metadata stored with the codes: one small syntax, two spellings.

A filter is a conjunction of clauses (every clause must hold). The compact spelling is for the
command line and the form field, the JSON one for the API body and the library (a dict):

    labels_any=Effusion,Mass;sex=F;age=60..;view=PA;not_patient=00000013_004
    {"labels_any": ["Effusion", "Mass"], "sex": "F", "age": {"min": 60}, "view": ["PA"],
     "not_patient": "00000013_004"}

| clause                    | holds for a row when                                                    |
| labels_any=A,B            | its `labels` hold at least one of A, B                                  |
| labels_all=A,B            | its `labels` hold all of A, B                                           |
| labels_none=A,B           | its `labels` hold none of A, B                                          |
| view=PA,AP / sex=F        | the view (sex) is one of the values, case-insensitively                 |
| age=60.. / ..40 / 40..60  | the age in years lies in the range (inclusive; an open end is unbounded)|
| not_patient=IMAGE_ID      | it is not an image of that archived image's patient (stored patient_key)|
| not_patient_key=HEX       | its patient_key is not HEX (a key the caller already computed)          |
| not_patient_id=ID         | its patient_key is not the keyed hash of ID (needs the site secret)     |
| COLUMN=V1,V2 / COLUMN=L..H| any other stored column: one of the values, or within the range        |

`view`, `sex` and `age` read the label-table column (`view`, `sex`, `age`) where a row has one and the
DICOM column (`view_position`, `patient_sex`, `patient_age_years`) otherwise. Rows whose value is
missing (null) fail every clause on that column, except the `not_patient*` clauses (an image of
unknown patient cannot be the query's patient) and `labels_none` on rows with no labels (they hold
none of the findings). Values in the compact spelling cannot contain `,` or `;`: use the JSON one.

`not_patient_id` is hashed with the site secret while parsing and only the key is kept: the raw id
is never stored, logged, echoed in an error, or part of the filter's normalized key.

Parsing is pure (no index needed); `medhash.index.selection` evaluates a parsed Filter against an
index's ids.parquet. Every error is a FilterError whose one-line message names the bad clause.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

from medhash.data.keyed import keyed_hash

__all__ = ["FIELD_COLUMNS", "Filter", "FilterError", "Range", "parse_filter"]

# Clinical fields -> the stored columns they read, first non-null wins (label table, then DICOM).
FIELD_COLUMNS: dict[str, tuple[str, ...]] = {
    "view": ("view", "view_position"),
    "sex": ("sex", "patient_sex"),
    "age": ("age", "patient_age_years"),
}
LABEL_CLAUSES = ("labels_any", "labels_all", "labels_none")
PATIENT_CLAUSES = ("not_patient", "not_patient_key", "not_patient_id")
RESERVED = {"labels", "label", "image_id", "path", "box", "code", "patient_key"}


class FilterError(ValueError):
    """A filter that cannot be parsed or evaluated; the message is one line naming the bad part."""


@dataclass(frozen=True)
class Range:
    low: float | None = None  # inclusive; None = unbounded
    high: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in (("min", self.low), ("max", self.high)) if v is not None}


@dataclass(frozen=True)
class Filter:
    """A parsed filter: every part must hold. Build with parse_filter; empty() means no filter."""

    labels_any: frozenset[str] = frozenset()
    labels_all: frozenset[str] = frozenset()
    labels_none: frozenset[str] = frozenset()
    # Field or column name -> the values (upper-cased strings) or the numeric range it must match.
    equals: tuple[tuple[str, frozenset[str]], ...] = ()
    ranges: tuple[tuple[str, Range], ...] = ()
    not_patient_image: str | None = None  # image id whose stored patient_key is excluded
    not_patient_keys: frozenset[str] = frozenset()  # keyed hashes excluded
    text: str = field(default="", compare=False)  # the normalized key (see normalized())

    def empty(self) -> bool:
        return not (self.labels_any or self.labels_all or self.labels_none or self.equals or self.ranges
                    or self.not_patient_image or self.not_patient_keys)

    def to_json(self) -> dict:
        """The canonical JSON form (sorted values; patient ids only as keys)."""
        out: dict = {}
        for name in LABEL_CLAUSES:
            values = getattr(self, name)
            if values:
                out[name] = sorted(values)
        for name, values in self.equals:
            out[name] = sorted(values)
        for name, rng in self.ranges:
            out[name] = rng.to_json()
        if self.not_patient_image is not None:
            out["not_patient"] = self.not_patient_image
        if self.not_patient_keys:
            out["not_patient_key"] = sorted(self.not_patient_keys)
        return out

    def normalized(self) -> str:
        """A stable text of what the filter selects: equal filters, equal texts (the selection cache key)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    def columns(self) -> set[str]:
        """Names (fields or columns) the filter reads, besides labels and patient_key."""
        return {name for name, _ in self.equals} | {name for name, _ in self.ranges}


def parse_filter(spec: str | dict | Filter | None, *, patient_secret: bytes | None = None) -> Filter:
    """A Filter from the compact text, a JSON text (starting with `{`), a dict, or None / "" (no filter)."""
    if isinstance(spec, Filter):
        return spec
    if spec is None:
        return Filter()
    if isinstance(spec, str):
        text = spec.strip()
        # A text naming a raw patient id is never cached: the id must not outlive the request.
        return _parse_text.__wrapped__(text, patient_secret) if "not_patient_id" in text else _parse_text(text, patient_secret)
    if not isinstance(spec, dict):
        raise FilterError(f"filter must be a JSON object or compact text, got {type(spec).__name__}")
    return _from_dict(spec, patient_secret)


@functools.lru_cache(maxsize=256)
def _parse_text(text: str, patient_secret: bytes | None) -> Filter:
    """Cached: a server sees the same few filter texts over and over (Filter is immutable)."""
    if not text:
        return Filter()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise FilterError(f"filter is not valid JSON: {exc.msg} at character {exc.pos}") from None
    else:
        spec = _compact_to_dict(text)
    if not isinstance(spec, dict):
        raise FilterError(f"filter must be a JSON object or compact text, got {type(spec).__name__}")
    return _from_dict(spec, patient_secret)


def _compact_to_dict(text: str) -> dict:
    out: dict = {}
    for clause in text.split(";"):
        clause = clause.strip()
        if not clause:
            continue
        name, sep, value = clause.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise FilterError(f"filter clause {_shown(clause, name)!r} is not NAME=VALUE")
        if name in out:
            raise FilterError(f"filter clause {name!r} given twice")
        if ".." in value and name not in LABEL_CLAUSES and name not in PATIENT_CLAUSES:
            low, _, high = value.partition("..")
            out[name] = {"min": _number(name, low, clause) if low.strip() else None,
                         "max": _number(name, high, clause) if high.strip() else None}
        elif name in ("not_patient", "not_patient_id"):
            out[name] = value
        else:
            out[name] = [v.strip() for v in value.split(",")]
    return out


def _shown(clause: str, name: str) -> str:
    # The raw patient id must never reach an error message.
    return f"{name}=..." if name.strip() == "not_patient_id" else clause


def _number(name: str, text: str, clause: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FilterError(f"filter clause {_shown(clause, name)!r}: range bounds must be numbers (LO..HI)") from None
    if math.isnan(value):
        raise FilterError(f"filter clause {clause!r}: range bounds must be numbers (LO..HI)")
    return value


def _values(name: str, value) -> frozenset[str]:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise FilterError(f"filter clause {name!r}: expected a value or a non-empty list of values")
    out = []
    for v in value:
        if not isinstance(v, (str, int, float)) or isinstance(v, bool) or str(v).strip() == "":
            raise FilterError(f"filter clause {name!r}: values must be non-empty strings or numbers")
        out.append(str(v).strip())
    return frozenset(out)


def _range(name: str, value: dict) -> Range:
    unknown = set(value) - {"min", "max"}
    if unknown:
        raise FilterError(f"filter clause {name!r}: a range has only min and max, not {sorted(unknown)}")
    bounds = []
    for key in ("min", "max"):
        v = value.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v)):
            raise FilterError(f"filter clause {name!r}: {key} must be a number")
        bounds.append(None if v is None else float(v))
    if bounds[0] is None and bounds[1] is None:
        raise FilterError(f"filter clause {name!r}: a range needs min, max or both")
    if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
        raise FilterError(f"filter clause {name!r}: min {bounds[0]:g} is above max {bounds[1]:g}")
    return Range(*bounds)


def _from_dict(spec: dict, patient_secret: bytes | None) -> Filter:
    parts: dict = {}
    equals: dict[str, frozenset[str]] = {}
    ranges: dict[str, Range] = {}
    keys: set[str] = set()
    for name, value in spec.items():
        if not isinstance(name, str) or not name.strip():
            raise FilterError("filter clause names must be non-empty strings")
        name = name.strip()
        if name in LABEL_CLAUSES:
            parts[name] = _values(name, value)
        elif name == "not_patient":
            if not isinstance(value, str) or not value.strip():
                raise FilterError("filter clause 'not_patient': expected the image id of an archived image")
            parts["not_patient_image"] = value.strip()
        elif name == "not_patient_key":
            keys |= {v.lower() for v in _values(name, value)}
        elif name == "not_patient_id":
            if not isinstance(value, str) or not value.strip():
                raise FilterError("filter clause 'not_patient_id': expected a patient id")
            if not patient_secret:
                raise FilterError("filter clause 'not_patient_id' needs the site's patient-key secret, "
                                  "which this server or command was not given")
            keys.add(keyed_hash(value.strip(), patient_secret))
        elif name in RESERVED:
            raise FilterError(f"filter clause {name!r}: this column cannot be filtered "
                              f"(use labels_any/labels_all/labels_none or not_patient)")
        elif isinstance(value, dict):
            ranges[name] = _range(name, value)
        else:
            equals[name] = frozenset(v.upper() for v in _values(name, value))
    flt = Filter(equals=tuple(sorted(equals.items())), ranges=tuple(sorted(ranges.items())),
                 not_patient_keys=frozenset(keys), **parts)
    return Filter(**{**{f: getattr(flt, f) for f in flt.__dataclass_fields__ if f != "text"}, "text": flt.normalized()})
