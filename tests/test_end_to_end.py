"""The stages joined: phantoms -> checkpoint -> Dask encode -> FAISS index -> query (library and CLI)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from medhash.cli import main
from medhash.data import read_image, read_label_table
from medhash.data.phantoms import PhantomConfig, write_phantom_dataset
from medhash.index import BuildConfig, HammingIndex, build_index
from medhash.app.query import query_images
from medhash.model import AGHashNet, ModelConfig, load_encoder, save_checkpoint
from medhash.pipeline import EncodeJobConfig, run_encode

# Every test needs the module's archive, whose codes come from a Dask encode job (a LocalCluster).
pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = write_phantom_dataset(root / "phantoms", 40, PhantomConfig(size=64, seed=5))
    torch.manual_seed(0)
    model_path = root / "model.pt"
    save_checkpoint(model_path, AGHashNet(ModelConfig(backbone="tiny", bits=32, global_size=64, local_size=48, fusion_dim=32)).eval())
    summary = run_encode(EncodeJobConfig(model=str(model_path), out=str(root / "codes"), inputs=(str(data / "images"),),
                                         labels=str(data / "labels.csv"), shard_size=16, workers=1, engine="fp32",
                                         progress=False, dashboard=False))
    build_index(root / "codes", root / "index", BuildConfig(kind="flat"))
    return root, data, model_path, summary


def test_pipeline_codes_match_in_process_encoder_and_index(archive):
    root, data, model_path, summary = archive
    assert summary.encoded == 40 and summary.failed == 0 and summary.shards == 3
    table = pq.read_table(sorted((root / "codes").glob("part-[0-9][0-9][0-9][0-9][0-9].parquet")))
    assert table.num_rows == 40 and len(set(table["image_id"].to_pylist())) == 40
    labels = read_label_table(data / "labels.csv").by_id()
    for image_id, labs in zip(table["image_id"].to_pylist(), table["labels"].to_pylist()):
        assert tuple(labs) == labels[image_id].labels
    encoder = load_encoder(model_path, engine="fp32")
    paths = table["path"].to_pylist()[:8]
    expected = encoder.encode_images([read_image(p) for p in paths]).codes
    got = np.stack([np.frombuffer(c, np.uint8) for c in table["code"].to_pylist()[:8]])
    assert np.array_equal(got, expected)
    index = HammingIndex(root / "index")
    assert index.model_id == encoder.model_id and index.bits == 32 and len(index) == 40


def test_query_finds_the_archived_image_itself(archive):
    root, data, model_path, _ = archive
    records = read_label_table(data / "labels.csv").records[:3]
    results = query_images(root / "index", model_path, [r.path for r in records], k=5, with_ties=True,
                           overlay_dir=root / "overlays")
    for rec, res in zip(records, results):
        assert res.error is None and res.hits[0].distance == 0
        assert rec.image_id in [h.image_id for h in res.hits if h.distance == 0]
        assert [h.distance for h in res.hits] == sorted(h.distance for h in res.hits)
    assert len(list((root / "overlays").glob("*.png"))) >= 3


def test_query_cli_json_and_wrong_model_refused(archive, tmp_path):
    root, data, model_path, _ = archive
    image = read_label_table(data / "labels.csv").records[0].path
    out = CliRunner().invoke(main, ["query", "--index", str(root / "index"), "--model", str(model_path), str(image), "-k", "3", "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)["results"]
    assert payload[0]["hits"][0]["distance"] == 0 and len(payload[0]["hits"]) >= 3
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_checkpoint(other, AGHashNet(ModelConfig(backbone="tiny", bits=32, global_size=64, local_size=48, fusion_dim=32)))
    bad = CliRunner().invoke(main, ["query", "--index", str(root / "index"), "--model", str(other), str(image)])
    assert bad.exit_code != 0 and "is not the model" in (bad.output + str(bad.exception))
