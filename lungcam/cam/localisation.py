"""How well a patient's CAM finds its lesions, where a lesion mask is known.

Per patient, against the lesion mask on the scan's grid (`mask_on_grid`):
- pointing game: the map's maximum lies in a lesion;
- peak distance: how far (mm) that maximum lies from the nearest lesion voxel, 0 inside one, so
  that a near miss can be told from a map that points at the wrong lung;
- lesion in lungs: the share of the lesion inside the lung mask. The map is 0 outside the lungs,
  so a lesion the lung mask left out (a consolidation taken for chest wall) cannot be pointed
  at: a miss of the lung mask, not of the map;
- hit (as DeCoVNet measured it): the largest 3D component of the top 5% of the map within the
  lungs has its centre of mass in a lesion;
- Dice and IoU of the flagged voxels at the configured threshold (`lesions.cam_threshold`) and at
  the best of the thresholds 0.05, 0.10, ..., 0.95 of the map's maximum;
- slice level: each axial slice's score is the map's maximum in it, its label whether it holds
  lesion; the AUC per patient, and pooled over the cohort by `cohort_summary`.
Cohort means get 95% bootstrap confidence intervals over patients (seeded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from nibabel.affines import voxel_sizes
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from lungcam.cam.lesions import LesionSettings, cam_threshold
from lungcam.core.orientation import mask_on_grid

BEST_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the scanner's z (head-feet) axis."""
    return int(np.argmax(np.abs(affine[2, :3])))


def slice_auc(slices: pd.DataFrame) -> float:
    """ROC AUC of slice `score` against `infection` (NaN unless both kinds of slice are there)."""
    return float(roc_auc_score(slices["infection"], slices["score"])) if slices["infection"].nunique() == 2 else float("nan")


def slice_scores(cam: np.ndarray, lesion: np.ndarray, lungs: np.ndarray, axis: int) -> pd.DataFrame:
    """Per axial slice with lung: `slice_index`, `score` (map maximum) and `infection` (0/1)."""
    others = tuple(a for a in range(3) if a != axis)
    with_lung = (lungs > 0).any(axis=others)
    index = np.flatnonzero(with_lung)
    return pd.DataFrame(
        {"slice_index": index, "score": cam.max(axis=others)[index], "infection": lesion.any(axis=others)[index].astype(int)}
    )


def patient_localisation(cam: np.ndarray, lesion: np.ndarray, lungs: np.ndarray, affine: np.ndarray, settings: LesionSettings) -> dict:
    """The localisation figures of one patient (lesion, lungs and map on the same grid)."""
    lesion = lesion > 0
    result = {"lesion_ml": round(float(lesion.sum()) * abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0, 3)}
    slices = slice_scores(cam, lesion, lungs, axial_axis(affine))
    result["slice_auc"] = slice_auc(slices)
    if not lesion.any():
        return result | {
            "pointing_game": float("nan"),
            "peak_distance_mm": float("nan"),
            "lesion_in_lungs": float("nan"),
            "hit": float("nan"),
            "dice": float("nan"),
            "iou": float("nan"),
            "best_dice": float("nan"),
            "best_threshold": float("nan"),
        }
    result["lesion_in_lungs"] = round(float((lungs[lesion] > 0).mean()), 4)
    box = ndimage.find_objects((lungs > 0).astype(np.uint8))
    box = box[0] if box else tuple(slice(0, n) for n in lungs.shape)  # the lungs' bounding box
    in_lungs, scores, inside_lesion = lungs[box] > 0, cam[box], lesion[box]
    peak = np.unravel_index(np.argmax(np.where(in_lungs, scores, -1.0)), scores.shape)
    result["pointing_game"] = float(inside_lesion[peak])
    offsets = (np.argwhere(inside_lesion) - np.array(peak)) * voxel_sizes(affine)
    result["peak_distance_mm"] = round(float(np.sqrt((offsets**2).sum(axis=1)).min()), 2) if len(offsets) else float("nan")
    lung_scores, lung_lesion = scores[in_lungs], inside_lesion[in_lungs]
    top = in_lungs & (scores >= np.percentile(lung_scores, 95)) & (scores > 0)
    components, count = ndimage.label(top, structure=np.ones((3, 3, 3), dtype=bool))
    if count:
        largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
        centre = tuple(int(round(c)) for c in ndimage.center_of_mass(components == largest))
        result["hit"] = float(inside_lesion[centre])
    else:
        result["hit"] = 0.0
    truth = float(lesion.sum())  # lesion outside the lungs still counts as missed

    def overlap(found: np.ndarray) -> tuple[float, float]:
        both = float((found & lung_lesion).sum())
        return 2 * both / (float(found.sum()) + truth), both / (float(found.sum()) + truth - both)

    result["dice"], result["iou"] = overlap(lung_scores >= cam_threshold(cam, lungs, settings))
    peak_value = float(lung_scores.max())
    dices = [overlap((lung_scores >= t * peak_value) & (lung_scores > 0))[0] for t in BEST_THRESHOLDS]
    best = int(np.argmax(dices))
    result["best_dice"], result["best_threshold"] = float(dices[best]), float(BEST_THRESHOLDS[best])
    return result


def bootstrap_mean(values: np.ndarray, seed: int, repeats: int = 2000) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of the bootstrap means) of the finite values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (repeats, values.size))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cohort_summary(per_patient: pd.DataFrame, slices: pd.DataFrame, seed: int) -> dict:
    """Cohort means with 95% CIs, and the slice-level AUC pooled over all patients' slices."""
    summary = {"patients": int(len(per_patient)), "lesion_positive": int((per_patient["lesion_ml"] > 0).sum())}
    for column in ("pointing_game", "peak_distance_mm", "lesion_in_lungs", "hit", "dice", "iou", "best_dice", "slice_auc"):
        mean, low, high = bootstrap_mean(per_patient[column].to_numpy(), seed)
        summary[column] = {"mean": mean, "ci95": [low, high], "n": int(np.isfinite(per_patient[column].to_numpy(dtype=float)).sum())}
    summary["slice_auc_pooled"] = {"auc": slice_auc(slices), "slices": int(len(slices))}
    return summary


def labelled_slice_scores(cam_lps: np.ndarray, lungs_lps: np.ndarray, labels: pd.DataFrame) -> pd.DataFrame:
    """Map scores of the slices in a slice-label table (`slice_index`, `infection`), such as
    COVID-CT-MD's: slice_index k counts from the most superior slice down, so it is LPS z
    index (slices - 1 - k). Slices outside the volume or without lung are left out."""
    count = cam_lps.shape[0]
    z = count - 1 - labels["slice_index"].to_numpy()
    keep = (z >= 0) & (z < count)
    z, chosen = z[keep], labels[keep]
    with_lung = (lungs_lps > 0).any(axis=(1, 2))[z]
    return pd.DataFrame(
        {
            "slice_index": chosen["slice_index"].to_numpy()[with_lung],
            "score": cam_lps.max(axis=(1, 2))[z][with_lung],
            "infection": chosen["infection"].to_numpy()[with_lung].astype(int),
        }
    )


def localise_cohort(
    cams: list[Path | str],
    lungs: list[Path | str],
    masks: dict[str, str],
    slice_labels: pd.DataFrame | None,
    settings: LesionSettings,
    seed: int,
) -> tuple[pd.DataFrame, dict]:
    """Per-patient localisation figures of the maps `cam/{patient_id}.nii.gz` (with their lung
    masks), against `masks` (patient -> lesion mask, brought onto the map's grid by `mask_on_grid`)
    and the slice labels; and the cohort summary over the patients with a lesion mask, plus the
    slice-label AUCs."""
    import nibabel as nib

    from lungcam.core.orientation import LPSView

    labelled_patients = set(slice_labels["patient_id"]) if slice_labels is not None else set()
    rows, slices, labelled = [], [], []
    for cam_path, lungs_path in zip(cams, lungs):
        patient = Path(cam_path).name[: -len(".nii.gz")]
        cam_image = nib.load(cam_path)
        cam, lung = np.asarray(cam_image.dataobj), np.asarray(nib.load(lungs_path).dataobj)
        row = {"patient_id": patient}
        if masks.get(patient):
            lesion = mask_on_grid(nib.load(masks[patient]), cam_image) > 0
            row |= patient_localisation(cam, lesion, lung, cam_image.affine, settings)
            slices.append(slice_scores(cam, lesion, lung, axial_axis(cam_image.affine)).assign(patient_id=patient))
        if patient in labelled_patients:
            view = LPSView.of(cam_image)
            scores = labelled_slice_scores(view.lps(cam), view.lps(lung), slice_labels[slice_labels["patient_id"] == patient])
            row["slice_label_auc"] = slice_auc(scores)
            labelled.append(scores.assign(patient_id=patient))
        rows.append(row)
    table = pd.DataFrame(rows)
    masked = table[table["patient_id"].map(lambda p: bool(masks.get(p)))]
    summary = cohort_summary(masked, pd.concat(slices, ignore_index=True), seed) if slices else {}
    if labelled:
        pooled = pd.concat(labelled, ignore_index=True)
        per_patient = table.dropna(subset=["slice_label_auc"])
        summary["slice_labels"] = {
            "patients": len(labelled),
            "slices": len(pooled),
            "auc_pooled": slice_auc(pooled),
            "auc_per_patient": dict(zip(per_patient["patient_id"], per_patient["slice_label_auc"])),
        }
    return table, summary
