"""Label tables (dev format and NIH Data_Entry), reported problems, patient-grouped splits, boxes."""

from __future__ import annotations

import csv
import gzip
from collections import Counter

import numpy as np
import pytest

from medhash.data import CLASSES, read_image, read_label_table
from medhash.data.boxes import read_reference_boxes
from medhash.data.labels import LabelRecord, multi_hot
from medhash.data.splits import assign_folds
from medhash.errors import LabelTableError


def _write_png(path, value=128):
    from PIL import Image

    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_dev_format_with_problems(tmp_path):
    (tmp_path / "images").mkdir()
    _write_png(tmp_path / "images" / "a.png")
    _write_png(tmp_path / "images" / "b.png")
    (tmp_path / "labels.csv").write_text(
        "image_id,file,patient_id,labels,dev_fold\n"
        "a,images/a.png,p1,Nodule|Effusion,0\n"
        "b,images/b.png,p2,Unicorn,1\n"
        "c,images/c.png,p3,No Finding,2\n"
        "a,images/a.png,p1,Nodule,0\n"
    )
    table = read_label_table(tmp_path / "labels.csv")
    assert [r.image_id for r in table.records] == ["a", "b", "c"]
    assert table.records[0].labels == ("Nodule", "Effusion") and table.records[0].fold == 0
    kinds = Counter(p.kind for p in table.problems)
    assert kinds == {"unknown_label": 1, "missing_file": 1, "duplicate_id": 1}
    assert any("Unicorn" in str(p) for p in table.problems)
    hot = table.multi_hot()
    assert hot.shape == (3, 15) and hot[0, CLASSES.index("Nodule")] and hot[0, CLASSES.index("Effusion")]
    assert not hot[1].any()  # the unknown label is reported, not mapped
    assert table.class_counts()["No Finding"] == 1


def test_nih_data_entry_format_gz(tmp_path):
    (tmp_path / "images").mkdir()
    _write_png(tmp_path / "images" / "00000001_000.png")
    text = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age\n"
            "00000001_000.png,Cardiomegaly|Emphysema,0,1,58\n"
            "00000002_000.png,No Finding,0,2,81\n")
    (tmp_path / "Data_Entry_2017.csv.gz").write_bytes(gzip.compress(text.encode()))
    table = read_label_table(tmp_path / "Data_Entry_2017.csv.gz")
    assert [r.image_id for r in table.records] == ["00000001_000", "00000002_000"]
    assert table.records[0].patient_id == "1" and table.records[0].labels == ("Cardiomegaly", "Emphysema")
    assert table.records[0].path == tmp_path / "images" / "00000001_000.png"
    assert [p.kind for p in table.problems] == ["missing_file"]


def test_unknown_table_format_and_missing_table(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LabelTableError, match="x.csv: unknown label table format"):
        read_label_table(tmp_path / "x.csv")
    with pytest.raises(LabelTableError, match="nope.csv: label table not found"):
        read_label_table(tmp_path / "nope.csv")


def test_patient_grouped_seeded_folds():
    records = [LabelRecord(f"i{i}", None, f"p{i // 3}", ("Nodule",)) for i in range(300)]
    folds = assign_folds(records, n_folds=5, seed=1)
    assert np.array_equal(folds, assign_folds(records, n_folds=5, seed=1))
    assert not np.array_equal(folds, assign_folds(records, n_folds=5, seed=2))
    by_patient = {}
    for r, f in zip(records, folds):
        assert by_patient.setdefault(r.patient_id, f) == f  # a patient never spans two folds
    assert set(np.bincount(folds)) == {60}


def test_table_folds_are_honoured_and_checked():
    records = [LabelRecord("a", None, "p1", (), 2), LabelRecord("b", None, "p2", (), 0)]
    assert assign_folds(records).tolist() == [2, 0]
    with pytest.raises(ValueError, match="patient p1 appears in folds"):
        assign_folds(records + [LabelRecord("c", None, "p1", (), 1)])


def test_multi_hot_ignores_labels_outside_the_class_list():
    assert multi_hot([("A", "Z"), ()], ("A", "B")).tolist() == [[True, False], [False, False]]


@pytest.mark.shared
def test_shared_dev_set_reads_completely(shared_data):
    dev = shared_data / "nih-cxr14-dev"
    table = read_label_table(dev / "labels.csv")
    assert len(table) == 1870 and table.problems == []
    raw = list(csv.DictReader(open(dev / "labels.csv")))
    expected = Counter(label for row in raw for label in row["labels"].split("|"))
    assert table.class_counts() == {c: expected.get(c, 0) for c in CLASSES}
    assert len({r.patient_id for r in table.records}) == 1487
    shapes = Counter()
    for rec in table.records:
        img = read_image(rec.path)
        assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
        shapes[img.shape] += 1
    assert shapes == {(256, 256): 1870}
    folds = assign_folds(table.records)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]


@pytest.mark.shared
def test_shared_reference_boxes(shared_data):
    ids = {r.image_id for r in read_label_table(shared_data / "nih-cxr14-dev" / "labels.csv", check_files=False).records}
    nih = read_reference_boxes(shared_data / "nih-meta" / "BBox_List_2017.csv.gz", image_size=256)
    rsna = read_reference_boxes(shared_data / "nih-cxr14-dev" / "rsna_link.csv", image_size=256)
    assert len(ids & set(nih)) == 45 and len(ids & set(rsna)) == 227
    for boxes in list(nih.values()) + list(rsna.values()):
        for finding, (x0, y0, x1, y1) in boxes:
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256, (finding, x0, y0, x1, y1)
    assert all(f in CLASSES for b in nih.values() for f, _ in b)  # "Infiltrate" is mapped to "Infiltration"
