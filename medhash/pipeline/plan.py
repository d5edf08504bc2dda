"""The shard plan: the sorted items cut into shards, written to `_plan.json` before any work starts.

A rerun into the same folder replays the stored plan (it does not list the inputs again), so it
sees exactly the same shards; every item belongs to one shard, which is what makes resuming
duplicate-free. The plan also pins what the folder's outputs mean (model, engine, columns): a rerun
that asks for something else is refused instead of mixing two kinds of rows in one folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medhash import __version__
from medhash.atomic import write_text_atomic
from medhash.codes_format import PLAN_FILE, MetadataColumns
from medhash.errors import PipelineError
from medhash.pipeline.inputs import InputItem, NotEncoded

PLAN_FORMAT = "medhash.encode-plan"
PLAN_VERSION = 2  # 2: ids by path, metadata columns, the files found but not planned


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


@dataclass(frozen=True)
class ShardPlan:
    index: int
    items: tuple[InputItem, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class OutputSpec:
    """What every shard in the folder holds; a rerun must ask for the same."""

    model_id: str
    bits: int
    engine: str
    with_labels: bool
    store_features: bool
    table_columns: tuple[str, ...] = ()  # label-table columns carried (medhash.codes_format.MetadataColumns)
    dicom_meta: bool = True  # the non-identifying DICOM attributes
    patient_key: bool = False  # a keyed hash of the patient id
    store_hash_values: bool = False  # the hash layer's tanh outputs (medhash.codes_format.HASH_VALUES_COLUMN)

    @property
    def metadata_columns(self) -> MetadataColumns:
        return MetadataColumns(self.table_columns, self.dicom_meta, self.patient_key)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "table_columns": list(self.table_columns)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OutputSpec":
        return cls(**{**data, "table_columns": tuple(data.get("table_columns", ()))})


@dataclass
class JobPlan:
    output: OutputSpec
    request: dict[str, Any]  # the inputs and options that produced the item list
    shards: list[ShardPlan] = field(default_factory=list)
    not_encoded: list[NotEncoded] = field(default_factory=list)  # files found but not planned

    @property
    def n_items(self) -> int:
        return sum(len(s) for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "medhash_version": __version__,
            "output": self.output.to_json(),
            "request": self.request,
            "n_items": self.n_items,
            "shards": [{"name": s.name, "items": [i.to_json() for i in s.items]} for s in self.shards],
            "not_encoded": [[n.path, n.status, n.kind, n.message] for n in self.not_encoded],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobPlan":
        shards = [ShardPlan(index, tuple(InputItem.from_json(row) for row in entry["items"]))
                  for index, entry in enumerate(data["shards"])]
        return cls(OutputSpec.from_json(data["output"]), data["request"], shards,
                   [NotEncoded(*row) for row in data["not_encoded"]])


def cut_into_shards(items: list[InputItem], shard_size: int) -> list[ShardPlan]:
    if shard_size < 1:
        raise PipelineError(f"shard size must be at least 1, got {shard_size}")
    return [ShardPlan(i // shard_size, tuple(items[i:i + shard_size])) for i in range(0, len(items), shard_size)]


def write_plan(out_dir: Path, plan: JobPlan) -> Path:
    path = out_dir / PLAN_FILE
    write_text_atomic(path, json.dumps(plan.to_json(), separators=(",", ":")))
    return path


def read_plan(out_dir: Path) -> JobPlan | None:
    path = out_dir / PLAN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != PLAN_FORMAT or data.get("version") != PLAN_VERSION:
            raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
        return JobPlan.from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: unreadable shard plan ({exc}); rerun with --overwrite to start afresh") from exc


def check_same_job(stored: JobPlan, output: OutputSpec, request: dict[str, Any], out_dir: Path) -> None:
    """Refuse a rerun that would mix another model, engine or column set, or other inputs, into `out_dir`."""
    if stored.output.model_id != output.model_id:
        raise PipelineError(
            f"{out_dir} belongs to model {stored.output.model_id} (its plan and codes); this checkpoint is model {output.model_id}. "
            "Codes of two models cannot share a folder: use another --out, or --overwrite to replace them")
    asked = output.to_json()
    differences = [f"{key}: folder has {value!r}, asked {asked.get(key)!r}"
                   for key, value in stored.output.to_json().items() if asked.get(key) != value]
    differences += [f"{key}: folder has {stored.request.get(key)!r}, asked {value!r}"
                    for key, value in request.items() if stored.request.get(key) != value]
    if differences:
        raise PipelineError(f"{out_dir} was planned for another job ({'; '.join(differences)}); "
                            "rerun with the same options to resume, or use --overwrite / another --out")
