"""Lung masks: default method time and peak memory per real case; lungmask CPU time per slice.

Each real case (COVID-CT-MD P001, cap001, normal001; 512x512, 148-168 slices) is converted
with dcm2niix, then segmented with the default settings (threshold method, the learned lung
prior and the lesion margin) and checked by the lung QC in a fresh child process limited to one
core (OMP/MKL/OpenBLAS threads 1), which reports the wall time of it all (and of the prior, the
margin and the QC alone) and the process's peak resident memory. Each case runs `--repeats`
times: the median run is reported, and the fastest, since a shared machine's speed varies from
minute to minute. The prior's weights are `--prior`, or else an untrained network of the
configured shape: its cost does not depend on the values. As a reference, lungmask's U-Net (R231
architecture, weights generated since they cannot be downloaded here) is timed per slice on one
core in the same run; each case's time is also given in lungmask slices, which varies less from
machine to machine than seconds. Targets: at most 10 s and 3 GB per real case.

    .venv/bin/python benchmarks/lungs.py [--data ../shared/data] [--lungmask-slices 8] [--repeats 3] [--prior resources/lung_prior.pt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = ("P001", "cap001", "normal001")
SINGLE_CORE = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}

WORKER = """
import json, resource, sys, time
import torch
from lungcam.core.config import load_config
from lungcam.core.orientation import load_hu_lps
from lungcam.lungs.margin import add_lesion_margin
from lungcam.lungs.prior import load_prior, predict_prior, refine
from lungcam.lungs.qc import lung_figures
from lungcam.lungs.stage import LungSettings
from lungcam.lungs.threshold import segment_lungs
torch.set_num_threads(1)
settings = LungSettings.from_config(load_config()["lungs"])
hu, view = load_hu_lps(sys.argv[1])
start = time.perf_counter()
labels = segment_lungs(hu, view.spacing, settings.threshold)
classical = time.perf_counter()
model, size = load_prior(sys.argv[2])
lung_prior = predict_prior(hu, model, size, settings.prior.min_log_odds)
labels = refine(labels, lung_prior, view.spacing, settings.prior.min_width_mm)
margin = time.perf_counter()
labels = add_lesion_margin(labels, hu, view.spacing, settings.lesion_margin, lung_prior)
middle = time.perf_counter()
lung_figures(hu, labels, view.spacing)
seconds = time.perf_counter() - start
voxel_ml = view.spacing[0] * view.spacing[1] * view.spacing[2] / 1000
print(json.dumps({"seconds": seconds, "prior_seconds": margin - classical, "margin_seconds": middle - margin,
                  "qc_seconds": time.perf_counter() - middle,
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "slices": hu.shape[0],
                  "lung_ml": float((labels > 0).sum() * voxel_ml)}))
"""
LUNGMASK_WORKER = """
import json, sys, time, numpy as np, torch
sys.path.insert(0, sys.argv[3])
from lungmask_weights import write_weights
from lungcam.lungs.lungmask_backend import LungmaskSettings, segment_lungmask
from lungcam.core.orientation import load_hu_lps
from pathlib import Path
torch.set_num_threads(1)
hu, view = load_hu_lps(sys.argv[1])
count = int(sys.argv[2])
middle = hu.shape[0] // 2
block = np.ascontiguousarray(hu[middle - count // 2: middle - count // 2 + count])
weights = write_weights(Path(sys.argv[4]))
settings = LungmaskSettings("R231", str(weights), "", "", 20, True)
segment_lungmask(block[:2], settings, weights)  # load and warm up
start = time.perf_counter()
segment_lungmask(block, settings, weights)
print(json.dumps({"seconds_per_slice": (time.perf_counter() - start) / count}))
"""


def convert(folder: Path, out: Path) -> Path:
    from lungcam.ingest import dcm2niix

    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [dcm2niix.executable(), "-z", "y", "-b", "n", "-f", "scan", "-o", str(out), str(folder)], check=True, capture_output=True
    )
    return out / "scan.nii.gz"


def child(code: str, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env={**os.environ, **SINGLE_CORE}, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def untrained_prior(path: Path) -> Path:
    """An untrained lung prior of the configured shape (its cost is that of trained weights)."""
    from lungcam.core.config import load_config
    from lungcam.lungs.prior import LungPriorNet, save_prior

    train = load_config()["lungs"]["prior"]["train"]
    save_prior(LungPriorNet(train["channels"]), train["size"], path, {"untrained": True})
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--lungmask-slices", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median run is reported")
    parser.add_argument("--prior", type=Path, help="the lung prior's weights (default: an untrained network of the configured shape)")
    args = parser.parse_args()
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    met = True
    with tempfile.TemporaryDirectory() as scratch:
        prior = args.prior or untrained_prior(Path(scratch) / "prior.pt")
        columns = ("seconds", "prior", "margin", "QC", "fastest", "peak GB", "lungs L")
        print(f"{'case':10s} {'slices':>6s} " + " ".join(f"{c:>{8 if len(c) > 6 else 6}s}" for c in columns))
        volumes, medians = {}, {}
        for case in CASES:
            volumes[case] = convert(args.data / "covid-ct-md" / case, Path(scratch) / case)
            runs = sorted((child(WORKER, str(volumes[case]), str(prior)) for _ in range(args.repeats)), key=lambda f: f["seconds"])
            figures = runs[len(runs) // 2]
            medians[case] = figures["seconds"]
            met &= figures["seconds"] <= 10.0 and figures["peak_gb"] <= 3.0
            parts = " ".join(f"{figures[f'{part}_seconds']:6.1f}" for part in ("prior", "margin", "qc"))
            memory = f"{runs[0]['seconds']:8.1f} {max(f['peak_gb'] for f in runs):8.2f} {figures['lung_ml'] / 1000:8.2f}"
            print(f"{case:10s} {figures['slices']:6d} {figures['seconds']:8.1f} {parts} {memory}")
        reference = child(LUNGMASK_WORKER, str(volumes["P001"]), str(args.lungmask_slices), tests, str(Path(scratch) / "weights"))
        per_slice = reference["seconds_per_slice"]
        print(f"\nlungmask R231 on one core: {per_slice:.2f} s per slice, {per_slice * 148:.0f} s for P001's 148 slices")
        relative = ", ".join(f"{case} {seconds / per_slice:.1f}" for case, seconds in medians.items())
        print(f"median run in lungmask slices (varies less across machines than seconds): {relative}")
    print(f"default method target (median run <= 10 s and <= 3 GB per case on one core): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
