"""Synthetic chest-radiograph phantoms: determinism, labels, boxes, balance, files, CLI."""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medhash.data.labels import CLASSES, NO_FINDING, read_label_table
from medhash.data.phantoms import (
    BOX_COLUMNS,
    DEFAULT_FINDING_PROBS,
    LABEL_COLUMNS,
    PHANTOM_FINDINGS,
    PhantomConfig,
    generate_phantom,
    phantom_label_counts,
    render_phantom,
    sample_phantom_spec,
    write_phantom_dataset,
)

SMALL = PhantomConfig(size=64, seed=0)
REQUIRED = {"Nodule", "Mass", "Effusion", "Cardiomegaly", "Consolidation", "Pneumothorax"}


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _first_spec_with(name: str, config: PhantomConfig):
    for index in range(500):
        spec = sample_phantom_spec(index, config)
        if name in spec.labels:
            return spec
    raise AssertionError(f"no {name} in 500 phantoms")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph") / "a", 40, SMALL, folds=5)


def test_findings_are_nih_class_names():
    assert REQUIRED <= set(PHANTOM_FINDINGS)
    assert set(PHANTOM_FINDINGS) <= set(CLASSES)
    # Labels come out in class-list order.
    order = {c: i for i, c in enumerate(CLASSES)}
    for index in range(60):
        labels = sample_phantom_spec(index, SMALL).labels
        assert list(labels) == sorted(labels, key=order.__getitem__)


def test_same_seed_writes_identical_bytes_whatever_the_worker_count(dataset, tmp_path):
    again = write_phantom_dataset(tmp_path / "b", 40, SMALL, folds=5, workers=2)
    first, second = _tree_bytes(dataset), _tree_bytes(again)
    assert len([k for k in first if k.endswith(".png")]) == 40
    assert first.keys() == second.keys()
    assert first == second


def test_different_seed_differs(tmp_path):
    a = generate_phantom(3, SMALL)
    b = generate_phantom(3, PhantomConfig(size=64, seed=1))
    assert not np.array_equal(a.image, b.image)
    write_phantom_dataset(tmp_path / "s1", 10, PhantomConfig(size=64, seed=1))
    write_phantom_dataset(tmp_path / "s0", 10, SMALL)
    assert (tmp_path / "s1" / "labels.csv").read_bytes() != (tmp_path / "s0" / "labels.csv").read_bytes()


def test_phantom_depends_only_on_seed_and_index():
    later = generate_phantom(17, SMALL)
    for index in range(5):  # generating others first must not change it
        generate_phantom(index, SMALL)
    again = generate_phantom(17, SMALL)
    assert np.array_equal(later.image, again.image)
    assert later.labels == again.labels and later.boxes == again.boxes
    assert later.image_id == again.image_id and later.patient_id == again.patient_id


@pytest.mark.parametrize("size", [64, 100, 128, 256])
def test_images_at_any_size(size):
    config = PhantomConfig(size=size, seed=5)
    for index in (0, 1, 2):
        phantom = generate_phantom(index, config)
        assert phantom.image.shape == (size, size)
        assert phantom.image.dtype == np.float32
        assert 0.0 <= phantom.image.min() and phantom.image.max() <= 1.0
        assert phantom.image.std() > 0.1  # a picture, not a flat field
        # Air outside the body (top corners) is darker than the mediastinum below the neck.
        corner = phantom.image[: size // 10, : size // 10].mean()
        centre = phantom.image[size // 2 - size // 20 : size // 2 + size // 20, size // 2 - 2 : size // 2 + 2].mean()
        assert corner < centre


def test_boxes_scale_with_size():
    spec = _first_spec_with("Mass", SMALL)
    small = dict(render_phantom(spec, 64).boxes)
    large = dict(render_phantom(spec, 256).boxes)
    for name, box in small.items():
        assert np.allclose(np.array(box) / 64, np.array(large[name]) / 256, atol=0.05), name


def test_boxes_inside_image_and_non_empty_and_no_finding_iff_none():
    seen = Counter()
    for size in (64, 96):
        config = PhantomConfig(size=size, seed=2)
        for index in range(70):
            phantom = generate_phantom(index, config)
            names = [name for name, _ in phantom.boxes]
            if phantom.labels == (NO_FINDING,):
                assert names == []
            else:
                assert NO_FINDING not in phantom.labels
                assert names == list(phantom.labels)  # one box per finding
                assert len(names) == len(set(names))
            for name, (x0, y0, x1, y1) in phantom.boxes:
                assert all(isinstance(v, int) for v in (x0, y0, x1, y1))
                assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, (name, (x0, y0, x1, y1))
                seen[name] += 1
    assert set(seen) == set(PHANTOM_FINDINGS)


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("size", [64, 128])
def test_each_finding_changes_pixels_inside_its_box(name, size):
    config = PhantomConfig(size=size, seed=4)
    spec = _first_spec_with(name, config)
    without = render_phantom(spec, size, findings=())
    with_it = render_phantom(spec, size, findings=(name,))
    assert without.boxes == with_it.boxes
    x0, y0, x1, y1 = dict(with_it.boxes)[name]
    diff = np.abs(with_it.image - without.image)
    inside = diff[y0:y1, x0:x1]
    assert inside.mean() > 0.01, f"{name} barely visible in its box"
    assert inside.sum() >= 0.9 * diff.sum(), f"{name} changes pixels outside its box"


def test_render_findings_false_is_the_same_picture_without_findings():
    spec = _first_spec_with("Nodule", SMALL)
    drawn = generate_phantom(spec.index, SMALL)
    plain = generate_phantom(spec.index, SMALL, render_findings=False)
    assert plain.labels == drawn.labels and plain.boxes == drawn.boxes
    assert np.array_equal(plain.image, render_phantom(spec, 64, findings=()).image)
    assert not np.array_equal(plain.image, drawn.image)


def _frequencies(config: PhantomConfig, n: int) -> tuple[dict[str, float], float, int]:
    counts, none, most = Counter(), 0, 0
    for index in range(n):
        labels = sample_phantom_spec(index, config).labels
        counts.update(labels)
        none += labels == (NO_FINDING,)
        most = max(most, 0 if labels == (NO_FINDING,) else len(labels))
    return {k: counts[k] / n for k in PHANTOM_FINDINGS}, none / n, most


@pytest.mark.parametrize("stratified", [True, False])
def test_class_balance_follows_finding_probs(stratified):
    n = 600
    probs = {
        "Nodule": 0.45,
        "Mass": 0.05,
        "Effusion": 0.2,
        "Cardiomegaly": 0.3,
        "Consolidation": 0.0,
        "Pneumothorax": 0.1,
    }
    config = PhantomConfig(size=64, seed=11, finding_probs=probs, max_findings=6, stratified=stratified)
    freq, none, _ = _frequencies(config, n)
    for name, p in probs.items():
        # Stratified sampling is near-exact; an independent coin is within 4 binomial sigmas.
        tol = 0.02 if stratified else 4 * math.sqrt(p * (1 - p) / n) + 1e-9
        assert abs(freq[name] - p) <= tol, (name, freq[name], p)
    expected_none = math.prod(1 - p for p in probs.values())  # findings are independent
    assert abs(none - expected_none) < 0.07


def test_default_balance_and_cap():
    freq, none, _ = _frequencies(PhantomConfig(size=64, seed=0), 500)
    assert 0.25 <= none <= 0.45  # the documented ~30-40% No Finding
    for name, p in DEFAULT_FINDING_PROBS.items():
        assert abs(freq[name] - p) < 0.04, name
    capped = PhantomConfig(size=64, finding_probs={n: 0.9 for n in PHANTOM_FINDINGS}, max_findings=2)
    _, _, most = _frequencies(capped, 100)
    assert most == 2


def test_dataset_files(dataset):
    header, rows = _read_csv(dataset / "labels.csv")
    assert header == list(LABEL_COLUMNS)
    assert len(rows) == 40
    by_patient = defaultdict(list)
    for row in rows:
        assert row["file"] == f"images/{row['image_id']}.png"
        labels = row["labels"].split("|")
        assert labels == [NO_FINDING] or NO_FINDING not in labels
        assert 0 <= int(row["dev_fold"]) < 5
        by_patient[row["patient_id"]].append(row)
        with Image.open(dataset / row["file"]) as im:
            assert im.mode == "L" and im.size == (64, 64)
    assert any(len(v) == 2 for v in by_patient.values()), "some patients must have two images"
    assert all(len({r["dev_fold"] for r in v}) == 1 for v in by_patient.values()), "a patient spans folds"
    assert {r["dev_fold"] for r in rows} == {str(f) for f in range(5)}

    box_header, boxes = _read_csv(dataset / "boxes.csv")
    assert box_header == list(BOX_COLUMNS)
    labels_of = {r["image_id"]: set(r["labels"].split("|")) for r in rows}
    boxed = defaultdict(set)
    for b in boxes:
        boxed[b["image_id"]].add(b["finding"])
        assert 0 <= int(b["x0"]) < int(b["x1"]) <= 64 and 0 <= int(b["y0"]) < int(b["y1"]) <= 64
    for image_id, labels in labels_of.items():
        assert boxed.get(image_id, set()) == labels - {NO_FINDING}

    # The PNG is the phantom quantised to 8 bits.
    first = generate_phantom(0, SMALL)
    png = np.asarray(Image.open(dataset / f"images/{first.image_id}.png"))
    assert np.abs(png.astype(int) - np.round(first.image * 255).astype(int)).max() == 0


def test_dataset_reads_with_the_label_reader(dataset):
    table = read_label_table(dataset / "labels.csv")
    assert table.problems == []
    assert len(table) == 40
    assert all(r.fold is not None and r.path.is_file() for r in table.records)
    counts = phantom_label_counts(dataset)
    assert sum(counts.values()) >= 40
    assert counts == {name: table.class_counts()[name] for name in counts}


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="Atelectasis"):
        PhantomConfig(finding_probs={"Atelectasis": 0.1})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PhantomConfig(finding_probs={"Nodule": 1.5})
    with pytest.raises(ValueError):
        PhantomConfig(size=8)


def test_cli_writes_dataset(tmp_path):
    from medhash.cli import main

    out = tmp_path / "cli"
    result = CliRunner().invoke(
        main, ["phantoms", "--n", "6", "--size", "64", "--out", str(out), "--seed", "3", "--folds", "2"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and "6 phantoms" in result.output and NO_FINDING in result.output
    _, rows = _read_csv(out / "labels.csv")
    assert len(rows) == 6 and {r["dev_fold"] for r in rows} <= {"0", "1"}
    assert len(list((out / "images").glob("*.png"))) == 6
    assert (out / "boxes.csv").is_file()
    # Same bytes as the library call.
    lib = write_phantom_dataset(tmp_path / "lib", 6, PhantomConfig(size=64, seed=3), folds=2)
    assert _tree_bytes(out) == _tree_bytes(lib)

    bad = CliRunner().invoke(main, ["phantoms", "--n", "2", "--out", str(tmp_path / "x"), "--prob", "Hernia=0.5"])
    assert bad.exit_code == 2 and "Hernia" in bad.output
