"""The six drawn findings: each samples its parameters and renders one additive attenuation term.

A finding is an additive term in the attenuation map, so a picture with and without it
differs only where it is; its ground-truth box is the bounding box of its `extent`. Each
class is named after its NIH ChestX-ray14 label, and `PHANTOM_FINDINGS` lists them in NIH
order so phantom labels come out in the order of `medhash.data.labels.CLASSES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from medhash.data.labels import FINDINGS as NIH_FINDINGS
from medhash.data.phantoms._scene import (
    SIDES,
    Anatomy,
    NormBox,
    Scene,
    heart_bounds,
    heart_inside,
    lung_bounds,
    lung_inside,
    segment_distance,
    side_index,
    smooth_noise,
    soft,
)

__all__ = ["FINDING_TYPES", "PHANTOM_FINDINGS", "Finding"]


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

    def term(self, scene: Scene) -> np.ndarray:
        raise NotImplementedError

    def extent(self, scene: Scene, term: np.ndarray) -> np.ndarray:
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
        x0, y0, x1, y1 = lung_bounds(an, side)
        xs = rng.uniform(x0, x1, 256)
        ys = rng.uniform(y0, y1, 256)
        ok = (lung_inside(an, side, xs, ys) > radius + 0.012) & (
            heart_inside(an, xs, ys, heart_scale, heart_scale) < -radius
        )
        for i in np.flatnonzero(ok):
            box = (xs[i] - radius, ys[i] - radius, xs[i] + radius, ys[i] + radius)
            if attempt == 1 or not any(_overlaps(box, t) for t in taken):
                return side, float(xs[i]), float(ys[i])
    # Unreachable for sane anatomy; the lung centre is always deep inside.
    x0, y0, x1, y1 = lung_bounds(an, side)
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
        blob = soft(border - r, 0.008)
        texture = 0.85 + 0.15 * smooth_noise(scene.finding_rng(self.key), scene.xs, scene.ys, 48)
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
        return cls(side, lateral, lateral * rng.uniform(0.0, 0.3), lung_bounds(an, side))

    def term(self, scene):
        an, side = scene.anatomy, self.side
        i = side_index(side)
        t = np.clip((side * (scene.x - an.cx) - an.medial) / an.lung_width[i], 0.0, 1.0)
        meniscus = an.costophrenic[i] - self.medial_height - (self.lateral_height - self.medial_height) * t**1.5
        depth = scene.y - meniscus
        # Fluid replaces the air below the meniscus: the angle fills in and the dome edge vanishes.
        fluid = soft(depth, 0.012) * np.clip(0.9 + 2.0 * depth, 0.9, 1.05)
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
        return cls(sx, sy, heart_bounds(an, sx, sy))

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
        patches = smooth_noise(rng, scene.xs, scene.ys, 30)
        blotches = smooth_noise(rng, scene.xs, scene.ys, 70)
        region = soft(ellipse + 0.2 * patches + 0.05, 0.15) * np.clip(0.7 + 0.25 * patches + 0.25 * blotches, 0.2, 1.0)
        tube = sum(soft(0.0045 - segment_distance(scene.x, scene.y, s[:2], s[2:]), 0.002) for s in self.bronchi)
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
        return cls(side, rng.uniform(0.05, 0.085), rng.uniform(0.45, 0.8), lung_bounds(an, side))

    def _retract(self, s):
        return self.depth * np.cos(0.5 * np.pi * np.clip(s / self.reach, 0.0, 1.0))

    def term(self, scene):
        an = scene.anatomy
        collapsed = lung_inside(an, self.side, scene.x, scene.y, retract=self._retract)
        lung = scene.lung[self.side]
        gap = np.clip(lung - soft(collapsed, 0.006), 0.0, 1.0)  # same edge as the lung: zero where not retracted
        inside = lung_inside(an, self.side, scene.x, scene.y)
        pleura = np.exp(-((collapsed / 0.0035) ** 2)) * soft(inside - collapsed - 0.01, 0.003)
        vessels = an.marking_amp * scene.markings * lung
        return (0.12 * pleura - gap * (vessels + 0.1)).astype(np.float32)


FINDING_TYPES: dict[str, type[Finding]] = {
    cls.name: cls for cls in (Cardiomegaly, Effusion, Mass, Nodule, Pneumothorax, Consolidation)
}
# NIH order, so labels come out in the same order as medhash.data.labels.CLASSES.
PHANTOM_FINDINGS: tuple[str, ...] = tuple(n for n in NIH_FINDINGS if n in FINDING_TYPES)
assert set(PHANTOM_FINDINGS) == set(FINDING_TYPES), "phantom findings must be NIH class names"
