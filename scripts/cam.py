"""Rule `cam`: one patient's class activation map on its scan's grid (lungcam.cam.maps)."""

from pathlib import Path

from lungcam.cam.maps import MapSettings, write_patient_cam
from lungcam.core.device import pick_device
from lungcam.core.joblog import job_log
from lungcam.core.records import read_predictions

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    patient = snakemake.wildcards.patient
    row = read_predictions(snakemake.input.predictions).set_index("patient_id").loc[patient].to_dict()
    models = {Path(p).stem: p for p in snakemake.input.models}
    model = models[f"fold{row['fold']}"] if row["fold"] != "predict" else snakemake.input.models[0]
    row["patient_id"] = patient
    summary = write_patient_cam(
        model,
        row,
        MapSettings.from_config(snakemake.params.settings),
        cache=snakemake.input.cache,
        lungs=snakemake.input.lungs,
        cam=snakemake.output.cam,
        device=pick_device(snakemake.params.device),
        volume=snakemake.input.volume,
        key_slices=snakemake.output.key_slices,
    )
    log.info("CAM of %s: %s", patient, summary)
