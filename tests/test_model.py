"""The hashing model: outputs, codes = sign of the hash layer, saliency crop, losses, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medhash.errors import CheckpointError
from medhash.model import AGHashNet, HashEncoder, ModelConfig, load_encoder, load_model, pack_codes, save_checkpoint
from medhash.model.losses import bit_balance_loss, classification_loss, hashing_loss, quantization_loss
from medhash.model.saliency import box_from_map, scale_boxes

TINY = ModelConfig(backbone="tiny", bits=32, global_size=64, local_size=48, fusion_dim=64)


@pytest.fixture(scope="module")
def tiny_model() -> AGHashNet:
    torch.manual_seed(0)
    return AGHashNet(TINY).eval()


def test_config_validates_bits_and_tau():
    for bits in (0, 12, 264):
        with pytest.raises(ValueError, match="multiple of 8"):
            ModelConfig(bits=bits)
    with pytest.raises(ValueError, match="tau"):
        ModelConfig(tau=1.5)
    with pytest.raises(ValueError, match="fusion_inputs"):
        ModelConfig(fusion_inputs=("middle",))


def test_forward_shapes_and_dtypes(tiny_model):
    x = torch.rand(3, 1, 80, 80)
    with torch.no_grad():
        out = tiny_model(x, stage="full")
    c = len(TINY.classes)
    assert out.global_logits.shape == (3, c) and out.local_logits.shape == (3, c)
    assert out.hash.shape == (3, TINY.bits) and out.hash.abs().max() < 1
    assert out.hash_logits.shape == (3, c)
    assert out.fused.shape == (3, TINY.fusion_dim)
    assert out.saliency.shape == (3, TINY.global_size, TINY.global_size)
    assert float(out.saliency.min()) >= 0.0 and float(out.saliency.max()) <= 1.0
    assert out.boxes.dtype == np.int32 and out.boxes.shape == (3, 4)


def test_encode_outputs_and_codes_are_sign_of_hash_layer(tiny_model):
    enc = HashEncoder(tiny_model, "test", engine="fp32", batch_size=2)
    images = [np.random.default_rng(i).random((70 + 10 * i, 90), dtype=np.float32) for i in range(3)]
    res = enc.encode_images(images, with_features=True)
    assert res.codes.dtype == np.uint8 and res.codes.shape == (3, TINY.bits // 8)
    assert res.boxes.shape == (3, 4) and res.saliency.dtype == np.float32
    assert res.features.shape == (3, TINY.fusion_dim) and res.logits.shape == (3, len(TINY.classes))
    with torch.no_grad():
        h = torch.cat([tiny_model([torch.from_numpy(img)[None]], stage="full").hash for img in images])
    expected_bits = (h > 0).numpy()
    assert np.array_equal(np.unpackbits(res.codes, axis=1).astype(bool), expected_bits)
    assert np.array_equal(pack_codes(h), res.codes)
    for box, img in zip(res.boxes, images):  # boxes are in each source image's own pixels
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]


def test_pack_codes_bit_order():
    h = torch.tensor([[0.9, -0.2, 0.1, -1.0, 0.0, 0.3, -0.5, 0.7]])
    assert pack_codes(h).tolist() == [[0b10100101]]


def test_bf16_engine_codes_mostly_agree_with_fp32(tiny_model):
    images = [np.random.default_rng(i).random((64, 64), dtype=np.float32) for i in range(8)]
    fp32 = HashEncoder(tiny_model, "t", engine="fp32").encode_images(images).codes
    bf16 = HashEncoder(AGHashNet(TINY).eval(), "t", engine="bf16")
    bf16.model.load_state_dict(tiny_model.state_dict())
    agree = (np.unpackbits(fp32) == np.unpackbits(bf16.encode_images(images).codes)).mean()
    assert agree > 0.9


def _brightness_cam_model() -> AGHashNet:
    """A model whose CAM is the image brightness: features = 4x4 average pool, classifier weight 1."""
    model = AGHashNet(TINY).eval()
    model.global_backbone.features = nn.AvgPool2d(4)
    model.global_backbone.out_channels = 1
    model.global_classifier = nn.Linear(1, len(TINY.classes))
    nn.init.constant_(model.global_classifier.weight, 1.0)
    nn.init.zeros_(model.global_classifier.bias)
    return model


@pytest.mark.parametrize("source_side", [64, 128])
def test_crop_box_moves_with_planted_lesion(source_side):
    model = _brightness_cam_model()
    s = source_side // 8  # lesion side
    boxes = []
    for (cx, cy) in [(source_side // 4, source_side // 4), (3 * source_side // 4, 5 * source_side // 8)]:
        img = torch.full((1, source_side, source_side), 0.1)
        img[:, cy - s // 2:cy + s // 2, cx - s // 2:cx + s // 2] = 1.0
        with torch.no_grad():
            out = model(img[None], stage="global")
        box = out.boxes[0]
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= source_side and 0 <= y0 < y1 <= source_side
        assert x0 <= cx <= x1 and y0 <= cy <= y1, f"box {box} misses the lesion at {(cx, cy)}"
        assert (x1 - x0) * (y1 - y0) < 0.5 * source_side ** 2  # attends, not the whole image
        boxes.append(box)
    assert boxes[1][0] > boxes[0][0] and boxes[1][1] > boxes[0][1]


def test_box_from_map_largest_component_margin_and_minimum():
    m = np.zeros((100, 100), np.float32)
    m[10:14, 10:14] = 1.0  # small component
    m[50:70, 60:90] = 0.9  # largest component
    x0, y0, x1, y1 = box_from_map(m, tau=0.7, min_box_frac=0.0, margin_frac=0.0)
    assert (x0, y0, x1, y1) == (60, 50, 90, 70)
    x0, y0, x1, y1 = box_from_map(m, tau=0.7, min_box_frac=0.0, margin_frac=0.05)
    assert (x0, y0, x1, y1) == (55, 45, 95, 75)
    x0, y0, x1, y1 = box_from_map(m, tau=0.7, min_box_frac=0.5, margin_frac=0.0)
    assert x1 - x0 == 50 and y1 - y0 == 50 and 0 <= x0 and x1 <= 100
    corner = np.zeros((100, 100), np.float32)
    corner[95:, 95:] = 1.0  # minimum size near the border stays inside the image
    assert box_from_map(corner, 0.7, 0.3, 0.0) == (70, 70, 100, 100)
    assert box_from_map(np.zeros((50, 40), np.float32), 0.7, 0.2, 0.05) == (0, 0, 40, 50)


def test_scale_boxes_keeps_boxes_inside():
    b = np.array([[0, 0, 64, 64], [10, 20, 30, 40]])
    out = scale_boxes(b, (64, 64), (256, 128))
    assert out.tolist() == [[0, 0, 128, 256], [20, 80, 60, 160]]


def test_quantization_loss_sign_and_gradient():
    h = torch.tensor([[0.5, -0.5, 1.0, -1.0]], requires_grad=True)
    loss = quantization_loss(h)
    assert loss.item() == pytest.approx((0.25 + 0.25) / 4)
    loss.backward()
    # gradient descent moves +0.5 up and -0.5 down (towards +-1); saturated entries feel no pull
    assert h.grad[0, 0] < 0 < h.grad[0, 1] and h.grad[0, 2] == 0 and h.grad[0, 3] == 0
    assert quantization_loss(torch.ones(3, 4)).item() == 0.0


def test_bit_balance_loss_sign_and_gradient():
    balanced = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert bit_balance_loss(balanced).item() == 0.0
    h = torch.tensor([[0.9, 0.1], [0.8, -0.1]], requires_grad=True)
    loss = bit_balance_loss(h)
    assert loss.item() > 0
    loss.backward()
    assert (h.grad[:, 0] > 0).all()  # bit 0 is +1 for everyone: descent pushes it down
    assert h.grad[:, 1].abs().max() == 0  # bit 1 is already balanced


def test_classification_loss_gradient_and_weighting():
    logits = torch.zeros(2, 3, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    loss = classification_loss(logits, y)
    loss.backward()
    assert loss.item() == pytest.approx(np.log(2))
    assert (logits.grad[y > 0] < 0).all() and (logits.grad[y == 0] > 0).all()
    weighted = classification_loss(torch.zeros(2, 3), y, pos_weight=torch.tensor([3.0, 1.0, 1.0]))
    assert weighted.item() > loss.item()


def test_hashing_loss_combines_terms():
    h = torch.tanh(torch.randn(8, 16))
    logits = torch.randn(8, 15)
    y = (torch.rand(8, 15) > 0.7).float()
    total, terms = hashing_loss(logits, h, y)
    assert set(terms) == {"classification", "quantization", "bit_balance"}
    assert total.item() == pytest.approx(terms["classification"] + 0.1 * terms["quantization"] + 1.0 * terms["bit_balance"], rel=1e-5)


def test_checkpoint_round_trip(tmp_path, tiny_model):
    path = tmp_path / "m.pt"
    model_id = save_checkpoint(path, tiny_model, extra={"note": "x"})
    model, payload = load_model(path)
    assert payload["model_id"] == model_id and payload["extra"]["note"] == "x"
    assert model.config == TINY
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    enc = load_encoder(path, engine="fp32")
    assert enc.model_id == model_id and enc.bits == 32 and enc.input_size == 64
    img = [np.random.default_rng(0).random((64, 64), dtype=np.float32)]
    assert np.array_equal(enc.encode_images(img).codes, HashEncoder(tiny_model, "", engine="fp32").encode_images(img).codes)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_model_id_changes_with_weights(tmp_path):
    torch.manual_seed(1)
    a = save_checkpoint(tmp_path / "a.pt", AGHashNet(TINY))
    torch.manual_seed(2)
    b = save_checkpoint(tmp_path / "b.pt", AGHashNet(TINY))
    assert a != b and len(a) == 16


def test_corrupt_checkpoints_fail_clearly(tmp_path, tiny_model):
    good = tmp_path / "good.pt"
    save_checkpoint(good, tiny_model)
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*corrupt or truncated"):
        load_model(truncated)
    with pytest.raises(CheckpointError, match="missing.pt.*not found"):
        load_model(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="other.pt.*not a medhash model checkpoint"):
        load_model(other)
    payload = torch.load(good, weights_only=True)
    payload["state_dict"]["hash_layer.bias"] += 1.0
    tampered = tmp_path / "tampered.pt"
    torch.save(payload, tampered)
    with pytest.raises(CheckpointError, match="tampered.pt.*do not match the recorded model_id"):
        load_model(tampered)
    payload = torch.load(good, weights_only=True)
    payload["model_config"]["bits"] = 64  # config says 64 bits, weights have 32
    wrong = tmp_path / "wrong.pt"
    torch.save(payload, wrong)
    with pytest.raises(CheckpointError, match="wrong.pt.*do not fit the recorded config"):
        load_model(wrong)
