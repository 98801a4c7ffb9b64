"""The synthetic demo cohort (config: samples: demo). Nothing here runs for a real cohort."""


rule phantom:
    input:
        background=config["demo"]["background"] or [],
    output:
        dicom=directory(f"{DEMO_ROOT}/dicom/{{patient}}"),
        lungs=f"{DEMO_ROOT}/truth/{{patient}}_lungs.nii.gz",
        lesions=f"{DEMO_ROOT}/truth/{{patient}}_lesions.nii.gz",
        record=f"{DEMO_ROOT}/truth/{{patient}}.json",
    log:
        log_path("phantom"),
    benchmark:
        benchmark_path("phantom")
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
        records=expand(f"{DEMO_ROOT}/truth/{{patient}}.json", patient=PATIENTS if DEMO else []),
    output:
        f"{DEMO_ROOT}/samples.tsv",
    log:
        f"{LOGS}/demo_sample_sheet.log",
    benchmark:
        f"{LOGS}/benchmarks/demo_sample_sheet.tsv"
    conda:
        "../../envs/phantom.yaml"
    params:
        demo=DEMO_COHORT,
        classes=lookup(dpath="classes", within=config),
    script:
        "../../scripts/demo_sample_sheet.py"
