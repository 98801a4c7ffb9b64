"""Seconds per patient of each CAM method on CPU, and the localisation figures of a run.

Maps every patient of a finished training run again (the `cam` rule's work: model, cache,
resample onto the scan's grid), timing each, and prints the run's localisation summary
(results/localisation.json) against the issue targets (pointing game >= 0.80 on lesion-positive
patients, slice-level AUC >= 0.85).

    .venv/bin/python benchmarks/cam.py /tmp/demo-hu2020 --patients 6
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungcam.cam import write_patient_cam  # noqa: E402

METHODS = ("multiscale",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, help="working directory of a finished training run")
    parser.add_argument("--patients", type=int, default=6, help="patients to time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    predictions = pd.read_csv(args.workdir / "results" / "predictions.tsv", sep="\t", dtype={"patient_id": str, "label": str}, keep_default_na=False)
    rows = predictions.head(args.patients).to_dict("records")
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            seconds = []
            for row in rows:
                start = time.perf_counter()
                write_patient_cam(args.workdir / "results" / "model" / f"fold{row['fold']}.pt", row, "predicted",
                                  args.workdir / "work" / "cache" / row["patient_id"], args.workdir / "results" / "lungs" / f"{row['patient_id']}.nii.gz",
                                  Path(tmp) / "cam.nii.gz")
                seconds.append(time.perf_counter() - start)
            print(f"{method:>10s}: {sum(seconds) / len(seconds):.2f} s per patient (one CPU thread, {len(seconds)} patients, max {max(seconds):.2f} s)")
    summary = json.loads((args.workdir / "results" / "localisation.json").read_text())
    pointing, auc = summary["pointing_game"], summary["slice_auc"]
    print(f"pointing game ({pointing['n']} lesion-positive patients): {pointing['mean']:.3f} [{pointing['ci95'][0]:.3f}, {pointing['ci95'][1]:.3f}] (target >= 0.80)")
    print(f"hit rate (DeCoVNet): {summary['hit']['mean']:.3f}; Dice {summary['dice']['mean']:.3f} (best threshold {summary['best_dice']['mean']:.3f})")
    print(f"slice-level AUC, mean over patients: {auc['mean']:.3f} [{auc['ci95'][0]:.3f}, {auc['ci95'][1]:.3f}] (target >= 0.85); "
          f"pooled over {summary['slice_auc_pooled']['slices']} slices: {summary['slice_auc_pooled']['auc']:.3f}")


if __name__ == "__main__":
    main()
