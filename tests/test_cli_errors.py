"""Every failure mode of issue 14 that comes from the command line is one line naming the value and what is
allowed, with no traceback unless -vv; label-table problems are reported alike by train and evaluate."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from medhash.cli import main
from medhash.cli.options import BACKBONE_NAMES, BITS_RANGE
from medhash.data.labels import read_label_table, report_label_problems
from medhash.errors import CheckpointError, LabelTableError
from medhash.model.checkpoint import read_checkpoint


def run(args: list[str]):
    return CliRunner().invoke(main, args)


def one_line_error(result) -> str:
    assert result.exit_code != 0 and not isinstance(result.exception, (AssertionError, TypeError)), result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture()
def labels_csv(tmp_path) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text("image_id,file,patient_id,labels,dev_fold\na,a.png,p1,Mass,0\n")
    return path


@pytest.mark.parametrize("bits,expected", [("12", "12 is not a multiple of 8 in [8, 256]"),
                                           ("0", "0 is not a multiple of 8 in [8, 256]"),
                                           ("264", "264 is not a multiple of 8"),
                                           ("abc", "'abc' is not an integer")])
def test_train_bits_outside_the_allowed_lengths(labels_csv, tmp_path, bits, expected):
    line = one_line_error(run(["train", "--labels", str(labels_csv), "--out", str(tmp_path / "m.pt"), "--bits", bits]))
    assert "--bits" in line and expected in line


def test_train_unknown_backbone_lists_the_known_ones(labels_csv, tmp_path):
    line = one_line_error(run(["train", "--labels", str(labels_csv), "--out", str(tmp_path / "m.pt"),
                               "--backbone", "resnet9000"]))
    assert "'resnet9000' is not one of 'densenet121', 'tiny'" in line


def test_cli_lists_agree_with_the_registries():
    from medhash.model.backbone import BACKBONES
    from medhash.model.config import ModelConfig
    from medhash.cli.model_cmds import evaluate_cmd
    from medhash.model.encoder import ENGINES

    assert sorted(BACKBONE_NAMES) == sorted(BACKBONES)
    engine = next(p for p in evaluate_cmd.params if p.name == "engine")
    assert sorted(engine.type.choices) == sorted([*ENGINES, "auto"])
    ModelConfig(bits=BITS_RANGE[0]), ModelConfig(bits=BITS_RANGE[1])
    with pytest.raises(ValueError):
        ModelConfig(bits=BITS_RANGE[1] + 8)


def test_index_remove_refuses_a_binary_ids_file(tmp_path):
    (tmp_path / "idx").mkdir()
    ids = tmp_path / "ids.bin"
    ids.write_bytes(bytes(range(256)) * 4)
    line = one_line_error(run(["index", "remove", "--index", str(tmp_path / "idx"), "--ids", str(ids)]))
    assert f"{ids} is not a text file of image ids (UTF-8, one per line)" in line and "--ids" in line


def test_a_text_file_as_model_is_explained_without_torch_advice(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n")
    with pytest.raises(CheckpointError, match="not a PyTorch file at all") as info:
        read_checkpoint(text)
    assert "weights_only" not in str(info.value)


class _Anything:  # a class torch's weights-only loader refuses
    pass


def test_a_pickle_with_code_is_refused_without_torch_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "medhash.checkpoint", "obj": _Anything()}, path)
    with pytest.raises(CheckpointError, match="medhash never loads") as info:
        read_checkpoint(path)
    assert "weights_only" not in str(info.value)
    line = one_line_error(run(["evaluate", "--model", str(path), "--labels", str(path)]))
    assert "weights_only" not in line and "medhash never loads" in line


def test_truncated_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"a": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(path)


def test_vv_keeps_the_traceback(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("x")
    result = CliRunner().invoke(main, ["-vv", "evaluate", "--model", str(text), "--labels", str(text)])
    assert isinstance(result.exception, CheckpointError)


def test_os_errors_are_one_line(tmp_path, monkeypatch):
    import medhash.cli.index_cmds as index_cmds

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(index_cmds, "_read_id_file", denied)
    (tmp_path / "idx").mkdir()
    (tmp_path / "ids.txt").write_text("a\n")
    line = one_line_error(run(["index", "remove", "--index", str(tmp_path / "idx"), "--ids", str(tmp_path / "ids.txt")]))
    assert line == f"Error: {tmp_path / 'ids.txt'}: Permission denied"


# -- label tables ---------------------------------------------------------------------------------
BAD_TABLE = ("image_id,file,patient_id,labels,dev_fold\n"
             "a,a.png,p1,Mass,0\n"
             "b,b.png,p2,Pneumonitis,1\n"  # unknown label
             "a,a.png,p1,Mass,0\n"  # duplicate id
             "c,c.png,p3,,2\n")  # empty label field


@pytest.fixture()
def bad_table(tmp_path) -> Path:
    for name in "abc":
        (tmp_path / f"{name}.png").write_bytes(b"")
    path = tmp_path / "labels.csv"
    path.write_text(BAD_TABLE)
    return path


def test_label_problems_are_reported_by_kind(bad_table, caplog):
    table = read_label_table(bad_table)
    kinds = sorted(p.kind for p in table.problems)
    assert kinds == ["duplicate_id", "empty_labels", "unknown_label"]
    with caplog.at_level(logging.WARNING):
        report_label_problems(table)
    summary = caplog.records[0].getMessage()
    assert f"{bad_table}: 3 label table problem(s): 1 duplicate_id, 1 empty_labels, 1 unknown_label" in summary
    assert any("'Pneumonitis' is not in the class list" in r.getMessage() for r in caplog.records)
    with pytest.raises(LabelTableError, match="3 label table problem"):
        report_label_problems(table, strict=True)


def test_train_and_evaluate_refuse_a_bad_table_with_strict(bad_table, tmp_path, served_archive):
    train = run(["train", "--labels", str(bad_table), "--out", str(tmp_path / "m.pt"), "--backbone", "tiny",
                 "--strict", "--no-progress", "--work-dir", str(tmp_path / "work")])
    evaluate = run(["evaluate", "--model", str(served_archive.model_path), "--labels", str(bad_table), "--strict"])
    for result in (train, evaluate):
        line = one_line_error(result)
        assert "3 label table problem(s): 1 duplicate_id, 1 empty_labels, 1 unknown_label (refused: --strict)" in line
