"""What reaches the network from a lesion: size and contrast in the model input, per class.

For every lesion patient of a finished demo run, the truth lesion mask is brought onto the
cache grid (nearest neighbour, through the cache's transform), and each lung slice the slice
bank keeps (`train.min_lung_fraction`) goes through the same steps as training: resize to
`train.input_size` (`slice_bank.resize_slices`, the mask alongside as a share per pixel) and
per-slice z-scoring. Per lesion slice it measures:
- pixels: model-input pixels at least half covered by lesion;
- contrast: mean z-score over those pixels minus the median over the lung pixels away from the
  lesion (two pixels or more), in units of that lung's standard deviation (a CNR);
- against vessels: the same contrast over the lung's own 99th percentile minus its median, the
  brightest normal structures (vessels, nodules): below 1, a lesion is fainter than a vessel;
- after the strongest blur the sharpness augmentation draws (sigma 1 pixel): the contrast left.
And per patient, the share of the lesion's volume on slices the bank keeps. With `--maps`, the
run's own maps (results/cam) give what the trained network responds to: the mean map value
inside the lesion over the mean in the rest of the lungs, for the patient's label-class map.

    .venv/bin/python benchmarks/lesion_signal.py runs/generalisation/synthetic-2020 [--maps]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from nibabel.processing import resample_from_to
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungcam.cache import load_cache  # noqa: E402
from lungcam.config import apply_demo_overrides, load_config  # noqa: E402
from lungcam.localisation import mask_on_grid  # noqa: E402
from lungcam.slice_bank import lung_slice_indices, resize_slices, zscore  # noqa: E402
from lungcam.training import _blur  # noqa: E402

LESION_CLASSES = ("COVID-19", "CAP")


def lesion_on_cache(mask_path: Path, transform) -> np.ndarray:
    """The lesion mask on the cache grid (z, y, x), nearest neighbour."""
    shape_xyz = tuple(transform.shape[::-1])
    reference = nib.Nifti1Image(np.zeros(shape_xyz, dtype=np.uint8), np.array(transform.affine))
    return np.asarray(resample_from_to(nib.load(mask_path), reference, order=0).dataobj).transpose(2, 1, 0) > 0


def slice_rows(image: np.ndarray, lungs: np.ndarray, lesion: np.ndarray, size: int, min_lung_fraction: float) -> tuple[list[dict], float]:
    """Per kept lesion slice: pixels, CNR, contrast against vessels, CNR after blur; and the
    share of lesion voxels on kept slices."""
    kept = lung_slice_indices(lungs, min_lung_fraction)
    on_kept = float(lesion[kept].sum()) / max(float(lesion.sum()), 1.0)
    rows = []
    for z in kept:
        if not lesion[z].any():
            continue
        x = zscore(torch.from_numpy(resize_slices(image[z : z + 1], size)))
        share = torch.nn.functional.interpolate(
            torch.from_numpy(lesion[z : z + 1, None].astype(np.float32)), size=(size, size), mode="area"
        )[0, 0].numpy()
        lung = resize_slices((lungs[z : z + 1] > 0).astype(np.uint8) * 255, size)[0] >= 128
        inside = share >= 0.5
        away = lung & ~ndimage.binary_dilation(share > 0, iterations=2)
        if not inside.any() or away.sum() < 20:
            continue
        row = {"pixels": int(inside.sum())}
        for name, values in (("cnr", x[0, 0].numpy()), ("cnr_blurred", _blur(x, 1.0)[0, 0].numpy())):
            background = values[away]
            spread = max(float(background.std()), 1e-6)
            row[name] = (float(values[inside].mean()) - float(np.median(background))) / spread
            if name == "cnr":
                row["vessel_cnr"] = (float(np.percentile(background, 99)) - float(np.median(background))) / spread
        row["against_vessels"] = row["cnr"] / max(row["vessel_cnr"], 1e-6)
        rows.append(row)
    return rows, on_kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, help="working directory of a demo run that has its cache")
    parser.add_argument("--maps", action="store_true", help="also score the run's maps (results/cam)")
    args = parser.parse_args()
    config = apply_demo_overrides(load_config(args.workdir / "config.yaml"))
    size, fraction = config["train"]["input_size"], config["train"]["min_lung_fraction"]
    sheet = args.workdir / "demo" / "samples.tsv"
    samples = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False)
    slices, patients = [], []
    for row in samples.itertuples():
        cache = args.workdir / "work" / "cache" / row.patient_id
        if row.label not in LESION_CLASSES or not row.lesion_mask or not cache.exists():
            continue
        image, lungs, transform = load_cache(cache)
        image, lungs = np.asarray(image), np.asarray(lungs)
        lesion = lesion_on_cache(sheet.parent / row.lesion_mask, transform) & (lungs > 0)
        found, on_kept = slice_rows(image, lungs, lesion, size, fraction)
        slices += [r | {"label": row.label} for r in found]
        patient = {"label": row.label, "on_kept": on_kept, "lesion_slices": len(found)}
        cam_path = args.workdir / "results" / "cam" / f"{row.patient_id}.nii.gz"
        if args.maps and cam_path.exists():
            cam_image = nib.load(cam_path)
            cam = np.asarray(cam_image.dataobj)
            scan_lungs = np.asarray(nib.load(args.workdir / "results" / "lungs" / f"{row.patient_id}.nii.gz").dataobj) > 0
            truth = (mask_on_grid(nib.load(sheet.parent / row.lesion_mask), cam_image) > 0) & scan_lungs
            if truth.any() and (scan_lungs & ~truth).any():
                patient["map_ratio"] = float(cam[truth].mean()) / max(float(cam[scan_lungs & ~truth].mean()), 1e-6)
        patients.append(patient)
    slices, patients = pd.DataFrame(slices), pd.DataFrame(patients)
    print(
        f"{args.workdir.name}: input {size} px, cache spacing {config['cache']['spacing_mm']} mm; medians [10th-90th percentile] over "
        "lesion slices"
    )
    print(
        f"{'class':>9s}  slices  pixels          CNR                CNR / vessels      CNR after blur     lesion on kept slices  map in "
        "lesion / lungs"
    )
    for label in LESION_CLASSES:
        group, people = slices[slices["label"] == label], patients[patients["label"] == label]

        def spread(values: pd.Series, digits: int = 2) -> str:
            return f"{values.median():.{digits}f} [{values.quantile(0.1):.{digits}f}-{values.quantile(0.9):.{digits}f}]"

        maps = spread(people["map_ratio"].dropna()) if "map_ratio" in people and people["map_ratio"].notna().any() else "-"
        print(
            f"{label:>9s}  {len(group):6d}  {spread(group['pixels'], 0):14s}  {spread(group['cnr']):17s}  "
            f"{spread(group['against_vessels']):17s}  "
            f"{spread(group['cnr_blurred']):17s}  {spread(people['on_kept']):21s}  {maps}"
        )


if __name__ == "__main__":
    main()
