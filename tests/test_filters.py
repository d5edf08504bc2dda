"""Filtered search: the filter syntax, evaluation over stored metadata, and filtered top-k for every kind
checked against brute-force filtering of the codes and metadata."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from medhash.codes_format import DICOM_COLUMNS, MetadataColumns, write_code_shard, write_codes_manifest
from medhash.data.keyed import keyed_hash
from medhash.index import IDS_FILE, BuildConfig, HammingIndex, SearchParams, ThreadPolicy, build_index
from medhash.index._search import ExactScan, FilteredSearch, LabelFilter
from medhash.index._search.filtered import GATHER_MAX
from medhash.index.filters import FilterError, parse_filter

BITS = 64
MODEL = "model-filter-1"
FINDINGS = ("Effusion", "Mass", "Nodule", "Atelectasis", "Cardiomegaly")
SECRET = b"site-secret"
N = 2400
COLUMNS = MetadataColumns(table=("view", "age", "sex"), dicom=True, patient_key=True)


def make_metadata(rng, n: int) -> tuple[list, list[dict]]:
    labels, values = [], []
    for i in range(n):
        if i % 37 == 5:
            labels.append(None)  # not in the label table
        else:
            found = tuple(f for f in FINDINGS if rng.random() < 0.25)
            labels.append(found or ("No Finding",))
        row: dict = {"patient_key": keyed_hash(f"P{i // 4}", SECRET)}  # four images per patient
        if i % 3 == 0:  # DICOM rows: the view/sex/age come from the header
            row.update(view_position=str(rng.choice(["PA", "AP", "LL"])), patient_sex=str(rng.choice(["F", "M"])),
                       patient_age_years=int(rng.integers(1, 91)), modality="CR", rows=int(rng.integers(1000, 3000)))
        elif i % 11 != 0:  # table rows (every 11th: nothing known)
            row.update(view=str(rng.choice(["PA", "AP"])), sex=str(rng.choice(["F", "M", "f"])),
                       age=str(int(rng.integers(1, 95))))
        values.append(row)
    return labels, values


def codes_for(rng, labels) -> np.ndarray:
    # Clustered codes tied to the findings, so label filters select codes that are not a random subset.
    centres = rng.integers(0, 2, (len(FINDINGS) + 1, BITS), dtype=np.uint8)
    out = []
    for lab in labels:
        first = next((FINDINGS.index(f) for f in (lab or ()) if f in FINDINGS), len(FINDINGS))
        out.append(centres[first] ^ (rng.random(BITS) < 0.12))
    return np.packbits(np.array(out, dtype=np.uint8), axis=1)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("filtered")
    labels, values = make_metadata(rng, N)
    codes = codes_for(rng, labels)
    ids = [f"img{i:05d}" for i in range(N)]
    codes_dir = root / "codes"
    for shard, start in enumerate(range(0, N, 1000)):
        part = slice(start, start + 1000)
        n = len(ids[part])
        write_code_shard(codes_dir / f"part-{shard:05d}.parquet", model_id=MODEL, bits=BITS, image_ids=ids[part],
                         paths=[f"images/{i}.png" for i in ids[part]], codes=codes[part],
                         boxes=np.zeros((n, 4), np.int32), labels=labels[part], columns=COLUMNS, values=values[part])
    write_codes_manifest(codes_dir, model_id=MODEL, bits=BITS)
    indexes = {}
    for kind, params in (("flat", {}), ("multihash", {}), ("ivf", {"nlist": 16, "nprobe": 16}),
                         ("hnsw", {"ef_search": 2 * N})):
        out = root / kind
        build_index(codes_dir, out, BuildConfig(kind=kind, params=params))
        indexes[kind] = out
    return {"codes": codes, "ids": ids, "labels": labels, "values": values, "indexes": indexes, "root": root,
            "codes_dir": codes_dir}


# -- brute force -----------------------------------------------------------------------------------
def field_value(row: dict, name: str):
    table, dicom = {"view": ("view", "view_position"), "sex": ("sex", "patient_sex"),
                    "age": ("age", "patient_age_years")}[name]
    value = row.get(table)
    return value if value is not None else row.get(dicom)


def brute_mask(archive, spec: dict) -> np.ndarray:
    keep = []
    for i, (lab, row) in enumerate(zip(archive["labels"], archive["values"])):
        ok = True
        if "labels_any" in spec:
            ok &= lab is not None and bool(set(lab) & set(spec["labels_any"]))
        if "labels_all" in spec:
            ok &= lab is not None and set(spec["labels_all"]) <= set(lab)
        if "labels_none" in spec:
            ok &= not (set(lab or ()) & set(spec["labels_none"]))
        for name in ("view", "sex"):
            if name in spec:
                v = field_value(row, name)
                ok &= v is not None and v.upper() in {s.upper() for s in spec[name]}
        if "age" in spec:
            v = field_value(row, "age")
            lo, hi = spec["age"].get("min"), spec["age"].get("max")
            ok &= v is not None and (lo is None or float(v) >= lo) and (hi is None or float(v) <= hi)
        if "modality" in spec:
            ok &= row.get("modality") in spec["modality"]
        if "rows" in spec:
            v = row.get("rows")
            ok &= v is not None and spec["rows"]["min"] <= v
        if "not_patient" in spec:
            own = archive["ids"].index(spec["not_patient"])
            ok &= i != own and row["patient_key"] != archive["values"][own]["patient_key"]
        keep.append(ok)
    return np.array(keep)


def hamming(codes: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.unpackbits(codes ^ q, axis=1).sum(axis=1)


def brute_topk(archive, q, mask, k):
    d = hamming(archive["codes"], q)
    rows = np.flatnonzero(mask)
    order = np.lexsort((rows, d[rows]))[:k]
    return rows[order], d[rows][order]


SPECS = [
    {"labels_any": ["Effusion", "Mass"]},
    {"labels_all": ["Effusion", "Nodule"]},
    {"labels_none": ["Effusion"]},
    {"view": ["PA"]},
    {"sex": ["F"]},
    {"age": {"min": 60}},
    {"age": {"min": 20, "max": 40}},
    {"modality": ["CR"], "rows": {"min": 2000}},
    {"labels_any": ["Mass"], "sex": ["F"], "age": {"min": 50}, "view": ["PA", "AP"]},
    {"not_patient": "img00010"},
    {"labels_any": ["Cardiomegaly"], "labels_none": ["Mass"], "not_patient": "img00041"},
]


# -- syntax ----------------------------------------------------------------------------------------
def test_compact_and_json_spellings_agree():
    compact = parse_filter("labels_any=Effusion,Mass;sex=F;age=60..;view=PA;not_patient=img1")
    as_json = parse_filter(json.dumps({"labels_any": ["Mass", "Effusion"], "sex": "f", "age": {"min": 60},
                                       "view": ["pa"], "not_patient": "img1"}))
    assert compact.normalized() == as_json.normalized()
    assert parse_filter("").empty() and parse_filter(None).empty()
    assert parse_filter("age=..40").ranges[0][1].high == 40


@pytest.mark.parametrize("text, names", [
    ("age=old..", "age=old.."), ("sex", "'sex' is not NAME=VALUE"), ("age=70..60", "'age'"),
    ("labels=Mass", "'labels'"), ("{oops", "not valid JSON"), ("sex=F;sex=M", "'sex' given twice"),
    ('{"age": {"min": "x"}}', "'age'"), ('{"view": []}', "'view'"),
])
def test_bad_syntax_names_the_part(text, names):
    with pytest.raises(FilterError) as err:
        parse_filter(text)
    message = str(err.value)
    assert names in message and "\n" not in message


def test_patient_id_is_hashed_and_never_echoed():
    flt = parse_filter("not_patient_id=MRN-123456", patient_secret=SECRET)
    assert flt.not_patient_keys == {keyed_hash("MRN-123456", SECRET)}
    assert "MRN-123456" not in flt.normalized()
    with pytest.raises(FilterError) as err:
        parse_filter("not_patient_id=MRN-123456")
    assert "MRN-123456" not in str(err.value)


# -- evaluation and search -------------------------------------------------------------------------
def test_build_carries_metadata_columns(archive):
    names = pq.read_schema(archive["indexes"]["flat"] / IDS_FILE).names
    assert {"view", "age", "sex", "patient_key", *DICOM_COLUMNS} <= set(names)
    index = HammingIndex(archive["indexes"]["flat"])
    rec = index.records(np.array([0, 1]))
    assert rec[0].metadata["patient_key"] == archive["values"][0]["patient_key"]
    assert rec[1].metadata.get("age") == archive["values"][1].get("age")


@pytest.mark.parametrize("spec", SPECS, ids=[json.dumps(s) for s in SPECS])
def test_selection_equals_brute_force(archive, spec):
    index = HammingIndex(archive["indexes"]["flat"])
    assert np.array_equal(index.select(spec).mask, brute_mask(archive, spec))


@pytest.mark.parametrize("kind", ["flat", "multihash", "ivf", "hnsw"])
@pytest.mark.parametrize("spec", SPECS, ids=[json.dumps(s) for s in SPECS])
def test_filtered_search_equals_brute_force(archive, kind, spec):
    index = HammingIndex(archive["indexes"][kind])
    mask = brute_mask(archive, spec)
    queries = archive["codes"][[3, 10, 41, 777]]
    result = index.search(queries, k=20, filter=spec)
    assert result.strategy is not None and result.selected == int(mask.sum())
    for q, hits in zip(queries, result):
        rows, dists = brute_topk(archive, q, mask, 20)
        assert mask[hits.rows].all(), "no item failing the filter"
        assert np.array_equal(hits.distances, dists)
        if kind in ("flat", "multihash", "hnsw"):  # answered exactly: the same items in (distance, row) order
            assert np.array_equal(hits.rows, rows)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_ties_with_filter(archive, kind):
    index = HammingIndex(archive["indexes"][kind])
    spec = {"labels_any": ["Effusion"]}
    mask = brute_mask(archive, spec)
    q = archive["codes"][3]
    hits = index.search(q, k=5, with_ties=True, filter=spec)[0]
    d = hamming(archive["codes"], q)
    kth = np.sort(d[mask])[4]
    assert set(hits.rows.tolist()) == set(np.flatnonzero(mask & (d <= kth)).tolist())


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "multihash"])
def test_empty_selection_is_an_empty_answer(archive, kind):
    index = HammingIndex(archive["indexes"][kind])
    result = index.search(archive["codes"][:2], k=10, filter="labels_any=NoSuchFinding")
    assert result.strategy == "empty" and result.selected == 0
    assert all(len(h.rows) == 0 for h in result)


def test_unknown_columns_and_images_are_filter_errors(archive):
    index = HammingIndex(archive["indexes"]["flat"])
    for spec, part in (("weight=3", "'weight'"), ("not_patient=nope", "'not_patient'"), ("rows=abc", "'rows'")):
        with pytest.raises(FilterError) as err:
            index.search(archive["codes"][0], k=5, filter=spec)
        assert part in str(err.value)


def test_selection_cache_reuses_normalized_filters(archive):
    index = HammingIndex(archive["indexes"]["flat"])
    first = index.select("sex=F;view=PA")
    assert index.select('{"view": "pa", "sex": ["f"]}') is first


def test_not_patient_by_patient_id(archive):
    index = HammingIndex(archive["indexes"]["flat"])
    by_image = index.select("not_patient=img00009").mask  # patient P2: rows 8..11
    by_key = index.select(parse_filter("not_patient_id=P2", patient_secret=SECRET)).mask
    assert not by_key[8:12].any() and by_key.sum() == N - 4
    assert np.array_equal(by_image, by_key)


def test_row_of_uses_the_hash_index(archive):
    index = HammingIndex(archive["indexes"]["ivf"])
    assert index.row_of("img01234") == 1234 and index.row_of("missing") is None


def test_masked_scan_is_exact_and_strategies_switch(archive):
    import faiss

    codes = archive["codes"]
    flat = faiss.IndexBinaryFlat(BITS)
    flat.add(codes)
    scan = ExactScan(flat, ThreadPolicy(search_threads=1), sample_rows=200)
    assert scan.sample is not None
    search = FilteredSearch(codes_at=scan.codes_at, policy=ThreadPolicy(search_threads=1), exact=scan)
    strategies = set()
    for spec in SPECS[:6]:
        mask = brute_mask(archive, spec)
        rows = np.flatnonzero(mask)
        selection = LabelFilter(rows, rows, mask, N)
        found, strategy = search.search(codes[[3, 500]], 15, False, SearchParams(), selection)
        assert strategy == ("scan_masked" if mask.mean() > GATHER_MAX else "scan_selected")
        strategies.add(strategy)
        for q, (d, lab) in zip(codes[[3, 500]], found):
            want_rows, want_d = brute_topk(archive, q, mask, 15)
            assert np.array_equal(lab, want_rows) and np.array_equal(d, want_d)
    assert strategies == {"scan_masked", "scan_selected"}


def test_approximate_recall_at_every_selectivity(archive):
    # Default-ish settings (not exact unfiltered): filtered recall@100 stays >= 0.95.
    root = archive["root"]
    build_index(archive["codes_dir"], root / "ivf-default", BuildConfig(kind="ivf", params={"nlist": 32, "nprobe": 4}))
    build_index(archive["codes_dir"], root / "hnsw-default", BuildConfig(kind="hnsw"))
    for kind in ("ivf-default", "hnsw-default"):
        index = HammingIndex(root / kind)
        for spec in ({"labels_none": ["Mass"]}, {"sex": ["F"]}, {"labels_any": ["Effusion"]},
                     {"labels_all": ["Mass", "Nodule"], "sex": ["M"]}):
            mask = brute_mask(archive, spec)
            recalls = []
            for qi in range(0, N, 97):
                q = archive["codes"][qi]
                hits = index.search(q, k=100, filter=spec)[0]
                assert mask[hits.rows].all()
                _, dists = brute_topk(archive, q, mask, 100)
                if len(dists):
                    recalls.append(float((hits.distances[:100] <= dists[-1]).sum()) / len(dists))
            assert np.mean(recalls) >= 0.95, (kind, spec, np.mean(recalls))


def test_query_cli_bad_filter_is_one_line(archive):
    from medhash.cli import main

    index_dir = archive["indexes"]["flat"]
    result = CliRunner().invoke(main, ["query", "--index", str(index_dir), "--model", str(index_dir / IDS_FILE),
                                       "x.png", "--filter", "age=..1x"])
    assert result.exit_code == 2
    assert "'age=..1x'" in result.output and "range bounds must be numbers" in result.output


def test_codes_are_gathered_across_scan_shards(archive):
    import faiss

    codes = archive["codes"]
    flat = faiss.IndexBinaryFlat(BITS)
    flat.add(codes)
    scan = ExactScan(flat, ThreadPolicy(search_threads=2, min_rows_per_thread=300))
    assert len(scan.shards) == 2
    rows = np.sort(np.random.default_rng(3).choice(N, 500, replace=False))
    assert np.array_equal(scan.codes_at(rows), codes[rows])
