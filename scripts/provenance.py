"""Rule `provenance`: results/provenance.json (lungcam.report.provenance)."""

from pathlib import Path

from lungcam.core.joblog import job_log
from lungcam.core.records import read_record, write_document
from lungcam.report.patient_qc import read_patient_qc
from lungcam.report.provenance import provenance_document

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    document = provenance_document(
        dict(snakemake.params.config),
        read_patient_qc(snakemake.input.qc),
        snakemake.input.sample_sheet,
        snakemake.params.lesion_masks,
        snakemake.input.get("slice_labels"),
        dict(zip(snakemake.params.models, snakemake.input.get("models", []))),
        read_record(snakemake.params.run) if Path(snakemake.params.run).is_file() else None,
        dict(zip(snakemake.params.lung_weights, snakemake.input.get("lung_weights", []))),
    )
    write_document(snakemake.output[0], document)
    log.info(
        "provenance: code %s, config %s, %d patients",
        document["code"]["describe"],
        document["config_hash"],
        len(document["inputs"]["patients"]),
    )
