"""Plan a synthetic cohort: who has which label, and each patient's nuisance factors.

Nuisance factors (scanner, reconstruction, body size, positioning, storage) are drawn from a
random stream keyed only by (seed, patient index), never by the label. A classifier therefore
cannot learn the class from anything but the lesions: independence holds by construction, and
tests check it both ways (same draws whatever the labels; no association over a large cohort).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_CLASSES = ("COVID-19", "CAP", "NP")

# Random streams of one patient; a stream never depends on another's draws.
STREAM_LABELS, STREAM_NUISANCE, STREAM_ANATOMY, STREAM_LESIONS, STREAM_NOISE, STREAM_IDENTITY, STREAM_FILES = range(7)

# Reconstruction kernels: in-plane blur (mm, Gaussian sigma of the point spread), noise
# amplification and noise grain (pixels) relative to a smooth kernel.
KERNELS = {
    "B30f": {"psf_mm": 0.9, "noise_factor": 1.0, "grain_px": 1.0},
    "B50f": {"psf_mm": 0.6, "noise_factor": 1.7, "grain_px": 0.7},
    "B70f": {"psf_mm": 0.4, "noise_factor": 2.6, "grain_px": 0.45},
}
SLICE_THICKNESSES_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
# (PixelRepresentation, RescaleIntercept): unsigned with -1024 (air clipped at -1024, as many
# scanners store it), signed with 0, signed with -1024.
STORAGE = ((0, -1024.0), (1, 0.0), (1, -1024.0))
MANUFACTURERS = (("SIEMENS", "SOMATOM Synthetic"), ("GE MEDICAL SYSTEMS", "Revolution Synthetic"), ("Philips", "Ingenuity Synthetic"))


def patient_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The random generator of one stream of one patient."""
    return np.random.default_rng([seed, index, stream])


@dataclass(frozen=True)
class Nuisance:
    """Acquisition and patient factors unrelated to the diagnosis."""

    slice_thickness_mm: float
    fov_mm: float
    kernel: str
    noise_hu: float
    body_scale: float
    patient_position: str
    pixel_representation: int
    rescale_intercept: float
    manufacturer: str
    model: str
    kvp: float
    tube_current_ma: float

    def as_dict(self) -> dict:
        return asdict(self)


def draw_nuisance(seed: int, index: int) -> Nuisance:
    """Nuisance factors of patient `index`; depends on nothing but (seed, index)."""
    rng = patient_rng(seed, index, STREAM_NUISANCE)
    representation, intercept = STORAGE[rng.integers(len(STORAGE))]
    manufacturer, model = MANUFACTURERS[rng.integers(len(MANUFACTURERS))]
    return Nuisance(
        slice_thickness_mm=float(rng.choice(SLICE_THICKNESSES_MM)),
        fov_mm=float(round(rng.uniform(300.0, 420.0), 1)),
        kernel=str(rng.choice(list(KERNELS))),
        noise_hu=float(round(rng.uniform(8.0, 25.0), 2)),
        body_scale=float(round(rng.uniform(0.88, 1.12), 3)),
        patient_position=str(rng.choice(["HFS", "FFS"])),
        pixel_representation=int(representation),
        rescale_intercept=float(intercept),
        manufacturer=manufacturer,
        model=model,
        kvp=float(rng.choice([100.0, 120.0, 140.0])),
        tube_current_ma=float(round(rng.uniform(80.0, 350.0))),
    )


@dataclass(frozen=True)
class PatientPlan:
    """One synthetic patient: id, label and the seed/index its random streams derive from."""

    patient_id: str
    label: str
    index: int
    seed: int
    scout_only: bool = False  # the study holds only its localizer: sent without its axial series

    @property
    def nuisance(self) -> Nuisance:
        return draw_nuisance(self.seed, self.index)


def plan_cohort(patients_per_class: int, seed: int, classes: tuple[str, ...] = DEFAULT_CLASSES, prefix: str = "demo", scout_only: int = 0) -> list[PatientPlan]:
    """A balanced cohort in random label order; ids (`demo001`...) say nothing about the label.

    `scout_only` more patients follow whose studies hold only a localizer, as when a scan is
    sent without its axial series: ingest must exclude them, and the reports must show why.
    """
    labels = np.repeat(np.array(classes), patients_per_class)
    rng = np.random.default_rng([seed, STREAM_LABELS])
    labels = labels[rng.permutation(labels.size)]
    total = labels.size + scout_only
    width = max(3, len(str(total)))
    return [
        PatientPlan(patient_id=f"{prefix}{i + 1:0{width}d}", label=str(labels[i]) if i < labels.size else classes[i % len(classes)], index=i, seed=seed,
                    scout_only=i >= labels.size)
        for i in range(total)
    ]
