"""What to generate: `PhantomConfig` (size, seed, class balance, exposure and noise, follow-up pairs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from medhash.data.phantoms._findings import PHANTOM_FINDINGS
from medhash.errors import InvalidParameterError

__all__ = ["DEFAULT_FINDING_PROBS", "PhantomConfig"]

# Independent per-finding probabilities; together they give ~35% "No Finding".
DEFAULT_FINDING_PROBS: Mapping[str, float] = {
    "Cardiomegaly": 0.18,
    "Effusion": 0.18,
    "Mass": 0.12,
    "Nodule": 0.20,
    "Pneumothorax": 0.12,
    "Consolidation": 0.15,
}


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
            raise InvalidParameterError(f"phantoms cannot draw {unknown}; known findings: {list(PHANTOM_FINDINGS)}")
        bad = {k: p for k, p in self.finding_probs.items() if not 0.0 <= float(p) <= 1.0}
        if bad:
            raise InvalidParameterError(f"finding probabilities must lie in [0, 1]: {bad}")
        if self.size < 32:
            raise InvalidParameterError(f"phantom size must be at least 32 px, got {self.size}")
        if self.max_findings < 0:
            raise InvalidParameterError(f"max_findings must be >= 0, got {self.max_findings}")
        if self.noise < 0 or self.exposure_jitter < 0:
            raise InvalidParameterError("noise and exposure_jitter must be >= 0")
        if self.followup_every == 1 or self.followup_every < 0:
            raise InvalidParameterError(f"followup_every must be 0 or >= 2, got {self.followup_every}")
