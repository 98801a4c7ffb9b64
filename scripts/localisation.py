"""Rule `localisation`: CAM against the sample sheet's lesion masks (lungcam.localisation)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to

from lungcam.joblog import job_log
from lungcam.lesions import LesionSettings
from lungcam.localisation import axial_axis, cohort_summary, patient_localisation, slice_scores

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    settings = LesionSettings.from_config(snakemake.params.settings)
    rows, slices = [], []
    for cam_path, lungs_path, mask_path in zip(snakemake.input.cams, snakemake.input.lungs, snakemake.input.masks):
        patient = Path(cam_path).name[: -len(".nii.gz")]
        cam_image = nib.load(cam_path)
        cam, lungs = np.asarray(cam_image.dataobj), np.asarray(nib.load(lungs_path).dataobj)
        lesion = np.asarray(resample_from_to(nib.load(mask_path), cam_image, order=0).dataobj) > 0
        rows.append({"patient_id": patient, **patient_localisation(cam, lesion, lungs, cam_image.affine, settings)})
        slices.append(slice_scores(cam, lesion, lungs, axial_axis(cam_image.affine)).assign(patient_id=patient))
    table = pd.DataFrame(rows)
    table.to_csv(snakemake.output.patients, sep="\t", index=False, float_format="%.4f")
    summary = cohort_summary(table, pd.concat(slices, ignore_index=True), snakemake.params.seed)
    with open(snakemake.output.summary, "w") as handle:
        json.dump(summary, handle, indent=1)
    log.info("localisation of %d patients: %s", len(table), summary)
