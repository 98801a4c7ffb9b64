"""Rule `lesions`: lesion candidates and infection burden of one patient (lungcam.cam.lesions)."""

import nibabel as nib
import numpy as np

from lungcam.cam.lesions import LesionSettings, find_lesions
from lungcam.core.atomic import write_tsv
from lungcam.core.joblog import job_log
from lungcam.core.records import write_record

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    cam = nib.load(snakemake.input.cam)
    lungs = np.asarray(nib.load(snakemake.input.lungs).dataobj)
    table, burden = find_lesions(np.asarray(cam.dataobj), lungs, cam.affine, LesionSettings.from_config(snakemake.params.settings))
    write_tsv(table, snakemake.output.table)
    write_record(snakemake.output.burden, {"patient_id": snakemake.wildcards.patient, **burden, "candidates": len(table)})
    log.info("%s: %d lesion candidates, burden %s", snakemake.wildcards.patient, len(table), burden)
