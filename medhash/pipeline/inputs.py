"""Input items of an encoding job: folders, globs, path lists, tar shards and Parquet byte columns.

`collect_items(inputs, ...)` turns the command-line INPUTs into one deterministic list of
`InputItem`s, sorted by (source, position inside the source), each path once, plus a
`NotEncoded` record for every file found that will not be encoded. Each item says how a worker
gets its bytes (`reader`: a key of `ITEM_READERS` in medhash.pipeline.readers) and where
(`source` + `locator`), so the plan can be written once and replayed exactly.

Which kind an INPUT is (first match wins, see `INPUT_KINDS`):
- glob: contains *, ? or [ and is not an existing path (`**` recurses);
- folder: every file below it, recursively (a folder argument is walked, never "one input");
- tar: a plain (uncompressed) `.tar`, WebDataset style: each image member is one item;
- parquet: `.parquet`/`.pq` with an image-bytes column (binary, or a struct with a `bytes` field);
- list: `.txt`/`.lst`/`.list`, one path per line (relative paths resolve against the list's folder;
  blank lines and lines starting with # are skipped);
- file: any other existing file is one image (the format is found from its bytes when decoded).

Files found in folders and globs are recognised by content (medhash.data.sniff), whatever their
name: PACS exports name files by UID without a suffix, or `IM0001.001`. Every file found ends in
exactly one of: an item (to encode; it may still fail to decode), skipped by rule (hidden files and
folders, not an image, a symlink leaving the input root unless `follow_symlinks`), or failed before
planning (unreadable file or folder: os.walk's errors are collected, never dropped). A file whose
content is not recognised but whose suffix is an image's (`IMAGE_SUFFIXES`) is planned, so a
corrupt `x.png` is reported as failed, not skipped. Files named explicitly (list, single file) are
planned as given. Links to folders inside the root are skipped (their files are found where they
are), which also keeps the walk free of cycles.

image_id (unique, stable across runs): the path relative to the input root with POSIX separators
(folder: the folder; glob: its leading part without wildcards; single file: its folder; list: the
entry as written; tar: the member name; Parquet: the id column, else `<table stem>-<row>`); the
label table's id when a table row matches (by path, else by id, else by the id's file stem); with
`id_from="sop-uid"` a DICOM's SOPInstanceUID, read here through `read_dicom_identifiers`. Two items
with one id are refused, naming both files, before anything is planned.
"""

from __future__ import annotations

import glob
import os
import stat
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath, PurePosixPath
from typing import Callable, Iterable, Iterator, Sequence

from medhash.data.dicom_meta import read_dicom_identifiers
from medhash.data.keyed import keyed_hash
from medhash.data.sniff import sniff_format
from medhash.errors import ImageDecodeError, PipelineError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
# Parquet: names tried, in order, when the byte / id column is not given.
BYTES_COLUMN_NAMES = ("image", "image_bytes", "bytes", "png", "jpg", "dcm", "data", "content")
ID_COLUMN_NAMES = ("image_id", "id", "key", "__key__")
ID_SOURCES = ("path", "sop-uid")


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
    values: tuple[str | None, ...] | None = None  # the label-table columns asked for; None: not in the table
    patient_key: str | None = None  # keyed hash of the table's patient id (never the id itself)

    def sort_key(self) -> tuple:
        return (self.source, self.order)

    def to_json(self) -> list:
        return [self.path, self.image_id, self.reader, self.source, list(self.locator),
                None if self.labels is None else list(self.labels),
                None if self.values is None else list(self.values), self.patient_key]

    @classmethod
    def from_json(cls, row: list) -> "InputItem":
        path, image_id, reader, source, locator, labels, values, patient_key = row
        return cls(path, image_id, reader, source, tuple(locator), (), None if labels is None else tuple(labels),
                   None if values is None else tuple(values), patient_key)


@dataclass(frozen=True)
class NotEncoded:
    """A file (or a folder not entered) that was found but is not planned."""

    path: str
    status: str  # "skipped" (by rule, not a failure) | "failed" (before planning)
    kind: str  # skipped: hidden | not_an_image | symlink_outside_root | symlink_inside_root;
    # failed: unreadable | unreadable_folder
    message: str

    def row(self) -> tuple[str, str, str, str, str]:
        """As a row of the codes format's errors files (path, image_id, status, kind, message)."""
        return (self.path, "", self.status, self.kind, self.message)


@dataclass
class FoundInputs:
    items: list[InputItem] = field(default_factory=list)
    not_encoded: list[NotEncoded] = field(default_factory=list)


@dataclass(frozen=True)
class InputOptions:
    bytes_column: str | None = None
    id_column: str | None = None
    id_from: str = "path"  # ID_SOURCES
    follow_symlinks: bool = False  # also take links (to files or folders) that leave the input root


@dataclass(frozen=True)
class TableColumns:
    """What of a matched label-table row travels into the output besides the labels."""

    names: tuple[str, ...] = ()  # table columns, stored as written (patient_id excluded)
    patient_secret: bytes | None = None  # with it, the table's patient id is stored keyed-hashed


Listed = InputItem | NotEncoded

# ------------------------------------------------------------------------------------------ files


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[") and not Path(text).exists()


def _posix_id(path: str, root: str) -> str:
    return PurePath(os.path.relpath(path, root)).as_posix()


def _file_item(path: str, image_id: str) -> InputItem:
    absolute = os.path.abspath(path)
    return InputItem(absolute, image_id, "file", absolute)


def _inside(path: str, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _os_reason(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or 'unreadable'}"  # no path or content: the row names the file


def _classify_file(path: str, root: str, real_root: str, options: InputOptions) -> Listed:
    """A file found in a folder or glob: an item, or why it is not one."""
    if os.path.basename(path).startswith("."):
        return NotEncoded(path, "skipped", "hidden", "hidden file")
    if os.path.islink(path) and not options.follow_symlinks and not _inside(path, real_root):
        return NotEncoded(path, "skipped", "symlink_outside_root",
                          "a link to a file outside the input root (take it with --follow-symlinks)")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return NotEncoded(path, "skipped", "not_an_image", "not a regular file")
        fmt = sniff_format(path)
    except OSError as exc:
        return NotEncoded(path, "failed", "unreadable", _os_reason(exc))
    if fmt is None and Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        return NotEncoded(path, "skipped", "not_an_image", "content is not DICOM, PNG, JPEG or TIFF")
    return _file_item(path, _posix_id(path, root))


def _walk(top: str, root: str, real_root: str, options: InputOptions, entered: set[str]) -> Iterator[Listed]:
    """Every file below `top` (ids relative to `root`); unreadable folders are reported, not dropped."""
    unreadable: list[OSError] = []
    for folder, dirs, files in os.walk(top, onerror=unreadable.append):
        kept = []
        for name in sorted(dirs):
            path = os.path.join(folder, name)
            if name.startswith("."):
                yield NotEncoded(path, "skipped", "hidden", "hidden folder (not entered)")
            elif not os.path.islink(path):
                kept.append(name)
            elif _inside(path, real_root):
                yield NotEncoded(path, "skipped", "symlink_inside_root",
                                 "a link to a folder inside the input root (its files are found there)")
            elif options.follow_symlinks and os.path.realpath(path) not in entered:
                entered.add(os.path.realpath(path))
                yield from _walk(path, root, real_root, options, entered)
            else:
                yield NotEncoded(path, "skipped", "symlink_outside_root",
                                 "a link to a folder outside the input root (take it with --follow-symlinks)")
        dirs[:] = kept
        for name in files:
            yield _classify_file(os.path.join(folder, name), root, real_root, options)
    for exc in unreadable:
        yield NotEncoded(os.path.abspath(exc.filename or top), "failed", "unreadable_folder", _os_reason(exc))


def _list_folder(text: str, options: InputOptions) -> Iterator[Listed]:
    root = os.path.abspath(text)
    real_root = os.path.realpath(root)
    yield from _walk(root, root, real_root, options, {real_root})


def _glob_root(pattern: str) -> str:
    """The leading part of a pattern without wildcards: what the ids of its matches are relative to."""
    parts = PurePath(pattern).parts
    fixed = parts[: next((i for i, p in enumerate(parts) if any(ch in p for ch in "*?[")), len(parts))]
    return os.path.abspath(os.path.join(*fixed)) if fixed else os.path.abspath(".")


def _list_glob(text: str, options: InputOptions) -> Iterator[Listed]:
    matches = [p for p in glob.glob(text, recursive=True) if os.path.isfile(p) or os.path.islink(p)]
    if not matches:
        raise PipelineError(f"{text}: the pattern matches no files")
    root = _glob_root(text)
    real_root = os.path.realpath(root)
    return (_classify_file(os.path.abspath(p), root, real_root, options) for p in matches)


def _list_text(text: str, options: InputOptions) -> Iterator[Listed]:
    listing = Path(text)
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{listing}: unreadable path list: {exc}") from exc
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            path = Path(entry) if Path(entry).is_absolute() else listing.parent / entry
            yield _file_item(str(path), PurePath(entry).as_posix())  # a missing file fails at decode and is reported


def _list_single(text: str, options: InputOptions) -> Iterator[Listed]:
    yield _file_item(text, Path(text).name)


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
            yield InputItem(f"{archive}::{member.name}", name.as_posix(), "tar", archive,
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


def _suffix_in(suffixes: frozenset[str]) -> Callable[[str], bool]:
    return lambda text: Path(text).is_file() and Path(text).suffix.lower() in suffixes


# kind -> (does this INPUT look like it, list its items). Order matters: first match wins.
INPUT_KINDS: dict[str, tuple[Callable[[str], bool], Callable[[str, InputOptions], Iterable[Listed]]]] = {
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


# ------------------------------------------------------------------------------------------ ids and labels


def _attach_table(items: list[InputItem], label_table, columns: TableColumns) -> list[InputItem]:
    """image_id, labels and asked-for columns from the table: rows matched by path, then id, then the id's stem."""
    by_path = {os.path.abspath(r.path): r for r in label_table.records if r.path is not None}
    by_id = label_table.by_id()
    out = []
    for item in items:
        record = by_path.get(item.path) if item.reader == "file" else None
        record = record or by_id.get(item.image_id) or by_id.get(PurePosixPath(item.image_id).stem)
        if record is None:
            out.append(item)
            continue
        key = keyed_hash(record.patient_id, columns.patient_secret) if columns.patient_secret else None
        out.append(replace(item, image_id=record.image_id, labels=tuple(record.labels),
                           values=tuple(record.value(name) for name in columns.names), patient_key=key))
    return out


def _sop_instance_ids(items: list[InputItem]) -> list[InputItem]:
    """DICOM files get their SOPInstanceUID as id; other items (and DICOMs without one) keep theirs."""
    out = []
    for item in items:
        uid = ""
        if item.reader == "file":
            try:
                uid = read_dicom_identifiers(item.source, name=item.path).sop_instance_uid
            except ImageDecodeError:
                pass  # not a DICOM, or unreadable: it keeps its path id (and fails at decode if it must)
        out.append(replace(item, image_id=uid) if uid else item)
    return out


def _refuse_shared_ids(items: list[InputItem], options: InputOptions) -> None:
    first: dict[str, str] = {}
    clashes: list[tuple[str, str, str]] = []
    for item in items:
        other = first.setdefault(item.image_id, item.path)
        if other != item.path:
            clashes.append((item.image_id, other, item.path))
    if clashes:
        image_id, a, b = clashes[0]
        more = f" ({len(clashes) - 1} more input(s) share an id)" if len(clashes) > 1 else ""
        hint = ("copies of one DICOM instance? use the default ids (paths)" if options.id_from == "sop-uid"
                else "give each a distinct id (label table, --id-column)")
        raise PipelineError(f"two inputs have the image id {image_id!r}: {a} and {b}{more}; {hint}")


_ID_PRECEDENCE = ("folder", "glob", "tar", "parquet", "list", "file")


def _preference(kind: str, item: InputItem) -> tuple:
    """One file reached through two INPUTs keeps one id whatever the order of the INPUTs: a folder's
    before a glob's before one named explicitly; then the id of the outermost root (the longest)."""
    return (_ID_PRECEDENCE.index(kind), -len(item.image_id), item.image_id)


def collect_items(inputs: Sequence[str | Path], label_table=None, options: InputOptions = InputOptions(),
                  columns: TableColumns = TableColumns()) -> FoundInputs:
    """Every item of every INPUT (sorted by source and position, each path once, ids unique and stable),
    and every file found that is not an item."""
    if not inputs:
        raise PipelineError("no inputs given")
    if options.id_from not in ID_SOURCES:
        raise PipelineError(f"unknown id source {options.id_from!r}; choose one of {ID_SOURCES}")
    found: dict[str, tuple[tuple, InputItem]] = {}
    not_encoded: dict[str, NotEncoded] = {}
    for entry in inputs:
        text = str(entry)
        kind = input_kind(text)
        for listed in INPUT_KINDS[kind][1](text, options):
            if isinstance(listed, NotEncoded):
                not_encoded.setdefault(listed.path, listed)
            else:
                found[listed.path] = min(found.get(listed.path, (_preference(kind, listed), listed)),
                                         (_preference(kind, listed), listed), key=lambda pair: pair[0])
    items = sorted((item for _, item in found.values()), key=InputItem.sort_key)
    if label_table is not None:
        items = _attach_table(items, label_table, columns)
    if options.id_from == "sop-uid":
        items = _sop_instance_ids(items)
    _refuse_shared_ids(items, options)
    return FoundInputs(items, sorted((n for p, n in not_encoded.items() if p not in found), key=lambda n: n.path))
