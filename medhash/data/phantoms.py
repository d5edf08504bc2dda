"""Synthetic chest-radiograph phantoms with ground-truth finding boxes.

The embedded default data of medhash: the demo and the tests run on these, and
their boxes are the ground truth for checking saliency localisation.

A phantom is built in two steps so that a finding can be switched off without
changing anything else in the picture:

1. `sample_phantom_spec(index, config)` draws every random choice (anatomy,
   pose, exposure, which findings and where) into a frozen `PhantomSpec`.
   It uses `np.random.default_rng([seed, index])` (plus per-patient and
   per-texture streams keyed the same way), so phantom `index` is the same
   however many others are generated: workers can produce any slice.
2. `render_phantom(spec, size, findings=...)` draws the picture at any size.
   The image is an attenuation map (body minus lung air plus bones, heart,
   findings) passed through a fixed exposure curve plus fixed noise, and every
   finding is an additive term in the attenuation map. Rendering the same spec
   with and without a finding therefore differs only where that finding is
   (which the tests check), and its box is the bounding box of its term.

Coordinates inside the module are normalised: x, y in [0, 1] over the image,
y downwards, x = 0 on the image left (the patient's right: PA view).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, Mapping

import numpy as np
from scipy import ndimage

from medhash.atomic import atomic_path, write_text_atomic
from medhash.data.labels import FINDINGS as NIH_FINDINGS
from medhash.data.labels import NO_FINDING

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
NormBox = tuple[float, float, float, float]  # the same in normalised coordinates

LABEL_COLUMNS = ("image_id", "file", "patient_id", "labels", "dev_fold")
BOX_COLUMNS = ("image_id", "finding", "x0", "y0", "x1", "y1")

# Independent per-finding probabilities; together they give ~35% "No Finding".
DEFAULT_FINDING_PROBS: Mapping[str, float] = {
    "Cardiomegaly": 0.18,
    "Effusion": 0.18,
    "Mass": 0.12,
    "Nodule": 0.20,
    "Pneumothorax": 0.12,
    "Consolidation": 0.15,
}

SIDES = (-1, 1)  # -1: image-left lung (patient's right), +1: image-right lung (patient's left)

# Stream tags: each random stream gets its own SeedSequence key.
_ANATOMY_STREAM = 101
_ANATOMY_TEXTURE_STREAM = 102
_LABEL_STREAM = 202
_NOISE_STREAM = 303
_FINDING_TEXTURE_STREAM = 400


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate.

    `finding_probs` is the class balance asked for: each finding appears in that
    fraction of images, independently of the others (up to `max_findings`; the
    cap only bites when several probabilities are large). With `stratified`
    (default) the presence of finding k in image i is decided by a Kronecker
    sequence, frac(u_k + i * alpha_k) < p_k, so any run of n consecutive
    indices holds n * p_k +- a few of each finding instead of a binomial draw;
    with `stratified=False` it is an independent coin per image.
    """

    size: int = 256
    seed: int = 0
    finding_probs: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FINDING_PROBS), hash=False)
    max_findings: int = 3
    noise: float = 0.02  # standard deviation of the additive pixel noise (jittered per image)
    exposure_jitter: float = 1.0  # 0 = every image has the same exposure curve
    stratified: bool = True
    followup_every: int = 10  # images i*k and i*k+1 share a patient; 0 = one image per patient

    def __post_init__(self) -> None:
        unknown = sorted(set(self.finding_probs) - set(PHANTOM_FINDINGS))
        if unknown:
            raise ValueError(f"phantoms cannot draw {unknown}; known findings: {list(PHANTOM_FINDINGS)}")
        bad = {k: p for k, p in self.finding_probs.items() if not 0.0 <= float(p) <= 1.0}
        if bad:
            raise ValueError(f"finding probabilities must lie in [0, 1]: {bad}")
        if self.size < 32:
            raise ValueError(f"phantom size must be at least 32 px, got {self.size}")
        if self.max_findings < 0:
            raise ValueError(f"max_findings must be >= 0, got {self.max_findings}")
        if self.noise < 0 or self.exposure_jitter < 0:
            raise ValueError("noise and exposure_jitter must be >= 0")
        if self.followup_every == 1 or self.followup_every < 0:
            raise ValueError(f"followup_every must be 0 or >= 2, got {self.followup_every}")


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class Anatomy:
    """One patient's thorax; the two images of a follow-up pair share it."""

    cx: float  # midline
    medial: float  # half-width of the mediastinum above the heart
    lung_width: tuple[float, float]  # per side (index 0: image left)
    apex: tuple[float, float]  # y of the lung apex
    costophrenic: tuple[float, float]  # y of the lateral costophrenic angle
    dome: tuple[float, float]  # height of the diaphragm dome above the angle
    heart_cx: float
    heart_cy: float
    heart_rx: float
    heart_ry: float
    heart_tilt: float  # radians; the long axis runs down towards the patient's left
    body_half_width: float
    tissue: float  # soft-tissue attenuation
    air: float  # attenuation removed by lung air
    marking_amp: float
    rib_start: float
    rib_spacing: float
    clavicle_y: float
    clavicle_rise: float
    clavicle_length: float
    gastric_bubble: bool
    texture_seed: tuple[int, ...]


@dataclass(frozen=True)
class Exposure:
    """Per-image acquisition: patient position and the exposure curve."""

    zoom: float
    dx: float
    dy: float
    gain: float
    offset: float
    gamma: float
    heel: float
    noise: float
    noise_seed: tuple[int, ...]


def _sample_anatomy(rng: np.random.Generator, texture_seed: tuple[int, ...]) -> Anatomy:
    u = rng.uniform
    cx = 0.5 + u(-0.015, 0.015)
    width_right = u(0.29, 0.34)
    apex = u(0.10, 0.14)
    cp_right = u(0.74, 0.79)
    medial = u(0.045, 0.06)
    heart_rx = u(0.16, 0.18)
    return Anatomy(
        cx=cx,
        medial=medial,
        lung_width=(width_right, width_right * u(0.92, 1.0)),
        apex=(apex + u(0.0, 0.01), apex + u(0.0, 0.01)),
        costophrenic=(cp_right, cp_right + u(0.01, 0.035)),
        dome=(u(0.06, 0.10), u(0.05, 0.09)),
        heart_cx=cx + u(0.03, 0.05),
        heart_cy=cp_right - u(0.10, 0.13),
        heart_rx=heart_rx,
        heart_ry=heart_rx * u(0.68, 0.78),
        heart_tilt=u(0.3, 0.5),
        body_half_width=u(0.46, 0.52),
        tissue=u(0.52, 0.6),
        air=u(0.34, 0.40),
        marking_amp=u(0.10, 0.14),
        rib_start=apex - u(0.02, 0.04),
        rib_spacing=u(0.062, 0.072),
        clavicle_y=apex + u(0.08, 0.11),
        clavicle_rise=u(0.06, 0.10),
        clavicle_length=u(0.30, 0.36),
        gastric_bubble=bool(rng.random() < 0.7),
        texture_seed=texture_seed,
    )


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


def _soft(value: np.ndarray, edge: float) -> np.ndarray:
    """A soft mask from a signed inside-value (>0 inside), edge width in normalised units."""
    return (0.5 + 0.5 * np.tanh(value / edge)).astype(np.float32)


def _side_index(side: int) -> int:
    return 0 if side < 0 else 1


def _lung_inside(an: Anatomy, side: int, x, y, retract=None):
    """Signed inside-value of one lung (> 0 inside, roughly a distance).

    `retract(s)` pulls the lateral and apical borders in by that much at lung
    height s (0 apex .. 1 costophrenic angle): the collapsed lung of a pneumothorax.
    """
    i = _side_index(side)
    width = an.lung_width[i]
    d = side * (x - an.cx) - an.medial  # distance from the medial border, outwards
    s = np.clip((y - an.apex[i]) / (an.costophrenic[i] - an.apex[i]), 0.0, 1.0)
    t = np.clip(d / width, 0.0, 1.0)
    lateral = width * (0.5 + 0.5 * np.sin(0.5 * np.pi * np.clip(s / 0.75, 0.0, 1.0)))
    top = an.apex[i] + 0.16 * ((t - 0.3) / 0.7) ** 2
    floor = _diaphragm(an, i, t)
    pull = 0.0 if retract is None else retract(s)
    return np.minimum(np.minimum(d, lateral - d - pull), np.minimum(floor - y, y - top - pull))


def _diaphragm(an: Anatomy, i: int, t):
    """y of the hemidiaphragm at lung-width fraction t (0 medial, 1 lateral)."""
    return an.costophrenic[i] - an.dome[i] * np.clip(1.0 - ((t - 0.4) / 0.6) ** 2, 0.0, 1.0)


def _heart_ellipse(an: Anatomy, scale_x: float, scale_y: float) -> tuple[float, float, float, float]:
    rx, ry = an.heart_rx * scale_x, an.heart_ry * scale_y
    # An enlarged heart grows to the patient's left and down; its right border stays put.
    return an.heart_cx + 0.55 * (rx - an.heart_rx), an.heart_cy + 0.4 * (ry - an.heart_ry), rx, ry


def _heart_inside(an: Anatomy, x, y, scale_x: float = 1.0, scale_y: float = 1.0):
    hx, hy, rx, ry = _heart_ellipse(an, scale_x, scale_y)
    c, s = math.cos(an.heart_tilt), math.sin(an.heart_tilt)
    along, across = (x - hx) * c + (y - hy) * s, (y - hy) * c - (x - hx) * s
    return (1.0 - np.sqrt((along / rx) ** 2 + (across / ry) ** 2)) * min(rx, ry)


def _heart_bounds(an: Anatomy, scale_x: float, scale_y: float) -> NormBox:
    hx, hy, rx, ry = _heart_ellipse(an, scale_x, scale_y)
    c, s = math.cos(an.heart_tilt), math.sin(an.heart_tilt)
    ex, ey = math.hypot(rx * c, ry * s), math.hypot(rx * s, ry * c)
    return (hx - ex, hy - ey, hx + ex, hy + ey)


def _lung_bounds(an: Anatomy, side: int) -> NormBox:
    i = _side_index(side)
    inner = an.cx + side * an.medial
    outer = an.cx + side * (an.medial + an.lung_width[i])
    return (min(inner, outer), an.apex[i], max(inner, outer), an.costophrenic[i])


# --------------------------------------------------------------------------- textures


def _gaussian_taps(coords: np.ndarray, cells: int, taps: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights of the `taps` control points nearest each coordinate (Gaussian kernel)."""
    lo, hi = -0.2, 1.2
    step = (hi - lo) / (cells - 1)
    pos = (coords.astype(np.float64) - lo) / step
    idx = np.floor(pos).astype(np.int64)[:, None] + np.arange(-(taps // 2), taps - taps // 2)[None, :]
    weights = np.exp(-0.5 * (pos[:, None] - idx) ** 2)
    weights = weights / weights.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, cells - 1), weights.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, cells: int) -> np.ndarray:
    """Band-limited noise of unit-ish std, anchored to normalised coordinates (moves with the pose).

    Separable Gaussian interpolation of a cells x cells grid of normal draws, done with
    gathers rather than a matrix product: BLAS threading makes small products slow on busy CPUs.
    """
    control = rng.standard_normal((cells, cells)).astype(np.float32)
    ix, wx = _gaussian_taps(xs, cells)
    iy, wy = _gaussian_taps(ys, cells)
    rows = sum(control[:, ix[:, k]] * wx[:, k] for k in range(ix.shape[1]))  # (cells, W)
    out = sum(rows[iy[:, k], :] * wy[:, k, None] for k in range(iy.shape[1]))  # (H, W)
    gain = 1.0 / (np.sqrt((wy**2).sum(1)).mean() * np.sqrt((wx**2).sum(1)).mean())
    return (out * np.float32(gain)).astype(np.float32)


def _segment_distance(x, y, p0: tuple[float, float], p1: tuple[float, float]):
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * vx + (y - p0[1]) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.sqrt((x - p0[0] - t * vx) ** 2 + (y - p0[1] - t * vy) ** 2)


# --------------------------------------------------------------------------- scene


class _Scene:
    """The rendered anatomy at one size, which findings read to draw their terms."""

    def __init__(self, anatomy: Anatomy, exposure: Exposure, size: int):
        an = self.anatomy = anatomy
        self.size = size
        px = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.xs = ((px - 0.5) / exposure.zoom + 0.5 - exposure.dx).astype(np.float32)
        self.ys = ((px - 0.5) / exposure.zoom + 0.5 - exposure.dy).astype(np.float32)
        x = self.x = self.xs[None, :]
        y = self.y = self.ys[:, None]
        edge = 0.006

        texture_rng = np.random.default_rng(list(an.texture_seed))
        self.parenchyma = _smooth_noise(texture_rng, self.xs, self.ys, 40)
        self.lung = {side: _soft(_lung_inside(an, side, x, y), edge) for side in SIDES}
        self.diaphragm_y = self._diaphragm_line()
        self.above_diaphragm = _soft(self.diaphragm_y[None, :] + 0.01 - y, edge)
        self.heart = self.heart_mask(1.0, 1.0)
        self.markings = self._markings(texture_rng)
        lungs = self.lung[-1] + self.lung[1]
        d = np.abs(x - an.cx)
        neck = 0.12
        body_width = neck + (an.body_half_width - neck) * (0.5 + 0.5 * np.tanh((y - 0.1) / 0.06))
        self.body = _soft(body_width - d, 0.015)
        ribs_wall, ribs_over_lung = self._ribs(d)
        # Attenuation that lung air removes (air minus the vessels it holds); the bases hold less air.
        self.lung_air = an.air * (1.08 - 0.3 * (y - 0.3)) - an.marking_amp * self.markings
        # What aerated lung subtracts from the picture: its air, less the rib edges it makes stand out.
        # The heart hides exactly this, so an enlarged heart is an additive term too.
        self.ribs_over_lung = ribs_over_lung
        self.lung_shadow = lungs * (self.lung_air - self.body * ribs_over_lung)
        self.base = self._attenuation(lungs, d) + self.body * ribs_wall

    def heart_mask(self, scale_x: float, scale_y: float) -> np.ndarray:
        an = self.anatomy
        inside = _heart_inside(an, self.x, self.y, scale_x, scale_y)
        return _soft(inside, 0.009) * self.above_diaphragm

    def _diaphragm_line(self) -> np.ndarray:
        """y of the diaphragm in every pixel column (medially: the domes' inner ends)."""
        an, x = self.anatomy, self.xs
        right = x >= an.cx
        floor = [
            _diaphragm(an, i, np.clip((side * (x - an.cx) - an.medial) / an.lung_width[i], 0.0, 1.0))
            for i, side in enumerate(SIDES)
        ]
        return np.where(right, floor[1], floor[0]).astype(np.float32)

    def heart_term(self, heart: np.ndarray) -> np.ndarray:
        """The heart replaces lung air in projection and adds its own density."""
        return heart * (self.lung_shadow + 0.05)

    def aerated(self, side: int) -> np.ndarray:
        """One lung's share of `lung_shadow`, outside the heart: what filling it with fluid or pus undoes."""
        return self.lung[side] * (1.0 - self.heart) * (self.lung_air - self.body * self.ribs_over_lung)

    def finding_rng(self, key: tuple[int, ...]) -> np.random.Generator:
        return np.random.default_rng(list(key))

    def _markings(self, rng: np.random.Generator) -> np.ndarray:
        """Vessels: streaks radiating from each hilum that thin out and fade to the periphery."""
        an, x, y = self.anatomy, self.x, self.y
        out = np.zeros((self.size, self.size), np.float32)
        bins = 360
        for side in SIDES:
            hx, hy = an.cx + side * (an.medial + 0.05), an.heart_cy - 0.2
            dx, dy = x - hx, y - hy
            r = np.sqrt(dx * dx + dy * dy)
            angle = np.arctan2(dy, dx) + 0.05 * self.parenchyma  # vessels curve a little
            spectrum = rng.standard_normal(bins).astype(np.float32)
            kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
            wrapped = np.concatenate([spectrum[-6:], spectrum, spectrum[:6]])  # angles wrap around
            streak = np.convolve(wrapped, kernel / kernel.sum(), "valid")
            streak /= streak.std()
            idx = ((angle + np.pi) * (bins / (2 * np.pi))).astype(np.int32) % bins
            vessel = np.clip(streak[idx] - (0.3 + 2.0 * r), 0.0, None)
            out += vessel * np.exp(-r / 0.25) * self.lung[side]
        out *= np.clip(0.7 + 0.5 * self.parenchyma, 0.0, None)
        out = ndimage.gaussian_filter(out, 0.004 * self.size)
        return np.clip(out, 0.0, 1.5)

    def _attenuation(self, lungs: np.ndarray, d: np.ndarray) -> np.ndarray:
        an, x, y, body = self.anatomy, self.x, self.y, self.body
        a = an.tissue * body
        a = a + 0.01 * self.parenchyma * body
        a = a - self.lung_shadow + self.heart_term(self.heart)

        below = 1.0 - self.above_diaphragm
        a = a + 0.05 * below * body  # liver / spleen
        if an.gastric_bubble:
            gx, gy = an.cx + 0.16, self.diaphragm_y.max() + 0.035
            a = a - 0.12 * _soft(1.0 - np.sqrt(((x - gx) / 0.06) ** 2 + ((y - gy) / 0.03) ** 2), 0.15)

        # Spine and trachea are separable bands: cheap outer products.
        spine_x = _soft(0.032 - d, 0.006)
        vertebrae = 0.85 + 0.15 * np.cos(2 * np.pi * (y - an.rib_start) / (0.75 * an.rib_spacing))
        a = a + 0.09 * spine_x * vertebrae
        trachea_x = _soft(0.016 - np.abs(x - an.cx + 0.004), 0.004)
        trachea_y = _soft(an.heart_cy - 0.24 - y, 0.02)
        a = a - 0.12 * trachea_x * trachea_y
        aortic_knob = np.exp(-(((x - an.cx - 0.06) / 0.03) ** 2 + ((y - an.heart_cy + 0.26) / 0.03) ** 2))
        a = a + 0.06 * aortic_knob
        hilum = sum(
            np.exp(-(((x - an.cx - s * (an.medial + 0.03)) / 0.035) ** 2 + ((y - an.heart_cy + 0.19) / 0.05) ** 2))
            for s in SIDES
        )
        a = a + 0.07 * hilum * lungs

        a = a + 0.12 * self._clavicles()
        return a.astype(np.float32)

    def _ribs(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rib attenuation everywhere, and the extra that shows over aerated lung."""
        an, y = self.anatomy, self.y
        lateral = np.clip(d - 0.06, 0.0, None)
        # Posterior ribs: from the spine up a little, then down along the chest wall.
        u = y - (-0.35 * lateral + 1.4 * lateral**2)
        phase = (u - an.rib_start) / an.rib_spacing
        phase = phase - 0.012 * np.clip(phase, 0.0, None) ** 2  # rib spacing widens downwards
        frac = phase - np.floor(phase)
        band = np.clip(np.sin(np.pi * np.clip(frac / 0.36, 0.0, 1.0)), 0.0, None) ** 0.6
        count = _soft(phase, 0.05) * _soft(9.6 - phase, 0.05)
        extent = _soft(d - 0.035, 0.01) * _soft(0.47 - d, 0.02)
        posterior = 0.075 * band * count * extent
        # Anterior ribs: fainter, sloping down towards the midline.
        ua = y + 0.45 * d
        phase_a = (ua - an.rib_start - 0.2) / (1.25 * an.rib_spacing)
        frac_a = phase_a - np.floor(phase_a)
        band_a = np.sin(np.pi * np.clip(frac_a / 0.4, 0.0, 1.0))
        extent_a = _soft(d - 0.13, 0.03) * _soft(0.45 - d, 0.03) * _soft(phase_a, 0.1) * _soft(5.5 - phase_a, 0.1)
        return 0.3 * posterior, 0.7 * posterior + 0.04 * band_a * extent_a

    def _clavicles(self) -> np.ndarray:
        an = self.anatomy
        out = np.zeros((self.size, self.size), np.float32)
        for side in SIDES:
            p0 = (an.cx + side * 0.035, an.clavicle_y)
            p1 = (an.cx + side * an.clavicle_length, an.clavicle_y - an.clavicle_rise)
            out += _soft(0.019 - _segment_distance(self.x, self.y, p0, p1), 0.005)
        return out


# --------------------------------------------------------------------------- findings


class Finding:
    """A drawn finding. Subclasses register by `name` (a NIH class name).

    `sample` draws its parameters; `term` renders its additive attenuation term;
    `extent` is the pixel mask its ground-truth box encloses.
    """

    name: ClassVar[str]
    approx_box: NormBox  # where it lies, for keeping findings apart while sampling

    @classmethod
    def sample(cls, rng: np.random.Generator, an: Anatomy, taken: list[NormBox], key: tuple[int, ...]) -> "Finding":
        raise NotImplementedError

    def term(self, scene: _Scene) -> np.ndarray:
        raise NotImplementedError

    def extent(self, scene: _Scene, term: np.ndarray) -> np.ndarray:
        magnitude = np.abs(term)
        return magnitude > 0.1 * magnitude.max()


def _overlaps(a: NormBox, b: NormBox, margin: float = 0.01) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _place_in_lung(
    rng: np.random.Generator, an: Anatomy, radius: float, taken: list[NormBox], heart_scale: float = 1.0
) -> tuple[int, float, float]:
    """A random point deep enough inside a lung (clear of the heart and other findings)."""
    for attempt in range(2):
        side = int(rng.choice(SIDES))
        x0, y0, x1, y1 = _lung_bounds(an, side)
        xs = rng.uniform(x0, x1, 256)
        ys = rng.uniform(y0, y1, 256)
        ok = (_lung_inside(an, side, xs, ys) > radius + 0.012) & (
            _heart_inside(an, xs, ys, heart_scale, heart_scale) < -radius
        )
        for i in np.flatnonzero(ok):
            box = (xs[i] - radius, ys[i] - radius, xs[i] + radius, ys[i] + radius)
            if attempt == 1 or not any(_overlaps(box, t) for t in taken):
                return side, float(xs[i]), float(ys[i])
    # Unreachable for sane anatomy; the lung centre is always deep inside.
    x0, y0, x1, y1 = _lung_bounds(an, side)
    return side, (x0 + x1) / 2, y0 + 0.4 * (y1 - y0)


@dataclass(frozen=True)
class Nodule(Finding):
    """A small, bright, round, well-defined blob in a lung field."""

    name: ClassVar[str] = "Nodule"
    x: float
    y: float
    radius: float
    amp: float

    @property
    def approx_box(self) -> NormBox:
        r = self.radius * 1.3
        return (self.x - r, self.y - r, self.x + r, self.y + r)

    @classmethod
    def sample(cls, rng, an, taken, key):
        radius = rng.uniform(0.022, 0.034)
        _, x, y = _place_in_lung(rng, an, radius, taken, heart_scale=1.5)
        return cls(x, y, radius, rng.uniform(0.22, 0.30))

    def term(self, scene):
        q = ((scene.x - self.x) ** 2 + (scene.y - self.y) ** 2) / self.radius**2
        return (self.amp * np.exp(-(q**2))).astype(np.float32)


@dataclass(frozen=True)
class Mass(Finding):
    """A larger, lobulated, irregular bright opacity in a lung field."""

    name: ClassVar[str] = "Mass"
    x: float
    y: float
    radius: float
    amp: float
    harmonics: tuple[tuple[int, float, float], ...]  # (k, amplitude, phase) of the border
    key: tuple[int, ...]

    @property
    def approx_box(self) -> NormBox:
        r = self.radius * 1.45
        return (self.x - r, self.y - r, self.x + r, self.y + r)

    @classmethod
    def sample(cls, rng, an, taken, key):
        radius = rng.uniform(0.05, 0.075)
        _, x, y = _place_in_lung(rng, an, radius * 0.9, taken, heart_scale=1.5)
        harmonics = tuple((k, float(rng.uniform(0.05, 0.14)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 5, 7))
        return cls(x, y, radius, rng.uniform(0.22, 0.3), harmonics, key)

    def term(self, scene):
        dx, dy = scene.x - self.x, scene.y - self.y
        r = np.sqrt(dx * dx + dy * dy)
        theta = np.arctan2(dy, dx)
        border = self.radius * (1 + sum(a * np.cos(k * theta + ph) for k, a, ph in self.harmonics))
        blob = _soft(border - r, 0.008)
        texture = 0.85 + 0.15 * _smooth_noise(scene.finding_rng(self.key), scene.xs, scene.ys, 48)
        return (self.amp * blob * texture).astype(np.float32)


@dataclass(frozen=True)
class Effusion(Finding):
    """Fluid at a costophrenic angle: an opacity with a meniscus rising laterally, blunting the angle."""

    name: ClassVar[str] = "Effusion"
    side: int
    lateral_height: float  # how far the meniscus climbs at the chest wall
    medial_height: float

    lung_box: NormBox

    @property
    def approx_box(self) -> NormBox:
        x0, _, x1, y1 = self.lung_box
        return (x0, y1 - self.lateral_height - 0.02, x1, y1 + 0.02)

    @classmethod
    def sample(cls, rng, an, taken, key):
        side = int(rng.choice(SIDES))
        lateral = rng.uniform(0.13, 0.26)
        return cls(side, lateral, lateral * rng.uniform(0.0, 0.3), _lung_bounds(an, side))

    def term(self, scene):
        an, side = scene.anatomy, self.side
        i = _side_index(side)
        t = np.clip((side * (scene.x - an.cx) - an.medial) / an.lung_width[i], 0.0, 1.0)
        meniscus = an.costophrenic[i] - self.medial_height - (self.lateral_height - self.medial_height) * t**1.5
        depth = scene.y - meniscus
        # Fluid replaces the air below the meniscus: the angle fills in and the dome edge vanishes.
        fluid = _soft(depth, 0.012) * np.clip(0.9 + 2.0 * depth, 0.9, 1.05)
        return (fluid * (scene.aerated(side) + 0.01 * scene.lung[side])).astype(np.float32)


@dataclass(frozen=True)
class Cardiomegaly(Finding):
    """An enlarged heart silhouette (cardiothoracic ratio > 0.55); its box is the whole heart."""

    name: ClassVar[str] = "Cardiomegaly"
    scale_x: float
    scale_y: float
    box_hint: NormBox

    @property
    def approx_box(self) -> NormBox:
        return self.box_hint

    @classmethod
    def sample(cls, rng, an, taken, key):
        sx, sy = rng.uniform(1.28, 1.45), rng.uniform(1.12, 1.22)
        return cls(sx, sy, _heart_bounds(an, sx, sy))

    def _mask(self, scene):
        return scene.heart_mask(self.scale_x, self.scale_y)

    def term(self, scene):
        return (scene.heart_term(self._mask(scene)) - scene.heart_term(scene.heart)).astype(np.float32)

    def extent(self, scene, term):
        return self._mask(scene) > 0.5


@dataclass(frozen=True)
class Consolidation(Finding):
    """A patchy, fluffy opacity inside a lung with dark branching air bronchograms."""

    name: ClassVar[str] = "Consolidation"
    side: int
    x: float
    y: float
    rx: float
    ry: float
    bronchi: tuple[tuple[float, float, float, float], ...]  # segments x0, y0, x1, y1
    key: tuple[int, ...]

    @property
    def approx_box(self) -> NormBox:
        return (self.x - self.rx, self.y - self.ry, self.x + self.rx, self.y + self.ry)

    @classmethod
    def sample(cls, rng, an, taken, key):
        rx, ry = rng.uniform(0.06, 0.09), rng.uniform(0.06, 0.1)
        side, x, y = _place_in_lung(rng, an, 0.55 * min(rx, ry), taken, heart_scale=1.2)
        hilum = (an.cx + side * (an.medial + 0.05), an.heart_cy - 0.2)
        base = math.atan2(y - hilum[1], x - hilum[0])  # bronchi run away from the hilum
        bronchi = []
        for offset in np.linspace(-0.5, 0.5, int(rng.integers(2, 4))) * (rx + ry) / 2:
            ang = base + rng.uniform(-0.2, 0.2)
            sx = x - 0.6 * rx * math.cos(base) - offset * math.sin(base)
            sy = y - 0.6 * ry * math.sin(base) + offset * math.cos(base)
            length = rng.uniform(0.8, 1.1) * (rx + ry) / 2
            ex, ey = sx + length * math.cos(ang), sy + length * math.sin(ang)
            bronchi.append((sx, sy, ex, ey))
            mx, my = (sx + ex) / 2, (sy + ey) / 2  # one branch from the middle
            bang = ang + rng.choice([-1, 1]) * rng.uniform(0.3, 0.6)
            bronchi.append((mx, my, mx + 0.5 * length * math.cos(bang), my + 0.5 * length * math.sin(bang)))
        return cls(side, x, y, rx, ry, tuple(bronchi), key)

    def term(self, scene):
        an = scene.anatomy
        ellipse = 1.0 - np.sqrt(((scene.x - self.x) / self.rx) ** 2 + ((scene.y - self.y) / self.ry) ** 2)
        rng = scene.finding_rng(self.key)
        patches = _smooth_noise(rng, scene.xs, scene.ys, 30)
        blotches = _smooth_noise(rng, scene.xs, scene.ys, 70)
        region = _soft(ellipse + 0.2 * patches + 0.05, 0.15) * np.clip(0.7 + 0.25 * patches + 0.25 * blotches, 0.2, 1.0)
        tube = sum(_soft(0.0045 - _segment_distance(scene.x, scene.y, s[:2], s[2:]), 0.002) for s in self.bronchi)
        fill = 0.8 * scene.aerated(self.side) + 0.03 * scene.lung[self.side]
        return (region * fill * (1.0 - 0.6 * np.clip(tube, 0, 1))).astype(np.float32)


@dataclass(frozen=True)
class Pneumothorax(Finding):
    """Air between the lung and the chest wall at the apex/lateral edge: dark, no vessels, a thin pleural line."""

    name: ClassVar[str] = "Pneumothorax"
    side: int
    depth: float  # how far the lung has pulled away at the apex
    reach: float  # lung height fraction (from the apex) down to which the gap runs

    lung_box: NormBox

    @property
    def approx_box(self) -> NormBox:
        x0, y0, x1, y1 = self.lung_box
        return (x0, y0 - 0.02, x1, y0 + self.reach * (y1 - y0))

    @classmethod
    def sample(cls, rng, an, taken, key):
        side = int(rng.choice(SIDES))
        return cls(side, rng.uniform(0.05, 0.085), rng.uniform(0.45, 0.8), _lung_bounds(an, side))

    def _retract(self, s):
        return self.depth * np.cos(0.5 * np.pi * np.clip(s / self.reach, 0.0, 1.0))

    def term(self, scene):
        an = scene.anatomy
        collapsed = _lung_inside(an, self.side, scene.x, scene.y, retract=self._retract)
        lung = scene.lung[self.side]
        gap = np.clip(lung - _soft(collapsed, 0.006), 0.0, 1.0)  # same edge as the lung: zero where not retracted
        inside = _lung_inside(an, self.side, scene.x, scene.y)
        pleura = np.exp(-((collapsed / 0.0035) ** 2)) * _soft(inside - collapsed - 0.01, 0.003)
        vessels = an.marking_amp * scene.markings * lung
        return (0.12 * pleura - gap * (vessels + 0.1)).astype(np.float32)


FINDING_TYPES: dict[str, type[Finding]] = {
    cls.name: cls for cls in (Cardiomegaly, Effusion, Mass, Nodule, Pneumothorax, Consolidation)
}
# NIH order, so labels come out in the same order as medhash.data.labels.CLASSES.
PHANTOM_FINDINGS: tuple[str, ...] = tuple(n for n in NIH_FINDINGS if n in FINDING_TYPES)
assert set(PHANTOM_FINDINGS) == set(FINDING_TYPES), "phantom findings must be NIH class names"

# Kronecker-sequence steps: fractional parts of sqrt(primes) are rationally independent,
# so the per-finding sequences are jointly equidistributed (findings stay independent).
_KRONECKER_ALPHA = {n: math.sqrt(p) % 1.0 for n, p in zip(PHANTOM_FINDINGS, (2, 3, 5, 7, 11, 13, 17, 19))}


# --------------------------------------------------------------------------- phantoms


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
    anatomy = _sample_anatomy(
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
    scene = _Scene(spec.anatomy, spec.exposure, size)
    attenuation = scene.base.copy()
    boxes = []
    for finding in spec.findings:
        term = finding.term(scene)
        boxes.append((finding.name, _mask_box(finding.extent(scene, term), finding.approx_box, size)))
        if finding.name in drawn:
            attenuation += term
    return Rendering(_expose(attenuation, scene, spec.exposure), boxes)


def _expose(attenuation: np.ndarray, scene: _Scene, ex: Exposure) -> np.ndarray:
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


# --------------------------------------------------------------------------- datasets


def _write_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, mode="L").save(tmp, format="PNG")


def _csv_text(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_slice(out: Path, config: PhantomConfig, indices: range, folds: int) -> tuple[list, list]:
    """Write the PNGs of `indices`; return their labels.csv and boxes.csv rows."""
    label_rows, box_rows = [], []
    for index in indices:
        phantom = generate_phantom(index, config)
        file = f"images/{phantom.image_id}.png"
        _write_png(phantom.image, out / file)
        fold = patient_slot(index, config.followup_every).ordinal % folds
        label_rows.append((phantom.image_id, file, phantom.patient_id, "|".join(phantom.labels), fold))
        box_rows.extend((phantom.image_id, name, *box) for name, box in phantom.boxes)
    return label_rows, box_rows


def write_phantom_dataset(
    out_dir: str | Path, n: int, config: PhantomConfig = PhantomConfig(), folds: int = 5, workers: int = 1
) -> Path:
    """Write n phantoms: images/<image_id>.png, labels.csv and boxes.csv under out_dir; returns out_dir.

    dev_fold is assigned per patient (patient ordinal mod folds), so both images
    of a follow-up pair fall in the same fold. Same config -> byte-identical files,
    whatever `workers` (processes; each renders a contiguous slice of indices).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    chunk = max(1, math.ceil(n / max(1, workers * 4)))
    slices = [range(start, min(start + chunk, n)) for start in range(0, n, chunk)]
    if workers > 1 and len(slices) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_write_slice, *zip(*[(out, config, r, folds) for r in slices])))
    else:
        parts = [_write_slice(out, config, r, folds) for r in slices]
    label_rows = [row for rows, _ in parts for row in rows]
    box_rows = [row for _, rows in parts for row in rows]
    write_text_atomic(out / "labels.csv", _csv_text(LABEL_COLUMNS, label_rows))
    write_text_atomic(out / "boxes.csv", _csv_text(BOX_COLUMNS, box_rows))
    return out


def phantom_label_counts(out_dir: str | Path) -> dict[str, int]:
    """Images per label in a written phantom dataset (for summaries)."""
    with open(Path(out_dir) / "labels.csv", newline="", encoding="utf-8") as fh:
        counts = Counter(label for row in csv.DictReader(fh) for label in row["labels"].split("|"))
    return {name: counts.get(name, 0) for name in PHANTOM_FINDINGS + (NO_FINDING,)}
