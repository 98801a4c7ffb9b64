"""Rule `report_site`: the summary and every patient report in one folder, as they link to each
other, for `snakemake --report report.zip` (lungcam.report.pages)."""

from lungcam.core.joblog import job_log
from lungcam.report.pages import link_site

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    files = link_site(snakemake.input.summary, snakemake.input.reports, snakemake.output[0])
    log.info("report site: the summary and %d patient reports (%s)", len(snakemake.input.reports), files)
