"""Rule `demo_sample_sheet`: the demo cohort's sample sheet, for users to read and reuse."""

from pathlib import Path

from lungcam.core.joblog import job_log
from lungcam.phantom import plan_cohort, sample_rows, write_sample_sheet

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]):
    demo = snakemake.params.demo
    plans = plan_cohort(demo["patients_per_class"], demo["seed"], tuple(snakemake.params.classes), scout_only=demo["scout_only"])
    sheet = Path(snakemake.output[0])
    write_sample_sheet(sample_rows(plans, sheet.parent, relative_to=sheet.parent), sheet)
