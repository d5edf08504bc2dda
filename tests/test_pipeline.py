"""The Dask encoding pipeline on 64-px phantoms and a tiny untrained model.

One LocalCluster (2 worker processes) is shared by the module; jobs reach it through `scheduler=`
(the `--scheduler` path). The killed-run test starts its own LocalCluster in a subprocess (the
default path of `medhash encode`).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from medhash.data.decode import DECODE_ERROR_KINDS, read_image
from medhash.data.labels import read_label_table
from medhash.data.phantoms import PhantomConfig, write_phantom_dataset, write_phantom_dicom
from medhash.errors import PipelineError
from medhash.model import AGHashNet, ModelConfig, load_encoder, save_checkpoint
from medhash.pipeline import EncodeJobConfig, InputOptions, OutputSpec, collect_items, cut_into_shards, encode_shard, run_encode
from medhash.pipeline.runner import FAULT_KILL_DRIVER_AFTER
from medhash.pipeline.shard import FAULT_KILL_WORKER_ONCE

BATCH = 8
SHARD = 16  # a multiple of BATCH: in-process batches then line up with the pipeline's


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), 40, PhantomConfig(size=64, seed=5))


def _tiny_checkpoint(path: Path, images: list[np.ndarray], seed: int) -> Path:
    """An untrained tiny model whose hash layer is centred on these images, so its bits vary across images
    (an untrained net maps every phantom to nearly the same fused vector, hence to one code)."""
    torch.manual_seed(seed)
    model = AGHashNet(ModelConfig(backbone="tiny", bits=32, global_size=64, local_size=64)).eval()
    with torch.no_grad():
        fused = model(torch.stack([torch.from_numpy(im)[None] for im in images])).fused
        model.hash_layer.bias.copy_(-(model.hash_layer.weight @ fused.mean(0)))
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="module")
def image_files(phantoms) -> list[Path]:
    return sorted((phantoms / "images").glob("*.png"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, image_files) -> Path:
    images = [read_image(p) for p in image_files[:16]]
    return _tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", images, seed=0)


def encode(cluster, model: Path, out: Path, inputs, **options):
    cluster.wait_for_workers(1)
    config = dict(model=model, out=out, inputs=tuple(map(str, inputs)), scheduler=cluster.scheduler.address,
                  engine="fp32", batch_size=BATCH, shard_size=SHARD, progress=False, dashboard=False)
    return run_encode(EncodeJobConfig(**{**config, **options}))


def read_codes(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*[0-9].parquet"))])


def read_errors(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("_errors/part-*.parquet"))])


def reference(model: Path, images: list[np.ndarray]):
    return load_encoder(model, engine="fp32", batch_size=BATCH).encode_images(images)


def code_bytes(table: pa.Table) -> np.ndarray:
    return np.array([np.frombuffer(c, np.uint8) for c in table.column("code").to_pylist()])


# ------------------------------------------------------------------------------------------ inputs (no cluster)


def test_inputs_are_sorted_deduplicated_and_typed(tmp_path, image_files):
    root = tmp_path / "archive"
    (root / "b" / ".hidden").mkdir(parents=True)
    (root / "a").mkdir()
    for i, src in enumerate(image_files[:4]):
        (root / ("a" if i % 2 else "b") / src.name).write_bytes(src.read_bytes())
    (root / "b" / ".hidden" / "x.png").write_bytes(image_files[5].read_bytes())
    (root / "notes.csv").write_text("not an image")
    (root / "IM0001").write_bytes(image_files[6].read_bytes())  # DICOM-style name without suffix
    listing = tmp_path / "more.txt"
    listing.write_text(f"# comment\n\narchive/a/{image_files[1].name}\n{root / 'b' / image_files[0].name}\nmissing.png\n")

    found = collect_items([root, str(root / "a" / "*.png"), listing])
    items = found.items
    paths = [i.path for i in items]
    assert paths == sorted(set(paths)), "sorted, each path once although three inputs overlap"
    assert not any(".hidden" in p or p.endswith(".csv") for p in paths)
    assert str(root / "IM0001") in paths and str(tmp_path / "missing.png") in paths
    ids = {i.path: i.image_id for i in items}
    assert ids[str(root / "a" / image_files[1].name)] == f"a/{image_files[1].name}", "ids: paths below the root"
    assert ids[str(root / "IM0001")] == "IM0001" and ids[str(tmp_path / "missing.png")] == "missing.png"
    assert {(n.kind, Path(n.path).name) for n in found.not_encoded} == {("hidden", ".hidden"), ("not_an_image", "notes.csv")}
    assert collect_items([listing, root]) == found, "same items whatever the input order"

    shards = cut_into_shards(items, 3)
    assert [len(s) for s in shards] == [3] * (len(items) // 3) + ([len(items) % 3] if len(items) % 3 else [])
    assert [s.name for s in shards][:2] == ["part-00000", "part-00001"]
    with pytest.raises(PipelineError, match="no such file"):
        collect_items([tmp_path / "nope"])
    with pytest.raises(PipelineError, match="matches no files"):
        collect_items([str(tmp_path / "*.jpeg")])


def test_parquet_input_needs_an_unambiguous_bytes_column(tmp_path):
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": pa.array([b"x"]), "b": pa.array([b"y"])}), table)
    with pytest.raises(PipelineError, match="--bytes-column"):
        collect_items([table])
    items = collect_items([table], options=InputOptions(bytes_column="b")).items
    assert [(i.path.endswith("::row=0"), i.image_id, i.locator[2]) for i in items] == [(True, "t-0", "b")]


def test_encode_shard_in_process_isolates_an_image_the_model_rejects(tiny_model, image_files, tmp_path):
    odd = tmp_path / "odd.png"
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(odd)
    real = load_encoder(tiny_model, engine="fp32", batch_size=4)

    class PickyEncoder:  # the real encoder, except that a batch holding a 7x7 image raises
        model_id, batch_size = real.model_id, real.batch_size

        def encode_images(self, images, with_features=False):
            if any(image.shape == (7, 7) for image in images):
                raise RuntimeError("7x7 refused")
            return real.encode_images(images, with_features)

    shard = cut_into_shards(collect_items([*image_files[:5], odd]).items, 10)[0]
    output = OutputSpec(real.model_id, real.bits, "fp32", with_labels=False, store_features=True)
    stats = encode_shard(shard, PickyEncoder, tmp_path / "out", output)
    assert (stats.items, stats.encoded, stats.failed, stats.failed_by_kind) == (6, 5, 1, {"encode_failed": 1})
    assert json.loads((tmp_path / "out" / "_stats" / "part-00000.json").read_text())["encoded"] == 5
    errors = pq.read_table(tmp_path / "out" / "_errors" / "part-00000.parquet").to_pylist()
    assert errors == [{"path": str(odd), "image_id": "odd.png", "status": "failed", "kind": "encode_failed",
                       "message": "RuntimeError: 7x7 refused"}]
    table = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert table.schema.field("features").type == pa.list_(pa.float16())
    by_id = dict(zip(table.column("image_id").to_pylist(), code_bytes(table)))
    expected = real.encode_images([read_image(p) for p in image_files[:5]], with_features=True)
    np.testing.assert_array_equal(np.array([by_id[p.name] for p in image_files[:5]]), expected.codes)
    features = np.array(table.column("features").to_pylist(), np.float32)
    order = [table.column("image_id").to_pylist().index(p.name) for p in image_files[:5]]
    np.testing.assert_allclose(features[order], expected.features, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------ jobs


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_cli_with_scheduler_matches_in_process_encode_and_reruns_identically(cluster, tiny_model, phantoms, image_files, tmp_path):
    from medhash.cli import main

    outs = [tmp_path / "run1", tmp_path / "run2"]
    for out in outs:
        args = ["encode", "--model", str(tiny_model), "--out", str(out), str(phantoms / "images"),
                "--labels", str(phantoms / "labels.csv"), "--scheduler", cluster.scheduler.address,
                "--engine", "fp32", "--batch-size", str(BATCH), "--shard-size", str(SHARD), "--no-progress"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert "40 files found: 40 encoded, 0 failed, 0 skipped" in result.output

    first, second = read_codes(outs[0]), read_codes(outs[1])
    assert first.equals(second, check_metadata=True), "two runs write identical Parquet content"
    assert len(list(outs[0].glob("part-*[0-9].parquet"))) == 3  # 40 images / 16 per shard

    schema = first.schema
    assert schema.field("image_id").type == pa.string() and schema.field("path").type == pa.string()
    assert schema.field("code").type == pa.binary(4)
    assert schema.field("box").type == pa.list_(pa.int32(), 4)
    assert schema.field("labels").type == pa.list_(pa.string())
    meta = pq.read_metadata(next(outs[0].glob("part-00000.parquet"))).metadata
    assert meta[b"medhash.model_id"].decode() == load_encoder(tiny_model).model_id and meta[b"medhash.bits"] == b"32"

    expected = reference(tiny_model, [read_image(p) for p in image_files])
    codes = code_bytes(first)
    assert len(set(map(bytes, codes))) > 10, "the test model must give varied codes for this check to mean anything"
    np.testing.assert_array_equal(codes, expected.codes)
    np.testing.assert_array_equal(np.array(first.column("box").to_pylist()), expected.boxes)
    table = read_label_table(phantoms / "labels.csv")
    assert first.column("image_id").to_pylist() == [r.image_id for r in table.records]
    assert first.column("labels").to_pylist() == [list(r.labels) for r in table.records]
    assert first.column("path").to_pylist() == [str(p) for p in image_files]

    manifest = json.loads((outs[0] / "_manifest.json").read_text())
    assert manifest["counts"]["found"] == manifest["counts"]["encoded"] == 40
    assert [s["name"] for s in manifest["shards"]] == ["part-00000", "part-00001", "part-00002"]


def _corrupt_files(folder: Path, good_png: bytes) -> dict[str, bytes]:
    jpeg = io.BytesIO()
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(jpeg, format="JPEG")
    return {
        "bad_truncated.png": good_png[: len(good_png) // 2],
        "bad_random.png": bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)),
        "bad_empty.png": b"",
        "bad_text.jpg": b"this is not a jpeg at all\n" * 4,
        "bad_cut.jpg": jpeg.getvalue()[:120],
    }


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_corrupt_files_land_in_error_files_and_counts_reconcile(cluster, tiny_model, tmp_path):
    folder = write_phantom_dataset(tmp_path / "ph", 195, PhantomConfig(size=64, seed=9)) / "images"
    corrupt = _corrupt_files(folder, next(folder.glob("*.png")).read_bytes())
    for name, data in corrupt.items():
        (folder / name).write_bytes(data)

    summary = encode(cluster, tiny_model, tmp_path / "out", [folder], shard_size=50)
    assert (summary.found, summary.encoded, summary.failed, summary.skipped) == (200, 195, 5, 0)
    errors = read_errors(tmp_path / "out")
    assert sorted(Path(p).name for p in errors.column("path").to_pylist()) == sorted(corrupt)
    assert set(errors.column("kind").to_pylist()) <= set(DECODE_ERROR_KINDS)
    by_name = {Path(p).name: (k, m) for p, k, m in zip(*(errors.column(c).to_pylist() for c in ("path", "kind", "message")))}
    assert by_name["bad_empty.png"][0] == "empty" and by_name["bad_text.jpg"][0] == "not_an_image"
    assert by_name["bad_truncated.png"][0] == "truncated" and all(m for _, m in by_name.values())
    assert read_codes(tmp_path / "out").num_rows == 195
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["found"] == counts["encoded"] + counts["failed"] + counts["skipped"] == 200
    assert sum(counts["failed_by_kind"].values()) == 5
    assert sum(s["items"] for s in manifest["shards"]) == 200


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_tar_shards_and_parquet_bytes_are_inputs(cluster, tiny_model, phantoms, image_files, tmp_path):
    tar_files, table_files = image_files[:12], image_files[12:24]
    archive = tmp_path / "shard-000.tar"
    with tarfile.open(archive, "w") as tar:
        for path in tar_files:  # WebDataset layout: key.png + key.cls
            tar.add(path, arcname=f"{path.stem}.png")
            info = tarfile.TarInfo(f"{path.stem}.cls")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"0"))
    table = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image_id": [p.stem for p in table_files], "image": [p.read_bytes() for p in table_files]}),
                   table, row_group_size=5)

    summary = encode(cluster, tiny_model, tmp_path / "out", [table, archive], labels=phantoms / "labels.csv")
    assert (summary.found, summary.encoded, summary.failed) == (24, 24, 0)
    out = read_codes(tmp_path / "out")
    ordered = sorted([(str(archive), p) for p in tar_files] + [(str(table), p) for p in table_files])
    assert out.column("image_id").to_pylist() == [p.stem for _, p in ordered]
    paths = out.column("path").to_pylist()  # sorted by source: images.parquet < shard-000.tar
    assert (paths[0], paths[11]) == (f"{table}::row=0", f"{table}::row=11")
    assert paths[12] == f"{archive}::{tar_files[0].stem}.png"
    labels = {r.image_id: list(r.labels) for r in read_label_table(phantoms / "labels.csv").records}
    assert out.column("labels").to_pylist() == [labels[p.stem] for _, p in ordered]
    expected = reference(tiny_model, [read_image(p) for _, p in ordered])
    np.testing.assert_array_equal(code_bytes(out), expected.codes)


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_other_model_is_refused_overwrite_restarts_and_dicom_identity_stays_out(cluster, tiny_model, image_files, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in image_files[:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    pixels = (np.random.default_rng(0).random((64, 64)) * 4000).astype(np.uint16)
    write_phantom_dicom(folder / "study7.dcm", pixels, PatientID="PID-88412-X", PatientName="Doe^Jane",
                        PatientBirthDate="19700101")
    out = tmp_path / "out"
    first = encode(cluster, tiny_model, out, [folder], shard_size=4)
    assert (first.encoded, first.shards) == (7, 2)
    assert "study7.dcm" in read_codes(out).column("image_id").to_pylist()
    for path in (p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert b"PID-88412-X" not in data and b"Doe^Jane" not in data and b"19700101" not in data, path

    again = encode(cluster, tiny_model, out, [folder], shard_size=4)
    assert (again.shards_skipped, again.shards_run) == (2, 0), "a finished folder is not redone"
    (out / "_stats" / "part-00001.json").unlink()  # as if killed between the shard's files
    redo = encode(cluster, tiny_model, out, [folder], shard_size=4)
    assert (redo.shards_skipped, redo.shards_run) == (1, 1)

    other = _tiny_checkpoint(tmp_path / "other.pt", [read_image(p) for p in image_files[:8]], seed=1)
    with pytest.raises(PipelineError, match="model"):
        encode(cluster, other, out, [folder], shard_size=4)
    with pytest.raises(PipelineError, match="shard_size"):
        encode(cluster, tiny_model, out, [folder], shard_size=5)
    replaced = encode(cluster, other, out, [folder], shard_size=3, overwrite=True)
    assert (replaced.shards, replaced.encoded, replaced.model_id) == (3, 7, load_encoder(other).model_id)
    assert {pq.read_metadata(p).metadata[b"medhash.model_id"].decode() for p in out.glob("part-*.parquet")} == {replaced.model_id}


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_worker_killed_mid_task_is_retried(cluster, tiny_model, image_files, tmp_path):
    marker = tmp_path / "killed-once"
    # Lambdas travel by value; os.environ's bound methods would travel as a copy of this process's environ.
    cluster.run(lambda key=FAULT_KILL_WORKER_ONCE, value=str(marker): os.environ.__setitem__(key, value))
    try:
        summary = encode(cluster, tiny_model, tmp_path / "out", image_files[:32])
    finally:
        cluster.run(lambda key=FAULT_KILL_WORKER_ONCE: os.environ.pop(key, None))
    assert marker.exists(), "a worker process was killed inside a task"
    assert (summary.found, summary.encoded, summary.shards_run) == (32, 32, 2)
    ids = read_codes(tmp_path / "out").column("image_id").to_pylist()
    assert sorted(ids) == sorted(p.name for p in image_files[:32])


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_killed_job_resumes_and_writes_every_image_once(cluster, tiny_model, phantoms, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "medhash", "encode", "--model", str(tiny_model), "--out", str(out),
            str(phantoms / "images"), "--shard-size", "8", "--workers", "1", "--engine", "fp32",
            "--batch-size", str(BATCH), "--no-progress"]
    env = {**os.environ, FAULT_KILL_DRIVER_AFTER: "2"}
    job = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output = job.communicate(timeout=150)[0].decode(errors="replace")
    finally:
        try:  # the driver killed itself; its LocalCluster's processes are in its process group
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert job.returncode == -signal.SIGKILL, output
    assert (out / "_plan.json").exists() and not (out / "_manifest.json").exists()
    finished = len(list(out.glob("_stats/part-*.json")))
    assert 2 <= finished < 5, output

    summary = encode(cluster, tiny_model, out, [phantoms / "images"], shard_size=8)
    assert summary.shards_skipped == finished and summary.shards_run == 5 - finished
    ids = read_codes(out).column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 40
    assert not list(out.rglob(".*.tmp")), "temp files of the killed run are cleaned up"
    deadline = time.time() + 10
    while time.time() < deadline:  # the killed job's worker processes are gone too
        try:
            os.killpg(job.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("processes of the killed job are still running")
