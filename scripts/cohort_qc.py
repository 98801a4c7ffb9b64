"""Rule `prepare`: one row per patient with its QC status, reasons and warnings."""

import pandas as pd

from lungcam.core.atomic import write_tsv
from lungcam.core.joblog import job_log
from lungcam.report.patient_qc import read_patient_qc

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    rows = []
    for record in read_patient_qc(snakemake.input.qc):
        stages = record.get("stages", {})
        rows.append(
            {
                "patient_id": record["patient_id"],
                "status": record["status"],
                "stages": ", ".join(f"{stage} {state}" for stage, state in stages.items()),
                "reasons": "; ".join(record.get("reasons", [])),
                "warnings": "; ".join(record.get("warnings", [])),
            }
        )
    table = pd.DataFrame(rows).sort_values("patient_id")
    write_tsv(table, snakemake.output[0])
    log.info("%d patients, %d excluded", len(table), int((table["status"] != "ok").sum()))
