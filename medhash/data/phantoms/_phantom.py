"""One phantom: `sample_phantom_spec` draws every random choice, `render_phantom` draws the pixels.

Every random stream is keyed by (seed, index) or (seed, patient) through its own SeedSequence
tag, so phantom `index` is the same however many others are generated and workers can produce
any slice. Rendering adds each drawn finding's term to the scene's attenuation map and passes
it through a fixed, data-independent exposure curve and noise, so switching a finding off
changes only its pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from medhash.data.labels import NO_FINDING
from medhash.data.phantoms._config import PhantomConfig
from medhash.data.phantoms._findings import FINDING_TYPES, PHANTOM_FINDINGS, Finding
from medhash.data.phantoms._scene import Anatomy, Box, Exposure, NormBox, Scene, sample_anatomy

__all__ = [
    "PatientSlot", "Phantom", "PhantomSpec", "Rendering", "generate_phantom", "patient_slot", "render_phantom",
    "sample_phantom_spec",
]

# Stream tags: each random stream gets its own SeedSequence key.
_ANATOMY_STREAM = 101
_ANATOMY_TEXTURE_STREAM = 102
_LABEL_STREAM = 202
_NOISE_STREAM = 303
_FINDING_TEXTURE_STREAM = 400


# Kronecker-sequence steps: fractional parts of sqrt(primes) are rationally independent,
# so the per-finding sequences are jointly equidistributed (findings stay independent).
_KRONECKER_ALPHA = {n: math.sqrt(p) % 1.0 for n, p in zip(PHANTOM_FINDINGS, (2, 3, 5, 7, 11, 13, 17, 19))}


def _sample_exposure(rng: np.random.Generator, config: PhantomConfig, noise_seed: tuple[int, ...]) -> Exposure:
    j = config.exposure_jitter

    def jitter(centre: float, spread: float) -> float:
        return centre + j * rng.uniform(-spread, spread)

    return Exposure(
        zoom=jitter(0.99, 0.04),
        dx=jitter(0.0, 0.02),
        dy=jitter(0.0, 0.02),
        gain=jitter(1.15, 0.12),
        offset=jitter(0.0, 0.04),
        gamma=math.exp(jitter(0.0, 0.2)),
        heel=jitter(0.0, 0.08),
        noise=config.noise * math.exp(jitter(0.0, 0.35)),
        noise_seed=noise_seed,
    )


@dataclass(frozen=True)
class PhantomSpec:
    """Every random choice of one phantom; `render_phantom` turns it into pixels."""

    index: int
    image_id: str
    patient_id: str
    anatomy: Anatomy
    exposure: Exposure
    findings: tuple[Finding, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.findings) or (NO_FINDING,)


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # float32 [H, W] in [0, 1]
    labels: tuple[str, ...]  # NIH order; ("No Finding",) when there are none
    boxes: list[tuple[str, Box]]
    patient_id: str
    image_id: str
    spec: PhantomSpec | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class PatientSlot:
    ordinal: int  # patient number within the dataset (0-based)
    follow_up: int  # 0 for the first image of the patient


def patient_slot(index: int, followup_every: int) -> PatientSlot:
    """Images k*i and k*i+1 (k = followup_every) are two visits of one patient."""
    if followup_every == 0:
        return PatientSlot(index, 0)
    block, slot = divmod(index, followup_every)
    return PatientSlot(block * (followup_every - 1) + max(slot - 1, 0), 1 if slot == 1 else 0)


def _choose_findings(index: int, config: PhantomConfig, rng: np.random.Generator) -> list[str]:
    probs = config.finding_probs
    if config.stratified:
        offsets = np.random.default_rng([config.seed, _LABEL_STREAM]).random(len(PHANTOM_FINDINGS))
        phase = {n: (offsets[k] + index * _KRONECKER_ALPHA[n]) % 1.0 for k, n in enumerate(PHANTOM_FINDINGS)}
        chosen = [n for n in PHANTOM_FINDINGS if phase[n] < probs.get(n, 0.0)]
    else:
        draws = rng.random(len(PHANTOM_FINDINGS))
        chosen = [n for k, n in enumerate(PHANTOM_FINDINGS) if draws[k] < probs.get(n, 0.0)]
    if len(chosen) > config.max_findings:
        keep = set(rng.choice(len(chosen), size=config.max_findings, replace=False).tolist())
        chosen = [n for k, n in enumerate(chosen) if k in keep]
    return chosen


def sample_phantom_spec(index: int, config: PhantomConfig) -> PhantomSpec:
    """Draw phantom `index`; a pure function of (config, index)."""
    if index < 0:
        raise ValueError(f"phantom index must be >= 0, got {index}")
    seed = config.seed
    patient = patient_slot(index, config.followup_every)
    anatomy = sample_anatomy(
        np.random.default_rng([seed, patient.ordinal, _ANATOMY_STREAM]),
        (seed, patient.ordinal, _ANATOMY_TEXTURE_STREAM),
    )
    rng = np.random.default_rng([seed, index])
    exposure = _sample_exposure(rng, config, (seed, index, _NOISE_STREAM))
    taken: list[NormBox] = []
    findings = []
    for k, name in enumerate(_choose_findings(index, config, rng)):
        finding = FINDING_TYPES[name].sample(rng, anatomy, taken, (seed, index, _FINDING_TEXTURE_STREAM + k))
        taken.append(finding.approx_box)
        findings.append(finding)
    patient_id = f"ph{seed}_{patient.ordinal:06d}"
    return PhantomSpec(index, f"{patient_id}_{patient.follow_up:03d}", patient_id, anatomy, exposure, tuple(findings))


@dataclass(frozen=True)
class Rendering:
    image: np.ndarray  # float32 [size, size] in [0, 1]
    boxes: list[tuple[str, Box]]  # every finding of the spec, drawn or not


def _mask_box(mask: np.ndarray, fallback: NormBox, size: int) -> Box:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:
        return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    # Nothing above threshold (cannot happen for findings placed inside the lungs): use the sampled box.
    x0, y0 = (min(max(int(v * size), 0), size - 1) for v in fallback[:2])
    x1, y1 = (min(int(math.ceil(v * size)), size) for v in fallback[2:])
    return (x0, y0, max(x0 + 1, x1), max(y0 + 1, y1))


def render_phantom(spec: PhantomSpec, size: int, findings: Iterable[str] | None = None) -> Rendering:
    """Draw `spec` at `size` px, with only the named findings (None: all of them).

    Boxes are returned for all of the spec's findings either way, so a picture
    without a finding can be compared with one with it.
    """
    drawn = set(spec.labels if findings is None else findings)
    scene = Scene(spec.anatomy, spec.exposure, size)
    attenuation = scene.base.copy()
    boxes = []
    for finding in spec.findings:
        term = finding.term(scene)
        boxes.append((finding.name, _mask_box(finding.extent(scene, term), finding.approx_box, size)))
        if finding.name in drawn:
            attenuation += term
    return Rendering(_expose(attenuation, scene, spec.exposure), boxes)


def _expose(attenuation: np.ndarray, scene: Scene, ex: Exposure) -> np.ndarray:
    """A fixed (data-independent) exposure curve, heel effect and noise: a finding changes only its pixels."""
    image = np.clip(ex.offset + ex.gain * attenuation, 0.0, 1.0) ** ex.gamma
    image = image * (1.0 + ex.heel * (scene.ys[:, None] - 0.5))
    noise = np.random.default_rng(list(ex.noise_seed)).standard_normal(image.shape, dtype=np.float32)
    return np.clip(image + ex.noise * noise, 0.0, 1.0).astype(np.float32)


def generate_phantom(index: int, config: PhantomConfig, *, render_findings: bool = True) -> Phantom:
    """Phantom `index` at `config.size`; `render_findings=False` draws the same image without its findings
    (labels and boxes still describe the findings it would have)."""
    spec = sample_phantom_spec(index, config)
    rendering = render_phantom(spec, config.size, None if render_findings else ())
    return Phantom(rendering.image, spec.labels, rendering.boxes, spec.patient_id, spec.image_id, spec)
