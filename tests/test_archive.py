"""Real hospital archives (issue 12): every file accounted for, checksummed shards, a clean Parquet
dataset, metadata columns without identifiers, file modes, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from medhash.cli import main
from medhash.codes_format import CodeShardError
from medhash.data.decode import read_image
from medhash.data.keyed import keyed_hash
from medhash.data.phantoms import PhantomConfig, write_phantom_dataset, write_phantom_dicom
from medhash.errors import PipelineError
from medhash.index import BuildConfig, add_codes, build_index
from medhash.model import AGHashNet, ModelConfig, load_encoder, save_checkpoint
from medhash.pipeline import EncodeJobConfig, InputOptions, collect_items, run_encode

BATCH = 8


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> list[Path]:
    folder = write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), 24, PhantomConfig(size=64, seed=11))
    return sorted((folder / "images").glob("*.png"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, phantoms) -> Path:
    """An untrained tiny model whose hash layer is centred on the phantoms, so codes vary across images."""
    torch.manual_seed(0)
    model = AGHashNet(ModelConfig(backbone="tiny", bits=32, global_size=64, local_size=64)).eval()
    with torch.no_grad():
        fused = model(torch.stack([torch.from_numpy(read_image(p))[None] for p in phantoms[:16]])).fused
        model.hash_layer.bias.copy_(-(model.hash_layer.weight @ fused.mean(0)))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, model)
    return path


def encode(cluster, model: Path, out: Path, inputs, **options):
    config = dict(model=model, out=out, inputs=tuple(map(str, inputs)), scheduler=cluster.scheduler.address,
                  engine="fp32", batch_size=BATCH, shard_size=8, progress=False, dashboard=False)
    return run_encode(EncodeJobConfig(**{**config, **options}))


def cli_args(cluster, model: Path, out: Path, *inputs, shard_size: int = 8) -> list[str]:
    return ["encode", "--model", str(model), "--out", str(out), *map(str, inputs), "--scheduler",
            cluster.scheduler.address, "--engine", "fp32", "--batch-size", str(BATCH), "--shard-size",
            str(shard_size), "--no-progress"]


def codes_of(out: Path) -> pa.Table:
    return pq.read_table(sorted(out.glob("part-*.parquet")))


def code_rows(table: pa.Table) -> dict[str, bytes]:
    return dict(zip(table.column("image_id").to_pylist(), table.column("code").to_pylist()))


def phantom_pixels(path: Path) -> np.ndarray:
    return (read_image(path) * 4095).astype(np.uint16)


# ------------------------------------------------------------------------------------------ a PACS-like tree


def pacs_tree(tmp_path: Path, phantoms: list[Path]) -> tuple[Path, dict[str, str]]:
    """The tree and, for each file, the outcome expected ("encoded" or the skip / failure kind)."""
    root = tmp_path / "pacs"
    expected: dict[str, str] = {}
    uid_files = ["1.2.840.113619.2.55.3.604688.1", "1.2.840.113619.2.55.3.604688.2", "1.2.840.113619.2.55.3.604688.3"]
    for i, name in enumerate(uid_files):
        path = root / "1.2.840.113619.2.55.3.1" / f"1.2.840.113619.2.55.3.1.{i % 2}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_phantom_dicom(path, phantom_pixels(phantoms[i]), PatientSex="F", PatientAge="045Y", ViewPosition="PA")
        expected[str(path)] = "encoded"
    for series in (1, 2):  # IM0001.001 in two series: ids must not collide
        path = root / "STUDY2" / f"SERIES{series}" / "IM0001.001"
        path.parent.mkdir(parents=True)
        write_phantom_dicom(path, phantom_pixels(phantoms[3 + series]))
        expected[str(path)] = "encoded"
    tiff = root / "scans" / "film16.tif"
    tiff.parent.mkdir()
    Image.fromarray((read_image(phantoms[7]) * 65535).astype(np.uint16)).save(tiff)
    expected[str(tiff)] = "encoded"
    corrupt = root / "STUDY3" / "1.2.840.113619.2.55.3.604688.9"
    corrupt.parent.mkdir()
    write_phantom_dicom(corrupt, phantom_pixels(phantoms[8]))
    corrupt.write_bytes(corrupt.read_bytes()[:-3000])  # pixel data cut short
    expected[str(corrupt)] = "truncated"
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    expected[str(root / ".DS_Store")] = "hidden"
    (root / "STUDY2" / "DICOMDIR.txt").write_text("export notes\n")
    expected[str(root / "STUDY2" / "DICOMDIR.txt")] = "not_an_image"
    outside = tmp_path / "outside.png"
    outside.write_bytes(phantoms[9].read_bytes())
    (root / "scans" / "link.png").symlink_to(outside)
    expected[str(root / "scans" / "link.png")] = "symlink_outside_root"
    return root, expected


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_pacs_tree_every_file_is_counted_once_with_its_reason(cluster, tiny_model, phantoms, tmp_path):
    root, expected = pacs_tree(tmp_path, phantoms)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, cli_args(cluster, tiny_model, out, root))
    assert result.exit_code == 3, result.output  # some inputs failed: the documented distinct status
    assert "10 files found: 6 encoded, 1 failed (truncated 1), 3 skipped" in result.output

    manifest = json.loads((out / "_manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["found"], counts["encoded"], counts["failed"], counts["skipped"]) == (10, 6, 1, 3)
    assert counts["skipped_by_reason"] == {"hidden": 1, "not_an_image": 1, "symlink_outside_root": 1}
    codes = codes_of(out)
    errors = pq.read_table(out / "_errors")
    outcome = {p: "encoded" for p in codes.column("path").to_pylist()}
    for path, kind in zip(errors.column("path").to_pylist(), errors.column("kind").to_pylist()):
        assert path not in outcome, f"{path} counted twice"
        outcome[path] = kind
    assert outcome == expected
    assert set(errors.column("status").to_pylist()) == {"failed", "skipped"}

    ids = codes.column("image_id").to_pylist()
    assert len(set(ids)) == len(ids) and "STUDY2/SERIES1/IM0001.001" in ids and "STUDY2/SERIES2/IM0001.001" in ids
    assert ids == [os.path.relpath(p, root) for p in codes.column("path").to_pylist()]
    reference = load_encoder(tiny_model, engine="fp32", batch_size=BATCH).encode_images(
        [read_image(p) for p in codes.column("path").to_pylist()])
    np.testing.assert_array_equal(np.stack([np.frombuffer(c, np.uint8) for c in codes.column("code").to_pylist()]),
                                  reference.codes)
    by_id = {r["image_id"]: r for r in codes.to_pylist()}
    dicom = by_id["1.2.840.113619.2.55.3.1/1.2.840.113619.2.55.3.1.0/1.2.840.113619.2.55.3.604688.1"]
    assert (dicom["modality"], dicom["patient_sex"], dicom["patient_age_years"], dicom["view_position"]) == ("DX", "F", 45, "PA")
    assert by_id["scans/film16.tif"]["modality"] is None  # not a DICOM: the DICOM columns are null

    by_sop = {os.path.relpath(i.path, root): i.image_id for i in
              collect_items([root], options=InputOptions(id_from="sop-uid")).items}
    assert by_sop.pop("scans/film16.tif") == "scans/film16.tif", "not a DICOM: keeps its path id"
    assert all(uid.startswith("1.2.826.0.1.3680043.") for uid in by_sop.values()) and len(set(by_sop.values())) == 6


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_is_reported(tmp_path, phantoms):
    root = tmp_path / "in"
    (root / "locked").mkdir(parents=True)
    shutil.copy(phantoms[0], root / "a.png")
    (root / "locked").chmod(0)
    try:
        found = collect_items([root])
    finally:
        (root / "locked").chmod(0o755)
    assert [(Path(n.path).name, n.status, n.kind) for n in found.not_encoded] == [("locked", "failed", "unreadable_folder")]


# ------------------------------------------------------------------------------------------ integrity


def flip_byte_in_data_page(path: Path) -> None:
    column = pq.read_metadata(path).row_group(0).column(pq.read_schema(path).get_field_index("code"))
    data = bytearray(path.read_bytes())
    offset = column.data_page_offset + column.total_compressed_size // 2
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def flip_one_code_bit(path: Path) -> None:
    """A valid Parquet file with the same rows and metadata, one code changed by one bit."""
    table = pq.read_table(path)
    codes = table.column("code").to_pylist()
    codes[0] = bytes([codes[0][0] ^ 1]) + codes[0][1:]
    table = table.set_column(table.schema.get_field_index("code"), table.schema.field("code"),
                             pa.array(codes, table.schema.field("code").type))
    pq.write_table(table, path, compression="zstd")


@pytest.mark.distributed
@pytest.mark.timeout(240)
@pytest.mark.parametrize("damage", [flip_byte_in_data_page, flip_one_code_bit], ids=["byte-in-page", "code-bit"])
def test_a_damaged_shard_is_refused_by_the_index_and_redone_by_a_rerun(cluster, tiny_model, phantoms, tmp_path, damage):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in phantoms:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "out"
    encode(cluster, tiny_model, out, [folder])
    good = code_rows(codes_of(out))
    build_index(out, tmp_path / "idx", BuildConfig(kind="flat"))
    damage(out / "part-00001.parquet")

    with pytest.raises(CodeShardError, match="part-00001.parquet"):
        build_index(out, tmp_path / "idx2", BuildConfig(kind="flat"))
    with pytest.raises(CodeShardError, match="part-00001.parquet"):
        add_codes(tmp_path / "idx", out, replace=True)
    result = CliRunner().invoke(main, ["index", "build", "--codes", str(out), "--out", str(tmp_path / "idx3")])
    assert result.exit_code == 1 and "part-00001.parquet" in result.output and "Traceback" not in result.output

    again = encode(cluster, tiny_model, out, [folder])
    assert (again.shards_skipped, again.shards_run) == (2, 1), "only the damaged shard is encoded again"
    assert code_rows(codes_of(out)) == good
    assert build_index(out, tmp_path / "idx2", BuildConfig(kind="flat")).count == len(phantoms)


# ------------------------------------------------------------------------------------------ a clean dataset, modes


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_output_folder_reads_as_exactly_the_codes_and_files_get_umask_modes(tiny_model, phantoms, tmp_path):
    import importlib.util

    import duckdb
    import pyarrow.dataset as ds

    folder = tmp_path / "in"
    folder.mkdir()
    for path in phantoms[:12]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.png").write_bytes(phantoms[0].read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "medhash", "encode", "--model", str(tiny_model), "--out", str(out), str(folder),
            "--workers", "1", "--engine", "fp32", "--batch-size", str(BATCH), "--shard-size", "5", "--no-progress"]
    job = subprocess.run(args, capture_output=True, text=True, timeout=200, preexec_fn=lambda: os.umask(0o022))
    assert job.returncode == 3, job.stdout + job.stderr
    assert "1 input(s) failed" in job.stderr

    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.relative_to(out).parts[0] for p in files} >= {"_errors", "_stats", "_plan.json", "_manifest.json"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}

    expected = codes_of(out)
    assert expected.num_rows == 12
    dataset = ds.dataset(out).to_table()
    assert dataset.num_rows == 12 and dataset.column_names == expected.column_names
    if importlib.util.find_spec("pandas"):  # not a dependency of medhash; checked where installed
        import pandas as pd

        assert sorted(pd.read_parquet(out)["image_id"]) == sorted(expected.column("image_id").to_pylist())
    rows = duckdb.sql(f"SELECT image_id FROM read_parquet('{out}/*.parquet') ORDER BY image_id").fetchall()
    assert [r[0] for r in rows] == sorted(expected.column("image_id").to_pylist())


# ------------------------------------------------------------------------------------------ the shared DICOM samples

DISTINCTIVE = {
    "PatientName": "Quixotic^Zebulon",
    "PatientID": "PID-ZX-884213",
    "PatientBirthDate": "19230417",
    "StudyDate": "20011109",
    "SeriesDate": "20011110",
    "AccessionNumber": "ACC-QZ-55123",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.777111",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.777222",
}


def renamed_samples(shared_data: Path, folder: Path, identify: bool) -> dict[str, Path]:
    """The 6 samples under UID-style names without suffix; identify=True plants distinctive identifiers."""
    import pydicom

    folder.mkdir(parents=True)
    names = {}
    for i, sample in enumerate(sorted((shared_data / "dicom-samples").glob("*.dcm"))):
        target = folder / f"1.3.46.670589.30.{i + 1}.{7000 + i}"
        if identify:
            ds = pydicom.dcmread(sample)
            for key, value in DISTINCTIVE.items():
                setattr(ds, key, value)
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.999{i}"
            ds.save_as(target)
        else:
            shutil.copy(sample, target)
        names[sample.stem] = target
    return names


@pytest.mark.shared
@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_shared_dicom_samples_carry_metadata_and_no_identifier(cluster, shared_data, tiny_model, tmp_path):
    plain = renamed_samples(shared_data, tmp_path / "plain", identify=False)
    with pytest.raises(PipelineError, match="two inputs have the image id '1.3.6.1.4.1.11129.5.5.1105"):
        collect_items([tmp_path / "plain"], options=InputOptions(id_from="sop-uid"))
    refused = CliRunner().invoke(main, cli_args(cluster, tiny_model, tmp_path / "refused", tmp_path / "plain") + ["--id-from", "sop-uid"])
    assert refused.exit_code == 1 and "two inputs have the image id" in refused.output
    assert str(plain["test1"]) in refused.output or str(plain["test4"]) in refused.output
    assert not list((tmp_path / "refused").glob("part-*")), "refused before any encoding"

    samples = renamed_samples(shared_data, tmp_path / "archive", identify=True)
    secret = tmp_path / "secret"
    secret.write_text("site-secret-42\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, cli_args(cluster, tiny_model, out, tmp_path / "archive")
                                + ["--patient-key-secret-file", str(secret)])
    assert result.exit_code == 0, result.output
    rows = {r["path"]: r for r in codes_of(out).to_pylist()}
    assert len(rows) == 6
    test5 = rows[str(samples["test5"])]
    assert (test5["modality"], test5["patient_sex"], test5["patient_age_years"]) == ("CT", "M", 81)
    assert rows[str(samples["test2"])]["view_position"] == "AP"
    assert rows[str(samples["test6"])]["view_position"] == "XX"  # the header's PatientPosition
    assert rows[str(samples["test4"])]["body_part"] == "RIBCAGE"
    assert {r["patient_key"] for r in rows.values()} == {keyed_hash(DISTINCTIVE["PatientID"], b"site-secret-42")}

    needles = [v.encode() for v in DISTINCTIVE.values()] + [b"site-secret-42", b"1.2.826.0.1.3680043.8.498.999"]
    for path in (p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        texts = [data]
        if path.suffix == ".parquet":  # column pages are compressed: also look at the decoded values
            table = pq.read_table(path)
            texts += [str(table.to_pylist()).encode(), str(pq.read_metadata(path).metadata).encode(),
                      str(table.schema).encode()]
        for needle in needles:
            assert not any(needle in text for text in texts), f"{needle!r} in {path}"


# ------------------------------------------------------------------------------------------ options


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_label_table_columns_and_keyed_patient_ids(cluster, tiny_model, phantoms, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in phantoms[:6]:
        shutil.copy(path, folder / path.name)
    table = tmp_path / "labels.csv"
    lines = ["image_id,file,patient_id,labels,view,age,sex"]
    lines += [f"{p.stem},in/{p.name},P-{i // 2}-SECRETID,No Finding,PA,{40 + i},F" for i, p in enumerate(phantoms[:6])]
    table.write_text("\n".join(lines) + "\n")

    with pytest.raises(PipelineError, match="patient_id is an identifier"):
        encode(cluster, tiny_model, tmp_path / "o1", [folder], labels=table, columns=("view", "patient_id"))
    summary = encode(cluster, tiny_model, tmp_path / "out", [folder], labels=table,
                     columns=("view", "age", "sex", "patient_id"), patient_secret=b"k")
    assert summary.encoded == 6
    codes = codes_of(tmp_path / "out")
    assert "patient_id" not in codes.column_names
    first = codes.to_pylist()[0]
    assert (first["image_id"], first["view"], first["age"], first["sex"]) == (phantoms[0].stem, "PA", "40", "F")
    assert first["patient_key"] == keyed_hash("P-0-SECRETID", b"k")
    for path in (p for p in (tmp_path / "out").rglob("*") if p.is_file()):
        assert b"SECRETID" not in path.read_bytes(), path
    with pytest.raises(PipelineError, match="another job"):
        encode(cluster, tiny_model, tmp_path / "out", [folder], labels=table,
               columns=("view", "age", "sex", "patient_id"), patient_secret=b"other")


@pytest.mark.parametrize("option", ["--batch-size", "--workers"])
def test_zero_batch_size_or_workers_is_refused_in_one_line(tiny_model, tmp_path, option):
    result = CliRunner().invoke(main, ["encode", "--model", str(tiny_model), "--out", str(tmp_path / "o"),
                                       str(tmp_path), option, "0"])
    assert result.exit_code == 2 and "0 is not in the range x>=1" in result.output
    assert "Traceback" not in result.output
