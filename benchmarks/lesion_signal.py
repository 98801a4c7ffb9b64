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

With `--plant`, the same is measured for ground-glass balls of fixed diameters and densities
planted in the real normal chest CT (COVID-CT-MD normal001, ingested and masked here) against
its posterior chest wall, through the demo's cache and input settings: what reaches the network
from the small, faint patches of the independent cohort the demo's phantoms lack.

    .venv/bin/python benchmarks/lesion_signal.py runs/generalisation/synthetic-2020 [--maps]
    .venv/bin/python benchmarks/lesion_signal.py --plant
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungcam.core.config import apply_demo_overrides, load_config  # noqa: E402
from lungcam.core.orientation import mask_on_grid  # noqa: E402
from lungcam.train.cache import load_cache  # noqa: E402
from lungcam.train.slice_bank import lung_slice_indices, resize_slices, zscore  # noqa: E402
from lungcam.train.training import _blur  # noqa: E402

LESION_CLASSES = ("COVID-19", "CAP")


def lesion_on_cache(mask_path: Path, transform) -> np.ndarray:
    """The lesion mask on the cache grid (z, y, x), as the localisation rule brings it (nearest neighbour)."""
    reference = nib.Nifti1Image(np.zeros(tuple(transform.shape[::-1]), dtype=np.uint8), np.array(transform.affine))
    return mask_on_grid(nib.load(mask_path), reference).transpose(2, 1, 0) > 0


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


PLANT_DIAMETERS_MM = (10.0, 20.0, 35.0)
PLANT_HU = (-650.0, -500.0, -350.0)
NORMAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid-ct-md" / "normal001"


def planted(size: int, fraction: float, cache_settings: dict) -> pd.DataFrame:
    """Per planted ball (diameter, HU): kept lesion slices, pixels and contrasts in the input."""
    import tempfile

    from lungcam.core.config import validate_config
    from lungcam.core.orientation import load_hu_lps
    from lungcam.ingest.stage import VOLUME_NAME, IngestSettings, ingest_patient
    from lungcam.lungs.stage import LungSettings, segment
    from lungcam.train.cache import CacheSettings, build_cache

    defaults = validate_config({})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ingest_patient("normal001", NORMAL, tmp / "ingest", IngestSettings.from_config(defaults["ingest"]))
        hu, view = load_hu_lps(tmp / "ingest" / VOLUME_NAME)
        labels = segment(hu, view.spacing, LungSettings.from_config(defaults["lungs"]))[0]
        spacing = np.array(view.spacing)
        depth = ndimage.distance_transform_edt(labels == 1, sampling=spacing)
        for diameter in PLANT_DIAMETERS_MM:
            # the ball's centre: the most posterior right-lung voxel a radius (+2 mm) from the pleura, mid-height
            candidates = np.argwhere(np.abs(depth - (diameter / 2 + 2.0)) < 1.0)
            middle = candidates[np.abs(candidates[:, 0] - np.median(candidates[:, 0])) < 10.0 / spacing[0]]
            centre = middle[np.argmax(middle[:, 1])]
            grid = np.ogrid[tuple(slice(0, n) for n in labels.shape)]
            ball = sum(((g - c) * d / (diameter / 2)) ** 2 for g, c, d in zip(grid, centre, spacing)) <= 1.0
            ball &= labels > 0
            for density in PLANT_HU:
                image = np.where(ball & (hu < density), density + 0.3 * (hu - hu[labels > 0].mean()), hu)
                view.save(image.astype(np.float32), tmp / "planted.nii.gz", dtype=np.float32)
                view.save(labels, tmp / "lungs.nii.gz")
                view.save(ball.astype(np.uint8), tmp / "ball.nii.gz")
                cache = tmp / f"cache-{diameter:g}-{density:g}"
                build_cache(tmp / "planted.nii.gz", tmp / "lungs.nii.gz", cache, CacheSettings.from_config(cache_settings))
                cached, lungs, transform = load_cache(cache)
                lesion = lesion_on_cache(tmp / "ball.nii.gz", transform) & (np.asarray(lungs) > 0)
                found, on_kept = slice_rows(np.asarray(cached), np.asarray(lungs), lesion, size, fraction)
                table = pd.DataFrame(found)
                rows.append(
                    {
                        "diameter_mm": diameter,
                        "hu": density,
                        "volume_ml": round(float(ball.sum() * spacing.prod()) / 1000, 2),
                        "slices": len(table),
                        "pixels": table["pixels"].max() if len(table) else 0,
                        "cnr": table["cnr"].max() if len(table) else float("nan"),
                        "against_vessels": table["against_vessels"].max() if len(table) else float("nan"),
                        "cnr_blurred": table["cnr_blurred"].max() if len(table) else float("nan"),
                        "on_kept": on_kept,
                    }
                )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, nargs="?", help="working directory of a demo run that has its cache")
    parser.add_argument("--maps", action="store_true", help="also score the run's maps (results/cam)")
    parser.add_argument("--plant", action="store_true", help="plant ground-glass balls in the real normal001 instead")
    args = parser.parse_args()
    if args.plant:
        config = apply_demo_overrides(load_config())
        size, fraction = config["train"]["input_size"], config["train"]["min_lung_fraction"]
        table = planted(size, fraction, config["cache"])
        print(
            f"normal001 with planted balls: input {size} px, cache spacing {config['cache']['spacing_mm']} mm; "
            "per ball its best kept slice (none: no slice keeps a pixel half covered)"
        )
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        return
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
