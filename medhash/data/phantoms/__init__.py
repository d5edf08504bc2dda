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

Modules, bottom to top: `_scene` (anatomy, exposure, the rendered scene),
`_findings` (the six finding types), `_config` (`PhantomConfig`), `_phantom`
(spec sampling and rendering), `_dataset` (PNG + CSV datasets on disk), `_dicom` (an image as a
DICOM file, for archive-like test trees).
"""

from medhash.data.phantoms._config import DEFAULT_FINDING_PROBS, PhantomConfig
from medhash.data.phantoms._dicom import write_phantom_dicom
from medhash.data.phantoms._dataset import BOX_COLUMNS, LABEL_COLUMNS, phantom_label_counts, write_phantom_dataset
from medhash.data.phantoms._findings import PHANTOM_FINDINGS
from medhash.data.phantoms._phantom import generate_phantom, render_phantom, sample_phantom_spec

__all__ = [
    "BOX_COLUMNS",
    "DEFAULT_FINDING_PROBS",
    "LABEL_COLUMNS",
    "PHANTOM_FINDINGS",
    "PhantomConfig",
    "generate_phantom",
    "phantom_label_counts",
    "render_phantom",
    "sample_phantom_spec",
    "write_phantom_dicom",
    "write_phantom_dataset",
]
