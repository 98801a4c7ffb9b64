"""Localisation of a finished run's fold models over lung masks rebuilt with the current code.

Training a cohort of hundreds of patients takes hours on a CPU; the lung masks change more
often. The map is 0 outside the lung mask, so a mask that leaves a consolidation out caps the
pointing game whatever the model. This takes the first `--patients` lesion-positive patients of
a finished run (`snakemake --directory RUN` of the demo), rebuilds their lung masks and caches
with the current code and the run's settings, maps them with the fold model that held each out,
and prints the localisation figures of the run's own maps and of the new ones, per class, with
the misses and the share of each missed lesion inside the lung mask.

    .venv/bin/python benchmarks/remap.py run200 --patients 60 --out remap
"""

from __future__ import annotations

import argparse
import json
import os
from multiprocessing import Pool
from pathlib import Path

import pandas as pd

from lungcam.cam.lesions import LesionSettings
from lungcam.cam.localisation import localise_cohort
from lungcam.cam.maps import MapSettings, write_patient_cam
from lungcam.core.config import validate_config
from lungcam.lungs.stage import LungSettings, run_lungs
from lungcam.train.cache import CacheSettings, build_cache
from lungcam.train.inference import read_model_metadata


def remap_patient(job: tuple[Path, Path, dict, dict]) -> str:
    """Lung mask, cache and map of one patient under `out`."""
    import torch

    run, out, config, row = job
    torch.set_num_threads(1)
    patient = row["patient_id"]
    volume, lungs, cam = run / f"results/nifti/{patient}.nii.gz", out / "lungs" / f"{patient}.nii.gz", out / "cam" / f"{patient}.nii.gz"
    work = out / "work" / patient
    work.mkdir(parents=True, exist_ok=True)
    run_lungs(
        patient,
        volume,
        {"labels": lungs, "montage": work / "montage.png", "record": work / "lungs.json", "lobes": None},
        LungSettings.from_config(config["lungs"]),
    )
    build_cache(volume, lungs, work / "cache", CacheSettings.from_config(config["cache"]))
    write_patient_cam(
        run / f"results/model/fold{row['fold']}.pt",
        row,
        MapSettings.from_config(config["cam"]),
        cache=work / "cache",
        lungs=lungs,
        cam=cam,
    )
    return patient


def figures(table: pd.DataFrame, labels: pd.Series) -> str:
    """Pointing game and mean slice AUC, over all patients and per class."""
    parts = []
    for name, group in [("all", table), *table.groupby(labels.loc[table.index])]:
        parts.append(f"{name} ({len(group)}): pointing game {group['pointing_game'].mean():.3f}, slice AUC {group['slice_auc'].mean():.3f}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="working directory of a finished demo run")
    parser.add_argument("--patients", type=int, default=60, help="first N lesion-positive patients of the run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    run = args.run
    # the run's settings; keys added since it ran get their defaults, except the cache, which is
    # made as the run's models were trained on
    config = validate_config(json.loads((run / "results/provenance.json").read_text())["config"])
    config["cache"] = read_model_metadata(run / "results/model/fold0.pt")["preprocessing"]["cache"]
    before = pd.read_csv(run / "results/localisation.tsv", sep="\t", dtype={"patient_id": str}).set_index("patient_id")
    patients = list(before.index[before["lesion_ml"] > 0][: args.patients])
    predictions = pd.read_csv(
        run / "results/predictions.tsv", sep="\t", dtype={"patient_id": str, "label": str}, keep_default_na=False
    ).set_index("patient_id")
    labels = predictions["label"]
    for sub in ("lungs", "cam"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(run, args.out, config, predictions.loc[p].to_dict() | {"patient_id": p}) for p in patients]
    with Pool(args.processes) as pool:
        for done, _ in enumerate(pool.imap_unordered(remap_patient, jobs), 1):
            if done % 10 == 0 or done == len(jobs):
                print(f"{done}/{len(jobs)} patients mapped", flush=True)
    masks = {p: str(run / f"demo/truth/{p}_lesions.nii.gz") for p in patients}
    after, summary = localise_cohort(
        [args.out / "cam" / f"{p}.nii.gz" for p in patients],
        [args.out / "lungs" / f"{p}.nii.gz" for p in patients],
        masks,
        None,
        LesionSettings.from_config(config["cam"]["lesions"]),
        config["train"]["seed"],
    )
    after = after.set_index("patient_id")
    after.to_csv(args.out / "localisation.tsv", sep="\t", float_format="%.4f")
    print(f"the run's maps ({run / 'results/cam'}): {figures(before.loc[patients], labels)}")
    print(f"maps over the current lung masks:  {figures(after, labels)}")
    pointing, auc = summary["pointing_game"], summary["slice_auc"]
    print(
        f"  pointing game {pointing['mean']:.3f} [{pointing['ci95'][0]:.3f}, {pointing['ci95'][1]:.3f}], "
        f"slice AUC {auc['mean']:.3f} [{auc['ci95'][0]:.3f}, {auc['ci95'][1]:.3f}] (95% bootstrap CIs)"
    )
    misses = after[after["pointing_game"] == 0].assign(label=labels, predicted=predictions["predicted"])
    print(f"misses ({len(misses)}), with the share of the lesion inside the lung mask:")
    print(
        misses[["label", "predicted", "lesion_ml", "lesion_in_lungs", "peak_distance_mm", "slice_auc"]].to_string(
            float_format=lambda v: f"{v:.2f}"
        )
    )


if __name__ == "__main__":
    main()
