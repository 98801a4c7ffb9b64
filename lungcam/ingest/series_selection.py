"""Choose the one image stack of a study that the workflow analyses, and say why.

A CT study folder typically holds a localizer (topogram), one or more axial reconstructions
(thin and thick, lung and soft-tissue kernels), sometimes reformats or dose reports. The policy:
drop what is not an axial CT volume (with the reason), then rank the rest by configurable keys,
by default most slices first, then thinnest.

The remaining series must come from one patient and one study: a folder that also holds another
patient's scan, or a second (e.g. follow-up) study, excludes the patient rather than letting the
larger series win. The sample sheet's `study_uid` picks a study, and `multiple_studies: earliest`
keeps the earliest one explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lungcam.core.config import settings_from
from lungcam.ingest.dicom_series import CT_SOP_CLASSES, ImageStack, Study, modality_of

LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVEY"}


@dataclass(frozen=True)
class SeriesPolicy:
    """How a stack is chosen (config section `ingest.series`)."""

    allow_derived: bool
    max_obliquity_deg: float
    rank_by: tuple[str, ...]
    prefer_description: str
    reject_description: str
    multiple_studies: str

    @classmethod
    def from_config(cls, section: dict) -> SeriesPolicy:
        return settings_from(cls, section)


@dataclass
class SeriesChoice:
    """The chosen stack (None when nothing qualifies), the reason, and every rejected stack.

    `problem` says why nothing was chosen although series qualified (several patients or
    studies); `warnings` note a choice between studies."""

    chosen: ImageStack | None
    why: str
    candidates: list[ImageStack]
    rejected: list[tuple[ImageStack, list[str]]]
    problem: str = ""
    warnings: list[str] = field(default_factory=list)


def describe(stack: ImageStack) -> dict:
    """A short, identifier-free description of a stack for the QC record."""
    first = stack.first
    return {
        "label": stack.label,
        "series_number": first.series_number,
        "description": first.technical.get("series_description", ""),
        "image_type": list(first.image_type),
        "images": stack.image_count,
        "slice_thickness_mm": stack.thickness_mm,
        "matrix": [first.rows, first.columns],
        "study": stack.study,
    }


def rejection_reasons(stack: ImageStack, policy: SeriesPolicy) -> list[str]:
    """Every reason why `stack` cannot be the analysed volume (empty list: it can)."""
    first = stack.first
    reasons = []
    modality = modality_of(first)
    if modality != "CT":
        reasons.append(f"not CT (modality {modality or 'missing'})")
    elif first.sop_class and first.sop_class not in CT_SOP_CLASSES:
        reasons.append(f"not a CT image object (SOP class {first.sop_class}, e.g. a screenshot or dose report)")
    if LOCALIZER_TYPES & set(first.image_type):
        reasons.append("localizer (scout) image")
    is_derived = bool(first.image_type) and (first.image_type[0] == "DERIVED" or "SECONDARY" in first.image_type[1:2])
    if is_derived and not policy.allow_derived:
        reasons.append("derived or secondary image (ingest.series.allow_derived is false)")
    if first.orientation is None or first.position is None:
        reasons.append("no slice orientation or position in the header")
    else:
        geometry = stack.geometry()
        if stack.image_count < 2:
            reasons.append("a single image, not a volume")
        elif geometry is not None and geometry.obliquity_deg > policy.max_obliquity_deg:
            reasons.append(
                f"not axial (slice normal {geometry.obliquity_deg:.0f} deg from the body axis, limit {policy.max_obliquity_deg:g})"
            )
    damaged = [f.pixel_problem for f in stack.files if f.pixel_problem]
    if damaged:
        reasons.append(f"{len(damaged)} of {len(stack.files)} files damaged: {damaged[0]}")
    description = first.technical.get("series_description", "")
    if policy.reject_description and re.search(policy.reject_description, description, re.IGNORECASE):
        reasons.append(f"description matches ingest.series.reject_description '{policy.reject_description}'")
    return reasons


def _rank_key(stack: ImageStack, policy: SeriesPolicy) -> tuple:
    thickness = stack.thickness_mm if stack.thickness_mm is not None else float("inf")
    values = {
        "most_slices": -stack.image_count,
        "fewest_slices": stack.image_count,
        "thinnest": thickness,
        "thickest": -thickness,
    }
    key = [values[name] for name in policy.rank_by]
    if policy.prefer_description:
        preferred = re.search(policy.prefer_description, stack.first.technical.get("series_description", ""), re.IGNORECASE)
        key.insert(0, 0 if preferred else 1)
    return tuple(key) + (stack.index,)


_KEY_WORDS = {
    "most_slices": "more slices",
    "fewest_slices": "fewer slices",
    "thinnest": "thinner slices",
    "thickest": "thicker slices",
}


def _summary(stack: ImageStack) -> str:
    thickness = f", {stack.thickness_mm:g} mm" if stack.thickness_mm is not None else ""
    return f"{stack.label} ({stack.image_count} images{thickness})"


def _series_list(stacks: list[ImageStack]) -> str:
    return ", ".join(stack.label for stack in stacks)


def _one_study(candidates: list[ImageStack], rejected: list, policy: SeriesPolicy) -> tuple[list[ImageStack], str, list[str]]:
    """(the candidates of one study, problem, warnings): several studies exclude the patient
    unless `multiple_studies` is `earliest`, and several PatientIDs always do."""
    warnings: list[str] = []
    studies = sorted({s.study for s in candidates})
    if len(studies) > 1:
        listing = "; ".join(f"study {n}: {_series_list([s for s in candidates if s.study == n])}" for n in studies)
        if policy.multiple_studies != "earliest":
            return (
                [],
                (
                    f"the folder holds {len(studies)} studies (StudyInstanceUID differs; {listing}); give the sample sheet's "
                    "study_uid, or set ingest.series.multiple_studies: earliest"
                ),
                [],
            )
        later = [s for s in candidates if s.study != studies[0]]
        rejected += [(s, ["a later study (ingest.series.multiple_studies: earliest)"]) for s in later]
        candidates = [s for s in candidates if s.study == studies[0]]
        warnings.append(f"the folder holds {len(studies)} studies; the earliest was kept ({listing})")
    patients = {s.first.patient_ref for s in candidates if s.first.patient_ref}
    if len(patients) > 1:
        return (
            [],
            (
                f"the folder holds series of {len(patients)} different patients (PatientID differs: "
                f"{_series_list(candidates)}); give each patient a folder of its own"
            ),
            warnings,
        )
    return candidates, "", warnings


def select_series(study: Study, policy: SeriesPolicy, study_uid: str = "") -> SeriesChoice:
    """Apply the policy to every stack of the study; `study_uid` (from the sample sheet), when
    given, keeps only that study's series."""
    candidates, rejected = [], []
    for stack in study.stacks():
        reasons = rejection_reasons(stack, policy)
        if study_uid and stack.first.study_uid != study_uid:
            reasons.append("not the study given by the sample sheet's study_uid")
        if reasons:
            rejected.append((stack, reasons))
        else:
            candidates.append(stack)
    if not candidates:
        return SeriesChoice(None, "no stack qualifies", [], rejected)
    candidates, problem, warnings = _one_study(candidates, rejected, policy)
    if problem:
        return SeriesChoice(None, "series of more than one patient or study", [], rejected, problem, warnings)
    ranked = sorted(candidates, key=lambda s: _rank_key(s, policy))
    chosen = ranked[0]
    if len(ranked) == 1:
        why = f"{_summary(chosen)}: the only axial CT volume"
    else:
        runner_up = ranked[1]
        names = (["prefer_description"] if policy.prefer_description else []) + list(policy.rank_by)
        a, b = _rank_key(chosen, policy), _rank_key(runner_up, policy)
        deciding = next((n for n, x, y in zip(names, a, b) if x != y), None)
        reason = {"prefer_description": "its description matches ingest.series.prefer_description"}.get(
            deciding, _KEY_WORDS.get(deciding, "lower series number")
        )
        why = f"{_summary(chosen)} chosen over {_summary(runner_up)}: {reason}"
    if rejected:
        why += f"; {len(rejected)} other stack(s) rejected"
    return SeriesChoice(chosen, why, ranked, rejected, warnings=warnings)
