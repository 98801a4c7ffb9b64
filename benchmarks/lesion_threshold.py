"""Choosing `cam.lesions.absolute` on development runs: lesion Dice and normal scans' flags per threshold.

For every finished workflow run given (development cohorts only: the threshold is fixed before
any evaluation cohort is scored), each patient's map `results/cam/{patient_id}.nii.gz` is
thresholded at every candidate value, as the `lesions` rule does (components smaller than
`cam.lesions.min_volume_ml` dropped), and scored:
- lesion patients: Dice against the lesion mask (the `localisation` rule's figure);
- NP patients whose map is of a pneumonia class (predicted pneumonia): the share with any
  candidate and their flagged volume, what a report would show for a normal scan.
Printed per threshold, pooled over the runs; the chosen value is the one with the highest mean
lesion Dice over the runs' patients.

    .venv/bin/python benchmarks/lesion_threshold.py runs/generalisation/synthetic-2020 runs/generalisation/synthetic-2021
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungcam.cam.lesions import LesionSettings, find_lesions  # noqa: E402
from lungcam.core.config import validate_config  # noqa: E402
from lungcam.core.orientation import mask_on_grid  # noqa: E402
from lungcam.core.records import read_predictions  # noqa: E402
from lungcam.core.samplesheet import lesion_masks, load_sample_sheet  # noqa: E402

THRESHOLDS = np.round(np.arange(0.30, 0.951, 0.05), 2)
NO_PNEUMONIA = "NP"


def run_rows(workdir: Path, min_volume_ml: float) -> list[dict]:
    """One row per patient and threshold: Dice (lesion patients) or flagged mL (NP patients)."""
    results = workdir / "results"
    predictions = read_predictions(results / "predictions.tsv")
    masks = lesion_masks(load_sample_sheet(workdir / "demo" / "samples.tsv", validate_config({})["classes"]))
    rows = []
    for row in predictions.itertuples():
        cam_image = nib.load(results / "cam" / f"{row.patient_id}.nii.gz")
        cam, lungs = np.asarray(cam_image.dataobj), np.asarray(nib.load(results / "lungs" / f"{row.patient_id}.nii.gz").dataobj)
        lesion = mask_on_grid(nib.load(masks[row.patient_id]), cam_image) > 0 if row.patient_id in masks else None
        has_lesion = lesion is not None and lesion.any()
        if not has_lesion and (row.label != NO_PNEUMONIA or row.predicted == NO_PNEUMONIA):
            continue  # only lesion patients and NP patients mapped for a pneumonia class count
        for threshold in THRESHOLDS:
            settings = LesionSettings("absolute", float(threshold), 0.5, min_volume_ml)
            _, burden = find_lesions(cam, lungs, cam_image.affine, settings)
            flagged = (cam >= threshold) & (lungs > 0)
            base = {"run": workdir.name, "patient_id": row.patient_id, "threshold": float(threshold), "flagged_ml": burden["flagged_ml"]}
            if has_lesion:
                dice = 2 * float((flagged & lesion).sum()) / (float(flagged.sum()) + float(lesion.sum()))
                rows.append(base | {"kind": "lesion", "dice": dice})
            else:
                rows.append(base | {"kind": "normal", "dice": float("nan")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="working directories of finished development runs")
    args = parser.parse_args()
    min_volume = validate_config({})["cam"]["lesions"]["min_volume_ml"]
    table = pd.DataFrame([r for run in args.runs for r in run_rows(run, min_volume)])
    lesion, normal = table[table["kind"] == "lesion"], table[table["kind"] == "normal"]
    print(
        f"runs: {', '.join(r.name for r in args.runs)}; {len(lesion[['run', 'patient_id']].drop_duplicates())} lesion patients, "
        f"{len(normal[['run', 'patient_id']].drop_duplicates())} NP patients mapped for a pneumonia class"
    )
    print("threshold  lesion Dice mean (per run)          NP with candidates  NP flagged mL mean")
    for threshold, group in lesion.groupby("threshold"):
        per_run = "  ".join(f"{d:.3f}" for d in group.groupby("run")["dice"].mean())
        normals = normal[normal["threshold"] == threshold]
        share = f"{(normals['flagged_ml'] > 0).mean():.2f}" if len(normals) else "-"
        volume = f"{normals['flagged_ml'].mean():.1f}" if len(normals) else "-"
        print(f"{threshold:9.2f}  {group['dice'].mean():.3f} ({per_run})  {share:>18s}  {volume:>18s}")
    best = lesion.groupby("threshold")["dice"].mean().idxmax()
    print(f"chosen: cam.lesions.absolute {best:.2f} (highest mean lesion Dice)")


if __name__ == "__main__":
    main()
