"""lungcam: chest CT cohort -> weakly supervised COVID-19 classifier and infection maps.

Read README.md first. This file is the table of contents: configuration, one include per stage,
and the default target. The logic lives in the `lungcam` package; rules live in workflow/rules.
"""

import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/lungs.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/report.smk"


onstart:
    record_run()
    skip_pipe_lookups(output for rule in workflow.rules for output in rule.output)
    print(startup_message())


onsuccess:
    print(finish_message())


onerror:
    print("lungcam: a job failed; its log is under logs/<rule>/. Rerun with --rerun-incomplete after fixing it.")


rule all:
    default_target: True
    input:
        demo_samples=path("demo_samples") if DEMO else [],
        cohort=final_targets(),
        cam=cam_targets,
        # Paths, not rules.<rule>.output: rule references make Snakemake look up every input
        # of this rule in them (quadratic in patients). cohort_qc stands for every QC file.
        cohort_qc=path("cohort_qc"),
        metrics=path("metrics"),
        provenance=path("provenance"),
        summary=path("summary"),
        report_site=path("report_site"),
