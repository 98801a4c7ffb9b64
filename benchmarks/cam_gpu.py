"""The map methods on a GPU: seconds per patient there, and the largest difference from the same
maps computed on the CPU (the `cam` rule's work, out-of-fold model, for the first patients).

    python benchmarks/cam_gpu.py demo-hu2020 --patients 8

On a machine without the whole run, a working directory holding the run's results/predictions.tsv,
results/model/, results/lungs/ and work/cache/ of those patients is enough.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungcam.cam.maps import METHODS, MapSettings, write_patient_cam  # noqa: E402
from lungcam.core.records import read_predictions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--patients", type=int, default=8)
    args = parser.parse_args()
    root = args.workdir
    rows = read_predictions(root / "results" / "predictions.tsv").head(args.patients).to_dict("records")
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    settings = MapSettings(target="predicted", method=METHODS[0], ig_steps=32, shifts=1, smooth_mm=0.0)  # one raw evaluation
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            seconds, differences = [], []
            for device in ("cuda", "cpu"):
                for row in rows:
                    if device == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    write_patient_cam(
                        root / "results" / "model" / f"fold{row['fold']}.pt",
                        row,
                        replace(settings, method=method),
                        cache=root / "work" / "cache" / row["patient_id"],
                        lungs=root / "results" / "lungs" / f"{row['patient_id']}.nii.gz",
                        cam=Path(tmp) / f"{device}_{row['patient_id']}.nii.gz",
                        device=device,
                    )
                    if device == "cuda":
                        torch.cuda.synchronize()
                        seconds.append(time.perf_counter() - start)
            for row in rows:
                maps = [np.asarray(nib.load(Path(tmp) / f"{device}_{row['patient_id']}.nii.gz").dataobj) for device in ("cuda", "cpu")]
                differences.append(float(np.abs(maps[0] - maps[1]).max()))
            print(
                f"{method:>20s}: GPU {np.mean(seconds[1:]):.2f} s/patient (first {seconds[0]:.2f} s, incl. warm-up), max |GPU-CPU| "
                f"{max(differences):.2e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
