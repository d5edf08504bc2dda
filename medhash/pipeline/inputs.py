"""Input items of an encoding job: folders, globs, path lists, tar shards and Parquet byte columns.

`collect_items(inputs, ...)` turns the command-line INPUTs into one deterministic list of
`InputItem`s: sorted by (source, position inside the source), duplicates dropped. Each item says
how a worker gets its bytes (`reader`: a key of `ITEM_READERS` in medhash.pipeline.readers) and
where (`source` + `locator`), so the plan can be written once and replayed exactly.

Which kind an INPUT is (first match wins, see `INPUT_KINDS`):
- glob: contains *, ? or [ and is not an existing path (`**` recurses);
- folder: every image file below it, recursively; hidden files and folders are skipped;
- tar: a plain (uncompressed) `.tar`, WebDataset style: each image member is one item;
- parquet: `.parquet`/`.pq` with an image-bytes column (binary, or a struct with a `bytes` field);
- list: `.txt`/`.lst`/`.list`, one path per line (relative paths resolve against the list's folder;
  blank lines and lines starting with # are skipped);
- file: any other existing file is one image (the format is found from its bytes when decoded).

Image files are recognised by suffix (`IMAGE_SUFFIXES`); files without a suffix are taken too,
because DICOM archives often name files `IM0001`. Undecodable ones end in the errors file.

image_id: the label table's id when the item's path matches a table row, else the file stem (tar:
the member's stem; Parquet: the id column, else `<table stem>-<row>`). Nothing is read from the
image itself, so a DICOM's PatientID never becomes an id.
"""

from __future__ import annotations

import glob
import os
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Sequence

from medhash.errors import PipelineError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
# Parquet: names tried, in order, when the byte / id column is not given.
BYTES_COLUMN_NAMES = ("image", "image_bytes", "bytes", "png", "jpg", "dcm", "data", "content")
ID_COLUMN_NAMES = ("image_id", "id", "key", "__key__")


@dataclass(frozen=True)
class InputItem:
    """One image to encode. `path` is what the output's path column shows."""

    path: str  # a file path, "ARCHIVE.tar::member", "TABLE.parquet::row=N"
    image_id: str
    reader: str  # "file" | "tar" | "parquet" (medhash.pipeline.readers.ITEM_READERS)
    source: str  # the file, archive or table that holds the bytes
    locator: tuple = ()  # tar: (offset, size); parquet: (row_group, row_in_group, column, field or None)
    order: tuple = ()  # position inside `source`, for sorting
    labels: tuple[str, ...] | None = None  # from the label table; None: not in the table

    def sort_key(self) -> tuple:
        return (self.source, self.order)

    def to_json(self) -> list:
        return [self.path, self.image_id, self.reader, self.source, list(self.locator),
                None if self.labels is None else list(self.labels)]

    @classmethod
    def from_json(cls, row: list) -> "InputItem":
        path, image_id, reader, source, locator, labels = row
        return cls(path, image_id, reader, source, tuple(locator), (), None if labels is None else tuple(labels))


# ------------------------------------------------------------------------------------------ kinds


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[") and not Path(text).exists()


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or path.suffix == ""


def _file_item(path: Path) -> InputItem:
    absolute = os.path.abspath(path)
    return InputItem(absolute, path.stem, "file", absolute)


def _list_folder(text: str, options: "InputOptions") -> Iterator[InputItem]:
    for root, dirs, files in os.walk(text):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(root) / name
            if not name.startswith(".") and _is_image_file(path) and path.is_file():
                yield _file_item(path)


def _list_glob(text: str, options: "InputOptions") -> Iterator[InputItem]:
    matches = [Path(p) for p in glob.glob(text, recursive=True)]
    files = [p for p in matches if p.is_file()]
    if not files:
        raise PipelineError(f"{text}: the pattern matches no files")
    return (_file_item(p) for p in files)


def _list_text(text: str, options: "InputOptions") -> Iterator[InputItem]:
    listing = Path(text)
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{listing}: unreadable path list: {exc}") from exc
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            path = Path(entry) if Path(entry).is_absolute() else listing.parent / entry
            yield _file_item(path)  # a missing file is kept: it fails at decode and is reported


def _list_single(text: str, options: "InputOptions") -> Iterator[InputItem]:
    yield _file_item(Path(text))


def _list_tar(text: str, options: "InputOptions") -> Iterator[InputItem]:
    archive = os.path.abspath(text)
    try:
        with tarfile.open(archive, mode="r:") as tar:  # "r:" refuses compressed archives
            members = tar.getmembers()
    except tarfile.ReadError as exc:
        raise PipelineError(f"{archive}: not a readable uncompressed tar archive ({exc}); "
                            "WebDataset shards are plain .tar files") from exc
    except OSError as exc:
        raise PipelineError(f"{archive}: unreadable tar archive: {exc}") from exc
    for member in members:
        name = PurePosixPath(member.name)
        if member.isfile() and name.suffix.lower() in IMAGE_SUFFIXES:
            yield InputItem(f"{archive}::{member.name}", name.stem, "tar", archive,
                            (member.offset_data, member.size), (member.name,))


def _parquet_bytes_field(schema, wanted: str | None, table: str) -> tuple[str, str | None]:
    """(column, struct field or None) holding the image bytes."""
    import pyarrow as pa

    def kind(field) -> str | None:
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            return "binary"
        if pa.types.is_struct(field.type):
            inner = field.type.field("bytes") if field.type.get_field_index("bytes") >= 0 else None
            if inner is not None and (pa.types.is_binary(inner.type) or pa.types.is_large_binary(inner.type)):
                return "struct"  # e.g. Hugging Face Image: struct<bytes, path>
        return None

    candidates = {f.name: kind(f) for f in schema if kind(f)}
    if wanted is not None:
        if wanted not in candidates:
            raise PipelineError(f"{table}: column {wanted!r} is not a binary (or struct<bytes>) column; "
                                f"binary columns: {sorted(candidates)}")
        name = wanted
    elif len(candidates) == 1:
        name = next(iter(candidates))
    else:
        name = next((n for n in BYTES_COLUMN_NAMES if n in candidates), None)
        if name is None:
            raise PipelineError(f"{table}: cannot tell which column holds the image bytes "
                                f"(binary columns: {sorted(candidates) or 'none'}); name it with --bytes-column")
    return name, ("bytes" if candidates[name] == "struct" else None)


def _list_parquet(text: str, options: "InputOptions") -> Iterator[InputItem]:
    import pyarrow.parquet as pq

    table = os.path.abspath(text)
    try:
        parquet = pq.ParquetFile(table)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise PipelineError(f"{table}: unreadable Parquet file: {exc}") from exc
    schema = parquet.schema_arrow
    column, field = _parquet_bytes_field(schema, options.bytes_column, table)
    id_column = options.id_column or next((n for n in ID_COLUMN_NAMES if n in schema.names), None)
    if id_column is not None and id_column not in schema.names:
        raise PipelineError(f"{table}: no id column {id_column!r} (columns: {schema.names})")
    stem = Path(table).stem
    row = 0
    for group in range(parquet.num_row_groups):
        ids = parquet.read_row_group(group, columns=[id_column]).column(0).to_pylist() if id_column else None
        for index in range(parquet.metadata.row_group(group).num_rows):
            image_id = str(ids[index]) if ids is not None and ids[index] is not None else f"{stem}-{row}"
            yield InputItem(f"{table}::row={row}", image_id, "parquet", table, (group, index, column, field), (row,))
            row += 1


@dataclass(frozen=True)
class InputOptions:
    bytes_column: str | None = None
    id_column: str | None = None


def _suffix_in(suffixes: frozenset[str]) -> Callable[[str], bool]:
    return lambda text: Path(text).is_file() and Path(text).suffix.lower() in suffixes


# kind -> (does this INPUT look like it, list its items). Order matters: first match wins.
INPUT_KINDS: dict[str, tuple[Callable[[str], bool], Callable[[str, InputOptions], Iterable[InputItem]]]] = {
    "glob": (_is_glob, _list_glob),
    "folder": (lambda text: Path(text).is_dir(), _list_folder),
    "tar": (_suffix_in(frozenset({".tar"})), _list_tar),
    "parquet": (_suffix_in(PARQUET_SUFFIXES), _list_parquet),
    "list": (_suffix_in(LIST_SUFFIXES), _list_text),
    "file": (lambda text: Path(text).is_file(), _list_single),
}


def input_kind(text: str) -> str:
    for kind, (matches, _) in INPUT_KINDS.items():
        if matches(text):
            return kind
    raise PipelineError(f"{text}: no such file or folder (and not a glob pattern)")


# ------------------------------------------------------------------------------------------ labels


def _attach_labels(items: list[InputItem], label_table) -> list[InputItem]:
    """image_id and labels from the table: matched by path first, then by id (file/member stem, id column)."""
    by_path = {os.path.abspath(r.path): r for r in label_table.records if r.path is not None}
    by_id = label_table.by_id()
    out = []
    for item in items:
        record = by_path.get(item.path) if item.reader == "file" else None
        record = record or by_id.get(item.image_id)
        out.append(replace(item, image_id=record.image_id, labels=tuple(record.labels)) if record else item)
    return out


def collect_items(inputs: Sequence[str | Path], label_table=None, options: InputOptions = InputOptions()) -> list[InputItem]:
    """Every item of every INPUT, sorted by (source, position), each path once; labels attached."""
    if not inputs:
        raise PipelineError("no inputs given")
    found: dict[str, InputItem] = {}
    for entry in inputs:
        text = str(entry)
        _, lister = INPUT_KINDS[input_kind(text)]
        for item in lister(text, options):
            found.setdefault(item.path, item)
    items = sorted(found.values(), key=InputItem.sort_key)
    return _attach_labels(items, label_table) if label_table is not None else items
