"""Codes, boxes and logits of a fixed phantom set and seeded tiny model, as recorded before the refactor."""

from __future__ import annotations

import numpy as np
import pytest

from golden.record import GOLDEN, compute


@pytest.mark.timeout(120)
class TestGolden:
    def test_outputs_match_the_recorded_golden_file(self, tmp_path):
        expected = np.load(GOLDEN)
        got = compute(tmp_path)
        assert got["labels_csv"] == expected["labels_csv"]
        assert list(got["pixel_sha256"]) == list(expected["pixel_sha256"]), "phantom pixels changed"
        assert np.array_equal(got["codes"], expected["codes"]), "codes changed"
        assert np.array_equal(got["boxes"], expected["boxes"]), "saliency boxes changed"
        np.testing.assert_allclose(got["logits"], expected["logits"], rtol=0, atol=1e-5)
