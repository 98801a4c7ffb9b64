"""Rule `localisation`: CAM against the sample sheet's lesion masks and the slice-level labels
of `cam.slice_labels` (lungcam.localisation)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to

from lungcam.joblog import job_log
from lungcam.lesions import LesionSettings
from lungcam.localisation import axial_axis, cohort_summary, labelled_slice_scores, patient_localisation, slice_auc, slice_scores
from lungcam.orientation import LPSView

snakemake = globals()["snakemake"]


with job_log(snakemake.log[0]) as log:
    settings = LesionSettings.from_config(snakemake.params.settings)
    masks = snakemake.params.masks
    slice_labels = pd.read_csv(snakemake.input.slice_labels, sep="\t", dtype={"patient_id": str}) if snakemake.input.get("slice_labels") else None
    rows, slices, labelled = [], [], []
    for cam_path, lungs_path in zip(snakemake.input.cams, snakemake.input.lungs):
        patient = Path(cam_path).name[: -len(".nii.gz")]
        cam_image = nib.load(cam_path)
        cam, lungs = np.asarray(cam_image.dataobj), np.asarray(nib.load(lungs_path).dataobj)
        row = {"patient_id": patient}
        if masks.get(patient):
            lesion = np.asarray(resample_from_to(nib.load(masks[patient]), cam_image, order=0).dataobj) > 0
            row |= patient_localisation(cam, lesion, lungs, cam_image.affine, settings)
            slices.append(slice_scores(cam, lesion, lungs, axial_axis(cam_image.affine)).assign(patient_id=patient))
        if slice_labels is not None and patient in set(slice_labels["patient_id"]):
            view = LPSView.of(cam_image)
            scores = labelled_slice_scores(view.lps(cam), view.lps(lungs), slice_labels[slice_labels["patient_id"] == patient])
            row["slice_label_auc"] = slice_auc(scores)
            labelled.append(scores.assign(patient_id=patient))
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(snakemake.output.patients, sep="\t", index=False, float_format="%.4f")
    masked = table[table["patient_id"].map(lambda p: bool(masks.get(p)))]
    summary = cohort_summary(masked, pd.concat(slices, ignore_index=True), snakemake.params.seed) if slices else {}
    if labelled:
        pooled = pd.concat(labelled, ignore_index=True)
        per_patient = table.dropna(subset=["slice_label_auc"])
        summary["slice_labels"] = {"file": str(snakemake.input.slice_labels), "patients": len(labelled), "slices": len(pooled), "auc_pooled": slice_auc(pooled),
                                   "auc_per_patient": dict(zip(per_patient["patient_id"], per_patient["slice_label_auc"]))}
    with open(snakemake.output.summary, "w") as handle:
        json.dump(summary, handle, indent=1)
    log.info("localisation of %d patients: %s", len(table), summary)
