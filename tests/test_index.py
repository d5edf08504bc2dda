"""FAISS binary indexes: build from Parquet shards, exact/approximate top-k with ties, add/remove, manifests, query."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from medhash.codes_format import write_code_shard, write_codes_manifest
from medhash.errors import CodeShardError, DuplicateImageIdError, IndexManifestError
from medhash.index import (IDS_FILE, INDEX_FILE, KINDS, MANIFEST_FILE, BuildConfig, HammingIndex, Hits, ThreadPolicy,
                           build_index, gpu_support, index_info)
from medhash.index._search import ExactScan, ScanPool, omp_threads
from medhash.index._store import lean_arrow_memory, sha256_file

BITS = 64
MODEL = "model-test-1"
# Two search threads and tiny shards, so the parallel code paths run on test-sized data.
TWO_THREADS = ThreadPolicy(search_threads=2, min_rows_per_thread=300, fan_out="always")


# -- helpers ------------------------------------------------------------------------------------
def write_codes(folder: Path, codes: np.ndarray, ids: list[str] | None = None, *, model_id: str = MODEL,
                bits: int = BITS, per_shard: int = 400) -> list[str]:
    """Shards in the codes format (medhash.codes_format): image_id, path, code, box, labels + metadata + _manifest.json."""
    ids = ids or [f"img{i:05d}" for i in range(len(codes))]
    for shard, start in enumerate(range(0, len(codes), per_shard)):
        part = slice(start, start + per_shard)
        n = len(codes[part])
        rows = np.arange(start, start + n)
        write_code_shard(folder / f"part-{shard:05d}.parquet", model_id=model_id, bits=bits, image_ids=ids[part],
                         paths=[f"images/{i}.png" for i in ids[part]], codes=codes[part],
                         boxes=np.stack([rows % 7, rows % 5, 20 + rows % 7, 30 + rows % 5], axis=1),
                         labels=[("Mass",) if r % 2 else ("No Finding",) for r in rows])
    write_codes_manifest(folder, model_id=model_id, bits=bits)
    return ids


def random_codes(rng, n: int, bits: int = BITS) -> np.ndarray:
    return rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)


def clustered_codes(rng, n: int, centers: int = 12, flip: float = 0.04, bits: int = BITS) -> np.ndarray:
    base = rng.integers(0, 2, (centers, bits), dtype=np.uint8)
    noisy = base[rng.integers(0, centers, n)] ^ (rng.random((n, bits)) < flip)
    return np.packbits(noisy.astype(np.uint8), axis=1)


def hamming(codes: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.unpackbits(codes ^ q, axis=1).sum(axis=1)


def assert_exact(hits, codes: np.ndarray, ids: list[str], q: np.ndarray, k: int, with_ties: bool) -> None:
    truth = hamming(codes, q)
    kth = np.sort(truth)[min(k, len(truth)) - 1]
    assert np.array_equal(truth[hits.rows], hits.distances), "returned distances are the true ones"
    assert [ids[r] for r in hits.rows] == hits.image_ids
    assert list(hits.distances) == sorted(hits.distances)
    if with_ties:
        assert set(hits.rows.tolist()) == set(np.flatnonzero(truth <= kth).tolist())
    else:
        assert len(hits.rows) == min(k, len(truth)) and len(set(hits.rows.tolist())) == len(hits.rows)
        assert np.array_equal(np.sort(truth)[:k], hits.distances)


def tie_aware_recall(hits, codes, q, k) -> float:
    kth = np.sort(hamming(codes, q))[k - 1]
    return float((hits.distances[:k] <= kth).sum()) / k


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("codes")
    out = {}
    for name, codes in (("random", random_codes(rng, 1200)), ("clustered", clustered_codes(rng, 1200))):
        out[name] = (codes, write_codes(root / name, codes), root / name)
    return out


def queries_for(codes: np.ndarray, rng) -> np.ndarray:
    return np.concatenate([codes[rng.choice(len(codes), 4, replace=False)], random_codes(rng, 2),
                           codes[:2] ^ np.uint8(1)])


# -- build ---------------------------------------------------------------------------------------
def test_build_writes_folder_bound_to_model_and_bits(data, tmp_path):
    codes, ids, folder = data["random"]
    manifest = build_index(folder, tmp_path / "idx", BuildConfig(kind="flat"))
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == sorted([INDEX_FILE, IDS_FILE, MANIFEST_FILE])
    on_disk = json.loads((tmp_path / "idx" / MANIFEST_FILE).read_text())
    assert on_disk["model_id"] == MODEL and on_disk["bits"] == BITS and on_disk["kind"] == "flat"
    assert on_disk["count"] == len(codes) == manifest.count
    assert on_disk["files"][INDEX_FILE] == sha256_file(tmp_path / "idx" / INDEX_FILE)
    assert on_disk["faiss_version"] and on_disk["medhash_version"] and on_disk["created_at"]
    table = pq.read_table(tmp_path / "idx" / IDS_FILE)
    assert table.column_names == ["label", "image_id", "path", "labels", "box"]
    assert table.column("image_id").to_pylist() == ids
    assert table.column("box").to_pylist()[8] == [1, 3, 21, 33]
    with pytest.raises(IndexManifestError, match="already exists"):
        build_index(folder, tmp_path / "idx", BuildConfig(kind="flat"))
    build_index(folder, tmp_path / "idx", BuildConfig(kind="flat", overwrite=True))


def test_parameters_are_chosen_from_the_size():
    small, large = KINDS["ivf"].default_params(10_000, 64), KINDS["ivf"].default_params(1_000_000, 64)
    assert small["nlist"] < large["nlist"] == 4096 == KINDS["ivf"].default_params(10_000_000, 64)["nlist"]
    mih = KINDS["multihash"].default_params(1_000_000, 64)
    assert mih["nhash"] * mih["b"] <= 64 and mih["b"] == 16
    assert KINDS["multihash"].default_params(1_000, 64)["b"] < mih["b"]


# -- exact search --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,params,search_kw", [
    ("flat", {}, {}),
    ("multihash", {}, {}),
    ("multihash", {"nflip": 0, "max_nflip": 8, "budget": 1e9}, {}),  # forces the pigeonhole-certified path
    ("ivf", {"nlist": 16}, {"nprobe": 16}),  # nprobe = nlist visits everything: exact
])
@pytest.mark.parametrize("dataset", ["random", "clustered"])
def test_exact_kinds_return_exact_top_k(data, tmp_path, kind, params, search_kw, dataset):
    codes, ids, folder = data[dataset]
    build_index(folder, tmp_path / "idx", BuildConfig(kind=kind, params=params))
    index = HammingIndex(tmp_path / "idx", policy=TWO_THREADS)
    queries = queries_for(codes, np.random.default_rng(1))
    for k in (1, 10, 50):
        for with_ties in (False, True):
            batch = index.search(queries, k, with_ties=with_ties, **search_kw)
            assert len(batch) == len(queries)
            for q, hits in zip(queries, batch):
                assert_exact(hits, codes, ids, q, k, with_ties)
            single = index.search(queries[0], k, with_ties=with_ties, **search_kw)
            assert_exact(single[0], codes, ids, queries[0], k, with_ties)
    if kind == "multihash" and params and dataset == "clustered":
        # clustered codes are close: most queries must be certified without the flat fallback
        assert index._searcher.fallbacks < len(queries) * 6


def test_exact_scan_sampled_radius_shards_and_ties():
    rng = np.random.default_rng(3)
    import faiss

    codes = random_codes(rng, 20_000)
    flat = faiss.IndexBinaryFlat(BITS)
    flat.add(codes)
    scan = ExactScan(flat, TWO_THREADS, sample_rows=256)
    assert len(scan.shards) == 2 and scan.sample is not None
    ids = [str(i) for i in range(len(codes))]
    queries = np.concatenate([random_codes(rng, 3), codes[:2]])
    for k in (1, 10, 100, 20_000):
        for with_ties in (False, True):
            for q, (dist, labels) in zip(queries, scan.search(queries, k, with_ties)):
                assert_exact(Hits([ids[i] for i in labels], dist, labels), codes, ids, q, k, with_ties)
            dist, labels = scan.search(queries[:1], k, with_ties)[0]
            assert np.array_equal(dist, np.sort(hamming(codes, queries[0]))[:len(dist)])


def test_hnsw_recall_is_reasonable(data, tmp_path):
    codes, ids, folder = data["clustered"]
    build_index(folder, tmp_path / "idx", BuildConfig(kind="hnsw"))
    index = HammingIndex(tmp_path / "idx")
    queries = queries_for(codes, np.random.default_rng(2))
    recalls = [tie_aware_recall(h, codes, q, 10) for q, h in zip(queries, index.search(queries, 10, ef_search=200))]
    assert np.mean(recalls) >= 0.9
    assert all(len(h.rows) == 10 for h in index.search(queries, 10, ef_search=10))  # ef below k is raised to k


@pytest.mark.parametrize("kind,search_kw", [("flat", {}), ("multihash", {}), ("ivf", {"nprobe": 10_000}),
                                            ("hnsw", {"ef_search": 400})])
def test_with_ties_returns_every_item_tied_with_the_kth(tmp_path, kind, search_kw):
    rng = np.random.default_rng(4)
    codes = random_codes(rng, 500)
    codes[100:160] = codes[0]  # 61 copies of one code
    ids = write_codes(tmp_path / "codes", codes)
    build_index(tmp_path / "codes", tmp_path / "idx", BuildConfig(kind=kind))
    index = HammingIndex(tmp_path / "idx")
    tied = index.search(codes[0], 5, with_ties=True, **search_kw)[0]
    copies = {0, *range(100, 160)}
    assert (tied.distances == 0).all() and set(tied.rows.tolist()) <= copies
    if kind == "hnsw":  # approximate: a graph over 61 identical points may not reach them all
        assert len(tied.rows) >= 55
    else:
        assert set(tied.rows.tolist()) == copies
    plain = index.search(codes[0], 5, **search_kw)[0]
    assert len(plain.rows) == 5 and set(plain.image_ids) <= {ids[r] for r in tied.rows}
    assert list(plain.rows) == sorted(plain.rows)  # ties come back in row order


# -- maintenance ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ids_map_back_after_add_and_remove(tmp_path, kind):
    rng = np.random.default_rng(5)
    codes = random_codes(rng, 700)
    old_ids = write_codes(tmp_path / "a", codes[:600])
    new_ids = write_codes(tmp_path / "b", codes[600:], [f"new{i}" for i in range(100)])
    params = {"nlist": 8} if kind == "ivf" else {}
    build_index(tmp_path / "a", tmp_path / "idx", BuildConfig(kind=kind, params=params))
    index = HammingIndex(tmp_path / "idx")
    removed = [old_ids[i] for i in (0, 17, 300, 301, 599)]
    report = index.remove(removed + ["not-indexed"])
    assert report.removed == 5 and report.missing == ["not-indexed"] and len(index) == 595
    report = index.add(tmp_path / "b")
    assert report.added == 100 and len(index) == 695

    expected = {i: c for i, c in zip(old_ids + new_ids, codes) if i not in removed}
    table = pq.read_table(tmp_path / "idx" / IDS_FILE)
    row_ids = table.column("image_id").to_pylist()
    assert sorted(row_ids) == sorted(expected)
    query = np.stack([expected[i] for i in row_ids])
    kw = {"nprobe": 8} if kind == "ivf" else {"ef_search": 64} if kind == "hnsw" else {}
    for row, hits in enumerate(index.search(query, 3, **kw)):
        assert hits.distances[0] == 0 and hits.image_ids[0] == row_ids[row] and hits.rows[0] == row
    records = index.records(np.array([0, len(row_ids) - 1]))
    assert [r.image_id for r in records] == [row_ids[0], row_ids[-1]]
    assert records[-1].path == f"images/{row_ids[-1]}.png" and len(records[-1].box) == 4
    for hits in index.search(codes[[0, 17, 300]], 20, **kw):
        assert not set(hits.image_ids) & set(removed)
    assert HammingIndex(tmp_path / "idx").search(query[:1], 1, **kw)[0].image_ids == row_ids[:1]  # reload agrees


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_add_refuses_present_ids_unless_replace(tmp_path, kind):
    rng = np.random.default_rng(6)
    codes = random_codes(rng, 300)
    ids = write_codes(tmp_path / "a", codes)
    build_index(tmp_path / "a", tmp_path / "idx", BuildConfig(kind=kind, params={"nlist": 4} if kind == "ivf" else {}))
    fresh = random_codes(rng, 2)
    write_codes(tmp_path / "b", fresh, [ids[5], "brand-new"])
    index = HammingIndex(tmp_path / "idx")
    with pytest.raises(DuplicateImageIdError, match=ids[5]):
        index.add(tmp_path / "b")
    assert len(index) == 300
    report = index.add(tmp_path / "b", replace=True)
    assert report.replaced == [ids[5]] and report.added == 2 and len(index) == 301
    kw = {"nprobe": 4} if kind == "ivf" else {}
    assert index.search(fresh[0], 1, **kw)[0].image_ids == [ids[5]]
    old = index.search(codes[5], 3, with_ties=True, **kw)[0]
    assert ids[5] not in [i for i, d in zip(old.image_ids, old.distances) if d == 0]  # the old code is gone
    write_codes(tmp_path / "c", random_codes(rng, 2), ["twice", "twice"])
    with pytest.raises(DuplicateImageIdError, match="twice"):
        index.add(tmp_path / "c", replace=True)


def test_add_refuses_other_model_or_bit_length(data, tmp_path):
    codes, ids, folder = data["random"]
    build_index(folder, tmp_path / "idx", BuildConfig(kind="flat"))
    write_codes(tmp_path / "other-model", codes[:3], ["x1", "x2", "x3"], model_id="other-model")
    write_codes(tmp_path / "other-bits", np.zeros((3, 16), np.uint8), ["y1", "y2", "y3"], bits=128)
    index = HammingIndex(tmp_path / "idx")
    with pytest.raises(IndexManifestError, match="model_id 'other-model'"):
        index.add(tmp_path / "other-model")
    with pytest.raises(IndexManifestError, match="bit length 128"):
        index.add(tmp_path / "other-bits")
    with pytest.raises(IndexManifestError, match="not 64-bit codes"):
        index.search(np.zeros((1, 16), np.uint8), 3)
    assert len(HammingIndex(tmp_path / "idx")) == len(codes)


# -- integrity -----------------------------------------------------------------------------------
def _corrupt(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("victim", [INDEX_FILE, IDS_FILE])
def test_checksum_mismatch_is_refused(data, tmp_path, victim):
    build_index(data["random"][2], tmp_path / "idx", BuildConfig(kind="flat"))
    _corrupt(tmp_path / "idx" / victim)
    with pytest.raises(IndexManifestError, match=f"{victim}: sha256 mismatch"):
        HammingIndex(tmp_path / "idx")
    with pytest.raises(IndexManifestError, match="sha256 mismatch"):
        index_info(tmp_path / "idx")


def test_manifest_problems_are_refused(data, tmp_path):
    idx = tmp_path / "idx"
    build_index(data["random"][2], idx, BuildConfig(kind="flat"))
    manifest = json.loads((idx / MANIFEST_FILE).read_text())
    (idx / MANIFEST_FILE).write_text(json.dumps({**manifest, "count": 5}))
    with pytest.raises(IndexManifestError, match="manifest says 5"):
        HammingIndex(idx)
    (idx / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(IndexManifestError, match="unreadable manifest"):
        HammingIndex(idx)
    (idx / MANIFEST_FILE).unlink()
    with pytest.raises(IndexManifestError, match="no manifest.json"):
        HammingIndex(idx)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_mmap_load(data, tmp_path, kind):
    codes, ids, folder = data["clustered"]
    build_index(folder, tmp_path / "idx", BuildConfig(kind=kind, params={"nlist": 8} if kind == "ivf" else {}))
    mapped, loaded = HammingIndex(tmp_path / "idx", mmap=True), HammingIndex(tmp_path / "idx")
    assert mapped.mapped and not loaded.mapped
    queries = queries_for(codes, np.random.default_rng(8))
    a, b = mapped.search(queries, 10, with_ties=True, nprobe=8), loaded.search(queries, 10, with_ties=True, nprobe=8)
    for x, y in zip(a, b):
        assert x.image_ids == y.image_ids and np.array_equal(x.distances, y.distances)
    write_codes(tmp_path / "more", codes[:2] ^ np.uint8(3), ["m1", "m2"])
    mapped.add(tmp_path / "more")  # writes a new file; the mapped one stays valid until reloaded
    assert mapped.mapped and len(mapped) == len(codes) + 2
    assert mapped.search(codes[0] ^ np.uint8(3), 1, nprobe=8)[0].image_ids == ["m1"]


# -- input problems ------------------------------------------------------------------------------
def test_bad_shards_are_named(tmp_path):
    import pyarrow as pa

    folder = tmp_path / "codes"
    write_codes(folder, random_codes(np.random.default_rng(9), 10))
    pq.write_table(pa.table({"image_id": ["a"], "path": ["a.png"]}), folder / "part-00009.parquet")
    write_codes_manifest(folder, model_id=MODEL, bits=BITS)
    with pytest.raises(CodeShardError, match="part-00009.parquet: missing file metadata"):
        build_index(folder, tmp_path / "idx")
    (folder / "_manifest.json").unlink()
    with pytest.raises(CodeShardError, match="no _manifest.json: not a finished codes folder") as missing:
        build_index(folder, tmp_path / "idx")
    assert "part-00009" not in str(missing.value), "a missing manifest is reported as such, not as another file's problem"
    with pytest.raises(CodeShardError, match="no _manifest.json"):
        build_index(tmp_path, tmp_path / "idx")


def test_null_rows_are_skipped_and_duplicates_refused(tmp_path):
    import pyarrow as pa

    folder = tmp_path / "codes"
    codes = random_codes(np.random.default_rng(10), 20)
    write_codes(folder, codes)
    table = pq.read_table(folder / "part-00000.parquet")
    code = table.column("code").to_pylist()
    code[3] = None
    table = table.set_column(table.column_names.index("code"), "code", pa.array(code, table.schema.field("code").type))
    pq.write_table(table, folder / "part-00000.parquet")
    with pytest.raises(CodeShardError, match="part-00000.parquet: sha256 differs"):
        build_index(folder, tmp_path / "idx")
    write_codes_manifest(folder, model_id=MODEL, bits=BITS)  # the changed shard, now recorded as it is
    manifest = build_index(folder, tmp_path / "idx")
    assert manifest.count == 19 and manifest.skipped_rows == 1
    assert "img00003" not in pq.read_table(tmp_path / "idx" / IDS_FILE).column("image_id").to_pylist()
    write_codes(tmp_path / "dup", codes[:4], ["a", "b", "a", "c"])
    with pytest.raises(DuplicateImageIdError, match="1 duplicate image id"):
        build_index(tmp_path / "dup", tmp_path / "idx2")


# -- threads and GPU -----------------------------------------------------------------------------
def test_omp_threads_is_restored_and_pool_keeps_order_and_errors():
    import faiss

    before = faiss.omp_get_max_threads()
    with omp_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    pool = ScanPool(1)
    assert pool.run([lambda i=i: i * i for i in range(20)]) == [i * i for i in range(20)]
    with pytest.raises(ZeroDivisionError):
        pool.run([lambda: 1, lambda: 1 / 0, lambda: 2])


def test_gpu_flat_search_matches_cpu(data, tmp_path):
    support = gpu_support()
    if not support.available:
        pytest.skip(f"no GPU search here: {support.reason}")
    codes, ids, folder = data["random"]
    build_index(folder, tmp_path / "idx", BuildConfig(kind="flat"))
    gpu, cpu = HammingIndex(tmp_path / "idx", gpu=True), HammingIndex(tmp_path / "idx")
    queries = queries_for(codes, np.random.default_rng(11))
    for x, y in zip(gpu.search(queries, 20, with_ties=True), cpu.search(queries, 20, with_ties=True)):
        assert set(x.rows.tolist()) == set(y.rows.tolist()) and np.array_equal(x.distances, y.distances)
    build_index(folder, tmp_path / "ivf", BuildConfig(kind="ivf", gpu=True))
    assert len(HammingIndex(tmp_path / "ivf")) == len(codes)


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_kind_names_match_the_registry():
    from medhash.cli.index_cmds import KIND_NAMES

    assert sorted(KIND_NAMES) == sorted(KINDS)


def test_cli_build_add_remove_info(data, tmp_path):
    from medhash.cli import main
    from medhash.cli.index_cmds import index_group

    codes, ids, folder = data["random"]
    runner = CliRunner()
    idx = tmp_path / "idx"
    result = runner.invoke(index_group, ["build", "--codes", str(folder), "--out", str(idx), "--kind", "ivf",
                                         "--param", "nlist=8", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["params"]["nlist"] == 8
    write_codes(tmp_path / "more", codes[:2] ^ np.uint8(255), ["n1", "n2"])
    result = runner.invoke(index_group, ["add", "--index", str(idx), "--codes", str(tmp_path / "more")])
    assert result.exit_code == 0 and "added 2" in result.output
    (tmp_path / "ids.txt").write_text(f"# ids to drop\n{ids[0]}\n\nn1\n")
    result = runner.invoke(index_group, ["remove", "--index", str(idx), "--ids", str(tmp_path / "ids.txt"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["removed"] == 2
    result = runner.invoke(index_group, ["info", "--index", str(idx), "--json"])
    info = json.loads(result.stdout)
    assert info["count"] == len(codes) and info["kind"] == "ivf" and info["checksums_verified"]
    result = runner.invoke(main, ["index", "add", "--index", str(idx), "--codes", str(tmp_path / "more")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "duplicate image id(s): n2" in result.output
    assert "Traceback" not in result.output


# -- query with the real model -------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_and_archive(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from PIL import Image

    from medhash.model import AGHashNet, ModelConfig, load_encoder, save_checkpoint

    root = tmp_path_factory.mktemp("query")
    config = ModelConfig(backbone="tiny", bits=BITS, global_size=64, local_size=48, fusion_dim=64)
    torch.manual_seed(0)
    model_path = root / "model.pt"
    save_checkpoint(model_path, AGHashNet(config).eval())
    torch.manual_seed(1)
    save_checkpoint(root / "other.pt", AGHashNet(config).eval())
    rng = np.random.default_rng(12)
    paths = []
    for i in range(12):
        img = rng.random((80, 72)) * 0.3
        img[10 + i: 40 + i, 20:50] += 0.6  # a bright "lesion" at a different place in each image
        path = root / "images" / f"case{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    encoder = load_encoder(model_path, engine="fp32")
    from medhash.data import read_image

    encoded = encoder.encode_images([read_image(p) for p in paths])
    write_code_shard(root / "codes" / "part-00000.parquet", model_id=encoder.model_id, bits=BITS,
                     image_ids=[p.stem for p in paths], paths=[str(p) for p in paths], codes=encoded.codes,
                     boxes=encoded.boxes, labels=[("Mass",)] * len(paths))
    write_codes_manifest(root / "codes", model_id=encoder.model_id, bits=BITS)
    build_index(root / "codes", root / "idx")
    return root, model_path, paths, encoded


def test_query_images_finds_itself_and_draws_overlays(model_and_archive, tmp_path):
    from PIL import Image

    from medhash.data.overlay import BOX_COLOR
    from medhash.app.query import query_images

    root, model_path, paths, encoded = model_and_archive
    results = query_images(root / "idx", model_path, [paths[3], tmp_path / "missing.png"], k=4, with_ties=True,
                           overlay_dir=tmp_path / "ov")
    ok, bad = results
    assert bad.error and "missing.png" in bad.error and not bad.hits
    assert ok.error is None and ok.hits[0].distance == 0 and "case03" in {h.image_id for h in ok.hits if h.distance == 0}
    assert ok.box == tuple(int(v) for v in encoded.boxes[3]) and ok.hits[0].labels == ("Mass",)
    assert len(ok.overlays) == 1 + len(ok.hits) and all(Path(p).exists() for p in ok.overlays)
    picture = np.asarray(Image.open(ok.overlays[0]).convert("RGB"))
    x0, y0, x1, y1 = ok.box
    assert tuple(picture[(y0 + y1) // 2, x0]) == BOX_COLOR and tuple(picture[y1 - 1, (x0 + x1) // 2]) == BOX_COLOR
    assert picture.shape[:2] == (80, 72)


def test_query_refuses_another_model(model_and_archive):
    from medhash.app.query import query_images

    root, _, paths, _ = model_and_archive
    with pytest.raises(IndexManifestError, match="is not the model"):
        query_images(root / "idx", root / "other.pt", paths[:1], k=3)


def test_query_cli_json(model_and_archive):
    from medhash.cli.query_cmds import query_cmd

    root, model_path, paths, _ = model_and_archive
    result = CliRunner().invoke(query_cmd, ["--index", str(root / "idx"), "--model", str(model_path), str(paths[0]),
                                            "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)["results"]
    assert out[0]["hits"][0]["image_id"] == "case00" and len(out[0]["hits"]) == 3
    table = CliRunner().invoke(query_cmd, ["--index", str(root / "idx"), "--model", str(model_path), str(paths[0])])
    assert "case00" in table.output and "distance" in table.output


def test_row_of_finds_image_ids_after_removal(data, tmp_path):
    codes, ids, folder = data["random"]
    build_index(folder, tmp_path / "idx", BuildConfig(kind="ivf", params={"nlist": 8}))
    index = HammingIndex(tmp_path / "idx")
    assert index.row_of(ids[10]) == 10 and index.row_of("not-an-id") is None
    index.remove([ids[3]])
    assert index.row_of(ids[3]) is None and index.row_of(ids[10]) == 9  # rows shift, the id still maps to its record
    assert index.records(np.array([index.row_of(ids[10])]))[0].image_id == ids[10]


def test_build_memory_pool_is_restored():
    import pyarrow as pa

    before = pa.default_memory_pool().backend_name
    with lean_arrow_memory():
        inside = pa.default_memory_pool().backend_name
        pa.array(np.arange(1000))  # allocations inside work
    assert pa.default_memory_pool().backend_name == before
    assert inside in ("jemalloc", before)  # jemalloc where Arrow has it, unchanged otherwise
