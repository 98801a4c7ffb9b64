"""Seconds per patient and localisation figures of each CAM method, on a finished training run.

Maps every patient of the run again with each method (the `cam` rule's work: out-of-fold model,
cache, resample onto the scan's grid; one CPU thread), times the first `--patients` of them, and
scores all maps against the sample sheet's lesion masks as the `localisation` rule does. The
issue's targets for the default map: pointing game >= 0.80 on lesion-positive patients and
slice-level AUC >= 0.85.

With `--shifts`, each method is also run densely evaluated (`cam.shifts`: the maps at n x n
input offsets within a pool3 cell, averaged back in place); the table names the method and n.
With `--smooth`, each map is also smoothed within the lungs by a Gaussian of that many mm
(`cam.smooth_mm`; the default is the workflow's); the table names sigma after "s".

    .venv/bin/python benchmarks/cam.py demo-hu2020 --patients 6
    .venv/bin/python benchmarks/cam.py run200 --cohort 60 --methods lungcam_mean gradcam
    .venv/bin/python benchmarks/cam.py demo-s13c --methods lungcam_mean pool3 --shifts 1 2 4
    .venv/bin/python benchmarks/cam.py demo --methods lungcam_mean --shifts 2 --smooth 0 2 4 6
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungcam.cam.lesions import LesionSettings  # noqa: E402
from lungcam.cam.localisation import localise_cohort  # noqa: E402
from lungcam.cam.maps import METHODS, MapSettings, write_patient_cam  # noqa: E402
from lungcam.core.config import validate_config  # noqa: E402
from lungcam.core.map_sampling import SHIFTS, evaluations_per_axis  # noqa: E402
from lungcam.core.records import read_predictions  # noqa: E402
from lungcam.core.samplesheet import lesion_masks, load_sample_sheet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, help="working directory of a finished demo training run")
    parser.add_argument("--patients", type=int, default=6, help="patients to time per method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cohort", type=int, default=0, help="map and score only the first N patients of predictions.tsv (0: all)")
    parser.add_argument(
        "--shifts", nargs="+", type=int, default=[1], choices=SHIFTS, help="dense evaluation: offsets per axis (cam.shifts)"
    )
    defaults = validate_config({})["cam"]
    settings = replace(MapSettings.from_config(defaults), target="predicted")
    parser.add_argument(
        "--smooth",
        nargs="+",
        type=float,
        default=[defaults["smooth_mm"]],
        help="sigma (mm) of the smoothing within the lungs (cam.smooth_mm)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = args.workdir / "results"
    rows = read_predictions(results / "predictions.tsv").to_dict("records")
    if args.cohort:
        rows = rows[: args.cohort]
    masks = lesion_masks(load_sample_sheet(args.workdir / "demo" / "samples.tsv", validate_config({})["classes"]))
    print(
        f"{'method':>20s}  s/patient  pointing game [95% CI]   hit    Dice (best)  slice AUC mean [95% CI]  pooled  peak to lesion "
        "(mm): median, mean"
    )
    with tempfile.TemporaryDirectory() as tmp:
        # as the workflow evaluates them (Integrated Gradients once), each pair once
        for method, shifts, smooth in dict.fromkeys(
            (m, evaluations_per_axis(m, n), sigma) for m in args.methods for n in args.shifts for sigma in args.smooth
        ):
            seconds, cams = [], []
            for index, row in enumerate(rows):
                cams.append(Path(tmp) / f"{row['patient_id']}.nii.gz")
                start = time.perf_counter()
                write_patient_cam(
                    results / "model" / f"fold{row['fold']}.pt",
                    row,
                    replace(settings, method=method, shifts=shifts, smooth_mm=smooth),
                    cache=args.workdir / "work" / "cache" / row["patient_id"],
                    lungs=results / "lungs" / f"{row['patient_id']}.nii.gz",
                    cam=cams[-1],
                )
                if index < args.patients:
                    seconds.append(time.perf_counter() - start)
            table, summary = localise_cohort(
                cams, [results / "lungs" / p.name for p in cams], masks, None, LesionSettings.from_config(defaults["lesions"]), seed=0
            )
            pointing, auc = summary["pointing_game"], summary["slice_auc"]
            name = (method if shifts == 1 else f"{method} x{shifts}") + (f" s{smooth:g}" if smooth else "")
            print(
                f"{name:>20s}  {sum(seconds) / len(seconds):9.2f}  {pointing['mean']:.3f} [{pointing['ci95'][0]:.2f}, "
                f"{pointing['ci95'][1]:.2f}]"
                f"  {summary['hit']['mean']:.3f}  {summary['dice']['mean']:.3f} ({summary['best_dice']['mean']:.3f})"
                f"  {auc['mean']:.3f} [{auc['ci95'][0]:.2f}, {auc['ci95'][1]:.2f}]      {summary['slice_auc_pooled']['auc']:.3f}"
                f"  {table['peak_distance_mm'].median():6.1f}, {summary['peak_distance_mm']['mean']:.1f}",
                flush=True,
            )
    print(f"{len(rows)} patients, {pointing['n']} lesion-positive; targets for the default map: pointing game >= 0.80, slice AUC >= 0.85")


if __name__ == "__main__":
    main()
