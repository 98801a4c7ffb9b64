"""Threshold lung masks on the demo cohort: Dice against the truth lungs, lesion coverage.

Generates the default demo cohort (config demo: 12 patients per class, seed 2020, 256x256),
ingests each patient and runs the lungs stage with the default settings, then compares the mask
with the phantom's truth: Dice of lung vs background, agreement of sides, and the share of truth
lesion voxels inside the mask (consolidation included). Targets: Dice >= 0.97 on every patient,
>= 95% of lesion voxels inside the mask.

    .venv/bin/python benchmarks/lung_phantoms.py [--patients-per-class 12] [--jobs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from lungcam.config import load_config
from lungcam.ingest import VOLUME_NAME, IngestSettings, ingest_patient
from lungcam.lungs import LungSettings, run_lungs
from lungcam.phantom import cohort_layout, plan_cohort
from lungcam.phantom.generate import PhantomOptions, generate_patient


def evaluate(args: tuple) -> tuple:
    plan, root, config = args
    paths = cohort_layout(root, plan.patient_id)
    generate_patient(plan, PhantomOptions.from_config(config["demo"]), paths["dicom"], paths["lungs"], paths["lesions"])
    stage = Path(root) / "stage" / plan.patient_id
    ingest_patient(plan.patient_id, paths["dicom"], stage, IngestSettings.from_config(config["ingest"]))
    volume = nib.load(stage / VOLUME_NAME)
    outputs = {"labels": stage / "lungs.nii.gz", "montage": stage / "lungs.png", "record": stage / "lungs.json"}
    run_lungs(plan.patient_id, stage / VOLUME_NAME, outputs, LungSettings.from_config(config["lungs"]))
    found = np.asarray(nib.load(outputs["labels"]).dataobj)
    truth = np.asarray(resample_from_to(nib.load(paths["lungs"]), volume, order=0).dataobj)
    lesions = np.asarray(resample_from_to(nib.load(paths["lesions"]), volume, order=0).dataobj) > 0
    dice = 2 * ((found > 0) & (truth > 0)).sum() / ((found > 0).sum() + (truth > 0).sum())
    both = (found > 0) & (truth > 0)
    sides = float((found[both] == truth[both]).mean())
    return plan.patient_id, plan.label, float(dice), sides, int(lesions.sum()), int((lesions & (found > 0)).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients-per-class", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    config = load_config()
    per_class = args.patients_per_class or config["demo"]["patients_per_class"]
    plans = plan_cohort(per_class, config["demo"]["seed"], tuple(config["classes"]))
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(args.jobs) as pool:
        rows = sorted(pool.map(evaluate, [(plan, root, config) for plan in plans]))
    print(f"{'patient':9s} {'label':9s} {'dice':>6s} {'sides':>6s} {'lesion voxels inside':>20s}")
    for pid, label, dice, sides, lesion, inside in rows:
        coverage = f"{inside / lesion:.3f}" if lesion else "-"
        print(f"{pid:9s} {label:9s} {dice:6.3f} {sides:6.3f} {coverage:>20s}")
    by_class = {}
    for _, label, dice, _, lesion, inside in rows:
        entry = by_class.setdefault(label, [[], 0, 0])
        entry[0].append(dice)
        entry[1] += lesion
        entry[2] += inside
    print()
    for label, (dices, lesion, inside) in sorted(by_class.items()):
        coverage = f", lesion voxels inside {inside / lesion:.3f}" if lesion else ""
        print(f"{label:9s} Dice min {min(dices):.3f} median {np.median(dices):.3f}{coverage}")
    total = sum(r[4] for r in rows)
    covered = sum(r[5] for r in rows)
    worst = min(r[2] for r in rows)
    print(f"\nall: Dice min {worst:.3f} (target >= 0.97), lesion voxels inside {covered / total:.3f} (target >= 0.95)")
    return 0 if worst >= 0.97 and covered / total >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
