"""Rule `phantom`: write one synthetic demo patient (lungcam.phantom.generate)."""

from lungcam.joblog import job_log
from lungcam.phantom import plan_cohort
from lungcam.phantom.generate import PhantomOptions, generate_patient
from lungcam.records import write_record

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

with job_log(snakemake.log[0]) as log:
    demo = snakemake.params.demo
    plans = {p.patient_id: p for p in plan_cohort(demo["patients_per_class"], demo["seed"], tuple(snakemake.params.classes), scout_only=demo["scout_only"])}
    plan = plans[snakemake.wildcards.patient]
    out = snakemake.output
    background = None
    if demo["background"]:
        from lungcam.phantom.background import RealBackground

        background = RealBackground.load(demo["background"])
    result = generate_patient(plan, PhantomOptions.from_config(demo), out.dicom, out.lungs, out.lesions, background)
    write_record(out.record, result.record)
    log.info("wrote synthetic patient %s", plan.patient_id)
