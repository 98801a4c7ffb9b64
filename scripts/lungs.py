"""Rule `lungs`: lung labels, lung QC and montage of one patient (lungcam.lungs.stage)."""

from lungcam.core.joblog import job_log
from lungcam.lungs.stage import LungSettings, run_lungs

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]):
    out = snakemake.output
    outputs = {"labels": out.labels, "montage": out.montage, "record": out.record, "lobes": out.get("lobes")}
    run_lungs(
        snakemake.wildcards.patient,
        snakemake.input.volume,
        outputs,
        LungSettings.from_config(snakemake.params.settings),
        weights=snakemake.input.get("lungmask"),
        fill_weights=snakemake.input.get("lungmask_fill"),
        prior=snakemake.input.get("prior"),
    )
