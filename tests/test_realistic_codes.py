"""benchmarks/realistic_codes.py: the Bernoulli mixture fits, samples reproducibly and in bounded chunks."""

from __future__ import annotations

import numpy as np

from benchmarks import realistic_codes as rc


def test_mixture_recovers_clusters_and_samples_reproducibly():
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 2, (4, 64), dtype=np.uint8)
    bits = centres[rng.integers(0, 4, 400)] ^ (rng.random((400, 64)) < 0.05)
    model = rc.fit_mixture(bits, 4, seed=0)
    assert np.allclose(np.sort(model.weights).sum(), 1.0)
    # Each centre is one component's most likely code.
    modes = (model.probs > 0.5).astype(np.uint8)
    assert all(np.abs(modes.astype(int) - c).sum(axis=1).min() <= 2 for c in centres)
    a, ca = model.sample(np.random.default_rng(1), 50)
    b, cb = model.sample(np.random.default_rng(1), 50)
    assert a.shape == (50, 8) and a.dtype == np.uint8 and np.array_equal(a, b) and np.array_equal(ca, cb)
    assert model.log_likelihood(bits.astype(float)).mean() > rc.fit_mixture(bits, 1).log_likelihood(bits.astype(float)).mean()


def test_fixture_matches_its_description():
    codes = rc.load_real_codes()
    ids = rc.real_image_ids()
    assert codes.dtype == np.uint8 and codes.shape == (len(ids), 8) and len(set(ids)) == len(ids)
