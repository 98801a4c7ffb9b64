"""Rule `phantom`: write one synthetic demo patient (lungcam.phantom.generate)."""

from lungcam.core.joblog import job_log
from lungcam.core.records import write_record
from lungcam.phantom import PatientPlan
from lungcam.phantom.generate import PhantomOptions, generate_patient

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

with job_log(snakemake.log[0]) as log:
    plan, options = PatientPlan.from_dict(snakemake.params.plan), snakemake.params.options
    out = snakemake.output
    background = None
    if options["background"]:
        from lungcam.phantom.background import RealBackground

        background = RealBackground.load(options["background"])
    result = generate_patient(plan, PhantomOptions.from_config(options), out.dicom, out.lungs, out.lesions, background)
    write_record(out.record, result.record)
    log.info("wrote synthetic patient %s", plan.patient_id)
