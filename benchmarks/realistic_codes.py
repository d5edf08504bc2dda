"""Realistic 64-bit hash codes for search benchmarks: a Bernoulli mixture fitted to real model codes.

    from benchmarks.realistic_codes import realistic_codes, iter_realistic_codes
    codes, component = realistic_codes(1_000_000, seed=0)     # uint8 [n, 8], int32 [n]
    for codes, component in iter_realistic_codes(10_000_000, seed=0):   # 1M-row chunks, bounded memory
        ...
    real_ids = real_image_ids(); owner = real_components()   # real image of each fixture row, its component
    python -m benchmarks.realistic_codes            # fit, validate, print the check as JSON
    python -m benchmarks.realistic_codes --encode MODEL.pt   # rewrite the fixture from a checkpoint

Source. benchmarks/data/nih_dev_codes_64.npy holds the codes of the 1,870 NIH dev images under a
DenseNet-121 hashing model trained on the dev set (benchmarks.quality_cv's `previous_default` cell
of fold 0: 64 bits, 128 px, trained on the other four folds; encoded in bf16 with one thread;
`nih_dev_codes_64.json` names the checkpoint and the image id of each row).
Uniform random codes are the easy case for an inverted index (no structure) and the hard case for
a flat scan's tie handling; real codes are neither: their bits are correlated and unbalanced, and
images of the same finding, view or patient sit a few bits apart.

Model. A mixture of K product-Bernoulli components (K prototypes, each with its own per-bit
probability of a 1), fitted by EM to the real codes; K is the one with the best likelihood of
held-out real codes (5-fold cross-validated), so the mixture neither copies the real codes (K = n,
every synthetic code a noisy copy of one real image, which makes large archives a few thousand
tight clusters) nor ignores their structure (K = 1, independent bits). A synthetic code draws its
component, then each bit independently. Independent bits spread a component wider than real codes
are (their bits are correlated within a finding or view): unsharpened, every synthetic nearest
neighbour was ~3 bits farther than the real one at every archive size, with the same slope. One
exponent a (p -> p^a / (p^a + (1-p)^a), `fit_sharpening`) is fitted so that the mean NN distance at
the real archive size matches; the pairwise distribution, the 10th-neighbour distances and the NN
curve at the other sizes are not fitted and serve as the check. `component` (per row) lets a
caller draw metadata jointly with the code: `real_components()` gives each real image's most likely component, so a synthetic
row can take the labels, sex and age of a random real image of its component (`real_image_ids()`
names the fixture's rows; the dev labels.csv holds their metadata).

Why its growth is defensible. What a search at 1M-10M rows sees is the nearest-neighbour distance
of a query as the archive grows; a density model whose held-out likelihood is best reproduces how
densely real codes fill the neighbourhood of a new one. The check (`validate`, in the benchmark
JSON under data_note.realistic_check) compares, real against synthetic at the same sizes:
- the pairwise distance distribution at the real archive size (mean, sd, quantiles);
- the mean nearest-neighbour distance of held-out real codes against growing subsets of the other
  real codes (n/16 ... n), and of fresh synthetic queries against synthetic archives of the same
  sizes: the slope of NN distance against log n must match where both exist, and the synthetic curve
  continues it to 1M and 10M (reported, with the k=100th neighbour distance the recall target uses).
Limits: correlations within a component are replaced by the one sharpening exponent, and
near-duplicates (follow-up images of one patient) are not modelled beyond what the components
capture, so the very nearest neighbours of real large archives may be somewhat closer than here.
"""

from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["BernoulliMixture", "encode_real_codes", "fit_mixture", "fit_sharpening", "iter_realistic_codes",
           "load_real_codes", "real_components", "real_image_ids", "realistic_codes", "realistic_model", "sharpened",
           "validate"]

DATA = Path(__file__).resolve().parent / "data"
REAL_CODES = DATA / "nih_dev_codes_64.npy"
REAL_CODES_INFO = DATA / "nih_dev_codes_64.json"  # checkpoint, engine, image ids (row order)
DEV_LABELS = Path("/work/shared/data/nih-cxr14-dev/labels.csv")
BITS = 64
CHUNK_ROWS = 1_000_000
K_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class BernoulliMixture:
    def __init__(self, weights: np.ndarray, probs: np.ndarray):
        self.weights = weights  # [K], sums to 1
        self.probs = probs  # [K, bits], P(bit = 1 | component)

    def sample(self, rng, n: int) -> tuple[np.ndarray, np.ndarray]:
        component = rng.choice(len(self.weights), size=n, p=self.weights).astype(np.int32)
        bits = rng.random((n, self.probs.shape[1]), dtype=np.float32) < self.probs[component].astype(np.float32)
        return np.packbits(bits, axis=1), component

    def log_likelihood(self, bits: np.ndarray) -> np.ndarray:
        """Per-row log p(code), [n]."""
        return _logsumexp(self._joint(bits), axis=1)

    def responsibilities(self, bits: np.ndarray) -> np.ndarray:
        joint = self._joint(bits)
        return np.exp(joint - _logsumexp(joint, axis=1)[:, None])

    def _joint(self, bits: np.ndarray) -> np.ndarray:
        p = np.clip(self.probs, 1e-6, 1 - 1e-6)
        return np.log(self.weights)[None, :] + bits @ np.log(p).T + (1 - bits) @ np.log1p(-p).T


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def fit_mixture(bits: np.ndarray, k: int, seed: int = 0, iterations: int = 200, prior: float = 1.0) -> BernoulliMixture:
    """EM with a Beta(prior, prior) prior on each bit probability (keeps small components off 0/1)."""
    rng = np.random.default_rng(seed)
    bits = bits.astype(np.float64)
    start = bits[_spread_seeds(bits, k, rng)]  # softened real codes, spread like k-means++
    model = BernoulliMixture(np.full(k, 1.0 / k), 0.25 + 0.5 * start)
    previous = -np.inf
    for _ in range(iterations):
        resp = model.responsibilities(bits)  # E step
        mass = resp.sum(axis=0)  # M step
        weights = (mass + 1e-3) / (mass.sum() + 1e-3 * k)
        probs = (resp.T @ bits + prior) / (mass[:, None] + 2 * prior)
        model = BernoulliMixture(weights, probs)
        ll = float(model.log_likelihood(bits).mean())
        if ll - previous < 1e-6:
            break
        previous = ll
    return model


def _spread_seeds(bits: np.ndarray, k: int, rng) -> np.ndarray:
    """k-means++ seeding in Hamming distance: next seeds drawn with probability ~ distance^2 to the chosen."""
    chosen = [int(rng.integers(len(bits)))]
    nearest = np.abs(bits - bits[chosen[0]]).sum(axis=1)
    for _ in range(1, k):
        weight = nearest ** 2
        if not weight.sum():
            pick = int(rng.integers(len(bits)))
        else:  # greedy k-means++: of a few candidates drawn so, the farthest (two seeds in one cluster trap EM)
            candidates = rng.choice(len(bits), size=4, p=weight / weight.sum())
            pick = int(candidates[np.argmax(nearest[candidates])])
        chosen.append(pick)
        nearest = np.minimum(nearest, np.abs(bits - bits[pick]).sum(axis=1))
    return np.asarray(chosen)


def unpack(codes: np.ndarray) -> np.ndarray:
    return np.unpackbits(codes, axis=1)


def load_real_codes() -> np.ndarray:
    return np.load(REAL_CODES)


def real_image_ids() -> list[str]:
    return json.loads(REAL_CODES_INFO.read_text())["image_ids"]


def real_components() -> np.ndarray:
    """The most likely mixture component of each real code (row order of real_image_ids())."""
    model, _ = realistic_model()
    return model.responsibilities(unpack(load_real_codes()).astype(np.float64)).argmax(axis=1).astype(np.int32)


def encode_real_codes(checkpoint: str | Path, labels_csv: Path = DEV_LABELS, engine: str = "bf16") -> None:
    """Encode every image of the dev labels.csv with a checkpoint (one thread) and rewrite the fixture."""
    import torch  # only here: the search benchmarks use the fixture, not the model

    from medhash.data.decode import read_image
    from medhash.model import load_encoder

    torch.set_num_threads(1)
    encoder = load_encoder(checkpoint, engine=engine, batch_size=32)
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    codes = []
    for start in range(0, len(rows), 32):
        batch = rows[start:start + 32]
        images = [read_image(labels_csv.parent / r["file"]) for r in batch]
        codes.append(encoder.encode_images(images).codes)
    DATA.mkdir(exist_ok=True)
    np.save(REAL_CODES, np.concatenate(codes))
    REAL_CODES_INFO.write_text(json.dumps({
        "checkpoint": str(checkpoint), "model_id": encoder.model_id, "bits": encoder.bits, "engine": engine,
        "input_size": encoder.input_size, "labels_csv": str(labels_csv), "count": len(rows),
        "image_ids": [r["image_id"] for r in rows]}, indent=0) + "\n")


def choose_k(bits: np.ndarray, seed: int = 0, folds: int = 5) -> dict[int, float]:
    """Mean held-out log-likelihood per code for each candidate K (cross-validated)."""
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(bits)) % folds
    scores = {}
    for k in K_CANDIDATES:
        if k > len(bits) // 2:  # a component per two training codes at most
            break
        lls = [fit_mixture(bits[fold != f], k, seed).log_likelihood(bits[fold == f]).mean() for f in range(folds)]
        scores[k] = round(float(np.mean(lls)), 4)
    return scores


def sharpened(model: BernoulliMixture, exponent: float) -> BernoulliMixture:
    """Each bit probability p -> p^a / (p^a + (1-p)^a): a > 1 pulls components' codes closer together."""
    p = np.clip(model.probs, 1e-9, 1 - 1e-9)
    return BernoulliMixture(model.weights, p ** exponent / (p ** exponent + (1 - p) ** exponent))


def _nn_mean(queries: np.ndarray, archive: np.ndarray) -> float:
    return float(_distances(queries, archive, 1)[:, 0].mean())


def fit_sharpening(model: BernoulliMixture, real: np.ndarray, seed: int = 0, queries: int = 300) -> float:
    """The exponent whose synthetic NN distance at the real archive size equals the real one (bisection)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real))
    target = _nn_mean(real[order[:queries]], real[order[queries:]])
    low, high = 1.0, 4.0
    for _ in range(12):
        mid = (low + high) / 2
        draw = sharpened(model, mid).sample(np.random.default_rng(seed + 1), len(real))[0]
        if _nn_mean(draw[:queries], draw[queries:]) > target:
            low = mid
        else:
            high = mid
    return round((low + high) / 2, 3)


@lru_cache(maxsize=1)
def realistic_model(seed: int = 0) -> tuple[BernoulliMixture, dict]:
    """The mixture fitted to all real codes with the cross-validated K, sharpened to the real NN distance."""
    real = load_real_codes()
    bits = unpack(real)
    scores = choose_k(bits, seed)
    k = max(scores, key=scores.get)
    model = fit_mixture(bits, k, seed)
    exponent = fit_sharpening(model, real, seed)
    return sharpened(model, exponent), {"k": k, "heldout_loglik_per_code": scores, "sharpening_exponent": exponent}


def iter_realistic_codes(n: int, seed: int = 0, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """n synthetic codes in chunks (codes uint8 [m, 8], component int32 [m]); the same seed gives the same rows."""
    model, _ = realistic_model()
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk_rows):
        yield model.sample(rng, min(chunk_rows, n - start))


def realistic_codes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    parts = list(iter_realistic_codes(n, seed))
    if not parts:
        return np.empty((0, BITS // 8), np.uint8), np.empty(0, np.int32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# -- the check ---------------------------------------------------------------------------------
def _distances(queries: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Exact sorted distances of each query to its k nearest codes [q, k] (FAISS flat)."""
    import faiss

    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(np.ascontiguousarray(codes))
    D, _ = index.search(np.ascontiguousarray(queries), min(k, len(codes)))
    return D


def _pairwise(codes: np.ndarray) -> np.ndarray:
    bits = unpack(codes).astype(np.int32)
    d = bits.sum(1)[:, None] + bits.sum(1)[None, :] - 2 * bits @ bits.T
    return d[np.triu_indices(len(codes), 1)]


def _summary(d: np.ndarray) -> dict:
    return {"mean": round(float(d.mean()), 2), "sd": round(float(d.std()), 2),
            **{f"q{q:02d}": float(np.percentile(d, q)) for q in (1, 5, 25, 50, 75, 95)}}


def validate(seed: int = 0, queries: int = 300, large: tuple[int, ...] = (100_000, 1_000_000)) -> dict:
    """Real vs synthetic: pairwise distances at the real size, NN distance on growing archives."""
    real = load_real_codes()
    model, fit = realistic_model()
    rng = np.random.default_rng(seed)
    n = len(real)
    order = rng.permutation(n)
    held, rest = real[order[:queries]], real[order[queries:]]
    synth_queries, _ = model.sample(rng, queries)
    synth_pool, _ = model.sample(rng, max(large))
    check = {"real_codes": n, "mixture": fit,
             "pairwise_at_real_size": {"real": _summary(_pairwise(real)),
                                       "synthetic": _summary(_pairwise(synth_pool[:n]))}}
    sizes = [len(rest) // 2 ** i for i in (4, 3, 2, 1, 0)]
    growth = []
    for m in sizes:
        real_d = _distances(held, rest[:m], 100)
        syn_d = _distances(synth_queries, synth_pool[:m], 100)
        growth.append({"archive": m, "real_nn_mean": round(float(real_d[:, 0].mean()), 2),
                       "synthetic_nn_mean": round(float(syn_d[:, 0].mean()), 2),
                       "real_10th_mean": round(float(real_d[:, min(9, m - 1)].mean()), 2),
                       "synthetic_10th_mean": round(float(syn_d[:, min(9, m - 1)].mean()), 2)})
    for m in large:
        syn_d = _distances(synth_queries, synth_pool[:m], 100)
        growth.append({"archive": m, "synthetic_nn_mean": round(float(syn_d[:, 0].mean()), 2),
                       "synthetic_10th_mean": round(float(syn_d[:, 9].mean()), 2),
                       "synthetic_100th_mean": round(float(syn_d[:, 99].mean()), 2)})
    check["nn_growth"] = growth
    logn = np.log2([g["archive"] for g in growth[:len(sizes)]])
    check["nn_slope_bits_per_doubling"] = {
        "real": round(float(np.polyfit(logn, [g["real_nn_mean"] for g in growth[:len(sizes)]], 1)[0]), 3),
        "synthetic": round(float(np.polyfit(logn, [g["synthetic_nn_mean"] for g in growth[:len(sizes)]], 1)[0]), 3)}
    check["note"] = (f"queries: {queries} held-out real codes (real) / fresh synthetic codes (synthetic); archives: "
                     "the other real codes, halved repeatedly, and synthetic archives of the same and larger sizes")
    return check


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--encode":
        encode_real_codes(sys.argv[2])
    print(json.dumps(validate(), indent=1))
