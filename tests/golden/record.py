"""Record the golden codes of a fixed phantom set and a seeded tiny model.

Run once, before a refactor, with the code as it was: `python tests/golden/record.py`.
`tests/test_golden.py` recomputes the same outputs with the current code and compares, so
"codes unchanged" is checked against the code as it was, not against itself.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).with_name("tiny_phantoms.npz")
N_IMAGES = 12
PHANTOM_SIZE = 96
MODEL_SEED = 0


def compute(workdir: Path) -> dict[str, np.ndarray]:
    """Codes, boxes, logits and pixel digests of N_IMAGES phantoms, written as PNG and read back."""
    import torch

    from medhash.data import read_image
    from medhash.data.phantoms import PhantomConfig, write_phantom_dataset
    from medhash.model import AGHashNet, HashEncoder, ModelConfig

    torch.manual_seed(MODEL_SEED)
    config = ModelConfig(backbone="tiny", bits=32, global_size=64, local_size=48, fusion_dim=64)
    model = AGHashNet(config).eval()
    out = write_phantom_dataset(workdir, N_IMAGES, PhantomConfig(size=PHANTOM_SIZE, seed=7))
    files = sorted((out / "images").glob("*.png"))
    images = [read_image(f) for f in files]
    result = HashEncoder(model, "golden", engine="fp32", batch_size=4).encode_images(images)
    digests = np.array([hashlib.sha256(img.tobytes()).hexdigest() for img in images])
    return {"codes": result.codes, "boxes": result.boxes, "logits": result.logits,
            "pixel_sha256": digests, "labels_csv": np.array((out / "labels.csv").read_text())}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        arrays = compute(Path(tmp))
    np.savez(GOLDEN, **arrays)
    print(f"wrote {GOLDEN} ({len(arrays['codes'])} images)", file=sys.stderr)
