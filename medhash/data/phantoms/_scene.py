"""The anatomy of a phantom and its rendering at one size, which findings draw on.

`Anatomy` is one patient's thorax and `Exposure` one acquisition (pose, exposure curve,
noise); both are plain numbers drawn elsewhere (`_phantom.sample_phantom_spec`), so the same
spec renders the same picture at any size. `Scene` turns them into per-pixel maps: lung
masks, heart, ribs, vessels, and the base attenuation map that findings add their terms to.
Coordinates are normalised: x, y in [0, 1] over the image, y downwards, x = 0 on the image
left (the patient's right: PA view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "SIDES", "Anatomy", "Box", "Exposure", "NormBox", "Scene", "heart_bounds", "heart_inside", "lung_bounds",
    "lung_inside", "sample_anatomy", "segment_distance", "side_index", "smooth_noise", "soft",
]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
NormBox = tuple[float, float, float, float]  # the same in normalised coordinates

SIDES = (-1, 1)  # -1: image-left lung (patient's right), +1: image-right lung (patient's left)


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


def sample_anatomy(rng: np.random.Generator, texture_seed: tuple[int, ...]) -> Anatomy:
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


def soft(value: np.ndarray, edge: float) -> np.ndarray:
    """A soft mask from a signed inside-value (>0 inside), edge width in normalised units."""
    return (0.5 + 0.5 * np.tanh(value / edge)).astype(np.float32)


def side_index(side: int) -> int:
    return 0 if side < 0 else 1


def lung_inside(an: Anatomy, side: int, x, y, retract=None):
    """Signed inside-value of one lung (> 0 inside, roughly a distance).

    `retract(s)` pulls the lateral and apical borders in by that much at lung
    height s (0 apex .. 1 costophrenic angle): the collapsed lung of a pneumothorax.
    """
    i = side_index(side)
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


def heart_inside(an: Anatomy, x, y, scale_x: float = 1.0, scale_y: float = 1.0):
    hx, hy, rx, ry = _heart_ellipse(an, scale_x, scale_y)
    c, s = math.cos(an.heart_tilt), math.sin(an.heart_tilt)
    along, across = (x - hx) * c + (y - hy) * s, (y - hy) * c - (x - hx) * s
    return (1.0 - np.sqrt((along / rx) ** 2 + (across / ry) ** 2)) * min(rx, ry)


def heart_bounds(an: Anatomy, scale_x: float, scale_y: float) -> NormBox:
    hx, hy, rx, ry = _heart_ellipse(an, scale_x, scale_y)
    c, s = math.cos(an.heart_tilt), math.sin(an.heart_tilt)
    ex, ey = math.hypot(rx * c, ry * s), math.hypot(rx * s, ry * c)
    return (hx - ex, hy - ey, hx + ex, hy + ey)


def lung_bounds(an: Anatomy, side: int) -> NormBox:
    i = side_index(side)
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


def smooth_noise(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, cells: int) -> np.ndarray:
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


def segment_distance(x, y, p0: tuple[float, float], p1: tuple[float, float]):
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * vx + (y - p0[1]) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.sqrt((x - p0[0] - t * vx) ** 2 + (y - p0[1] - t * vy) ** 2)


# --------------------------------------------------------------------------- scene


class Scene:
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
        self.parenchyma = smooth_noise(texture_rng, self.xs, self.ys, 40)
        self.lung = {side: soft(lung_inside(an, side, x, y), edge) for side in SIDES}
        self.diaphragm_y = self._diaphragm_line()
        self.above_diaphragm = soft(self.diaphragm_y[None, :] + 0.01 - y, edge)
        self.heart = self.heart_mask(1.0, 1.0)
        self.markings = self._markings(texture_rng)
        lungs = self.lung[-1] + self.lung[1]
        d = np.abs(x - an.cx)
        neck = 0.12
        body_width = neck + (an.body_half_width - neck) * (0.5 + 0.5 * np.tanh((y - 0.1) / 0.06))
        self.body = soft(body_width - d, 0.015)
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
        inside = heart_inside(an, self.x, self.y, scale_x, scale_y)
        return soft(inside, 0.009) * self.above_diaphragm

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
            a = a - 0.12 * soft(1.0 - np.sqrt(((x - gx) / 0.06) ** 2 + ((y - gy) / 0.03) ** 2), 0.15)

        # Spine and trachea are separable bands: cheap outer products.
        spine_x = soft(0.032 - d, 0.006)
        vertebrae = 0.85 + 0.15 * np.cos(2 * np.pi * (y - an.rib_start) / (0.75 * an.rib_spacing))
        a = a + 0.09 * spine_x * vertebrae
        trachea_x = soft(0.016 - np.abs(x - an.cx + 0.004), 0.004)
        trachea_y = soft(an.heart_cy - 0.24 - y, 0.02)
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
        count = soft(phase, 0.05) * soft(9.6 - phase, 0.05)
        extent = soft(d - 0.035, 0.01) * soft(0.47 - d, 0.02)
        posterior = 0.075 * band * count * extent
        # Anterior ribs: fainter, sloping down towards the midline.
        ua = y + 0.45 * d
        phase_a = (ua - an.rib_start - 0.2) / (1.25 * an.rib_spacing)
        frac_a = phase_a - np.floor(phase_a)
        band_a = np.sin(np.pi * np.clip(frac_a / 0.4, 0.0, 1.0))
        extent_a = soft(d - 0.13, 0.03) * soft(0.45 - d, 0.03) * soft(phase_a, 0.1) * soft(5.5 - phase_a, 0.1)
        return 0.3 * posterior, 0.7 * posterior + 0.04 * band_a * extent_a

    def _clavicles(self) -> np.ndarray:
        an = self.anatomy
        out = np.zeros((self.size, self.size), np.float32)
        for side in SIDES:
            p0 = (an.cx + side * 0.035, an.clavicle_y)
            p1 = (an.cx + side * an.clavicle_length, an.clavicle_y - an.clavicle_rise)
            out += soft(0.019 - segment_distance(self.x, self.y, p0, p1), 0.005)
        return out
