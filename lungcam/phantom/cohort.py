"""Plan a synthetic cohort: who has which label, and each patient's nuisance factors.

Nuisance factors (scanner, reconstruction, body size, positioning, storage) are balanced across
classes by design rather than drawn independently: a small cohort of independent draws can
carry a chance association (the sharp kernel mostly in one class) that a classifier learns as a
shortcut. Each factor has one menu of values per cohort, as many as patients per class (levels
in equal shares, continuous ranges in equal-width strata), and every class gets that same menu
in its own random order. Each class therefore holds exactly the same values of every factor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_CLASSES = ("COVID-19", "CAP", "NP")

# Random streams of one patient; a stream never depends on another's draws.
STREAM_LABELS, STREAM_NUISANCE, STREAM_ANATOMY, STREAM_LESIONS, STREAM_NOISE, STREAM_IDENTITY, STREAM_FILES, STREAM_SCOUTS = range(8)

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


# Factor levels; continuous factors as (low, high, decimals).
LEVELS = {
    "slice_thickness_mm": SLICE_THICKNESSES_MM,
    "kernel": tuple(KERNELS),
    "patient_position": ("HFS", "FFS"),
    "storage": STORAGE,
    "scanner": MANUFACTURERS,
    "kvp": (100.0, 120.0, 140.0),
}
RANGES = {
    "fov_mm": (300.0, 420.0, 1),
    "noise_hu": (8.0, 25.0, 2),
    "body_scale": (0.88, 1.12, 3),
    "tube_current_ma": (80.0, 350.0, 0),
}


def _menu(rng: np.random.Generator, size: int) -> dict[str, list]:
    """`size` values of every factor: levels in equal shares (the remainder a random choice of
    levels), continuous factors one draw from each of `size` equal-width strata."""
    menu = {}
    for name, levels in LEVELS.items():
        full, rest = divmod(size, len(levels))
        picks = list(range(len(levels))) * full + sorted(rng.choice(len(levels), rest, replace=False).tolist())
        menu[name] = [levels[i] for i in picks]
    for name, (low, high, decimals) in RANGES.items():
        edges = np.linspace(low, high, size + 1)
        menu[name] = [round(float(rng.uniform(a, b)), decimals) for a, b in zip(edges[:-1], edges[1:])]
    return menu


def _nuisance(menu: dict[str, list], order: dict[str, np.ndarray], rank: int) -> Nuisance:
    value = {name: menu[name][order[name][rank]] for name in menu}
    (representation, intercept), (manufacturer, model) = value["storage"], value["scanner"]
    return Nuisance(
        slice_thickness_mm=float(value["slice_thickness_mm"]),
        fov_mm=value["fov_mm"],
        kernel=str(value["kernel"]),
        noise_hu=value["noise_hu"],
        body_scale=value["body_scale"],
        patient_position=str(value["patient_position"]),
        pixel_representation=int(representation),
        rescale_intercept=float(intercept),
        manufacturer=manufacturer,
        model=model,
        kvp=float(value["kvp"]),
        tube_current_ma=value["tube_current_ma"],
    )


def balanced_nuisance(seed: int, groups: list[str], stream: tuple[int, ...] = (STREAM_NUISANCE,)) -> list[Nuisance]:
    """Nuisance factors for patients in groups `groups` (one entry per patient, in order): every
    group gets the same menu of values (sized for the largest group) in its own random order."""
    names = list(dict.fromkeys(groups))
    size = max((groups.count(name) for name in names), default=0)
    rng = np.random.default_rng([seed, *stream])
    menu = _menu(rng, size)
    orders = {name: {factor: rng.permutation(size) for factor in menu} for name in names}
    ranks = {name: 0 for name in names}
    nuisances = []
    for group in groups:
        nuisances.append(_nuisance(menu, orders[group], ranks[group]))
        ranks[group] += 1
    return nuisances


@dataclass(frozen=True)
class PatientPlan:
    """One synthetic patient: id, label, nuisance factors and the seed/index its other random
    streams (anatomy, lesions, noise, identity, files) derive from."""

    patient_id: str
    label: str
    index: int
    seed: int
    nuisance: Nuisance
    scout_only: bool = False  # the study holds only its localizer: sent without its axial series

    @classmethod
    def from_dict(cls, values: dict) -> PatientPlan:
        """The inverse of dataclasses.asdict (how the workflow passes a plan to its job)."""
        return cls(**{**values, "nuisance": Nuisance(**values["nuisance"])})


def plan_cohort(
    patients_per_class: int, seed: int, classes: tuple[str, ...] = DEFAULT_CLASSES, prefix: str = "demo", scout_only: int = 0
) -> list[PatientPlan]:
    """A balanced cohort in random label order; ids (`demo001`...) say nothing about the label.

    `scout_only` more patients follow whose studies hold only a localizer, as when a scan is
    sent without its axial series: ingest must exclude them, and the reports must show why.
    """
    labels = np.repeat(np.array(classes), patients_per_class)
    rng = np.random.default_rng([seed, STREAM_LABELS])
    labels = [str(label) for label in labels[rng.permutation(labels.size)]]
    # Localizer-only patients draw on streams of their own: adding one changes no one else's plan.
    nuisances = balanced_nuisance(seed, labels) + [balanced_nuisance(seed, ["scout"], (STREAM_SCOUTS, i))[0] for i in range(scout_only)]
    total = len(labels) + scout_only
    width = max(3, len(str(total)))
    return [
        PatientPlan(
            patient_id=f"{prefix}{i + 1:0{width}d}",
            label=labels[i] if i < len(labels) else classes[i % len(classes)],
            index=i,
            seed=seed,
            nuisance=nuisances[i],
            scout_only=i >= len(labels),
        )
        for i in range(total)
    ]
