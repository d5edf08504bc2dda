"""Re-ranking the Hamming shortlist by the stored hash values (issue 16): the search equals a brute-force
re-ranking of the Hamming top-N with its ties, the values travel encode -> index build -> add/remove ->
search unchanged, the tie-aware figures of a re-ranked list, and one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from medhash.cli import main as cli
from medhash.codes_format import write_code_shard, write_codes_manifest
from medhash.errors import IndexManifestError, InvalidParameterError
from medhash.eval import evaluate_scores, hamming_distances, query_metrics, reranked_distances, shortlist_mask
from medhash.index import BuildConfig, HammingIndex, add_codes, build_index, remove_images

BITS = 16  # short codes: many ties at every distance, the hard case for the shortlist's boundary


def _write_codes(folder, codes, values, ids, with_values=True, model_id="m"):
    bits = codes.shape[1] * 8
    write_code_shard(folder / "part-00000.parquet", model_id=model_id, bits=bits, image_ids=ids, paths=ids, codes=codes,
                     boxes=np.zeros((len(ids), 4), np.int32), hash_values=values if with_values else None)
    write_codes_manifest(folder, model_id=model_id, bits=bits)
    return folder


def _random_archive(rng, n):
    values = rng.uniform(-1, 1, (n, BITS)).astype(np.float32)
    values[n // 2:n // 2 + 5] = values[0]  # identical values: equal cosines, broken by distance then row
    codes = np.packbits(values > 0, axis=1)
    return codes, values


def _brute_force(codes, stored, query_code, query_values, n, k, with_ties):
    """Every item scored from scratch: shortlist = distance <= the n-th smallest; key (-cosine, distance, row)."""
    d = hamming_distances(query_code[None], codes)[0].astype(np.int64)
    rows = np.arange(len(d))
    nth = np.sort(d)[min(n, len(d)) - 1]
    head = d <= nth
    v = stored.astype(np.float64)
    q = query_values.astype(np.float64)
    cosine = v @ q / (np.linalg.norm(v, axis=1) * np.linalg.norm(q))
    head_order = rows[head][np.lexsort((rows[head], d[head], -cosine[head]))]
    tail_order = rows[~head][np.lexsort((rows[~head], d[~head]))]
    order = np.concatenate([head_order, tail_order])
    keys = [(-cosine[r], d[r], 0) if head[r] else (np.inf, d[r], 1) for r in order]
    end = min(k, len(order))
    if with_ties:
        while end < len(order) and keys[end] == keys[end - 1]:
            end += 1
    return d[order[:end]], order[:end]


@pytest.mark.parametrize("kind", ["flat", "multihash"])
def test_rerank_equals_brute_force_reranking_of_the_hamming_top_n_with_ties(tmp_path, kind):
    rng = np.random.default_rng(0)
    codes, values = _random_archive(rng, 300)
    build_index(_write_codes(tmp_path / "codes", codes, values, [f"i{j}" for j in range(300)]), tmp_path / "idx",
                BuildConfig(kind=kind))
    index = HammingIndex(tmp_path / "idx")
    stored = np.load(tmp_path / "idx" / "hash_values.npy")
    assert stored.dtype == np.float16 and np.array_equal(stored, values.astype(np.float16))
    query_values = np.concatenate([rng.uniform(-1, 1, (6, BITS)).astype(np.float32), values[:2]])
    query_codes = np.packbits(query_values > 0, axis=1)
    for n in (1, 7, 50, 300, 1000):
        for k in (1, 5, 40, 299):
            for with_ties in (False, True):
                found = index.search(query_codes, k, with_ties=with_ties, rerank=n, query_values=query_values)
                for q, hits in enumerate(found):
                    d, rows = _brute_force(codes, stored, query_codes[q], query_values[q], n, k, with_ties)
                    assert np.array_equal(hits.rows, rows), (n, k, with_ties, q)
                    assert np.array_equal(hits.distances, d)
                    shortlisted = ~np.isnan(hits.scores)
                    assert shortlisted.sum() == min(len(rows), int(shortlist_mask(
                        hamming_distances(query_codes[q][None], codes)[0], n).sum()))
                    assert np.all(np.diff(hits.scores[shortlisted]) <= 0)


@pytest.mark.parametrize("kind", ["flat", "multihash", "hnsw", "ivf"])
def test_filtered_rerank_equals_brute_force_reranking_of_the_filtered_top_n(tmp_path, kind):
    rng = np.random.default_rng(3)
    codes, values = _random_archive(rng, 300)
    ids = [f"i{j}" for j in range(300)]
    labels = [["A"] if j % 5 == 0 else ["B"] for j in range(300)]
    folder = tmp_path / "codes"
    write_code_shard(folder / "part-00000.parquet", model_id="m", bits=BITS, image_ids=ids, paths=ids, codes=codes,
                     boxes=np.zeros((300, 4), np.int32), labels=labels, hash_values=values)
    write_codes_manifest(folder, model_id="m", bits=BITS)
    build_index(folder, tmp_path / "idx", BuildConfig(kind=kind, params={"nlist": 4} if kind == "ivf" else {}))
    index = HammingIndex(tmp_path / "idx")
    selected = np.flatnonzero(np.arange(300) % 5 == 0)  # a fifth: below ivf's widen_min, so exact for every kind
    stored = np.load(tmp_path / "idx" / "hash_values.npy")
    query_values = rng.uniform(-1, 1, (4, BITS)).astype(np.float32)
    query_codes = np.packbits(query_values > 0, axis=1)
    for n, k, with_ties in ((7, 5, False), (30, 10, True), (1000, 40, False)):
        found = index.search(query_codes, k, with_ties=with_ties, filter="labels_any=A", rerank=n,
                             query_values=query_values)
        assert found.strategy is not None and found.selected == len(selected)
        for q, hits in enumerate(found):
            d, rows = _brute_force(codes[selected], stored[selected], query_codes[q], query_values[q], n, k, with_ties)
            assert np.array_equal(hits.rows, selected[rows]), (kind, n, k, with_ties, q)
            assert np.array_equal(hits.distances, d)


def test_reranked_distances_rank_the_same_list_with_ties_only_where_keys_tie(tmp_path):
    rng = np.random.default_rng(1)
    codes, values = _random_archive(rng, 120)
    build_index(_write_codes(tmp_path / "codes", codes, values, [f"i{j}" for j in range(120)]), tmp_path / "idx")
    index = HammingIndex(tmp_path / "idx")
    query = values[0]
    hits = index.search(np.packbits(query > 0)[None], 120, rerank=10, query_values=query[None])[0]
    d = hamming_distances(np.packbits(query > 0)[None], codes)[0]
    stored = np.load(tmp_path / "idx" / "hash_values.npy").astype(np.float64)
    cosine = stored @ query.astype(np.float64) / (np.linalg.norm(stored, axis=1) * np.linalg.norm(query))
    composite = reranked_distances(d, cosine, shortlist_mask(d, 10))
    # the index's order sorts the composite; equal composites are exactly the ties of the tail (same distance)
    assert np.all(np.diff(composite[hits.rows]) >= 0)
    head = int((~np.isnan(hits.scores)).sum())
    assert len(np.unique(composite[hits.rows[:head]])) == head - 5  # rows 60..64 repeat row 0 (cosine 1, distance 0)
    assert np.array_equal(composite[hits.rows[head:]], len(d) + d[hits.rows[head:]])
    # the figures of the re-ranked list: evaluate_scores on the composite equals query_metrics of the ranking
    labels = rng.random((121, 3)) < 0.4
    report = evaluate_scores(composite[None], labels[:1], labels[1:], ks=(10,))
    single = query_metrics(composite, (labels[1:] & labels[0]).any(axis=1), ks=(10,))
    assert report.map_tie_aware == pytest.approx(float(single.ap_tie_aware[0]))


def test_values_survive_add_and_remove_row_for_row(tmp_path):
    rng = np.random.default_rng(2)
    codes, values = _random_archive(rng, 80)
    ids = [f"i{j}" for j in range(80)]
    for kind in ("flat", "ivf", "hnsw"):
        idx = tmp_path / kind
        params = {"nlist": 4} if kind == "ivf" else {}
        build_index(_write_codes(tmp_path / "a", codes[:50], values[:50], ids[:50]), idx, BuildConfig(kind=kind, params=params, overwrite=True))
        add_codes(idx, _write_codes(tmp_path / f"b-{kind}", codes[50:], values[50:], ids[50:]))
        remove_images(idx, ids[10:20] + ids[55:60])
        index = HammingIndex(idx)
        kept = [j for j in range(80) if not (10 <= j < 20 or 55 <= j < 60)]
        stored = np.load(idx / "hash_values.npy")
        assert len(index) == len(kept) == len(stored)
        rows = [index.row_of(ids[j]) for j in kept]
        assert np.array_equal(stored[rows], values[kept].astype(np.float16)), kind
        # re-ranking the whole index by values[kept[0]] puts it (cosine 1) first
        found = index.search(codes[kept[0]], 1, rerank=len(index), query_values=values[kept[0]])[0]
        assert found.image_ids == [ids[kept[0]]] and found.scores[0] == pytest.approx(1.0, abs=1e-3)


def test_one_line_refusals(tmp_path):
    rng = np.random.default_rng(3)
    codes, values = _random_archive(rng, 20)
    ids = [f"i{j}" for j in range(20)]
    build_index(_write_codes(tmp_path / "plain", codes, values, ids, with_values=False), tmp_path / "plain-idx")
    plain = HammingIndex(tmp_path / "plain-idx")
    assert not plain.has_hash_values and "hash_values.npy" not in plain.manifest.files
    with pytest.raises(InvalidParameterError, match="stores no hash values") as exc:
        plain.search(codes[:1], 3, rerank=5, query_values=values[:1])
    assert "\n" not in str(exc.value)
    build_index(_write_codes(tmp_path / "full", codes, values, ids), tmp_path / "idx")
    index = HammingIndex(tmp_path / "idx")
    with pytest.raises(InvalidParameterError, match="query_values"):
        index.search(codes[:1], 3, rerank=5)
    with pytest.raises(InvalidParameterError, match=r"expected \[2, 16\]"):
        index.search(codes[:2], 3, rerank=5, query_values=values[:1])
    with pytest.raises(InvalidParameterError, match="rerank must be >= 1"):
        index.search(codes[:1], 3, rerank=0, query_values=values[:1])
    with pytest.raises(IndexManifestError, match="holds no hash values"):
        add_codes(tmp_path / "idx", _write_codes(tmp_path / "more", codes[:3], values[:3], ["x", "y", "z"], False))
    # a changed hash_values.npy is refused like any other file of the index
    raw = bytearray((tmp_path / "idx" / "hash_values.npy").read_bytes())
    raw[-1] ^= 1
    (tmp_path / "idx" / "hash_values.npy").write_bytes(bytes(raw))
    with pytest.raises(IndexManifestError, match="sha256 mismatch"):
        HammingIndex(tmp_path / "idx")


def test_encode_store_hash_values_round_trips_to_a_reranked_query(served_archive, cluster, tmp_path):
    """`medhash encode --store-hash-values` -> `index build` -> `medhash query --rerank`: the stored values are
    the encoder's, as float16, and the CLI prints the re-ranked hits with their cosines."""
    from medhash.data import read_image
    from medhash.model import load_encoder
    from medhash.pipeline import EncodeJobConfig, run_encode

    images = served_archive.image_paths[:20]
    summary = run_encode(EncodeJobConfig(model=served_archive.model_path, out=tmp_path / "codes",
                                         inputs=tuple(map(str, images)), scheduler=cluster.scheduler.address,
                                         engine="fp32", shard_size=8, store_hash_values=True, progress=False,
                                         dashboard=False))
    assert summary.encoded == 20
    import json

    manifest = json.loads((tmp_path / "codes" / "_manifest.json").read_text())
    assert manifest["store_hash_values"] and manifest["columns"][-1] == "hash_values"
    runner = CliRunner()
    built = runner.invoke(cli, ["index", "build", "--codes", str(tmp_path / "codes"), "--out", str(tmp_path / "idx")])
    assert built.exit_code == 0, built.output
    index = HammingIndex(tmp_path / "idx")
    encoder = load_encoder(served_archive.model_path, engine="fp32")
    expected = encoder.encode_images([read_image(p) for p in images]).hash_values.astype(np.float16)
    stored = np.load(tmp_path / "idx" / "hash_values.npy")
    order = [index.row_of(p.name) for p in images]
    assert np.array_equal(stored[order], expected)

    result = runner.invoke(cli, ["query", "--index", str(tmp_path / "idx"), "--model", str(served_archive.model_path),
                                 "-k", "3", "--rerank", "10", "--json", str(images[0])])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["results"][0]["hits"]
    assert len(hits) == 3 and all(h["score"] is not None for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_cli_query_rerank_on_an_index_without_values_is_one_line(tmp_path, served_archive):
    served = HammingIndex(served_archive.index_dir)
    codes = np.random.default_rng(4).integers(0, 256, (10, served.bits // 8), dtype=np.uint8)
    build_index(_write_codes(tmp_path / "codes", codes, None, [f"i{j}" for j in range(10)], False, served.model_id),
                tmp_path / "idx")
    result = CliRunner().invoke(cli, ["query", "--index", str(tmp_path / "idx"), "--model",
                                      str(served_archive.model_path), "--rerank", "5",
                                      str(served_archive.image_paths[0])])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "stores no hash values" in lines[0], result.output


def test_server_reranks_image_searches_and_refuses_a_code(served_archive):
    import httpx

    from serve_support import live_server

    with live_server(served_archive) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
        form = schema["components"]["schemas"]
        assert any("rerank" in body.get("properties", {}) for body in form.values())
        assert httpx.get(f"{url}/v1/info").json()["hash_values"] is True
        with open(served_archive.image_paths[2], "rb") as fh:
            data = fh.read()
        body = httpx.post(f"{url}/v1/search", files={"image": ("q.png", data)}, data={"k": "5", "rerank": "12"}).json()
        assert body["rerank"] == 12 and len(body["hits"]) == 5
        scores = [h["score"] for h in body["hits"]]
        assert None not in scores and scores == sorted(scores, reverse=True)
        plain = httpx.post(f"{url}/v1/search", files={"image": ("q.png", data)}, data={"k": "5"}).json()
        assert plain["rerank"] is None and all(h["score"] is None for h in plain["hits"])
        filtered = httpx.post(f"{url}/v1/search", files={"image": ("q.png", data)},
                              data={"k": "5", "rerank": "12", "filter": "view=PA"}).json()
        assert filtered["rerank"] == 12 and filtered["strategy"] and filtered["hits"]
        assert all(h["view"] == "PA" and h["score"] is not None for h in filtered["hits"])
        filtered_scores = [h["score"] for h in filtered["hits"]]
        assert filtered_scores == sorted(filtered_scores, reverse=True)
        by_code = httpx.post(f"{url}/v1/search", data={"code": body["query"]["code_hex"], "rerank": "12"})
        assert by_code.status_code == 422 and "needs an image" in by_code.json()["detail"]


def test_bench_in_process_scores_the_reranked_ranking(served_archive, tmp_path):
    from medhash.bench import BenchConfig, run_bench

    common = dict(queries=str(served_archive.labels_csv), index=str(served_archive.index_dir),
                  model=str(served_archive.model_path), concurrency=(1,), requests=4, plots=False, engine="fp32",
                  max_queries=12)
    reranked = run_bench(BenchConfig(out=str(tmp_path / "r"), rerank=1000, **common))
    plain = run_bench(BenchConfig(out=str(tmp_path / "p"), **common))
    assert reranked["quality"]["rerank"] == 1000 and plain["quality"]["rerank"] is None
    assert reranked["quality"]["failed"] == 0 and reranked["quality"]["ranking"] == "complete"
    # the whole archive re-ranked by cosine is another ranking than Hamming order, scored tie-aware
    assert reranked["quality"]["map_tie_aware"] != plain["quality"]["map_tie_aware"]
    assert 0.0 < reranked["quality"]["map_tie_aware"] <= 1.0


def test_python_api_reranks_a_filtered_image_search(served_archive):
    from medhash.app.api import open_index

    index = open_index(served_archive.index_dir, model=served_archive.model_path)
    results = index.search(served_archive.image_paths[3], k=4, rerank=12, filter="view=PA")
    rows = results[0]
    assert len(rows) == 4 and all(row["score"] is not None for row in rows)
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)
    assert "score" not in index.search(served_archive.image_paths[3], k=4)[0][0]
