"""Rule `slice_bank`: the lung slices of every patient that passed QC, at model input size."""

from pathlib import Path

from lungcam.core.joblog import job_log
from lungcam.core.records import read_passed_patients
from lungcam.train.slice_bank import build_slice_bank

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    ok = read_passed_patients(snakemake.input.cohort_qc)
    caches = {patient: Path(snakemake.params.cache_root) / patient for patient in ok}
    index = build_slice_bank(
        caches, snakemake.output[0], snakemake.params.input_size, snakemake.params.min_lung_fraction, snakemake.params.cache
    )
    log.info("slice bank: %d slices of %d patients", len(index), len(ok))
