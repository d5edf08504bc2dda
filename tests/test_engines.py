"""Encoder engines: the registry and the CLI choices, and the OpenVINO export of both branches against torch fp32."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from medhash.cli import main as cli_main
from medhash.encoding import ENGINES
from medhash.errors import EngineUnavailableError
from medhash.model import AGHashNet, HashEncoder, ModelConfig, load_encoder, save_checkpoint

TINY = ModelConfig(backbone="tiny", bits=32, global_size=64, local_size=48, fusion_dim=64)
OPENVINO_ENGINES = ("openvino-fp32", "openvino-bf16")

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="openvino is not installed (optional extra: pip install -e '.[openvino]', part of '.[dev]')")


def _tiny(fusion_inputs=("global", "local")) -> AGHashNet:
    torch.manual_seed(0)
    return AGHashNet(replace(TINY, fusion_inputs=tuple(fusion_inputs))).eval()


def _images(n: int = 12) -> list[np.ndarray]:
    """Sources of several sizes, so the crop really comes from each full-resolution source."""
    return [np.random.default_rng(i).random((64 + 16 * (i % 3), 80), dtype=np.float32) for i in range(n)]


def _encode(model: AGHashNet, engine: str, images) -> "object":
    copy = AGHashNet(model.config).eval()
    copy.load_state_dict(model.state_dict())
    return HashEncoder(copy, "t", engine=engine, batch_size=5).encode_images(images, with_features=True)


def test_openvino_engines_are_in_the_registry_and_the_cli_choices():
    assert set(OPENVINO_ENGINES) <= set(ENGINES)
    for name in OPENVINO_ENGINES:
        assert ENGINES[name].runtime == "openvino" and ENGINES[name].cpu_only
    for command in ("encode", "serve", "evaluate", "bench"):
        option = next(p for p in cli_main.commands[command].params if p.name == "engine")
        assert set(option.type.choices) == {"auto", *ENGINES}, command


def test_missing_extra_is_a_one_line_error_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(EngineUnavailableError, match=r"pip install 'medhash\[openvino\]'") as caught:
        HashEncoder(_tiny(), "t", engine="openvino-bf16")
    assert "\n" not in str(caught.value)


def test_openvino_engine_refuses_cuda():
    with pytest.raises(ValueError, match="CPU only"):
        HashEncoder(_tiny(), "t", engine="openvino-fp32", device="cuda")


@needs_openvino
@pytest.mark.parametrize("fusion_inputs", [("global", "local"), ("global",), ("local",)])
def test_openvino_fp32_matches_torch_fp32(fusion_inputs):
    model, images = _tiny(fusion_inputs), _images()
    fp32, ov = _encode(model, "fp32", images), _encode(model, "openvino-fp32", images)
    assert (np.unpackbits(fp32.codes) == np.unpackbits(ov.codes)).mean() >= 0.99
    assert np.abs(fp32.boxes.astype(int) - ov.boxes.astype(int)).max() <= 1
    np.testing.assert_allclose(ov.saliency, fp32.saliency, atol=1e-3)
    np.testing.assert_allclose(ov.features, fp32.features, atol=1e-3)
    assert ov.logits.shape == fp32.logits.shape and ov.codes.shape == fp32.codes.shape


@needs_openvino
def test_openvino_bf16_codes_mostly_agree_with_fp32():
    model, images = _tiny(), _images()
    bits = {name: np.unpackbits(_encode(model, name, images).codes) for name in ("fp32", "openvino-bf16")}
    assert (bits["openvino-bf16"] == bits["fp32"]).mean() > 0.9  # the threshold torch bf16 is held to (test_model)


@needs_openvino
def test_export_is_cached_beside_the_checkpoint(tmp_path):
    path = tmp_path / "tiny.pt"
    model_id = save_checkpoint(path, _tiny())
    images = _images(4)
    first = load_encoder(path, engine="openvino-fp32").encode_images(images)
    cached = list((tmp_path / "tiny.pt.openvino").glob(f"{model_id}-ov*/global.xml"))
    assert len(cached) == 1 and (cached[0].parent / "local.xml").is_file()
    assert not list((tmp_path / "tiny.pt.openvino").glob(".*"))  # no temp folder left behind
    again = load_encoder(path, engine="openvino-fp32").encode_images(images)  # read back from the cache
    assert np.array_equal(first.codes, again.codes) and np.array_equal(first.boxes, again.boxes)
