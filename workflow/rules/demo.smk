"""The synthetic demo cohort (config: samples: demo). Nothing here runs for a real cohort."""

from dataclasses import asdict


rule phantom:
    input:
        background=config["demo"]["background"] or [],
    output:
        dicom=directory(path("demo_dicom")),
        lungs=path("demo_lungs"),
        lesions=path("demo_lesions"),
        record=path("demo_record"),
    log:
        log_path("phantom"),
    benchmark:
        benchmark_path("phantom")
    group:
        cluster_group("prepare")
    conda:
        "../../envs/phantom.yaml"
    resources:
        mem_mb=memory_mb(3000),
        runtime=5,
    params:
        # The patient's own plan and the rendering options, not the whole demo section: adding
        # patients (demo.scout_only) leaves the others' plans, and so their files, unchanged.
        plan=lambda wildcards: asdict(DEMO_PLANS[wildcards.patient]),
        options={k: config["demo"][k] for k in ("matrix", "localizer", "thick_series", "background")},
    script:
        "../../scripts/phantom.py"


localrules:
    demo_sample_sheet,


rule demo_sample_sheet:
    input:
        # The demo patients only: a real cohort plans no input for this rule, not one per patient.
        records=expand(path("demo_record"), patient=PATIENTS if DEMO else []),
    output:
        path("demo_samples"),
    log:
        log_path("demo_sample_sheet", None),
    benchmark:
        benchmark_path("demo_sample_sheet", None)
    conda:
        "../../envs/phantom.yaml"
    params:
        demo=DEMO_COHORT,
        classes=lookup(dpath="classes", within=config),
    script:
        "../../scripts/demo_sample_sheet.py"
